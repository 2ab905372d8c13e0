//! `lem kv`: save a prompt's KV state to a snapshot file, continue from one, inspect one;
//! and the `--prefix-cache` flags `generate` and `chat` share.

use std::collections::BTreeMap;
use std::io::Write;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Subcommand;
use lem_engine::{Engine, GenerateRequest, Generation, generate};
use lem_state::{PrefixCache, PrefixCacheConfig, SnapshotInfo, inspect_snapshot, load_snapshot, save_snapshot};
use lem_tokenizer::Bos;
use serde_json::json;

use crate::common::{ModelArgs, PromptArgs, SamplingArgs, print_json};

/// The automatic prefix cache flags of `generate` and `chat`.
#[derive(Debug, Clone, clap::Args)]
pub struct PrefixCacheArgs {
    /// Reuse and store prompt-prefix KV blocks in this directory (shared safely by
    /// concurrent processes; docs/kv-state.md).
    #[arg(long, value_name = "DIR", env = "LEM_PREFIX_CACHE")]
    pub prefix_cache: Option<PathBuf>,
    /// Disk budget of the prefix cache in MiB (least recently used blocks are evicted).
    #[arg(long, value_name = "MIB", default_value_t = 4096)]
    pub prefix_cache_mb: u64,
}

impl PrefixCacheArgs {
    /// The cache, when `--prefix-cache` is given.
    pub fn open(&self) -> anyhow::Result<Option<PrefixCache>> {
        let Some(dir) = &self.prefix_cache else { return Ok(None) };
        let cfg = PrefixCacheConfig { disk_budget: self.prefix_cache_mb << 20, ..PrefixCacheConfig::with_disk(dir) };
        Ok(Some(PrefixCache::new(cfg).with_context(|| format!("opening prefix cache {}", dir.display()))?))
    }
}

/// Arguments of `lem kv`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Prefill a prompt and save its KV state to a snapshot file.
    Save(SaveArgs),
    /// Restore a snapshot and continue generating after it.
    Load(LoadArgs),
    /// Verify a snapshot file and print what it holds (no model needed).
    Inspect(InspectArgs),
}

/// Arguments of `lem kv save`.
#[derive(Debug, clap::Args)]
struct SaveArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    prompt: PromptArgs,
    /// The snapshot file to write (atomically).
    #[arg(long, short = 'o', value_name = "FILE")]
    out: PathBuf,
    /// A label to record, `key=value` (repeatable).
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_label)]
    label: Vec<(String, String)>,
    /// Print the snapshot's metadata as one JSON object.
    #[arg(long)]
    json: bool,
}

/// Arguments of `lem kv load`.
#[derive(Debug, clap::Args)]
struct LoadArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The snapshot file.
    #[arg(long, short = 's', value_name = "FILE")]
    snapshot: PathBuf,
    /// Text to append after the snapshot's tokens (no BOS); empty continues directly.
    #[arg(long, short = 'p', default_value = "")]
    prompt: String,
    /// Most tokens to generate.
    #[arg(long, short = 'n', default_value_t = 256)]
    max_tokens: usize,
    /// Stop when the output contains this text (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Print one JSON object (as `lem generate --json`; `ttft_ms` counts from the start of
    /// reading the snapshot).
    #[arg(long)]
    json: bool,
}

/// Arguments of `lem kv inspect`.
#[derive(Debug, clap::Args)]
struct InspectArgs {
    /// The snapshot file.
    file: PathBuf,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("'{s}' is not key=value"))?;
    if k.is_empty() {
        return Err(format!("'{s}' has an empty key"));
    }
    Ok((k.to_owned(), v.to_owned()))
}

/// Runs `lem kv`.
pub fn run(a: Args) -> anyhow::Result<()> {
    match a.action {
        Action::Save(a) => save(a),
        Action::Load(a) => load(a),
        Action::Inspect(a) => inspect(a),
    }
}

fn save(a: SaveArgs) -> anyhow::Result<()> {
    let engine = a.model.load()?;
    let ids = a.prompt.ids(&engine)?;
    let mut seq = engine.new_sequence();
    seq.reserve(ids.len());
    let t = Instant::now();
    seq.feed(&engine, &ids)?;
    let prefill_ms = t.elapsed().as_secs_f64() * 1e3;
    let labels: BTreeMap<String, String> = a.label.into_iter().collect();
    let info = save_snapshot(&a.out, &engine, &seq, labels).with_context(|| format!("saving {}", a.out.display()))?;
    let bytes = std::fs::metadata(&a.out).map(|m| m.len()).unwrap_or(0);
    if a.json {
        let mut v = serde_json::to_value(&info)?;
        v["path"] = json!(a.out);
        v["file_bytes"] = json!(bytes);
        v["prefill_ms"] = json!(prefill_ms);
        print_json(&v)
    } else {
        eprintln!(
            "saved {} tokens ({:.1} MiB of K/V, file {:.1} MiB) to {} [prefill {:.0} ms]",
            info.tokens,
            info.kv_bytes as f64 / (1 << 20) as f64,
            bytes as f64 / (1 << 20) as f64,
            a.out.display(),
            prefill_ms
        );
        Ok(())
    }
}

/// The JSON object of `lem generate --json`.
pub fn generation_json(engine: &Engine, g: &Generation, seed: u64) -> serde_json::Value {
    json!({
        "model": engine.path().file_name().map(|f| f.to_string_lossy()),
        "prompt_ids": g.prompt_ids,
        "ids": g.ids,
        "text": g.text,
        "finish_reason": g.finish_reason,
        "seed": seed,
        "timings": g.timings,
    })
}

fn load(a: LoadArgs) -> anyhow::Result<()> {
    let engine = a.model.load()?;
    let params = a.sampling.params();
    let req =
        GenerateRequest { max_tokens: a.max_tokens, sampling: params, stop: a.stop.clone(), ..Default::default() };
    let start = Instant::now();
    let mut seq = load_snapshot(&a.snapshot, &engine).with_context(|| format!("restoring {}", a.snapshot.display()))?;
    let restore_ms = start.elapsed().as_secs_f64() * 1e3;
    let restored = seq.len();
    let more = engine.tokenizer().encode(&a.prompt, Bos::Omit)?;
    let mut out = std::io::stdout().lock();
    let mut io_err = None;
    let json = a.json;
    let mut on_text = |s: &str| {
        if json {
            return ControlFlow::Continue(());
        }
        match out.write_all(s.as_bytes()).and_then(|()| out.flush()) {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => {
                io_err = Some(e);
                ControlFlow::Break(())
            }
        }
    };
    let mut g = generate(&engine, &mut seq, &more, &req, &mut on_text)?;
    if let Some(e) = io_err {
        return Err(e.into());
    }
    if !g.ids.is_empty() {
        g.timings.ttft_ms += restore_ms;
    }
    if a.json {
        drop(out);
        let mut v = generation_json(&engine, &g, params.seed);
        v["snapshot"] = json!({ "path": a.snapshot, "tokens": restored, "restore_ms": restore_ms });
        print_json(&v)
    } else {
        writeln!(out)?;
        eprintln!(
            "[restored {restored} tokens in {restore_ms:.0} ms, {} new prompt tokens, {} generated, ttft {:.0} ms, \
             decode {:.1} tok/s, finish: {:?}]",
            more.len(),
            g.ids.len(),
            g.timings.ttft_ms,
            g.timings.decode_tok_s,
            g.finish_reason
        );
        Ok(())
    }
}

fn inspect(a: InspectArgs) -> anyhow::Result<()> {
    let info: SnapshotInfo = inspect_snapshot(&a.file).with_context(|| format!("inspecting {}", a.file.display()))?;
    let bytes = std::fs::metadata(&a.file).map(|m| m.len()).unwrap_or(0);
    if a.json {
        let mut v = serde_json::to_value(&info)?;
        v["path"] = json!(a.file);
        v["file_bytes"] = json!(bytes);
        v["checksum_ok"] = json!(true);
        return print_json(&v);
    }
    let id = &info.identity;
    let mut o = std::io::stdout().lock();
    writeln!(o, "{}: {} v{}, checksum ok ({})", a.file.display(), info.format, info.format_version, info.checksum)?;
    writeln!(o, "  model      {} ({})", id.model_file, id.model_fingerprint)?;
    writeln!(o, "  tokenizer  {}", id.tokenizer_fingerprint)?;
    writeln!(o, "  tokens     {}", info.tokens)?;
    writeln!(o, "  created    {} by lem {}", info.created, info.lem_version)?;
    writeln!(
        o,
        "  K/V        K {}, V {}, {:.2} MiB in {} layers",
        id.layout.k_type,
        id.layout.v_type,
        info.kv_bytes as f64 / (1 << 20) as f64,
        info.layers.len()
    )?;
    for (i, l) in info.layers.iter().enumerate() {
        let kind = match (l.kind.window(), l.kind.sinks()) {
            (Some(w), 0) => format!("window {w}"),
            (Some(w), s) => format!("{s} sinks + {w}"),
            (None, _) => "full".to_owned(),
        };
        let span = match (l.first_position, l.last_position) {
            (Some(a), Some(b)) => format!("positions {a}..={b}"),
            _ => "empty".to_owned(),
        };
        writeln!(o, "  layer {i:>3}  {kind:<12} {:>6} cells, {span}", l.cells)?;
    }
    for (k, v) in &info.labels {
        writeln!(o, "  label      {k}={v}")?;
    }
    Ok(())
}
