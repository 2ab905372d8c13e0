//! lem-tokenizer
