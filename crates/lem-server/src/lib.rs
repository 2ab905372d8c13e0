//! lem's HTTP server: OpenAI-, Anthropic- and Ollama-compatible APIs over one
//! continuously batched engine.
//!
//! ```text
//!  HTTP (axum, tokio)                         engine thread (std)
//!  ------------------                         -------------------
//!  auth, request id, logs, metrics            WorkerHandle::submit -> FIFO queue (bounded: 429)
//!  ApiJson (400/413) -> GenSpec (params.rs)   admit: prefix-cache restore, common prefix
//!  generation::start: session wake + merge,   Batcher::step: one forward for every active
//!    template, tokens, context check            sequence (+ prompt chunks), per-sequence
//!  Running: events -> SSE / NDJSON / JSON       sampling, stop strings, streaming
//!  session sleep after Done (background)      finish: prefix-cache store, Done event
//! ```
//!
//! Routes: `POST /v1/chat/completions`, `POST /v1/completions`, `GET /v1/models[/{id}]`
//! (OpenAI); `POST /v1/messages` (Anthropic); `POST /api/chat`, `POST /api/generate`,
//! `GET /api/tags`, `GET /api/version` (Ollama); `POST /v1/embeddings` (OpenAI),
//! `POST /api/embed`, `POST /api/embeddings` (Ollama), `POST /tokenize`,
//! `POST /detokenize` (llama-server); `GET /v1/sessions`,
//! `GET|DELETE /v1/sessions/{name}`, `POST /v1/sessions/{name}/fork` (lem); `GET /health`,
//! `GET /metrics`. Every error is an [`ApiError`], turned into a status code and an
//! OpenAI-style error object in one place. See `docs/server.md`.

pub mod anthropic;
pub mod embed;
pub mod error;
pub mod extract;
pub mod generation;
pub mod metrics;
pub mod middleware;
pub mod ollama;
pub mod openai;
pub mod params;
pub mod reasoning;
pub mod sessions;
pub mod state;
pub mod tools;
pub mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use lem_engine::Engine;
use lem_state::{PrefixCache, PrefixCacheConfig, SessionStore};
use serde_json::json;

pub use error::{ApiError, ServerError};
pub use state::{AppState, ServerState, SessionLimits};

use crate::metrics::Metrics;
use crate::params::ModelNames;
use crate::worker::{WorkerConfig, WorkerHandle};

/// How to run the server.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// Address to bind (loopback by default).
    pub host: String,
    /// Port (0: any free port).
    pub port: u16,
    /// Require this key (`Authorization: Bearer` or `x-api-key`).
    pub api_key: Option<String>,
    /// Most sequences generating at once (the batch size).
    pub max_concurrent: usize,
    /// Most requests waiting for a slot; more get 429.
    pub max_queue: usize,
    /// Most prompt tokens prefilled per batch step.
    pub prefill_chunk: usize,
    /// Largest request body in bytes; larger gets 413.
    pub max_body_bytes: usize,
    /// Session store directory (`None`: the default, see `SessionStore::default_dir`).
    pub sessions_dir: Option<PathBuf>,
    /// Disk tier of the prefix cache (`None`: memory only).
    pub prefix_cache_dir: Option<PathBuf>,
    /// Byte budget of the prefix cache's memory tier.
    pub prefix_cache_memory: usize,
    /// Finished sequences kept whole for token-exact prefix reuse.
    pub recent_sequences: usize,
    /// Byte budget of the kept sequences.
    pub recent_bytes: usize,
    /// On SIGTERM/SIGINT, how long running generations may take to finish.
    pub shutdown_grace: Duration,
    /// A Jinja chat template replacing the model's (`--chat-template-file`).
    pub chat_template: Option<String>,
    /// What happens to `<think>` reasoning unless a request says otherwise (`--reasoning`).
    pub reasoning: reasoning::ReasoningMode,
    /// How embeddings pool the final hidden states of an input's tokens.
    pub pooling: lem_engine::Pooling,
    /// Limits on the session store.
    pub session_limits: SessionLimits,
    /// Speculative decoding for every request that does not opt out (`--draft`).
    pub draft: Option<lem_engine::DraftConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: "127.0.0.1".into(),
            port: 8080,
            api_key: None,
            max_concurrent: 16,
            max_queue: 64,
            prefill_chunk: 256,
            max_body_bytes: 2 << 20,
            sessions_dir: None,
            prefix_cache_dir: None,
            prefix_cache_memory: 512 << 20,
            recent_sequences: 8,
            recent_bytes: 256 << 20,
            shutdown_grace: Duration::from_secs(10),
            chat_template: None,
            reasoning: reasoning::ReasoningMode::Capture,
            pooling: lem_engine::Pooling::Mean,
            session_limits: SessionLimits::default(),
            draft: None,
        }
    }
}

/// Builds the shared state and starts the engine thread. `model_arg` is the `--model`
/// the user gave (it becomes one of the names the model answers to).
pub fn build_state(engine: Engine, model_arg: &str, config: &ServerConfig) -> Result<AppState, ServerError> {
    // The fingerprint names the KV state on disk; computing it now keeps it off the
    // first request.
    engine.model_fingerprint()?;
    let template = match &config.chat_template {
        Some(src) => {
            let (bos, eos) = engine.tokenizer().template_special_texts();
            Some(lem_tokenizer::ChatTemplate::from_source(src, bos, eos).map_err(lem_engine::EngineError::from)?)
        }
        None => None,
    };
    let engine = Arc::new(engine);
    let names = ModelNames::for_model(engine.path(), model_arg);
    let metrics = Arc::new(Metrics::default());
    let prefix = Arc::new(PrefixCache::new(PrefixCacheConfig {
        memory_budget: config.prefix_cache_memory,
        disk_dir: config.prefix_cache_dir.clone(),
        ..PrefixCacheConfig::default()
    })?);
    let dir = config.sessions_dir.clone().or_else(SessionStore::default_dir).ok_or_else(|| {
        ServerError::Start(std::io::Error::other("no sessions directory: pass --sessions-dir or set LEM_SESSIONS_DIR"))
    })?;
    let sessions = Arc::new(SessionStore::open(dir)?);
    let worker = WorkerHandle::start(
        engine.clone(),
        prefix.clone(),
        metrics.clone(),
        WorkerConfig {
            max_active: config.max_concurrent.max(1),
            max_queue: config.max_queue,
            prefill_chunk: config.prefill_chunk.max(1),
            recent_sequences: config.recent_sequences,
            recent_bytes: config.recent_bytes,
            pooling: config.pooling,
        },
    )?;
    let state = ServerState::new(
        engine,
        names,
        worker,
        metrics,
        prefix,
        sessions,
        config.api_key.clone(),
        config.max_body_bytes,
    );
    Ok(Arc::new(
        state
            .with_chat(template, config.reasoning)
            .with_session_limits(config.session_limits)
            .with_draft(config.draft.clone()),
    ))
}

/// Every route, with the middleware.
pub fn router(state: AppState) -> Router {
    let limit = state.max_body_bytes;
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .route("/v1/models", get(openai::models))
        .route("/v1/models/{id}", get(openai::model))
        .route("/v1/chat/completions", post(openai::chat))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/messages", post(anthropic::messages))
        .route("/api/chat", post(ollama::chat))
        .route("/api/generate", post(ollama::generate))
        .route("/api/tags", get(ollama::tags))
        .route("/api/version", get(ollama::version))
        .route("/v1/embeddings", post(embed::openai))
        .route("/api/embed", post(embed::ollama))
        .route("/api/embeddings", post(embed::ollama_legacy))
        .route("/tokenize", post(embed::tokenize))
        .route("/detokenize", post(embed::detokenize))
        .route("/v1/sessions", get(sessions::list))
        .route("/v1/sessions/{name}", get(sessions::show).delete(sessions::remove))
        .route("/v1/sessions/{name}/fork", post(sessions::fork))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), middleware::auth))
        .layer(axum::middleware::from_fn_with_state(state.clone(), middleware::observe))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::RouteNotFound(uri.path().to_owned())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

async fn health(State(state): State<AppState>) -> axum::Json<serde_json::Value> {
    let m = &state.metrics;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    axum::Json(json!({
        "status": if state.worker.is_closing() { "shutting_down" } else { "ok" },
        "model": state.names.primary,
        "active": load(&m.active),
        "queued": load(&m.queued),
        "ctx_size": state.engine.ctx_size(),
    }))
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    let text = state.metrics.render(&state.prefix.stats());
    let mut resp = text.into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
    resp
}

/// Installs the structured log subscriber (stderr; `RUST_LOG` filters, `info` by default).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .try_init();
}

/// Waits for SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// Serves `engine` until SIGINT/SIGTERM, then shuts down gracefully: stops accepting,
/// lets running generations finish within the grace period (then cancels them), waits for
/// session saves. `on_ready` gets the bound address.
pub fn run(
    engine: Engine,
    model_arg: &str,
    config: &ServerConfig,
    on_ready: impl FnOnce(SocketAddr, &ServerState),
) -> Result<(), ServerError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("lem-http")
        .enable_all()
        .build()
        .map_err(ServerError::Start)?;
    let state = build_state(engine, model_arg, config)?;
    runtime.block_on(serve(state, config, on_ready))
}

async fn serve(
    state: AppState,
    config: &ServerConfig,
    on_ready: impl FnOnce(SocketAddr, &ServerState),
) -> Result<(), ServerError> {
    let addr = format!("{}:{}", config.host, config.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|source| ServerError::Bind { addr: addr.clone(), source })?;
    let local = listener.local_addr().map_err(ServerError::Start)?;
    on_ready(local, &state);
    let app = router(state.clone());
    let signalled = Arc::new(tokio::sync::Notify::new());
    let (grace, st, sig) = (config.shutdown_grace, state.clone(), signalled.clone());
    let shutdown = async move {
        shutdown_signal().await;
        tracing::info!("signal received: shutting down");
        st.worker.shutdown(grace);
        sig.notify_one();
    };
    let mut server = tokio::spawn(async move { axum::serve(listener, app).with_graceful_shutdown(shutdown).await });
    let result = tokio::select! {
        r = &mut server => r,
        () = signalled.notified() => {
            match tokio::time::timeout(grace + Duration::from_secs(5), &mut server).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!("connections still open after the grace period; closing them");
                    server.abort();
                    Ok(Ok(()))
                }
            }
        }
    };
    state.worker.shutdown(grace);
    let worker_state = state.clone();
    let _ = tokio::task::spawn_blocking(move || worker_state.worker.join()).await;
    if !state.background.wait(Duration::from_secs(60)).await {
        tracing::warn!("session saves still running at exit");
    }
    tracing::info!("stopped");
    match result {
        Ok(r) => r.map_err(ServerError::Serve),
        Err(e) => Err(ServerError::Serve(std::io::Error::other(e))),
    }
}
