//! Error types of the crate.

use std::path::PathBuf;

/// What can go wrong loading a tokenizer or converting between text and ids.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenizerError {
    /// The file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file that was being read.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a GGUF file at all (wrong magic bytes, or too short to have them).
    #[error("{path} is not a GGUF file (expected the magic bytes \"GGUF\")")]
    NotGguf {
        /// The offending file.
        path: PathBuf,
    },
    /// The file is GGUF but its metadata is truncated, malformed, or lacks a usable tokenizer.
    #[error("{path}: invalid GGUF tokenizer metadata: {reason}")]
    InvalidGguf {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The tokenizer in the file is not supported: a `tokenizer.ggml.model` other than
    /// `llama` (SentencePiece) and `gpt2` (byte-level BPE), or a BPE pre-tokenizer
    /// (`tokenizer.ggml.pre`) lem does not know.
    #[error(
        "{path}: unsupported tokenizer: {model} (lem supports 'llama' (SentencePiece) and 'gpt2' (byte-level BPE) with llama.cpp's pre-tokenizers)"
    )]
    UnsupportedModel {
        /// The offending file.
        path: PathBuf,
        /// `tokenizer.ggml.model`, plus the pre-tokenizer when that is the problem.
        model: String,
    },
    /// A Hugging Face tokenizer file (tokenizer.json, tokenizer_config.json,
    /// generation_config.json, config.json) is not valid JSON, lacks a required field, or
    /// has one of the wrong type or value.
    #[error("{path}: invalid Hugging Face tokenizer file: {reason}")]
    InvalidHf {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it (names the field).
        reason: String,
    },
    /// The tokenizer.json describes a tokenizer lem does not implement: a model other than
    /// BPE, a pre-tokenizer other than `Split` (Isolated) regexes + `ByteLevel`, a normalizer
    /// other than the Unicode normal forms, BPE dropout or byte fallback, ...
    #[error(
        "{path}: unsupported tokenizer.json: {what} (lem supports byte-level BPE: Split regexes + ByteLevel, NFC/NFD/NFKC/NFKD)"
    )]
    UnsupportedHf {
        /// The offending file.
        path: PathBuf,
        /// The unsupported part.
        what: String,
    },
    /// A token id outside the vocabulary was passed in.
    #[error("token id {id} is out of range (the vocabulary has {vocab_size} tokens)")]
    UnknownId {
        /// The offending id.
        id: u32,
        /// Size of the vocabulary.
        vocab_size: usize,
    },
    /// The tokenization algorithm refused the input (for example: input over 10 MiB).
    #[error("tokenization failed: {0}")]
    Encode(String),
}

/// What can go wrong compiling or rendering a chat template.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TemplateError {
    /// The template source does not compile (syntax error, unknown tag, ...).
    #[error("invalid chat template: {0}")]
    Syntax(String),
    /// Rendering failed; the message includes the template's own error text, e.g. what it
    /// passed to `raise_exception`.
    #[error("chat template failed to render: {0}")]
    Render(String),
}
