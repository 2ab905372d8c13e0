//! `lem models inspect PATH`: what a GGUF file or Hugging Face directory holds.
//!
//! The model is loaded (through the same resolution and loader as every other command),
//! so what is reported is what lem will run: the architecture's layer kinds, head
//! geometry and rotary settings come from the loaded [`Model`]'s configuration. The tensor
//! table (types and parameter count) is read from the stored headers (the GGUF tensor
//! infos, the safetensors headers), since a model keeps no list of its tensors. Whether a
//! layer applies a rotary embedding is observed: one two-token forward captures each
//! layer's keys before and after the rotation (position 1 always rotates when the layer
//! has one). Active parameters per token are the stored parameters less the experts a
//! token is not routed to (the loaded model counts each routed block's experts).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::quantized::GgmlDType;
use lem_kv::{KvDtype, LayerKind};
use lem_model::{
    Capture, CaptureKind, Captured, LoadOptions, LogitsRequest, Model, Observer, SeqInput, TensorType, Workspace,
};
use serde::Serialize;
use serde_json::{Value, json};

use crate::common::{WeightArgs, load_tokenizer, print_json, resolve_model};

/// Arguments of `lem models inspect`.
#[derive(Debug, Clone, clap::Args)]
pub struct InspectArgs {
    /// A GGUF file, a Hugging Face model directory or a packaged model alias.
    pub path: String,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub load: WeightArgs,
}

/// The stored tensors: count per type and total elements.
#[derive(Debug, Default, Serialize)]
struct TensorTable {
    count: usize,
    parameters: u64,
    types: BTreeMap<String, usize>,
    bytes: u64,
}

impl TensorTable {
    fn add(&mut self, ty: String, shape: &[usize]) {
        self.count += 1;
        self.parameters += shape.iter().map(|&d| d as u64).product::<u64>();
        *self.types.entry(ty).or_default() += 1;
    }
}

/// One layer as the loaded model runs it.
#[derive(Debug, Serialize)]
struct LayerInfo {
    index: usize,
    /// `"full"` or `"sliding_window"`.
    attention: &'static str,
    /// The window of a sliding-window layer.
    window: Option<u32>,
    /// Whether the layer applies a rotary embedding (observed).
    rope: bool,
}

/// Runs `lem models inspect`.
pub fn run(a: InspectArgs) -> anyhow::Result<()> {
    let path = resolve_model(&a.path)?;
    let report = inspect(&path, &a.load).with_context(|| format!("inspecting {}", path.display()))?;
    if a.json { print_json(&report) } else { print_table(&report) }
}

/// Everything `lem models inspect` reports, as one JSON object.
fn inspect(path: &Path, load: &WeightArgs) -> anyhow::Result<Value> {
    let opts = LoadOptions { kv_dtype: KvDtype::F32, ..load.options() };
    let model = Model::load_with(path, &opts)?;
    let hf = path.is_dir();
    let tensors = if hf { safetensors_table(path)? } else { gguf_table(path)? };
    let cfg = model.config();
    let ropes = observe_rope(&model)?;
    let layers: Vec<LayerInfo> = cfg
        .layer_kinds
        .iter()
        .enumerate()
        .map(|(index, kind)| {
            let (attention, window) = match kind {
                LayerKind::Full => ("full", None),
                LayerKind::SlidingWindow { window } => ("sliding_window", Some(*window)),
                LayerKind::SinkWindow { window, .. } => ("sink_window", Some(*window)),
            };
            LayerInfo { index, attention, window, rope: ropes.get(index).copied().unwrap_or(false) }
        })
        .collect();
    let s = &cfg.rope.scaling;
    let rope = json!({
        "base": f(cfg.rope.base),
        "dims": cfg.rope.n_rot,
        "freq_scale": f(s.freq_scale),
        "attn_factor": f(s.attn_factor),
        "yarn_original_context": s.yarn.map(|y| y.orig_ctx),
        "frequency_factors": s.factors.is_some(),
    });
    let (tokenizer, tokenizer_error, chat_template, template_error) = match load_tokenizer(path) {
        Ok(t) => {
            let kind = if t.tokenizer_model() == "llama" { "SPM" } else { "BPE" };
            let info = json!({
                "type": kind,
                "model": t.tokenizer_model(),
                "pre": t.pre_tokenizer(),
                "source": if t.is_hf() { "tokenizer.json" } else { "gguf" },
                "vocab_size": t.vocab_size(),
                "bos": t.bos_id(),
                "eos": t.eos_id(),
            });
            let template_error = template_problem(&t, &cfg.architecture).map_or(Value::Null, Value::from);
            (info, Value::Null, t.chat_template_source().is_some(), template_error)
        }
        Err(e) => (Value::Null, json!(format!("{e:#}")), false, Value::Null),
    };
    let model_type = if hf { hf_model_type(path) } else { None };
    // What a token does not touch: the experts it is not routed to.
    let counts = model.param_counts();
    let active = tensors.parameters.saturating_sub(counts.total - counts.active);
    let experts = cfg.moe.map(|m| {
        json!({
            "count": m.n_expert,
            "used_per_token": m.n_expert_used,
            "feed_forward_length": m.n_ff_exp,
            "shared_feed_forward_length": m.n_ff_shexp,
        })
    });
    Ok(json!({
        "path": path.display().to_string(),
        "format": if hf { "hf" } else { "gguf" },
        "architecture": cfg.architecture,
        "hf_model_type": model_type,
        "name": cfg.name,
        "parameters": tensors.parameters,
        "active_parameters": active,
        "experts": experts,
        "tensor_count": tensors.count,
        "tensor_types": tensors.types,
        "weight_bytes": tensors.bytes,
        "dtype": load.dtype.map(|d| dtype_name(d.ggml())),
        "context_length": cfg.context_length,
        "n_layer": cfg.n_layer,
        "n_embd": cfg.n_embd,
        "n_ff": cfg.n_ff,
        "n_head": cfg.n_head,
        "n_kv_head": cfg.n_kv,
        "head_dim": cfg.head_dim,
        "vocab_size": model.vocab(),
        "rms_eps": f(cfg.rms_eps),
        "rope": rope,
        "sliding_window": cfg.sliding_window,
        "attn_logit_softcap": cfg.attn_logit_softcap.map(f),
        "final_logit_softcap": cfg.final_logit_softcap.map(f),
        "layers": layers,
        "tokenizer": tokenizer,
        "tokenizer_error": tokenizer_error,
        "chat_template": chat_template,
        "chat_template_error": template_error,
    }))
}

/// Why the model's chat template cannot serve a conversation (it does not compile, or a
/// render of a short conversation fails: a template error, `raise_exception`, or a loop
/// or recursion past lem's limits), if it cannot.
fn template_problem(tok: &lem_tokenizer::Tokenizer, architecture: &str) -> Option<String> {
    use lem_tokenizer::{ChatMessage, ChatTemplate};
    let template = match ChatTemplate::for_model(tok, architecture) {
        Ok(t) => t,
        Err(e) => return Some(e.to_string()),
    };
    let conversation = [
        ChatMessage::system("Be brief."),
        ChatMessage::user("Hello"),
        ChatMessage::assistant("Hi."),
        ChatMessage::user("Bye"),
    ];
    template.render(&conversation, true).err().map(|e| e.to_string())
}

/// An f32 as the f64 with the same shortest decimal form (`1e-6`, not
/// `9.999999974752427e-7`).
fn f(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(f64::from(x))
}

/// config.json's `model_type`, when readable.
fn hf_model_type(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("config.json")).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    v.get("model_type")?.as_str().map(str::to_owned)
}

/// llama.cpp's spelling of a GGML type (`Q4_K`, not candle's `Q4K`).
fn dtype_name(t: GgmlDType) -> String {
    match t {
        GgmlDType::Q2K => "Q2_K".into(),
        GgmlDType::Q3K => "Q3_K".into(),
        GgmlDType::Q4K => "Q4_K".into(),
        GgmlDType::Q5K => "Q5_K".into(),
        GgmlDType::Q6K => "Q6_K".into(),
        GgmlDType::Q8K => "Q8_K".into(),
        other => format!("{other:?}"),
    }
}

/// The tensor table of a GGUF file (lem's reader: it also knows MXFP4, which candle's
/// does not).
fn gguf_table(path: &Path) -> anyhow::Result<TensorTable> {
    let g = lem_model::GgufFile::open(path)?;
    let mut t = TensorTable::default();
    for (_, ty, dims, _) in g.tensors() {
        let name = match ty {
            TensorType::Ggml(d) => dtype_name(d),
            TensorType::Mxfp4 => "MXFP4".into(),
        };
        t.add(name, &dims);
        t.bytes += ty.bytes(dims.iter().map(|&d| d as u64).product()).unwrap_or(0);
    }
    Ok(t)
}

/// The safetensors files of a Hugging Face directory: the index's shards, else
/// `model.safetensors`, else every `*.safetensors` file.
fn weight_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&index)?)
            .with_context(|| format!("parsing {}", index.display()))?;
        let map = v.get("weight_map").and_then(Value::as_object).context("the index has no weight_map")?;
        let mut files: Vec<PathBuf> = map.values().filter_map(Value::as_str).map(|f| dir.join(f)).collect();
        files.sort();
        files.dedup();
        return Ok(files);
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    Ok(files)
}

/// Largest safetensors header accepted (the format's own limit is 100 MB).
const MAX_HEADER: u64 = 100 << 20;

/// The tensor table of a Hugging Face directory (the safetensors headers).
fn safetensors_table(dir: &Path) -> anyhow::Result<TensorTable> {
    let mut t = TensorTable::default();
    for file in weight_files(dir)? {
        let mut f = File::open(&file).with_context(|| format!("opening {}", file.display()))?;
        let mut len = [0u8; 8];
        f.read_exact(&mut len).with_context(|| format!("{}: truncated safetensors header", file.display()))?;
        let n = u64::from_le_bytes(len);
        anyhow::ensure!(n <= MAX_HEADER, "{}: safetensors header of {n} bytes", file.display());
        let mut header = vec![0u8; n as usize];
        f.read_exact(&mut header).with_context(|| format!("{}: truncated safetensors header", file.display()))?;
        let v: serde_json::Map<String, Value> = serde_json::from_slice(&header)
            .with_context(|| format!("{}: malformed safetensors header", file.display()))?;
        for (name, info) in v {
            if name == "__metadata__" {
                continue;
            }
            let dtype = info.get("dtype").and_then(Value::as_str).unwrap_or("?").to_owned();
            let shape: Vec<usize> = info
                .get("shape")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_u64).map(|d| d as usize).collect())
                .unwrap_or_default();
            if let Some([a, b]) = info.get("data_offsets").and_then(Value::as_array).map(Vec::as_slice) {
                t.bytes += b.as_u64().unwrap_or(0).saturating_sub(a.as_u64().unwrap_or(0));
            }
            t.add(dtype, &shape);
        }
    }
    Ok(t)
}

/// Keeps each layer's key row at position 1 before and after the rotary embedding.
#[derive(Default)]
struct RopeProbe {
    pre: BTreeMap<usize, Vec<f32>>,
    post: BTreeMap<usize, Vec<f32>>,
}

impl Observer for RopeProbe {
    fn wants(&self, _layer: usize) -> Capture {
        Capture::KEYS | Capture::KEYS_PRE_ROPE
    }

    fn on_capture(&mut self, c: Captured<'_>) {
        let row = c.heads * c.dim;
        let Some(i) = c.positions.iter().position(|&p| p == 1) else { return };
        let data = c.data[i * row..(i + 1) * row].to_vec();
        match c.kind {
            CaptureKind::KeysPreRope => self.pre.insert(c.layer, data),
            CaptureKind::Keys => self.post.insert(c.layer, data),
            _ => None,
        };
    }
}

/// Whether each layer rotates its keys: a two-token forward (f32 cache, so an unrotated
/// key is stored bit for bit) compares the key at position 1 before and after the rotary
/// step; a rotation by a nonzero angle always changes it.
fn observe_rope(model: &Model) -> anyhow::Result<Vec<bool>> {
    let mut cache = model.new_cache();
    let tokens = [0u32, 1u32.min(model.vocab() as u32 - 1)];
    let mut batch = [SeqInput { tokens: &tokens, cache: &mut cache, logits: LogitsRequest::None }];
    let mut ws = Workspace::default();
    let threads = lem_kernels::Threads::new(0);
    let mut probe = RopeProbe::default();
    model.forward(&mut batch, &mut ws, &threads, Some(&mut probe))?;
    Ok((0..model.config().n_layer).map(|l| probe.pre.get(&l) != probe.post.get(&l)).collect())
}

/// `1234567` -> `"1.23 M"`.
fn human_count(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2} B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.2} M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1} K", n as f64 / 1e3),
        n => n.to_string(),
    }
}

/// A JSON value as table text (`-` for null).
fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The human-readable form: a two-column table, then one row per layer.
fn print_table(r: &Value) -> anyhow::Result<()> {
    use std::io::Write;
    let mut rows: Vec<(&str, String)> = vec![
        ("path", text(&r["path"])),
        ("format", if r["format"] == "hf" { "Hugging Face directory".into() } else { "GGUF".into() }),
        ("architecture", text(&r["architecture"])),
    ];
    if !r["hf_model_type"].is_null() {
        rows.push(("model_type", text(&r["hf_model_type"])));
    }
    rows.push(("name", text(&r["name"])));
    let params = r["parameters"].as_u64().unwrap_or(0);
    let active = r["active_parameters"].as_u64().unwrap_or(params);
    rows.push(("parameters", format!("{} ({params})", human_count(params))));
    rows.push(("active per token", format!("{} ({active})", human_count(active))));
    let e = &r["experts"];
    if !e.is_null() {
        let shared =
            e["shared_feed_forward_length"].as_u64().map_or(String::new(), |s| format!(", shared expert ffn {s}"));
        rows.push((
            "experts",
            format!(
                "{} routed, {} per token, ffn {}{shared}",
                e["count"], e["used_per_token"], e["feed_forward_length"]
            ),
        ));
    }
    let types: Vec<String> =
        r["tensor_types"].as_object().map(|m| m.iter().map(|(k, v)| format!("{k} {v}")).collect()).unwrap_or_default();
    rows.push((
        "tensors",
        format!(
            "{}: {} ({:.1} MB)",
            r["tensor_count"],
            types.join(", "),
            r["weight_bytes"].as_u64().unwrap_or(0) as f64 / 1e6
        ),
    ));
    if !r["dtype"].is_null() {
        rows.push(("loaded as", text(&r["dtype"])));
    }
    rows.push(("context", text(&r["context_length"])));
    rows.push(("layers", text(&r["n_layer"])));
    rows.push(("hidden", format!("{} (ffn {})", r["n_embd"], r["n_ff"])));
    rows.push(("heads", format!("{} query, {} kv, head dim {}", r["n_head"], r["n_kv_head"], r["head_dim"])));
    rows.push(("vocab", text(&r["vocab_size"])));
    let rope = &r["rope"];
    let mut rope_text = format!("base {}, {} dims", rope["base"], rope["dims"]);
    if rope["freq_scale"].as_f64() != Some(1.0) {
        rope_text += &format!(", freq scale {}", rope["freq_scale"]);
    }
    if !rope["yarn_original_context"].is_null() {
        rope_text += &format!(", yarn (original context {})", rope["yarn_original_context"]);
    }
    if rope["frequency_factors"] == true {
        rope_text += ", per-frequency factors";
    }
    rows.push(("rope", rope_text));
    if !r["attn_logit_softcap"].is_null() || !r["final_logit_softcap"].is_null() {
        rows.push((
            "softcap",
            format!("attention {}, final {}", text(&r["attn_logit_softcap"]), text(&r["final_logit_softcap"])),
        ));
    }
    let t = &r["tokenizer"];
    let tok = if t.is_null() {
        format!("none ({})", text(&r["tokenizer_error"]))
    } else {
        let pre = if t["pre"].is_null() { String::new() } else { format!(" ({})", text(&t["pre"])) };
        format!("{}{pre}, {} tokens, from {}", text(&t["type"]), t["vocab_size"], text(&t["source"]))
    };
    rows.push(("tokenizer", tok));
    let template = match (&r["chat_template"], &r["chat_template_error"]) {
        (_, Value::String(e)) => format!("FAILS: {e}"),
        (Value::Bool(true), _) => "yes".into(),
        _ => "no (built-in)".into(),
    };
    rows.push(("chat template", template));
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = std::io::stdout().lock();
    for (k, v) in &rows {
        writeln!(out, "{k:<width$}  {v}")?;
    }
    writeln!(out)?;
    // Runs of identical layers share a row (`0-4`).
    let layers: Vec<(u64, String, bool)> = r["layers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .map(|l| {
            let att = l["window"].as_u64().map_or_else(|| "full".to_owned(), |w| format!("sliding {w}"));
            (l["index"].as_u64().unwrap_or(0), att, l["rope"] == true)
        })
        .collect();
    writeln!(out, "{:<7}  {:<16}  rope", "layers", "attention")?;
    let mut start = 0;
    while start < layers.len() {
        let (first, att, rope) = &layers[start];
        let mut end = start;
        while end + 1 < layers.len() && layers[end + 1].1 == *att && layers[end + 1].2 == *rope {
            end += 1;
        }
        let span = if end == start { first.to_string() } else { format!("{first}-{}", layers[end].0) };
        writeln!(out, "{span:<7}  {att:<16}  {}", if *rope { "yes" } else { "no" })?;
        start = end + 1;
    }
    Ok(())
}
