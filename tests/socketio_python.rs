//! The python-socketio client (pip, in a virtualenv under `target/` that tests/run-all.sh
//! installs from `tests/python/requirements.txt`) connects to `/socket.io/` over WebSocket and
//! over long-polling and exchanges events: the seed's reply, an ack, and the server's request.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::TestServer;
use serde_json::{json, Value};

async fn python_client(server: &TestServer, transport: &str) -> Value {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join("target/python-socketio/bin/python");
    assert!(python.exists(), "{} is missing: tests/run-all.sh installs python-socketio there", python.display());
    let mut command = tokio::process::Command::from(Command::new(python));
    command.arg(root.join("tests/python/socketio_client.py")).arg(server.url("")).arg(transport).kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("the python client to finish")
        .expect("running the python client");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "python client over {transport} failed: {stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_str(stdout.lines().last().expect("a result line")).expect("a JSON result")
}

#[tokio::test]
async fn the_python_socketio_client_exchanges_events_over_both_transports() {
    let server = TestServer::start().await;
    for transport in ["websocket", "polling"] {
        let out = python_client(&server, transport).await;
        assert_eq!(out["transport"], transport, "{out}");
        assert_eq!(out["responses"], json!(["Message received!", "Message received!", "Message received!"]), "{out}");
        assert_eq!(out["sum"], 6, "{out}");
        assert_eq!(out["told"], json!({"answer": "python says colour?"}), "{out}");
    }
}
