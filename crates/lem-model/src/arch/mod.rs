//! Architectures: the one registry of supported names, and one small file per
//! architecture that states only what differs ([`decoder::Recipe`]); the shared decoder
//! skeleton in `decoder.rs` builds every one of them.

mod decoder;
mod gemma2;
mod gemma3;
mod gemma4;
mod gpt_oss;
mod llama;
mod phi3;
mod qwen2;
mod qwen2moe;
mod qwen3;
mod qwen3moe;
mod smollm3;

use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::model::Model;
use crate::names::HfNaming;
use crate::weights::{LoadOptions, WeightSource};

/// An architecture lem implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    /// Llama 1/2/3.x, Mistral, SmolLM/SmolLM2, Mixtral (GGUF `llama`; routed experts
    /// where the source has expert tensors).
    Llama,
    /// Qwen 2 / 2.5 (Q/K/V biases).
    Qwen2,
    /// Qwen 3 (per-head Q/K norms).
    Qwen3,
    /// Qwen 3 MoE (Qwen 3 attention, routed experts).
    Qwen3Moe,
    /// Phi-3 / Phi-3.5 (fused QKV and gate/up, LongRoPE).
    Phi3,
    /// Gemma 2 (soft-capping, alternating sliding window, pre and post norms).
    Gemma2,
    /// Gemma 3 (text).
    Gemma3,
    /// Gemma 4 (text; GGUF only): per-layer head sizes, shared-KV layers, per-layer token
    /// embeddings (E2B/E4B), a dense MLP beside routed experts (26B-A4B).
    Gemma4,
    /// SmolLM3 (no rotary on every fourth layer).
    SmolLm3,
    /// Qwen 2 MoE (Qwen 2 attention, routed experts and a sigmoid-gated shared expert).
    Qwen2Moe,
    /// gpt-oss (attention sinks, alternating sliding window, biases everywhere,
    /// softmax-after-top-k routing, clamped SwiGLU experts).
    GptOss,
}

/// How a Hugging Face checkpoint of an architecture differs from its GGUF conversion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HfConventions {
    /// Which name table applies.
    pub naming: HfNaming,
    /// llama.cpp's converter permutes Q/K rows for GGML's adjacent-pair rotary; lem does
    /// the same at load so both sources build identical layers.
    pub permute_qk: bool,
    /// Norm weights are stored as `w` for a `1 + w` scale (Gemma); GGUF stores `1 + w`.
    pub norm_plus_one: bool,
}

/// One row of the registry.
struct Entry {
    arch: Arch,
    /// `general.architecture`.
    gguf: &'static str,
    /// Hugging Face `model_type` values.
    hf: &'static [&'static str],
    conventions: HfConventions,
    /// Rotary base when the source states none.
    rope_base: f32,
}

const LLAMA_HF: HfConventions = HfConventions { naming: HfNaming::Llama, permute_qk: true, norm_plus_one: false };
const PLAIN_HF: HfConventions = HfConventions { naming: HfNaming::Llama, permute_qk: false, norm_plus_one: false };
const MIXTRAL_HF: HfConventions = HfConventions { naming: HfNaming::Mixtral, permute_qk: true, norm_plus_one: false };
const GPT_OSS_HF: HfConventions = HfConventions { naming: HfNaming::GptOss, permute_qk: false, norm_plus_one: false };
const GEMMA_HF: HfConventions = HfConventions { naming: HfNaming::Gemma, permute_qk: false, norm_plus_one: true };

/// The registry: every supported architecture, its names in both formats. An
/// architecture's first row gives its conventions; a later row of the same architecture
/// names Hugging Face `model_type`s with other conventions (Mixtral's naming).
const REGISTRY: &[Entry] = &[
    Entry { arch: Arch::Llama, gguf: "llama", hf: &["llama", "mistral"], conventions: LLAMA_HF, rope_base: 10_000.0 },
    Entry { arch: Arch::Llama, gguf: "llama", hf: &["mixtral"], conventions: MIXTRAL_HF, rope_base: 1_000_000.0 },
    Entry { arch: Arch::Qwen2, gguf: "qwen2", hf: &["qwen2"], conventions: PLAIN_HF, rope_base: 10_000.0 },
    Entry { arch: Arch::Qwen3, gguf: "qwen3", hf: &["qwen3"], conventions: PLAIN_HF, rope_base: 10_000.0 },
    Entry { arch: Arch::Qwen3Moe, gguf: "qwen3moe", hf: &["qwen3_moe"], conventions: PLAIN_HF, rope_base: 10_000.0 },
    Entry { arch: Arch::Phi3, gguf: "phi3", hf: &["phi3"], conventions: PLAIN_HF, rope_base: 10_000.0 },
    Entry { arch: Arch::Gemma2, gguf: "gemma2", hf: &["gemma2"], conventions: GEMMA_HF, rope_base: 10_000.0 },
    Entry { arch: Arch::Gemma3, gguf: "gemma3", hf: &["gemma3_text"], conventions: GEMMA_HF, rope_base: 1_000_000.0 },
    Entry { arch: Arch::SmolLm3, gguf: "smollm3", hf: &["smollm3"], conventions: LLAMA_HF, rope_base: 2_000_000.0 },
    Entry { arch: Arch::Qwen2Moe, gguf: "qwen2moe", hf: &["qwen2_moe"], conventions: PLAIN_HF, rope_base: 10_000.0 },
    Entry { arch: Arch::GptOss, gguf: "gpt-oss", hf: &["gpt_oss"], conventions: GPT_OSS_HF, rope_base: 150_000.0 },
    // Gemma 4 stores its norms as is (no `1 + w` offset); no Hugging Face loading yet.
    Entry { arch: Arch::Gemma4, gguf: "gemma4", hf: &[], conventions: PLAIN_HF, rope_base: 1_000_000.0 },
];

/// Architecture names (`general.architecture`) lem can run.
pub const SUPPORTED: &[&str] =
    &["llama", "qwen2", "qwen3", "qwen3moe", "phi3", "gemma2", "gemma3", "smollm3", "qwen2moe", "gpt-oss", "gemma4"];

/// Hugging Face `model_type`s lem can run.
pub const SUPPORTED_HF: &[&str] = &[
    "llama",
    "mistral",
    "mixtral",
    "qwen2",
    "qwen3",
    "qwen3_moe",
    "phi3",
    "gemma2",
    "gemma3_text",
    "smollm3",
    "qwen2_moe",
    "gpt_oss",
];

impl Arch {
    fn entry(self) -> &'static Entry {
        REGISTRY.iter().find(|e| e.arch == self).expect("every architecture is registered")
    }

    /// The architecture a GGUF `general.architecture` names.
    pub fn from_gguf(name: &str) -> Result<Arch, ModelError> {
        REGISTRY
            .iter()
            .find(|e| e.gguf == name)
            .map(|e| e.arch)
            .ok_or_else(|| ModelError::UnknownArchitecture(name.to_owned()))
    }

    /// The architecture a Hugging Face `model_type` names.
    pub fn from_hf(model_type: &str) -> Result<Arch, ModelError> {
        REGISTRY
            .iter()
            .find(|e| e.hf.contains(&model_type))
            .map(|e| e.arch)
            .ok_or_else(|| ModelError::UnknownModelType(model_type.to_owned()))
    }

    /// The conventions of checkpoints of Hugging Face `model_type` (`None`: unknown).
    pub fn hf_conventions_of(model_type: &str) -> Option<HfConventions> {
        REGISTRY.iter().find(|e| e.hf.contains(&model_type)).map(|e| e.conventions)
    }

    /// The GGUF name (also lem's name for the architecture).
    pub fn name(self) -> &'static str {
        self.entry().gguf
    }

    /// How its Hugging Face checkpoints are laid out.
    pub fn hf_conventions(self) -> HfConventions {
        self.entry().conventions
    }

    /// Rotary base when the source states none.
    pub fn default_rope_base(self) -> f32 {
        self.entry().rope_base
    }
}

/// Builds the model of the source's architecture.
pub(crate) fn load(src: &mut dyn WeightSource, opts: &LoadOptions) -> Result<Model, ModelError> {
    let mut cfg = ModelConfig::read(src)?;
    let recipe = match cfg.arch {
        Arch::Llama => llama::recipe(&mut cfg),
        Arch::Qwen2 => qwen2::recipe(&mut cfg),
        Arch::Qwen3 => qwen3::recipe(&mut cfg),
        Arch::Qwen3Moe => qwen3moe::recipe(&mut cfg),
        Arch::Phi3 => phi3::recipe(&mut cfg),
        Arch::Gemma2 => gemma2::recipe(&mut cfg),
        Arch::Gemma3 => gemma3::recipe(&mut cfg),
        Arch::SmolLm3 => smollm3::recipe(&mut cfg),
        Arch::Qwen2Moe => qwen2moe::recipe(&mut cfg),
        Arch::GptOss => gpt_oss::recipe(&mut cfg),
        Arch::Gemma4 => gemma4::recipe(&mut cfg, src)?,
    };
    decoder::build(src, cfg, recipe, opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_and_supported_lists_agree() {
        let mut gguf: Vec<&str> = REGISTRY.iter().map(|e| e.gguf).collect();
        gguf.dedup();
        assert_eq!(gguf, SUPPORTED);
        let hf: Vec<&str> = REGISTRY.iter().flat_map(|e| e.hf.iter().copied()).collect();
        assert_eq!(hf, SUPPORTED_HF);
        for e in REGISTRY {
            assert_eq!(Arch::from_gguf(e.gguf).unwrap(), e.arch);
            for t in e.hf {
                assert_eq!(Arch::from_hf(t).unwrap(), e.arch);
                assert_eq!(Arch::hf_conventions_of(t).unwrap(), e.conventions);
            }
        }
        assert!(matches!(Arch::from_gguf("mamba"), Err(ModelError::UnknownArchitecture(_))));
        assert!(matches!(Arch::from_hf("mamba"), Err(ModelError::UnknownModelType(_))));
    }
}
