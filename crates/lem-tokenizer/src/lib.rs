//! lem-tokenizer: GGUF tokenizers that reproduce llama.cpp's token ids, a streaming
//! detokenizer, and chat templates.
//!
//! (design notes: filled in below once the fixtures are in)

mod bpe;
mod bytes;
mod chat;
mod error;
mod spm;
mod stream;
mod tokenizer;

pub use chat::{ChatMessage, ChatTemplate, Role};
pub use error::{TemplateError, TokenizerError};
pub use stream::StreamDecoder;
pub use tokenizer::{Bos, Tokenizer};
