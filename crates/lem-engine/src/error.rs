//! Engine errors: everything a caller can get wrong or a file can break.

/// Errors of the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Loading or running the model failed.
    #[error(transparent)]
    Model(#[from] lem_model::ModelError),
    /// Tokenizing or detokenizing failed.
    #[error(transparent)]
    Tokenizer(#[from] lem_tokenizer::TokenizerError),
    /// The chat template failed.
    #[error(transparent)]
    Template(#[from] lem_tokenizer::TemplateError),
    /// Invalid sampling parameters.
    #[error(transparent)]
    Sampling(#[from] crate::sampling::SamplingError),
    /// A cache operation failed.
    #[error(transparent)]
    Kv(#[from] lem_kv::KvError),
    /// The prompt does not fit the context.
    #[error(
        "prompt of {tokens} tokens does not fit the context of {ctx} tokens (need room for at least one new token)"
    )]
    PromptTooLong {
        /// Tokens the sequence would hold.
        tokens: usize,
        /// Context size.
        ctx: usize,
    },
    /// Restored state does not fit the sequence or the model.
    #[error("restored state does not match: {0}")]
    StateMismatch(String),
    /// There is nothing to generate from.
    #[error("empty prompt: give at least one token")]
    EmptyPrompt,
    /// A grammar or JSON schema that cannot be compiled (llguidance's message), or a
    /// grammar that allows nothing at some point of a generation.
    #[error("invalid grammar: {0}")]
    Grammar(String),
    /// A draft model that cannot draft for this engine's model.
    #[error("draft model {path}: {reason}")]
    Draft {
        /// The draft model's file or directory.
        path: String,
        /// Why it is refused.
        reason: String,
    },
    /// A KV policy that cannot be applied (`--kv-full-layers auto` on a bounded cache).
    #[error("KV policy: {0}")]
    KvPolicy(String),
    /// The tokenizer and the model disagree.
    #[error("tokenizer has {tokenizer} tokens but the model's vocabulary has {model}")]
    VocabMismatch {
        /// Tokenizer vocabulary size.
        tokenizer: usize,
        /// Model vocabulary size.
        model: usize,
    },
}
