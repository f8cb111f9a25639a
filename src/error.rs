//! The one error type of the HTTP surface, and the one place it becomes a status code.
//!
//! Client mistakes are 4xx with a JSON body `{"error": "<what is wrong>"}` that says what to fix;
//! nothing a client sends can produce a 500.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::hub::HubError;

/// Everything a request to the gateway's routes can be refused with: each variant maps to one
/// HTTP status ([`Error::status`]) and answers `{"error": "<what is wrong>"}`.
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
    /// A session needs a valid token to open (auth on).
    #[error("{0}")]
    Auth(#[from] crate::auth::AuthError),
    /// The session limit is reached; try again later.
    #[error("the server holds as many sessions as it may; retry later")]
    Full,
    /// The session sends faster than its budget allows.
    #[error("too many requests for this session; slow down")]
    RateLimited,
    /// The client's address opened as many sessions as it may for now; a token comes back in
    /// this many seconds (see [`crate::admission`]).
    #[error("too many new sessions from this address; retry in {0} s")]
    TooManyNewSessions(u64),
    /// The publish API was called without the right bearer key.
    #[error("missing or wrong API key: send `Authorization: Bearer <key>`")]
    Unauthorized,
    /// The publish API is off: no key is configured and the server is not bound to loopback.
    #[error("the publish API is disabled: start the gateway with --api-key (or bind it to a loopback address)")]
    ApiDisabled,
    /// The application's open hook refused the session.
    #[error("session refused by the application: {0}")]
    Refused(String),
    /// A publish API body in a content type it does not read.
    #[error("unsupported content type {0:?}: send a JSON object (application/json)")]
    ApiMediaType(String),
    /// Cluster mode: Redis, where sessions live, cannot be reached; try again shortly.
    #[error("the session store is unreachable; retry shortly")]
    Unavailable,
    /// An Engine.IO request (`/socket.io/`) the protocol refuses: answered with its own body,
    /// `{"code": N, "message": "..."}`.
    #[error("{0}")]
    EngineIo(#[from] EngineIoError),
}

/// The Engine.IO protocol's error codes, with their messages as the protocol spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EngineIoError {
    /// Code 0: `transport` is missing or names no transport.
    #[error("Transport unknown")]
    UnknownTransport,
    /// Code 1: the sid names no live Engine.IO session.
    #[error("Session ID unknown")]
    UnknownSid,
    /// Code 2: a handshake by another method than `GET`.
    #[error("Bad handshake method")]
    BadHandshakeMethod,
    /// Code 3: a request the session's state does not allow (two polls at once, polling after
    /// the upgrade, a malformed packet).
    #[error("Bad request")]
    BadRequest,
    /// Code 4: refused.
    #[error("Forbidden")]
    Forbidden,
    /// Code 5: `EIO` is not `4`.
    #[error("Unsupported protocol version")]
    UnsupportedVersion,
}

impl EngineIoError {
    /// The protocol's number for the error.
    pub fn code(self) -> u8 {
        match self {
            EngineIoError::UnknownTransport => 0,
            EngineIoError::UnknownSid => 1,
            EngineIoError::BadHandshakeMethod => 2,
            EngineIoError::BadRequest => 3,
            EngineIoError::Forbidden => 4,
            EngineIoError::UnsupportedVersion => 5,
        }
    }
}

impl Error {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::NoSession => StatusCode::NOT_FOUND,
            Error::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::UnsupportedMediaType(_) | Error::ApiMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Error::Superseded => StatusCode::CONFLICT,
            Error::Full | Error::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Error::RateLimited | Error::TooManyNewSessions(_) => StatusCode::TOO_MANY_REQUESTS,
            Error::Unauthorized | Error::Auth(_) => StatusCode::UNAUTHORIZED,
            Error::ApiDisabled | Error::Refused(_) | Error::EngineIo(EngineIoError::Forbidden) => StatusCode::FORBIDDEN,
            Error::EngineIo(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// A short, fixed name of the variant, for metrics labels.
    fn kind(&self) -> &'static str {
        match self {
            Error::BadRequest(_) => "bad_request",
            Error::NoSession => "no_session",
            Error::TooLarge(_) => "too_large",
            Error::UnsupportedMediaType(_) | Error::ApiMediaType(_) => "unsupported_media_type",
            Error::Superseded => "superseded",
            Error::Full => "full",
            Error::RateLimited => "rate_limited",
            Error::TooManyNewSessions(_) => "too_many_new_sessions",
            Error::Unauthorized => "unauthorized",
            Error::Auth(_) => "auth",
            Error::ApiDisabled => "api_disabled",
            Error::Refused(_) => "refused",
            Error::Unavailable => "unavailable",
            Error::EngineIo(_) => "engine_io",
        }
    }

    /// Seconds a client should wait before retrying, for the statuses where waiting helps.
    fn retry_after(&self) -> Option<u64> {
        match self {
            Error::Full => Some(5),
            Error::RateLimited => Some(1),
            Error::Unavailable => Some(2),
            Error::TooManyNewSessions(seconds) => Some(*seconds),
            _ => None,
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        metrics::counter!("switchyard_errors_total", "kind" => self.kind()).increment(1);
        let body = match &self {
            Error::EngineIo(err) => json!({ "code": err.code(), "message": err.to_string() }),
            _ => json!({ "error": self.to_string() }),
        };
        let mut response = (self.status(), Json(body)).into_response();
        if let Some(seconds) = self.retry_after() {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<HubError> for Error {
    fn from(err: HubError) -> Error {
        match err {
            HubError::NoSession => Error::NoSession,
            HubError::Full => Error::Full,
            HubError::RateLimited => Error::RateLimited,
            HubError::EventName(why) => Error::BadRequest(format!("event name {why}")),
            HubError::RoomName(why) => Error::BadRequest(format!("room name {why}")),
            HubError::Unavailable => Error::Unavailable,
            HubError::AckNumber => Error::BadRequest(err.to_string()),
        }
    }
}

impl From<crate::admission::Limited> for Error {
    fn from(limited: crate::admission::Limited) -> Error {
        Error::TooManyNewSessions(limited.retry_after)
    }
}

impl From<axum::extract::rejection::QueryRejection> for Error {
    fn from(rejection: axum::extract::rejection::QueryRejection) -> Error {
        Error::BadRequest(rejection.body_text())
    }
}
