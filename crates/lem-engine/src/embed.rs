//! Embeddings: one vector per input from the model's final hidden states (after the
//! final norm, before the output projection), pooled and L2-normalised.
//!
//! Every input runs on a fresh sequence of its own (nobody's KV state is read or
//! touched), and several inputs share each forward call. Because the model treats every
//! row of a batch on its own and attention runs per sequence, a vector does not depend on
//! what else was in the batch: [`Engine::embed`] of a list equals, bit for bit, the
//! embeddings of its inputs one by one.

use lem_model::{LogitsRequest, ModelError, SeqInput, Workspace};

use crate::engine::Engine;
use crate::error::EngineError;

/// How the hidden states of an input's tokens become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pooling {
    /// The mean over every token (position order, summed in f64).
    #[default]
    Mean,
    /// The last token's state (for causal models trained that way).
    Last,
    /// The first token's state (`CLS`-style).
    First,
}

impl Pooling {
    /// The name `--pooling` and the docs use.
    pub fn name(self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::Last => "last",
            Pooling::First => "first",
        }
    }
}

impl std::str::FromStr for Pooling {
    type Err = String;

    fn from_str(s: &str) -> Result<Pooling, String> {
        match s {
            "mean" => Ok(Pooling::Mean),
            "last" => Ok(Pooling::Last),
            "first" | "cls" => Ok(Pooling::First),
            other => Err(format!("unknown pooling `{other}`: use mean, last or first")),
        }
    }
}

/// One input's progress through the forward calls.
struct Pending {
    /// Index into the inputs.
    input: usize,
    /// Tokens fed so far.
    fed: usize,
    cache: lem_kv::SeqCache,
    /// Mean: the running sum; Last/First: the chosen row.
    acc: Vec<f64>,
}

impl Engine {
    /// The final hidden state of every token of `tokens` (after the final norm), as
    /// `tokens.len()` rows of `n_embd` values, from a fresh sequence.
    pub fn hidden_states(&self, tokens: &[u32]) -> Result<Vec<f32>, EngineError> {
        self.check_embed_input(0, tokens)?;
        let d = self.model().config().n_embd;
        let mut cache = self.model().new_cache();
        let mut ws = Workspace::default();
        let mut out = Vec::with_capacity(tokens.len() * d);
        for chunk in tokens.chunks(self.model().max_batch().max(1)) {
            let mut input = [SeqInput { tokens: chunk, cache: &mut cache, logits: LogitsRequest::Hidden }];
            self.model().forward(&mut input, &mut ws, self.threads(), None)?;
            out.extend_from_slice(ws.hidden(0, d));
        }
        Ok(out)
    }

    /// One L2-normalised vector of `n_embd` values per input, pooled as asked. Inputs are
    /// checked before anything runs: an empty input, one longer than the context, or a
    /// token id outside the vocabulary is an error naming the input.
    pub fn embed(&self, inputs: &[Vec<u32>], pooling: Pooling) -> Result<Vec<Vec<f32>>, EngineError> {
        for (i, tokens) in inputs.iter().enumerate() {
            self.check_embed_input(i, tokens)?;
        }
        let model = self.model();
        let d = model.config().n_embd;
        let budget = model.max_batch().max(1);
        let mut out: Vec<Vec<f32>> = vec![Vec::new(); inputs.len()];
        let mut ws = Workspace::default();
        let mut next = 0;
        let mut active: Vec<Pending> = Vec::new();
        while next < inputs.len() || !active.is_empty() {
            // Fill the call: unfinished inputs first, then new ones, up to the budget.
            let mut planned = 0;
            let mut pieces = Vec::new();
            for (a, p) in active.iter().enumerate() {
                let n = (inputs[p.input].len() - p.fed).min(budget - planned);
                if n == 0 {
                    break;
                }
                pieces.push((a, n));
                planned += n;
            }
            while planned < budget && next < inputs.len() {
                let n = inputs[next].len().min(budget - planned);
                active.push(Pending { input: next, fed: 0, cache: model.new_cache(), acc: vec![0.0; d] });
                pieces.push((active.len() - 1, n));
                planned += n;
                next += 1;
            }
            {
                let mut plan = pieces.iter().peekable();
                let mut batch: Vec<SeqInput<'_>> = Vec::with_capacity(pieces.len());
                for (a, p) in active.iter_mut().enumerate() {
                    let Some(&(_, n)) = plan.next_if(|q| q.0 == a) else { continue };
                    batch.push(SeqInput {
                        tokens: &inputs[p.input][p.fed..p.fed + n],
                        cache: &mut p.cache,
                        logits: LogitsRequest::Hidden,
                    });
                }
                model.forward(&mut batch, &mut ws, self.threads(), None)?;
            }
            for (b, &(a, n)) in pieces.iter().enumerate() {
                let p = &mut active[a];
                let rows = ws.hidden(b, d);
                let len = inputs[p.input].len();
                for (j, row) in rows.chunks_exact(d).enumerate() {
                    let pos = p.fed + j;
                    let take = match pooling {
                        Pooling::Mean => {
                            p.acc.iter_mut().zip(row).for_each(|(s, &v)| *s += f64::from(v));
                            false
                        }
                        Pooling::Last => pos + 1 == len,
                        Pooling::First => pos == 0,
                    };
                    if take {
                        p.acc.iter_mut().zip(row).for_each(|(s, &v)| *s = f64::from(v));
                    }
                }
                p.fed += n;
            }
            active.retain_mut(|p| {
                let len = inputs[p.input].len();
                if p.fed < len {
                    return true;
                }
                if pooling == Pooling::Mean {
                    p.acc.iter_mut().for_each(|s| *s /= len as f64);
                }
                out[p.input] = normalize(&p.acc);
                false
            });
        }
        Ok(out)
    }

    fn check_embed_input(&self, i: usize, tokens: &[u32]) -> Result<(), EngineError> {
        if tokens.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        if tokens.len() > self.ctx_size() {
            return Err(EngineError::PromptTooLong { tokens: tokens.len(), ctx: self.ctx_size() });
        }
        let vocab = self.model().config().vocab;
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(
                ModelError::Input(format!("input {i}: token id {bad} is outside the vocabulary of {vocab}")).into()
            );
        }
        Ok(())
    }
}

/// `v / |v|` in f32 (a zero vector stays zero).
fn normalize(v: &[f64]) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let scale = if norm > 0.0 { 1.0 / norm } else { 0.0 };
    v.iter().map(|x| (x * scale) as f32).collect()
}
