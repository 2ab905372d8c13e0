//! `config.json`: typed reads of its values, with the tolerance real checkpoints need
//! (integers written as `4096.0`, `null` for "not set", nested `text_config`,
//! `rope_parameters` of newer transformers).

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::arch::Arch;
use crate::error::ModelError;

/// The parsed `config.json` of a directory.
#[derive(Debug, Clone)]
pub(crate) struct HfConfig {
    /// The file (for messages).
    pub path: PathBuf,
    /// Its top-level object.
    pub map: Map<String, Value>,
}

/// Stored dtypes (`torch_dtype` / `dtype`) lem loads.
const DTYPES: &[&str] = &["float32", "float16", "bfloat16"];

impl HfConfig {
    /// Reads and parses `dir/config.json`.
    pub(crate) fn read(dir: &Path) -> Result<HfConfig, ModelError> {
        let path = dir.join("config.json");
        if !path.is_file() {
            return Err(ModelError::HfDir {
                path: dir.to_owned(),
                reason: "no config.json (a Hugging Face model directory needs one)".into(),
            });
        }
        let text = std::fs::read_to_string(&path).map_err(|source| ModelError::Io { path: path.clone(), source })?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::HfDir { path: path.clone(), reason: format!("invalid JSON: {e}") })?;
        match value {
            Value::Object(map) => Ok(HfConfig { path, map }),
            _ => Err(ModelError::HfDir { path, reason: "not a JSON object".into() }),
        }
    }

    /// An error about this file.
    pub(crate) fn err(&self, reason: impl Into<String>) -> ModelError {
        ModelError::HfDir { path: self.path.clone(), reason: reason.into() }
    }

    /// A value, `None` when absent or `null`.
    pub(crate) fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// A boolean, `None` when absent or `null`.
    pub(crate) fn bool(&self, key: &str) -> Result<Option<bool>, ModelError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(self.err(format!("'{key}' should be true or false, found {other}"))),
        }
    }

    /// A string, `None` when absent or `null`.
    pub(crate) fn str(&self, key: &str) -> Result<Option<&str>, ModelError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.err(format!("'{key}' should be a string, found {other}"))),
        }
    }

    /// The architecture `model_type` names (`architectures[0]` only completes messages).
    pub(crate) fn arch(&self) -> Result<Arch, ModelError> {
        let class = self
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(Value::as_str)
            .map(|c| format!(" (architectures: {c})"))
            .unwrap_or_default();
        match self.str("model_type")? {
            Some(t) => Arch::from_hf(t),
            None => Err(self.err(format!("no 'model_type'{class}"))),
        }
    }

    /// Refuses stored types and quantisation schemes lem cannot load.
    pub(crate) fn check_dtype(&self) -> Result<(), ModelError> {
        for key in ["torch_dtype", "dtype"] {
            if let Some(v) = self.get(key) {
                let s = v.as_str().unwrap_or_default();
                if !DTYPES.contains(&s) {
                    return Err(
                        self.err(format!("{key} {v} is not supported (lem loads {} checkpoints)", DTYPES.join(", ")))
                    );
                }
            }
        }
        if let Some(q) = self.get("quantization_config") {
            let method = q.get("quant_method").and_then(Value::as_str).unwrap_or("unknown");
            return Err(self.err(format!(
                "quantization_config ({method}) is not supported: lem loads float32, float16 and bfloat16 checkpoints (quantize with --dtype instead)"
            )));
        }
        Ok(())
    }
}

/// A JSON value as a non-negative integer (`4096` or `4096.0`).
pub(crate) fn as_uint(v: &Value) -> Result<u64, String> {
    if let Some(n) = v.as_u64() {
        return Ok(n);
    }
    match v.as_f64() {
        Some(f) if f >= 0.0 && f.fract() == 0.0 && f < 2f64.powi(63) => Ok(f as u64),
        _ => Err(format!("expected a non-negative integer, found {v}")),
    }
}

/// A JSON value as a number.
pub(crate) fn as_f64(v: &Value) -> Result<f64, String> {
    v.as_f64().ok_or_else(|| format!("expected a number, found {v}"))
}

/// Whether `tie_word_embeddings` defaults to true for the architecture's transformers
/// config class when `config.json` does not state it.
pub(crate) fn ties_by_default(arch: Arch) -> bool {
    match arch {
        // LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config, Phi3Config: false.
        // Qwen3MoeConfig, MixtralConfig (model_type mixtral -> Arch::Llama): false.
        // Qwen2MoeConfig, GptOssConfig: false.
        Arch::Llama | Arch::Qwen2 | Arch::Qwen3 | Arch::Qwen3Moe | Arch::Phi3 | Arch::Qwen2Moe | Arch::GptOss => false,
        // Gemma2Config, Gemma3TextConfig, SmolLM3Config: true.
        Arch::Gemma2 | Arch::Gemma3 | Arch::SmolLm3 => true,
        // No Hugging Face model_type maps to Gemma 4 yet.
        Arch::Gemma4 => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_may_be_written_as_floats() {
        assert_eq!(as_uint(&serde_json::json!(4096)), Ok(4096));
        assert_eq!(as_uint(&serde_json::json!(4096.0)), Ok(4096));
        assert!(as_uint(&serde_json::json!(-1)).is_err());
        assert!(as_uint(&serde_json::json!(1.5)).is_err());
        assert!(as_uint(&serde_json::json!("8")).is_err());
    }
}
