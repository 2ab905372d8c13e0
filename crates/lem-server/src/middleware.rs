//! Request ids, structured request logs and metrics, and the API key check.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::{ApiError, ErrorKind};
use crate::state::AppState;

/// The id of the request being served (also sent back as `x-request-id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

/// Gives every request an id, then logs and counts it when its response starts.
pub async fn observe(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let start = Instant::now();
    let id = state.request_id();
    req.extensions_mut().insert(RequestId(id.clone()));
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let route = req.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let mut resp = next.run(req).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    let status = resp.status().as_u16();
    let error = resp.extensions().get::<ErrorKind>().map(|k| k.0);
    let seconds = start.elapsed().as_secs_f64();
    state.metrics.request(&method, &route, status, error, seconds);
    if status >= 500 {
        tracing::error!(request_id = id, method, path, status, ms = format!("{:.1}", seconds * 1e3), "request");
    } else if status >= 400 {
        tracing::warn!(request_id = id, method, path, status, error, ms = format!("{:.1}", seconds * 1e3), "request");
    } else {
        tracing::info!(request_id = id, method, path, status, ms = format!("{:.1}", seconds * 1e3), "request");
    }
    resp
}

/// With an API key configured, refuses requests without it (`/health` stays open).
pub async fn auth(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(key) = &state.api_key
        && req.uri().path() != "/health"
        && !has_key(req.headers(), key)
    {
        return ApiError::Unauthorized.into_response();
    }
    next.run(req).await
}

/// Whether `Authorization: Bearer <key>` or `x-api-key: <key>` carries `key`.
pub fn has_key(headers: &axum::http::HeaderMap, key: &str) -> bool {
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    let x_api_key = headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::trim);
    [bearer, x_api_key].into_iter().flatten().any(|given| constant_time_eq(given.as_bytes(), key.as_bytes()))
}

/// Compares without stopping at the first difference.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderMap;

    #[test]
    fn keys_from_either_header() {
        let mut h = HeaderMap::new();
        assert!(!has_key(&h, "k"));
        h.insert("authorization", "Bearer k".parse().unwrap());
        assert!(has_key(&h, "k"));
        assert!(!has_key(&h, "other"));
        let mut h = HeaderMap::new();
        h.insert("x-api-key", "k".parse().unwrap());
        assert!(has_key(&h, "k"));
        h.insert("x-api-key", "kk".parse().unwrap());
        assert!(!has_key(&h, "k"));
    }
}
