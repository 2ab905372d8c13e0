//! lem's session routes: `GET /v1/sessions`, `GET|DELETE /v1/sessions/{name}`,
//! `POST /v1/sessions/{name}/fork`.
//!
//! Sessions are used by sending a `session` field (or an `X-Lem-Session` header) with any
//! generation request; see [`crate::generation`].

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use lem_state::{SessionInfo, SessionStore};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::params;
use crate::state::AppState;

/// `POST /v1/sessions/{name}/fork` body.
#[derive(Debug, Clone, Deserialize)]
pub struct ForkRequest {
    /// The new session's name.
    #[serde(alias = "name")]
    pub to: String,
}

fn info_json(info: &SessionInfo) -> Value {
    let mut v = serde_json::to_value(info).unwrap_or_default();
    v["object"] = json!("session");
    v
}

async fn blocking<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&SessionStore) -> Result<T, lem_state::StateError> + Send + 'static,
) -> Result<T, ApiError> {
    let store = state.sessions.clone();
    Ok(tokio::task::spawn_blocking(move || f(&store)).await.map_err(|e| ApiError::Internal(e.to_string()))??)
}

fn checked(name: String) -> Result<String, ApiError> {
    params::session_name(Some(name))?.ok_or_else(|| ApiError::invalid("session", "missing session name"))
}

/// `GET /v1/sessions`.
pub async fn list(State(state): State<AppState>) -> Result<axum::Json<Value>, ApiError> {
    let infos = blocking(&state, SessionStore::list).await?;
    Ok(axum::Json(json!({"object": "list", "data": infos.iter().map(info_json).collect::<Vec<_>>()})))
}

/// `GET /v1/sessions/{name}`: the entry and its transcript.
pub async fn show(State(state): State<AppState>, Path(name): Path<String>) -> Result<axum::Json<Value>, ApiError> {
    let name = checked(name)?;
    let (info, transcript) = blocking(&state, move |s| s.show(&name)).await?;
    let mut v = info_json(&info);
    v["transcript"] = serde_json::to_value(&transcript.messages).unwrap_or_default();
    Ok(axum::Json(v))
}

/// `DELETE /v1/sessions/{name}`.
pub async fn remove(State(state): State<AppState>, Path(name): Path<String>) -> Result<axum::Json<Value>, ApiError> {
    let name = checked(name)?;
    let _guard = state.session_lock(&name).lock_owned().await;
    let n = name.clone();
    if !blocking(&state, move |s| s.remove(&n)).await? {
        return Err(ApiError::SessionNotFound(name));
    }
    Ok(axum::Json(json!({"id": name, "object": "session", "deleted": true})))
}

/// `POST /v1/sessions/{name}/fork` with `{"to": "<new name>"}`.
pub async fn fork(
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<ForkRequest>,
) -> Result<Response, ApiError> {
    let src = checked(name)?;
    let dst = checked(req.to)?;
    let _guard = state.session_lock(&src).lock_owned().await;
    let info = blocking(&state, move |s| s.fork(&src, &dst)).await?;
    Ok((StatusCode::CREATED, axum::Json(info_json(&info))).into_response())
}
