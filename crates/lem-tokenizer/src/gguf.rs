//! Loading a tokenizer from GGUF metadata (`tokenizer.ggml.*`), the way llama.cpp's
//! `llama_vocab::impl::load` reads it.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use shimmytok::GGUFValue;

use crate::bpe::{Bpe, BpeError};
use crate::error::TokenizerError;
use crate::special::{
    ATTR_BYTE, ATTR_CONTROL, ATTR_NORMAL, ATTR_UNKNOWN, ATTR_UNUSED, ATTR_USER_DEFINED, SpecialIds, llama_cpp_rules,
};
use crate::spm::Spm;
use crate::tokenizer::{Algo, Engine, Partition, Parts, Templates, Tokenizer};

/// Reads the tokenizer of a GGUF file (only the metadata).
pub(crate) fn load(path: &Path) -> Result<Tokenizer, TokenizerError> {
    check_magic(path)?;
    let gguf = shimmytok::gguf::load_metadata(path).map_err(|e| map_shimmytok_error(path, e))?;
    build(path, gguf.metadata())
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
        return Err(invalid(path, format!("{n} tokens but {} scores and {} token types", scores.len(), types.len())));
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
    let mut ids = SpecialIds {
        bos: key_id("bos_token_id").or(def_bos).filter(|&v| in_range(v)),
        eos: key_id("eos_token_id").or(def_eos).filter(|&v| in_range(v)),
        eot: key_id("eot_token_id"),
        eom: key_id("eom_token_id"),
        fim_pre: key_id("fim_pre_token_id").or(key_id("prefix_token_id")),
        fim_suf: key_id("fim_suf_token_id").or(key_id("suffix_token_id")),
        fim_mid: key_id("fim_mid_token_id").or(key_id("middle_token_id")),
        fim_pad: key_id("fim_pad_token_id"),
        fim_rep: key_id("fim_rep_token_id"),
        fim_sep: key_id("fim_sep_token_id"),
    };
    let eog = llama_cpp_rules(&texts, &mut attrs, &mut ids, &|_| true);
    let SpecialIds { bos, eos, eot, eom, fim_pre, fim_suf, fim_mid, fim_pad, fim_rep, fim_sep } = ids;

    let add_bos = meta.bool("tokenizer.ggml.add_bos_token").unwrap_or(match algo {
        Algo::Spm => true,
        Algo::Bpe => {
            matches!(pre.as_deref(), Some("llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "tekken" | "chameleon"))
        }
    });
    let add_space_prefix = meta.bool("tokenizer.ggml.add_space_prefix").unwrap_or(algo == Algo::Spm);

    let partition =
        Partition::llama_cpp(&texts, &attrs).map_err(|e| invalid(path, format!("special-token matcher: {e}")))?;

    let engine = match algo {
        Algo::Spm => {
            // llama.cpp's SentencePiece default: <unk> is token 0.
            let unk = key_id("unknown_token_id").or(Some(0)).filter(|&v| in_range(v));
            Engine::Spm(Spm::new(&texts, &scores, unk))
        }
        Algo::Bpe => {
            let name = pre.as_deref().unwrap_or("default");
            Engine::Bpe(Bpe::from_pre_name(name, &texts, &merges).map_err(|e| match e {
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
        add_space_prefix,
        model,
        pre,
        architecture,
        templates: Templates { default: chat_template, ..Templates::default() },
        fingerprint,
    }))
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
