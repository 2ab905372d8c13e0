//! Routed (mixture-of-experts) feed-forward block.
//!
//! A router scores every expert per token ([`Gating`]: softmax or sigmoid over all
//! experts, or softmax over the selected ones), each token keeps its top-k experts
//! (optionally renormalising and scaling their weights), and its output is the weighted
//! sum of those experts' gated MLPs, plus an optional shared expert that every token
//! runs (scaled by its own sigmoid gate where it has one). Tokens are grouped by expert:
//! each active expert runs one product over the rows routed to it, and each token's
//! weighted sum runs in rank order. Matrix rows are computed the same way whatever else
//! is in the product (the kernels' invariant), so the result does not depend on how many
//! tokens travel together or which other tokens picked the same expert: prefill, batched
//! decode and verification agree bit for bit. A one-token step reads only its selected
//! experts' weights.

use lem_kernels::ops;

use super::mlp::MlpBuffers;
use super::{Activation, GatedMlp, Kernels, Linear, Loader, fit};
use crate::error::ModelError;
use crate::names::{Role, TensorId};

/// How router logits become expert weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gating {
    /// Softmax over all experts, top-k of the probabilities (Mixtral, Qwen MoE).
    Softmax,
    /// Sigmoid of each logit, top-k of those (DeepSeek V3 style).
    Sigmoid,
    /// Top-k of the logits, then a softmax over the k selected (gpt-oss).
    SoftmaxSelected,
}

/// Shape and rules of one routed block.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Routing {
    /// Experts.
    pub n_expert: usize,
    /// Experts per token (top-k).
    pub n_expert_used: usize,
    /// Inner size of one expert.
    pub n_ff_exp: usize,
    /// Renormalise the top-k weights to sum to 1.
    pub norm_topk: bool,
    /// How logits become weights.
    pub gating: Gating,
    /// Multiplier on the final top-k weights (1 for none).
    pub weights_scale: f32,
    /// Inner size of the shared expert every token runs, when the block has one.
    pub shared_ff: Option<usize>,
}

impl Routing {
    /// Softmax routing without shared expert or scale.
    pub fn softmax(n_expert: usize, n_expert_used: usize, n_ff_exp: usize, norm_topk: bool) -> Routing {
        Routing {
            n_expert,
            n_expert_used,
            n_ff_exp,
            norm_topk,
            gating: Gating::Softmax,
            weights_scale: 1.0,
            shared_ff: None,
        }
    }
}

/// The expert every token runs beside the routed ones, with an optional per-token
/// sigmoid gate (`[1, n_embd]`: Qwen 2 MoE).
#[derive(Debug, Clone)]
struct SharedExpert {
    mlp: GatedMlp,
    gate: Option<Linear>,
}

/// `sum_r w_r * expert_{e_r}(x)` over the token's top-k experts `e_r`, plus the shared
/// expert when there is one.
#[derive(Debug, Clone)]
pub struct RoutedMlp {
    router: Linear,
    experts: Vec<GatedMlp>,
    shared: Option<SharedExpert>,
    routing: Routing,
    /// Per-expert multipliers on the experts' outputs (Gemma 4's `ffn_down_exps.scale`),
    /// where stored.
    expert_scale: Option<Vec<f32>>,
}

/// Buffers the routed block reuses across calls.
#[derive(Debug, Default)]
pub struct MoeBuffers {
    /// Router scores, `n * n_expert`.
    probs: Vec<f32>,
    /// Selected experts, `n * k`, by rank.
    chosen: Vec<usize>,
    /// Their weights, `n * k`.
    weights: Vec<f32>,
    /// Slots (`token * k + rank`) routed to the expert being run.
    slots: Vec<usize>,
    /// Gathered input rows of one expert.
    xg: Vec<f32>,
    /// One expert's output rows.
    yg: Vec<f32>,
    /// Every slot's expert output, `n * k * n_embd`.
    ys: Vec<f32>,
    /// The shared expert's gate logits, `n`.
    sg: Vec<f32>,
    mlp: MlpBuffers,
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

impl RoutedMlp {
    /// Loads layer `i`'s router (`[n_expert, n_embd]`, its bias where stored), experts
    /// (their biases where stored) and shared expert.
    pub fn load(
        l: &mut Loader<'_>,
        i: usize,
        n_embd: usize,
        routing: Routing,
        act: Activation,
    ) -> Result<RoutedMlp, ModelError> {
        let Routing { n_expert, n_ff_exp, .. } = routing;
        let router = Linear::load(l, TensorId::layer(Role::FfnGateInp, i), n_embd, n_expert)?;
        let mut experts = Vec::with_capacity(n_expert);
        for e in 0..n_expert {
            let mut m = |role: Role, rows: usize, cols: usize| -> Result<Linear, ModelError> {
                let id = TensorId::expert(role, i, e);
                let w = l.expert_matrix(id, n_expert, rows, cols)?;
                let b = if l.has(id.bias()) { Some(l.expert_vector(id.bias(), n_expert, rows)?) } else { None };
                Ok(Linear::with_bias(w, b))
            };
            let gate = m(Role::FfnGateExps, n_ff_exp, n_embd)?;
            let up = m(Role::FfnUpExps, n_ff_exp, n_embd)?;
            let down = m(Role::FfnDownExps, n_embd, n_ff_exp)?;
            experts.push(GatedMlp::from_parts(gate, up, down, act));
        }
        let shared = match routing.shared_ff {
            None => None,
            Some(ff) => {
                let id = |r: Role| TensorId::layer(r, i);
                let mlp = GatedMlp::from_parts(
                    Linear::load(l, id(Role::FfnGateShexp), n_embd, ff)?,
                    Linear::load(l, id(Role::FfnUpShexp), n_embd, ff)?,
                    Linear::load(l, id(Role::FfnDownShexp), ff, n_embd)?,
                    act,
                );
                let gate = if l.has(id(Role::FfnGateInpShexp)) {
                    Some(Linear::load(l, id(Role::FfnGateInpShexp), n_embd, 1)?)
                } else {
                    None
                };
                Some(SharedExpert { mlp, gate })
            }
        };
        let scale_id = TensorId::layer(Role::FfnDownExpsScale, i);
        let expert_scale = if l.has(scale_id) { Some(l.vector(scale_id, n_expert)?) } else { None };
        Ok(RoutedMlp { router, experts, shared, routing, expert_scale })
    }

    /// The block's routing shape.
    pub fn routing(&self) -> Routing {
        self.routing
    }

    /// Parameters of the block: all of them, and those one token uses (router, its
    /// top-k experts, the shared expert).
    pub fn param_counts(&self) -> (u64, u64) {
        let mlp = |m: &GatedMlp| m.param_count();
        let router = self.router.param_count();
        let shared = self.shared.as_ref().map_or(0, |s| mlp(&s.mlp) + s.gate.as_ref().map_or(0, Linear::param_count));
        let per_expert = self.experts.first().map_or(0, mlp);
        let all: u64 = self.experts.iter().map(mlp).sum();
        let router = router + self.expert_scale.as_ref().map_or(0, |s| s.len() as u64);
        (router + shared + all, router + shared + per_expert * self.routing.n_expert_used as u64)
    }

    /// Picks each token's experts and their weights from the router scores.
    fn route(&self, n: usize, buf: &mut MoeBuffers) {
        let (ne, top) = (self.routing.n_expert, self.routing.n_expert_used);
        buf.chosen.clear();
        let weights = fit(&mut buf.weights, n * top);
        for (t, p) in buf.probs.chunks_exact_mut(ne).enumerate().take(n) {
            match self.routing.gating {
                Gating::Softmax => ops::softmax(p),
                Gating::Sigmoid => p.iter_mut().for_each(|v| *v = sigmoid(*v)),
                Gating::SoftmaxSelected => {}
            }
            // Top-k by score, ties to the lower expert index.
            let start = buf.chosen.len();
            for r in 0..top {
                let mut best = usize::MAX;
                for e in 0..ne {
                    if buf.chosen[start..start + r].contains(&e) {
                        continue;
                    }
                    if best == usize::MAX || p[e] > p[best] {
                        best = e;
                    }
                }
                buf.chosen.push(best);
                weights[t * top + r] = p[best];
            }
            let w = &mut weights[t * top..(t + 1) * top];
            if self.routing.gating == Gating::SoftmaxSelected {
                ops::softmax(w);
            }
            if self.routing.norm_topk {
                // llama.cpp clamps the sum to f16's smallest normal against a zero sum.
                let sum: f32 = w.iter().sum::<f32>().max(6.103_515_6e-5);
                w.iter_mut().for_each(|v| *v /= sum);
            }
            if self.routing.weights_scale != 1.0 {
                w.iter_mut().for_each(|v| *v *= self.routing.weights_scale);
            }
            if let Some(scale) = &self.expert_scale {
                w.iter_mut().zip(&buf.chosen[start..]).for_each(|(v, &e)| *v *= scale[e]);
            }
        }
    }

    /// Applies the block to `n` rows of `x`, writing `out`.
    pub fn forward(&self, x: &[f32], n: usize, out: &mut [f32], buf: &mut MoeBuffers, k: &mut Kernels<'_>) {
        self.forward_routed(x, x, n, out, buf, k);
    }

    /// [`RoutedMlp::forward`] with the router scoring `router_x` instead of `x` (Gemma 4
    /// routes from a differently normalised stream than the experts see).
    pub fn forward_routed(
        &self,
        x: &[f32],
        router_x: &[f32],
        n: usize,
        out: &mut [f32],
        buf: &mut MoeBuffers,
        k: &mut Kernels<'_>,
    ) {
        let (ne, top) = (self.routing.n_expert, self.routing.n_expert_used);
        let d = x.len() / n.max(1);
        let probs = fit(&mut buf.probs, n * ne);
        self.router.forward(router_x, n, probs, k);
        self.route(n, buf);
        // One product per active expert over the rows routed to it, in ascending expert
        // order; each slot's output lands in its own row of `ys`.
        let ys = fit(&mut buf.ys, n * top * d);
        for (e, expert) in self.experts.iter().enumerate() {
            buf.slots.clear();
            buf.slots.extend(buf.chosen.iter().enumerate().filter(|(_, c)| **c == e).map(|(s, _)| s));
            let m = buf.slots.len();
            if m == 0 {
                continue;
            }
            let xg = fit(&mut buf.xg, m * d);
            for (row, &s) in xg.chunks_exact_mut(d).zip(&buf.slots) {
                let t = s / top;
                row.copy_from_slice(&x[t * d..(t + 1) * d]);
            }
            let yg = fit(&mut buf.yg, m * d);
            expert.forward(xg, m, yg, &mut buf.mlp, k);
            for (row, &s) in yg.chunks_exact(d).zip(&buf.slots) {
                ys[s * d..(s + 1) * d].copy_from_slice(row);
            }
        }
        // Each token's weighted sum, in rank order.
        let weights = &buf.weights;
        for (t, o) in out.chunks_exact_mut(d).enumerate().take(n) {
            o.fill(0.0);
            for r in 0..top {
                let (s, w) = (t * top + r, weights[t * top + r]);
                for (a, &y) in o.iter_mut().zip(&ys[s * d..(s + 1) * d]) {
                    *a += w * y;
                }
            }
        }
        // The shared expert over every row, gated per token, added last.
        if let Some(sh) = &self.shared {
            let yg = fit(&mut buf.yg, n * d);
            sh.mlp.forward(x, n, yg, &mut buf.mlp, k);
            let sg = fit(&mut buf.sg, n);
            match &sh.gate {
                Some(g) => {
                    g.forward(x, n, sg, k);
                    sg.iter_mut().for_each(|v| *v = sigmoid(*v));
                }
                None => sg.fill(1.0),
            }
            for ((o, y), &g) in out.chunks_exact_mut(d).zip(yg.chunks_exact(d)).zip(sg.iter()) {
                for (a, &v) in o.iter_mut().zip(y) {
                    *a += v * g;
                }
            }
        }
    }
}
