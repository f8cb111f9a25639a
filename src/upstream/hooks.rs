//! The lifecycle hooks: `open` when a transport creates a session, `expire` when one runs out
//! its grace period.
//!
//! The open hook exists to authorize, so it fails closed: a non-2xx answer refuses the session
//! with the app's reason (bounded, to fit a WebSocket close reason), and an app that cannot be
//! asked refuses it too. The expire hook only informs; the gateway runs it as one of its tasks,
//! a bounded number at once. Both apply the actions the app answers with.

use serde_json::Value;

use crate::handler::Opening;
use crate::hub::{Expired, Hub};

use super::client::{brief, Failure};
use super::schema::{expire_request, open_request};
use super::Upstream;

impl Upstream {
    /// The open hook: `Ok` admits the session (and applies any actions the app sent along),
    /// `Err` refuses it with the app's reason. An app that cannot be asked refuses too: the hook
    /// exists to authorize, so it fails closed.
    pub async fn open(&self, opening: Opening) -> Result<(), String> {
        let Some(url) = self.inner.config.on_open.clone() else { return Ok(()) };
        let sid = opening.sid.clone();
        let body = open_request(&opening).await;
        match self.call(&url, &body).await {
            Ok((_, actions)) => {
                self.apply(&opening.hub, Some(&sid), actions).await;
                Ok(())
            }
            Err((Failure::Status(status), detail)) => {
                tracing::info!(sid = sid.short(), status, "open hook refused the session");
                Err(refusal_text(status, &detail))
            }
            Err((failure, detail)) => {
                self.count(&failure);
                let detail = brief(&detail);
                tracing::warn!(sid = sid.short(), reason = failure.reason(), %detail, "open hook failed; refusing the session");
                Err(failure.to_string())
            }
        }
    }

    /// The expire hook: tells the app a session is gone (and which rooms it left); applies any
    /// actions it answers with (for example a notice to a room).
    pub async fn expire(&self, hub: &Hub, gone: Expired) {
        let Some(url) = self.inner.config.on_expire.clone() else { return };
        let body = expire_request(&gone.sid, &gone.rooms);
        match self.call(&url, &body).await {
            Ok((_, actions)) => self.apply(hub, None, actions).await,
            Err((failure, detail)) => {
                self.count(&failure);
                let detail = brief(&detail);
                tracing::warn!(sid = gone.sid.short(), reason = failure.reason(), %detail, "expire hook failed");
            }
        }
    }
}

/// A refusal's text: the app's `{"error": "..."}` if it sent one, else the status. Bounded, so it
/// fits a WebSocket close reason.
fn refusal_text(status: u16, body: &str) -> String {
    let reason = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| format!("HTTP {status}"));
    let mut reason: String = reason.chars().filter(|c| !c.is_control()).collect();
    if reason.len() > 80 {
        let mut end = 80;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
}

#[cfg(test)]
mod tests {
    use super::super::schema::strip_gateway_params;
    use super::*;

    #[test]
    fn open_hooks_see_only_the_pages_own_query_and_bounded_refusals() {
        assert_eq!(strip_gateway_params("sid=abc&token=t1&last_event_id=x&room=r"), "token=t1&room=r");
        assert_eq!(strip_gateway_params(""), "");
        assert_eq!(refusal_text(403, r#"{"error":"bad token"}"#), "bad token");
        assert_eq!(refusal_text(401, "<html>"), "HTTP 401");
        assert!(refusal_text(403, &format!(r#"{{"error":"{}"}}"#, "é".repeat(100))).len() <= 80);
    }
}
