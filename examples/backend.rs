//! An application behind switchyard, speaking the upstream protocol (schema v1): the seed's chat
//! app, rebuilt as an HTTP backend.
//!
//! ```sh
//! cargo run --example backend            # listens on 127.0.0.1:5000 (BACKEND_ADDR to change)
//! cargo run --release -- --upstream http://127.0.0.1:5000/events \
//!     --upstream-on-open http://127.0.0.1:5000/open --upstream-on-expire http://127.0.0.1:5000/expire
//! ```
//!
//! * `message` -> `chat` to the others in the sender's rooms, `response` "Message received!" to
//!   the sender;
//! * `join` / `leave` (data: a room name) -> joins or leaves (silently, like the built-in app);
//! * `open` hook: with `BACKEND_TOKEN` set, only pages that connect with `?token=THAT` are let in;
//! * `expire` hook: forgets the session and tells its rooms it left.
//!
//! It keeps its own copy of who is in which room (to address `chat`), learnt from the actions it
//! sends and the expire hook: the gateway is the source of truth, the app a bookkeeper.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

#[derive(Clone, Default)]
struct App {
    /// sid -> rooms it joined through this app.
    rooms: Arc<Mutex<HashMap<String, BTreeSet<String>>>>,
    /// When set, the open hook admits only sessions whose page passed `?token=` with it.
    token: Option<String>,
}

#[tokio::main]
async fn main() {
    let addr = std::env::var("BACKEND_ADDR").unwrap_or_else(|_| "127.0.0.1:5000".into());
    let router = router(std::env::var("BACKEND_TOKEN").ok());
    let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind the backend address");
    println!("backend listening on http://{addr} (POST /events, /open, /expire)");
    axum::serve(listener, router).await.unwrap();
}

/// The backend's routes; `token`, if any, is what the open hook wants in the page's query.
/// (`tests/example_backend.rs` serves this same router in front of the real gateway binary.)
pub fn router(token: Option<String>) -> Router {
    let app = App { token, ..App::default() };
    Router::new()
        .route("/events", post(event))
        .route("/open", post(open))
        .route("/expire", post(expire))
        .with_state(app)
}

/// `{"v":1,"type":"event","sid":..,"event":..,"data":..}` -> a list of actions.
async fn event(State(app): State<App>, Json(request): Json<Value>) -> Json<Value> {
    let sid = request["sid"].as_str().unwrap_or_default().to_owned();
    let data = request["data"].clone();
    let actions = match request["event"].as_str().unwrap_or_default() {
        "message" => {
            // The line goes to the others in the sender's rooms (its page shows it already).
            let rooms = app.rooms.lock().unwrap().get(&sid).cloned().unwrap_or_default();
            let mut actions: Vec<Value> = rooms
                .into_iter()
                .map(|room| {
                    let chat = json!({"room": room, "from": &sid[..6.min(sid.len())], "text": data});
                    json!({"emit": "chat", "data": chat, "to": {"room": room}, "skip_self": true})
                })
                .collect();
            actions.push(json!({"emit": "response", "data": "Message received!"}));
            actions
        }
        verb @ ("join" | "leave") => match data.as_str() {
            Some(room) => {
                let mut rooms = app.rooms.lock().unwrap();
                let mine = rooms.entry(sid.clone()).or_default();
                if verb == "join" {
                    mine.insert(room.to_owned());
                } else {
                    mine.remove(room);
                }
                // Silent, as in the built-in app: the page's own stream stays the seed's.
                vec![json!({verb: room})]
            }
            None => vec![json!({"emit": "error", "data": {"error": "data must be a room name", "event": verb}})],
        },
        other => vec![json!({"emit": "error", "data": {"error": format!("no handler for event `{other}`"), "event": other}})],
    };
    Json(Value::Array(actions))
}

/// `{"v":1,"type":"open","sid":..,"transport":..,"headers":{..},"query":..}`: 2xx admits.
async fn open(State(app): State<App>, Json(request): Json<Value>) -> (StatusCode, Json<Value>) {
    if let Some(token) = &app.token {
        let query = request["query"].as_str().unwrap_or_default();
        if !query.split('&').any(|pair| pair == format!("token={token}")) {
            return (StatusCode::FORBIDDEN, Json(json!({"error": "a valid ?token= is required"})));
        }
    }
    (StatusCode::OK, Json(json!([])))
}

/// `{"v":1,"type":"expire","sid":..,"rooms":[..]}`: forget it, tell its rooms.
async fn expire(State(app): State<App>, Json(request): Json<Value>) -> Json<Value> {
    let sid = request["sid"].as_str().unwrap_or_default();
    app.rooms.lock().unwrap().remove(sid);
    let rooms = request["rooms"].as_array().cloned().unwrap_or_default();
    let notices = rooms
        .into_iter()
        .map(|room| json!({"emit": "chat", "data": {"room": room, "from": "switchyard", "text": format!("{} left", &sid[..6.min(sid.len())])}, "to": {"room": room}}))
        .collect();
    Json(Value::Array(notices))
}
