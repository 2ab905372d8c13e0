//! The router on the real default model, driven in-process (no sockets): status codes
//! and error objects for bad input, response shapes, greedy output equal to `generate`,
//! prefix reuse, sessions.

use std::ops::ControlFlow;
use std::sync::OnceLock;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use lem_engine::{Engine, EngineConfig, GenerateRequest, generate};
use lem_server::{AppState, ServerConfig, build_state, router};
use lem_tokenizer::{Bos, ChatMessage};
use serde_json::{Value, json};
use tower::ServiceExt;

fn model_path() -> std::path::PathBuf {
    let spec = lem_hub::find("smollm2-135m").expect("known alias");
    let path = lem_hub::models_dir().expect("models dir").join(spec.file_name);
    assert!(path.is_file(), "model missing at {}: run `lem models fetch all`", path.display());
    path
}

fn engine() -> Engine {
    Engine::load(&model_path(), EngineConfig { threads: 2, ctx_size: 1024 }).unwrap()
}

/// One server state per test binary (the engine thread is shared by the tests).
fn state() -> AppState {
    static STATE: OnceLock<(AppState, tempfile::TempDir)> = OnceLock::new();
    STATE
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let config = ServerConfig {
                api_key: None,
                max_body_bytes: 64 << 10,
                sessions_dir: Some(dir.path().join("sessions")),
                ..ServerConfig::default()
            };
            (build_state(engine(), "smollm2-135m", &config).unwrap(), dir)
        })
        .0
        .clone()
}

async fn call(
    state: &AppState,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> (StatusCode, String) {
    let mut req = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(body.map_or_else(Body::empty, |b| Body::from(b.to_owned()))).unwrap();
    let resp = router(state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

async fn post_json(state: &AppState, path: &str, body: &Value) -> (StatusCode, Value) {
    let (s, text) = call(state, "POST", path, Some(&body.to_string()), &[]).await;
    (s, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")))
}

#[track_caller]
fn assert_error(status: StatusCode, body: &str, want: u16, code: Option<&str>) {
    assert_eq!(status.as_u16(), want, "{body}");
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert!(v["error"]["message"].is_string(), "{body}");
    assert!(v["error"]["type"].is_string(), "{body}");
    if let Some(code) = code {
        assert_eq!(v["error"]["code"], code, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_typed_errors() {
    let s = state();
    let chat = "/v1/chat/completions";
    let (st, b) = call(&s, "POST", chat, Some("{\"messages\": [}"), &[]).await;
    assert_error(st, &b, 400, Some("invalid_json"));
    let (st, b) = call(&s, "POST", chat, Some("{}"), &[]).await;
    assert_error(st, &b, 400, None);
    assert!(b.contains("messages"), "{b}");
    let (st, b) = call(&s, "POST", chat, Some(r#"{"messages": "hi"}"#), &[]).await;
    assert_error(st, &b, 400, None);
    let (st, b) =
        call(&s, "POST", chat, Some(r#"{"messages": [{"role":"user","content":"x"}], "temperature": "hot"}"#), &[])
            .await;
    assert_error(st, &b, 400, None);
    let (st, b) =
        call(&s, "POST", chat, Some(r#"{"model":"gpt-4o","messages":[{"role":"user","content":"x"}]}"#), &[]).await;
    assert_error(st, &b, 404, Some("model_not_found"));
    for mt in ["-5", "0", "100000000"] {
        let body = format!(r#"{{"messages":[{{"role":"user","content":"x"}}],"max_tokens":{mt}}}"#);
        let (st, b) = call(&s, "POST", chat, Some(&body), &[]).await;
        assert_error(st, &b, 400, None);
    }
    let long = "word ".repeat(2000);
    let body = json!({"messages": [{"role": "user", "content": long}]}).to_string();
    let (st, b) = call(&s, "POST", chat, Some(&body), &[]).await;
    assert_error(st, &b, 400, Some("context_length_exceeded"));
    let huge = json!({"messages": [{"role": "user", "content": "x".repeat(100 << 10)}]}).to_string();
    let (st, b) = call(&s, "POST", chat, Some(&huge), &[]).await;
    assert_error(st, &b, 413, Some("body_too_large"));
    let (st, b) = call(&s, "GET", "/v1/nope", None, &[]).await;
    assert_error(st, &b, 404, Some("unknown_route"));
    let (st, b) = call(&s, "GET", chat, None, &[]).await;
    assert_error(st, &b, 405, None);
    let (st, b) = call(&s, "POST", "/v1/messages", Some(r#"{"messages":[{"role":"user","content":"x"}]}"#), &[]).await;
    assert_error(st, &b, 400, None);
    assert!(b.contains("max_tokens"), "{b}");
    let (st, b) = call(&s, "POST", "/api/chat", Some(r#"{"messages":[{"role":"function","content":"x"}]}"#), &[]).await;
    assert_error(st, &b, 400, None);
    let (st, b) =
        call(&s, "POST", chat, Some(r#"{"messages":[{"role":"user","content":"x"}],"session":"../x"}"#), &[]).await;
    assert_error(st, &b, 400, None);
    // Still serving.
    let (st, _) = call(&s, "GET", "/health", None, &[]).await;
    assert_eq!(st, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_is_required_when_set() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        api_key: Some("sekrit".into()),
        sessions_dir: Some(dir.path().to_owned()),
        max_concurrent: 1,
        ..ServerConfig::default()
    };
    let s = build_state(engine(), "smollm2-135m", &config).unwrap();
    let (st, b) = call(&s, "GET", "/v1/models", None, &[]).await;
    assert_error(st, &b, 401, Some("invalid_api_key"));
    let (st, b) = call(&s, "GET", "/v1/models", None, &[("authorization", "Bearer wrong")]).await;
    assert_error(st, &b, 401, Some("invalid_api_key"));
    let (st, _) = call(&s, "GET", "/v1/models", None, &[("authorization", "Bearer sekrit")]).await;
    assert_eq!(st, 200);
    let (st, _) = call(&s, "GET", "/api/tags", None, &[("x-api-key", "sekrit")]).await;
    assert_eq!(st, 200);
    let (st, _) = call(&s, "GET", "/health", None, &[]).await;
    assert_eq!(st, 200);
    s.worker.shutdown(std::time::Duration::ZERO);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greedy_chat_equals_generate_and_prefix_is_reused() {
    let s = state();
    let system = "You are a terse assistant. ".repeat(20);
    let ask = |q: &str| {
        json!({"model": "default", "temperature": 0, "max_tokens": 12,
               "messages": [{"role": "system", "content": system}, {"role": "user", "content": q}]})
    };
    let (st, first) = post_json(&s, "/v1/chat/completions", &ask("Name a fruit.")).await;
    assert_eq!(st, 200, "{first}");
    assert_eq!(first["object"], "chat.completion");
    assert_eq!(first["model"], "smollm2-135m");
    let usage = &first["usage"];

    // The same prompt through `generate` on a fresh sequence.
    let e = &s.engine;
    let text = e.render_chat(&[ChatMessage::system(system.clone()), ChatMessage::user("Name a fruit.")]).unwrap();
    let ids = e.tokenizer().encode(&text, Bos::ModelDefault).unwrap();
    assert_eq!(usage["prompt_tokens"], ids.len());
    let mut seq = e.new_sequence();
    let req = GenerateRequest { max_tokens: 12, ..Default::default() };
    let want = generate(e, &mut seq, &ids, &req, &mut |_| ControlFlow::Continue(())).unwrap();
    assert_eq!(first["choices"][0]["message"]["content"], want.text);
    assert_eq!(usage["completion_tokens"], want.ids.len());

    // A second question after the same system prompt reuses its blocks.
    let (st, second) = post_json(&s, "/v1/chat/completions", &ask("Name a colour.")).await;
    assert_eq!(st, 200);
    let cached = second["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap();
    assert!(cached >= 128, "cached {cached}: {second}");

    let (_, metrics) = call(&s, "GET", "/metrics", None, &[]).await;
    assert!(metrics.contains("lem_prefix_cache_hits_total"), "{metrics}");
    assert!(metrics.contains("lem_time_to_first_token_seconds_count"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_well_formed() {
    let s = state();
    let body = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5, "stream": true,
                      "stream_options": {"include_usage": true}, "seed": 3});
    let (st, text) = call(&s, "POST", "/v1/chat/completions", Some(&body.to_string()), &[]).await;
    assert_eq!(st, 200);
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(*events.last().unwrap(), "data: [DONE]", "{text}");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap())
        .collect();
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(usage["completion_tokens"], 5);
    assert_eq!(chunks[chunks.len() - 2]["choices"][0]["finish_reason"], "length");

    let body = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5, "stream": true});
    let (st, text) = call(&s, "POST", "/v1/messages", Some(&body.to_string()), &[]).await;
    assert_eq!(st, 200);
    let names: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("event: ")).collect();
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(names.last(), Some(&"message_stop"));
    assert!(names.contains(&"message_delta"), "{text}");

    let body = json!({"model": "smollm2-135m:latest", "messages": [{"role": "user", "content": "Hi"}],
                      "options": {"num_predict": 4}});
    let (st, text) = call(&s, "POST", "/api/chat", Some(&body.to_string()), &[]).await;
    assert_eq!(st, 200);
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let last = lines.last().unwrap();
    assert_eq!(last["done"], true);
    assert_eq!(last["eval_count"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_continue_and_list() {
    let s = state();
    let turn = |content: &str| json!({"session": "t1", "temperature": 0, "max_tokens": 6, "messages": [{"role": "user", "content": content}]});
    let (st, a) = post_json(&s, "/v1/chat/completions", &turn("My name is Ada.")).await;
    assert_eq!(st, 200, "{a}");
    // Only the new turn: the session supplies the history, and its KV state.
    let (st, b) = post_json(&s, "/v1/chat/completions", &turn("What is my name?")).await;
    assert_eq!(st, 200, "{b}");
    let prompt = b["usage"]["prompt_tokens"].as_u64().unwrap();
    let cached = b["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap();
    assert!(prompt > a["usage"]["prompt_tokens"].as_u64().unwrap(), "{b}");
    assert!(cached >= a["usage"]["prompt_tokens"].as_u64().unwrap(), "cached {cached}: {b}");
    // The save runs in the background, under the session's lock.
    drop(s.session_lock("t1").lock().await);
    let (st, list) = call(&s, "GET", "/v1/sessions", None, &[]).await;
    assert_eq!(st, 200);
    assert!(list.contains("\"t1\""), "{list}");
    let (st, one) = call(&s, "GET", "/v1/sessions/t1", None, &[]).await;
    assert_eq!(st, 200);
    let one: Value = serde_json::from_str(&one).unwrap();
    assert_eq!(one["transcript"].as_array().unwrap().len(), 4, "{one}");
    let (st, _) = call(&s, "POST", "/v1/sessions/t1/fork", Some(r#"{"to":"t2"}"#), &[]).await;
    assert_eq!(st, 201);
    let (st, b) = call(&s, "POST", "/v1/sessions/t1/fork", Some(r#"{"to":"t2"}"#), &[]).await;
    assert_error(st, &b, 409, Some("session_exists"));
    let (st, _) = call(&s, "DELETE", "/v1/sessions/t2", None, &[]).await;
    assert_eq!(st, 200);
    let (st, b) = call(&s, "DELETE", "/v1/sessions/t2", None, &[]).await;
    assert_error(st, &b, 404, Some("session_not_found"));
}
