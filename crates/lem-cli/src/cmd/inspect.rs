//! `lem inspect`: raw keys, values, queries and attention weights of one prefill, in a
//! safetensors file (docs/attention.md); and the `--probe` of `lem generate`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use lem_engine::{Engine, GenerateRequest, Generation, Sequence, generate_with};
use lem_inspect::{CaptureFileMeta, CaptureSpec, Kind, ModelIdentity, Probe, capture_prefill, write_capture_file};
use lem_model::Workspace;
use lem_tokenizer::Bos;
use serde_json::json;

use crate::common::{ModelArgs, PromptArgs, print_json};

/// Refuse captures larger than this (attention weights grow with the square of the
/// prompt length).
const MAX_CAPTURE_BYTES: u64 = 4 << 30;

/// Arguments of `lem inspect`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    prompt: PromptArgs,
    /// What to capture, comma-separated: keys (post-rotary, as cached), keys_pre_rope,
    /// values, queries, attn.
    #[arg(long, default_value = "keys", value_name = "KINDS")]
    capture: String,
    /// Layers to capture, comma-separated; negative indices count from the end (-1 is the
    /// last layer). Default: every layer.
    #[arg(long, allow_hyphen_values = true, value_name = "LIST")]
    layers: Option<String>,
    /// The safetensors file to write.
    #[arg(long, short = 'o', value_name = "FILE.safetensors")]
    out: PathBuf,
    /// Print the list of tensors as one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// Runs `lem inspect`.
pub fn run(a: Args) -> anyhow::Result<()> {
    let kinds = lem_inspect::parse_kinds(&a.capture)?;
    let engine = a.model.load()?;
    let model = engine.model();
    let cfg = model.config();
    let layers = match &a.layers {
        Some(list) => lem_inspect::parse_layers(list, cfg.n_layer)?,
        None => (0..cfg.n_layer).collect(),
    };
    let text = a.prompt.text(&engine)?;
    let ids = engine.tokenizer().encode(&text, Bos::ModelDefault)?;
    if ids.is_empty() {
        bail!("the prompt has no tokens");
    }
    if ids.len() > engine.ctx_size() {
        bail!("prompt of {} tokens does not fit the context of {} tokens", ids.len(), engine.ctx_size());
    }
    let t = ids.len() as u64;
    let per_layer: u64 = kinds
        .iter()
        .map(|k| match k {
            Kind::Keys | Kind::KeysPreRope | Kind::Values => (cfg.n_kv * cfg.head_dim) as u64 * t,
            Kind::Queries => (cfg.n_head * cfg.head_dim) as u64 * t,
            Kind::Attention => cfg.n_head as u64 * t * t,
        })
        .sum();
    let bytes = per_layer * 4 * layers.len() as u64;
    if bytes > MAX_CAPTURE_BYTES {
        bail!(
            "this capture would take {:.1} GiB (limit 4 GiB): pick fewer layers (--layers) or kinds, or a shorter prompt",
            bytes as f64 / f64::from(1u32 << 30)
        );
    }
    let identity = ModelIdentity::of(&engine)?;
    let spec = CaptureSpec::new(cfg.n_layer, &kinds, &layers);
    let mut cache = model.new_cache();
    let captures = capture_prefill(model, engine.threads(), &mut cache, &mut Workspace::default(), &ids, spec)?;
    let meta = CaptureFileMeta { identity: &identity, prompt: &text, token_ids: &ids, kv_dtype: cache.layout().k_type };
    let listing = write_capture_file(&a.out, &captures, &meta)?;
    if a.json {
        let tensors: serde_json::Map<String, serde_json::Value> =
            listing.iter().map(|(n, s)| (n.clone(), json!(s))).collect();
        print_json(&json!({
            "file": a.out,
            "model": identity,
            "n_tokens": ids.len(),
            "bytes": bytes,
            "tensors": tensors,
        }))?;
    } else {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "wrote {}: {} tensors, {:.1} MB, {} tokens, model {}",
            a.out.display(),
            listing.len(),
            bytes as f64 / 1e6,
            ids.len(),
            identity.file
        )?;
        for (name, shape) in &listing {
            writeln!(out, "  {name:<20} {shape:?}")?;
        }
    }
    Ok(())
}

/// `lem generate --probe FILE`: generation with a [`Probe`] writing its events to `path`.
pub fn generate_probed(
    engine: &Engine,
    seq: &mut Sequence,
    prompt_ids: &[u32],
    req: &GenerateRequest,
    on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    path: &Path,
) -> anyhow::Result<Generation> {
    let identity = ModelIdentity::of(engine)?;
    let file = File::create(path).with_context(|| format!("creating probe file {}", path.display()))?;
    let mut probe = Probe::new(BufWriter::new(file), identity, seq.len() as u32, prompt_ids.len());
    let g = generate_with(engine, seq, prompt_ids, req, on_text, &mut probe)?;
    let mut w = probe.finish(&g).with_context(|| format!("writing probe file {}", path.display()))?;
    w.flush().with_context(|| format!("writing probe file {}", path.display()))?;
    Ok(g)
}
