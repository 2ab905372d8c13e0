//! `lem tokenize`.

use std::io::Write;

use lem_tokenizer::Bos;

use crate::common::{ModelArgs, print_json};

/// Arguments of `lem tokenize`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Text to tokenize (special-token strings are parsed into their ids).
    #[arg(long)]
    text: String,
    /// Prepend the BOS token (if the model has one).
    #[arg(long)]
    bos: bool,
    /// Print a JSON list of ids.
    #[arg(long)]
    json: bool,
}

/// Runs `lem tokenize` (loads only the tokenizer, not the weights).
pub fn run(a: Args) -> anyhow::Result<()> {
    let tok = a.model.tokenizer()?;
    let ids = tok.encode(&a.text, if a.bos { Bos::Add } else { Bos::Omit })?;
    if a.json {
        return print_json(&ids);
    }
    let mut out = std::io::stdout().lock();
    for id in ids {
        let piece = tok.token_piece_bytes(id)?;
        writeln!(out, "{id:>8} {:?}", String::from_utf8_lossy(piece))?;
    }
    Ok(())
}
