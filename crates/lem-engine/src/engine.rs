//! The loaded engine: model, tokenizer, chat template, thread pool.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use lem_kernels::Threads;
use lem_model::{LoadOptions, Model};
use lem_tokenizer::{ChatMessage, ChatTemplate, Tokenizer};
use sha2::{Digest, Sha256};

use crate::constraint::ConstraintFactory;
use crate::error::EngineError;
use crate::sequence::Sequence;

/// How to set up an engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    /// Worker threads (0: one per available core).
    pub threads: usize,
    /// Context size in tokens (capped at the model's training context).
    pub ctx_size: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig { threads: 0, ctx_size: 4096 }
    }
}

/// A model ready to run: weights, tokenizer, template and threads.
#[derive(Debug)]
pub struct Engine {
    path: PathBuf,
    model: Model,
    tokenizer: Arc<Tokenizer>,
    template: ChatTemplate,
    threads: Threads,
    ctx_size: usize,
    /// The context size asked for (before [`context_for`]).
    requested_ctx: usize,
    /// The model fingerprint, computed on first use.
    fingerprint: OnceLock<String>,
    /// The matrix type the weights were converted to at load, if any.
    dtype: Option<lem_model::GgmlDType>,
    /// The tokenizer's grammar trie, built on the first constrained generation.
    constraints: OnceLock<Arc<ConstraintFactory>>,
}

impl Engine {
    /// Loads the GGUF file or Hugging Face model directory at `path`.
    pub fn load(path: &Path, config: EngineConfig) -> Result<Engine, EngineError> {
        Engine::load_with(path, config, LoadOptions::default())
    }

    /// [`Engine::load`] with model-loading options (matrix type, KV cache type); the
    /// intended context is the engine's context size.
    pub fn load_with(path: &Path, config: EngineConfig, opts: LoadOptions) -> Result<Engine, EngineError> {
        let opts = LoadOptions { context: Some(opts.context.unwrap_or(config.ctx_size)), ..opts };
        let model = Model::load_with(path, &opts)?;
        let tokenizer =
            Arc::new(if path.is_dir() { Tokenizer::from_hf_dir(path)? } else { Tokenizer::from_gguf(path)? });
        // Files may pad the embedding beyond the vocabulary, never the other way round.
        if tokenizer.vocab_size() > model.vocab() {
            return Err(EngineError::VocabMismatch { tokenizer: tokenizer.vocab_size(), model: model.vocab() });
        }
        let template = ChatTemplate::for_model(&tokenizer, &model.config().architecture)?;
        // Capped at the trained context, unless every layer bounds the distance from a
        // query to what it sees (sliding windows, rebased sink windows): then a stream may
        // run past it, as StreamingLLM's does.
        let ctx_size = context_for(&model, config.ctx_size);
        Ok(Engine {
            path: path.to_owned(),
            model,
            tokenizer,
            template,
            threads: Threads::new(config.threads),
            ctx_size,
            requested_ctx: config.ctx_size,
            fingerprint: OnceLock::new(),
            dtype: opts.dtype,
            constraints: OnceLock::new(),
        })
    }

    /// The file the model came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The model's identity (see [`lem_model::fingerprint`]): computed on first use, and
    /// remembered across processes in the lem cache directory.
    pub fn model_fingerprint(&self) -> Result<&str, EngineError> {
        if self.fingerprint.get().is_none() {
            let fp = lem_model::fingerprint::cached_fingerprint(&self.path, None)?;
            let _ = self.fingerprint.set(self.load_variant(fp));
        }
        Ok(self.fingerprint.get().map_or("", String::as_str))
    }

    /// The file's fingerprint, or, when loading changed what the weights compute, a hash
    /// of it with what changed: matrices converted by `--dtype`, or rotary factors chosen
    /// at load (LongRoPE's short or long set depends on the context). A snapshot, prefix
    /// block or session made under one such load is refused under another.
    fn load_variant(&self, file_fp: String) -> String {
        use lem_model::{Factors, names::Role};
        let mut parts = Vec::new();
        if let Some(t) = self.dtype {
            parts.push(format!("dtype={t:?}"));
        }
        if let Some(f @ (Factors::Values(_) | Factors::Tensor(Role::RopeFactorsLong | Role::RopeFactorsShort))) =
            &self.model.config().rope.scaling.factors
        {
            parts.push(format!("rope_factors={f:?}"));
        }
        if parts.is_empty() {
            return file_fp;
        }
        let mut h = Sha256::new();
        h.update(b"lem-engine load variant v1\0");
        h.update(file_fp.as_bytes());
        for p in parts {
            h.update(b"\0");
            h.update(p.as_bytes());
        }
        hex::encode(h.finalize())
    }

    /// The model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    /// The chat template.
    pub fn template(&self) -> &ChatTemplate {
        &self.template
    }

    /// The grammar compiler for this engine's tokenizer (see [`crate::constraint`]):
    /// built on first use (the token trie of the whole vocabulary), then shared.
    ///
    /// # Errors
    /// [`EngineError::Grammar`] if llguidance rejects the vocabulary.
    pub fn constraint_factory(&self) -> Result<&Arc<ConstraintFactory>, EngineError> {
        if self.constraints.get().is_none() {
            let factory = Arc::new(ConstraintFactory::new(&self.tokenizer)?);
            let _ = self.constraints.set(factory);
        }
        Ok(self.constraints.get().expect("set above"))
    }

    /// The worker pool.
    pub fn threads(&self) -> &Threads {
        &self.threads
    }

    /// Bounds the model's full-attention layers' caches ([`lem_model::Model::bound_cache`])
    /// for sequences created from now on; the context size follows
    /// ([`CacheLayout::bounded_distance`](lem_kv::CacheLayout::bounded_distance)).
    pub fn bound_kv(&mut self, bound: lem_kv::KvBound) -> Result<(), EngineError> {
        self.model.bound_cache(bound)?;
        self.ctx_size = context_for(&self.model, self.requested_ctx);
        Ok(())
    }

    /// Context size in tokens.
    pub fn ctx_size(&self) -> usize {
        self.ctx_size
    }

    /// A new, empty sequence.
    pub fn new_sequence(&self) -> Sequence {
        Sequence::new(self.model.new_cache())
    }

    /// Renders a conversation with the model's chat template, ending with the opening of
    /// an assistant turn.
    pub fn render_chat(&self, messages: &[ChatMessage]) -> Result<String, EngineError> {
        Ok(self.template.render(messages, true)?)
    }
}

/// The context an engine runs at: `requested`, capped at the trained context unless every
/// layer bounds the distance from a query to what it sees (sliding windows, rebased sink
/// windows), in which case a stream may run past it, as StreamingLLM's does.
fn context_for(model: &Model, requested: usize) -> usize {
    let trained = if model.cache_layout().bounded_distance() { usize::MAX } else { model.config().context_length };
    requested.clamp(1, trained)
}
