//! The crate's layers, kept one-way: which top-level module of `src/` may import which.
//!
//! `protocol` and `tasks` sit at the bottom and import nothing of ours; `hub` imports `protocol`
//! only; the handler API, the transports, the app, the upstream and the publish API import the
//! hub and what lies under them, never each other where it can be helped, and never the gateway,
//! the server or the configuration; `config` assembles the settings the modules under it own;
//! `gateway` and `server` sit on top. [`LAYERS`] is that rule as a table, bottom first, and the
//! test below reads every file of `src/` and fails on any reference the table does not allow,
//! naming the file and line.
//!
//! A reference is a path that names another top-level module: `crate::hub::Hub`,
//! `use crate::{hub, protocol::Sid}`, a `super::` chain that climbs out of the module
//! (`super::super::hub`), or a name the crate root re-exports (`crate::Gateway`). Comments
//! (doc links included) and string literals are not code and are skipped. `lib.rs` and `main.rs`
//! tie everything together and are left out, as are tests under `tests/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Each top-level module and the modules it may import, bottom first. A module may import only
/// modules listed before it, so the table itself cannot hold a cycle (checked below).
const LAYERS: &[(&str, &[&str])] = &[
    // The bottom: pure wire types, and the owner of background tasks.
    ("protocol", &[]),
    ("tasks", &[]),
    // A TCP stream with bytes already read put back in front (the lean SSE path, the WebSocket).
    ("prefixed", &[]),
    // Leaves of the middle layer: token checks and the per-address limit know no sessions.
    ("auth", &[]),
    ("admission", &[]),
    // Sessions.
    ("hub", &["protocol"]),
    // What the transports and the app record.
    ("metrics", &["hub"]),
    // What handlers see (Context, Opening) and where they register (Registry).
    ("handler", &["protocol", "tasks", "hub"]),
    // The one error type of the HTTP surface.
    ("error", &["auth", "admission", "hub"]),
    // Over the hub: the transports, the default app, the upstream, the publish API.
    ("transport", &["protocol", "prefixed", "admission", "hub", "metrics", "error"]),
    ("app", &["protocol", "hub", "handler"]),
    ("upstream", &["protocol", "tasks", "hub", "handler"]),
    ("api", &["protocol", "hub", "error"]),
    // The operator page: the hub and the registry `/metrics` renders, guarded like the API.
    ("admin", &["protocol", "tasks", "hub", "metrics", "error", "api"]),
    // The settings, assembled from the types of the modules that own them.
    ("config", &["protocol", "admission", "hub", "transport", "upstream"]),
    // The top.
    (
        "gateway",
        &["protocol", "tasks", "prefixed", "auth", "admission", "hub", "metrics", "handler", "error", "transport", "app", "upstream", "api", "admin", "config"],
    ),
    (
        "server",
        &["protocol", "tasks", "prefixed", "auth", "admission", "hub", "metrics", "handler", "error", "transport", "app", "upstream", "api", "admin", "config", "gateway"],
    ),
];

#[test]
fn every_module_imports_only_the_layers_under_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let reexports = root_reexports(&std::fs::read_to_string(src.join("lib.rs")).expect("src/lib.rs"));
    let allowed: BTreeMap<&str, &[&str]> = LAYERS.iter().copied().collect();
    let mut offences = Vec::new();
    let mut seen = 0;
    for path in rust_files(&src) {
        let relative = path.strip_prefix(&src).expect("under src");
        let Some(own_path) = module_path(relative) else { continue };
        let own = own_path[0].clone();
        let Some(may) = allowed.get(own.as_str()) else {
            offences.push(format!("src/{}: module `{own}` is not in the LAYERS table of tests/layers.rs", relative.display()));
            continue;
        };
        let text = std::fs::read_to_string(&path).expect("readable source");
        for (line, target) in references(&code_only(&text), &own_path, &reexports) {
            seen += 1;
            if !may.contains(&target.as_str()) {
                offences.push(format!(
                    "src/{}:{line}: `{own}` imports `{target}`; `{own}` may import only: {}",
                    relative.display(),
                    if may.is_empty() { "nothing of the crate".to_owned() } else { may.join(", ") }
                ));
            }
        }
    }
    assert!(seen > 50, "only {seen} references found: is the scanner still reading src/?");
    assert!(offences.is_empty(), "imports against the layering:\n{}", offences.join("\n"));
}

#[test]
fn the_table_is_one_way_and_names_every_module() {
    for (i, (module, imports)) in LAYERS.iter().enumerate() {
        let below: Vec<&str> = LAYERS[..i].iter().map(|(m, _)| *m).collect();
        for import in *imports {
            assert!(below.contains(import), "`{module}` may import `{import}`, which is not listed before it");
        }
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut modules: Vec<String> =
        rust_files(&src).iter().filter_map(|p| module_path(p.strip_prefix(&src).unwrap())).map(|p| p[0].clone()).collect();
    modules.sort();
    modules.dedup();
    let mut table: Vec<String> = LAYERS.iter().map(|(m, _)| (*m).to_owned()).collect();
    table.sort();
    assert_eq!(modules, table, "the modules of src/ and the LAYERS table differ");
}

#[test]
fn the_scanner_sees_each_kind_of_reference_and_skips_comments_and_strings() {
    let text = r##"
use crate::hub::Hub;
use crate::{protocol::Sid, tasks};
// crate::server in a comment
/// [`crate::gateway::Gateway`] in a doc comment
/* crate::config
   in a block comment */
let s = "crate::api in a \"string\""; let r = r#"crate::app"#; let c = ['"', '\'', '{']; let l: &'static str = "";
fn f() { crate::metrics::sync(); let _ = crate::Gateway::builder; }
mod tests {
    use super::super::super::upstream::Upstream;
    use super::super::AttachQuery;
    use super::*;
}
"##;
    let reexports = root_reexports("pub use gateway::{Gateway, GatewayBuilder};\npub use tasks::Tasks;");
    let found = references(&code_only(text), &["transport".to_owned(), "ws".to_owned()], &reexports);
    let expected = [(2, "hub"), (3, "protocol"), (3, "tasks"), (9, "metrics"), (9, "gateway"), (11, "upstream")];
    let expected: Vec<(usize, String)> = expected.iter().map(|(l, m)| (*l, (*m).to_owned())).collect();
    assert_eq!(found, expected);
}

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("readable directory") {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The module path of a file under `src/` (`transport/ws.rs` is `[transport, ws]`,
/// `hub/mod.rs` is `[hub]`); `None` for the crate roots `lib.rs` and `main.rs`.
fn module_path(relative: &Path) -> Option<Vec<String>> {
    let mut parts: Vec<String> = relative.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let file = parts.pop()?;
    let stem = file.strip_suffix(".rs")?;
    if parts.is_empty() && (stem == "lib" || stem == "main") {
        return None;
    }
    if stem != "mod" {
        parts.push(stem.to_owned());
    }
    Some(parts)
}

/// The names `lib.rs` re-exports at the crate root, and the module each comes from
/// (`pub use gateway::{Gateway, GatewayBuilder};`).
fn root_reexports(lib: &str) -> BTreeMap<String, String> {
    let mut names = BTreeMap::new();
    for statement in code_only(lib).split(';') {
        let Some(rest) = statement.trim().strip_prefix("pub use ") else { continue };
        let Some((module, items)) = rest.split_once("::") else { continue };
        for item in items.trim_matches(|c| c == '{' || c == '}' || char::is_whitespace(c)).split(',') {
            let name = item.split(" as ").last().unwrap_or(item).trim();
            if !name.is_empty() {
                names.insert(name.to_owned(), module.trim().to_owned());
            }
        }
    }
    names
}

/// `text` with comments and the contents of string and character literals blanked out, line
/// breaks kept (so line numbers still hold).
fn code_only(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    // Keeps the line breaks of a skipped stretch.
    let blank = |out: &mut String, skipped: &[char]| out.extend(skipped.iter().filter(|c| **c == '\n'));
    while i < chars.len() {
        let rest = &chars[i..];
        if rest.starts_with(&['/', '/']) {
            let end = rest.iter().position(|c| *c == '\n').unwrap_or(rest.len());
            i += end;
        } else if rest.starts_with(&['/', '*']) {
            let (mut depth, mut j) = (0, 0);
            while j < rest.len() {
                if rest[j..].starts_with(&['/', '*']) {
                    depth += 1;
                    j += 2;
                } else if rest[j..].starts_with(&['*', '/']) {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            blank(&mut out, &rest[..j]);
            i += j;
        } else if let Some(j) = raw_string_end(rest) {
            out.push_str("\"\"");
            blank(&mut out, &rest[..j]);
            i += j;
        } else if rest[0] == '"' {
            let mut j = 1;
            while j < rest.len() && rest[j] != '"' {
                j += if rest[j] == '\\' { 2 } else { 1 };
            }
            out.push_str("\"\"");
            blank(&mut out, &rest[..(j + 1).min(rest.len())]);
            i += j + 1;
        } else if rest[0] == '\'' && rest.get(1) == Some(&'\\') {
            // An escaped character literal: '\n', '\'', '\u{2026}'.
            let end = rest.iter().skip(3).position(|c| *c == '\'').map_or(rest.len(), |p| p + 4);
            out.push_str("' '");
            i += end;
        } else if rest[0] == '\'' && rest.get(2) == Some(&'\'') {
            // A plain character literal ('"', '{'); anything else after a quote is a lifetime.
            out.push_str("' '");
            i += 3;
        } else {
            out.push(rest[0]);
            i += 1;
        }
    }
    out
}

/// If `rest` starts a raw string (`r"…"`, `r#"…"#`, `br"…"`), its length.
fn raw_string_end(rest: &[char]) -> Option<usize> {
    let start = match rest {
        ['r', ..] => 1,
        ['b', 'r', ..] => 2,
        _ => return None,
    };
    let hashes = rest[start..].iter().take_while(|c| **c == '#').count();
    if rest.get(start + hashes) != Some(&'"') {
        return None;
    }
    let body = start + hashes + 1;
    let closing: Vec<char> = std::iter::once('"').chain(std::iter::repeat_n('#', hashes)).collect();
    let end = (body..rest.len()).find(|&j| rest[j..].starts_with(&closing))?;
    Some(end + closing.len())
}

/// The other top-level modules `code` (comments and strings blanked) refers to, with their
/// lines, in order. `own` is the module path of the file; `reexports` the crate root's
/// re-exported names.
fn references(code: &str, own: &[String], reexports: &BTreeMap<String, String>) -> Vec<(usize, String)> {
    let chars: Vec<char> = code.chars().collect();
    let mut found = Vec::new();
    // Inline modules (`mod tests { … }`) open at a brace depth: a `super::` inside one climbs
    // out of it first.
    let (mut depth, mut inline): (usize, Vec<(usize, String)>) = (0, Vec::new());
    let (mut line, mut i) = (1, 0);
    let ident_char = |c: char| c.is_alphanumeric() || c == '_';
    let word_at = |i: usize, word: &str| {
        let w: Vec<char> = word.chars().collect();
        chars[i..].starts_with(&w) && (i == 0 || !(ident_char(chars[i - 1]) || chars[i - 1] == '$'))
    };
    let ident_from = |i: usize| -> String { chars[i..].iter().take_while(|c| ident_char(**c)).collect() };
    while i < chars.len() {
        match chars[i] {
            '\n' => line += 1,
            '{' => depth += 1,
            '}' => {
                depth = depth.saturating_sub(1);
                if inline.last().is_some_and(|(d, _)| *d == depth) {
                    inline.pop();
                }
            }
            _ => {}
        }
        if word_at(i, "mod ") {
            let name = ident_from(i + 4);
            let after = chars[i + 4 + name.len()..].iter().find(|c| !c.is_whitespace());
            if after == Some(&'{') {
                inline.push((depth, name));
            }
        }
        let (climbs, start) = if word_at(i, "crate::") {
            (None, i + "crate::".len())
        } else if word_at(i, "super::") {
            let mut climbs = 0;
            let mut j = i;
            while chars[j..].starts_with(&['s', 'u', 'p', 'e', 'r', ':', ':']) {
                climbs += 1;
                j += "super::".len();
            }
            (Some(climbs), j)
        } else {
            i += 1;
            continue;
        };
        // Where the path starts: at the crate root, or somewhere in the file's own module.
        let mut path: Vec<String> = own.iter().cloned().chain(inline.iter().map(|(_, m)| m.clone())).collect();
        if let Some(climbs) = climbs {
            path.truncate(path.len().saturating_sub(climbs));
        } else {
            path.clear();
        }
        if let Some(top) = path.first() {
            found.push((line, top.clone()));
        } else if chars.get(start) == Some(&'{') {
            // `crate::{a, b::c}`: the first name of each item at the group's own level.
            let mut level = 0;
            let mut j = start;
            let mut expect_name = true;
            while j < chars.len() {
                match chars[j] {
                    '{' => {
                        level += 1;
                        expect_name = level == 1;
                    }
                    '}' => {
                        level -= 1;
                        if level == 0 {
                            break;
                        }
                    }
                    ',' if level == 1 => expect_name = true,
                    c if expect_name && level == 1 && ident_char(c) => {
                        let name = ident_from(j);
                        j += name.len();
                        found.push((line, top_level(&name, reexports)));
                        expect_name = false;
                        continue;
                    }
                    _ => {}
                }
                j += 1;
            }
        } else {
            let name = ident_from(start);
            if !name.is_empty() {
                found.push((line, top_level(&name, reexports)));
            }
        }
        i = start;
    }
    found.retain(|(_, top)| *top != own[0]);
    found
}

/// The top-level module a name at the crate root stands for: itself, or the module a
/// re-exported item comes from.
fn top_level(name: &str, reexports: &BTreeMap<String, String>) -> String {
    reexports.get(name).cloned().unwrap_or_else(|| name.to_owned())
}
