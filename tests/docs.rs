//! The documentation, run: every command or request in README.md and docs/*.md is executed here
//! against the real binary, or checked against what it names, so the docs cannot drift from the
//! code.
//!
//! * `sh` blocks are shell commands. Each one is listed in [`SH_BLOCKS`] with the test that runs
//!   it (with real `curl` against `switchyard` on a free loopback port, `127.0.0.1:3000` in the
//!   text standing for that port) or checks it (cargo, bench and fuzz commands: the targets,
//!   scenarios and flags they name exist). A new `sh` block fails
//!   `every_code_block_is_run_or_checked` until a test claims it.
//! * `text` blocks are what a command prints, compared with what it printed here (a sample sid
//!   standing for the real one), or text that is not a command.
//! * `rust` blocks are doc tests (src/lib.rs includes the Markdown files under `cfg(doctest)`).
//! * `nginx` blocks must be, byte for byte, part of a config under `tests/proxies/` that a test
//!   runs nginx with; `json` blocks must parse.
//! * The configuration table of docs/deploy.md is compared with `switchyard --help`, and the
//!   browser client's TypeScript declarations are checked with `tsc --strict`.
//!
//! Every wait is bounded and says what it waited for.

#[path = "../examples/backend.rs"]
#[allow(dead_code)]
mod backend;
mod common;
mod harness;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{start_logged, Binary};
use harness::proxies::Proxy;
use serde_json::Value;

/// Longest any single wait may take.
const WAIT: Duration = Duration::from_secs(10);

/// The sid the docs show in their samples; replaced by the real one before comparing.
const SAMPLE_SID: &str = "f8tQsHY6kkg4J-FuzZPBsw";

/// The address the docs' commands use; replaced by the test server's.
const DOC_ADDR: &str = "127.0.0.1:3000";

/// The Markdown files whose code blocks are held to this file's rules.
const DOC_FILES: &[&str] =
    &["README.md", "docs/protocol.md", "docs/client.md", "docs/deploy.md", "docs/performance.md", "docs/design.md", "docs/socketio.md"];

/// Every `sh` block of the docs, by file and first line, with the test that runs or checks it.
const SH_BLOCKS: &[(&str, &str, &str)] = &[
    ("README.md", "cargo run --release ", "the_first_commands_of_the_readme_are_what_they_say (checked)"),
    ("README.md", "curl -N http://127.0.0.1:3000/sse", "readme_curl_walkthrough_runs_against_the_binary (run)"),
    ("README.md", "SID=f8tQsHY6kkg4J-FuzZPBsw", "readme_curl_walkthrough_runs_against_the_binary (run)"),
    ("README.md", "curl -N -H 'Last-Event-ID", "readme_curl_walkthrough_runs_against_the_binary (run)"),
    ("README.md", "curl http://127.0.0.1:3000/poll ", "readme_curl_walkthrough_runs_against_the_binary (run)"),
    ("README.md", "redis-server --port 6379 &", "several_nodes_commands_run (run)"),
    ("docs/protocol.md", "cargo run --example backend ", "upstream_demo_of_the_protocol_runs (run)"),
    ("docs/protocol.md", "KEY=change-me", "publish_api_commands_run_against_the_binary (run)"),
    ("docs/performance.md", "cargo bench --bench gateway ", "bench_and_fuzz_commands_name_what_exists (checked)"),
    ("docs/design.md", "cargo install cargo-fuzz ", "bench_and_fuzz_commands_name_what_exists (checked)"),
];

// ----- Markdown ----------------------------------------------------------------------------

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|err| panic!("reading {path}: {err}"))
}

/// A fenced code block: its info string, its text (with the final newline), the line its fence
/// is on, and the `## ` section it is in.
#[derive(Debug, Clone)]
struct Block {
    info: String,
    text: String,
    line: usize,
    section: String,
}

fn blocks(file: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut section = String::new();
    let mut open: Option<Block> = None;
    for (i, line) in read(file).lines().enumerate() {
        if let Some(block) = &mut open {
            if line.trim_start().starts_with("```") {
                out.push(open.take().unwrap());
            } else {
                block.text.push_str(line);
                block.text.push('\n');
            }
            continue;
        }
        if let Some(title) = line.strip_prefix("## ") {
            title.clone_into(&mut section);
        }
        if let Some(info) = line.trim_start().strip_prefix("```") {
            assert!(
                !line.starts_with(' '),
                "{file}:{}: an indented code block; keep fences at the start of the line so this test sees them",
                i + 1
            );
            open = Some(Block { info: info.trim().into(), text: String::new(), line: i + 1, section: section.clone() });
        }
    }
    assert!(open.is_none(), "{file}: a code block is never closed");
    out
}

/// The blocks of one `## ` section, checked to have the info strings `infos` in this order.
fn section_blocks(file: &str, section: &str, infos: &[&str]) -> Vec<Block> {
    let found: Vec<Block> = blocks(file).into_iter().filter(|b| b.section == section).collect();
    let got: Vec<&str> = found.iter().map(|b| b.info.as_str()).collect();
    assert_eq!(got, infos, "{file}, section {section:?}: the code blocks this test runs changed; update tests/docs.rs");
    found
}

/// The one block of `file` whose first line starts with `first`.
fn block_starting(file: &str, first: &str) -> Block {
    let mut found: Vec<Block> = blocks(file).into_iter().filter(|b| b.text.starts_with(first)).collect();
    assert_eq!(found.len(), 1, "{file}: expected one code block starting with {first:?}");
    found.pop().unwrap()
}

// ----- processes -----------------------------------------------------------------------------

/// Runs `switchyard ARGS` (a shell word list, as the docs write it) on a free loopback port,
/// with `envs`; returns it (killed when dropped) and the address it listens on.
fn start(args: &str, envs: &[(&str, &str)]) -> (Binary, String) {
    let mut command = Command::new("bash");
    command
        .arg("-c")
        .arg(format!("exec \"$SWITCHYARD\" {args} --bind 127.0.0.1:0"))
        .env("SWITCHYARD", env!("CARGO_BIN_EXE_switchyard"))
        .envs(envs.iter().copied());
    start_logged(command)
}

/// What every shell snippet runs after: `curl` quiet but for errors, bounded in time, with the
/// HTTP status of each request on stderr (stdout stays what a reader sees, followed by
/// `after` for each request).
fn prelude(after: &str) -> String {
    format!("set -e\ncurl() {{ command curl --silent --show-error --max-time 60 -w '{after}%{{stderr}}%{{http_code}}\\n' \"$@\"; }}\n")
}

/// The docs' address replaced by `addr`.
fn at(text: &str, addr: &str) -> String {
    text.replace(DOC_ADDR, addr)
}

/// Runs a snippet to its end: (stdout, the HTTP statuses curl saw).
fn run(snippet: &str, envs: &[(&str, &str)]) -> (String, Vec<String>) {
    run_with(snippet, envs, "")
}

/// [`run`], with `after` written to stdout after each request's answer.
fn run_with(snippet: &str, envs: &[(&str, &str)], after: &str) -> (String, Vec<String>) {
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(format!("{}{snippet}", prelude(after)))
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("bash");
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        out.read_to_string(&mut text).unwrap();
        text
    });
    let err_reader = std::thread::spawn(move || {
        let mut text = String::new();
        err.read_to_string(&mut text).unwrap();
        text
    });
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            kill_group(&child, "KILL");
            panic!("timed out running:\n{snippet}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = reader.join().unwrap();
    let errors = err_reader.join().unwrap();
    assert!(status.success(), "{status} running:\n{snippet}\nstdout: {stdout}\nstderr: {errors}");
    (stdout, errors.lines().map(str::to_owned).collect())
}

fn kill_group(child: &Child, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg("--")
        .arg(format!("-{}", child.id()))
        .stderr(Stdio::null())
        .status();
}

/// A snippet that streams (`curl -N`), read event by event while it runs.
struct Stream {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Stream {
    fn open(snippet: &str, envs: &[(&str, &str)]) -> Stream {
        let mut child = Command::new("bash")
            .arg("-c")
            .arg(format!("{}{snippet}", prelude("")))
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("bash");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Stream { child, lines }
    }

    /// The next SSE event, as its lines (comments skipped), e.g. `["id: ..", "event: ..", "data: .."]`.
    fn event(&mut self, what: &str) -> Vec<String> {
        let mut event = Vec::new();
        loop {
            let line = self.lines.recv_timeout(WAIT).unwrap_or_else(|err| panic!("waiting for {what}: {err}"));
            if line.is_empty() {
                if !event.is_empty() {
                    return event;
                }
            } else if !line.starts_with(':') {
                event.push(line);
            }
        }
    }

    /// Whether the stream ends (curl exits) within `WAIT`.
    fn ends(&mut self) -> bool {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Err(mpsc::RecvTimeoutError::Disconnected) = self.lines.recv_timeout(Duration::from_millis(50)) {
                return true;
            }
        }
        false
    }

    /// Ctrl-C, as a reader would stop it.
    fn interrupt(mut self) {
        kill_group(&self.child, "INT");
        let _ = self.child.wait();
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        kill_group(&self.child, "KILL");
        let _ = self.child.wait();
    }
}

fn lines(text: &str) -> Vec<String> {
    text.lines().map(str::to_owned).collect()
}

/// The `id:` of an SSE event.
fn id_of(event: &[String]) -> &str {
    event.iter().find_map(|l| l.strip_prefix("id: ")).expect("an id line")
}

/// The `data:` of an SSE event, parsed.
fn data_of(event: &[String]) -> Value {
    serde_json::from_str(event.iter().find_map(|l| l.strip_prefix("data: ")).expect("a data line")).expect("data is JSON")
}

// ----- the README ---------------------------------------------------------------------------

#[test]
fn readme_curl_walkthrough_runs_against_the_binary() {
    let (_server, addr) = start("", &[]);
    let addr = addr.as_str();
    let [open, hello, send, accepted, reply, resume, poll] =
        <[Block; 7]>::try_from(section_blocks("README.md", "Try it with curl", &["sh", "text", "sh", "text", "text", "sh", "sh"]))
            .unwrap();

    // Terminal 1: a new session, whose hello is exactly the README's but for the sid.
    let mut terminal1 = Stream::open(&at(&open.text, addr), &[]);
    let first = terminal1.event("the session hello");
    let sid = data_of(&first)["sid"].as_str().expect("the hello names the session").to_owned();
    assert_eq!(first, lines(&hello.text.replace(SAMPLE_SID, &sid)), "README.md:{}: the hello", hello.line);

    // Terminal 2: three POSTs, each 202 with its count.
    let send = at(&send.text.replace(SAMPLE_SID, &sid), addr);
    let (out, statuses) = run(&send, &[]);
    assert_eq!(out, accepted.text.trim_end(), "README.md:{}: what the POSTs print", accepted.line);
    assert_eq!(statuses, ["202", "202", "202"], "the POSTs' statuses");

    // Terminal 1 shows a reply per event (four), the first exactly as the README shows it.
    let replies: Vec<Vec<String>> = (1..=4).map(|n| terminal1.event(&format!("reply {n}"))).collect();
    assert_eq!(replies[0], lines(&reply.text.replace(SAMPLE_SID, &sid)), "README.md:{}: the first reply", reply.line);
    for (n, event) in replies.iter().enumerate() {
        assert_eq!(id_of(event), format!("{sid}.{}", n + 1));
        assert_eq!(event[1], "event: response");
    }

    // Ctrl-C, a few more messages, then the resume from .1: the rest arrive once, in order.
    terminal1.interrupt();
    let (out, _) = run(&send, &[]);
    assert_eq!(out, accepted.text.trim_end());
    let mut resumed = Stream::open(&at(&resume.text.replace(SAMPLE_SID, &sid), addr), &[]);
    let hello = resumed.event("the resumed hello");
    assert_eq!(data_of(&hello)["resumed"], true, "the README says the hello says \"resumed\":true: {hello:?}");
    assert_eq!(data_of(&hello)["sid"], sid.as_str());
    for n in 2..=8 {
        let event = resumed.event(&format!("replayed reply {n}"));
        assert_eq!(id_of(&event), format!("{sid}.{n}"), "{event:?}");
    }

    // Long-polling: a new session, then the first session's events after .1 (the poll takes
    // the session over, which ends the stream).
    let (out, statuses) = run(&at(&poll.text, addr), &[("SID", &sid)]);
    assert_eq!(statuses, ["200", "200"]);
    let answers: Vec<Value> = serde_json::Deserializer::from_str(&out).into_iter().map(|v| v.expect("a JSON answer")).collect();
    let [fresh, after] = <[Value; 2]>::try_from(answers).expect("two poll answers");
    assert_eq!(fresh[0]["event"], "session", "{fresh}");
    assert_eq!(fresh[0]["data"]["transport"], "polling");
    assert_eq!(fresh[0]["data"]["resumed"], false);
    let after = after.as_array().expect("an array of envelopes");
    assert_eq!(after[0]["event"], "session");
    assert_eq!(after[0]["data"]["sid"], sid.as_str());
    let ids: Vec<&str> = after[1..].iter().map(|e| e["id"].as_str().unwrap()).collect();
    let expected: Vec<String> = (2..=8).map(|n| format!("{sid}.{n}")).collect();
    assert_eq!(ids, expected, "the poll hands out the events after .1");
    assert!(resumed.ends(), "the poll took the session from the stream, which ends");
}

#[test]
fn the_first_commands_of_the_readme_are_what_they_say() {
    let first = &blocks("README.md")[0];
    let commands: Vec<&str> = first.text.lines().map(|l| l.split('#').next().unwrap().trim()).collect();
    assert_eq!(commands, ["cargo run --release", "tests/run-all.sh"], "README.md: the two commands come first");
    assert!(read("Cargo.toml").contains("default-run = \"switchyard\""), "`cargo run` runs the gateway");
    let help = help();
    assert!(help.contains("[default: 127.0.0.1:3000]"), "the gateway listens on 127.0.0.1:3000 by default:\n{help}");

    // tests/run-all.sh: executable, parses, called by CI, and installs what the comment says.
    let script = root().join("tests/run-all.sh");
    assert!(std::fs::metadata(&script).unwrap().permissions().mode() & 0o111 != 0, "tests/run-all.sh is executable");
    let syntax = Command::new("bash").arg("-n").arg(&script).status().unwrap();
    assert!(syntax.success(), "bash -n tests/run-all.sh");
    assert!(read(".ci/run").contains("tests/run-all.sh"), ".ci/run calls tests/run-all.sh");
    let installs = read("tests/run-all.sh");
    let comment = first.text.lines().nth(1).unwrap();
    let named = comment.split("installs ").nth(1).unwrap().split(" if missing").next().unwrap();
    for tool in named.split(", ") {
        assert!(installs.contains(&format!("[{tool}")) || installs.contains(&format!("/{tool}")),
            "README says tests/run-all.sh installs {tool}; it does not name it");
    }
    assert!(installs.contains("tests/client/node_modules/typescript"), "run-all.sh installs typescript for the tsc check");
}

// ----- docs/protocol.md ---------------------------------------------------------------------

#[test]
fn publish_api_commands_run_against_the_binary() {
    let (_server, addr) = start("", &[("SWITCHYARD_API_KEY", "change-me")]);
    let addr = addr.as_str();
    let [commands, answers] =
        <[Block; 2]>::try_from(section_blocks("docs/protocol.md", "13. The publish API", &["sh", "text"])).unwrap();

    let open = block_starting("README.md", "curl -N http://127.0.0.1:3000/sse");
    let mut stream = Stream::open(&at(&open.text, addr), &[]);
    let sid = data_of(&stream.event("the session hello"))["sid"].as_str().unwrap().to_owned();

    // Each answer on a line of its own, as the doc lists them.
    let (out, statuses) = run_with(&at(&commands.text, addr), &[("SID", &sid)], "\\n");
    assert_eq!(statuses, ["200"; 7], "{out}");
    let normalize = |text: &str| -> Vec<String> {
        text.lines()
            .map(|line| match line.find("\"connected_since\":\"") {
                Some(at) => {
                    let start = at + "\"connected_since\":\"".len();
                    let end = start + line[start..].find('"').unwrap();
                    format!("{}TIME{}", &line[..start], &line[end..])
                }
                None => line.to_owned(),
            })
            .collect()
    };
    assert_eq!(normalize(&out), normalize(&answers.text.replace(SAMPLE_SID, &sid)), "docs/protocol.md:{}", answers.line);

    // And the session got what was published to it, to its room and to all.
    for (event, data) in [("news", r#"{"n":1}"#), ("chat", r#"{"text":"hi all"}"#), ("maintenance", r#""in 5 minutes""#)] {
        let got = stream.event(event);
        assert_eq!(got[1..], [format!("event: {event}"), format!("data: {data}")]);
    }
}

#[test]
fn upstream_demo_of_the_protocol_runs() {
    let demo = block_starting("docs/protocol.md", "cargo run --example backend ");
    let text = demo.text.replace("\\\n", " ");
    let [backend_line, gateway_line] = <[&str; 2]>::try_from(text.lines().collect::<Vec<_>>()).expect("two commands");

    // `cargo run --example backend` is examples/backend.rs, which listens where the doc says.
    assert!(backend_line.starts_with("cargo run --example backend "));
    let example = read("examples/backend.rs");
    assert!(example.contains("\"127.0.0.1:5000\"") && backend_line.contains("127.0.0.1:5000"), "the backend's default address");

    // The backend's router, served here on a free port in place of the example's process.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            axum::serve(listener, backend::router(None)).await.unwrap();
        });
    });
    let backend = rx.recv_timeout(WAIT).expect("the backend listens").to_string();

    // The gateway's command line, as the doc gives it, but for the addresses.
    let args = gateway_line.split('#').next().unwrap().trim().strip_prefix("cargo run --release -- ").expect("cargo run --release -- ARGS");
    let (_server, addr) = start(&args.replace("127.0.0.1:5000", &backend), &[]);
    let addr = addr.as_str();

    // The walkthrough behaves as before, answered by the backend.
    let open = block_starting("README.md", "curl -N http://127.0.0.1:3000/sse");
    let mut stream = Stream::open(&at(&open.text, addr), &[]);
    let sid = data_of(&stream.event("the session hello"))["sid"].as_str().unwrap().to_owned();
    let send = block_starting("README.md", "SID=");
    let (_, statuses) = run(&at(&send.text.replace(SAMPLE_SID, &sid), addr), &[]);
    assert_eq!(statuses, ["202", "202", "202"]);
    for n in 1..=4 {
        let event = stream.event(&format!("the backend's reply {n}"));
        assert_eq!(event[1..], ["event: response", "data: \"Message received!\""], "{event:?}");
    }
}

#[test]
fn json_blocks_parse() {
    for file in DOC_FILES {
        for block in blocks(file).into_iter().filter(|b| b.info == "json") {
            let whole = serde_json::from_str::<Value>(&block.text);
            if whole.is_err() {
                for line in block.text.lines().filter(|l| !l.trim().is_empty()) {
                    serde_json::from_str::<Value>(line)
                        .unwrap_or_else(|err| panic!("{file}:{}: not JSON, as a whole or line by line: {err}\n{line}", block.line));
                }
            }
        }
    }
}

// ----- docs/deploy.md -----------------------------------------------------------------------

/// `switchyard --help`.
fn help() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard")).arg("--help").output().expect("switchyard --help");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_configuration_table_is_the_binarys() {
    // From --help: flag -> (env, default).
    let help = help();
    let mut from_help = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    let mut flush = |current: &mut Option<(String, String)>| {
        if let Some((flag, text)) = current.take() {
            let env = text.split("[env: ").nth(1).map(|s| s.split([']', '=']).next().unwrap().to_owned());
            let default = text.split("[default: ").nth(1).map(|s| s.split(']').next().unwrap().to_owned());
            from_help.insert(flag, (env, default));
        }
    };
    for line in help.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("--") && line.starts_with("      --") {
            flush(&mut current);
            current = Some((trimmed.split_whitespace().next().unwrap().to_owned(), String::new()));
        } else if trimmed.starts_with('-') {
            flush(&mut current);
        } else if let Some((_, text)) = &mut current {
            text.push_str(line);
        }
    }
    flush(&mut current);
    from_help.remove("--help");
    from_help.remove("--version");

    // From the table: flag -> (env, default).
    let deploy = read("docs/deploy.md");
    let mut from_doc = BTreeMap::new();
    for row in deploy.lines().filter(|l| l.starts_with("| `--")) {
        let cells: Vec<&str> = row.split(" | ").map(|c| c.trim_matches(['|', ' '])).collect();
        let code = |cell: &str| cell.strip_prefix('`').and_then(|c| c.split('`').next()).map(str::to_owned);
        let flag = code(cells[0]).unwrap();
        let default = if cells[2] == "none" { None } else { code(cells[2]) };
        from_doc.insert(flag, (code(cells[1]), default));
    }
    // The static dir's default is a path of the build machine; the table says what it is.
    let static_dir = from_help.get_mut("--static-dir").expect("--static-dir");
    assert!(static_dir.1.as_deref().is_some_and(|d| d.ends_with("/static")), "{static_dir:?}");
    static_dir.1 = Some("static/".into());

    assert_eq!(from_doc, from_help, "docs/deploy.md's configuration table against `switchyard --help` (flag: (env, default))");
}

/// README's "Running several nodes": its commands (Redis and two nodes, each port replaced by a
/// free one) make a cluster in which a session opened on one node is answered through the other.
#[test]
fn several_nodes_commands_run() {
    let [commands, _nginx] = <[Block; 2]>::try_from(section_blocks("README.md", "Running several nodes", &["sh", "nginx"])).unwrap();
    let dir = harness::TempDir::new("several-nodes");
    let (redis, one, two) = (harness::free_port(), harness::free_port(), harness::free_port());
    let script = commands
        .text
        .replace("6379", &redis.to_string())
        .replace("127.0.0.1:3001", &format!("127.0.0.1:{one}"))
        .replace("127.0.0.1:3002", &format!("127.0.0.1:{two}"));
    // The commands as written; Redis keeps nothing on disk here, and the shell stays to be
    // killed with everything it started.
    let shell = format!(
        "switchyard() {{ \"$SWITCHYARD\" \"$@\"; }}\nredis-server() {{ command redis-server \"$@\" --save '' --appendonly no --dir '{}'; }}\n{script}wait\n",
        dir.path().display()
    );
    let child = Command::new("bash")
        .arg("-c")
        .arg(shell)
        .env("SWITCHYARD", env!("CARGO_BIN_EXE_switchyard"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("bash");
    struct Group(Child);
    impl Drop for Group {
        fn drop(&mut self) {
            kill_group(&self.0, "KILL");
            let _ = self.0.wait();
        }
    }
    let group = Group(child);
    let (node1, node2) = (format!("127.0.0.1:{one}"), format!("127.0.0.1:{two}"));
    for node in [&node1, &node2] {
        let deadline = Instant::now() + WAIT;
        loop {
            let (out, _) = run(&format!("curl http://{node}/healthz || true"), &[]);
            if out.contains("\"redis\":\"ok\"") {
                break;
            }
            assert!(Instant::now() < deadline, "node {node} never said Redis is reachable: {out}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let mut stream = Stream::open(&format!("curl -N http://{node1}/sse"), &[]);
    let hello = stream.event("the hello from node 1");
    let sid = data_of(&hello)["sid"].as_str().expect("a sid").to_owned();
    let (out, statuses) = run(&format!("curl -d 'hi from the other node' -H 'Content-Type: text/plain' 'http://{node2}/sse?sid={sid}'"), &[]);
    assert_eq!((out.as_str(), statuses.as_slice()), ("{\"accepted\":1}", ["202".to_owned()].as_slice()));
    let reply = stream.event("the reply, through node 1");
    assert_eq!(reply, lines(&format!("id: {sid}.1\nevent: response\ndata: \"Message received!\"")));
    drop(group);
}

#[test]
fn nginx_blocks_are_part_of_a_tested_proxy_config() {
    for file in DOC_FILES {
        for block in blocks(file).into_iter().filter(|b| b.info == "nginx") {
            let tested = std::fs::read_dir(root().join("tests/proxies"))
                .unwrap()
                .map(|entry| entry.unwrap().path())
                .filter(|path| path.extension().is_some_and(|e| e == "conf"))
                .any(|path| std::fs::read_to_string(&path).unwrap().contains(&block.text));
            assert!(tested, "{file}:{}: this nginx block is not, byte for byte, in a config under tests/proxies/", block.line);
        }
    }
    let conf = read("tests/proxies/nginx-recommended.conf");
    let snippet = blocks("docs/deploy.md").into_iter().find(|b| b.info == "nginx").expect("deploy.md's nginx block");
    assert!(conf.contains(&snippet.text), "nginx-recommended.conf holds deploy.md's snippet");
}

#[tokio::test]
async fn the_recommended_nginx_config_passes_every_transport() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let (_server, addr) = start("", &[]);
    let nginx = Proxy::nginx("nginx-recommended.conf", addr.parse().expect("the binary's address")).await;
    let front = format!("127.0.0.1:{}", nginx.port);
    // A page served from a host with a port: Origin and Host must still agree at the gateway.
    let host = format!("gateway.test:{}", nginx.port);
    let origin = format!("http://{host}");

    // WebSocket: the upgrade passes, the hello arrives.
    let mut request = format!("ws://{front}/ws").into_client_request().unwrap();
    request.headers_mut().insert("host", host.parse().unwrap());
    request.headers_mut().insert("origin", origin.parse().unwrap());
    let tcp = tokio::net::TcpStream::connect(&front).await.unwrap();
    let (mut ws, response) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(request, tcp))
        .await
        .expect("the WebSocket handshake through nginx")
        .expect("the upgrade passes nginx and the origin check");
    assert_eq!(response.status(), 101);
    let hello = tokio::time::timeout(WAIT, ws.next()).await.expect("the WebSocket hello through nginx").unwrap().unwrap();
    assert!(hello.to_text().unwrap().contains(r#""transport":"websocket""#), "{hello:?}");

    // SSE: the hello arrives at once (nothing buffers or compresses the stream), and a POST
    // from the page's origin goes through to it.
    let curl = format!("curl -N --compressed -H 'Host: {host}' -H 'Origin: {origin}' http://{front}/sse");
    // (Blocking here is fine: this test's runtime has nothing else to run meanwhile.)
    let mut stream = Stream::open(&curl, &[]);
    let hello = stream.event("the SSE hello through nginx");
    let sid = data_of(&hello)["sid"].as_str().unwrap().to_owned();
    let post = format!("curl -H 'Host: {host}' -H 'Origin: {origin}' -d '{{\"event\":\"message\"}}' 'http://{front}/sse?sid={sid}'");
    let (out, statuses) = run(&post, &[]);
    assert_eq!((out.as_str(), statuses.as_slice()), (r#"{"accepted":1}"#, ["202".to_owned()].as_slice()));
    let reply = stream.event("the reply through nginx");
    assert_eq!(reply[1], "event: response");

    // Long-polling.
    let poll = format!("curl -H 'Host: {host}' -H 'Origin: {origin}' http://{front}/poll");
    let (out, statuses) = run(&poll, &[]);
    assert_eq!(statuses, ["200"], "{out}");
    assert!(out.contains(r#""transport":"polling""#), "{out}");
}

// ----- cargo, bench and fuzz commands -------------------------------------------------------

#[test]
fn bench_and_fuzz_commands_name_what_exists() {
    let cargo_toml = read("Cargo.toml");
    let bench = read("benches/gateway/main.rs");
    let bench_block = block_starting("docs/performance.md", "cargo bench --bench gateway ");
    for line in bench_block.text.lines() {
        let command = line.split('#').next().unwrap().trim();
        let rest = command.strip_prefix("cargo bench --bench gateway").expect("cargo bench --bench gateway ...");
        assert!(cargo_toml.contains("[[bench]]\nname = \"gateway\""), "Cargo.toml has the gateway bench");
        for word in rest.split_whitespace().skip_while(|w| *w == "--") {
            if let Some(flag) = word.strip_prefix("--") {
                assert!(bench.contains(&flag.replace('-', "_")), "the bench has no --{flag} ({command})");
            } else if word.chars().all(|c| c.is_ascii_lowercase()) {
                let variant = format!("{}{}", word[..1].to_ascii_uppercase(), &word[1..]);
                assert!(bench.contains(&format!("Scenario::{variant}")), "the bench has no scenario {word} ({command})");
            }
        }
    }
    let drive = blocks("docs/performance.md").into_iter().find(|b| b.text.contains("__drive")).expect("the __drive line");
    assert!(bench.contains("\"__drive\""), "the bench binary has __drive ({})", drive.text.trim());
    assert!(bench.contains("\"__serve\"") || read("benches/gateway/servers.rs").contains("__serve"), "the bench binary has __serve");

    let fuzz_block = block_starting("docs/design.md", "cargo install cargo-fuzz ");
    let script = read("tests/fuzz.sh");
    assert!(script.contains("cargo install cargo-fuzz"), "tests/fuzz.sh installs cargo-fuzz as the doc says");
    let syntax = Command::new("bash").arg("-n").arg(root().join("tests/fuzz.sh")).status().unwrap();
    assert!(syntax.success(), "bash -n tests/fuzz.sh");
    for line in fuzz_block.text.lines().skip(1) {
        let command = line.split('#').next().unwrap().trim();
        let mut words = command.split_whitespace();
        assert_eq!(words.next(), Some("tests/fuzz.sh"));
        for word in words.filter(|w| !w.chars().all(|c| c.is_ascii_digit())) {
            assert!(root().join(format!("fuzz/fuzz_targets/{word}.rs")).exists(), "no fuzz target {word} ({command})");
        }
    }
}

// ----- every block ------------------------------------------------------------------------

#[test]
fn every_code_block_is_run_or_checked() {
    let lib = read("src/lib.rs");
    let mut claimed = vec![false; SH_BLOCKS.len()];
    for file in DOC_FILES {
        for block in blocks(file) {
            let language = block.info.split(',').next().unwrap();
            match language {
                "sh" => {
                    let owner = SH_BLOCKS.iter().position(|(f, first, _)| f == file && block.text.starts_with(first));
                    let owner = owner.unwrap_or_else(|| {
                        panic!("{file}:{}: a shell block no test runs or checks; add it to SH_BLOCKS in tests/docs.rs with its test", block.line)
                    });
                    claimed[owner] = true;
                }
                "rust" => assert!(
                    lib.contains(&format!("include_str!(\"../{file}\")")),
                    "{file}:{}: a Rust block in a file src/lib.rs does not include as doc tests",
                    block.line
                ),
                "text" | "json" | "html" | "nginx" | "mermaid" => {}
                "" => panic!("{file}:{}: a code block without a language (rustdoc would take it as Rust); use sh, text, json...", block.line),
                other => panic!("{file}:{}: a `{other}` block: teach tests/docs.rs how to run or check it", block.line),
            }
        }
    }
    for ((file, first, test), seen) in SH_BLOCKS.iter().zip(claimed) {
        assert!(seen, "SH_BLOCKS lists a block that is gone: {file}, {first:?} ({test})");
    }
}

// ----- the browser client's TypeScript declarations ----------------------------------------

#[test]
fn typescript_declarations_check_with_tsc() {
    let tsc = root().join("tests/client/node_modules/typescript/bin/tsc");
    assert!(tsc.exists(), "{} is missing: run `npm ci --prefix tests/client` (tests/run-all.sh does)", tsc.display());
    let out = Command::new("node")
        .arg(&tsc)
        .args(["--noEmit", "-p", "tests/client/types"])
        .current_dir(root())
        .output()
        .expect("node (tests/run-all.sh installs it)");
    assert!(
        out.status.success(),
        "tsc --noEmit -p tests/client/types failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The declarations name every export and every default option the script has.
    let script = "const s = require('./static/switchyard.js'); \
                  console.log(JSON.stringify({exports: Object.keys(s), defaults: Object.keys(s.defaults)}))";
    let out = Command::new("node").args(["-e", script]).current_dir(root()).output().expect("node");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let names: Value = serde_json::from_slice(&out.stdout).unwrap();
    let dts = read("static/switchyard.d.ts");
    for name in names["exports"].as_array().unwrap() {
        let name = name.as_str().unwrap();
        assert!(
            ["function", "const", "class"].iter().any(|kind| dts.contains(&format!("{kind} {name}"))),
            "static/switchyard.d.ts does not declare the export `{name}`"
        );
    }
    let section = |name: &str| dts.split(&format!("interface {name} {{")).nth(1).unwrap().split("\n  }").next().unwrap().to_owned();
    let (options, defaults) = (section("Options"), section("Defaults"));
    for name in names["defaults"].as_array().unwrap() {
        let name = name.as_str().unwrap();
        assert!(options.contains(&format!("{name}?:")), "Options in static/switchyard.d.ts lacks `{name}`");
        assert!(defaults.contains(&format!("{name}:")), "Defaults in static/switchyard.d.ts lacks `{name}`");
    }
}

// ----- links --------------------------------------------------------------------------------

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens.
fn slug(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn relative_links_and_anchors_resolve() {
    let anchors = |file: &str| -> Vec<String> {
        let mut in_code = false;
        read(file)
            .lines()
            .filter(|line| {
                if line.starts_with("```") {
                    in_code = !in_code;
                }
                !in_code && line.starts_with('#')
            })
            .map(|line| slug(line.trim_start_matches('#').trim()))
            .collect()
    };
    let mut files: Vec<&str> = DOC_FILES.to_vec();
    files.push("CHANGELOG.md");
    for file in files {
        let text = read(file);
        for (i, line) in text.lines().enumerate() {
            for target in line.split("](").skip(1).filter_map(|rest| rest.split(')').next()) {
                if target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                let (path, anchor) = target.split_once('#').unwrap_or((target, ""));
                let resolved = if path.is_empty() {
                    file.to_owned()
                } else {
                    let base = Path::new(file).parent().unwrap().join(path);
                    base.components().fold(PathBuf::new(), |mut acc, c| {
                        match c {
                            std::path::Component::ParentDir => {
                                acc.pop();
                            }
                            other => acc.push(other),
                        }
                        acc
                    })
                    .display()
                    .to_string()
                };
                assert!(root().join(&resolved).exists(), "{file}:{}: the link {target:?} points at nothing", i + 1);
                if !anchor.is_empty() {
                    assert!(
                        anchors(&resolved).iter().any(|a| a == anchor),
                        "{file}:{}: {resolved} has no heading for the anchor #{anchor}",
                        i + 1
                    );
                }
            }
        }
    }
}
