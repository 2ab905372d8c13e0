//! `lem eval`.

use std::path::PathBuf;

use anyhow::Context;
use lem_tokenizer::Bos;

use crate::common::{ModelArgs, print_json};

/// Arguments of `lem eval`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// UTF-8 text file to evaluate.
    #[arg(long, short = 'f')]
    file: PathBuf,
    /// Print the full report (ids, argmax, nll, ppl) as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `lem eval`.
pub fn run(a: Args) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&a.file).with_context(|| format!("reading {}", a.file.display()))?;
    let engine = a.model.load()?;
    let ids = engine.tokenizer().encode(&text, Bos::ModelDefault)?;
    let t = std::time::Instant::now();
    let report = lem_engine::eval(&engine, &ids)?;
    if a.json {
        print_json(&report)
    } else {
        println!(
            "{} tokens, perplexity {:.4}, {:.1} tok/s",
            report.ids.len(),
            report.ppl,
            report.ids.len() as f64 / t.elapsed().as_secs_f64()
        );
        Ok(())
    }
}
