//! [`Tokenizer`]: GGUF vocabulary loading, llama.cpp's special-token handling, encode/decode.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use aho_corasick::AhoCorasick;
use sha2::{Digest, Sha256};
use shimmytok::GGUFValue;

use crate::bpe::{Bpe, BpeError};
use crate::bytes::gpt2_unicode_to_byte;
use crate::error::TokenizerError;
use crate::spm::Spm;

// Token attributes, bit-for-bit llama.cpp's `llama_token_attr`.
const ATTR_UNKNOWN: u32 = 1 << 0;
const ATTR_UNUSED: u32 = 1 << 1;
const ATTR_NORMAL: u32 = 1 << 2;
const ATTR_CONTROL: u32 = 1 << 3;
const ATTR_USER_DEFINED: u32 = 1 << 4;
const ATTR_BYTE: u32 = 1 << 5;

/// Whether [`Tokenizer::encode`] puts the model's BOS token in front of the ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bos {
    /// Prepend BOS (if the vocabulary has one), whatever the file says.
    Add,
    /// Never prepend BOS.
    Omit,
    /// Follow the file's `tokenizer.ggml.add_bos_token` flag (llama.cpp's default when
    /// the flag is absent: yes for SentencePiece, no for most BPE vocabularies).
    ModelDefault,
}

/// The tokenization algorithm of a vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Algo {
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

/// A GGUF model's tokenizer, producing exactly llama.cpp's token ids.
///
/// Loaded once with [`Tokenizer::from_gguf`]; immutable afterwards, `Send + Sync`, and meant
/// to be shared behind an `Arc`.
pub struct Tokenizer {
    /// Runs the tokenization algorithm on text free of special tokens.
    engine: Engine,
    texts: Vec<String>,
    attrs: Vec<u32>,
    /// Decoded bytes of every token, concatenated; `piece_offsets[i]..piece_offsets[i + 1]`.
    piece_bytes: Vec<u8>,
    piece_offsets: Vec<usize>,
    /// Texts that are cut out of the input before the tokenization algorithm runs
    /// (llama.cpp's `cache_special_tokens`), and their ids, longest text first.
    special_ids: Vec<u32>,
    special_matcher: Option<AhoCorasick>,
    bos: Option<u32>,
    eos: Option<u32>,
    eog: Vec<u32>,
    add_bos: bool,
    add_space_prefix: bool,
    model: String,
    pre: Option<String>,
    architecture: String,
    chat_template: Option<String>,
    fingerprint: String,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("model", &self.model)
            .field("pre", &self.pre)
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
enum Engine {
    Spm(Spm),
    Bpe(Bpe),
}

/// Metadata lookups on shimmytok's preserved GGUF key/value map.
struct Meta<'a>(&'a HashMap<String, GGUFValue>);

impl Meta<'_> {
    fn get(&self, key: &str) -> Option<&GGUFValue> {
        self.0.get(key)
    }

    fn u64(&self, key: &str) -> Option<u64> {
        match self.get(key)? {
            GGUFValue::U8(v) => Some(u64::from(*v)),
            GGUFValue::U16(v) => Some(u64::from(*v)),
            GGUFValue::U32(v) => Some(u64::from(*v)),
            GGUFValue::U64(v) => Some(*v),
            GGUFValue::I8(v) => u64::try_from(*v).ok(),
            GGUFValue::I16(v) => u64::try_from(*v).ok(),
            GGUFValue::I32(v) => u64::try_from(*v).ok(),
            GGUFValue::I64(v) => u64::try_from(*v).ok(),
            _ => None,
        }
    }

    fn bool(&self, key: &str) -> Option<bool> {
        match self.get(key)? {
            GGUFValue::Bool(b) => Some(*b),
            _ => None,
        }
    }

    fn str(&self, key: &str) -> Option<&str> {
        match self.get(key)? {
            GGUFValue::String(s) => Some(s),
            _ => None,
        }
    }

    fn array(&self, key: &str) -> Option<&[GGUFValue]> {
        match self.get(key)? {
            GGUFValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

fn invalid(path: &Path, reason: impl Into<String>) -> TokenizerError {
    TokenizerError::InvalidGguf { path: path.to_path_buf(), reason: reason.into() }
}

fn map_shimmytok_error(path: &Path, e: shimmytok::Error) -> TokenizerError {
    match e {
        shimmytok::Error::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            invalid(path, "the file is truncated (metadata ends early)")
        }
        shimmytok::Error::Io(io) => TokenizerError::Io { path: path.to_path_buf(), source: io },
        shimmytok::Error::UnsupportedModel(model) => {
            TokenizerError::UnsupportedModel { path: path.to_path_buf(), model }
        }
        other => invalid(path, other.to_string()),
    }
}

/// llama.cpp's EOT auto-detection candidates (`special_eot_id` when the file has none).
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<end_of_utterance>",
];
const EOM_TEXTS: &[&str] = &["<|eom_id|>"];
const FIM_PRE_TEXTS: &[&str] =
    &["<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<PRE>", "<|code_prefix|>", "<|prefix|>"];
const FIM_SUF_TEXTS: &[&str] =
    &["<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<SUF>", "<|code_suffix|>", "<|suffix|>"];
const FIM_MID_TEXTS: &[&str] =
    &["<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<MID>", "<|code_middle|>", "<|middle|>"];
const FIM_PAD_TEXTS: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
const FIM_REP_TEXTS: &[&str] = &["<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"];
const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>"];
/// llama.cpp's list of texts that always end generation.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
];

impl Tokenizer {
    /// Loads the tokenizer embedded in a GGUF model file (only the metadata is read).
    ///
    /// # Errors
    /// [`TokenizerError::Io`] if the file cannot be read, [`TokenizerError::NotGguf`] if it
    /// is not GGUF, [`TokenizerError::InvalidGguf`] if the metadata is truncated or has no
    /// usable vocabulary, [`TokenizerError::UnsupportedModel`] for tokenizer models other
    /// than SentencePiece (`llama`) and byte-level BPE (`gpt2`).
    pub fn from_gguf(path: &Path) -> Result<Tokenizer, TokenizerError> {
        check_magic(path)?;
        let gguf = shimmytok::gguf::load_metadata(path).map_err(|e| map_shimmytok_error(path, e))?;
        Self::build(path, gguf.metadata())
    }

    fn build(path: &Path, metadata: &HashMap<String, GGUFValue>) -> Result<Tokenizer, TokenizerError> {
        let meta = Meta(metadata);
        let model =
            meta.str("tokenizer.ggml.model").ok_or_else(|| invalid(path, "missing tokenizer.ggml.model"))?.to_string();
        let algo = match model.as_str() {
            "llama" => Algo::Spm,
            "gpt2" => Algo::Bpe,
            other => {
                return Err(TokenizerError::UnsupportedModel { path: path.to_path_buf(), model: format!("'{other}'") });
            }
        };
        let pre = meta.str("tokenizer.ggml.pre").map(str::to_string);
        let architecture = meta.str("general.architecture").unwrap_or("").to_string();
        let chat_template = meta.str("tokenizer.chat_template").map(str::to_string);

        let texts: Vec<String> = meta
            .array("tokenizer.ggml.tokens")
            .ok_or_else(|| invalid(path, "missing tokenizer.ggml.tokens"))?
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                // llama.cpp renames empty tokens so that they can never match.
                GGUFValue::String(s) if s.is_empty() => Ok(format!("[EMPTY_{i}]")),
                GGUFValue::String(s) => Ok(s.clone()),
                _ => Err(invalid(path, "tokenizer.ggml.tokens is not a string array")),
            })
            .collect::<Result<_, _>>()?;
        let n = texts.len();
        if n == 0 || n > u32::MAX as usize {
            return Err(invalid(path, format!("bad vocabulary size {n}")));
        }
        let scores: Vec<f32> = match meta.array("tokenizer.ggml.scores") {
            Some(a) => a
                .iter()
                .map(|v| match v {
                    GGUFValue::F32(f) => Ok(*f),
                    _ => Err(invalid(path, "tokenizer.ggml.scores is not an f32 array")),
                })
                .collect::<Result<_, _>>()?,
            None => vec![0.0; n],
        };
        let types: Vec<i32> = match meta.array("tokenizer.ggml.token_type") {
            Some(a) => a
                .iter()
                .map(|v| match v {
                    GGUFValue::I32(t) => Ok(*t),
                    _ => Err(invalid(path, "tokenizer.ggml.token_type is not an i32 array")),
                })
                .collect::<Result<_, _>>()?,
            None => vec![1; n],
        };
        if scores.len() != n || types.len() != n {
            return Err(invalid(
                path,
                format!("{n} tokens but {} scores and {} token types", scores.len(), types.len()),
            ));
        }
        let merges: Vec<&str> = meta
            .array("tokenizer.ggml.merges")
            .map(|a| {
                a.iter()
                    .filter_map(|v| match v {
                        GGUFValue::String(s) => Some(s.as_str()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();

        let mut attrs: Vec<u32> = types
            .iter()
            .map(|t| match t {
                1 => ATTR_NORMAL,
                2 => ATTR_UNKNOWN,
                3 => ATTR_CONTROL,
                4 => ATTR_USER_DEFINED,
                5 => ATTR_UNUSED,
                6 => ATTR_BYTE,
                _ => 0,
            })
            .collect();

        // Special ids: llama.cpp's per-model defaults, then the metadata (ignored when out
        // of range, as llama.cpp does).
        let in_range = |id: u32| (id as usize) < n;
        let key_id = |key: &str| {
            meta.u64(&format!("tokenizer.ggml.{key}")).and_then(|v| u32::try_from(v).ok()).filter(|&v| in_range(v))
        };
        let (def_bos, def_eos) = match algo {
            Algo::Spm => (Some(1), Some(2)),
            Algo::Bpe => (Some(11), Some(11)),
        };
        let bos = key_id("bos_token_id").or(def_bos).filter(|&v| in_range(v));
        let eos = key_id("eos_token_id").or(def_eos).filter(|&v| in_range(v));
        let mut eot = key_id("eot_token_id");
        let mut eom = key_id("eom_token_id");
        let mut fim_pre = key_id("fim_pre_token_id").or(key_id("prefix_token_id"));
        let mut fim_suf = key_id("fim_suf_token_id").or(key_id("suffix_token_id"));
        let mut fim_mid = key_id("fim_mid_token_id").or(key_id("middle_token_id"));
        let mut fim_pad = key_id("fim_pad_token_id");
        let mut fim_rep = key_id("fim_rep_token_id");
        let mut fim_sep = key_id("fim_sep_token_id");

        // llama.cpp auto-detects these by their text and forces them to be control tokens.
        // (It walks a hash map; we walk ids in order. Only the choice between several
        // candidates for the same role could differ, and that is not observable here: all
        // candidates end generation either way.)
        for (id, text) in texts.iter().enumerate() {
            let id = id as u32;
            for (slot, list) in [
                (&mut eot, EOT_TEXTS),
                (&mut eom, EOM_TEXTS),
                (&mut fim_pre, FIM_PRE_TEXTS),
                (&mut fim_suf, FIM_SUF_TEXTS),
                (&mut fim_mid, FIM_MID_TEXTS),
                (&mut fim_pad, FIM_PAD_TEXTS),
                (&mut fim_rep, FIM_REP_TEXTS),
                (&mut fim_sep, FIM_SEP_TEXTS),
            ] {
                if slot.is_none() && list.contains(&text.as_str()) {
                    *slot = Some(id);
                    attrs[id as usize] |= ATTR_CONTROL;
                }
            }
        }
        // Control tokens named "unused" are unused.
        for (id, text) in texts.iter().enumerate() {
            if attrs[id] & ATTR_CONTROL != 0 && text.contains("unused") {
                attrs[id] |= ATTR_UNUSED;
            }
        }
        // End-of-generation set.
        let mut eog: Vec<u32> = [fim_pad, fim_rep, fim_sep].into_iter().flatten().collect();
        for (id, text) in texts.iter().enumerate() {
            if EOG_TEXTS.contains(&text.as_str()) {
                eog.push(id as u32);
                attrs[id] |= ATTR_CONTROL;
            }
        }
        // gpt-oss: these are always rendered.
        for (id, text) in texts.iter().enumerate() {
            if matches!(text.as_str(), "<|channel|>" | "<|message|>" | "<|start|>" | "<|constrain|>") {
                attrs[id] = ATTR_USER_DEFINED;
            }
        }
        eog.extend([eos, eot, eom].into_iter().flatten());
        eog.sort_unstable();
        eog.dedup();
        // llama.cpp's workarounds: o200k_harmony / solar-open, where "<|end|>" must not end
        // generation, and gemma4 / paddleocr, where "</s>" must not.
        let find = |eog: &[u32], t: &str| eog.iter().position(|&id| texts[id as usize] == t);
        let has = |eog: &[u32], t: &str| find(eog, t).is_some();
        let has_call = has(&eog, "<|call|>") || has(&eog, "<|calls|>");
        if has_call
            && (has(&eog, "<|return|>") || has(&eog, "<|flush|>"))
            && let Some(pos) = find(&eog, "<|end|>")
        {
            let end = eog.remove(pos);
            attrs[end as usize] = ATTR_USER_DEFINED;
        }
        if has(&eog, "<|tool_response>")
            && let Some(pos) = find(&eog, "</s>")
        {
            let s = eog.remove(pos);
            attrs[s as usize] = ATTR_NORMAL;
        }

        let add_bos = meta.bool("tokenizer.ggml.add_bos_token").unwrap_or(match algo {
            Algo::Spm => true,
            Algo::Bpe => {
                matches!(pre.as_deref(), Some("llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "tekken" | "chameleon"))
            }
        });
        let add_space_prefix = meta.bool("tokenizer.ggml.add_space_prefix").unwrap_or(algo == Algo::Spm);

        // Pieces: llama.cpp's `token_to_piece(id, special = true)`.
        let mut piece_bytes = Vec::new();
        let mut piece_offsets = Vec::with_capacity(n + 1);
        piece_offsets.push(0);
        for (text, &attr) in texts.iter().zip(&attrs) {
            token_piece(algo, text, attr, &mut piece_bytes);
            piece_offsets.push(piece_bytes.len());
        }

        // Special-token partition set: control, user-defined and unknown tokens, longest first.
        let mut special_ids: Vec<u32> = (0..n as u32)
            .filter(|&id| {
                attrs[id as usize] & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN) != 0
                    && !texts[id as usize].is_empty()
            })
            .collect();
        special_ids.sort_by_key(|&id| std::cmp::Reverse(texts[id as usize].len()));
        let special_matcher = if special_ids.is_empty() {
            None
        } else {
            Some(
                AhoCorasick::new(special_ids.iter().map(|&id| texts[id as usize].as_bytes()))
                    .map_err(|e| invalid(path, format!("special-token matcher: {e}")))?,
            )
        };

        let engine = match algo {
            Algo::Spm => {
                // llama.cpp's SentencePiece default: <unk> is token 0.
                let unk = key_id("unknown_token_id").or(Some(0)).filter(|&v| in_range(v));
                Engine::Spm(Spm::new(&texts, &scores, unk))
            }
            Algo::Bpe => {
                let name = pre.as_deref().unwrap_or("default");
                Engine::Bpe(Bpe::new(name, &texts, &merges).map_err(|e| match e {
                    BpeError::UnknownPre(p) => TokenizerError::UnsupportedModel {
                        path: path.to_path_buf(),
                        model: format!("'gpt2' with pre-tokenizer '{p}'"),
                    },
                    BpeError::Regex(e) => invalid(path, format!("pre-tokenizer regex: {e}")),
                })?)
            }
        };

        let fingerprint = {
            let mut h = Sha256::new();
            let mut put = |b: &[u8]| {
                h.update((b.len() as u64).to_le_bytes());
                h.update(b);
            };
            put(b"lem-tokenizer fingerprint v1");
            put(model.as_bytes());
            put(pre.as_deref().unwrap_or("").as_bytes());
            put(&(n as u64).to_le_bytes());
            for i in 0..n {
                put(texts[i].as_bytes());
                put(&scores[i].to_bits().to_le_bytes());
                put(&types[i].to_le_bytes());
                put(&attrs[i].to_le_bytes());
            }
            put(&(merges.len() as u64).to_le_bytes());
            for m in &merges {
                put(m.as_bytes());
            }
            let opt = |v: Option<u32>| v.map_or(-1i64, i64::from).to_le_bytes();
            for v in [bos, eos, eot, eom, fim_pre, fim_suf, fim_mid, fim_pad, fim_rep, fim_sep] {
                put(&opt(v));
            }
            for key in ["unknown_token_id", "seperator_token_id", "padding_token_id"] {
                put(&opt(key_id(key)));
            }
            put(&[u8::from(add_bos), u8::from(add_space_prefix)]);
            for key in ["tokenizer.ggml.add_eos_token", "tokenizer.ggml.remove_extra_whitespaces"] {
                put(&[meta.bool(key).map_or(2, u8::from)]);
            }
            for id in &eog {
                put(&id.to_le_bytes());
            }
            hex::encode(h.finalize())
        };

        Ok(Tokenizer {
            engine,
            texts,
            attrs,
            piece_bytes,
            piece_offsets,
            special_ids,
            special_matcher,
            bos,
            eos,
            eog,
            add_bos,
            add_space_prefix,
            model,
            pre,
            architecture,
            chat_template,
            fingerprint,
        })
    }

    /// Text -> ids, exactly as llama.cpp's `llama_tokenize(..., parse_special = true)`.
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
        for fragment in self.partition(text) {
            match fragment {
                Fragment::Token(id) => out.push(id),
                Fragment::Text(start, end) => self.encode_text(&text[start..end], &mut out)?,
            }
        }
        Ok(out)
    }

    /// Runs the tokenization algorithm on a fragment free of special tokens.
    fn encode_text(&self, text: &str, out: &mut Vec<u32>) -> Result<(), TokenizerError> {
        match &self.engine {
            // Every text fragment is either first or follows a special token, so llama.cpp
            // always applies the SentencePiece space prefix (when the vocabulary asks for
            // one).
            Engine::Spm(spm) => {
                spm.encode(text, self.add_space_prefix, out);
                Ok(())
            }
            Engine::Bpe(bpe) => bpe.encode(text, out).map_err(TokenizerError::Encode),
        }
    }

    /// llama.cpp's `tokenizer_st_partition`: special tokens, longest text first, each cut
    /// out of the remaining text at every non-overlapping occurrence, leftmost first.
    ///
    /// One Aho-Corasick pass finds which special tokens occur at all (Gemma has 6 400 of
    /// them; usually none or a handful occur); only those are then searched for, in
    /// llama.cpp's order, in the text not yet claimed.
    fn partition(&self, text: &str) -> Vec<Fragment> {
        if text.is_empty() {
            return Vec::new();
        }
        let mut frags = vec![Fragment::Text(0, text.len())];
        let Some(matcher) = &self.special_matcher else {
            return frags;
        };
        let mut present = vec![false; self.special_ids.len()];
        let mut any = false;
        for m in matcher.find_overlapping_iter(text) {
            present[m.pattern().as_usize()] = true;
            any = true;
        }
        if !any {
            return frags;
        }
        for (rank, &id) in self.special_ids.iter().enumerate() {
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
    /// as UTF-8. Lossless for ids that came from [`Tokenizer::encode`]; a byte sequence that
    /// is not valid UTF-8 (e.g. half a character) becomes U+FFFD.
    ///
    /// # Errors
    /// [`TokenizerError::UnknownId`] for an id outside the vocabulary.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
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
    /// texts, the last id, as in llama.cpp).
    #[must_use]
    pub fn token_id(&self, text: &str) -> Option<u32> {
        match &self.engine {
            Engine::Spm(spm) => spm.token_id(text),
            Engine::Bpe(bpe) => bpe.token_id(text),
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

    /// Hex sha256 over everything that determines tokenization: tokenizer model and
    /// pre-tokenizer, every token's text, score, type and attributes, the merges, special
    /// ids, the BOS/space-prefix flags and the end-of-generation set. Computed once at load.
    #[must_use]
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The Jinja chat template stored in the file (`tokenizer.chat_template`), if any.
    #[must_use]
    pub fn chat_template_source(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// `general.architecture` of the file (e.g. `"llama"`, `"gemma3"`); empty if absent.
    #[must_use]
    pub fn architecture(&self) -> &str {
        &self.architecture
    }

    /// `tokenizer.ggml.model` of the file: `"llama"` (SentencePiece) or `"gpt2"` (BPE).
    #[must_use]
    pub fn tokenizer_model(&self) -> &str {
        &self.model
    }

    /// `tokenizer.ggml.pre` of the file (BPE pre-tokenizer name), if present.
    #[must_use]
    pub fn pre_tokenizer(&self) -> Option<&str> {
        self.pre.as_deref()
    }
}

/// Reads the first four bytes: a clear error for files that are not GGUF at all.
fn check_magic(path: &Path) -> Result<(), TokenizerError> {
    let io = |source| TokenizerError::Io { path: PathBuf::from(path), source };
    let mut file = File::open(path).map_err(io)?;
    let mut magic = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match file.read(&mut magic[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io(e)),
        }
    }
    if got < 4 || &magic != b"GGUF" {
        return Err(TokenizerError::NotGguf { path: path.to_path_buf() });
    }
    Ok(())
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
