//! Architectures: each file reads its hyper-parameters and wires shared layers.

mod gemma3;
mod llama;

use crate::error::ModelError;
use crate::gguf::GgufFile;
use crate::model::Model;

/// Architecture names (`general.architecture`) lem can run.
pub const SUPPORTED: &[&str] = &["llama", "gemma3"];

/// Builds the model the file's `general.architecture` names.
pub(crate) fn load(g: &mut GgufFile) -> Result<Model, ModelError> {
    let arch = g.str("general.architecture")?.to_owned();
    match arch.as_str() {
        "llama" => llama::load(g),
        "gemma3" => gemma3::load(g),
        _ => Err(ModelError::UnknownArchitecture(arch)),
    }
}
