//! Embeddings and the tokenizer: `POST /v1/embeddings` (OpenAI), `POST /api/embed` and
//! `POST /api/embeddings` (Ollama, current and legacy), `POST /tokenize` and
//! `POST /detokenize` (llama-server).
//!
//! Inputs are tokenized and checked here (empty, longer than the context, token ids
//! outside the vocabulary: 400s naming the input); the vectors are computed on the engine
//! thread between batch steps ([`crate::worker::EmbedSubmission`]), pooled as
//! `lem serve --pooling` says and L2-normalised.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use lem_tokenizer::Bos;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::middleware::RequestId;
use crate::state::{AppState, ServerState};
use crate::worker::EmbedSubmission;

/// Most inputs in one request (OpenAI's limit).
pub const MAX_INPUTS: usize = 2048;

/// `POST /v1/embeddings` body.
#[derive(Debug, Clone, Deserialize)]
pub struct EmbeddingsRequest {
    /// A string, an array of strings, an array of token ids or an array of arrays of
    /// token ids.
    pub input: Value,
    /// The model name.
    pub model: Option<String>,
    /// `float` (the default) or `base64` (little-endian f32 bytes).
    pub encoding_format: Option<String>,
    /// Accepted only when equal to the model's embedding size.
    pub dimensions: Option<i64>,
    /// Ignored (OpenAI's end-user id).
    pub user: Option<String>,
}

/// `POST /api/embed` body (Ollama).
#[derive(Debug, Clone, Deserialize)]
pub struct OllamaEmbedRequest {
    /// The model name.
    pub model: Option<String>,
    /// A string or an array of strings.
    pub input: Value,
    /// Cut inputs longer than the context to it (default true, as Ollama does); false
    /// makes them an error.
    pub truncate: Option<bool>,
    /// Ignored (Ollama's model options and keep-alive).
    pub options: Option<Value>,
    /// Ignored.
    pub keep_alive: Option<Value>,
}

/// `POST /api/embeddings` body (Ollama's legacy endpoint).
#[derive(Debug, Clone, Deserialize)]
pub struct OllamaLegacyRequest {
    /// The model name.
    pub model: Option<String>,
    /// The text.
    pub prompt: String,
    /// Ignored.
    pub options: Option<Value>,
    /// Ignored.
    pub keep_alive: Option<Value>,
}

/// `POST /tokenize` body (llama-server).
#[derive(Debug, Clone, Deserialize)]
pub struct TokenizeRequest {
    /// The text.
    pub content: String,
    /// Add the model's BOS token as a prompt gets it (default false, as llama-server).
    #[serde(default)]
    pub add_special: bool,
    /// Return `{id, piece}` objects instead of bare ids.
    #[serde(default)]
    pub with_pieces: bool,
}

/// `POST /detokenize` body (llama-server).
#[derive(Debug, Clone, Deserialize)]
pub struct DetokenizeRequest {
    /// Token ids.
    pub tokens: Vec<Value>,
}

/// One input of an embedding request, before tokenizing.
enum Input {
    Text(String),
    Ids(Vec<u32>),
}

/// Reads OpenAI's `input` (or Ollama's, which takes only strings).
fn parse_inputs(v: &Value, vocab: usize, texts_only: bool) -> Result<Vec<Input>, ApiError> {
    let shape = if texts_only {
        "`input` must be a string or an array of strings"
    } else {
        "`input` must be a string, an array of strings, an array of token ids or an array of arrays of token ids"
    };
    let bad = || ApiError::invalid("input", shape);
    let inputs = match v {
        Value::String(s) => vec![Input::Text(s.clone())],
        Value::Array(items) if items.is_empty() => return Err(ApiError::invalid("input", "`input` is an empty array")),
        Value::Array(items) if items.iter().all(Value::is_string) => {
            items.iter().map(|s| Input::Text(s.as_str().unwrap_or_default().to_owned())).collect()
        }
        Value::Array(items) if !texts_only && items.iter().all(Value::is_number) => {
            vec![Input::Ids(token_ids(items, vocab, "input")?)]
        }
        Value::Array(items) if !texts_only && items.iter().all(Value::is_array) => items
            .iter()
            .enumerate()
            .map(|(i, a)| Ok(Input::Ids(token_ids(a.as_array().ok_or_else(bad)?, vocab, &format!("input[{i}]"))?)))
            .collect::<Result<_, ApiError>>()?,
        _ => return Err(bad()),
    };
    if inputs.len() > MAX_INPUTS {
        return Err(ApiError::invalid("input", format!("{} inputs; at most {MAX_INPUTS} per request", inputs.len())));
    }
    Ok(inputs)
}

/// Token ids from JSON numbers, each inside the vocabulary.
fn token_ids(items: &[Value], vocab: usize, what: &str) -> Result<Vec<u32>, ApiError> {
    items
        .iter()
        .enumerate()
        .map(|(j, v)| match v.as_u64() {
            Some(id) if (id as usize) < vocab => Ok(id as u32),
            _ => Err(ApiError::invalid(
                "input",
                format!("{what}[{j}] = {v} is not a token id: ids are integers from 0 to {}", vocab - 1),
            )),
        })
        .collect()
}

/// Tokenizes and checks every input: non-empty and within the context (or cut to it).
fn tokenize_inputs(state: &ServerState, inputs: Vec<Input>, truncate: bool) -> Result<Vec<Vec<u32>>, ApiError> {
    let ctx = state.engine.ctx_size();
    inputs
        .into_iter()
        .enumerate()
        .map(|(i, input)| {
            let mut ids = match input {
                Input::Text(t) => state
                    .engine
                    .tokenizer()
                    .encode(&t, Bos::ModelDefault)
                    .map_err(|e| ApiError::invalid("input", format!("input[{i}]: {e}")))?,
                Input::Ids(ids) => ids,
            };
            if ids.is_empty() {
                return Err(ApiError::invalid("input", format!("input[{i}] is empty")));
            }
            if ids.len() > ctx {
                if !truncate {
                    return Err(ApiError::invalid(
                        "input",
                        format!("input[{i}] is {} tokens long, over this server's context of {ctx} tokens", ids.len()),
                    ));
                }
                ids.truncate(ctx);
            }
            Ok(ids)
        })
        .collect()
}

/// Runs the inputs on the engine thread and waits for their vectors.
async fn run(state: &ServerState, rid: &RequestId, inputs: Vec<Vec<u32>>) -> Result<Vec<Vec<f32>>, ApiError> {
    let (reply, rx) = tokio::sync::oneshot::channel();
    state.worker.embed(EmbedSubmission { inputs, request_id: rid.0.clone(), reply })?;
    rx.await.map_err(|_| ApiError::ShuttingDown)?
}

/// Standard base64 (RFC 4648, padded) of little-endian f32 values, as OpenAI's
/// `encoding_format: "base64"` returns them.
fn base64_f32(v: &[f32]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n =
            (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        for k in 0..4 {
            if k <= c.len() {
                out.push(ABC[(n >> (18 - 6 * k)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `POST /v1/embeddings`.
pub async fn openai(
    State(state): State<AppState>,
    axum::Extension(rid): axum::Extension<RequestId>,
    ApiJson(req): ApiJson<EmbeddingsRequest>,
) -> Result<Response, ApiError> {
    state.names.check(req.model.as_deref())?;
    let d = state.engine.model().config().n_embd;
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid("encoding_format", format!("`{other}` is not float or base64")));
        }
    };
    if let Some(n) = req.dimensions.filter(|&n| n != d as i64) {
        return Err(ApiError::invalid(
            "dimensions",
            format!("this model's embeddings have {d} dimensions; {n} is not supported"),
        ));
    }
    let inputs = parse_inputs(&req.input, state.engine.model().config().vocab, false)?;
    let inputs = tokenize_inputs(&state, inputs, false)?;
    let tokens: usize = inputs.iter().map(Vec::len).sum();
    let vectors = run(&state, &rid, inputs).await?;
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if base64 { json!(base64_f32(v)) } else { json!(v) };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    Ok(axum::Json(json!({
        "object": "list",
        "data": data,
        "model": state.names.primary,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }))
    .into_response())
}

/// `POST /api/embed` (Ollama).
pub async fn ollama(
    State(state): State<AppState>,
    axum::Extension(rid): axum::Extension<RequestId>,
    ApiJson(req): ApiJson<OllamaEmbedRequest>,
) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
    state.names.check(req.model.as_deref())?;
    let inputs = parse_inputs(&req.input, state.engine.model().config().vocab, true)?;
    let inputs = tokenize_inputs(&state, inputs, req.truncate.unwrap_or(true))?;
    let tokens: usize = inputs.iter().map(Vec::len).sum();
    let vectors = run(&state, &rid, inputs).await?;
    Ok(axum::Json(json!({
        "model": state.names.primary,
        "embeddings": vectors,
        "total_duration": started.elapsed().as_nanos() as u64,
        "load_duration": 0,
        "prompt_eval_count": tokens,
    }))
    .into_response())
}

/// `POST /api/embeddings` (Ollama's legacy endpoint: one `prompt`, one `embedding`).
pub async fn ollama_legacy(
    State(state): State<AppState>,
    axum::Extension(rid): axum::Extension<RequestId>,
    ApiJson(req): ApiJson<OllamaLegacyRequest>,
) -> Result<Response, ApiError> {
    state.names.check(req.model.as_deref())?;
    let inputs = tokenize_inputs(&state, vec![Input::Text(req.prompt)], true)?;
    let mut vectors = run(&state, &rid, inputs).await?;
    Ok(axum::Json(json!({"embedding": vectors.pop().unwrap_or_default()})).into_response())
}

/// `POST /tokenize` (llama-server).
pub async fn tokenize(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<TokenizeRequest>,
) -> Result<Response, ApiError> {
    let tok = state.engine.tokenizer();
    let bos = if req.add_special { Bos::ModelDefault } else { Bos::Omit };
    let ids = tok.encode(&req.content, bos).map_err(|e| ApiError::invalid("content", e.to_string()))?;
    let tokens: Vec<Value> = if req.with_pieces {
        ids.iter()
            .map(|&id| {
                let bytes = tok.token_piece_bytes(id).unwrap_or_default();
                // A piece that is not valid UTF-8 on its own goes out as its bytes.
                let piece = match std::str::from_utf8(bytes) {
                    Ok(s) => json!(s),
                    Err(_) => json!(bytes),
                };
                json!({"id": id, "piece": piece})
            })
            .collect()
    } else {
        ids.iter().map(|&id| json!(id)).collect()
    };
    Ok(axum::Json(json!({"tokens": tokens})).into_response())
}

/// `POST /detokenize` (llama-server).
pub async fn detokenize(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<DetokenizeRequest>,
) -> Result<Response, ApiError> {
    let vocab = state.engine.tokenizer().vocab_size();
    let ids = token_ids(&req.tokens, vocab, "tokens").map_err(|e| match e {
        ApiError::InvalidRequest { message, .. } => ApiError::invalid("tokens", message),
        other => other,
    })?;
    let content = state.engine.tokenizer().decode(&ids).map_err(|e| ApiError::invalid("tokens", e.to_string()))?;
    Ok(axum::Json(json!({"content": content})).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_rfc_vectors() {
        // RFC 4648 test vectors through the byte path: 1.0f32 is 00 00 80 3f.
        assert_eq!(base64_f32(&[]), "");
        assert_eq!(base64_f32(&[1.0]), "AACAPw==");
        assert_eq!(base64_f32(&[1.0, -2.0]), "AACAPwAAAMA=");
        assert_eq!(base64_f32(&[0.0, 0.0, 0.0]), "AAAAAAAAAAAAAAAA");
    }

    #[test]
    fn inputs_of_every_shape_and_their_errors() {
        let p = |v: Value| parse_inputs(&v, 100, false);
        assert!(matches!(p(json!("a")).unwrap().as_slice(), [Input::Text(t)] if t == "a"));
        assert_eq!(p(json!(["a", "b"])).unwrap().len(), 2);
        assert!(matches!(p(json!([1, 2, 3])).unwrap().as_slice(), [Input::Ids(ids)] if ids == &[1, 2, 3]));
        assert_eq!(p(json!([[1], [2, 3]])).unwrap().len(), 2);
        for bad in [json!([]), json!(3), json!(["a", 1]), json!([1, -2]), json!([[1], [100]]), json!([1.5])] {
            let e = p(bad.clone()).err().unwrap_or_else(|| panic!("{bad} accepted"));
            assert_eq!(e.status().as_u16(), 400, "{bad}");
        }
        let e = p(json!([[1], [100]])).err().unwrap().to_string();
        assert!(e.contains("input[1][0] = 100"), "{e}");
        assert!(parse_inputs(&json!([1, 2]), 100, true).is_err(), "Ollama takes only text");
        let many = Value::Array(vec![json!("x"); MAX_INPUTS + 1]);
        assert!(p(many).is_err());
    }
}
