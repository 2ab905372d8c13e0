//! Reading tokenizer.json and its configuration files: typed access to JSON objects with
//! errors that name the file and the field.

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::TokenizerError;

pub(crate) fn invalid(path: &Path, reason: impl Into<String>) -> TokenizerError {
    TokenizerError::InvalidHf { path: path.to_path_buf(), reason: reason.into() }
}

pub(crate) fn unsupported(path: &Path, what: impl Into<String>) -> TokenizerError {
    TokenizerError::UnsupportedHf { path: path.to_path_buf(), what: what.into() }
}

pub(crate) fn read(path: &Path) -> Result<String, TokenizerError> {
    std::fs::read_to_string(path).map_err(|source| TokenizerError::Io { path: path.to_path_buf(), source })
}

pub(crate) fn read_json(path: &Path) -> Result<Value, TokenizerError> {
    serde_json::from_str(&read(path)?).map_err(|e| invalid(path, format!("not valid JSON: {e}")))
}

/// Typed access to a JSON object, with errors that name the file and the field.
pub(crate) struct Obj<'a> {
    pub(crate) path: &'a Path,
    pub(crate) at: String,
    pub(crate) map: &'a Map<String, Value>,
}

impl<'a> Obj<'a> {
    pub(crate) fn new(path: &'a Path, at: &str, v: &'a Value) -> Result<Obj<'a>, TokenizerError> {
        match v {
            Value::Object(map) => Ok(Obj { path, at: at.to_string(), map }),
            _ => Err(invalid(path, format!("{}: expected an object", display_at(at)))),
        }
    }

    pub(crate) fn field(&self, key: &str) -> String {
        if self.at.is_empty() { key.to_string() } else { format!("{}.{key}", self.at) }
    }

    pub(crate) fn err(&self, key: &str, what: &str) -> TokenizerError {
        invalid(self.path, format!("{}: {what}", self.field(key)))
    }

    /// The value, absent and `null` both being `None`.
    pub(crate) fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub(crate) fn req(&self, key: &str) -> Result<&'a Value, TokenizerError> {
        self.get(key).ok_or_else(|| self.err(key, "missing"))
    }

    pub(crate) fn obj(&self, key: &str) -> Result<Obj<'a>, TokenizerError> {
        Obj::new(self.path, &self.field(key), self.req(key)?)
    }

    pub(crate) fn str(&self, key: &str) -> Result<Option<&'a str>, TokenizerError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(self.err(key, "expected a string")),
        }
    }

    pub(crate) fn bool(&self, key: &str) -> Result<Option<bool>, TokenizerError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(self.err(key, "expected true or false")),
        }
    }

    pub(crate) fn array(&self, key: &str) -> Result<&'a [Value], TokenizerError> {
        match self.req(key)? {
            Value::Array(a) => Ok(a),
            _ => Err(self.err(key, "expected an array")),
        }
    }

    /// The `type` of a tagged component.
    pub(crate) fn kind(&self) -> Result<&'a str, TokenizerError> {
        self.str("type")?.ok_or_else(|| self.err("type", "missing"))
    }
}

pub(crate) fn display_at(at: &str) -> &str {
    if at.is_empty() { "the top level" } else { at }
}

pub(crate) fn id_of(v: &Value) -> Option<u32> {
    v.as_u64().and_then(|v| u32::try_from(v).ok())
}
