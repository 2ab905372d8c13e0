//! `lem bench`.

use lem_tokenizer::{Bos, ChatMessage};

use crate::cmd::draft_args::DraftArgs;
use crate::common::{ModelArgs, print_json};

/// Arguments of `lem bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt length for the prefill measurement.
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    /// Tokens to decode after the prompt.
    #[arg(long, default_value_t = 64)]
    gen_tokens: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// With --draft: greedy decoding of this chat prompt, plain then speculative (the
    /// default asks to repeat a short text, where prompt lookup pays).
    #[arg(long, value_name = "TEXT")]
    draft_prompt: Option<String>,
    /// Measure what verifying a draft costs: one forward of 1 + k tokens for k = 0..8
    /// after a context of --prompt-tokens, in decode steps.
    #[arg(long)]
    draft_cost: bool,
    /// Batched decode: N sequences decoding together (one forward per step), against one
    /// alone; prints the aggregate tokens per second of each and the ratio.
    #[arg(long, value_name = "N")]
    parallel: Option<usize>,
    #[command(flatten)]
    draft: DraftArgs,
}

const DEFAULT_DRAFT_PROMPT: &str = "Repeat the following text exactly, word for word:\n\
    The lighthouse stood at the end of the rocky point, white and tall against the grey sky. \
    Every night its keeper climbed the one hundred and twelve steps to light the lamp, \
    and every morning he climbed them again to put it out.";

/// Runs `lem bench`.
pub fn run(a: Args) -> anyhow::Result<()> {
    let engine = a.model.load()?;
    let name = engine.path().file_name().map(|f| f.to_string_lossy().into_owned());
    if a.draft_cost {
        let costs = lem_engine::verify_cost(&engine, a.prompt_tokens, 8, 7)?;
        let base = costs[0].1;
        let rows: Vec<_> = costs
            .iter()
            .map(|&(k, ms)| serde_json::json!({ "draft_tokens": k, "ms": ms, "decode_steps": ms / base }))
            .collect();
        if a.json {
            return print_json(&serde_json::json!({ "model": name, "context": a.prompt_tokens, "verify_cost": rows }));
        }
        for &(k, ms) in &costs {
            let per = if k > 0 {
                format!(", {:.3} steps per draft token", (ms / base - 1.0) / k as f64)
            } else {
                String::new()
            };
            println!("1 + {k} tokens: {ms:.2} ms = {:.2} decode steps{per}", ms / base);
        }
        return Ok(());
    }
    if let Some(n) = a.parallel {
        let r = lem_engine::bench_parallel(&engine, n, a.prompt_tokens, a.gen_tokens)?;
        if a.json {
            let mut v = serde_json::to_value(r)?;
            v["model"] = serde_json::json!(name);
            return print_json(&v);
        }
        println!(
            "{}: {} sequences {:.1} tok/s in all, 1 sequence {:.1} tok/s ({:.2}x), {} tokens each after {} prompt tokens, {} threads",
            engine.path().display(),
            r.sequences,
            r.aggregate_tok_s,
            r.single_tok_s,
            r.scaling,
            r.gen_tokens,
            a.prompt_tokens,
            r.threads
        );
        return Ok(());
    }
    if let Some(draft) = a.draft.config(&engine)? {
        let text = a.draft_prompt.as_deref().unwrap_or(DEFAULT_DRAFT_PROMPT);
        let rendered = engine.render_chat(&[ChatMessage::user(text.to_owned())])?;
        let prompt = engine.tokenizer().encode(&rendered, Bos::ModelDefault)?;
        let r = lem_engine::bench_draft(&engine, &prompt, a.gen_tokens, draft)?;
        anyhow::ensure!(r.identical, "speculative output differs from plain decoding (a bug: please report it)");
        if a.json {
            let mut v = serde_json::to_value(r)?;
            v["model"] = serde_json::json!(name);
            v["speedup"] = serde_json::json!(r.draft_tok_s / r.plain_tok_s);
            v["speculative"] = crate::cmd::generate::speculative_json(&r.speculation);
            return print_json(&v);
        }
        let sp = r.speculation;
        println!(
            "{}: plain {:.1} tok/s, speculative {:.1} tok/s ({:.2}x), {} tokens, {} of {} drafted accepted ({:.0}%), {:.2} per verification, {} threads",
            engine.path().display(),
            r.plain_tok_s,
            r.draft_tok_s,
            r.draft_tok_s / r.plain_tok_s,
            r.gen_tokens,
            sp.accepted,
            sp.drafted,
            100.0 * sp.acceptance_rate(),
            sp.mean_accepted_per_step(),
            r.threads
        );
        return Ok(());
    }
    let r = lem_engine::bench(&engine, a.prompt_tokens, a.gen_tokens)?;
    if a.json {
        let mut v = serde_json::to_value(r)?;
        v["model"] = serde_json::json!(name);
        print_json(&v)
    } else {
        println!(
            "{}: prefill {:.1} tok/s ({} tokens), decode {:.1} tok/s ({} tokens), {} threads, peak RSS {:.1} MiB, \
             KV {:.2} MiB (K {}, V {})",
            engine.path().display(),
            r.prefill_tok_s,
            r.prompt_tokens,
            r.decode_tok_s,
            r.gen_tokens,
            r.threads,
            r.peak_rss_bytes as f64 / (1024.0 * 1024.0),
            r.kv.resident_bytes as f64 / (1024.0 * 1024.0),
            r.kv.cache_type_k,
            r.kv.cache_type_v
        );
        Ok(())
    }
}
