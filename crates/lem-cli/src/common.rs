//! Pieces every subcommand shares: model selection, engine loading, sampling flags.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::quantized::GgmlDType;
use clap::{Args, ValueEnum};
use lem_engine::sampling::SamplingParams;
use lem_engine::{Engine, EngineConfig};
use lem_model::LoadOptions;
use lem_tokenizer::{Bos, ChatMessage, Tokenizer};

/// Resolves a `--model` argument: a Hugging Face model directory (one with a
/// `config.json`), a GGUF file, or a packaged model alias (fetched on first use). The one
/// place the CLI turns a model argument into a path.
pub fn resolve_model(arg: &str) -> anyhow::Result<PathBuf> {
    let path = Path::new(arg);
    if !arg.is_empty() && path.is_dir() {
        if !path.join("config.json").is_file() {
            anyhow::bail!(
                "{} is a directory without a config.json: not a Hugging Face model directory (give a GGUF file, a model directory or a packaged model alias)",
                path.display()
            );
        }
        return Ok(path.to_path_buf());
    }
    Ok(lem_hub::resolve(arg, lem_hub::Progress::Bar)?)
}

/// The tokenizer of a resolved model path: `tokenizer.json` (and `tokenizer_config.json`)
/// of a Hugging Face directory, or a GGUF file's metadata.
pub fn load_tokenizer(path: &Path) -> anyhow::Result<Tokenizer> {
    let tok = if path.is_dir() { Tokenizer::from_hf_dir(path) } else { Tokenizer::from_gguf(path) };
    tok.with_context(|| format!("loading the tokenizer of {}", path.display()))
}

/// A weight-matrix storage type for `--dtype`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum Dtype {
    /// 32-bit floats.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    Bf16,
    /// 8-bit blocks of 32.
    #[value(name = "q8_0")]
    Q8_0,
    /// 4-bit blocks of 32 with a scale.
    #[value(name = "q4_0")]
    Q4_0,
    /// 4-bit blocks of 32 with a scale and a minimum.
    #[value(name = "q4_1")]
    Q4_1,
    /// 5-bit blocks of 32 with a scale.
    #[value(name = "q5_0")]
    Q5_0,
    /// 5-bit blocks of 32 with a scale and a minimum.
    #[value(name = "q5_1")]
    Q5_1,
    /// 4-bit k-quants (super-blocks of 256).
    #[value(name = "q4_k")]
    Q4K,
    /// 5-bit k-quants (super-blocks of 256).
    #[value(name = "q5_k")]
    Q5K,
    /// 6-bit k-quants (super-blocks of 256).
    #[value(name = "q6_k")]
    Q6K,
}

impl Dtype {
    /// The GGML type.
    pub fn ggml(self) -> GgmlDType {
        match self {
            Dtype::F32 => GgmlDType::F32,
            Dtype::F16 => GgmlDType::F16,
            Dtype::Bf16 => GgmlDType::BF16,
            Dtype::Q8_0 => GgmlDType::Q8_0,
            Dtype::Q4_0 => GgmlDType::Q4_0,
            Dtype::Q4_1 => GgmlDType::Q4_1,
            Dtype::Q5_0 => GgmlDType::Q5_0,
            Dtype::Q5_1 => GgmlDType::Q5_1,
            Dtype::Q4K => GgmlDType::Q4K,
            Dtype::Q5K => GgmlDType::Q5K,
            Dtype::Q6K => GgmlDType::Q6K,
        }
    }
}

/// How to load the weights (shared by every command that loads a model; named apart from
/// `kv load`'s `LoadArgs`, since clap names argument groups after the struct).
#[derive(Debug, Clone, Copy, Default, Args)]
pub struct WeightArgs {
    /// Store every weight matrix in this type, converting or quantizing at load
    /// (default: each tensor's stored type). Quantized types need rows whose length is a
    /// multiple of the block size (32; 256 for the k-quants).
    #[arg(long, value_enum)]
    pub dtype: Option<Dtype>,
    #[command(flatten)]
    pub kv: crate::cmd::kv_args::KvCacheArgs,
}

impl WeightArgs {
    /// The model-loading options (with the KV cache types).
    pub fn options(&self) -> LoadOptions {
        self.kv.apply(LoadOptions { dtype: self.dtype.map(Dtype::ggml), ..LoadOptions::default() })
    }
}

/// Which model to run and how.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// A GGUF file, a Hugging Face model directory (config.json, *.safetensors,
    /// tokenizer.json) or a packaged model alias (smollm2-135m, gemma3-270m).
    #[arg(long, short = 'm', default_value = lem_hub::DEFAULT_MODEL, env = "LEM_MODEL")]
    pub model: String,
    #[command(flatten)]
    pub load: WeightArgs,
    /// Worker threads (0: one per core).
    #[arg(long, short = 't', default_value_t = 0)]
    pub threads: usize,
    /// Context size in tokens (capped at the model's training context).
    #[arg(long, default_value_t = 4096)]
    pub ctx_size: usize,
}

impl ModelArgs {
    /// Resolves the model ([`resolve_model`]: fetching a packaged one on first use).
    pub fn path(&self) -> anyhow::Result<PathBuf> {
        resolve_model(&self.model)
    }

    /// Loads the engine (with `--dtype` and the KV flags; `--kv-full-layers auto`
    /// measures its layers here and prints what it chose on stderr).
    pub fn load(&self) -> anyhow::Result<Engine> {
        let path = self.path()?;
        let cfg = EngineConfig { threads: self.threads, ctx_size: self.ctx_size };
        let mut engine = Engine::load_with(&path, cfg, self.load.options())
            .with_context(|| format!("loading {}", path.display()))?;
        if let Some((bound, keep)) = self.load.kv.auto_keep() {
            let keep = keep.unwrap_or_else(|| lem_engine::kv_policy::default_keep(&engine));
            let choice = lem_engine::kv_policy::bound_auto(&mut engine, bound, keep)?;
            eprintln!(
                "--kv-full-layers auto: keeping layers {:?} full (measured on {} calibration tokens)",
                choice.full_layers, choice.calibration_tokens
            );
        }
        Ok(engine)
    }

    /// Loads only the tokenizer ([`load_tokenizer`]).
    pub fn tokenizer(&self) -> anyhow::Result<Tokenizer> {
        load_tokenizer(&self.path()?)
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

/// Constrained-decoding flags: at most one of them (docs/server.md, "Structured outputs").
#[derive(Debug, Clone, Default, Args)]
#[group(multiple = false)]
pub struct GrammarArgs {
    /// Constrain the output to JSON valid under the JSON Schema in this file.
    #[arg(long, value_name = "FILE")]
    pub json_schema: Option<std::path::PathBuf>,
    /// Constrain the output to one JSON object.
    #[arg(long)]
    pub json_object: bool,
    /// Constrain the whole output to match this regular expression.
    #[arg(long, value_name = "RE")]
    pub regex: Option<String>,
    /// Constrain the output to the grammar in this file: llama.cpp GBNF, or llguidance
    /// Lark when it starts with `%llguidance`.
    #[arg(long, value_name = "FILE")]
    pub grammar: Option<std::path::PathBuf>,
}

impl GrammarArgs {
    /// The grammar the flags ask for (`None`: unconstrained), its files read.
    pub fn grammar(&self) -> anyhow::Result<Option<lem_engine::Grammar>> {
        use anyhow::Context;
        use lem_engine::Grammar;
        let read = |p: &std::path::Path| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
        Ok(if let Some(p) = &self.json_schema {
            let text = read(p)?;
            let schema = serde_json::from_str(&text).with_context(|| format!("{} is not JSON", p.display()))?;
            Some(Grammar::JsonSchema(schema))
        } else if self.json_object {
            Some(Grammar::JsonObject)
        } else if let Some(rx) = &self.regex {
            Some(Grammar::Regex(rx.clone()))
        } else if let Some(p) = &self.grammar {
            Some(Grammar::from_llama_grammar(&read(p)?))
        } else {
            None
        })
    }
}
