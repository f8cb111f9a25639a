//! The one error type of the HTTP surface, and the one place it becomes a status code.
//!
//! Client mistakes are 4xx with a JSON body `{"error": "<what is wrong>"}` that says what to fix;
//! nothing a client sends can produce a 500.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The body or query is not what the endpoint accepts.
    #[error("{0}")]
    BadRequest(String),
    /// The sid names no live session (or is not a sid at all).
    #[error("unknown or expired session")]
    NoSession,
    /// The body is larger than the configured limit.
    #[error("request body is larger than {0} bytes")]
    TooLarge(usize),
    /// The body's content type is not one the endpoint reads.
    #[error("unsupported content type {0:?}: send application/json (one envelope or an array of envelopes) or text/plain (the text of one `message` event)")]
    UnsupportedMediaType(String),
    /// A long-poll was cut short because another transport attached to its session.
    #[error("superseded: another transport attached to this session")]
    Superseded,
}

impl Error {
    pub fn status(&self) -> StatusCode {
        match self {
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::NoSession => StatusCode::NOT_FOUND,
            Error::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Error::Superseded => StatusCode::CONFLICT,
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        (self.status(), Json(json!({ "error": self.to_string() }))).into_response()
    }
}

impl From<axum::extract::rejection::QueryRejection> for Error {
    fn from(rejection: axum::extract::rejection::QueryRejection) -> Error {
        Error::BadRequest(rejection.body_text())
    }
}
