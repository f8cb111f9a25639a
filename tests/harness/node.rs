//! Runs a Node scenario of the browser client (`tests/client/*.mjs`, see `harness.mjs` there)
//! and serves its steps: the script asks for an action on a line `STEP <name>`, this side does
//! it and answers one line; `RESULT <json>` is what the scenario found.
//!
//! Steps ([`run`]; [`run_with`] takes the test's own): `relay:cut`, `relay:refuse`, `relay:pass`, `relay:refuse-websocket`, `relay:cut-on-send`, `relay:stall`,
//! `relay:unstall` (on the relay given, see `relay.rs`), `sessions` (answers the hub's live
//! session count).
//!
//! [`Background`] runs a script beside the test instead (the load of many clients the
//! operator page's test watches), until the test drops it.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

use super::relay::{Mode, Relay};
use switchyard::Gateway;

/// What a scenario printed, and how long the process took to exit after its result.
pub struct Outcome {
    pub result: Value,
    pub exit_after_result: Duration,
    pub stderr: String,
}

/// `npm ci` ran (tests/run-all.sh): the scenarios need the `ws` package.
fn check_installed() {
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/client/node_modules/ws");
    assert!(ws.exists(), "{} is missing: run `npm ci --prefix tests/client` (tests/run-all.sh does)", ws.display());
}

/// Runs `tests/client/<script>` with `env`, serving its steps, for at most `limit`.
pub async fn run(script: &str, env: &[(&str, String)], gateway: &Gateway, relay: Option<&Relay>, limit: Duration) -> Outcome {
    let steps = |step: &str| match step {
        "sessions" => gateway.hub().len().to_string(),
        "relay:cut" => act(relay, script, Relay::cut),
        "relay:refuse" => act(relay, script, |r| r.set_mode(Mode::Refuse)),
        "relay:pass" => act(relay, script, |r| r.set_mode(Mode::Pass)),
        "relay:refuse-websocket" => act(relay, script, |r| r.set_mode(Mode::RefuseWebSocket)),
        "relay:cut-on-send" => act(relay, script, |r| r.set_mode(Mode::CutOnSend)),
        "relay:stall" => act(relay, script, |r| r.stall_downstream(true)),
        "relay:unstall" => act(relay, script, |r| r.stall_downstream(false)),
        other => panic!("{script}: unknown step {other:?}"),
    };
    run_with(script, env, steps, limit).await
}

/// [`run`] with the test's own steps: `steps` gets each step's name and returns its answer
/// (for scenarios against processes rather than an in-process gateway).
pub async fn run_with(script: &str, env: &[(&str, String)], mut steps: impl FnMut(&str) -> String, limit: Duration) -> Outcome {
    check_installed();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/client");
    let mut child = Command::new("node")
        .arg(dir.join(script))
        .envs(env.iter().map(|(k, v)| (k.to_string(), v.clone())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|err| panic!("starting node for {script}: {err} (tests/run-all.sh installs nodejs)"));
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stderr_pipe = child.stderr.take().unwrap();
    let stderr_task = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr_pipe.read_to_string(&mut text).await;
        text
    });
    let deadline = Instant::now() + limit;
    let mut result = None;
    let mut result_at = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match tokio::time::timeout(left, lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) | Ok(Err(_)) => break,
            Err(_) => {
                let _ = child.kill().await;
                let stderr = stderr_task.await.unwrap_or_default();
                panic!("{script}: no end after {limit:?}; stderr:\n{stderr}");
            }
        };
        // Shown with a failing test's output: what the scenario said, in order.
        eprintln!("[{script}] {line}");
        if let Some(step) = line.strip_prefix("STEP ") {
            let answer = steps(step);
            stdin.write_all(format!("{answer}\n").as_bytes()).await.expect("answering the scenario");
        } else if let Some(json) = line.strip_prefix("RESULT ") {
            result = Some(serde_json::from_str::<Value>(json).unwrap_or_else(|err| panic!("{script}: result {json}: {err}")));
            result_at = Some(Instant::now());
        }
    }
    let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1));
    let status = tokio::time::timeout(left, child.wait()).await;
    let exited = Instant::now();
    let stderr = stderr_task.await.unwrap_or_default();
    match status {
        Ok(Ok(status)) if status.success() => {}
        Ok(status) => panic!("{script} failed ({status:?}); stderr:\n{stderr}"),
        Err(_) => panic!("{script}: the process did not exit within {limit:?}; stderr:\n{stderr}"),
    }
    let result = result.unwrap_or_else(|| panic!("{script} printed no RESULT; stderr:\n{stderr}"));
    Outcome { result, exit_after_result: exited - result_at.unwrap(), stderr }
}

fn act(relay: Option<&Relay>, script: &str, f: impl FnOnce(&Relay)) -> String {
    f(relay.unwrap_or_else(|| panic!("{script} asked for a relay step but runs without a relay")));
    "done".to_owned()
}

/// A Node script left running beside a test (`tests/client/load.mjs`): killed when dropped.
pub struct Background {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    script: String,
}

impl Background {
    /// Starts `tests/client/<script>` with `env`; its stderr goes to the test's.
    pub fn start(script: &str, env: &[(&str, String)]) -> Background {
        check_installed();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/client");
        let mut child = Command::new("node")
            .arg(dir.join(script))
            .envs(env.iter().map(|(k, v)| (k.to_string(), v.clone())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|err| panic!("starting node for {script}: {err} (tests/run-all.sh installs nodejs)"));
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Background { child, lines, script: script.to_owned() }
    }

    /// Reads the script's output until a line starting with `prefix`, for at most `limit`;
    /// returns the rest of that line.
    pub async fn line(&mut self, prefix: &str, limit: Duration) -> String {
        let script = self.script.clone();
        let wait = async {
            loop {
                match self.lines.next_line().await {
                    Ok(Some(line)) => match line.strip_prefix(prefix) {
                        Some(rest) => return rest.to_owned(),
                        None => eprintln!("[{script}] {line}"),
                    },
                    Ok(None) | Err(_) => panic!("{script} ended before printing {prefix:?}"),
                }
            }
        };
        tokio::time::timeout(limit, wait).await.unwrap_or_else(|_| panic!("{script}: no {prefix:?} line within {limit:?}"))
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}
