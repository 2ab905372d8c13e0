//! A loaded model: weights plus a forward function over a batch of sequences, each with
//! its own cache.

use std::path::Path;
use std::sync::Arc;

use lem_kernels::{QMatrix, Scratch, Threads};
use lem_kv::{CacheLayout, KvDtype, LayerSpec, SeqCache};

use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::gguf::{GgufFile, GgufWeights};
use crate::hf::HfDir;
use crate::layers::{BlockBuffers, DecoderBlock, Kernels, Linear, PerLayerBuffers, PerLayerEmbedding, RmsNorm, fit};
use crate::observer::Observer;
use crate::weights::{LoadOptions, WeightSource};

mod params;
pub use params::ParamCounts;

/// Which positions of a sequence need logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsRequest {
    /// None (filling the cache only).
    None,
    /// The last position (decode, end of prefill).
    Last,
    /// Every position of this call (teacher-forced evaluation, speculative verification).
    All,
    /// No logits: the final hidden state of every position of this call (after the final
    /// norm, before the output projection), read with [`Workspace::hidden`] (embeddings).
    Hidden,
}

/// One sequence's part of a forward call.
#[derive(Debug)]
pub struct SeqInput<'a> {
    /// Tokens to append, at positions `cache.len()..`.
    pub tokens: &'a [u32],
    /// The sequence's cache; the forward appends to it.
    pub cache: &'a mut SeqCache,
    /// Which positions need logits.
    pub logits: LogitsRequest,
}

/// Rows of the batch that belong to one sequence.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Segment {
    pub(crate) seq: usize,
    pub(crate) start: usize,
    pub(crate) len: usize,
}

/// Buffers one forward call needs, kept by the caller and reused so that steady-state
/// decoding does not allocate.
#[derive(Debug, Default)]
pub struct Workspace {
    x: Vec<f32>,
    positions: Vec<u32>,
    segments: Vec<Segment>,
    block: BlockBuffers,
    per_layer: PerLayerBuffers,
    /// Every row's token (for per-layer embeddings).
    tokens: Vec<u32>,
    scratch: Scratch,
    picked: Vec<f32>,
    logits: Vec<f32>,
    /// (first logits row, rows) per sequence of the last call.
    logit_rows: Vec<(usize, usize)>,
    /// (first hidden row, rows) per sequence of the last call; hidden rows follow the
    /// logits rows in `picked`.
    hidden_rows: Vec<(usize, usize)>,
    /// Logits rows of the last call (where the hidden rows start in `picked`).
    hidden_base: usize,
}

impl Workspace {
    /// Logits of sequence `seq` from the last forward call: one row of `vocab` values per
    /// requested position, in position order.
    pub fn logits(&self, seq: usize, vocab: usize) -> &[f32] {
        let (start, rows) = self.logit_rows[seq];
        &self.logits[start * vocab..(start + rows) * vocab]
    }

    /// Final hidden states of sequence `seq` from the last forward call, when it asked for
    /// [`LogitsRequest::Hidden`]: one row of `n_embd` values per position, in position
    /// order (empty otherwise).
    pub fn hidden(&self, seq: usize, n_embd: usize) -> &[f32] {
        let (start, rows) = self.hidden_rows[seq];
        let first = self.hidden_base + start;
        &self.picked[first * n_embd..(first + rows) * n_embd]
    }
}

/// Token embedding lookup, optionally scaled (Gemma multiplies by sqrt(n_embd)).
#[derive(Debug, Clone)]
pub struct Embedding {
    table: Arc<QMatrix>,
    scale: Option<f32>,
}

impl Embedding {
    /// Wraps an embedding table of `[vocab, n_embd]`.
    pub fn new(table: Arc<QMatrix>, scale: Option<f32>) -> Embedding {
        Embedding { table, scale }
    }

    /// The table, for tying the output projection.
    pub fn table(&self) -> &Arc<QMatrix> {
        &self.table
    }

    fn lookup(&self, tokens: &[u32], out: &mut [f32]) {
        let d = self.table.cols();
        for (t, row) in tokens.iter().zip(out.chunks_exact_mut(d)) {
            self.table.dequantize_row(*t as usize, row);
            if let Some(s) = self.scale {
                row.iter_mut().for_each(|v| *v *= s);
            }
        }
    }
}

/// A decoder-only transformer: embedding, blocks, final norm, output projection.
/// Architectures differ only in how they fill this from a GGUF file.
#[derive(Debug)]
pub struct Model {
    config: ModelConfig,
    embedding: Embedding,
    blocks: Vec<DecoderBlock>,
    final_norm: RmsNorm,
    output: Linear,
    layout: CacheLayout,
    /// Per-layer token embeddings (Gemma 4), when the model has them.
    per_layer: Option<PerLayerEmbedding>,
}

/// Opens the weights source at `path`: a Hugging Face directory or a GGUF file.
pub fn open_weights(path: &Path, opts: &LoadOptions) -> Result<Box<dyn WeightSource>, ModelError> {
    if path.is_dir() {
        Ok(Box::new(HfDir::open(path, *opts)?))
    } else {
        Ok(Box::new(GgufWeights::new(GgufFile::open(path)?, *opts)?))
    }
}

/// Default number of tokens one forward call may carry per batch (prompts are split).
pub const DEFAULT_MAX_BATCH: usize = 512;

impl Model {
    /// Loads a GGUF file or a Hugging Face model directory of any supported architecture.
    pub fn load(path: &Path) -> Result<Model, ModelError> {
        Model::load_with(path, &LoadOptions::default())
    }

    /// [`Model::load`] with options (storage type, intended context).
    pub fn load_with(path: &Path, opts: &LoadOptions) -> Result<Model, ModelError> {
        let mut src = open_weights(path, opts)?;
        let mut model = crate::arch::load(src.as_mut(), opts)?;
        let v_type = opts.kv_dtype_v.unwrap_or(opts.kv_dtype);
        model.layout =
            model.layout.with_types(opts.kv_dtype, v_type).map_err(|e| ModelError::Unsupported(e.to_string()))?;
        if let Some(bound) = opts.kv_bound {
            model.bound_cache(bound)?;
        }
        match opts.max_batch {
            Some(0) => return Err(ModelError::Input("the batch size (--ubatch-size) must be at least 1".into())),
            Some(n) => model.layout.max_batch = n,
            None => {}
        }
        Ok(model)
    }

    /// Bounds the cache layout's full-attention layers ([`CacheLayout::with_bound`]):
    /// sequences created afterwards use the bounded layout.
    pub fn bound_cache(&mut self, bound: lem_kv::KvBound) -> Result<(), ModelError> {
        self.layout = self.layout.with_bound(bound).map_err(|e| ModelError::Input(e.to_string()))?;
        Ok(())
    }

    /// Assembles a model from parts (used by architecture files).
    pub fn from_parts(
        config: ModelConfig,
        embedding: Embedding,
        blocks: Vec<DecoderBlock>,
        final_norm: RmsNorm,
        output: Linear,
    ) -> Model {
        let layers = blocks
            .iter()
            .map(|b| {
                let c = b.attn.config();
                LayerSpec { shares: c.shares, ..LayerSpec::new(c.kind, c.n_kv, c.head_dim) }
            })
            .collect();
        let layout = CacheLayout {
            layers,
            k_type: KvDtype::default(),
            v_type: KvDtype::default(),
            max_batch: DEFAULT_MAX_BATCH,
            recall_blocks: 0,
            recall_select: Default::default(),
        };
        Model { config, embedding, blocks, final_norm, output, layout, per_layer: None }
    }

    /// The model with per-layer token embeddings (Gemma 4), or without (`None`).
    pub fn with_per_layer(mut self, per_layer: Option<PerLayerEmbedding>) -> Model {
        self.per_layer = per_layer;
        self
    }

    /// The per-layer token embeddings, when the model has them.
    pub fn per_layer(&self) -> Option<&PerLayerEmbedding> {
        self.per_layer.as_ref()
    }

    /// Hyper-parameters.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Vocabulary size (length of a logits row).
    pub fn vocab(&self) -> usize {
        self.output.out_dim()
    }

    /// The cache layout sequences of this model need.
    pub fn cache_layout(&self) -> &CacheLayout {
        &self.layout
    }

    /// Most tokens one forward call may carry.
    pub fn max_batch(&self) -> usize {
        self.layout.max_batch
    }

    /// A new empty cache for one sequence.
    pub fn new_cache(&self) -> SeqCache {
        SeqCache::new(&self.layout)
    }

    /// Number of decoder layers.
    pub fn n_layers(&self) -> usize {
        self.blocks.len()
    }

    /// The cache layout of the model cut after its first `layers` layers (see
    /// [`Model::forward_layers`]); `layers` is capped at [`Model::n_layers`].
    pub fn cache_layout_for_layers(&self, layers: usize) -> CacheLayout {
        let layers = layers.min(self.blocks.len());
        CacheLayout { layers: self.layout.layers[..layers].to_vec(), ..self.layout.clone() }
    }

    /// Runs every sequence's new tokens through the model, appending to its cache, and
    /// leaves the requested logits in `ws` (read them with [`Workspace::logits`]).
    ///
    /// All tokens of all sequences travel together through the matrix products; attention
    /// runs per sequence over that sequence's own cache. The total number of tokens must
    /// not exceed [`Model::max_batch`].
    pub fn forward(
        &self,
        batch: &mut [SeqInput<'_>],
        ws: &mut Workspace,
        threads: &Threads,
        observer: Option<&mut dyn Observer>,
    ) -> Result<(), ModelError> {
        self.forward_inner(self.blocks.len(), batch, ws, threads, observer)
    }

    /// [`Model::forward`] through the first `layers` layers only, then the final norm and
    /// the output projection: the model cut short, as a self-speculative drafter uses it
    /// (no weights of its own). Each cache must have [`Model::cache_layout_for_layers`]'s
    /// layout. The first `layers` layers compute exactly what they compute in a full
    /// forward.
    pub fn forward_layers(
        &self,
        layers: usize,
        batch: &mut [SeqInput<'_>],
        ws: &mut Workspace,
        threads: &Threads,
    ) -> Result<(), ModelError> {
        if layers == 0 || layers > self.blocks.len() {
            return Err(ModelError::Input(format!("cannot run {layers} layers of a model with {}", self.blocks.len())));
        }
        self.forward_inner(layers, batch, ws, threads, None)
    }

    fn forward_inner(
        &self,
        n_layers: usize,
        batch: &mut [SeqInput<'_>],
        ws: &mut Workspace,
        threads: &Threads,
        mut observer: Option<&mut dyn Observer>,
    ) -> Result<(), ModelError> {
        let cut;
        let layout = if n_layers == self.blocks.len() {
            &self.layout
        } else {
            cut = self.cache_layout_for_layers(n_layers);
            &cut
        };
        let d = self.config.n_embd;
        let total: usize = batch.iter().map(|s| s.tokens.len()).sum();
        if total > self.max_batch() {
            return Err(ModelError::Input(format!(
                "{total} tokens in one call exceed the batch limit of {}",
                self.max_batch()
            )));
        }
        ws.positions.clear();
        ws.segments.clear();
        for (i, s) in batch.iter().enumerate() {
            if let Some(&bad) = s.tokens.iter().find(|&&t| t as usize >= self.config.vocab) {
                return Err(ModelError::Input(format!(
                    "token id {bad} is outside the vocabulary of {}",
                    self.config.vocab
                )));
            }
            if s.cache.layout() != layout {
                return Err(ModelError::Input(format!("sequence {i}'s cache was made for a different layout")));
            }
            let start = s.cache.len();
            // A layout whose every layer bounds how far back a query sees (windows,
            // rebased sinks) may run past the trained context.
            if start as usize + s.tokens.len() > self.config.context_length && !layout.bounded_distance() {
                return Err(ModelError::Input(format!(
                    "sequence {i} would reach {} tokens, over the model's context length of {}",
                    start as usize + s.tokens.len(),
                    self.config.context_length
                )));
            }
            ws.segments.push(Segment { seq: i, start: ws.positions.len(), len: s.tokens.len() });
            ws.positions.extend((0..s.tokens.len() as u32).map(|j| start + j));
        }
        let x = fit(&mut ws.x, total * d);
        for seg in &ws.segments {
            self.embedding.lookup(batch[seg.seq].tokens, &mut x[seg.start * d..(seg.start + seg.len) * d]);
        }
        let mut k = Kernels { threads, scratch: &mut ws.scratch };
        if let Some(pl) = &self.per_layer {
            ws.tokens.clear();
            for seg in &ws.segments {
                ws.tokens.extend_from_slice(batch[seg.seq].tokens);
            }
            pl.inputs(&ws.tokens, x, &mut ws.per_layer, &mut k);
        }
        for (l, block) in self.blocks[..n_layers].iter().enumerate() {
            block.forward(
                l,
                x,
                &ws.positions,
                &ws.segments,
                batch,
                &mut ws.block,
                &mut k,
                crate::observer::reborrow(&mut observer),
            );
            // Gemma 4: the layer's per-layer input joins the stream, then the whole
            // stream is scaled.
            if let Some(pl) = &self.per_layer {
                pl.apply(l, x, total, &mut ws.per_layer, &mut k);
            }
            if let Some(s) = block.out_scale {
                x.iter_mut().for_each(|v| *v *= s);
            }
        }
        for seg in &ws.segments {
            batch[seg.seq].cache.advance(seg.len as u32);
            batch[seg.seq].cache.take_error()?;
        }

        // Gather the rows that need logits (then the hidden rows asked for), normalise
        // them all and project only the logits rows.
        ws.logit_rows.clear();
        ws.hidden_rows.clear();
        let (mut rows, mut hidden) = (0, 0);
        for (seg, s) in ws.segments.iter().zip(batch.iter()) {
            let (r, h) = match s.logits {
                LogitsRequest::None => (0, 0),
                LogitsRequest::Last => (usize::from(seg.len > 0), 0),
                LogitsRequest::All => (seg.len, 0),
                LogitsRequest::Hidden => (0, seg.len),
            };
            ws.logit_rows.push((rows, r));
            ws.hidden_rows.push((hidden, h));
            rows += r;
            hidden += h;
        }
        ws.hidden_base = rows;
        let picked = fit(&mut ws.picked, (rows + hidden) * d);
        for ((seg, &(first, r)), &(hfirst, h)) in ws.segments.iter().zip(&ws.logit_rows).zip(&ws.hidden_rows) {
            let src = (seg.start + seg.len - r) * d;
            picked[first * d..(first + r) * d].copy_from_slice(&x[src..src + r * d]);
            let to = (rows + hfirst) * d;
            picked[to..to + h * d].copy_from_slice(&x[seg.start * d..(seg.start + h) * d]);
        }
        self.final_norm.forward(picked);
        let vocab = self.vocab();
        let logits = fit(&mut ws.logits, rows * vocab);
        self.output.forward(&picked[..rows * d], rows, logits, &mut k);
        if let Some(cap) = self.config.final_logit_softcap {
            lem_kernels::ops::softcap(logits, cap);
        }
        Ok(())
    }
}
