//! Tiny random-weight GGUF models, built in the test itself (no downloads, no fixtures),
//! and an independent naive f32 reference forward pass over their weights.
//!
//! The builder writes files with candle's GGUF writer; weights come from a seeded
//! ChaCha RNG, so every build of the same [`Spec`] gives the same bytes. Matrices use the
//! spec's GGML type; norm vectors are always F32, as llama.cpp's converters write them.
//!
//! Also used by `crates/lem-cli/tests` through `#[path]`.
#![allow(dead_code, missing_docs)]

pub mod reference;

use std::io::Cursor;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Which architecture a tiny file is wired as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// `llama`: interleaved rope, SwiGLU, no post norms.
    Llama,
    /// `gemma3`: embedding scale, q/k norms, NEOX rope, local/global layers, GeGLU, post norms.
    Gemma3,
}

impl Arch {
    /// The `general.architecture` string.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Gemma3 => "gemma3",
        }
    }
}

/// Everything that determines a tiny model file.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Architecture the tensors and keys follow.
    pub arch: Arch,
    /// Written as `general.architecture` and as the prefix of the hyper-parameter keys
    /// (normally `arch.name()`; something else to test unknown architectures).
    pub arch_name: String,
    /// GGML type of every 2-D weight matrix (embedding included).
    pub dtype: GgmlDType,
    /// Vocabulary (rows of `token_embd`).
    pub vocab: usize,
    /// Hidden size.
    pub d: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads.
    pub n_kv: usize,
    /// Head dimension (gemma3 writes it as `attention.key_length`; llama derives d / n_head).
    pub head_dim: usize,
    /// Feed-forward inner size.
    pub ff: usize,
    /// Number of blocks.
    pub n_layer: usize,
    /// `context_length`.
    pub ctx: usize,
    /// Gemma 3 sliding window.
    pub window: u32,
    /// `rope.freq_base` (gemma3: the global layers' base).
    pub rope_base: f32,
    /// RMSNorm epsilon.
    pub eps: f32,
    /// Whether `output.weight` is left out (tied to the embedding).
    pub tied: bool,
    /// RNG seed of the weights.
    pub seed: u64,
    /// Gain applied to the random matrices (1: roughly unit-variance activations).
    pub gain: f32,
    /// Tensors to leave out of the file.
    pub omit: Vec<String>,
    /// Metadata to add or replace (applied after the defaults).
    pub meta: Vec<(String, Value)>,
    /// Metadata keys to leave out.
    pub meta_remove: Vec<String>,
}

/// Whether matrices of `dtype` need rows that are multiples of 256 (K-quants).
pub fn is_k_quant(dtype: GgmlDType) -> bool {
    matches!(dtype, GgmlDType::Q2K | GgmlDType::Q3K | GgmlDType::Q4K | GgmlDType::Q5K | GgmlDType::Q6K | GgmlDType::Q8K)
}

impl Spec {
    /// A 3-layer llama: vocab 64, d 64, 4 query heads over 2 KV heads of 16, ff 128
    /// (d 256 / heads of 64 / ff 512 for K-quants, whose blocks are 256 wide).
    pub fn llama(dtype: GgmlDType) -> Spec {
        let k = is_k_quant(dtype);
        Spec {
            arch: Arch::Llama,
            arch_name: "llama".into(),
            dtype,
            vocab: 64,
            d: if k { 256 } else { 64 },
            n_head: 4,
            n_kv: 2,
            head_dim: if k { 64 } else { 16 },
            ff: if k { 512 } else { 128 },
            n_layer: 3,
            ctx: 1024,
            window: 4,
            rope_base: 1000.0,
            eps: 1e-5,
            tied: false,
            seed: 7,
            gain: 1.0,
            omit: Vec::new(),
            meta: Vec::new(),
            meta_remove: Vec::new(),
        }
    }

    /// A 7-layer gemma3 (layers 0-4 and 6 local with window 4, layer 5 global), head_dim
    /// 32 != d / n_head so the attention scale and the q/k norms are exercised; tied
    /// output as in real Gemma files.
    pub fn gemma3(dtype: GgmlDType) -> Spec {
        let k = is_k_quant(dtype);
        Spec {
            arch: Arch::Gemma3,
            arch_name: "gemma3".into(),
            head_dim: if k { 128 } else { 32 },
            n_layer: 7,
            rope_base: 200.0,
            eps: 1e-6,
            tied: true,
            seed: 11,
            ..Spec::llama(dtype)
        }
    }

    /// The spec's architecture with `n_layer` blocks.
    pub fn layers(mut self, n: usize) -> Spec {
        self.n_layer = n;
        self
    }

    /// Adds or replaces a metadata value.
    pub fn with_meta(mut self, key: &str, v: Value) -> Spec {
        self.meta.retain(|(k, _)| k != key);
        self.meta.push((key.to_owned(), v));
        self
    }

    /// Whether layer `i` is a sliding-window layer.
    pub fn is_local(&self, i: usize) -> bool {
        self.arch == Arch::Gemma3 && i % 6 != 5
    }

    /// Builds the weights and metadata.
    pub fn build(&self) -> TinyModel {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        let (d, qd, kd, ff) = (self.d, self.n_head * self.head_dim, self.n_kv * self.head_dim, self.ff);
        let mut tensors: Vec<(String, QTensor)> = Vec::new();
        let mat = |rng: &mut ChaCha8Rng, name: String, rows: usize, cols: usize, scale: f32| {
            let data: Vec<f32> = (0..rows * cols).map(|_| rng.random_range(-1.0f32..1.0) * scale).collect();
            let t = Tensor::from_vec(data, (rows, cols), &Device::Cpu).unwrap();
            (name, QTensor::quantize(&t, self.dtype).unwrap())
        };
        let vec = |rng: &mut ChaCha8Rng, name: String, len: usize| {
            let data: Vec<f32> = (0..len).map(|_| 1.0 + rng.random_range(-0.2f32..0.2)).collect();
            let t = Tensor::from_vec(data, len, &Device::Cpu).unwrap();
            (name, QTensor::quantize(&t, GgmlDType::F32).unwrap())
        };
        // Uniform(-s, s) with s = gain * sqrt(3 / fan_in): unit variance for unit inputs.
        let s = |fan_in: usize| self.gain * (3.0 / fan_in as f32).sqrt();
        tensors.push(mat(&mut rng, "token_embd.weight".into(), self.vocab, d, 1.0));
        for i in 0..self.n_layer {
            let p = |n: &str| format!("blk.{i}.{n}.weight");
            tensors.push(vec(&mut rng, p("attn_norm"), d));
            tensors.push(mat(&mut rng, p("attn_q"), qd, d, s(d)));
            tensors.push(mat(&mut rng, p("attn_k"), kd, d, s(d)));
            tensors.push(mat(&mut rng, p("attn_v"), kd, d, s(d)));
            tensors.push(mat(&mut rng, p("attn_output"), d, qd, s(qd)));
            if self.arch == Arch::Gemma3 {
                tensors.push(vec(&mut rng, p("attn_q_norm"), self.head_dim));
                tensors.push(vec(&mut rng, p("attn_k_norm"), self.head_dim));
                tensors.push(vec(&mut rng, p("post_attention_norm"), d));
            }
            tensors.push(vec(&mut rng, p("ffn_norm"), d));
            tensors.push(mat(&mut rng, p("ffn_gate"), ff, d, s(d)));
            tensors.push(mat(&mut rng, p("ffn_up"), ff, d, s(d)));
            tensors.push(mat(&mut rng, p("ffn_down"), d, ff, s(ff)));
            if self.arch == Arch::Gemma3 {
                tensors.push(vec(&mut rng, p("post_ffw_norm"), d));
            }
        }
        tensors.push(vec(&mut rng, "output_norm.weight".into(), d));
        if !self.tied {
            tensors.push(mat(&mut rng, "output.weight".into(), self.vocab, d, s(d)));
        }
        tensors.retain(|(n, _)| !self.omit.contains(n));

        let a = &self.arch_name;
        let u = |v: usize| Value::U32(v as u32);
        let mut meta: Vec<(String, Value)> = vec![
            ("general.architecture".into(), Value::String(a.clone())),
            ("general.name".into(), Value::String(format!("tiny-{}", self.arch.name()))),
            (format!("{a}.context_length"), u(self.ctx)),
            (format!("{a}.embedding_length"), u(d)),
            (format!("{a}.block_count"), u(self.n_layer)),
            (format!("{a}.feed_forward_length"), u(ff)),
            (format!("{a}.attention.head_count"), u(self.n_head)),
            (format!("{a}.attention.head_count_kv"), u(self.n_kv)),
            (format!("{a}.attention.layer_norm_rms_epsilon"), Value::F32(self.eps)),
            (format!("{a}.rope.freq_base"), Value::F32(self.rope_base)),
        ];
        if self.arch == Arch::Gemma3 {
            meta.push((format!("{a}.attention.key_length"), u(self.head_dim)));
            meta.push((format!("{a}.attention.value_length"), u(self.head_dim)));
            meta.push((format!("{a}.attention.sliding_window"), Value::U32(self.window)));
        } else {
            meta.push((format!("{a}.rope.dimension_count"), u(self.head_dim)));
        }
        meta.retain(|(k, _)| !self.meta_remove.contains(k));
        for (k, v) in &self.meta {
            meta.retain(|(m, _)| m != k);
            meta.push((k.clone(), v.clone()));
        }
        TinyModel { spec: self.clone(), meta, tensors }
    }
}

/// A built tiny model: metadata and quantized tensors, ready to write.
pub struct TinyModel {
    /// What it was built from.
    pub spec: Spec,
    /// Metadata in file order.
    pub meta: Vec<(String, Value)>,
    /// Tensors in file order.
    pub tensors: Vec<(String, QTensor)>,
}

impl TinyModel {
    /// The GGUF file's bytes.
    pub fn bytes(&self) -> Vec<u8> {
        let meta: Vec<(&str, &Value)> = self.meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let tensors: Vec<(&str, &QTensor)> = self.tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
        let mut out = Cursor::new(Vec::new());
        gguf_file::write(&mut out, &meta, &tensors).unwrap();
        out.into_inner()
    }

    /// Writes the file as `dir/name` and returns its path.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, self.bytes()).unwrap();
        path
    }

    /// Tensor `name` dequantized to f32, row-major.
    pub fn f32(&self, name: &str) -> Vec<f32> {
        let (_, t) = self.tensors.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no tensor {name}"));
        t.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// The naive reference model over the dequantized weights.
    pub fn reference(&self) -> reference::RefModel {
        reference::RefModel::new(self)
    }
}

/// Byte offsets of the regions of a GGUF file written by [`TinyModel::bytes`].
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    /// End of the fixed header (magic, version, counts).
    pub header_end: usize,
    /// End of the metadata key/values (start of the tensor-info table).
    pub meta_end: usize,
    /// Start of the tensor data (aligned).
    pub data_start: usize,
    /// File length.
    pub len: usize,
}

/// Finds the regions of a GGUF v2/v3 file (64-bit lengths).
pub fn layout(bytes: &[u8], first_tensor: &str) -> Layout {
    let meta_end = tensor_info_offset(bytes, first_tensor);
    let content = gguf_file::Content::read(&mut Cursor::new(bytes)).unwrap();
    Layout { header_end: 24, meta_end, data_start: content.tensor_data_offset as usize, len: bytes.len() }
}

/// Offset of the tensor-info record of `name` (its length prefix).
pub fn tensor_info_offset(bytes: &[u8], name: &str) -> usize {
    let mut needle = (name.len() as u64).to_le_bytes().to_vec();
    needle.extend_from_slice(name.as_bytes());
    // The record is followed by n_dims (u32 <= 4); metadata keys never equal tensor names.
    bytes
        .windows(needle.len())
        .position(|w| w == needle.as_slice())
        .unwrap_or_else(|| panic!("tensor info for {name} not found"))
}

/// Offset of the u32 GGML type id in the tensor-info record of `name`.
pub fn tensor_dtype_offset(bytes: &[u8], name: &str) -> usize {
    let at = tensor_info_offset(bytes, name) + 8 + name.len();
    let n_dims = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    at + 4 + 8 * n_dims
}

/// Offset of the first byte of the value of metadata `key` (after key and type id).
pub fn meta_value_offset(bytes: &[u8], key: &str) -> usize {
    let mut needle = (key.len() as u64).to_le_bytes().to_vec();
    needle.extend_from_slice(key.as_bytes());
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle.as_slice())
        .unwrap_or_else(|| panic!("metadata key {key} not found"));
    at + needle.len() + 4
}
