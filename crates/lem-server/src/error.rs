//! Typed errors, and their one conversion to HTTP at the edge.
//!
//! Every failure a handler can meet is an [`ApiError`]; [`IntoResponse`] turns it into
//! the status code and the OpenAI-style error object
//! `{"type": "error", "error": {"message", "type", "code", "param"}}` (the top-level
//! `"type"` makes the same body a valid Anthropic error too).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use lem_engine::EngineError;
use lem_state::StateError;

/// An error a request ends with.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON.
    #[error("malformed JSON in the request body: {0}")]
    MalformedJson(String),
    /// The JSON does not describe a valid request (wrong types, missing or bad fields).
    #[error("{message}")]
    InvalidRequest {
        /// What is wrong.
        message: String,
        /// The offending field, when known.
        param: Option<String>,
    },
    /// The request names a model this server does not serve.
    #[error("the model `{requested}` does not exist; this server serves `{served}`")]
    ModelNotFound {
        /// The model asked for.
        requested: String,
        /// The served model's name.
        served: String,
    },
    /// The prompt does not leave room for one new token.
    #[error(
        "the prompt is {tokens} tokens long; this server's context is {ctx} tokens (room is needed for at least one new token)"
    )]
    ContextLengthExceeded {
        /// Prompt tokens.
        tokens: usize,
        /// Context size.
        ctx: usize,
    },
    /// The body is larger than the limit.
    #[error("the request body is larger than the limit of {limit} bytes")]
    BodyTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// Missing or wrong API key.
    #[error("invalid or missing API key: send it as `Authorization: Bearer <key>` or `x-api-key: <key>`")]
    Unauthorized,
    /// No route for the path.
    #[error("no route for {0}")]
    RouteNotFound(String),
    /// The route exists but not for this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// No session of that name.
    #[error("no session named `{0}`")]
    SessionNotFound(String),
    /// A session of that name exists already.
    #[error("a session named `{0}` exists already")]
    SessionExists(String),
    /// The session store cannot be read or written (a full disk, a missing or unwritable
    /// directory, a lock held too long); the server goes on serving everything else.
    #[error("the session store is unavailable: {0}")]
    SessionStore(String),
    /// A stored session cannot be woken: its file is damaged, or was written by another
    /// model, tokenizer or cache layout.
    #[error("session cannot be woken: {0}")]
    SessionUnusable(String),
    /// Creating one more session would pass the store's limits.
    #[error("{0}; delete sessions (DELETE /v1/sessions/NAME) or raise the limit")]
    SessionLimit(String),
    /// Too many requests are waiting.
    #[error("the server is busy: {queued} requests are waiting; retry later")]
    QueueFull {
        /// Requests in the queue.
        queued: usize,
    },
    /// The server is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// Anything else (a bug, a disk error).
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// An invalid request about `param`.
    pub fn invalid(param: &str, message: impl Into<String>) -> ApiError {
        ApiError::InvalidRequest { message: message.into(), param: Some(param.to_owned()) }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MalformedJson(_) | ApiError::InvalidRequest { .. } | ApiError::ContextLengthExceeded { .. } => {
                StatusCode::BAD_REQUEST
            }
            ApiError::ModelNotFound { .. } | ApiError::RouteNotFound(_) | ApiError::SessionNotFound(_) => {
                StatusCode::NOT_FOUND
            }
            ApiError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::SessionExists(_) => StatusCode::CONFLICT,
            ApiError::SessionLimit(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::SessionStore(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::SessionUnusable(_) => StatusCode::CONFLICT,
            ApiError::QueueFull { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The error object's `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::Unauthorized => "authentication_error",
            ApiError::ModelNotFound { .. } | ApiError::RouteNotFound(_) | ApiError::SessionNotFound(_) => {
                "not_found_error"
            }
            ApiError::BodyTooLarge { .. } => "request_too_large",
            ApiError::QueueFull { .. } => "rate_limit_error",
            ApiError::ShuttingDown => "overloaded_error",
            ApiError::SessionStore(_) => "server_error",
            ApiError::Internal(_) => "server_error",
            _ => "invalid_request_error",
        }
    }

    /// The error object's `code`.
    pub fn code(&self) -> Option<&'static str> {
        Some(match self {
            ApiError::MalformedJson(_) => "invalid_json",
            ApiError::ModelNotFound { .. } => "model_not_found",
            ApiError::ContextLengthExceeded { .. } => "context_length_exceeded",
            ApiError::BodyTooLarge { .. } => "body_too_large",
            ApiError::Unauthorized => "invalid_api_key",
            ApiError::RouteNotFound(_) => "unknown_route",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::SessionNotFound(_) => "session_not_found",
            ApiError::SessionExists(_) => "session_exists",
            ApiError::SessionLimit(_) => "session_limit",
            ApiError::SessionStore(_) => "session_store_unavailable",
            ApiError::SessionUnusable(_) => "session_unusable",
            ApiError::QueueFull { .. } => "queue_full",
            ApiError::ShuttingDown => "shutting_down",
            ApiError::InvalidRequest { .. } | ApiError::Internal(_) => return None,
        })
    }

    /// The error object as JSON.
    pub fn body(&self) -> serde_json::Value {
        let param = match self {
            ApiError::InvalidRequest { param, .. } => param.clone(),
            _ => None,
        };
        serde_json::json!({
            "type": "error",
            "error": {
                "message": self.to_string(),
                "type": self.kind(),
                "code": self.code(),
                "param": param,
            }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status(), axum::Json(self.body())).into_response();
        resp.extensions_mut().insert(ErrorKind(self.kind()));
        match self {
            ApiError::QueueFull { .. } | ApiError::ShuttingDown => {
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::Unauthorized => {
                resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        resp
    }
}

/// Marks an error response with its `type`, for the metrics middleware.
#[derive(Debug, Clone, Copy)]
pub struct ErrorKind(pub &'static str);

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> ApiError {
        match e {
            EngineError::PromptTooLong { tokens, ctx } => ApiError::ContextLengthExceeded { tokens, ctx },
            EngineError::Sampling(e) => ApiError::InvalidRequest { message: e.to_string(), param: None },
            EngineError::EmptyPrompt => ApiError::invalid("prompt", "the prompt is empty"),
            EngineError::Grammar(msg) => {
                ApiError::InvalidRequest { message: format!("invalid grammar: {msg}"), param: None }
            }
            EngineError::Template(e) => {
                ApiError::InvalidRequest { message: format!("chat template: {e}"), param: None }
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<StateError> for ApiError {
    fn from(e: StateError) -> ApiError {
        match e {
            StateError::NoSuchSession(name) => ApiError::SessionNotFound(name),
            StateError::SessionExists(name) => ApiError::SessionExists(name),
            StateError::InvalidName(_) => ApiError::invalid("session", e.to_string()),
            StateError::Engine(e) => e.into(),
            StateError::Io { .. } | StateError::LockTimeout(_) => ApiError::SessionStore(e.to_string()),
            StateError::Truncated { .. }
            | StateError::Malformed { .. }
            | StateError::WrongFormat { .. }
            | StateError::UnsupportedVersion { .. }
            | StateError::Checksum { .. }
            | StateError::ModelMismatch { .. }
            | StateError::TokenizerMismatch { .. }
            | StateError::LayoutMismatch { .. } => ApiError::SessionUnusable(e.to_string()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

/// Errors that stop the server from starting or running.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The async runtime or the engine thread could not start.
    #[error("cannot start the server: {0}")]
    Start(std::io::Error),
    /// Serving failed.
    #[error("server error: {0}")]
    Serve(std::io::Error),
    /// The session store or prefix cache could not be opened.
    #[error(transparent)]
    State(#[from] StateError),
    /// The engine failed while starting.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_types_and_codes() {
        let cases = [
            (ApiError::MalformedJson("x".into()), 400, "invalid_request_error", Some("invalid_json")),
            (ApiError::invalid("max_tokens", "bad"), 400, "invalid_request_error", None),
            (
                ApiError::ModelNotFound { requested: "gpt-4".into(), served: "m".into() },
                404,
                "not_found_error",
                Some("model_not_found"),
            ),
            (
                ApiError::ContextLengthExceeded { tokens: 9, ctx: 8 },
                400,
                "invalid_request_error",
                Some("context_length_exceeded"),
            ),
            (ApiError::BodyTooLarge { limit: 1 }, 413, "request_too_large", Some("body_too_large")),
            (ApiError::Unauthorized, 401, "authentication_error", Some("invalid_api_key")),
            (ApiError::QueueFull { queued: 3 }, 429, "rate_limit_error", Some("queue_full")),
            (ApiError::ShuttingDown, 503, "overloaded_error", Some("shutting_down")),
            (ApiError::SessionLimit("2 sessions".into()), 507, "invalid_request_error", Some("session_limit")),
            (ApiError::SessionStore("disk full".into()), 503, "server_error", Some("session_store_unavailable")),
            (ApiError::SessionUnusable("bad checksum".into()), 409, "invalid_request_error", Some("session_unusable")),
            (ApiError::Internal("boom".into()), 500, "server_error", None),
        ];
        for (e, status, kind, code) in cases {
            assert_eq!(e.status().as_u16(), status, "{e:?}");
            assert_eq!(e.kind(), kind, "{e:?}");
            assert_eq!(e.code(), code, "{e:?}");
            let body = e.body();
            assert_eq!(body["error"]["type"], kind);
            assert_eq!(body["error"]["message"], e.to_string());
        }
        assert_eq!(ApiError::invalid("max_tokens", "bad").body()["error"]["param"], "max_tokens");
    }

    #[test]
    fn engine_errors_map_to_client_errors() {
        let e: ApiError = EngineError::PromptTooLong { tokens: 10, ctx: 5 }.into();
        assert_eq!(e, ApiError::ContextLengthExceeded { tokens: 10, ctx: 5 });
        let e: ApiError = StateError::NoSuchSession("a".into()).into();
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
    }
}
