//! The `http` target: request bodies of every endpoint, sent through lem's real router
//! (middleware, extractors, handlers, the engine worker) on a tiny model.
//!
//! An input is `METHOD PATH\n` followed by the body; its mutations change the body as
//! JSON (or as bytes), and sometimes the route. Every response must be well formed: a
//! status lem documents (never 500), a JSON error body for every error, and a body that
//! ends (streams included).

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use lem_engine::{Engine, EngineConfig};
use lem_server::{ServerConfig, build_state, router};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tower::ServiceExt;

use crate::mutate::{mutate_bytes, mutate_json};
use crate::targets::{Fixtures, FuzzError};

/// The routes requests go to (the method comes first).
pub(crate) const ROUTES: &[&str] = &[
    "POST /v1/chat/completions",
    "POST /v1/completions",
    "POST /v1/messages",
    "POST /api/chat",
    "POST /api/generate",
    "POST /v1/embeddings",
    "POST /api/embed",
    "POST /api/embeddings",
    "POST /tokenize",
    "POST /detokenize",
    "POST /v1/sessions/s0/fork",
    "GET /v1/sessions/s0",
    "DELETE /v1/sessions/s1",
];

/// Well-formed requests of every endpoint, streaming and not, with the features agents use.
pub(crate) fn seeds(_: &Fixtures) -> Result<Vec<Vec<u8>>, FuzzError> {
    let tools = r#"[{"type":"function","function":{"name":"get_weather","description":"Weather","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}]"#;
    let bodies = [
        ("POST /v1/chat/completions", r#"{"model":"m","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hello"}],"max_tokens":4,"temperature":0}"#.to_owned()),
        ("POST /v1/chat/completions", r#"{"messages":[{"role":"user","content":[{"type":"text","text":"Hi"}]}],"max_tokens":3,"stream":true,"stream_options":{"include_usage":true},"logprobs":true,"top_logprobs":2,"seed":3,"temperature":0.8,"top_p":0.9,"stop":["\n"]}"#.to_owned()),
        ("POST /v1/chat/completions", r#"{"messages":[{"role":"user","content":"JSON please"}],"max_tokens":8,"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{"type":"object","properties":{"a":{"type":"integer"}},"required":["a"]}}}}"#.to_owned()),
        ("POST /v1/chat/completions", format!(r#"{{"messages":[{{"role":"user","content":"Weather in Paris?"}}],"max_tokens":16,"tools":{tools},"tool_choice":"required"}}"#)),
        ("POST /v1/chat/completions", format!(r#"{{"messages":[{{"role":"user","content":"Weather?"}},{{"role":"assistant","content":null,"tool_calls":[{{"id":"c1","type":"function","function":{{"name":"get_weather","arguments":"{{\"city\":\"Paris\"}}"}}}}]}},{{"role":"tool","tool_call_id":"c1","content":"sunny"}}],"max_tokens":4,"tools":{tools},"stream":true}}"#)),
        ("POST /v1/chat/completions", r#"{"messages":[{"role":"user","content":"Hi"}],"max_tokens":3,"session":"s0"}"#.to_owned()),
        ("POST /v1/completions", r#"{"prompt":"Once upon a time","max_tokens":4,"temperature":0,"echo":true,"logprobs":2}"#.to_owned()),
        ("POST /v1/completions", r#"{"prompt":[1,2,3],"max_tokens":3,"stream":true,"grammar":"root ::= \"yes\" | \"no\""}"#.to_owned()),
        ("POST /v1/messages", r#"{"model":"m","max_tokens":4,"system":"Be brief.","messages":[{"role":"user","content":"Hello"}]}"#.to_owned()),
        ("POST /v1/messages", r#"{"max_tokens":8,"stream":true,"messages":[{"role":"user","content":[{"type":"text","text":"Weather?"}]}],"tools":[{"name":"get_weather","input_schema":{"type":"object","properties":{"city":{"type":"string"}}}}],"tool_choice":{"type":"any"}}"#.to_owned()),
        ("POST /api/chat", r#"{"model":"m","messages":[{"role":"user","content":"Hello"}],"stream":false,"options":{"num_predict":4,"temperature":0},"format":"json"}"#.to_owned()),
        ("POST /api/generate", r#"{"model":"m","prompt":"Hello","stream":true,"options":{"num_predict":3,"seed":1}}"#.to_owned()),
        ("POST /v1/embeddings", r#"{"model":"m","input":["hello","world"],"encoding_format":"base64"}"#.to_owned()),
        ("POST /api/embed", r#"{"model":"m","input":"hello"}"#.to_owned()),
        ("POST /api/embeddings", r#"{"model":"m","prompt":"hello"}"#.to_owned()),
        ("POST /tokenize", r#"{"content":"hello world","add_special":true,"with_pieces":true}"#.to_owned()),
        ("POST /detokenize", r#"{"tokens":[1,2,3]}"#.to_owned()),
        ("POST /v1/sessions/s0/fork", r#"{"name":"s1"}"#.to_owned()),
        ("GET /v1/sessions/s0", String::new()),
    ];
    Ok(bodies.iter().map(|(route, body)| format!("{route}\n{body}").into_bytes()).collect())
}

/// Mutates the body as JSON (or bytes), or moves the body to another route.
pub(crate) fn mutate(rng: &mut ChaCha8Rng, data: &mut Vec<u8>, other: &[u8]) {
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let (head, body) = data.split_at(split.min(data.len()));
    let mut head = head.to_vec();
    let mut body = body.get(1..).unwrap_or_default().to_vec();
    match rng.random_range(0..10u32) {
        0 => head = ROUTES[rng.random_range(0..ROUTES.len())].as_bytes().to_vec(),
        1 => {
            let hot = body.len();
            mutate_bytes(rng, &mut body, other, hot)
        }
        _ => mutate_json(rng, &mut body, other),
    }
    head.push(b'\n');
    head.extend_from_slice(&body);
    *data = head;
}

struct Server {
    rt: tokio::runtime::Runtime,
    app: Router,
    _dir: tempfile::TempDir,
}

static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();

fn server(fx: &Fixtures) -> Result<&'static Server, String> {
    SERVER
        .get_or_init(|| {
            let path = fx.tiny_file("qwen3/f32.gguf").map_err(|e| e.to_string())?;
            let engine = Engine::load(&path, EngineConfig { threads: 1, ctx_size: 512 }).map_err(|e| e.to_string())?;
            let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
            let config = ServerConfig {
                sessions_dir: Some(dir.path().join("sessions")),
                prefix_cache_dir: Some(dir.path().join("prefix")),
                max_concurrent: 4,
                ..ServerConfig::default()
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            let _guard = rt.enter();
            let state = build_state(engine, "m", &config).map_err(|e| e.to_string())?;
            Ok(Server { app: router(state), rt, _dir: dir })
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Sends one input; true when the server answered 2xx.
pub(crate) fn run(fx: &Fixtures, _: &Path, input: &[u8]) -> bool {
    let Ok(server) = server(fx) else { return false };
    let split = input.iter().position(|&b| b == b'\n').unwrap_or(input.len());
    let head = String::from_utf8_lossy(&input[..split]);
    let body = input.get(split + 1..).unwrap_or_default().to_vec();
    let Some((method, path)) = head.split_once(' ') else { return false };
    let Ok(request) =
        Request::builder().method(method).uri(path).header("content-type", "application/json").body(Body::from(body))
    else {
        return false;
    };
    let app = server.app.clone();
    let (status, bytes) = server.rt.block_on(async move {
        let response = tokio::time::timeout(Duration::from_secs(60), app.oneshot(request))
            .await
            .expect("no response within 60 s")
            .expect("the router is infallible");
        let status = response.status();
        let bytes = tokio::time::timeout(Duration::from_secs(60), response.into_body().collect())
            .await
            .expect("the body did not end within 60 s")
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        (status, bytes)
    });
    if std::env::var_os("LEM_FUZZ_VERBOSE").is_some() {
        eprintln!("{head} -> {status}: {}", String::from_utf8_lossy(&bytes[..bytes.len().min(300)]));
    }
    assert_ne!(status, StatusCode::INTERNAL_SERVER_ERROR, "{head}: 500: {}", String::from_utf8_lossy(&bytes));
    if !status.is_success() {
        let v: serde_json::Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{head}: {status} with a body that is not JSON ({e}): {bytes:?}"));
        assert!(
            v.get("error").is_some() || v.get("type").is_some(),
            "{head}: {status}: error body without an error: {v}"
        );
    }
    status.is_success()
}
