//! `lem generate`.

use std::io::Write;
use std::ops::ControlFlow;

use lem_engine::{GenerateRequest, generate};
use serde_json::json;

use crate::common::{GrammarArgs, ModelArgs, PromptArgs, SamplingArgs, print_json};

/// Arguments of `lem generate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    prompt: PromptArgs,
    /// Most tokens to generate.
    #[arg(long, short = 'n', default_value_t = 256)]
    max_tokens: usize,
    /// Stop when the output contains this text (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    grammar: GrammarArgs,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    json: bool,
    /// Write probe events to this JSON-lines file: a prefill summary with the prompt's
    /// attention scores, then per token its id, text, position, KV bytes in use and the
    /// per-layer norm of its key (docs/attention.md).
    #[arg(long, value_name = "FILE.jsonl")]
    probe: Option<std::path::PathBuf>,
    #[command(flatten)]
    prefix: crate::cmd::kv::PrefixCacheArgs,
    #[command(flatten)]
    draft: crate::cmd::draft_args::DraftArgs,
}

/// Runs `lem generate`.
pub fn run(a: Args) -> anyhow::Result<()> {
    let engine = a.model.load()?;
    let prompt_ids = a.prompt.ids(&engine)?;
    let params = a.sampling.params();
    let draft = a.draft.config(&engine)?;
    if draft.is_some() && a.probe.is_some() {
        anyhow::bail!(
            "--draft and --probe cannot be combined (the probe sees every step, drafts would be rolled back)"
        );
    }
    let grammar = a.grammar.grammar()?;
    let req = GenerateRequest { max_tokens: a.max_tokens, sampling: params, stop: a.stop.clone(), draft, grammar };
    let mut seq = engine.new_sequence();
    let mut out = std::io::stdout().lock();
    let mut io_err = None;
    let mut on_text = |s: &str| {
        if a.json {
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
    let cache = a.prefix.open()?;
    if cache.is_some() && a.probe.is_some() {
        anyhow::bail!("--prefix-cache and --probe cannot be combined");
    }
    let mut cache_report = None;
    let g = match (&a.probe, &cache) {
        (Some(path), _) => {
            crate::cmd::inspect::generate_probed(&engine, &mut seq, &prompt_ids, &req, &mut on_text, path)?
        }
        (None, Some(c)) => {
            let (g, r) = lem_state::generate_cached(&engine, &mut seq, &prompt_ids, &req, Some(c), &mut on_text)?;
            cache_report = Some(serde_json::json!({ "report": r, "stats": c.stats() }));
            g
        }
        (None, None) => generate(&engine, &mut seq, &prompt_ids, &req, &mut on_text)?,
    };
    if let Some(e) = io_err {
        return Err(e.into());
    }
    if a.json {
        drop(out);
        let mut v = json!({
            "model": engine.path().file_name().map(|f| f.to_string_lossy()),
            "prompt_ids": g.prompt_ids,
            "ids": g.ids,
            "text": g.text,
            "finish_reason": g.finish_reason,
            "seed": params.seed,
            "timings": g.timings,
            "kv": seq.cache().memory(),
        });
        if let Some(c) = cache_report {
            v["prefix_cache"] = c;
        }
        if req.draft.is_some() {
            v["speculative"] = speculative_json(&g.speculation);
        }
        print_json(&v)?;
    } else {
        writeln!(out)?;
        eprintln!(
            "[{} prompt tokens, {} generated, prefill {:.1} tok/s, decode {:.1} tok/s, ttft {:.0} ms, finish: {:?}]",
            g.prompt_ids.len(),
            g.ids.len(),
            g.timings.prefill_tok_s,
            g.timings.decode_tok_s,
            g.timings.ttft_ms,
            g.finish_reason
        );
        if let Some(c) = cache_report {
            eprintln!("[prefix cache: {}]", c["report"]);
        }
        if req.draft.is_some() {
            let sp = g.speculation;
            eprintln!(
                "[speculation: {} of {} drafted tokens accepted ({:.0}%), {:.2} accepted per verification, {} forward passes for {} tokens]",
                sp.accepted,
                sp.drafted,
                100.0 * sp.acceptance_rate(),
                sp.mean_accepted_per_step(),
                sp.decode_steps,
                g.ids.len()
            );
        }
    }
    Ok(())
}

/// The `speculative` object of `--json` output: the counts and the two rates.
pub fn speculative_json(sp: &lem_engine::SpeculationStats) -> serde_json::Value {
    json!({
        "drafted": sp.drafted,
        "accepted": sp.accepted,
        "acceptance_rate": sp.acceptance_rate(),
        "mean_accepted_per_step": sp.mean_accepted_per_step(),
        "verify_steps": sp.verify_steps,
        "decode_steps": sp.decode_steps,
    })
}
