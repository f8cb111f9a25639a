//! Optional token auth: with `--auth-secret`, opening a session takes a signed token.
//!
//! The token is an HS256 JWT (verified with the `jsonwebtoken` crate) carrying `sub` (who the
//! client is) and `exp` (until when the token may open sessions). It is read from the
//! `Authorization: Bearer` header or, since browsers cannot set headers on `EventSource` and
//! WebSocket handshakes, from the `token` query parameter. The subject is attached to the
//! session for its whole life and passed to every handler ([`crate::Context::subject`]).
//!
//! Only opening a session takes a token: resuming one takes its sid, the unguessable secret the
//! server handed out, so a client whose token expired mid-session keeps its session. A token
//! presented on a resume must name the session's own subject.

use std::sync::Arc;

use axum::http::{header, HeaderMap};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// Verifies tokens against the configured secret.
#[derive(Clone)]
pub struct Auth {
    key: DecodingKey,
    validation: Validation,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
}

/// Why a token was refused, phrased for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Opening a session without a token.
    #[error("a token is required to open a session: send `Authorization: Bearer <jwt>` or `?token=<jwt>`")]
    Missing,
    /// A token past its `exp`.
    #[error("the token has expired")]
    Expired,
    /// A token that does not verify (signature, algorithm, claims), and why.
    #[error("the token is not valid: {0}")]
    Invalid(String),
    /// A token presented on a resume that names another subject than the session's.
    #[error("the token's subject does not own this session")]
    WrongSubject,
}

impl Auth {
    /// Verification of HS256 tokens signed with `secret`, requiring `exp` and `sub` (with five
    /// seconds of leeway for clocks).
    pub fn new(secret: &str) -> Auth {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = 5;
        Auth { key: DecodingKey::from_secret(secret.as_bytes()), validation }
    }

    /// The subject of a valid token.
    pub fn verify(&self, token: &str) -> Result<Arc<str>, AuthError> {
        match jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation) {
            Ok(data) if !data.claims.sub.is_empty() => Ok(data.claims.sub.into()),
            Ok(_) => Err(AuthError::Invalid("empty subject".into())),
            Err(err) => match err.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => Err(AuthError::Expired),
                _ => Err(AuthError::Invalid(err.to_string())),
            },
        }
    }
}

/// The token a request carries: the `Authorization: Bearer` header, else the `token` query.
pub fn token<'a>(headers: &'a HeaderMap, query_token: Option<&'a str>) -> Option<&'a str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .or(query_token)
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    fn sign(secret: &str, claims: serde_json::Value) -> String {
        encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
    }

    fn now() -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
    }

    #[test]
    fn valid_tokens_give_their_subject_and_others_say_why_not() {
        let auth = Auth::new("s3cret");
        assert_eq!(&*auth.verify(&sign("s3cret", json!({"sub": "alice", "exp": now() + 60}))).unwrap(), "alice");
        assert_eq!(auth.verify(&sign("s3cret", json!({"sub": "alice", "exp": now() - 60}))), Err(AuthError::Expired));
        assert!(matches!(auth.verify(&sign("other", json!({"sub": "alice", "exp": now() + 60}))), Err(AuthError::Invalid(_))));
        assert!(matches!(auth.verify(&sign("s3cret", json!({"sub": "alice"}))), Err(AuthError::Invalid(_))));
        assert!(matches!(auth.verify(&sign("s3cret", json!({"exp": now() + 60}))), Err(AuthError::Invalid(_))));
        assert!(matches!(auth.verify("not.a.jwt"), Err(AuthError::Invalid(_))));
        // An unsigned `alg: none` token is refused by the algorithm check.
        let forged = format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT"}"#), b64(&json!({"sub":"x","exp":now()+60}).to_string()));
        assert!(matches!(auth.verify(&forged), Err(AuthError::Invalid(_))));
    }

    fn b64(s: &str) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn the_header_wins_over_the_query() {
        let mut headers = HeaderMap::new();
        assert_eq!(token(&headers, Some("q")), Some("q"));
        headers.insert(header::AUTHORIZATION, "Bearer h".parse().unwrap());
        assert_eq!(token(&headers, Some("q")), Some("h"));
        assert_eq!(token(&HeaderMap::new(), Some("")), None);
    }
}
