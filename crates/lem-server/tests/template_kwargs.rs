//! `chat_template_kwargs` on `/v1/chat/completions`, on a tiny Hugging Face model whose
//! chat template reads two variables: `enable_thinking` (as Qwen 3's does) adds text to
//! the generation prompt, `strict` raises an error. The router is driven in-process.
//!
//! The tiny model comes from `python3 scripts/fixtures/tiny_models.py` (run by
//! scripts/test.sh); the test panics with that instruction when it is missing.
#![allow(missing_docs)]

use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use lem_engine::{Engine, EngineConfig};
use lem_server::{AppState, ServerConfig, build_state, router};
use serde_json::{Value, json};
use tower::ServiceExt;

/// A Llama 3 style template that reads `enable_thinking` and `strict`.
const TEMPLATE: &str = concat!(
    "{%- if strict is defined and strict %}{{ raise_exception('strict mode: ' + strict) }}{%- endif %}",
    "{{- bos_token }}",
    "{%- for message in messages %}",
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] + '<|eot_id|>' }}",
    "{%- endfor %}",
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}",
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- 'no thinking today, thank you' }}{%- endif %}",
    "{%- endif %}",
);

/// The tiny Qwen 3 directory.
fn tiny_qwen3() -> PathBuf {
    let dir = std::env::var_os("LEM_TINY_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/tiny-models"))
        .join("qwen3/hf");
    assert!(
        dir.join("config.json").is_file(),
        "tiny models are missing ({}): run `python3 scripts/fixtures/tiny_models.py` (scripts/test.sh does)",
        dir.display()
    );
    dir
}

/// A copy of the tiny model with [`TEMPLATE`] as its chat template.
fn model_with_template(dst: &Path) {
    for entry in std::fs::read_dir(tiny_qwen3()).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, dst.join(p.file_name().unwrap())).unwrap();
    }
    let cfg_path = dst.join("tokenizer_config.json");
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["chat_template"] = json!(TEMPLATE);
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
}

fn state(dir: &Path) -> AppState {
    model_with_template(dir);
    let engine = Engine::load(dir, EngineConfig { threads: 2, ctx_size: 512 }).unwrap();
    let config = ServerConfig { api_key: None, sessions_dir: Some(dir.join("sessions")), ..ServerConfig::default() };
    build_state(engine, "tiny-qwen3", &config).unwrap()
}

async fn chat(state: &AppState, extra: Value) -> (StatusCode, Value) {
    let mut body = json!({
        "messages": [{"role": "user", "content": "Hello there"}],
        "max_tokens": 1,
        "temperature": 0,
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let req = Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = router(state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{e}: {bytes:?}")))
}

async fn prompt_tokens(state: &AppState, extra: Value) -> u64 {
    let (status, v) = chat(state, extra).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    v["usage"]["prompt_tokens"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_template_kwargs_reach_the_template() {
    let dir = tempfile::tempdir().unwrap();
    let state = state(dir.path());
    let plain = prompt_tokens(&state, json!({})).await;
    let no_think = prompt_tokens(&state, json!({"chat_template_kwargs": {"enable_thinking": false}})).await;
    let think = prompt_tokens(&state, json!({"chat_template_kwargs": {"enable_thinking": true}})).await;
    let null = prompt_tokens(&state, json!({"chat_template_kwargs": null})).await;
    let empty = prompt_tokens(&state, json!({"chat_template_kwargs": {}})).await;
    let expected_extra =
        state.engine.tokenizer().encode("no thinking today, thank you", lem_tokenizer::Bos::Omit).unwrap().len();
    assert!(no_think > plain, "{no_think} vs {plain}");
    // The suffix tokenizes on its own (it follows "\n\n", a pre-tokenizer boundary).
    assert_eq!(no_think - plain, expected_extra as u64);
    assert_eq!(think, plain);
    assert_eq!(null, plain);
    assert_eq!(empty, plain);

    // A template error caused by a kwarg is the client's: 400 with the template's message.
    let (status, v) = chat(&state, json!({"chat_template_kwargs": {"strict": "on"}})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("strict mode: on"), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_template_kwargs_must_be_an_object() {
    let dir = tempfile::tempdir().unwrap();
    let state = state(dir.path());
    for bad in [json!("enable_thinking=false"), json!([{"enable_thinking": false}]), json!(true), json!(1)] {
        let (status, v) = chat(&state, json!({ "chat_template_kwargs": bad })).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {v}");
        assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
        assert_eq!(v["error"]["param"], "chat_template_kwargs", "{v}");
        assert!(v["error"]["message"].as_str().unwrap().contains("must be a JSON object"), "{v}");
    }
}
