//! `lem score attention`: key-geometry metrics of a prompt (see docs/attention.md).

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use clap::ArgGroup;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use lem_engine::Engine;
use lem_inspect::{ModelIdentity, PromptScore, plain_prefill_ms, plot_scores, score_prompt, scores_json};
use lem_score::{FEATURE_LABELS, KeySnapshot, MANY_HEAD_MIN_HEADS, Scores, score};
use lem_tokenizer::{Bos, ChatMessage};
use serde_json::{Map, Value, json};

use crate::common::{ModelArgs, print_json};

/// Arguments of `lem score`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, clap::Subcommand)]
enum What {
    /// Attention scoring: the geometry of the model's keys over one prompt (coherence,
    /// cross-layer alignment, entropy, phase lock, collapses, a composite 0..10000).
    Attention(AttentionArgs),
}

/// Arguments of `lem score attention`.
#[derive(Debug, clap::Args)]
#[command(group(ArgGroup::new("input").required(true).args(["prompt", "keys", "prompts"])))]
struct AttentionArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Score this prompt (one prefill).
    #[arg(long, short = 'p')]
    prompt: Option<String>,
    /// Score a saved key snapshot (safetensors); no model is loaded.
    #[arg(long, value_name = "FILE")]
    keys: Option<PathBuf>,
    /// Score every line of a JSONL file, each {"prompt": ..., "response": ...} (response
    /// optional: when given, it is appended to the prompt as an assistant chat turn).
    #[arg(long, value_name = "FILE.jsonl", requires = "out")]
    prompts: Option<PathBuf>,
    /// Wrap the prompt as a user turn in the model's chat template (for --prompt, and for
    /// --prompts lines without a response).
    #[arg(long, conflicts_with = "keys")]
    chat: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Draw per-layer coherence and cross-layer alignment to this PNG file.
    #[arg(long, value_name = "FILE.png", conflicts_with = "prompts")]
    plot: Option<PathBuf>,
    /// Save the key snapshot (safetensors, docs/attention.md) to score later with --keys.
    #[arg(long, value_name = "FILE.safetensors", conflicts_with_all = ["keys", "prompts"])]
    keys_out: Option<PathBuf>,
    /// With --prompts: write only results whose composite is at least N.
    #[arg(long, value_name = "N", requires = "prompts", conflicts_with_all = ["prompt", "keys"])]
    min_score: Option<u32>,
    /// With --prompts: the output JSONL file (one result line per kept input).
    #[arg(long, value_name = "FILE.jsonl", requires = "prompts", conflicts_with_all = ["prompt", "keys"])]
    out: Option<PathBuf>,
    /// With --prompt: also time a plain prefill (no capture) and report the overhead.
    #[arg(long, conflicts_with_all = ["keys", "prompts"])]
    timings: bool,
    /// With --keys: score a snapshot of pre-rotary keys anyway (with a warning).
    #[arg(long, conflicts_with_all = ["prompt", "prompts"])]
    allow_pre_rotary: bool,
}

/// Runs `lem score`.
pub fn run(a: Args) -> anyhow::Result<()> {
    match a.what {
        What::Attention(a) => attention(a),
    }
}

fn attention(a: AttentionArgs) -> anyhow::Result<()> {
    if let Some(path) = &a.keys {
        return score_keys(&a, path);
    }
    if let (Some(input), Some(out)) = (&a.prompts, &a.out) {
        return score_batch(&a, input, out);
    }
    let prompt = a.prompt.as_deref().context("give --prompt, --keys or --prompts")?;
    let engine = a.model.load()?;
    let identity = ModelIdentity::of(&engine)?;
    let ids = encode(&engine, prompt, None, a.chat)?;
    let baseline_ms = if a.timings { Some(plain_prefill_ms(&engine, &ids)?) } else { None };
    let r = score_prompt(&engine, &ids, &identity)?;
    if let Some(path) = &a.keys_out {
        // The error names the file and its cause already (and carries the cause as its
        // source too): keep one copy of each in the one-line message.
        r.snapshot.save(path).map_err(|e| anyhow!("saving the key snapshot: {e}"))?;
    }
    if let Some(path) = &a.plot {
        let sub = format!("{}  ·  {} tokens", identity.file, ids.len());
        plot_scores(&r.scores, &sub, path, (1000, 600))?;
    }
    let mut timings = serde_json::to_value(r.timings)?;
    if let Value::Object(t) = &mut timings {
        t.insert("overhead_ms".into(), json!(r.timings.overhead_ms()));
        if let Some(base) = baseline_ms {
            t.insert("plain_prefill_ms".into(), json!(base));
        }
    }
    if a.json {
        let mut m = Map::new();
        m.insert("model".into(), serde_json::to_value(&identity)?);
        m.insert("n_tokens".into(), json!(ids.len()));
        m.extend(scores_json(&r.scores));
        m.insert("timings".into(), timings);
        print_json(&Value::Object(m))?;
    } else {
        let mut out = std::io::stdout().lock();
        let geometry = format!(
            "{}, {} layers, {} query / {} KV heads, head_dim {}",
            identity.architecture, identity.n_layers, identity.n_head, identity.n_kv_heads, identity.head_dim
        );
        writeln!(out, "{:<13}{}  ({geometry})", "model", identity.file)?;
        writeln!(out, "{:<13}{}", "fingerprint", identity.fingerprint)?;
        write_table(&mut out, &r.scores, ids.len(), identity.n_kv_heads)?;
        write_timings(&mut out, &r, baseline_ms)?;
    }
    Ok(())
}

/// The prompt as token ids: plain, as a chat user turn, or as a user turn followed by an
/// assistant `response`.
fn encode(engine: &Engine, prompt: &str, response: Option<&str>, chat: bool) -> anyhow::Result<Vec<u32>> {
    let text = match response {
        Some(r) => engine
            .template()
            .render(&[ChatMessage::user(prompt.to_owned()), ChatMessage::assistant(r.to_owned())], false)?,
        None if chat => engine.render_chat(&[ChatMessage::user(prompt.to_owned())])?,
        None => prompt.to_owned(),
    };
    let ids = engine.tokenizer().encode(&text, Bos::ModelDefault)?;
    if ids.is_empty() {
        bail!("the prompt has no tokens");
    }
    Ok(ids)
}

fn score_keys(a: &AttentionArgs, path: &Path) -> anyhow::Result<()> {
    let snap = KeySnapshot::load(path).map_err(|e| anyhow!("loading the key snapshot: {e}"))?;
    let meta = snap.meta();
    if !meta.post_rotary {
        if !a.allow_pre_rotary {
            bail!(
                "{}: the keys are pre-rotary (post_rotary = false); the scoring contract is defined on \
                 post-rotary keys (pass --allow-pre-rotary to score them anyway)",
                path.display()
            );
        }
        eprintln!("lem: warning: {}: scoring pre-rotary keys; results are not comparable", path.display());
    }
    let scores = score(&snap);
    if let Some(plot) = &a.plot {
        let name = if meta.model_name.is_empty() { "unknown model" } else { meta.model_name.as_str() };
        plot_scores(&scores, &format!("{name}  ·  {} tokens", snap.n_tokens()), plot, (1000, 600))?;
    }
    if a.json {
        let mut m = Map::new();
        m.insert("model".into(), json!({ "file": meta.model_name, "fingerprint": meta.model_fingerprint }));
        m.insert("n_tokens".into(), json!(snap.n_tokens()));
        m.insert("n_layers".into(), json!(snap.n_layers()));
        m.insert("n_kv_heads".into(), json!(snap.n_kv_heads()));
        m.insert("head_dim".into(), json!(snap.head_dim()));
        m.insert("post_rotary".into(), json!(meta.post_rotary));
        m.extend(scores_json(&scores));
        print_json(&Value::Object(m))?;
    } else {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{:<13}{}", "snapshot", path.display())?;
        writeln!(out, "{:<13}{}", "model", if meta.model_name.is_empty() { "?" } else { &meta.model_name })?;
        writeln!(
            out,
            "{:<13}{}",
            "fingerprint",
            if meta.model_fingerprint.is_empty() { "?" } else { &meta.model_fingerprint }
        )?;
        write_table(&mut out, &scores, snap.n_tokens(), snap.n_kv_heads())?;
    }
    Ok(())
}

fn write_table(out: &mut impl Write, s: &Scores, n_tokens: usize, n_kv: usize) -> std::io::Result<()> {
    writeln!(out, "{:<13}{n_tokens}", "tokens")?;
    let how = if s.few_heads {
        format!("few heads ({n_kv} KV heads <= 4): positions of KV head 0 compared")
    } else {
        format!("many heads ({n_kv} KV heads >= 5): heads compared with each other")
    };
    writeln!(out, "{:<13}{how}\n", "regime")?;
    writeln!(out, "{:<22}{} / 10000", "composite", s.composite)?;
    let rows = [
        ("mean_coherence", s.mean_coherence),
        ("mean_cross_alignment", s.mean_cross_alignment),
        ("mean_head_entropy", s.mean_head_entropy),
        ("phase_lock", s.phase_lock),
    ];
    for (name, v) in rows {
        writeln!(out, "{name:<22}{v:.4}")?;
    }
    writeln!(out, "{:<22}{}", "collapse_count", s.collapse_count)?;
    writeln!(out, "{:<22}{:.4}", FEATURE_LABELS[4], s.joint())?;
    let (coh, cross) = if s.few_heads { ("diff_l", "smooth(l,l+1)") } else { ("coh_l", "cross(l,l+1)") };
    writeln!(out, "\n{:>5}  {coh:>10}  {cross:>14}", "layer")?;
    for (l, c) in s.layer_coherence.iter().enumerate() {
        match s.layer_cross_alignment.get(l) {
            Some(x) => writeln!(out, "{l:>5}  {c:>10.4}  {x:>14.4}")?,
            None => writeln!(out, "{l:>5}  {c:>10.4}  {:>14}", "-")?,
        }
    }
    Ok(())
}

fn write_timings(out: &mut impl Write, r: &PromptScore, baseline_ms: Option<f64>) -> std::io::Result<()> {
    let t = r.timings;
    write!(
        out,
        "\ntimings: prefill {:.1} ms (of which copying keys {:.1} ms), snapshot {:.1} ms, score {:.1} ms: \
         scoring adds {:.1} ms",
        t.prefill_ms,
        t.capture_ms,
        t.snapshot_ms,
        t.score_ms,
        t.overhead_ms()
    )?;
    if let Some(base) = baseline_ms {
        write!(out, "; a plain prefill took {base:.1} ms")?;
    }
    writeln!(out)
}

/// One input line of `--prompts`.
#[derive(Debug)]
struct Item {
    line: usize,
    prompt: String,
    response: Option<String>,
}

fn read_items(path: &Path) -> anyhow::Result<Vec<Item>> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut items = Vec::new();
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line_no = i + 1;
        let at = || format!("{}:{line_no}", path.display());
        let line = line.with_context(at)?;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(&line).with_context(|| format!("{}: not valid JSON", at()))?;
        let Value::Object(m) = v else { bail!("{}: expected a JSON object like {{\"prompt\": \"...\"}}", at()) };
        let prompt = match m.get("prompt") {
            Some(Value::String(s)) => s.clone(),
            Some(_) => bail!("{}: \"prompt\" must be a string", at()),
            None => bail!("{}: missing \"prompt\"", at()),
        };
        let response = match m.get("response") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => bail!("{}: \"response\" must be a string", at()),
        };
        items.push(Item { line: line_no, prompt, response });
    }
    Ok(items)
}

fn progress(len: usize) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len as u64), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("scoring [{bar:30}] {pos}/{len} prompts, {per_sec}, eta {eta}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

fn score_batch(a: &AttentionArgs, input: &Path, out_path: &Path) -> anyhow::Result<()> {
    // Validate every line before loading the model or scoring anything.
    let items = read_items(input)?;
    let engine = a.model.load()?;
    let identity = ModelIdentity::of(&engine)?;
    let file = File::create(out_path).with_context(|| format!("creating {}", out_path.display()))?;
    let mut out = BufWriter::new(file);
    let bar = progress(items.len());
    let mut kept = 0;
    for item in &items {
        let at = || format!("{}:{}", input.display(), item.line);
        let ids = encode(&engine, &item.prompt, item.response.as_deref(), a.chat).with_context(at)?;
        let r = score_prompt(&engine, &ids, &identity).with_context(at)?;
        bar.inc(1);
        if a.min_score.is_some_and(|min| r.scores.composite < min) {
            continue;
        }
        let mut m = Map::new();
        m.insert("line".into(), json!(item.line));
        m.insert("prompt".into(), json!(item.prompt));
        if let Some(resp) = &item.response {
            m.insert("response".into(), json!(resp));
        }
        m.insert("n_tokens".into(), json!(ids.len()));
        m.insert("model_fingerprint".into(), json!(identity.fingerprint));
        m.extend(scores_json(&r.scores));
        serde_json::to_writer(&mut out, &Value::Object(m))?;
        out.write_all(b"\n")?;
        kept += 1;
    }
    bar.finish_and_clear();
    out.flush().with_context(|| format!("writing {}", out_path.display()))?;
    let filter = a.min_score.map_or(String::new(), |m| format!(", {kept} at or above {m}"));
    eprintln!(
        "scored {} prompts with {} ({}){filter}; wrote {} lines to {}",
        items.len(),
        identity.file,
        if identity.n_kv_heads < MANY_HEAD_MIN_HEADS { "few heads" } else { "many heads" },
        kept,
        out_path.display()
    );
    Ok(())
}
