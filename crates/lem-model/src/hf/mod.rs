//! Hugging Face model directories as a [`WeightSource`]: `config.json` for the
//! hyper-parameters, `model.safetensors` (or shards listed by
//! `model.safetensors.index.json`) for the tensors.
//!
//! The tensors come out as llama.cpp's `convert_hf_to_gguf.py` would have written them,
//! so a directory and its GGUF conversion build the same model: Q/K rows permuted for the
//! families whose GGUF rotary pairs adjacent dimensions ([`permute_row`]), Gemma norm
//! weights stored as offsets returned as `1 + w`, rotary scaling turned into factors
//! (`rope.rs`), tied embeddings reported as a missing output tensor. Matrices keep their
//! stored type (F32, F16 or BF16); vectors come out as f32.

mod config;
mod rope;
mod stacked;
mod tensors;

use std::ops::Range;
use std::path::{Path, PathBuf};

use candle_core::quantized::GgmlDType;
use lem_kernels::QMatrix;
use serde_json::Value;

use crate::arch::{Arch, HfConventions};
use crate::config::{Key, RopeScaling, key_names};
use crate::error::ModelError;
use crate::names::{Role, TensorId, hf_name};
use crate::weights::{LoadOptions, WeightSource, check_shape};

pub(crate) use config::HfConfig;
pub(crate) use tensors::{Tensors, weight_files};

/// A Hugging Face model directory.
#[derive(Debug)]
pub struct HfDir {
    path: PathBuf,
    arch: Arch,
    conventions: HfConventions,
    config: HfConfig,
    tensors: Tensors,
    opts: LoadOptions,
    /// The output projection is the embedding (`lm_head.weight` ignored if stored).
    tied: bool,
}

/// Norm roles, whose Gemma weights are stored as offsets from 1.
const NORMS: &[Role] = &[
    Role::AttnNorm,
    Role::FfnNorm,
    Role::PostAttnNorm,
    Role::PostFfnNorm,
    Role::OutputNorm,
    Role::AttnQNorm,
    Role::AttnKNorm,
];

/// The stored row that llama.cpp's Q/K permutation puts at row `r` of a projection with
/// `n_heads` heads of `head` rows each: viewing the rows as `(head, pair, half)` and
/// swapping the last two axes gives `(head, half, pair)`, so output row
/// `h * head + 2 * i + j` is stored row `h * head + j * head / 2 + i`.
pub(crate) fn permute_row(r: usize, head: usize) -> usize {
    let (h, within) = (r / head, r % head);
    let (i, j) = (within / 2, within % 2);
    h * head + j * (head / 2) + i
}

impl HfDir {
    /// Opens `dir`: parses `config.json`, checks the architecture and stored type, and
    /// maps and parses every weight file's header.
    pub fn open(dir: &Path, opts: LoadOptions) -> Result<HfDir, ModelError> {
        let config = HfConfig::read(dir)?;
        let arch = config.arch()?;
        config.check_dtype()?;
        let tensors = Tensors::open(dir)?;
        let conventions = match config.str("model_type")? {
            Some(t) => Arch::hf_conventions_of(t).unwrap_or(arch.hf_conventions()),
            None => arch.hf_conventions(),
        };
        let lm_head =
            hf_name(TensorId::global(Role::Output), conventions.naming).is_some_and(|n| tensors.get(&n).is_some());
        let tied = match config.bool("tie_word_embeddings")? {
            Some(true) => true,
            Some(false) if !lm_head => {
                return Err(ModelError::HfDir {
                    path: dir.to_owned(),
                    reason: "tie_word_embeddings is false but the weights have no lm_head.weight".into(),
                });
            }
            Some(false) => false,
            // Unstated: the family's default, but a missing head can only mean tied.
            None => config::ties_by_default(arch) || !lm_head,
        };
        Ok(HfDir { path: dir.to_owned(), arch, conventions, config, tensors, opts, tied })
    }

    /// The parsed `config.json`.
    pub(crate) fn config(&self) -> &HfConfig {
        &self.config
    }

    /// The checkpoint's tensors.
    pub(crate) fn tensors(&self) -> &Tensors {
        &self.tensors
    }

    fn name_of(&self, id: TensorId) -> Option<String> {
        if self.tied && id.role == Role::Output {
            return None;
        }
        hf_name(id, self.conventions.naming)
    }

    /// A config value by its Hugging Face key: top level, else inside `text_config`.
    fn value(&self, key: &str) -> Option<&Value> {
        self.config
            .get(key)
            .or_else(|| self.config.get("text_config").and_then(|t| t.get(key)).filter(|v| !v.is_null()))
    }

    fn uint_at(&self, key: &str) -> Result<Option<u64>, ModelError> {
        self.value(key).map(config::as_uint).transpose().map_err(|reason| self.config.err(format!("'{key}': {reason}")))
    }

    fn float_at(&self, key: &str) -> Result<Option<f64>, ModelError> {
        self.value(key).map(config::as_f64).transpose().map_err(|reason| self.config.err(format!("'{key}': {reason}")))
    }

    /// The rotary base: `rope_theta`, or inside `rope_parameters` (transformers 5).
    fn rope_base(&self) -> Result<Option<f64>, ModelError> {
        if let Some(b) = self.float_at("rope_theta")? {
            return Ok(Some(b));
        }
        match rope::rope_params(&self.config).and_then(|p| p.get("rope_theta")).filter(|v| !v.is_null()) {
            None => Ok(None),
            Some(v) => config::as_f64(v).map(Some).map_err(|r| self.config.err(format!("'rope_theta': {r}"))),
        }
    }

    /// Rotating dimensions from `partial_rotary_factor` (as the Phi-3 converter computes
    /// them); `None` when the whole head rotates.
    fn rope_dims(&self) -> Result<Option<u64>, ModelError> {
        let pct = self
            .float_at("partial_rotary_factor")?
            .or(rope::rope_params(&self.config).and_then(|p| p.get("partial_rotary_factor")).and_then(Value::as_f64));
        let Some(pct) = pct.filter(|&p| p != 1.0) else { return Ok(None) };
        if !(pct > 0.0 && pct <= 1.0) {
            return Err(self.config.err(format!("'partial_rotary_factor' {pct} is outside (0, 1]")));
        }
        let dims = match self.uint_at("head_dim")? {
            Some(hd) => (pct * hd as f64) as u64,
            None => {
                let embd = self.uint_at("hidden_size")?.unwrap_or(0);
                let heads = self.uint_at("num_attention_heads")?.unwrap_or(1).max(1);
                (pct * embd as f64) as u64 / heads
            }
        };
        Ok(Some(dims))
    }

    /// Heads of a permuted projection (`None`: not permuted).
    fn permute_heads(&self, id: TensorId) -> Result<Option<usize>, ModelError> {
        if !self.conventions.permute_qk {
            return Ok(None);
        }
        let heads = match id.role {
            Role::AttnQ => self.uint(Key::HeadCount)?,
            Role::AttnK => match self.uint(Key::HeadCountKv)? {
                Some(n) => Some(n),
                None => self.uint(Key::HeadCount)?,
            },
            _ => return Ok(None),
        };
        let heads = heads.ok_or_else(|| self.key_error(Key::HeadCount, "missing".into()))?;
        Ok(Some(heads as usize))
    }

    /// The tensor's entry, checked to have a type lem reads.
    fn entry(&self, id: TensorId) -> Result<(String, &tensors::TensorEntry, GgmlDType), ModelError> {
        let name = self.name_of(id).ok_or_else(|| ModelError::MissingTensor(self.tensor_name(id)))?;
        let e = self.tensors.get(&name).ok_or_else(|| ModelError::MissingTensor(name.clone()))?;
        let ty = tensors::ggml_type(&name, e.dtype)?;
        Ok((name, e, ty))
    }

    /// Rows of `n_heads` heads in a projection of `rows` rows, checked to pair up.
    fn head_rows(&self, name: &str, rows: usize, n_heads: usize) -> Result<usize, ModelError> {
        if n_heads == 0 || !rows.is_multiple_of(n_heads) || !(rows / n_heads).is_multiple_of(2) {
            return Err(ModelError::HfDir {
                path: self.path.clone(),
                reason: format!(
                    "tensor '{name}' has {rows} rows, which do not split into {n_heads} heads of an even size"
                ),
            });
        }
        Ok(rows / n_heads)
    }
}

impl WeightSource for HfDir {
    fn path(&self) -> &Path {
        &self.path
    }

    fn arch(&self) -> Arch {
        self.arch
    }

    fn model_name(&self) -> Option<String> {
        let dir = self.path.canonicalize().unwrap_or_else(|_| self.path.clone());
        let base = dir.file_name().map(|f| f.to_string_lossy().into_owned()).filter(|s| !s.is_empty());
        let named = self.config.str("_name_or_path").ok().flatten().filter(|s| !s.is_empty()).map(str::to_owned);
        // A Hugging Face cache snapshot directory is named by its commit hash.
        let is_hash = |s: &String| s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit());
        match base {
            Some(b) if is_hash(&b) && named.is_some() => named,
            Some(b) => Some(b),
            None => named,
        }
    }

    fn uint(&self, key: Key) -> Result<Option<u64>, ModelError> {
        match key {
            Key::RopeDims => return self.rope_dims(),
            Key::SlidingWindow if self.config.bool("use_sliding_window")? == Some(false) => return Ok(None),
            _ => {}
        }
        let (_, hf) = key_names(key);
        for name in hf.split('|').filter(|n| !n.is_empty()) {
            if let Some(v) = self.uint_at(name)? {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    fn float(&self, key: Key) -> Result<Option<f32>, ModelError> {
        if key == Key::RopeBase {
            return Ok(self.rope_base()?.map(|b| b as f32));
        }
        let (_, hf) = key_names(key);
        if hf.is_empty() { Ok(None) } else { Ok(self.float_at(hf)?.map(|f| f as f32)) }
    }

    fn flag(&self, key: Key) -> Result<Option<bool>, ModelError> {
        let (_, hf) = key_names(key);
        for name in hf.split('|').filter(|n| !n.is_empty()) {
            if let Some(b) = self.config.bool(name)? {
                return Ok(Some(b));
            }
        }
        Ok(None)
    }

    fn key_error(&self, key: Key, reason: String) -> ModelError {
        let (_, hf) = key_names(key);
        let name = if hf.is_empty() { format!("{key:?}") } else { hf.to_owned() };
        self.config.err(format!("'{name}': {reason}"))
    }

    fn rope_scaling(&self, n_rot: usize, context_length: usize) -> Result<RopeScaling, ModelError> {
        let base = self.rope_base()?.unwrap_or(f64::from(self.arch.default_rope_base()));
        rope::scaling(&self.config, n_rot, base, context_length, self.opts.context)
    }

    fn tensor_name(&self, id: TensorId) -> String {
        hf_name(id, self.conventions.naming)
            .unwrap_or_else(|| format!("{:?} (not stored in Hugging Face checkpoints)", id))
    }

    fn has(&self, id: TensorId) -> bool {
        self.name_of(id).is_some_and(|n| self.tensors.get(&n).is_some())
    }

    fn shape(&self, id: TensorId) -> Option<Vec<usize>> {
        self.name_of(id).and_then(|n| self.tensors.get(&n)).map(|e| e.shape.clone())
    }

    fn matrix_rows(
        &mut self,
        id: TensorId,
        total_rows: usize,
        cols: usize,
        rows: Range<usize>,
    ) -> Result<QMatrix, ModelError> {
        let (name, e, ty) = self.entry(id)?;
        check_shape(&name, Some(e.shape.clone()), &[total_rows, cols])?;
        if rows.start > rows.end || rows.end > total_rows {
            return Err(ModelError::TensorShape {
                tensor: name,
                got: vec![total_rows, cols],
                expected: vec![rows.end, cols],
            });
        }
        let bytes = self.tensors.bytes(e);
        let row_bytes = cols * ty.type_size();
        let quant = |b: &[u8]| {
            QMatrix::from_bytes(ty, rows.len(), cols, b)
                .map_err(|source| ModelError::Quant { tensor: name.clone(), source })
        };
        match self.permute_heads(id)? {
            None => quant(&bytes[rows.start * row_bytes..rows.end * row_bytes]),
            Some(n_heads) => {
                let head = self.head_rows(&name, total_rows, n_heads)?;
                let mut out = Vec::with_capacity(rows.len() * row_bytes);
                for r in rows.clone() {
                    let src = permute_row(r, head);
                    out.extend_from_slice(&bytes[src * row_bytes..(src + 1) * row_bytes]);
                }
                quant(&out)
            }
        }
    }

    fn expert_matrix(
        &mut self,
        id: TensorId,
        n_expert: usize,
        rows: usize,
        cols: usize,
    ) -> Result<QMatrix, ModelError> {
        match (id.expert, self.stacked(id)) {
            (Some(e), Some(cols_of)) if e < n_expert => self.stacked_matrix(id, e, n_expert, rows, cols, cols_of),
            (Some(e), None) if e < n_expert => self.matrix(id, rows, cols),
            _ => Err(ModelError::MissingTensor(self.tensor_name(id))),
        }
    }

    fn expert_vector(&mut self, id: TensorId, n_expert: usize, len: usize) -> Result<Vec<f32>, ModelError> {
        match (id.expert, self.stacked(id)) {
            (Some(e), Some(cols_of)) if e < n_expert => self.stacked_vector(id, e, n_expert, len, cols_of),
            (Some(e), None) if e < n_expert => self.vector(id, len),
            _ => Err(ModelError::MissingTensor(self.tensor_name(id))),
        }
    }

    fn vector(&mut self, id: TensorId, len: usize) -> Result<Vec<f32>, ModelError> {
        let (name, e, ty) = self.entry(id)?;
        if e.shape != [len] {
            return Err(ModelError::TensorShape { tensor: name, got: e.shape.clone(), expected: vec![len] });
        }
        let m = QMatrix::from_bytes(ty, 1, len, self.tensors.bytes(e))
            .map_err(|source| ModelError::Quant { tensor: name.clone(), source })?;
        let mut v = m.to_f32();
        if let Some(n_heads) = self.permute_heads(id)? {
            let head = self.head_rows(&name, len, n_heads)?;
            v = (0..len).map(|r| v[permute_row(r, head)]).collect();
        }
        if self.conventions.norm_plus_one && NORMS.contains(&id.role) {
            v.iter_mut().for_each(|w| *w += 1.0);
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// llama.cpp's `permute`: `w.reshape(n_head, 2, rows / n_head / 2, cols)
    /// .swapaxes(1, 2).reshape(rows, cols)`, written out as index arithmetic on a
    /// row-major array independently of [`permute_row`].
    fn reference_permute(w: &[u32], rows: usize, cols: usize, n_head: usize) -> Vec<u32> {
        let half = rows / n_head / 2;
        // Source strides of the (n_head, 2, half, cols) view.
        let (s0, s1, s2) = (2 * half * cols, half * cols, cols);
        let mut out = Vec::with_capacity(w.len());
        // Output is the (n_head, half, 2, cols) view, iterated in row-major order.
        for h in 0..n_head {
            for i in 0..half {
                for j in 0..2 {
                    for c in 0..cols {
                        out.push(w[h * s0 + j * s1 + i * s2 + c]);
                    }
                }
            }
        }
        out
    }

    #[test]
    fn permutation_matches_the_converter() {
        for (rows, cols, n_head) in [(16, 3, 2), (64, 5, 4), (32, 1, 2), (24, 2, 3), (8, 4, 4)] {
            let w: Vec<u32> = (0..(rows * cols) as u32).collect();
            let want = reference_permute(&w, rows, cols, n_head);
            let head = rows / n_head;
            let got: Vec<u32> =
                (0..rows).flat_map(|r| w[permute_row(r, head) * cols..][..cols].iter().copied()).collect();
            assert_eq!(got, want, "rows {rows} cols {cols} heads {n_head}");
        }
        // Head of 4 rows [a0 a1 b0 b1] becomes [a0 b0 a1 b1].
        assert_eq!((0..4).map(|r| permute_row(r, 4)).collect::<Vec<_>>(), [0, 2, 1, 3]);
    }
}
