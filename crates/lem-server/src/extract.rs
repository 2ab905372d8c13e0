//! Request extractors that fail with [`ApiError`]s (axum's own answer in plain text).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, StatusCode};
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::state::AppState;

/// A JSON body. The content type is not checked (curl's `-d` sends a form type);
/// malformed JSON, wrong types and missing fields are 400s, an oversized body a 413.
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::BodyTooLarge { limit: state.max_body_bytes }
            } else {
                ApiError::InvalidRequest { message: rejection.body_text(), param: None }
            }
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Parses a request body, telling malformed JSON from JSON of the wrong shape.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::MalformedJson("the body is empty; send a JSON object".into()));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Syntax | Category::Eof | Category::Io => ApiError::MalformedJson(e.to_string()),
            Category::Data => ApiError::InvalidRequest { message: format!("invalid request: {e}"), param: None },
        }
    })
}

/// The `X-Lem-Session` header, if present and valid UTF-8.
pub fn session_header(headers: &HeaderMap) -> Option<String> {
    headers.get("x-lem-session").and_then(|v| v.to_str().ok()).map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    struct R {
        #[allow(dead_code)]
        messages: Vec<String>,
        #[allow(dead_code)]
        max_tokens: Option<i64>,
    }

    #[test]
    fn json_errors_are_classified() {
        let code = |b: &[u8]| parse_json::<R>(b).unwrap_err().code();
        assert_eq!(code(b"{\"messages\": ["), Some("invalid_json"));
        assert_eq!(code(b"not json"), Some("invalid_json"));
        assert_eq!(code(b""), Some("invalid_json"));
        let e = parse_json::<R>(b"{}").unwrap_err();
        assert!(matches!(e, ApiError::InvalidRequest { .. }));
        assert!(e.to_string().contains("missing field `messages`"), "{e}");
        let e = parse_json::<R>(br#"{"messages": [], "max_tokens": "ten"}"#).unwrap_err();
        assert!(e.to_string().contains("invalid type"), "{e}");
        assert_eq!(e.status().as_u16(), 400);
        assert!(parse_json::<R>(br#"{"messages": ["a"], "extra": 1}"#).is_ok());
    }

    #[test]
    fn session_header_is_read() {
        let mut h = HeaderMap::new();
        assert_eq!(session_header(&h), None);
        h.insert("x-lem-session", " bob ".parse().unwrap());
        assert_eq!(session_header(&h), Some("bob".into()));
    }
}
