//! Grammar-constrained decoding: the token mask stage of the sampler chain.
//!
//! A [`Grammar`] (JSON Schema, any JSON object, a regular expression, a Lark grammar or
//! a llama.cpp GBNF grammar) is compiled by [`llguidance`] against a
//! [`ConstraintFactory`], which holds the tokenizer's token trie and is built once per
//! tokenizer (the [`Engine`](crate::Engine) caches it). Each generation gets its own
//! [`Constraint`]: before a token is sampled, [`Constraint::mask`] sets the logits of every
//! token the grammar does not allow to `-inf`; after, [`Constraint::commit`] advances the
//! grammar. Special tokens are never allowed, except the end-of-generation tokens once
//! the output is complete. [`Decoder`](crate::Decoder) drives this, so plain
//! generation, speculative verification and the batcher all get the same masks.

mod gbnf;

use std::sync::Arc;
use std::time::Instant;

use lem_tokenizer::Tokenizer;
use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, SimpleVob, TokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};

use crate::error::EngineError;

pub use gbnf::gbnf_to_lark;

/// A constraint on the generated text.
#[derive(Debug, Clone, PartialEq)]
pub enum Grammar {
    /// A JSON Schema (OpenAI `json_schema`, Ollama `format` schema).
    JsonSchema(serde_json::Value),
    /// Any JSON object (OpenAI `json_object`, Ollama `"json"`).
    JsonObject,
    /// A regular expression (Rust `regex` syntax) the whole output must match.
    Regex(String),
    /// A grammar in llguidance's Lark dialect (including `%json { schema }` inline).
    Lark(String),
    /// A llama.cpp GBNF grammar (llama-server's `grammar` field), translated to Lark.
    Gbnf(String),
}

/// llama-server's convention: a `grammar` starting with this line is Lark, not GBNF.
const LLGUIDANCE_MARKER: &str = "%llguidance";

impl Grammar {
    /// A llama-server `grammar` field: Lark when it starts with `%llguidance`, GBNF
    /// otherwise.
    #[must_use]
    pub fn from_llama_grammar(text: &str) -> Grammar {
        if text.trim_start().starts_with(LLGUIDANCE_MARKER) {
            Grammar::Lark(text.to_owned())
        } else {
            Grammar::Gbnf(text.to_owned())
        }
    }

    /// The llguidance grammar. JSON schemas get compact separators (`", "`, `": "`) and no
    /// free whitespace unless the schema's own `x-guidance` options say otherwise: a small
    /// model given free whitespace can pad forever.
    fn to_llg(&self) -> Result<TopLevelGrammar, EngineError> {
        Ok(match self {
            Grammar::JsonSchema(schema) => {
                if !schema.is_object() && !schema.is_boolean() {
                    return Err(EngineError::Grammar(format!(
                        "a JSON schema must be an object or a boolean, got {}",
                        json_kind(schema)
                    )));
                }
                TopLevelGrammar::from_json_schema(with_compact_json(schema))
            }
            Grammar::JsonObject => TopLevelGrammar::from_json_schema(with_compact_json(&serde_json::json!({
                "type": "object"
            }))),
            Grammar::Regex(rx) => TopLevelGrammar::from_regex(rx),
            // llguidance reads a leading `%llguidance {options}` line itself.
            Grammar::Lark(lark) => TopLevelGrammar::from_lark(lark.clone()),
            Grammar::Gbnf(text) => TopLevelGrammar::from_lark(gbnf_to_lark(text)?),
        })
    }
}

/// The JSON type of `v` as error messages name it ("an object", "a string", ...).
#[must_use]
pub fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// `schema` with lem's JSON formatting defaults under `x-guidance` (the schema's own
/// `x-guidance` keys win).
fn with_compact_json(schema: &serde_json::Value) -> serde_json::Value {
    let serde_json::Value::Object(map) = schema else { return schema.clone() };
    let mut map = map.clone();
    let mut opts = serde_json::json!({
        "whitespace_flexible": false,
        "item_separator": ", ",
        "key_separator": ": ",
    });
    if let Some(own) = map.get("x-guidance") {
        llguidance::json_merge(&mut opts, own);
    }
    map.insert("x-guidance".into(), opts);
    serde_json::Value::Object(map)
}

/// The tokenizer's vocabulary as llguidance sees it (the token trie), built once per
/// tokenizer; compiles [`Grammar`]s into per-generation [`Constraint`]s.
pub struct ConstraintFactory {
    factory: ParserFactory,
    /// Tokenizer vocabulary size (logits rows may be longer: padded embeddings).
    vocab: usize,
}

impl std::fmt::Debug for ConstraintFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConstraintFactory").field("vocab", &self.vocab).finish_non_exhaustive()
    }
}

impl ConstraintFactory {
    /// Builds the token trie of `tokenizer`: every token's raw bytes
    /// ([`Tokenizer::grammar_token_bytes`]), special tokens marked as such (a grammar
    /// never produces them), the end-of-generation tokens as llguidance's EOS.
    ///
    /// # Errors
    /// [`EngineError::Grammar`] if llguidance rejects the vocabulary.
    pub fn new(tokenizer: &Tokenizer) -> Result<ConstraintFactory, EngineError> {
        let vocab = tokenizer.vocab_size();
        let words: Vec<Vec<u8>> = (0..vocab as u32).map(|id| tokenizer.grammar_token_bytes(id)).collect();
        let eog = tokenizer.eog_ids();
        let eos = tokenizer.eos_id().or_else(|| eog.first().copied()).unwrap_or(0);
        let info = TokRxInfo { tok_bos: tokenizer.bos_id(), ..TokRxInfo::new(vocab as u32, eos) };
        let mut eos_ids = eog.to_vec();
        if !eos_ids.contains(&eos) {
            eos_ids.push(eos);
        }
        let trie = TokTrie::from(&info, &words).with_eos_tokens(&eos_ids);
        let env: TokEnv = Arc::new(ApproximateTokEnv::new(trie));
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| EngineError::Grammar(e.to_string()))?;
        factory.quiet();
        Ok(ConstraintFactory { factory, vocab })
    }

    /// Compiles `grammar` for one generation.
    ///
    /// # Errors
    /// [`EngineError::Grammar`] with llguidance's message when the grammar or schema is
    /// invalid or uses something llguidance does not support.
    pub fn compile(&self, grammar: &Grammar) -> Result<Constraint, EngineError> {
        let parser = self.factory.create_parser(grammar.to_llg()?).map_err(|e| EngineError::Grammar(e.to_string()))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(EngineError::Grammar(e));
        }
        Ok(Constraint { matcher, vocab: self.vocab, masked: Vec::new(), mask_s: 0.0, masks: 0 })
    }
}

/// One generation's grammar state (see the module documentation).
pub struct Constraint {
    matcher: Matcher,
    vocab: usize,
    /// The masked logits row, reused across tokens.
    masked: Vec<f32>,
    /// Seconds spent computing masks, and how many were computed.
    mask_s: f64,
    masks: usize,
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint")
            .field("vocab", &self.vocab)
            .field("masks", &self.masks)
            .field("complete", &self.matcher.is_stopped())
            .finish_non_exhaustive()
    }
}

/// llguidance's error as an engine error.
fn llg_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Grammar(e.to_string())
}

impl Constraint {
    /// The tokens allowed next (a bit per tokenizer id; the end-of-generation tokens are
    /// set when the output so far is complete).
    ///
    /// # Errors
    /// [`EngineError::Grammar`] if the grammar is in an error state, or allows no token
    /// at all (it needs text this vocabulary cannot spell).
    pub fn allowed(&mut self) -> Result<SimpleVob, EngineError> {
        let t = Instant::now();
        let mask = self.matcher.compute_mask().map_err(llg_err)?;
        self.mask_s += t.elapsed().as_secs_f64();
        self.masks += 1;
        if mask.is_zero() {
            return Err(EngineError::Grammar("the grammar allows no token of this vocabulary here".into()));
        }
        Ok(mask)
    }

    /// `logits` with every token the grammar does not allow at `-inf` (a buffer reused
    /// across calls; ids beyond the tokenizer's vocabulary are never allowed).
    ///
    /// # Errors
    /// As [`Constraint::allowed`].
    pub fn mask(&mut self, logits: &[f32]) -> Result<&[f32], EngineError> {
        let mask = self.allowed()?;
        self.masked.clear();
        self.masked.resize(logits.len(), f32::NEG_INFINITY);
        let n = self.vocab.min(logits.len());
        let (masked, logits) = (&mut self.masked[..n], &logits[..n]);
        mask.iter_set_entries(|i| {
            if i < n {
                masked[i] = logits[i];
            }
        });
        Ok(&self.masked)
    }

    /// Advances the grammar past the sampled token `id` (end-of-generation tokens end the
    /// output and are not fed to the grammar).
    ///
    /// # Errors
    /// [`EngineError::Grammar`] if the grammar does not allow `id`.
    pub fn commit(&mut self, id: u32, eog: bool) -> Result<(), EngineError> {
        if eog {
            return Ok(());
        }
        self.matcher.consume_token(id).map_err(llg_err)
    }

    /// Whether the output is complete and the grammar allows nothing more (generation
    /// ends here with [`FinishReason::Stop`](crate::FinishReason::Stop)).
    #[must_use]
    pub fn is_complete(&self) -> bool {
        self.matcher.is_stopped() && !self.matcher.is_error()
    }

    /// Whether the output so far is a complete sentence of the grammar (end of
    /// generation would be allowed now).
    pub fn is_accepting(&mut self) -> bool {
        self.matcher.is_accepting().unwrap_or(false)
    }

    /// Masks computed and the seconds they took, for benchmarks.
    #[must_use]
    pub fn mask_time(&self) -> (usize, f64) {
        (self.masks, self.mask_s)
    }
}
