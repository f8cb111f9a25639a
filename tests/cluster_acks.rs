//! Acknowledgements in cluster mode: two gateways in this process, each its own node of one
//! real Redis (started by the test, stopped by its pid), real clients aimed at either node.
//! An answer made on one node reaches the transport another node holds, and the replay from
//! Redis on any node, with its number; a server request made on one node is answered by a
//! client whose answer lands on the other.

mod common;
mod harness;

use std::path::Path;
use std::time::Duration;

use common::*;
use harness::redis::RedisServer;
use serde_json::{json, Value};
use switchyard::hub::Cluster;
use switchyard::{app, server, Config, Gateway};

/// One node: the seed app plus `sum` (answers the sum of a list of integers), on
/// 127.0.0.1:0, in cluster mode on `redis`, once it has subscribed to its channel.
async fn node(redis: &str) -> TestServer {
    let cluster = Cluster::connect(redis, None).await.expect("Redis answers");
    let config = Config { max_new_sessions_per_ip: 0, ..Config::default() };
    let gateway = app::seed(Gateway::builder(config))
        .on("sum", |_ctx, data| async move {
            let terms: Vec<i64> = serde_json::from_value(data).map_err(|err| format!("not a list of integers: {err}"))?;
            Ok::<Value, String>(Value::from(terms.iter().sum::<i64>()))
        })
        .cluster(cluster)
        .build();
    let router = server::app(&gateway, &Path::new(env!("CARGO_MANIFEST_DIR")).join("static"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = gateway.clone();
    tokio::spawn(async move { server::run(listener, router, served, std::future::pending()).await.unwrap() });
    let node = TestServer { addr, gateway, http: reqwest::Client::new(), scheme: "http" };
    wait_until("the node to subscribe to its Redis channel", || async {
        node.gateway.hub().cluster().is_some_and(Cluster::is_reachable)
    })
    .await;
    node
}

#[tokio::test]
async fn an_answer_made_on_one_node_reaches_the_transport_another_holds_and_the_replay_anywhere() {
    let redis = RedisServer::start().await;
    let (a, b) = (node(&redis.url()).await, node(&redis.url()).await);
    let mut sse = a.sse_frames("/sse", None).await;
    let hello = sse.next_envelope().await;
    let sid = hello["data"]["sid"].as_str().unwrap().to_owned();
    let cursor = hello["id"].as_str().unwrap().to_owned();
    // Sent to node b, handled there; the answers go through Redis to node a's stream.
    let (status, _) = b.post_json(&sid, r#"[{"event":"sum","data":[1,2],"ack":3},{"event":"nope","ack":9007199254740991}]"#).await;
    assert_eq!(status, 202);
    let answered = sse.next_envelope().await;
    assert_eq!((&answered["event"], &answered["ack"], &answered["data"]), (&json!("ack"), &json!(3), &json!(3)));
    let failed = sse.next_envelope().await;
    assert_eq!((&failed["ack"], &failed["error"]["event"]), (&json!(9_007_199_254_740_991_u64), &json!("nope")));
    assert_eq!(failed.get("data"), None, "{failed}");
    // Resumed on node b from the hello: the replay from Redis's buffer, numbers and all.
    drop(sse);
    let (_, replay) = b.poll_envelopes(&format!("?sid={sid}&last_event_id={cursor}")).await;
    assert_eq!(replay.len(), 3, "{replay:?}");
    assert_eq!((&replay[1]["ack"], &replay[1]["data"]), (&json!(3), &json!(3)));
    assert_eq!((&replay[2]["ack"], &replay[2]["error"]["event"]), (&json!(9_007_199_254_740_991_u64), &json!("nope")));
}

#[tokio::test]
async fn a_server_request_of_one_node_is_answered_by_a_client_whose_answer_lands_on_the_other() {
    let redis = RedisServer::start().await;
    let (a, b) = (node(&redis.url()).await, node(&redis.url()).await);
    let mut ws = a.ws("/ws").await;
    let sid = ws.hello().await;
    for (round, answer_via) in [(1, &a), (2, &b)] {
        // Node b asks (the client's transport is on node a).
        let asked = tokio::spawn({
            let (hub, sid) = (b.gateway.hub().clone(), sid.parse().unwrap());
            async move { hub.emit_with_ack(&sid, "question", &json!(round), WAIT).await }
        });
        let request = ws.next_envelope().await;
        assert_eq!((&request["event"], &request["data"]), (&json!("question"), &json!(round)));
        let number = request["ack"].as_u64().expect("the request carries a number");
        // The answer, POSTed to node a (not the one waiting: handed on over b's channel), then
        // to node b itself.
        let body = json!({"event": "ack", "ack": number, "data": {"round": round}}).to_string();
        assert_eq!(answer_via.post_json(&sid, &body).await.0, 202);
        assert_eq!(within("the answer to reach the waiting node", asked).await.unwrap(), Ok(json!({"round": round})));
    }
    // A request that times out ends so on the cluster too.
    let short = Duration::from_millis(200);
    let err = b.gateway.hub().emit_with_ack(&sid.parse().unwrap(), "question", &json!(3), short).await.unwrap_err();
    assert_eq!(err.to_string(), "the client did not answer within 200ms");
}
