//! Hugging Face model directories: tiny random-weight checkpoints written in the test
//! (config.json + safetensors through the `safetensors` crate), checked for one-line
//! errors on every broken layout and for loading and running when sound: F32/F16/BF16
//! storage, shards, `--dtype` conversion, the GGUF conventions (Q/K permutation, Gemma
//! norm offsets, tied embeddings, rotary scaling) and the directory fingerprint.
#![allow(missing_docs)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use candle_core::quantized::gguf_file::{self, Value as GValue};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use lem_kernels::Threads;
use lem_model::names::{Role, TensorId};
use lem_model::{Factors, Key, LoadOptions, LogitsRequest, Model, ModelError, SeqInput, Workspace, open_weights};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use safetensors::tensor::{Dtype, TensorView};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------
// A tiny Llama checkpoint
// ---------------------------------------------------------------------------------------

const VOCAB: usize = 96;
const D: usize = 64;
const HEADS: usize = 4;
const KV: usize = 2;
const HEAD_DIM: usize = 16;
const FF: usize = 128;
const LAYERS: usize = 2;

/// Tensors by name (shape, f32 values) and a config.
#[derive(Clone)]
struct Ckpt {
    config: Value,
    tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
}

fn normal(rng: &mut ChaCha8Rng, n: usize, std: f32) -> Vec<f32> {
    use rand::Rng;
    // Sum of uniforms: close enough to normal for weights.
    (0..n).map(|_| (0..4).map(|_| rng.random_range(-1.0f32..1.0)).sum::<f32>() * std * 0.866).collect()
}

fn llama_config() -> Value {
    json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": D,
        "intermediate_size": FF,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV,
        "head_dim": HEAD_DIM,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "rope_scaling": null,
        "tie_word_embeddings": false,
        "torch_dtype": "float32",
        "vocab_size": VOCAB,
        "_name_or_path": "someone/tiny-llama",
        "transformers_version": "4.50.0"
    })
}

fn llama(seed: u64) -> Ckpt {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut t = BTreeMap::new();
    let mut mat = |t: &mut BTreeMap<_, _>, name: String, rows: usize, cols: usize, std: f32| {
        let v = normal(&mut rng, rows * cols, std / (cols as f32).sqrt());
        t.insert(name, (vec![rows, cols], v));
    };
    mat(&mut t, "model.embed_tokens.weight".into(), VOCAB, D, 0.5 * (D as f32).sqrt());
    mat(&mut t, "lm_head.weight".into(), VOCAB, D, 0.5 * (D as f32).sqrt());
    for i in 0..LAYERS {
        let p = format!("model.layers.{i}");
        mat(&mut t, format!("{p}.self_attn.q_proj.weight"), HEADS * HEAD_DIM, D, 1.6);
        mat(&mut t, format!("{p}.self_attn.k_proj.weight"), KV * HEAD_DIM, D, 1.6);
        mat(&mut t, format!("{p}.self_attn.v_proj.weight"), KV * HEAD_DIM, D, 1.0);
        mat(&mut t, format!("{p}.self_attn.o_proj.weight"), D, HEADS * HEAD_DIM, 1.0);
        mat(&mut t, format!("{p}.mlp.gate_proj.weight"), FF, D, 1.0);
        mat(&mut t, format!("{p}.mlp.up_proj.weight"), FF, D, 1.0);
        mat(&mut t, format!("{p}.mlp.down_proj.weight"), D, FF, 1.0);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    let mut norm = |t: &mut BTreeMap<_, _>, name: String| {
        let v = normal(&mut rng, D, 0.15).into_iter().map(|x| 1.0 + x).collect();
        t.insert(name, (vec![D], v));
    };
    norm(&mut t, "model.norm.weight".into());
    for i in 0..LAYERS {
        norm(&mut t, format!("model.layers.{i}.input_layernorm.weight"));
        norm(&mut t, format!("model.layers.{i}.post_attention_layernorm.weight"));
    }
    Ckpt { config: llama_config(), tensors: t }
}

fn encode(values: &[f32], dtype: Dtype) -> Vec<u8> {
    match dtype {
        Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Dtype::F16 => values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect(),
        Dtype::BF16 => values.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect(),
        Dtype::F64 => values.iter().flat_map(|v| f64::from(*v).to_le_bytes()).collect(),
        other => panic!("test encodes no {other:?}"),
    }
}

/// Serialises `names` of the checkpoint (every tensor in `dtype`, except `overrides`).
fn safetensors_bytes(c: &Ckpt, names: &[&String], dtype: Dtype, overrides: &BTreeMap<String, Dtype>) -> Vec<u8> {
    let data: Vec<(String, Vec<usize>, Dtype, Vec<u8>)> = names
        .iter()
        .map(|n| {
            let (shape, v) = &c.tensors[*n];
            let ty = overrides.get(*n).copied().unwrap_or(dtype);
            ((*n).clone(), shape.clone(), ty, encode(v, ty))
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> =
        data.iter().map(|(n, s, ty, b)| (n.clone(), TensorView::new(*ty, s.clone(), b).unwrap())).collect();
    safetensors::serialize(views, None).unwrap()
}

/// How to write a checkpoint.
#[derive(Clone, Default)]
struct Layout {
    /// 0 or 1: `model.safetensors`; n > 1: that many shards with an index.
    shards: usize,
    dtype: Option<Dtype>,
    overrides: BTreeMap<String, Dtype>,
}

fn write_with(c: &Ckpt, dir: &Path, layout: &Layout) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&c.config).unwrap()).unwrap();
    let dtype = layout.dtype.unwrap_or(Dtype::F32);
    let names: Vec<&String> = c.tensors.keys().collect();
    if layout.shards <= 1 {
        std::fs::write(dir.join("model.safetensors"), safetensors_bytes(c, &names, dtype, &layout.overrides)).unwrap();
        return;
    }
    let n = layout.shards;
    let mut weight_map = serde_json::Map::new();
    let per = names.len().div_ceil(n);
    for (k, chunk) in names.chunks(per).enumerate() {
        let file = format!("model-{:05}-of-{:05}.safetensors", k + 1, n);
        std::fs::write(dir.join(&file), safetensors_bytes(c, chunk, dtype, &layout.overrides)).unwrap();
        for name in chunk {
            weight_map.insert((*name).clone(), json!(file));
        }
    }
    let index = json!({ "metadata": { "total_size": 0 }, "weight_map": weight_map });
    std::fs::write(dir.join("model.safetensors.index.json"), serde_json::to_vec_pretty(&index).unwrap()).unwrap();
}

fn write(c: &Ckpt, dir: &Path) {
    write_with(c, dir, &Layout::default());
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let p = dir.join("config.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    f(v.as_object_mut().unwrap());
    std::fs::write(&p, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

// ---------------------------------------------------------------------------------------
// Running
// ---------------------------------------------------------------------------------------

fn threads() -> &'static Threads {
    static T: OnceLock<Threads> = OnceLock::new();
    T.get_or_init(|| Threads::new(1))
}

const TOKENS: &[u32] = &[1, 17, 42, 5, 88, 23, 61, 9, 70, 33, 2, 95];

/// Logits of every position of [`TOKENS`].
fn logits(model: &Model) -> Vec<f32> {
    let mut cache = model.new_cache();
    let mut ws = Workspace::default();
    let mut b = [SeqInput { tokens: TOKENS, cache: &mut cache, logits: LogitsRequest::All }];
    model.forward(&mut b, &mut ws, threads(), None).unwrap();
    ws.logits(0, model.vocab()).to_vec()
}

fn load(dir: &Path) -> Model {
    Model::load(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

/// The load error's message, checked to be one line.
fn load_err(dir: &Path) -> String {
    load_err_with(dir, &LoadOptions::default())
}

fn load_err_with(dir: &Path, opts: &LoadOptions) -> String {
    let e = match Model::load_with(dir, opts) {
        Ok(_) => panic!("{} loaded, expected an error", dir.display()),
        Err(e) => e.to_string(),
    };
    assert!(!e.contains('\n'), "not one line: {e:?}");
    assert!(!e.is_empty());
    eprintln!("{e}");
    e
}

fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

#[test]
fn directory_without_config_json() {
    let d = tmp();
    write(&llama(1), d.path());
    std::fs::remove_file(d.path().join("config.json")).unwrap();
    let e = load_err(d.path());
    assert!(e.contains("config.json"), "{e}");
}

#[test]
fn invalid_config_json() {
    let d = tmp();
    write(&llama(1), d.path());
    std::fs::write(d.path().join("config.json"), b"{\"model_type\": \"llama\",").unwrap();
    let e = load_err(d.path());
    assert!(e.contains("config.json") && e.contains("invalid JSON"), "{e}");
}

#[test]
fn directory_without_weights() {
    let d = tmp();
    write(&llama(1), d.path());
    std::fs::remove_file(d.path().join("model.safetensors")).unwrap();
    let e = load_err(d.path());
    assert!(e.contains("model.safetensors"), "{e}");
}

#[test]
fn missing_shard() {
    let d = tmp();
    write_with(&llama(1), d.path(), &Layout { shards: 3, ..Layout::default() });
    std::fs::remove_file(d.path().join("model-00002-of-00003.safetensors")).unwrap();
    let e = load_err(d.path());
    assert!(e.contains("model-00002-of-00003.safetensors") && e.contains("not in the directory"), "{e}");
}

#[test]
fn index_naming_a_file_that_is_not_there() {
    let d = tmp();
    write_with(&llama(1), d.path(), &Layout { shards: 2, ..Layout::default() });
    let p = d.path().join("model.safetensors.index.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    v["weight_map"]["model.norm.weight"] = json!("elsewhere.safetensors");
    std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
    let e = load_err(d.path());
    assert!(e.contains("elsewhere.safetensors"), "{e}");
}

#[test]
fn index_entry_absent_from_its_shard() {
    let d = tmp();
    write_with(&llama(1), d.path(), &Layout { shards: 2, ..Layout::default() });
    let p = d.path().join("model.safetensors.index.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    v["weight_map"]["model.layers.9.mlp.up_proj.weight"] = json!("model-00001-of-00002.safetensors");
    std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
    let e = load_err(d.path());
    assert!(e.contains("model.layers.9.mlp.up_proj.weight") && e.contains("model-00001-of-00002"), "{e}");
}

#[test]
fn index_escaping_the_directory() {
    let d = tmp();
    write_with(&llama(1), d.path(), &Layout { shards: 2, ..Layout::default() });
    let p = d.path().join("model.safetensors.index.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    v["weight_map"]["model.norm.weight"] = json!("../model-00001-of-00002.safetensors");
    std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
    let e = load_err(d.path());
    assert!(e.contains("not a file in the directory"), "{e}");
}

#[test]
fn unsupported_torch_dtype() {
    for (key, value) in [("torch_dtype", "int8"), ("dtype", "float8_e4m3fn")] {
        let d = tmp();
        write(&llama(1), d.path());
        edit_config(d.path(), |c| {
            c.insert(key.into(), json!(value));
        });
        let e = load_err(d.path());
        assert!(e.contains(key) && e.contains(value) && e.contains("bfloat16"), "{e}");
    }
}

#[test]
fn quantized_checkpoints_are_refused() {
    let d = tmp();
    write(&llama(1), d.path());
    edit_config(d.path(), |c| {
        c.insert("quantization_config".into(), json!({ "quant_method": "gptq", "bits": 4 }));
    });
    let e = load_err(d.path());
    assert!(e.contains("quantization_config") && e.contains("gptq"), "{e}");
}

#[test]
fn unknown_model_type() {
    let d = tmp();
    write(&llama(1), d.path());
    edit_config(d.path(), |c| {
        c.insert("model_type".into(), json!("mamba"));
    });
    let e = load_err(d.path());
    assert!(e.contains("'mamba'") && e.contains("llama") && e.contains("qwen3") && e.contains("gemma2"), "{e}");
    edit_config(d.path(), |c| {
        c.remove("model_type");
    });
    let e = load_err(d.path());
    assert!(e.contains("model_type") && e.contains("LlamaForCausalLM"), "{e}");
}

#[test]
fn config_contradicting_the_tensors() {
    // hidden_size 64, but q_proj is 32 wide.
    let d = tmp();
    let mut c = llama(1);
    c.tensors.insert("model.layers.0.self_attn.q_proj.weight".into(), (vec![HEADS * HEAD_DIM, 32], vec![0.1; 64 * 32]));
    write(&c, d.path());
    let e = load_err(d.path());
    assert!(
        e.contains("model.layers.0.self_attn.q_proj.weight") && e.contains("[64, 32]") && e.contains("[64, 64]"),
        "{e}"
    );

    // vocab_size says 100, the embedding has 96 rows.
    let d = tmp();
    write(&llama(1), d.path());
    edit_config(d.path(), |c| {
        c.insert("vocab_size".into(), json!(100));
    });
    let e = load_err(d.path());
    assert!(e.contains("vocab_size") && e.contains("96"), "{e}");

    // Heads that do not divide.
    let d = tmp();
    write(&llama(1), d.path());
    edit_config(d.path(), |c| {
        c.insert("num_key_value_heads".into(), json!(3));
    });
    let e = load_err(d.path());
    assert!(e.contains("num_key_value_heads"), "{e}");

    // A required key missing, and one of the wrong type.
    let d = tmp();
    write(&llama(1), d.path());
    edit_config(d.path(), |c| {
        c.remove("num_hidden_layers");
    });
    let e = load_err(d.path());
    assert!(e.contains("config.json") && e.contains("num_hidden_layers") && e.contains("missing"), "{e}");
    edit_config(d.path(), |c| {
        c.insert("num_hidden_layers".into(), json!("two"));
    });
    let e = load_err(d.path());
    assert!(e.contains("num_hidden_layers") && e.contains("\"two\""), "{e}");

    // A layer missing from the weights.
    let d = tmp();
    let mut c = llama(1);
    c.tensors.remove("model.layers.1.mlp.down_proj.weight");
    write(&c, d.path());
    let e = load_err(d.path());
    assert!(e.contains("model.layers.1.mlp.down_proj.weight"), "{e}");
}

#[test]
fn truncated_or_corrupt_safetensors() {
    let d = tmp();
    write(&llama(1), d.path());
    let p = d.path().join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    // Cut inside the data, inside the header, inside the length prefix, and empty.
    for cut in [bytes.len() - 100, 200, 5, 0] {
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let e = load_err(d.path());
        assert!(e.contains("model.safetensors") && e.contains("malformed safetensors"), "cut {cut}: {e}");
    }
    // A garbled header, and an absurd header length.
    let mut bad = bytes.clone();
    bad[8..40].fill(b'#');
    std::fs::write(&p, &bad).unwrap();
    let e = load_err(d.path());
    assert!(e.contains("malformed safetensors header"), "{e}");
    let mut bad = bytes.clone();
    bad[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(&p, &bad).unwrap();
    let e = load_err(d.path());
    assert!(e.contains("malformed safetensors header"), "{e}");
    // Trailing garbage.
    let mut long = bytes.clone();
    long.extend_from_slice(&[0; 16]);
    std::fs::write(&p, &long).unwrap();
    let e = load_err(d.path());
    assert!(e.contains("malformed safetensors"), "{e}");
}

#[test]
fn unsupported_tensor_dtype() {
    let d = tmp();
    let layout = Layout { overrides: [("model.norm.weight".to_owned(), Dtype::F64)].into(), ..Layout::default() };
    write_with(&llama(1), d.path(), &layout);
    let e = load_err(d.path());
    assert!(e.contains("model.norm.weight") && e.contains("F64"), "{e}");
}

#[test]
fn untied_without_lm_head() {
    let d = tmp();
    let mut c = llama(1);
    c.tensors.remove("lm_head.weight");
    write(&c, d.path());
    let e = load_err(d.path());
    assert!(e.contains("tie_word_embeddings") && e.contains("lm_head.weight"), "{e}");
    // Unstated and absent: tied.
    edit_config(d.path(), |c| {
        c.remove("tie_word_embeddings");
    });
    let src = open_weights(d.path(), &LoadOptions::default()).unwrap();
    assert!(!src.has(TensorId::global(Role::Output)));
    load(d.path());
}

#[test]
fn unsupported_rope_scaling() {
    let d = tmp();
    write(&llama(1), d.path());
    edit_config(d.path(), |c| {
        c.insert("rope_scaling".into(), json!({ "rope_type": "dynamic", "factor": 2.0 }));
    });
    let e = load_err(d.path());
    assert!(e.contains("rope scaling type 'dynamic'"), "{e}");
}

// ---------------------------------------------------------------------------------------
// Loading and running
// ---------------------------------------------------------------------------------------

#[test]
fn tiny_llama_loads_and_runs() {
    let d = tmp();
    write(&llama(1), d.path());
    let m = load(d.path());
    let cfg = m.config();
    assert_eq!(
        (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.n_kv, cfg.head_dim, cfg.vocab),
        (LAYERS, D, HEADS, KV, HEAD_DIM, VOCAB)
    );
    assert_eq!(cfg.context_length, 256);
    assert_eq!(cfg.name.as_deref(), d.path().canonicalize().unwrap().file_name().and_then(|f| f.to_str()));
    let l = logits(&m);
    assert_eq!(l.len(), TOKENS.len() * VOCAB);
    assert!(l.iter().all(|v| v.is_finite()));
    let spread = l.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(spread > 0.1, "logits are all near zero");
}

#[test]
fn f16_and_bf16_storage_load() {
    let c = llama(2);
    let d32 = tmp();
    write(&c, d32.path());
    let reference = logits(&load(d32.path()));
    for (dtype, torch, ggml, tol) in
        [(Dtype::F16, "float16", GgmlDType::F16, 0.01), (Dtype::BF16, "bfloat16", GgmlDType::BF16, 0.08)]
    {
        let d = tmp();
        write_with(&c, d.path(), &Layout { dtype: Some(dtype), ..Layout::default() });
        edit_config(d.path(), |m| {
            m.insert("torch_dtype".into(), json!(torch));
        });
        // Matrices keep the stored type; vectors come out as f32.
        let mut src = open_weights(d.path(), &LoadOptions::default()).unwrap();
        let q = src.matrix(TensorId::layer(Role::AttnV, 0), KV * HEAD_DIM, D).unwrap();
        assert_eq!(q.dtype(), ggml);
        let norm = src.vector(TensorId::global(Role::OutputNorm), D).unwrap();
        let want: Vec<f32> = c.tensors["model.norm.weight"]
            .1
            .iter()
            .map(|&v| match dtype {
                Dtype::F16 => half::f16::from_f32(v).to_f32(),
                _ => half::bf16::from_f32(v).to_f32(),
            })
            .collect();
        assert_eq!(norm, want);
        let got = logits(&load(d.path()));
        let err = rel_err(&got, &reference);
        assert!(err < tol, "{torch}: relative error {err}");
    }
}

#[test]
fn sharded_equals_single_file_exactly() {
    let c = llama(3);
    let single = tmp();
    write(&c, single.path());
    let reference = logits(&load(single.path()));
    for shards in [2, 3, 5] {
        let d = tmp();
        write_with(&c, d.path(), &Layout { shards, ..Layout::default() });
        assert!(d.path().join(format!("model-00001-of-{shards:05}.safetensors")).is_file());
        assert_eq!(logits(&load(d.path())), reference, "{shards} shards");
    }
}

#[test]
fn dtype_option_converts_at_load() {
    let c = llama(4);
    let d = tmp();
    write(&c, d.path());
    let reference = logits(&load(d.path()));
    let opts = LoadOptions { dtype: Some(GgmlDType::Q8_0), ..LoadOptions::default() };
    let m = Model::load_with(d.path(), &opts).unwrap();
    let err = rel_err(&logits(&m), &reference);
    assert!(err < 0.05, "Q8_0 relative error {err}");
    assert!(err > 0.0, "Q8_0 should not be exact");
}

#[test]
fn keys_read_from_config_json() {
    let d = tmp();
    write(&llama(1), d.path());
    edit_config(d.path(), |c| {
        c.insert("max_position_embeddings".into(), json!(256.0));
        c.insert("head_dim".into(), Value::Null);
        c.remove("num_key_value_heads");
        c.insert("sliding_window".into(), Value::Null);
    });
    let src = open_weights(d.path(), &LoadOptions::default()).unwrap();
    assert_eq!(src.uint(Key::ContextLength).unwrap(), Some(256));
    assert_eq!(src.uint(Key::KeyLength).unwrap(), None);
    assert_eq!(src.uint(Key::HeadCountKv).unwrap(), None);
    assert_eq!(src.uint(Key::SlidingWindow).unwrap(), None);
    assert_eq!(src.uint(Key::RopeDims).unwrap(), None);
    assert_eq!(src.float(Key::RmsEps).unwrap(), Some(1e-5));
    assert_eq!(src.float(Key::RopeBase).unwrap(), Some(10000.0));
    // Qwen 2 states a window it does not use.
    edit_config(d.path(), |c| {
        c.insert("sliding_window".into(), json!(4096));
        c.insert("use_sliding_window".into(), json!(false));
    });
    let src = open_weights(d.path(), &LoadOptions::default()).unwrap();
    assert_eq!(src.uint(Key::SlidingWindow).unwrap(), None);
    edit_config(d.path(), |c| {
        c.remove("use_sliding_window");
        // transformers 5: the base inside rope_parameters.
        c.remove("rope_theta");
        c.insert("rope_parameters".into(), json!({ "rope_type": "default", "rope_theta": 500000.0 }));
        c.insert("partial_rotary_factor".into(), json!(0.5));
    });
    let src = open_weights(d.path(), &LoadOptions::default()).unwrap();
    assert_eq!(src.uint(Key::SlidingWindow).unwrap(), Some(4096));
    assert_eq!(src.float(Key::RopeBase).unwrap(), Some(500000.0));
    assert_eq!(src.uint(Key::RopeDims).unwrap(), Some(8));
    assert_eq!(src.rope_scaling(16, 256).unwrap(), lem_model::RopeScaling::NONE);
}

/// The Q/K rows come out permuted as llama.cpp's converter writes them (checked against
/// the converter's reshape/swapaxes written out here), whole and in sub-ranges; V is not.
#[test]
fn llama_q_and_k_rows_are_permuted() {
    let c = llama(5);
    let d = tmp();
    write(&c, d.path());
    let mut src = open_weights(d.path(), &LoadOptions::default()).unwrap();
    for (role, hf, heads) in
        [(Role::AttnQ, "q_proj", Some(HEADS)), (Role::AttnK, "k_proj", Some(KV)), (Role::AttnV, "v_proj", None)]
    {
        let (shape, w) = &c.tensors[&format!("model.layers.1.self_attn.{hf}.weight")];
        let (rows, cols) = (shape[0], shape[1]);
        let want: Vec<f32> = if let Some(heads) = heads {
            // (heads, 2, half, cols) -> (heads, half, 2, cols)
            let half = rows / heads / 2;
            let mut out = vec![0f32; rows * cols];
            for h in 0..heads {
                for j in 0..2 {
                    for i in 0..half {
                        let src_row = (h * 2 + j) * half + i;
                        let dst_row = (h * half + i) * 2 + j;
                        out[dst_row * cols..][..cols].copy_from_slice(&w[src_row * cols..][..cols]);
                    }
                }
            }
            out
        } else {
            w.clone()
        };
        let id = TensorId::layer(role, 1);
        assert_eq!(src.matrix(id, rows, cols).unwrap().to_f32(), want, "{hf}");
        let part = src.matrix_rows(id, rows, cols, 3..rows - 5).unwrap().to_f32();
        assert_eq!(part, want[3 * cols..(rows - 5) * cols], "{hf} rows 3..{}", rows - 5);
    }
}

/// A Llama checkpoint and the GGUF llama.cpp's converter would make of it (Q/K permuted,
/// GGUF names, llama3 `rope_freqs`, built here with candle's writer) give the same logits.
#[test]
fn llama_dir_matches_its_gguf_conversion() {
    let mut c = llama(6);
    let rope = json!({ "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64 });
    c.config["rope_scaling"] = rope;
    let d = tmp();
    write(&c, d.path());
    let hf = logits(&load(d.path()));

    let permute = |w: &[f32], rows: usize, cols: usize, heads: usize| -> Vec<f32> {
        let half = rows / heads / 2;
        let mut out = vec![0f32; rows * cols];
        for h in 0..heads {
            for j in 0..2 {
                for i in 0..half {
                    let (s, t) = ((h * 2 + j) * half + i, (h * half + i) * 2 + j);
                    out[t * cols..][..cols].copy_from_slice(&w[s * cols..][..cols]);
                }
            }
        }
        out
    };
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    let mut push = |name: String, shape: &[usize], v: Vec<f32>| {
        let t = Tensor::from_vec(v, shape, &Device::Cpu).unwrap();
        tensors.push((name, QTensor::quantize(&t, GgmlDType::F32).unwrap()));
    };
    // Llama 3 factors in f64 from the definition, independently of the loader.
    let freqs: Vec<f32> = (0..HEAD_DIM / 2)
        .map(|i| {
            let wl = 2.0 * std::f64::consts::PI * 10000f64.powf(2.0 * i as f64 / HEAD_DIM as f64);
            let smooth = ((64.0 / wl - 1.0) / 3.0).clamp(0.0, 1.0);
            (1.0 / ((1.0 - smooth) / 8.0 + smooth)) as f32
        })
        .collect();
    push("rope_freqs.weight".into(), &[HEAD_DIM / 2], freqs);
    let t = |n: &str| c.tensors[n].clone();
    let (s, v) = t("model.embed_tokens.weight");
    push("token_embd.weight".into(), &s, v);
    let (s, v) = t("lm_head.weight");
    push("output.weight".into(), &s, v);
    let (s, v) = t("model.norm.weight");
    push("output_norm.weight".into(), &s, v);
    for i in 0..LAYERS {
        let p = format!("model.layers.{i}");
        for (hf, gg, heads) in [
            ("self_attn.q_proj", "attn_q", HEADS),
            ("self_attn.k_proj", "attn_k", KV),
            ("self_attn.v_proj", "attn_v", 0),
            ("self_attn.o_proj", "attn_output", 0),
            ("mlp.gate_proj", "ffn_gate", 0),
            ("mlp.up_proj", "ffn_up", 0),
            ("mlp.down_proj", "ffn_down", 0),
            ("input_layernorm", "attn_norm", 0),
            ("post_attention_layernorm", "ffn_norm", 0),
        ] {
            let (s, v) = t(&format!("{p}.{hf}.weight"));
            let v = if heads > 0 { permute(&v, s[0], s[1], heads) } else { v };
            push(format!("blk.{i}.{gg}.weight"), &s, v);
        }
    }
    let u = |v: usize| GValue::U32(v as u32);
    let meta: Vec<(&str, GValue)> = vec![
        ("general.architecture", GValue::String("llama".into())),
        ("llama.block_count", u(LAYERS)),
        ("llama.context_length", u(256)),
        ("llama.embedding_length", u(D)),
        ("llama.feed_forward_length", u(FF)),
        ("llama.attention.head_count", u(HEADS)),
        ("llama.attention.head_count_kv", u(KV)),
        ("llama.attention.layer_norm_rms_epsilon", GValue::F32(1e-5)),
        ("llama.rope.freq_base", GValue::F32(10000.0)),
        ("llama.rope.dimension_count", u(HEAD_DIM)),
    ];
    let meta_refs: Vec<(&str, &GValue)> = meta.iter().map(|(k, v)| (*k, v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let mut out = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut out, &meta_refs, &tensor_refs).unwrap();
    let g = tmp();
    let gguf = g.path().join("tiny.gguf");
    std::fs::write(&gguf, out.into_inner()).unwrap();
    let from_gguf = logits(&load(&gguf));
    assert_eq!(hf, from_gguf);
    // The scaling matters: plain rope gives other logits.
    edit_config(d.path(), |m| {
        m.insert("rope_scaling".into(), Value::Null);
    });
    assert_ne!(logits(&load(d.path())), from_gguf);
}

#[test]
fn gemma_norms_are_offsets_and_embeddings_tied() {
    let mut c = llama(7);
    c.config["model_type"] = json!("gemma2");
    c.config.as_object_mut().unwrap().remove("tie_word_embeddings");
    let d = tmp();
    write(&c, d.path());
    let mut src = open_weights(d.path(), &LoadOptions::default()).unwrap();
    // Gemma 2 ties by default, so the stored lm_head is not the output.
    assert!(!src.has(TensorId::global(Role::Output)));
    let norm = src.vector(TensorId::global(Role::OutputNorm), D).unwrap();
    let want: Vec<f32> = c.tensors["model.norm.weight"].1.iter().map(|w| w + 1.0).collect();
    assert_eq!(norm, want);
    // Gemma's pre-FFN norm has its own name; Q is not permuted (NeoX rotary).
    assert!(!src.has(TensorId::layer(Role::FfnNorm, 0)));
    let (s, q) = &c.tensors["model.layers.0.self_attn.q_proj.weight"];
    assert_eq!(&src.matrix(TensorId::layer(Role::AttnQ, 0), s[0], s[1]).unwrap().to_f32(), q);
    // Llama with the same tensors: untied unless stated.
    let d = tmp();
    let mut c = llama(7);
    c.config.as_object_mut().unwrap().remove("tie_word_embeddings");
    write(&c, d.path());
    assert!(open_weights(d.path(), &LoadOptions::default()).unwrap().has(TensorId::global(Role::Output)));
    edit_config(d.path(), |m| {
        m.insert("tie_word_embeddings".into(), json!(true));
    });
    let src = open_weights(d.path(), &LoadOptions::default()).unwrap();
    assert!(!src.has(TensorId::global(Role::Output)));
    // Tied: the output is the embedding, so logits change but the model runs.
    assert!(logits(&load(d.path())).iter().all(|v| v.is_finite()));
}

#[test]
fn rope_scaling_from_config() {
    let d = tmp();
    write(&llama(1), d.path());
    let scaling = |rope: Value, opts: LoadOptions| {
        edit_config(d.path(), |m| {
            m.insert("rope_scaling".into(), rope);
        });
        open_weights(d.path(), &opts).unwrap().rope_scaling(16, 256)
    };
    let none = LoadOptions::default();
    let s = scaling(json!({ "type": "linear", "factor": 4.0 }), none).unwrap();
    assert_eq!((s.freq_scale, s.factors, s.yarn, s.attn_factor), (0.25, None, None, 1.0));

    let s = scaling(json!({ "type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64 }), none).unwrap();
    assert_eq!(s.freq_scale, 0.25);
    let y = s.yarn.unwrap();
    assert_eq!((y.orig_ctx, y.beta_fast, y.beta_slow, s.attn_factor), (64, 32.0, 1.0, 1.0));
    let s =
        scaling(json!({ "rope_type": "yarn", "factor": 4.0, "attention_factor": 1.2, "beta_fast": 16 }), none).unwrap();
    assert_eq!(s.yarn.unwrap().orig_ctx, 256);
    assert_eq!(s.yarn.unwrap().beta_fast, 16.0);
    assert!((s.attn_factor * (1.0 + 0.1 * 4f32.ln()) - 1.2).abs() < 1e-6);

    let long = json!({ "type": "longrope", "short_factor": [1, 1, 1, 1, 2, 2, 2, 2], "long_factor": [1, 2, 3, 4, 5, 6, 7, 8], "original_max_position_embeddings": 64 });
    let s = scaling(long.clone(), none).unwrap();
    assert_eq!(s.factors, Some(Factors::Values(vec![1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0])));
    let expected = (1.0 + (256f64 / 64.0).ln() / 64f64.ln()).sqrt() as f32;
    assert_eq!(s.attn_factor, expected);
    let s = scaling(long.clone(), LoadOptions { context: Some(64), ..none }).unwrap();
    assert_eq!(s.factors, Some(Factors::Values(vec![1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0])));
    let s = scaling(long, LoadOptions { context: Some(65), ..none }).unwrap();
    assert_eq!(s.factors, Some(Factors::Values((1..=8).map(|i| i as f32).collect())));
    let e = scaling(json!({ "type": "longrope", "short_factor": [1, 1], "long_factor": [1, 1] }), none).unwrap_err();
    assert!(e.to_string().contains("short_factor"), "{e}");

    let s = scaling(json!({ "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 256 }), none).unwrap();
    let Some(Factors::Values(f)) = s.factors else { panic!("no factors") };
    assert_eq!(f.len(), 8);
    assert_eq!(&f[..3], &[1.0; 3]);
    assert_eq!(&f[4..], &[8.0; 4]);

    assert_eq!(scaling(Value::Null, none).unwrap(), lem_model::RopeScaling::NONE);
    assert_eq!(scaling(json!({ "rope_type": "default" }), none).unwrap(), lem_model::RopeScaling::NONE);
    let e = scaling(json!({ "type": "linear" }), none).unwrap_err();
    assert!(e.to_string().contains("factor"), "{e}");
    assert!(matches!(scaling(json!({ "type": "dynamic", "factor": 2.0 }), none), Err(ModelError::Unsupported(_))));
}

// ---------------------------------------------------------------------------------------
// Fingerprint
// ---------------------------------------------------------------------------------------

#[test]
fn directory_fingerprint() {
    use lem_model::fingerprint::{cached_fingerprint, fingerprint};
    let c = llama(8);
    let a = tmp();
    write(&c, a.path());
    let fa = fingerprint(a.path()).unwrap();
    assert_eq!(fa.len(), 64);
    assert_eq!(fingerprint(a.path()).unwrap(), fa);
    // Sharding, key order, the name and transformers' version do not matter.
    let b = tmp();
    write_with(&c, b.path(), &Layout { shards: 3, ..Layout::default() });
    edit_config(b.path(), |m| {
        m.insert("_name_or_path".into(), json!("elsewhere"));
        m.insert("transformers_version".into(), json!("5.0.0"));
    });
    assert_eq!(fingerprint(b.path()).unwrap(), fa);
    // A hyper-parameter does.
    edit_config(b.path(), |m| {
        m.insert("rms_norm_eps".into(), json!(1e-6));
    });
    assert_ne!(fingerprint(b.path()).unwrap(), fa);
    // So does one weight, and its stored type.
    let mut c2 = c.clone();
    c2.tensors.get_mut("model.norm.weight").unwrap().1[3] += 0.5;
    let e = tmp();
    write(&c2, e.path());
    assert_ne!(fingerprint(e.path()).unwrap(), fa);
    let f = tmp();
    write_with(&c, f.path(), &Layout { dtype: Some(Dtype::BF16), ..Layout::default() });
    assert_ne!(fingerprint(f.path()).unwrap(), fa);

    // Cached: remembered, and recomputed when a weight file changes.
    let cache = tmp();
    let cache_file = cache.path().join("fingerprints.json");
    assert_eq!(cached_fingerprint(a.path(), Some(&cache_file)).unwrap(), fa);
    assert!(cache_file.is_file());
    assert_eq!(cached_fingerprint(a.path(), Some(&cache_file)).unwrap(), fa);
    write(&c2, a.path());
    assert_eq!(cached_fingerprint(a.path(), Some(&cache_file)).unwrap(), fingerprint(e.path()).unwrap());
    // Errors are one line.
    let empty = tmp();
    let err = fingerprint(empty.path()).unwrap_err().to_string();
    assert!(err.contains("config.json") && !err.contains('\n'), "{err}");
}
