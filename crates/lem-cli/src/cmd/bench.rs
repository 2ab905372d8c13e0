//! `lem bench`.

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
}

/// Runs `lem bench`.
pub fn run(a: Args) -> anyhow::Result<()> {
    let engine = a.model.load()?;
    let r = lem_engine::bench(&engine, a.prompt_tokens, a.gen_tokens)?;
    if a.json {
        let mut v = serde_json::to_value(r)?;
        v["model"] = serde_json::json!(engine.path().file_name().map(|f| f.to_string_lossy()));
        print_json(&v)
    } else {
        println!(
            "{}: prefill {:.1} tok/s ({} tokens), decode {:.1} tok/s ({} tokens), {} threads, peak RSS {:.1} MiB",
            engine.path().display(),
            r.prefill_tok_s,
            r.prompt_tokens,
            r.decode_tok_s,
            r.gen_tokens,
            r.threads,
            r.peak_rss_bytes as f64 / (1024.0 * 1024.0)
        );
        Ok(())
    }
}
