//! Parameter counts of a loaded model: all of its weights, and those one token uses (a
//! routed block runs only its router, shared expert and top-k experts).

use super::Model;

/// How many parameters a model holds and how many one token's forward uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamCounts {
    /// Every weight, bias, norm and sink element (a tied output projection once).
    pub total: u64,
    /// Those a token's forward reads: `total` less the experts it is not routed to.
    pub active: u64,
}

impl Model {
    /// The model's parameter counts.
    pub fn param_counts(&self) -> ParamCounts {
        let table = self.embedding.table();
        let embd = (table.rows() * table.cols()) as u64;
        let output =
            if std::sync::Arc::ptr_eq(table, self.output.weight_arc()) { 0 } else { self.output.param_count() };
        let per_layer = self.per_layer.as_ref().map_or(0, |p| p.param_count());
        let fixed = embd + output + self.final_norm.param_count() + per_layer;
        let (all, active) = self.blocks.iter().map(|b| b.param_counts()).fold((0, 0), |(a, b), (c, d)| (a + c, b + d));
        ParamCounts { total: fixed + all, active: fixed + active }
    }
}
