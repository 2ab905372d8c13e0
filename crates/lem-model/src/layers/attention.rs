//! Multi-head (grouped-query) self-attention over a sequence-owned KV cache.

use lem_kernels::ops::{self, AttnShape, Rope};
use lem_kv::LayerKind;

use std::sync::Arc;

use super::{Kernels, Linear, Loader, RmsNorm, fit};
use crate::error::ModelError;
use crate::model::{Segment, SeqInput};
use crate::names::{Role, TensorId};
use crate::observer::{Capture, CaptureKind, Captured, Observer};

/// Geometry and constants of one attention layer.
#[derive(Debug, Clone)]
pub struct AttentionConfig {
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads.
    pub n_kv: usize,
    /// Head dimension.
    pub head_dim: usize,
    /// Multiplier on `q . k`.
    pub scale: f32,
    /// Soft-cap on attention logits.
    pub softcap: Option<f32>,
    /// Rotary embedding; `None` for layers without one (SmolLM3's every fourth layer).
    pub rope: Option<Rope>,
    /// Per-frequency rotary divisors (`n_rot / 2`: Llama 3.x, LongRoPE), when used.
    pub rope_factors: Option<Arc<[f32]>>,
    /// Full or sliding-window.
    pub kind: LayerKind,
    /// The earlier layer whose cached K/V this layer attends to (Gemma 4's shared-KV
    /// layers: no K/V projections of its own, nothing appended).
    pub shares: Option<usize>,
    /// Values are the keys' projection when the source stores no V projection (Gemma 4's
    /// global layers); otherwise a missing V projection is an error.
    pub v_from_k: bool,
    /// Values are RMS-normalised per head without a learned scale (Gemma 4).
    pub v_norm: bool,
}

/// Self-attention: projections, optional per-head q/k norms, rotary embedding, cache
/// append, scaled dot-product attention, output projection.
#[derive(Debug, Clone)]
pub struct Attention {
    q: Linear,
    /// `None` for a layer sharing an earlier layer's K/V.
    k: Option<Linear>,
    /// `None` when values are the keys' projection (or the layer shares K/V).
    v: Option<Linear>,
    o: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    v_norm: Option<RmsNorm>,
    /// Learned per-head sink logits (gpt-oss), where stored.
    sinks: Option<Vec<f32>>,
    cfg: AttentionConfig,
}

/// Buffers attention reuses across calls.
#[derive(Debug, Default)]
pub struct AttnBuffers {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    out: Vec<f32>,
    probs: Vec<f32>,
    rope: Vec<f32>,
    /// Queries rotated at rebased positions, for the scores against attention sinks.
    sink_q: Vec<f32>,
    sink_pos: Vec<u32>,
    recall: RecallBuffers,
}

/// Evicted-block recall's buffers: log-sum-exp of the window's and of the recalled
/// blocks' attention, the latter's output, and block selections.
#[derive(Debug, Default)]
struct RecallBuffers {
    lse: Vec<f32>,
    q: Vec<f32>,
    recall_lse: Vec<f32>,
    recall_out: Vec<f32>,
    picked: lem_kv::recall::Picked,
    next: lem_kv::recall::Picked,
}

impl Attention {
    /// Loads layer `i`'s Q/K/V/output projections (biases where stored; from one fused
    /// `[q + 2 kv, n_embd]` tensor when `fused`), its per-head Q/K norms and its
    /// attention sinks when stored. A layer sharing K/V loads only Q and the output; with
    /// `v_from_k` a missing V projection means V is K.
    pub fn load(
        l: &mut Loader<'_>,
        i: usize,
        n_embd: usize,
        eps: f32,
        cfg: AttentionConfig,
        fused: bool,
    ) -> Result<Attention, ModelError> {
        let (qd, kd) = (cfg.n_head * cfg.head_dim, cfg.n_kv * cfg.head_dim);
        let id = |r: Role| TensorId::layer(r, i);
        let (q, k, v) = if fused {
            let mut p = Linear::load_split(l, id(Role::AttnQkv), n_embd, &[qd, kd, kd])?;
            let v = p.pop().expect("three parts");
            let k = p.pop().expect("three parts");
            (p.pop().expect("three parts"), Some(k), Some(v))
        } else if cfg.shares.is_some() {
            (Linear::load(l, id(Role::AttnQ), n_embd, qd)?, None, None)
        } else {
            let v = if cfg.v_from_k && !l.has(id(Role::AttnV)) {
                None
            } else {
                Some(Linear::load(l, id(Role::AttnV), n_embd, kd)?)
            };
            (Linear::load(l, id(Role::AttnQ), n_embd, qd)?, Some(Linear::load(l, id(Role::AttnK), n_embd, kd)?), v)
        };
        let own_kv = cfg.shares.is_none();
        Ok(Attention {
            q,
            k,
            v,
            o: Linear::load(l, id(Role::AttnOut), qd, n_embd)?,
            q_norm: RmsNorm::load_opt(l, id(Role::AttnQNorm), cfg.head_dim, eps)?,
            k_norm: if own_kv { RmsNorm::load_opt(l, id(Role::AttnKNorm), cfg.head_dim, eps)? } else { None },
            v_norm: (own_kv && cfg.v_norm).then(|| RmsNorm::unit(cfg.head_dim, eps)),
            sinks: if l.has(id(Role::AttnSinks)) { Some(l.vector(id(Role::AttnSinks), cfg.n_head)?) } else { None },
            cfg,
        })
    }

    /// Weight, bias, norm and sink elements.
    pub fn param_count(&self) -> u64 {
        let norms =
            [&self.q_norm, &self.k_norm].iter().filter_map(|n| n.as_ref()).map(RmsNorm::param_count).sum::<u64>();
        [Some(&self.q), self.k.as_ref(), self.v.as_ref(), Some(&self.o)]
            .into_iter()
            .flatten()
            .map(Linear::param_count)
            .sum::<u64>()
            + norms
            + self.sinks.as_ref().map_or(0, |s| s.len() as u64)
    }

    /// The layer's configuration.
    pub fn config(&self) -> &AttentionConfig {
        &self.cfg
    }

    /// Attends for every row of `x` (all sequences of the batch, segment by segment),
    /// appending this layer's K/V to each sequence's cache; writes `out` (`n * n_embd`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward(
        &self,
        layer: usize,
        x: &[f32],
        positions: &[u32],
        segments: &[Segment],
        batch: &mut [SeqInput<'_>],
        out: &mut [f32],
        buf: &mut AttnBuffers,
        k: &mut Kernels<'_>,
        mut observer: Option<&mut dyn Observer>,
    ) {
        let c = &self.cfg;
        let n = positions.len();
        let (qd, kd, hd) = (c.n_head * c.head_dim, c.n_kv * c.head_dim, c.head_dim);
        let want = observer.as_ref().map_or(Capture::NONE, |o| o.wants(layer));

        let q = fit(&mut buf.q, n * qd);
        let (own, shares) = (self.k.is_some(), c.shares);
        let kk = fit(&mut buf.k, if own { n * kd } else { 0 });
        let v = fit(&mut buf.v, if own { n * kd } else { 0 });
        match (&self.k, &self.v) {
            (Some(kp), Some(vp)) => Linear::forward_many([(&self.q, &mut *q), (kp, &mut *kk), (vp, &mut *v)], x, n, k),
            (Some(kp), None) => {
                Linear::forward_many([(&self.q, &mut *q), (kp, &mut *kk)], x, n, k);
                v.copy_from_slice(kk);
            }
            (None, _) => self.q.forward(x, n, q, k),
        }
        if let Some(norm) = &self.q_norm {
            norm.forward(q);
        }
        if let Some(norm) = &self.k_norm {
            norm.forward(kk);
        }
        if let Some(norm) = &self.v_norm {
            norm.forward(v);
        }
        if own && want.contains(Capture::KEYS_PRE_ROPE) {
            emit(&mut observer, layer, CaptureKind::KeysPreRope, segments, positions, &[], kk, c.n_kv, hd);
        }
        // The mask is the cache's: a layout bounded at load (`LoadOptions::kv_bound`)
        // makes a full layer a sink window (every sequence of a batch has the same layout).
        let kind = batch.first().map_or(c.kind, |s| s.cache.layout().layers[layer].kind);
        // A rebased sink window scores its sinks with the queries rotated at their
        // positions within the cache (`lem_kv::SinkPositions`).
        let rebased = c.rope.is_some() && positions.iter().any(|&p| kind.rebases(p));
        if rebased {
            fit(&mut buf.sink_q, n * qd).copy_from_slice(q);
            buf.sink_pos.clear();
            buf.sink_pos.extend(positions.iter().map(|&p| match kind {
                LayerKind::SinkWindow { sinks, window, positions } => positions.sink_query_position(p, sinks, window),
                _ => p,
            }));
        }
        if let Some(rope) = &c.rope {
            rope.fill_table(positions, c.rope_factors.as_deref(), &mut buf.rope);
            rope.apply(q, c.n_head, hd, &buf.rope);
            if own {
                rope.apply(kk, c.n_kv, hd, &buf.rope);
            }
            if rebased {
                rope.fill_table(&buf.sink_pos, c.rope_factors.as_deref(), &mut buf.rope);
                rope.apply(&mut buf.sink_q, c.n_head, hd, &buf.rope);
            }
        }
        // Round K/V to the cache's storage type once, so observers see exactly what the
        // cache holds.
        if let Some(first) = batch.first() {
            let layout = first.cache.layout();
            layout.k_type.round_keys(kk, hd);
            layout.v_type.round_values(v, hd);
        }

        let attn_out = fit(&mut buf.out, n * qd);
        let shape = AttnShape {
            n_head: c.n_head,
            n_kv: c.n_kv,
            head_dim: hd,
            scale: c.scale,
            softcap: c.softcap,
            mask: kind.mask(),
        };
        let sink_logits = self.sinks.as_deref();
        for seg in segments {
            let rows = seg.start..seg.start + seg.len;
            let pos = &positions[rows.clone()];
            let seq_cache = &mut *batch[seg.seq].cache;
            let cache = match shares {
                // A sharing layer attends to its source's cells, already appended by
                // the source layer earlier in this forward.
                Some(_) => seq_cache.kv_layer_mut(layer),
                None => {
                    let own_cache = seq_cache.layer_mut(layer);
                    own_cache.append(pos, &kk[rows.start * kd..rows.end * kd], &v[rows.start * kd..rows.end * kd]);
                    own_cache
                }
            };
            let one = std::slice::from_ref(seg);
            if own && want.contains(Capture::KEYS) {
                emit(&mut observer, layer, CaptureKind::Keys, one, positions, &[], kk, c.n_kv, hd);
            }
            if own && want.contains(Capture::VALUES) {
                emit(&mut observer, layer, CaptureKind::Values, one, positions, &[], v, c.n_kv, hd);
            }
            if want.contains(Capture::QUERIES) {
                emit(&mut observer, layer, CaptureKind::Queries, one, positions, &[], q, c.n_head, hd);
            }
            let recall = cache.recall_blocks() > 0;
            let view = cache.view();
            let qs = &q[rows.start * qd..rows.end * qd];
            let os = &mut attn_out[rows.start * qd..rows.end * qd];
            let extras = ops::AttnExtras {
                sink_logits,
                sink_queries: rebased.then(|| &buf.sink_q[rows.start * qd..rows.end * qd]),
            };
            if recall {
                let lse = fit(&mut buf.recall.lse, seg.len * c.n_head);
                ops::attention_lse(qs, pos, view, &shape, extras, os, None, Some(lse), k.threads);
                recall_blocks(cache, qs, pos, &shape, os, &mut buf.recall, k);
            } else if want.contains(Capture::ATTENTION) {
                let cells = view.pos.len();
                let probs = fit(&mut buf.probs, seg.len * c.n_head * cells);
                ops::attention_with_sinks(qs, pos, view, &shape, extras, os, Some(probs), k.threads);
                if let Some(o) = observer.as_deref_mut() {
                    o.on_capture(Captured {
                        seq: seg.seq,
                        layer,
                        kind: CaptureKind::Attention,
                        positions: pos,
                        key_positions: view.pos,
                        heads: c.n_head,
                        dim: cells,
                        data: probs,
                    });
                }
            } else {
                ops::attention_with_sinks(qs, pos, view, &shape, extras, os, None, k.threads);
            }
        }
        self.o.forward(attn_out, n, out, k);
    }
}

/// Evicted-block recall for one segment: the heads of each query that share a KV head
/// also attend to the blocks that KV head's summaries rank highest for them
/// ([`lem_kv::recall`]), merged into `out` (which holds the window's attention, with its
/// log-sum-exp in `buf.lse`). Runs of queries that pick the same blocks share one read and
/// one kernel call; each query's result depends only on its own blocks, so batching does
/// not change it.
fn recall_blocks(
    cache: &mut lem_kv::LayerCache,
    qs: &[f32],
    pos: &[u32],
    shape: &AttnShape,
    out: &mut [f32],
    buf: &mut RecallBuffers,
    k: &mut Kernels<'_>,
) {
    let (n_head, hd) = (shape.n_head, shape.head_dim);
    let group = n_head / shape.n_kv;
    let (qd, gd) = (n_head * hd, group * hd);
    let one = AttnShape { n_head: group, n_kv: 1, mask: ops::Mask::Causal, ..*shape };
    let heads = |t: usize, g: usize| &qs[t * qd + g * gd..t * qd + (g + 1) * gd];
    for g in 0..shape.n_kv {
        let mut t = 0;
        while t < pos.len() {
            cache.select_recall(heads(t, g), g, pos[t], &mut buf.picked);
            let mut end = t + 1;
            while end < pos.len() {
                cache.select_recall(heads(end, g), g, pos[end], &mut buf.next);
                if buf.next != buf.picked {
                    break;
                }
                end += 1;
            }
            if !buf.picked.is_empty() {
                let n = end - t;
                let q_g = fit(&mut buf.q, n * gd);
                for i in 0..n {
                    q_g[i * gd..(i + 1) * gd].copy_from_slice(heads(t + i, g));
                }
                let view = cache.recalled(g, buf.picked.blocks());
                let r_out = fit(&mut buf.recall_out, n * gd);
                let r_lse = fit(&mut buf.recall_lse, n * group);
                let extras = ops::AttnExtras::default();
                ops::attention_lse(q_g, &pos[t..end], view, &one, extras, r_out, None, Some(r_lse), k.threads);
                for i in 0..n {
                    let row = (t + i) * qd + g * gd;
                    let l = (t + i) * n_head + g * group;
                    ops::merge_attention(
                        &mut out[row..row + gd],
                        &mut buf.lse[l..l + group],
                        &r_out[i * gd..(i + 1) * gd],
                        &r_lse[i * group..(i + 1) * group],
                        hd,
                    );
                }
            }
            t = end;
        }
    }
}

/// Sends each segment's rows of `data` (`heads * dim` per row) to the observer.
#[allow(clippy::too_many_arguments)]
fn emit(
    observer: &mut Option<&mut dyn Observer>,
    layer: usize,
    kind: CaptureKind,
    segments: &[Segment],
    positions: &[u32],
    key_positions: &[u32],
    data: &[f32],
    heads: usize,
    dim: usize,
) {
    let Some(o) = observer.as_deref_mut() else { return };
    let row = heads * dim;
    for seg in segments {
        let rows = seg.start..seg.start + seg.len;
        o.on_capture(Captured {
            seq: seg.seq,
            layer,
            kind,
            positions: &positions[rows.clone()],
            key_positions,
            heads,
            dim,
            data: &data[rows.start * row..rows.end * row],
        });
    }
}
