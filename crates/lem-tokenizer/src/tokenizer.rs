//! [`Tokenizer`]: the loaded vocabulary, special-token handling, encode/decode. The loaders
//! are `gguf.rs` (GGUF metadata, llama.cpp's rules) and `hf.rs` (Hugging Face
//! `tokenizer.json`); both end in [`Tokenizer::assemble`].

use std::path::Path;

use aho_corasick::AhoCorasick;

use crate::bpe::Bpe;
use crate::bytes::gpt2_unicode_to_byte;
use crate::error::TokenizerError;
use crate::hf::AddedVocab;
use crate::hf_spm::HfBpe;
use crate::special::{ATTR_BYTE, ATTR_CONTROL, ATTR_NORMAL, ATTR_UNKNOWN, ATTR_UNUSED, ATTR_USER_DEFINED};
use crate::spm::Spm;

/// Whether [`Tokenizer::encode`] puts the model's BOS token in front of the ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bos {
    /// Prepend BOS (if the vocabulary has one), whatever the file says.
    Add,
    /// Never prepend BOS.
    Omit,
    /// Follow the file's `tokenizer.ggml.add_bos_token` flag (llama.cpp's default when
    /// the flag is absent: yes for SentencePiece, no for most BPE vocabularies), or for a
    /// Hugging Face directory `add_bos_token` / the post-processor.
    ModelDefault,
}

/// The tokenization algorithm of a vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Algo {
    /// `tokenizer.ggml.model = "llama"`: SentencePiece BPE with byte fallback.
    Spm,
    /// `tokenizer.ggml.model = "gpt2"`: byte-level BPE with a regex pre-tokenizer.
    Bpe,
}

/// A piece of the input after the special-token partition.
#[derive(Debug, Clone, Copy)]
enum Fragment {
    /// Ordinary text, `start..end` byte range of the input.
    Text(usize, usize),
    /// A special token matched verbatim in the input.
    Token(u32),
}

/// How special-token texts are cut out of the input before the algorithm runs.
pub(crate) enum Partition {
    /// llama.cpp's `tokenizer_st_partition` over its `cache_special_tokens`: control,
    /// user-defined and unknown tokens, longest text first (`ids`, and one matcher for all
    /// of them to find which occur).
    LlamaCpp { ids: Vec<u32>, matcher: Option<AhoCorasick> },
    /// Hugging Face's added vocabulary (leftmost-longest match, normalizer in between).
    Hf(Box<AddedVocab>),
}

impl Partition {
    /// llama.cpp's partition set for the given attributes.
    pub(crate) fn llama_cpp(texts: &[String], attrs: &[u32]) -> Result<Partition, aho_corasick::BuildError> {
        let mut ids: Vec<u32> = (0..texts.len() as u32)
            .filter(|&id| {
                attrs[id as usize] & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN) != 0
                    && !texts[id as usize].is_empty()
            })
            .collect();
        ids.sort_by_key(|&id| std::cmp::Reverse(texts[id as usize].len()));
        let matcher = if ids.is_empty() {
            None
        } else {
            Some(AhoCorasick::new(ids.iter().map(|&id| texts[id as usize].as_bytes()))?)
        };
        Ok(Partition::LlamaCpp { ids, matcher })
    }
}

/// Chat templates that came with the tokenizer.
#[derive(Debug, Clone, Default)]
pub(crate) struct Templates {
    /// The default template (GGUF `tokenizer.chat_template`; Hugging Face
    /// `chat_template.jinja` or tokenizer_config's `chat_template`).
    pub(crate) default: Option<String>,
    /// Named templates (tokenizer_config's list form), in file order.
    pub(crate) named: Vec<(String, String)>,
    /// The `bos_token` / `eos_token` texts templates see, where the files name them
    /// (Hugging Face); otherwise the BOS/EOS tokens' texts.
    pub(crate) special_texts: Option<(String, String)>,
}

/// Everything a loader determines; [`Tokenizer::assemble`] derives the rest.
pub(crate) struct Parts {
    pub(crate) algo: Algo,
    pub(crate) engine: Engine,
    pub(crate) texts: Vec<String>,
    pub(crate) attrs: Vec<u32>,
    pub(crate) partition: Partition,
    pub(crate) bos: Option<u32>,
    pub(crate) eos: Option<u32>,
    pub(crate) eog: Vec<u32>,
    pub(crate) add_bos: bool,
    pub(crate) add_space_prefix: bool,
    pub(crate) model: String,
    pub(crate) pre: Option<String>,
    pub(crate) architecture: String,
    pub(crate) templates: Templates,
    pub(crate) fingerprint: String,
}

/// A model's tokenizer: from a GGUF file it produces exactly llama.cpp's token ids, from a
/// Hugging Face `tokenizer.json` exactly the `tokenizers` library's.
///
/// Loaded once with [`Tokenizer::from_gguf`] or [`Tokenizer::from_hf_dir`]; immutable
/// afterwards, `Send + Sync`, and meant to be shared behind an `Arc`.
pub struct Tokenizer {
    /// Runs the tokenization algorithm on text free of special tokens.
    engine: Engine,
    texts: Vec<String>,
    attrs: Vec<u32>,
    /// Decoded bytes of every token, concatenated; `piece_offsets[i]..piece_offsets[i + 1]`.
    piece_bytes: Vec<u8>,
    piece_offsets: Vec<usize>,
    partition: Partition,
    bos: Option<u32>,
    eos: Option<u32>,
    eog: Vec<u32>,
    add_bos: bool,
    add_space_prefix: bool,
    model: String,
    pre: Option<String>,
    architecture: String,
    templates: Templates,
    fingerprint: String,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("model", &self.model)
            .field("pre", &self.pre)
            .field("hf", &matches!(self.partition, Partition::Hf(_)))
            .field("architecture", &self.architecture)
            .field("vocab_size", &self.texts.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("eog", &self.eog)
            .field("add_bos", &self.add_bos)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// The per-algorithm tokenizer.
pub(crate) enum Engine {
    Spm(Spm),
    Bpe(Bpe),
    /// SentencePiece-style tokenizer.json: `tokenizers`' BPE with byte fallback.
    HfBpe(HfBpe),
}

impl Tokenizer {
    /// Loads the tokenizer embedded in a GGUF model file (only the metadata is read).
    ///
    /// # Errors
    /// [`TokenizerError::Io`] if the file cannot be read, [`TokenizerError::NotGguf`] if it
    /// is not GGUF, [`TokenizerError::InvalidGguf`] if the metadata is truncated or has no
    /// usable vocabulary, [`TokenizerError::UnsupportedModel`] for tokenizer models other
    /// than SentencePiece (`llama`) and byte-level BPE (`gpt2`).
    pub fn from_gguf(path: &Path) -> Result<Tokenizer, TokenizerError> {
        crate::gguf::load(path)
    }

    /// Loads a Hugging Face tokenizer directory: `tokenizer.json` (required), and when
    /// present `tokenizer_config.json` (`bos_token`, `eos_token`, `add_bos_token`,
    /// `chat_template` as a string or a list of named templates), `chat_template.jinja`
    /// (the default template, preferred over tokenizer_config's), `generation_config.json`
    /// (`eos_token_id`, an id or a list: all of them end generation; `bos_token_id`) and
    /// `config.json` (`model_type` becomes [`Tokenizer::architecture`]).
    ///
    /// Encoding gives exactly the ids of the `tokenizers` library for that tokenizer.json.
    /// Supported: byte-level BPE (model `BPE`; pre-tokenizer `Split` regexes with behavior
    /// `Isolated` and `ByteLevel`, or `ByteLevel` alone; `NFC`/`NFD`/`NFKC`/`NFKD`
    /// normalizers; merges as `"a b"` strings or `["a", "b"]` lists; added tokens with
    /// their `special`, `normalized`, `lstrip`, `rstrip` and `single_word` flags), which is
    /// Llama 3, Qwen 2/2.5/3/3.5, SmolLM, GPT-2 style vocabularies; and SentencePiece-style
    /// BPE (model `BPE` with `byte_fallback`, `unk_token`, `fuse_unk`; normalizers
    /// `Replace` with a literal pattern and `Prepend`; no pre-tokenizer or `Metaspace`;
    /// decoders `Replace`, `ByteFallback`, `Fuse`, `Strip`, `Metaspace`), which is Gemma
    /// 1/2/3, Llama 2, Mistral v0.1 and Phi-3.
    ///
    /// # Errors
    /// [`TokenizerError::Io`] if a file cannot be read, [`TokenizerError::InvalidHf`] if a
    /// file is not JSON or lacks a required field, [`TokenizerError::UnsupportedHf`] for
    /// tokenizers of another kind (WordPiece, Unigram, byte-level parts mixed with
    /// SentencePiece-style ones, regex `Replace`, ...).
    pub fn from_hf_dir(dir: &Path) -> Result<Tokenizer, TokenizerError> {
        crate::hf::load_dir(dir)
    }

    /// Loads one Hugging Face `tokenizer.json`, with the `tokenizer_config.json` given (if
    /// any); see [`Tokenizer::from_hf_dir`], which also reads the other files of the
    /// directory.
    ///
    /// # Errors
    /// As [`Tokenizer::from_hf_dir`].
    pub fn from_tokenizer_json(path: &Path, tokenizer_config: Option<&Path>) -> Result<Tokenizer, TokenizerError> {
        crate::hf::load_json(path, tokenizer_config)
    }

    /// Builds the tokenizer from what a loader found: every token's piece (llama.cpp's
    /// `token_to_piece(id, special = true)`).
    pub(crate) fn assemble(p: Parts) -> Tokenizer {
        let mut piece_bytes = Vec::new();
        let mut piece_offsets = Vec::with_capacity(p.texts.len() + 1);
        piece_offsets.push(0);
        for (text, &attr) in p.texts.iter().zip(&p.attrs) {
            token_piece(p.algo, text, attr, &mut piece_bytes);
            piece_offsets.push(piece_bytes.len());
        }
        Tokenizer {
            engine: p.engine,
            texts: p.texts,
            attrs: p.attrs,
            piece_bytes,
            piece_offsets,
            partition: p.partition,
            bos: p.bos,
            eos: p.eos,
            eog: p.eog,
            add_bos: p.add_bos,
            add_space_prefix: p.add_space_prefix,
            model: p.model,
            pre: p.pre,
            architecture: p.architecture,
            templates: p.templates,
            fingerprint: p.fingerprint,
        }
    }

    /// Text -> ids. From a GGUF file exactly as llama.cpp's
    /// `llama_tokenize(..., parse_special = true)`; from a Hugging Face tokenizer.json
    /// exactly as `tokenizers`' `encode(text, add_special_tokens = false)` (plus BOS as
    /// asked).
    ///
    /// Texts of control, user-defined and unknown tokens that appear in `text` (for example
    /// `<|im_start|>` or `<start_of_turn>`) become their ids. BOS is prepended according to
    /// `bos`; EOS is never appended.
    ///
    /// # Errors
    /// [`TokenizerError::Encode`] if the algorithm refuses the input (over 10 MiB).
    pub fn encode(&self, text: &str, bos: Bos) -> Result<Vec<u32>, TokenizerError> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        let add = match bos {
            Bos::Add => true,
            Bos::Omit => false,
            Bos::ModelDefault => self.add_bos,
        };
        if add && let Some(b) = self.bos {
            out.push(b);
        }
        if text.len() > shimmytok::MAX_INPUT_SIZE {
            return Err(TokenizerError::Encode(format!(
                "input is {} bytes, the limit is {}",
                text.len(),
                shimmytok::MAX_INPUT_SIZE
            )));
        }
        match &self.partition {
            Partition::LlamaCpp { ids, matcher } => {
                for fragment in self.partition_llama_cpp(text, ids, matcher.as_ref()) {
                    match fragment {
                        Fragment::Token(id) => out.push(id),
                        Fragment::Text(start, end) => self.encode_text(&text[start..end], start == 0, &mut out)?,
                    }
                }
            }
            Partition::Hf(added) => {
                added.encode(text, &mut out, &mut |t, first, out| self.encode_text(t, first, out))?
            }
        }
        Ok(out)
    }

    /// Runs the tokenization algorithm on a fragment free of special tokens; `first` when
    /// it starts at the beginning of the input.
    fn encode_text(&self, text: &str, first: bool, out: &mut Vec<u32>) -> Result<(), TokenizerError> {
        match &self.engine {
            // Every text fragment is either first or follows a special token, so llama.cpp
            // always applies the SentencePiece space prefix (when the vocabulary asks for
            // one).
            Engine::Spm(spm) => {
                spm.encode(text, self.add_space_prefix, out);
                Ok(())
            }
            Engine::Bpe(bpe) => bpe.encode(text, out).map_err(TokenizerError::Encode),
            Engine::HfBpe(bpe) => {
                bpe.encode(text, first, out);
                Ok(())
            }
        }
    }

    /// llama.cpp's `tokenizer_st_partition`: special tokens, longest text first, each cut
    /// out of the remaining text at every non-overlapping occurrence, leftmost first.
    ///
    /// One Aho-Corasick pass finds which special tokens occur at all (Gemma has 6 400 of
    /// them; usually none or a handful occur); only those are then searched for, in
    /// llama.cpp's order, in the text not yet claimed.
    fn partition_llama_cpp(&self, text: &str, ids: &[u32], matcher: Option<&AhoCorasick>) -> Vec<Fragment> {
        if text.is_empty() {
            return Vec::new();
        }
        let mut frags = vec![Fragment::Text(0, text.len())];
        let Some(matcher) = matcher else {
            return frags;
        };
        let mut present = vec![false; ids.len()];
        let mut any = false;
        for m in matcher.find_overlapping_iter(text) {
            present[m.pattern().as_usize()] = true;
            any = true;
        }
        if !any {
            return frags;
        }
        for (rank, &id) in ids.iter().enumerate() {
            if !present[rank] {
                continue;
            }
            let needle = self.texts[id as usize].as_str();
            let mut next = Vec::with_capacity(frags.len() + 2);
            for frag in frags {
                let Fragment::Text(mut start, end) = frag else {
                    next.push(frag);
                    continue;
                };
                while let Some(pos) = text[start..end].find(needle) {
                    if pos > 0 {
                        next.push(Fragment::Text(start, start + pos));
                    }
                    next.push(Fragment::Token(id));
                    start += pos + needle.len();
                }
                if start < end {
                    next.push(Fragment::Text(start, end));
                }
            }
            frags = next;
        }
        frags
    }

    /// Ids -> text: the concatenated token pieces (special tokens rendered as their text),
    /// as UTF-8; for a SentencePiece-style tokenizer.json, the file's decoder run on the
    /// token texts, as `tokenizers`' `decode(ids, skip_special_tokens = false)`. Lossless for ids that came from [`Tokenizer::encode`]; a byte sequence that
    /// is not valid UTF-8 (e.g. half a character) becomes U+FFFD.
    ///
    /// # Errors
    /// [`TokenizerError::UnknownId`] for an id outside the vocabulary.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        if let Partition::Hf(added) = &self.partition
            && let Some(decoder) = added.decoder()
        {
            let tokens = ids
                .iter()
                .map(|&id| self.token_text(id).map(str::to_string).ok_or_else(|| self.unknown(id)))
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(decoder.decode(tokens));
        }
        let bytes = self.decode_bytes(ids)?;
        Ok(match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }

    /// Ids -> raw bytes (the concatenated pieces, not checked for UTF-8).
    ///
    /// # Errors
    /// [`TokenizerError::UnknownId`] for an id outside the vocabulary.
    pub fn decode_bytes(&self, ids: &[u32]) -> Result<Vec<u8>, TokenizerError> {
        let mut out = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            out.extend_from_slice(self.token_piece_bytes(id)?);
        }
        Ok(out)
    }

    /// The raw bytes one token decodes to (llama.cpp's `token_to_piece` with
    /// `special = true`): byte-level BPE tokens are un-mapped to bytes, SentencePiece `▁`
    /// becomes a space, `<0xNN>` byte tokens become that byte, control and user-defined
    /// tokens give their text, unused tokens nothing. May be part of a UTF-8 character; use
    /// [`crate::StreamDecoder`] to turn a stream of ids into text.
    ///
    /// # Errors
    /// [`TokenizerError::UnknownId`] for an id outside the vocabulary.
    pub fn token_piece_bytes(&self, id: u32) -> Result<&[u8], TokenizerError> {
        let i = id as usize;
        if i >= self.texts.len() {
            return Err(self.unknown(id));
        }
        Ok(&self.piece_bytes[self.piece_offsets[i]..self.piece_offsets[i + 1]])
    }

    fn unknown(&self, id: u32) -> TokenizerError {
        TokenizerError::UnknownId { id, vocab_size: self.texts.len() }
    }

    /// The token's text as stored in the vocabulary (e.g. `"Ġthe"`, `"▁the"`, `"<0x0A>"`).
    #[must_use]
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.texts.get(id as usize).map(String::as_str)
    }

    /// The id of the token whose vocabulary text is exactly `text`, if any (with duplicate
    /// texts, the last id, as in llama.cpp; from a tokenizer.json, the added tokens first,
    /// as in `tokenizers`).
    #[must_use]
    pub fn token_id(&self, text: &str) -> Option<u32> {
        if let Partition::Hf(added) = &self.partition
            && let Some(id) = added.token_id(text)
        {
            return Some(id);
        }
        match &self.engine {
            Engine::Spm(spm) => spm.token_id(text),
            Engine::Bpe(bpe) => bpe.token_id(text),
            Engine::HfBpe(bpe) => bpe.token_id(text),
        }
    }

    /// The beginning-of-sequence token, if the vocabulary has one.
    #[must_use]
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// Whether the file asks for BOS to be prepended (`tokenizer.ggml.add_bos_token`, or
    /// llama.cpp's default for the tokenizer type).
    #[must_use]
    pub fn add_bos_default(&self) -> bool {
        self.add_bos
    }

    /// The end-of-sequence token, if the vocabulary has one.
    #[must_use]
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// Whether `id` ends generation: EOS, EOT/EOM, and every token llama.cpp's vocabulary
    /// loader marks as end-of-generation (`<|im_end|>`, `<end_of_turn>`, `<|endoftext|>`,
    /// FIM pad/repo/separator tokens, ...).
    #[must_use]
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }

    /// All end-of-generation ids, ascending.
    #[must_use]
    pub fn eog_ids(&self) -> &[u32] {
        &self.eog
    }

    /// Number of tokens in the vocabulary.
    #[must_use]
    pub fn vocab_size(&self) -> usize {
        self.texts.len()
    }

    /// Whether `id` is a control token (llama.cpp's `llama_vocab_is_control`), e.g. `<bos>`,
    /// `<|im_start|>`. False for ids outside the vocabulary.
    #[must_use]
    pub fn is_control(&self, id: u32) -> bool {
        self.attrs.get(id as usize).is_some_and(|a| a & ATTR_CONTROL != 0)
    }

    /// Whether `id` is a special token that constrained decoding must never produce as
    /// text: control tokens (`<bos>`, `<|im_start|>`, ...), unknown and unused tokens.
    /// False for ids outside the vocabulary.
    #[must_use]
    pub fn is_special(&self, id: u32) -> bool {
        self.attrs.get(id as usize).is_some_and(|a| a & (ATTR_CONTROL | ATTR_UNKNOWN | ATTR_UNUSED) != 0)
    }

    /// The bytes a grammar matcher (llguidance's token trie) sees for `id`: the raw bytes
    /// of [`Tokenizer::token_piece_bytes`] for ordinary tokens (byte-level BPE un-mapped,
    /// SentencePiece `▁` as a space, `<0xNN>` as that byte); for special tokens (and
    /// tokens that decode to nothing) the byte `0xFF` followed by the token's text, the
    /// trie's marker for tokens no text can spell. Empty for ids outside the vocabulary.
    #[must_use]
    pub fn grammar_token_bytes(&self, id: u32) -> Vec<u8> {
        let Ok(bytes) = self.token_piece_bytes(id) else { return Vec::new() };
        if self.is_special(id) || bytes.is_empty() {
            let mut out = vec![0xFF];
            out.extend_from_slice(self.texts[id as usize].as_bytes());
            out
        } else {
            bytes.to_vec()
        }
    }

    /// Hex sha256 over everything that determines tokenization: tokenizer model and
    /// pre-tokenizer, every token's text, score, type and attributes, the merges, special
    /// ids, the BOS/space-prefix flags and the end-of-generation set. Computed once at load.
    /// A tokenizer.json tokenizer hashes its own rules (normalizer, added tokens and their
    /// flags, pre-tokenizer regexes) under another domain, so it never equals the
    /// fingerprint of the same vocabulary's GGUF conversion, which tokenizes differently.
    #[must_use]
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The Jinja chat template stored with the tokenizer, if any: GGUF
    /// `tokenizer.chat_template`; in a Hugging Face directory `chat_template.jinja`, else
    /// tokenizer_config.json's `chat_template` (the one named `default` when it is a list).
    #[must_use]
    pub fn chat_template_source(&self) -> Option<&str> {
        self.templates.default.as_deref()
    }

    /// A named chat template of a Hugging Face directory (tokenizer_config.json's
    /// `chat_template` as a list of `{"name", "template"}`, e.g. `"tool_use"`); `"default"`
    /// is [`Tokenizer::chat_template_source`].
    #[must_use]
    pub fn chat_template_source_named(&self, name: &str) -> Option<&str> {
        if name == "default" {
            return self.chat_template_source();
        }
        self.templates.named.iter().find(|(n, _)| n == name).map(|(_, t)| t.as_str())
    }

    /// The `bos_token` and `eos_token` texts a chat template is rendered with: the ones
    /// tokenizer_config.json names (empty when it names none), else the texts of the BOS
    /// and EOS tokens (empty when there are none).
    #[must_use]
    pub fn template_special_texts(&self) -> (&str, &str) {
        if let Some((b, e)) = &self.templates.special_texts {
            return (b, e);
        }
        let text = |id: Option<u32>| id.and_then(|i| self.token_text(i)).unwrap_or("");
        (text(self.bos), text(self.eos))
    }

    /// Whether the tokenizer was loaded from a Hugging Face `tokenizer.json` (and follows
    /// the `tokenizers` library) rather than from GGUF metadata (llama.cpp).
    #[must_use]
    pub fn is_hf(&self) -> bool {
        matches!(self.partition, Partition::Hf(_))
    }

    /// `general.architecture` of the file (e.g. `"llama"`, `"gemma3"`), or config.json's
    /// `model_type` beside a tokenizer.json; empty if absent.
    #[must_use]
    pub fn architecture(&self) -> &str {
        &self.architecture
    }

    /// `tokenizer.ggml.model` of the file: `"llama"` (SentencePiece) or `"gpt2"` (BPE);
    /// for a tokenizer.json, `"llama"` when it is SentencePiece-style, else `"gpt2"`.
    #[must_use]
    pub fn tokenizer_model(&self) -> &str {
        &self.model
    }

    /// `tokenizer.ggml.pre` of the file (BPE pre-tokenizer name), if present; for a
    /// tokenizer.json, llama.cpp's name for the same pre-tokenizer (`"llama-bpe"`,
    /// `"qwen2"`, `"qwen35"`, ...) when there is one.
    #[must_use]
    pub fn pre_tokenizer(&self) -> Option<&str> {
        self.pre.as_deref()
    }
}

/// llama.cpp's `token_to_piece(special = true)` for one token, appended to `out`.
fn token_piece(algo: Algo, text: &str, attr: u32, out: &mut Vec<u8>) {
    if attr & (ATTR_UNKNOWN | ATTR_CONTROL | ATTR_USER_DEFINED) != 0 {
        out.extend_from_slice(text.as_bytes());
        return;
    }
    match algo {
        Algo::Spm => {
            if attr & ATTR_NORMAL != 0 {
                out.extend_from_slice(text.replace('\u{2581}', " ").as_bytes());
            } else if attr & ATTR_BYTE != 0 {
                // "<0xNN>"; llama.cpp parses text[3..5] as hex.
                if let Some(b) = text.get(3..5).and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    out.push(b);
                }
            }
        }
        Algo::Bpe => {
            if attr & ATTR_NORMAL != 0 {
                for c in text.chars() {
                    match gpt2_unicode_to_byte(c) {
                        Some(b) => out.push(b),
                        None => {
                            // llama.cpp's `llama_decode_text` marker for characters outside
                            // the byte map; reproduced so that pieces match exactly.
                            let mut utf8 = [0u8; 4];
                            let enc = c.encode_utf8(&mut utf8);
                            out.extend_from_slice(b"[UNK_BYTE_0x");
                            for b in enc.bytes() {
                                out.extend_from_slice(format!("{b:02x}").as_bytes());
                            }
                            out.extend_from_slice(text.as_bytes());
                            out.push(b']');
                        }
                    }
                }
            }
        }
    }
}
