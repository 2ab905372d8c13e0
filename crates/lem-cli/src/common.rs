//! Pieces every subcommand shares: model selection, engine loading, sampling flags.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use lem_engine::sampling::SamplingParams;
use lem_engine::{Engine, EngineConfig};
use lem_tokenizer::{Bos, ChatMessage};

/// Which model to run and how.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// A GGUF file path or a packaged model alias (smollm2-135m, gemma3-270m).
    #[arg(long, short = 'm', default_value = lem_hub::DEFAULT_MODEL, env = "LEM_MODEL")]
    pub model: String,
    /// Worker threads (0: one per core).
    #[arg(long, short = 't', default_value_t = 0)]
    pub threads: usize,
    /// Context size in tokens (capped at the model's training context).
    #[arg(long, default_value_t = 4096)]
    pub ctx_size: usize,
}

impl ModelArgs {
    /// Resolves the model (fetching a packaged one on first use).
    pub fn path(&self) -> anyhow::Result<PathBuf> {
        Ok(lem_hub::resolve(&self.model, lem_hub::Progress::Bar)?)
    }

    /// Loads the engine.
    pub fn load(&self) -> anyhow::Result<Engine> {
        let path = self.path()?;
        let cfg = EngineConfig { threads: self.threads, ctx_size: self.ctx_size };
        Engine::load(&path, cfg).with_context(|| format!("loading {}", path.display()))
    }
}

/// The prompt flags of the commands that run one prompt (`generate`, `kv save`,
/// `inspect`).
#[derive(Debug, Clone, Args)]
pub struct PromptArgs {
    /// The prompt. Special-token strings such as <|im_start|> are parsed into their ids.
    #[arg(long, short = 'p')]
    pub prompt: String,
    /// Wrap the prompt as a user turn in the model's chat template (ending with the
    /// opening of the assistant's turn).
    #[arg(long)]
    pub chat: bool,
    /// System message (with --chat).
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
}

impl PromptArgs {
    /// The prompt text: rendered through the model's chat template with `--chat`.
    pub fn text(&self, engine: &Engine) -> anyhow::Result<String> {
        if !self.chat {
            return Ok(self.prompt.clone());
        }
        let mut messages: Vec<ChatMessage> = self.system.iter().map(|s| ChatMessage::system(s.clone())).collect();
        messages.push(ChatMessage::user(self.prompt.clone()));
        Ok(engine.render_chat(&messages)?)
    }

    /// The prompt's token ids ([`PromptArgs::text`] with the model's BOS policy).
    pub fn ids(&self, engine: &Engine) -> anyhow::Result<Vec<u32>> {
        Ok(engine.tokenizer().encode(&self.text(engine)?, Bos::ModelDefault)?)
    }
}

/// Sampling flags (llama.cpp's defaults; `--temperature 0` is greedy).
#[derive(Debug, Clone, Args)]
pub struct SamplingArgs {
    /// Softmax temperature; 0 picks the most likely token every time.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    /// Keep the K most likely tokens (0: off).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Nucleus sampling threshold (1: off).
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Minimum probability relative to the most likely token (0: off).
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    /// Repetition penalty (1: off).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Presence penalty (0: off).
    #[arg(long, default_value_t = 0.0)]
    pub presence_penalty: f32,
    /// Frequency penalty (0: off).
    #[arg(long, default_value_t = 0.0)]
    pub frequency_penalty: f32,
    /// How many recent tokens the penalties consider.
    #[arg(long, default_value_t = 64)]
    pub penalty_last_n: usize,
    /// Random seed (default: from the clock); the same seed gives the same output.
    #[arg(long)]
    pub seed: Option<u64>,
}

impl SamplingArgs {
    /// The typed parameters, with the seed chosen.
    pub fn params(&self) -> SamplingParams {
        let seed = self.seed.unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
        });
        SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            penalty_last_n: self.penalty_last_n,
            seed,
        }
    }
}

/// Whether an error is a closed stdout (e.g. piping into `head`), which is not a failure.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

/// Prints a JSON value on its own line.
pub fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}
