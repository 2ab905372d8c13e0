//! Loading a Hugging Face tokenizer directory: `tokenizer.json` (byte-level BPE, or SentencePiece-style BPE through `hf_spm.rs`) with
//! `tokenizer_config.json`, `generation_config.json`, `config.json` and
//! `chat_template.jinja` when present; and Hugging Face's added-token matching.
//!
//! The tokenization of a tokenizer.json follows the `tokenizers` library, which differs
//! from llama.cpp's handling of the same vocabulary converted to GGUF in two ways the
//! fixtures show: the normalizer runs (Qwen's NFC; llama.cpp has none), and only the
//! `added_tokens` are cut out of the text, leftmost-longest first (llama.cpp also cuts out
//! ordinary tokens its rules mark as control, such as Qwen's `</s>`, longest first). The
//! BPE itself (pre-tokenizer passes, byte map, merges) is the same code as for GGUF.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use aho_corasick::{AhoCorasick, MatchKind};
use serde_json::Value;
use sha2::{Digest, Sha256};
use unicode_normalization::UnicodeNormalization;

use crate::bpe::{Bpe, pre_name_for};
use crate::error::TokenizerError;
use crate::hf_json::{Obj, id_of, invalid, read, read_json, unsupported};
use crate::hf_spm::{Decoder, HfBpe, HfBpeOptions, Metaspace};
use crate::special::{
    ATTR_BYTE, ATTR_CONTROL, ATTR_NORMAL, ATTR_UNUSED, ATTR_USER_DEFINED, SpecialIds, llama_cpp_rules,
};
use crate::split;
use crate::tokenizer::{Algo, Engine, Partition, Parts, Templates, Tokenizer};

/// One entry of tokenizer.json's `added_tokens`.
#[derive(Debug, Clone)]
pub(crate) struct AddedToken {
    id: u32,
    /// The text matched: `raw`, normalized when `normalized` is set.
    content: String,
    /// The text as the file gives it (what ids are assigned and looked up by).
    raw: String,
    special: bool,
    /// Matched in the normalized text (after the normalizer) rather than the input.
    normalized: bool,
    lstrip: bool,
    rstrip: bool,
    single_word: bool,
}

/// One step of tokenizer.json's `normalizer`: a Unicode normalization form, or the
/// SentencePiece-style `Replace` (a literal string) and `Prepend`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Normalization {
    Nfc,
    Nfd,
    Nfkc,
    Nfkd,
    Replace(String, String),
    /// Prepended to non-empty text.
    Prepend(String),
}

/// tokenizer.json's byte-level pre-tokenizer as lem runs it: `Split` regexes (behaviour `Isolated`),
/// each applied to the pieces of the previous one, then `ByteLevel` (whose `use_regex`
/// adds the GPT-2 regex as a last pass).
#[derive(Debug, Clone)]
struct PreTokenizer {
    patterns: Vec<String>,
    add_prefix_space: bool,
}

/// Hugging Face's added vocabulary: which texts are cut out of the input, and the
/// normalizer that runs on the rest.
pub(crate) struct AddedVocab {
    tokens: Vec<AddedToken>,
    /// Non-normalized added tokens (matched in the input) and normalized ones (matched in
    /// the normalized text), each with the index into `tokens` of every pattern.
    raw: Option<(AhoCorasick, Vec<usize>)>,
    normalized: Option<(AhoCorasick, Vec<usize>)>,
    normalizer: Vec<Normalization>,
    /// The decoder of a SentencePiece-style tokenizer.json (byte-level ones decode as the
    /// concatenated token pieces).
    decoder: Option<Decoder>,
}

/// The tokenizer.json pre-tokenizer: byte-level (regex splits, ByteLevel), or
/// SentencePiece-style (none, or `Metaspace`).
enum Pre {
    ByteLevel(PreTokenizer),
    Spm(Option<Metaspace>),
}

/// The callback that runs the tokenization algorithm on text free of added tokens; the
/// flag says whether the text starts at the beginning of the input.
type EncodeText<'a> = dyn FnMut(&str, bool, &mut Vec<u32>) -> Result<(), TokenizerError> + 'a;

impl AddedVocab {
    fn new(
        tokens: Vec<AddedToken>,
        normalizer: Vec<Normalization>,
        decoder: Option<Decoder>,
    ) -> Result<AddedVocab, String> {
        let matcher = |normalized: bool| -> Result<Option<(AhoCorasick, Vec<usize>)>, String> {
            let idx: Vec<usize> = (0..tokens.len())
                .filter(|&i| tokens[i].normalized == normalized && !tokens[i].content.is_empty())
                .collect();
            if idx.is_empty() {
                return Ok(None);
            }
            let ac = AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(idx.iter().map(|&i| tokens[i].content.as_bytes()))
                .map_err(|e| format!("added-token matcher: {e}"))?;
            Ok(Some((ac, idx)))
        };
        let raw = matcher(false)?;
        let normalized = matcher(true)?;
        Ok(AddedVocab { tokens, raw, normalized, normalizer, decoder })
    }

    /// `tokenizers`' `AddedVocabulary::extract_and_normalize` followed by the model:
    /// non-normalized added tokens are cut out of `text`, the rest is normalized, normalized
    /// added tokens are cut out of that, and what remains goes to `encode_text`.
    pub(crate) fn encode(
        &self,
        text: &str,
        out: &mut Vec<u32>,
        encode_text: &mut EncodeText<'_>,
    ) -> Result<(), TokenizerError> {
        self.split(text, self.raw.as_ref(), out, &mut |piece, first, out| {
            let normalized = self.normalize(piece);
            self.split(&normalized, self.normalized.as_ref(), out, &mut |t, f, out| encode_text(t, first && f, out))
        })
    }

    /// The decoder of a SentencePiece-style tokenizer.json.
    pub(crate) fn decoder(&self) -> Option<&Decoder> {
        self.decoder.as_ref()
    }

    /// The id of the added token with this text (`tokenizers`' `token_to_id` looks here
    /// before the model's vocabulary).
    pub(crate) fn token_id(&self, text: &str) -> Option<u32> {
        self.tokens.iter().find(|t| t.raw == text).map(|t| t.id)
    }

    fn normalize(&self, text: &str) -> String {
        normalize(&self.normalizer, text)
    }

    /// `AddedVocabulary::find_matches`: leftmost-longest matches, widened by `lstrip` /
    /// `rstrip` over whitespace, skipped when `single_word` and inside a word.
    fn split(
        &self,
        text: &str,
        matcher: Option<&(AhoCorasick, Vec<usize>)>,
        out: &mut Vec<u32>,
        rest: &mut EncodeText<'_>,
    ) -> Result<(), TokenizerError> {
        let Some((ac, idx)) = matcher else {
            return if text.is_empty() { Ok(()) } else { rest(text, true, out) };
        };
        let mut offset = 0;
        for m in ac.find_iter(text) {
            let tok = &self.tokens[idx[m.pattern().as_usize()]];
            let (mut start, mut stop) = (m.start(), m.end());
            if tok.single_word {
                let word_before = text[..start].chars().next_back().is_some_and(is_word_char);
                let word_after = text[stop..].chars().next().is_some_and(is_word_char);
                if word_before || word_after {
                    continue;
                }
            }
            if tok.lstrip {
                start = text[..start].trim_end().len().max(offset);
            }
            if tok.rstrip {
                stop = text.len() - text[stop..].trim_start().len();
            }
            if offset < start {
                rest(&text[offset..start], offset == 0, out)?;
            }
            out.push(tok.id);
            offset = stop;
        }
        if offset < text.len() {
            rest(&text[offset..], offset == 0, out)?;
        }
        Ok(())
    }
}

/// Applies the normalizer.
fn normalize(normalizer: &[Normalization], text: &str) -> String {
    let mut s = text.to_string();
    for n in normalizer {
        s = match n {
            Normalization::Nfc => s.nfc().collect(),
            Normalization::Nfd => s.nfd().collect(),
            Normalization::Nfkc => s.nfkc().collect(),
            Normalization::Nfkd => s.nfkd().collect(),
            Normalization::Replace(from, to) => s.replace(from.as_str(), to),
            Normalization::Prepend(p) if !s.is_empty() => format!("{p}{s}"),
            Normalization::Prepend(_) => s,
        };
    }
    s
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The files of a Hugging Face tokenizer directory.
struct Files {
    tokenizer_json: PathBuf,
    tokenizer_config: Option<PathBuf>,
    generation_config: Option<PathBuf>,
    config: Option<PathBuf>,
    chat_template: Option<PathBuf>,
}

/// Loads `dir/tokenizer.json` and the configuration files beside it.
pub(crate) fn load_dir(dir: &Path) -> Result<Tokenizer, TokenizerError> {
    let opt = |name: &str| Some(dir.join(name)).filter(|p| p.is_file());
    load(&Files {
        tokenizer_json: dir.join("tokenizer.json"),
        tokenizer_config: opt("tokenizer_config.json"),
        generation_config: opt("generation_config.json"),
        config: opt("config.json"),
        chat_template: opt("chat_template.jinja"),
    })
}

/// Loads one tokenizer.json, with an optional tokenizer_config.json.
pub(crate) fn load_json(path: &Path, tokenizer_config: Option<&Path>) -> Result<Tokenizer, TokenizerError> {
    load(&Files {
        tokenizer_json: path.to_path_buf(),
        tokenizer_config: tokenizer_config.map(Path::to_path_buf),
        generation_config: None,
        config: None,
        chat_template: None,
    })
}

/// tokenizer.json's `added_tokens`.
fn added_tokens(root: &Obj<'_>) -> Result<Vec<AddedToken>, TokenizerError> {
    let Some(list) = root.get("added_tokens") else {
        return Ok(Vec::new());
    };
    let Value::Array(list) = list else {
        return Err(root.err("added_tokens", "expected an array"));
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, v) in list.iter().enumerate() {
        let t = Obj::new(root.path, &format!("added_tokens[{i}]"), v)?;
        let id = id_of(t.req("id")?).ok_or_else(|| t.err("id", "expected a token id"))?;
        let content = t.str("content")?.ok_or_else(|| t.err("content", "missing"))?.to_string();
        let special = t.bool("special")?.unwrap_or(false);
        out.push(AddedToken {
            id,
            raw: content.clone(),
            content,
            special,
            normalized: t.bool("normalized")?.unwrap_or(!special),
            lstrip: t.bool("lstrip")?.unwrap_or(false),
            rstrip: t.bool("rstrip")?.unwrap_or(false),
            single_word: t.bool("single_word")?.unwrap_or(false),
        });
    }
    Ok(out)
}

fn normalizer(root: &Obj<'_>) -> Result<Vec<Normalization>, TokenizerError> {
    fn walk(o: &Obj<'_>, out: &mut Vec<Normalization>) -> Result<(), TokenizerError> {
        let n = match o.kind()? {
            "NFC" => Normalization::Nfc,
            "NFD" => Normalization::Nfd,
            "NFKC" => Normalization::Nfkc,
            "NFKD" => Normalization::Nfkd,
            "Replace" => {
                let pattern = o.obj("pattern")?;
                let Some(from) = pattern.str("String")? else {
                    return Err(unsupported(o.path, "Replace normalizer with a Regex pattern"));
                };
                let to = o.str("content")?.ok_or_else(|| o.err("content", "missing"))?;
                Normalization::Replace(from.to_string(), to.to_string())
            }
            "Prepend" => {
                Normalization::Prepend(o.str("prepend")?.ok_or_else(|| o.err("prepend", "missing"))?.to_string())
            }
            "Sequence" => {
                for (i, v) in o.array("normalizers")?.iter().enumerate() {
                    walk(&Obj::new(o.path, &format!("{}.normalizers[{i}]", o.at), v)?, out)?;
                }
                return Ok(());
            }
            other => return Err(unsupported(o.path, format!("normalizer '{other}'"))),
        };
        out.push(n);
        Ok(())
    }
    let mut out = Vec::new();
    if root.get("normalizer").is_some() {
        walk(&root.obj("normalizer")?, &mut out)?;
    }
    Ok(out)
}

fn pre_tokenizer(root: &Obj<'_>) -> Result<Pre, TokenizerError> {
    let path = root.path;
    if root.get("pre_tokenizer").is_none() {
        return Ok(Pre::Spm(None));
    }
    let top = root.obj("pre_tokenizer")?;
    if top.kind()? == "Metaspace" {
        return Ok(Pre::Spm(Some(Metaspace::parse(&top)?)));
    }
    let mut steps = Vec::new();
    if top.kind()? == "Sequence" {
        for (i, v) in top.array("pretokenizers")?.iter().enumerate() {
            steps.push(Obj::new(path, &format!("pre_tokenizer.pretokenizers[{i}]"), v)?);
        }
    } else {
        steps.push(top);
    }
    let mut pre = PreTokenizer { patterns: Vec::new(), add_prefix_space: false };
    let mut byte_level = false;
    for step in &steps {
        if byte_level {
            return Err(unsupported(path, format!("pre-tokenizer '{}' after ByteLevel", step.kind()?)));
        }
        match step.kind()? {
            "Split" => {
                let behavior = step.str("behavior")?.unwrap_or("");
                if behavior != "Isolated" {
                    return Err(unsupported(path, format!("Split behavior '{behavior}' (only 'Isolated')")));
                }
                if step.bool("invert")?.unwrap_or(false) {
                    return Err(unsupported(path, "Split with invert = true"));
                }
                let pattern = step.obj("pattern")?;
                let regex = if let Some(r) = pattern.str("Regex")? {
                    r.to_string()
                } else if let Some(s) = pattern.str("String")? {
                    fancy_regex::escape(s).into_owned()
                } else {
                    return Err(pattern.err("Regex", "missing (expected Regex or String)"));
                };
                pre.patterns.push(regex);
            }
            "ByteLevel" => {
                byte_level = true;
                pre.add_prefix_space = step.bool("add_prefix_space")?.unwrap_or(true);
                if pre.add_prefix_space && !pre.patterns.is_empty() {
                    return Err(unsupported(path, "ByteLevel add_prefix_space after a Split"));
                }
                if step.bool("use_regex")?.unwrap_or(true) {
                    pre.patterns.push(split::GPT2_HF.to_string());
                }
            }
            other => return Err(unsupported(path, format!("pre-tokenizer '{other}'"))),
        }
    }
    if !byte_level {
        return Err(unsupported(path, "pre-tokenizer without ByteLevel or Metaspace"));
    }
    Ok(Pre::ByteLevel(pre))
}

/// tokenizer.json's BPE `model`: vocabulary (text, id), merges in rank order, flags.
struct BpeModel {
    vocab: Vec<(String, u32)>,
    merges: Vec<(String, String)>,
    ignore_merges: bool,
    byte_fallback: bool,
    unk_token: Option<String>,
    fuse_unk: bool,
}

fn bpe_model(root: &Obj<'_>) -> Result<BpeModel, TokenizerError> {
    let path = root.path;
    let model = root.obj("model")?;
    let kind = model.str("type")?.unwrap_or("BPE");
    if kind != "BPE" {
        return Err(unsupported(path, format!("model type '{kind}' (only 'BPE')")));
    }
    if model.get("dropout").is_some_and(|d| d.as_f64() != Some(0.0)) {
        return Err(unsupported(path, "BPE dropout"));
    }
    for key in ["continuing_subword_prefix", "end_of_word_suffix"] {
        if model.str(key)?.is_some_and(|s| !s.is_empty()) {
            return Err(unsupported(path, format!("BPE {key}")));
        }
    }
    let vocab_obj = model.obj("vocab")?;
    let mut vocab = Vec::with_capacity(vocab_obj.map.len());
    for (text, id) in vocab_obj.map {
        let id = id_of(id).ok_or_else(|| vocab_obj.err(text, "expected a token id"))?;
        vocab.push((text.clone(), id));
    }
    let list = model.array("merges")?;
    let mut merges = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let pair = match m {
            Value::String(s) => {
                let mut parts = s.split(' ');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(l), Some(r), None) => Some((l.to_string(), r.to_string())),
                    _ => None,
                }
            }
            Value::Array(a) => match a.as_slice() {
                [Value::String(l), Value::String(r)] => Some((l.clone(), r.clone())),
                _ => None,
            },
            _ => None,
        };
        merges.push(pair.ok_or_else(|| {
            invalid(path, format!("model.merges[{i}]: expected \"left right\" or [\"left\", \"right\"]"))
        })?);
    }
    Ok(BpeModel {
        vocab,
        merges,
        ignore_merges: model.bool("ignore_merges")?.unwrap_or(false),
        byte_fallback: model.bool("byte_fallback")?.unwrap_or(false),
        unk_token: model.str("unk_token")?.map(str::to_string),
        fuse_unk: model.bool("fuse_unk")?.unwrap_or(false),
    })
}

/// convert_hf_to_gguf.py's `does_token_look_special`: added tokens that are not marked
/// special but become control tokens in a GGUF file.
fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<\u{ff5c}") && t.ends_with("\u{ff5c}>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

/// A token named in a config: a string, or an added-token object with `content`.
fn token_text(v: Option<&Value>) -> Option<&str> {
    match v? {
        Value::String(s) => Some(s),
        Value::Object(o) => o.get("content")?.as_str(),
        _ => None,
    }
}

/// `eos_token_id` / `bos_token_id` of a config: an id or a list of ids.
fn config_ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Array(a)) => a.iter().filter_map(id_of).collect(),
        Some(v) => id_of(v).into_iter().collect(),
        None => Vec::new(),
    }
}

/// The optional JSON object in `path` (configuration files are optional).
fn read_config(path: Option<&PathBuf>) -> Result<Option<(PathBuf, Value)>, TokenizerError> {
    let Some(path) = path else { return Ok(None) };
    let v = read_json(path)?;
    Obj::new(path, "", &v)?;
    Ok(Some((path.clone(), v)))
}

fn load(files: &Files) -> Result<Tokenizer, TokenizerError> {
    let path = files.tokenizer_json.as_path();
    let json = read_json(path)?;
    let root = Obj::new(path, "", &json)?;
    let model = bpe_model(&root)?;
    let added = added_tokens(&root)?;
    let normalizer = normalizer(&root)?;
    let pre = pre_tokenizer(&root)?;
    let mut decoder = None;
    match &pre {
        Pre::ByteLevel(_) => {
            if model.byte_fallback {
                return Err(unsupported(path, "BPE byte_fallback with a ByteLevel pre-tokenizer"));
            }
            if let Some(dec) = root.get("decoder") {
                let kind = Obj::new(path, "decoder", dec)?.kind()?;
                if kind != "ByteLevel" {
                    return Err(unsupported(path, format!("decoder '{kind}' with a ByteLevel pre-tokenizer")));
                }
            }
        }
        Pre::Spm(_) => {
            if root.get("decoder").is_some() {
                decoder = Some(Decoder::parse(&root.obj("decoder")?)?);
            }
        }
    }

    // Added token ids as `tokenizers` assigns them (it only warns when the file says
    // otherwise): the model's id for a text in its vocabulary, else the id of an earlier
    // added token with that text, else the next id after the vocabulary and the added
    // tokens so far.
    let in_vocab: HashMap<&str, u32> = model.vocab.iter().map(|(t, id)| (t.as_str(), *id)).collect();
    // Normalized added tokens are looked for in normalized text and decode to their
    // normalized text, as in `tokenizers`; ids go by the text in the file.
    let mut added = added;
    for t in added.iter_mut().filter(|t| t.normalized) {
        t.content = normalize(&normalizer, &t.content);
    }
    let mut added_ids: HashMap<String, u32> = HashMap::new();
    let mut next = model.vocab.len() as u32;
    for t in &mut added {
        t.id = match in_vocab.get(t.raw.as_str()).or(added_ids.get(&t.raw)) {
            Some(&id) => id,
            None => {
                let id = next;
                next = next.checked_add(1).ok_or_else(|| invalid(path, "too many added tokens"))?;
                id
            }
        };
        added_ids.insert(t.raw.clone(), t.id);
        next = next.max(t.id.saturating_add(1));
    }

    // Texts by id: the model's vocabulary and the added tokens, holes filled the way
    // convert_hf_to_gguf.py fills them.
    let n = model.vocab.iter().map(|(_, id)| *id).chain(added.iter().map(|t| t.id)).max().map_or(0, |m| m as usize + 1);
    if n == 0 || n > u32::MAX as usize {
        return Err(invalid(path, format!("bad vocabulary size {n}")));
    }
    let mut texts: Vec<Option<String>> = vec![None; n];
    for (text, id) in &model.vocab {
        if let Some(prev) = &texts[*id as usize] {
            return Err(invalid(path, format!("model.vocab: id {id} is both {prev:?} and {text:?}")));
        }
        texts[*id as usize] = Some(text.clone());
    }
    let mut attrs: Vec<u32> = texts.iter().map(|t| if t.is_some() { ATTR_NORMAL } else { ATTR_UNUSED }).collect();
    let mut is_added = vec![false; n];
    if matches!(pre, Pre::Spm(_)) {
        // SentencePiece byte tokens decode to their byte (as in a GGUF conversion).
        for (text, id) in &model.vocab {
            if text.len() == 6 && text.starts_with("<0x") && text.ends_with('>') {
                attrs[*id as usize] = ATTR_BYTE;
            }
        }
    }
    for t in &added {
        let i = t.id as usize;
        texts[i] = Some(t.content.clone());
        is_added[i] = true;
        attrs[i] = if t.special || looks_special(&t.content) { ATTR_CONTROL } else { ATTR_USER_DEFINED };
    }
    let texts: Vec<String> = texts
        .into_iter()
        .enumerate()
        .map(|(i, t)| match t {
            Some(t) if !t.is_empty() => t,
            Some(_) => format!("[EMPTY_{i}]"),
            None => format!("[PAD{i}]"),
        })
        .collect();

    // Merges: each half and the result must be in the vocabulary (as `tokenizers`
    // requires); a pair listed twice takes its last rank (as its merge map does).
    let mut last: HashMap<(&str, &str), usize> = HashMap::with_capacity(model.merges.len());
    for (rank, (l, r)) in model.merges.iter().enumerate() {
        for part in [l.clone(), r.clone(), format!("{l}{r}")] {
            if !in_vocab.contains_key(part.as_str()) {
                return Err(invalid(path, format!("model.merges[{rank}]: {part:?} is not in model.vocab")));
            }
        }
        last.insert((l, r), rank);
    }
    let mut merges: Vec<((&str, &str), usize)> = last.into_iter().collect();
    merges.sort_unstable_by_key(|&(_, rank)| rank);

    let (algo, engine, pre_name, rules) = match pre {
        Pre::ByteLevel(pre) => {
            let engine = Bpe::new(
                &pre.patterns.iter().map(String::as_str).collect::<Vec<_>>(),
                model.ignore_merges,
                pre.add_prefix_space,
                model.vocab.iter().map(|(t, id)| (t.as_str(), *id)),
                merges.iter().map(|&(pair, _)| pair),
            )
            .map_err(|e| invalid(path, format!("pre_tokenizer regex: {e}")))?;
            let pre_name = pre_name_for(&pre.patterns, model.ignore_merges).map(str::to_string);
            let mut rules: Vec<String> = pre.patterns.iter().map(|p| split::canonical(p).into_owned()).collect();
            rules.push(format!("add_prefix_space={}", pre.add_prefix_space));
            (Algo::Bpe, Engine::Bpe(engine), pre_name, rules)
        }
        Pre::Spm(metaspace) => {
            let unk = match &model.unk_token {
                None => None,
                Some(t) => Some(
                    in_vocab
                        .get(t.as_str())
                        .copied()
                        .ok_or_else(|| invalid(path, format!("model.unk_token: {t:?} is not in model.vocab")))?,
                ),
            };
            let id = |t: &str| in_vocab[t];
            let engine = HfBpe::new(
                model.vocab.iter().map(|(t, id)| (t.as_str(), *id)),
                merges.iter().map(|&((l, r), _)| (id(l), id(r), id(&format!("{l}{r}")))),
                HfBpeOptions {
                    byte_fallback: model.byte_fallback,
                    unk,
                    fuse_unk: model.fuse_unk,
                    ignore_merges: model.ignore_merges,
                    metaspace,
                },
            );
            let rules = vec![engine.describe(), format!("decoder={decoder:?}")];
            (Algo::Spm, Engine::HfBpe(engine), None, rules)
        }
    };

    // Configuration: special tokens, BOS rule, chat templates, architecture.
    let tcfg = read_config(files.tokenizer_config.as_ref())?;
    let gcfg = read_config(files.generation_config.as_ref())?;
    let mcfg = read_config(files.config.as_ref())?;
    let field = |cfg: &Option<(PathBuf, Value)>, key: &str| cfg.as_ref().and_then(|(_, v)| v.get(key).cloned());
    let lookup = |text: &str| -> Option<u32> { added_ids.get(text).or(in_vocab.get(text)).copied() };
    let named_id = |key: &str| -> Result<Option<u32>, TokenizerError> {
        let Some((p, v)) = &tcfg else { return Ok(None) };
        match token_text(v.get(key)) {
            None => Ok(None),
            Some(t) => lookup(t).map(Some).ok_or_else(|| invalid(p, format!("{key}: {t:?} is not a token"))),
        }
    };
    let in_range = |id: &u32| (*id as usize) < n;
    let first_id = |key: &str| {
        [&gcfg, &mcfg].into_iter().find_map(|c| config_ids(field(c, key).as_ref()).into_iter().find(in_range))
    };
    let post_bos = post_processor_bos(&json).and_then(lookup);
    let bos = named_id("bos_token")?.or_else(|| first_id("bos_token_id")).or(post_bos);
    let eos = named_id("eos_token")?.or_else(|| first_id("eos_token_id"));
    let mut ids = SpecialIds { bos, eos, ..SpecialIds::default() };
    let mut eog = llama_cpp_rules(&texts, &mut attrs, &mut ids, &|id| is_added[id]);
    eog.extend(config_ids(field(&gcfg, "eos_token_id").as_ref()).into_iter().filter(in_range));
    eog.sort_unstable();
    eog.dedup();

    let add_bos = match field(&tcfg, "add_bos_token") {
        Some(Value::Bool(b)) => b,
        _ => post_bos.is_some() && post_bos == bos,
    };
    let templates = templates(files, &tcfg)?;
    let architecture = field(&mcfg, "model_type").and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();

    let fingerprint =
        fingerprint(&texts, &attrs, &rules, &model, &merges, &added, &normalizer, bos, eos, add_bos, &eog);
    let partition = AddedVocab::new(added, normalizer, decoder)
        .map_err(|e| invalid(path, e))
        .map(|a| Partition::Hf(Box::new(a)))?;
    Ok(Tokenizer::assemble(Parts {
        algo,
        engine,
        texts,
        attrs,
        partition,
        bos,
        eos,
        eog,
        add_bos,
        add_space_prefix: false,
        model: if algo == Algo::Spm { "llama" } else { "gpt2" }.to_string(),
        pre: pre_name,
        architecture,
        templates,
        fingerprint,
    }))
}

/// The special token the post-processor puts first (`TemplateProcessing`, alone or in a
/// `Sequence`, whose `single` template starts with a `SpecialToken`): the BOS rule gguf-py
/// reads from tokenizer.json when tokenizer_config.json has no `add_bos_token`.
fn post_processor_bos(root: &Value) -> Option<&str> {
    let pp = root.get("post_processor")?;
    fn first(pp: &Value) -> Option<&str> {
        if pp.get("type")?.as_str()? != "TemplateProcessing" {
            return None;
        }
        pp.get("single")?.as_array()?.first()?.get("SpecialToken")?.get("id")?.as_str()
    }
    match pp.get("type")?.as_str()? {
        "Sequence" => pp.get("processors")?.as_array()?.iter().find_map(first),
        _ => first(pp),
    }
}

/// The chat templates: `chat_template.jinja`, else tokenizer_config's `chat_template` (a
/// string, or a list of `{name, template}` whose `default` entry is the default).
fn templates(files: &Files, tcfg: &Option<(PathBuf, Value)>) -> Result<Templates, TokenizerError> {
    let mut t = Templates::default();
    if let Some((p, v)) = tcfg {
        match v.get("chat_template") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => t.default = Some(s.clone()),
            Some(Value::Array(list)) => {
                for (i, item) in list.iter().enumerate() {
                    let o = Obj::new(p, &format!("chat_template[{i}]"), item)?;
                    let name = o.str("name")?.ok_or_else(|| o.err("name", "missing"))?;
                    let src = o.str("template")?.ok_or_else(|| o.err("template", "missing"))?;
                    if name == "default" {
                        t.default = Some(src.to_string());
                    } else {
                        t.named.push((name.to_string(), src.to_string()));
                    }
                }
            }
            Some(_) => return Err(invalid(p, "chat_template: expected a string or a list of {name, template}")),
        }
        let text = |key: &str| token_text(v.get(key)).unwrap_or("").to_string();
        t.special_texts = Some((text("bos_token"), text("eos_token")));
    }
    if let Some(p) = &files.chat_template {
        t.default = Some(read(p)?);
    }
    Ok(t)
}

/// The fingerprint of a tokenizer.json tokenizer: sha256 over everything that determines
/// its tokenization, domain-separated from the GGUF fingerprint (the rules differ: the
/// normalizer runs and only added tokens are cut out, so the same vocabulary loaded from
/// its GGUF conversion has another fingerprint).
#[allow(clippy::too_many_arguments)]
fn fingerprint(
    texts: &[String],
    attrs: &[u32],
    rules: &[String],
    model: &BpeModel,
    merges: &[((&str, &str), usize)],
    added: &[AddedToken],
    normalizer: &[Normalization],
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    eog: &[u32],
) -> String {
    let mut h = Sha256::new();
    let mut put = |b: &[u8]| {
        h.update((b.len() as u64).to_le_bytes());
        h.update(b);
    };
    put(b"lem-tokenizer fingerprint v1 hf tokenizer.json");
    put(&(texts.len() as u64).to_le_bytes());
    for (t, a) in texts.iter().zip(attrs) {
        put(t.as_bytes());
        put(&a.to_le_bytes());
    }
    put(&(merges.len() as u64).to_le_bytes());
    for ((l, r), _) in merges {
        put(l.as_bytes());
        put(r.as_bytes());
    }
    for r in rules {
        put(r.as_bytes());
    }
    put(&[u8::from(model.ignore_merges), u8::from(add_bos)]);
    for n in normalizer {
        put(format!("{n:?}").as_bytes());
    }
    for t in added {
        put(&t.id.to_le_bytes());
        put(&[t.special, t.normalized, t.lstrip, t.rstrip, t.single_word].map(u8::from));
    }
    let opt = |v: Option<u32>| v.map_or(-1i64, i64::from).to_le_bytes();
    put(&opt(bos));
    put(&opt(eos));
    for id in eog {
        put(&id.to_le_bytes());
    }
    hex::encode(h.finalize())
}
