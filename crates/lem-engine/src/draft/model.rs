//! Drafters that run a model: a separate draft model, or the target's own first layers
//! (early exit). Both keep a cache of their own, follow the verifier's context by
//! rolling back to what it shares with their last view, and decode greedily on the
//! engine's thread pool.

use std::path::Path;
use std::sync::Arc;

use lem_kv::SeqCache;
use lem_model::{LoadOptions, LogitsRequest, Model, SeqInput, Workspace};
use lem_tokenizer::Tokenizer;

use super::Drafter;
use crate::engine::Engine;
use crate::error::EngineError;
use crate::sampling::argmax;

/// A draft model: loaded once, shared by every sequence that drafts with it (each keeps
/// its own cache). Equal when it is the same loaded model.
#[derive(Clone)]
pub struct DraftModel {
    inner: Arc<Loaded>,
}

struct Loaded {
    path: String,
    model: Model,
    /// Bytes of its weights on disk (what one token reads).
    bytes: u64,
}

impl std::fmt::Debug for DraftModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DraftModel").field("path", &self.inner.path).finish_non_exhaustive()
    }
}

impl PartialEq for DraftModel {
    fn eq(&self, other: &DraftModel) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl DraftModel {
    /// Loads the GGUF file or Hugging Face directory at `path` to draft for `target`.
    ///
    /// # Errors
    /// [`EngineError::Draft`] when its tokenizer is not the target's (the fingerprints
    /// differ: its token ids would mean other text) or its vocabulary is larger than the
    /// target's; loading errors as [`Engine::load`].
    pub fn load(path: &Path, target: &Engine) -> Result<DraftModel, EngineError> {
        let shown = path.display().to_string();
        let tokenizer = if path.is_dir() { Tokenizer::from_hf_dir(path)? } else { Tokenizer::from_gguf(path)? };
        if tokenizer.fingerprint() != target.tokenizer().fingerprint() {
            return Err(EngineError::Draft {
                path: shown,
                reason: format!(
                    "its tokenizer differs from the target's (fingerprint {} vs {}): drafts must use the target's token ids",
                    short(tokenizer.fingerprint()),
                    short(target.tokenizer().fingerprint())
                ),
            });
        }
        let opts = LoadOptions { context: Some(target.ctx_size()), ..LoadOptions::default() };
        let model = Model::load_with(path, &opts)?;
        if model.vocab() > target.model().vocab() {
            return Err(EngineError::Draft {
                path: shown,
                reason: format!(
                    "its vocabulary of {} tokens is larger than the target's {}",
                    model.vocab(),
                    target.model().vocab()
                ),
            });
        }
        let bytes = weight_bytes(path);
        Ok(DraftModel { inner: Arc::new(Loaded { path: shown, model, bytes }) })
    }

    /// Where it was loaded from.
    pub fn path(&self) -> &str {
        &self.inner.path
    }

    /// The model.
    pub fn model(&self) -> &Model {
        &self.inner.model
    }
}

/// Bytes of a GGUF file, or of the safetensors files of a directory.
fn weight_bytes(path: &Path) -> u64 {
    if !path.is_dir() {
        return std::fs::metadata(path).map_or(0, |m| m.len());
    }
    std::fs::read_dir(path)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

fn short(fp: &str) -> &str {
    &fp[..fp.len().min(12)]
}

/// Which model a [`ModelDrafter`] runs.
enum Source {
    /// The target's first `layers` layers.
    EarlyExit(usize),
    /// A separate model.
    Model(DraftModel),
}

impl Source {
    /// The model this source runs and how many of its layers.
    fn model<'a>(&'a self, engine: &'a Engine) -> (&'a Model, usize) {
        match self {
            Source::EarlyExit(l) => (engine.model(), *l),
            Source::Model(m) => (m.model(), m.model().n_layers()),
        }
    }
}

/// Greedy drafting with a model and a cache of its own.
pub(crate) struct ModelDrafter {
    source: Source,
    /// Made on the first proposal (an early exit's layout comes from the engine's model).
    cache: Option<SeqCache>,
    /// Tokens the cache holds.
    tokens: Vec<u32>,
    ws: Workspace,
}

impl ModelDrafter {
    /// Self-speculation through the first `layers` layers of `engine`'s model.
    pub(crate) fn early_exit(engine: &Engine, layers: usize) -> Result<ModelDrafter, EngineError> {
        let n = engine.model().n_layers();
        if layers == 0 || layers >= n {
            return Err(EngineError::Draft {
                path: engine.path().display().to_string(),
                reason: format!("an early exit needs 1 to {} layers of the model's {n}, not {layers}", n - 1),
            });
        }
        Ok(ModelDrafter::new(Source::EarlyExit(layers)))
    }

    /// Drafting with a separate model.
    pub(crate) fn model(model: DraftModel) -> ModelDrafter {
        ModelDrafter::new(Source::Model(model))
    }

    fn new(source: Source) -> ModelDrafter {
        ModelDrafter { source, cache: None, tokens: Vec::new(), ws: Workspace::default() }
    }

    /// Feeds `tokens` after what the cache holds, in batches; the logits of the last one
    /// are in `self.ws`.
    fn feed(&mut self, engine: &Engine, tokens: &[u32]) -> Result<(), EngineError> {
        let (model, layers) = self.source.model(engine);
        let cache = self.cache.as_mut().expect("made before feeding");
        let chunks: Vec<&[u32]> = tokens.chunks(model.max_batch()).collect();
        let last = chunks.len().saturating_sub(1);
        for (i, chunk) in chunks.into_iter().enumerate() {
            let logits = if i == last { LogitsRequest::Last } else { LogitsRequest::None };
            let mut input = [SeqInput { tokens: chunk, cache: &mut *cache, logits }];
            model.forward_layers(layers, &mut input, &mut self.ws, engine.threads())?;
            self.tokens.extend_from_slice(chunk);
        }
        Ok(())
    }
}

impl Drafter for ModelDrafter {
    /// Decoding is memory-bound: a draft token costs what its weights weigh against the
    /// target's (an early exit: its share of the layers).
    fn cost(&self, engine: &Engine) -> f64 {
        match &self.source {
            Source::EarlyExit(l) => *l as f64 / engine.model().n_layers() as f64,
            Source::Model(m) => {
                let target = weight_bytes(engine.path());
                if target == 0 { 1.0 } else { m.inner.bytes as f64 / target as f64 }
            }
        }
    }

    fn propose(&mut self, engine: &Engine, context: &[u32], max: usize, out: &mut Vec<u32>) -> Result<(), EngineError> {
        let (model, layers) = self.source.model(engine);
        let vocab = model.vocab();
        let target_vocab = engine.model().vocab();
        if context.is_empty() || context.len() + max > model.config().context_length.min(engine.ctx_size()) {
            return Ok(());
        }
        if self.cache.is_none() {
            self.cache = Some(SeqCache::new(&model.cache_layout_for_layers(layers)));
        }
        // Roll back to what the cache shares with the context, keeping at least the last
        // context token to feed (its logits give the first draft token).
        let common = self.tokens.iter().zip(context).take_while(|(a, b)| a == b).count();
        let keep = common.min(context.len() - 1);
        let cache = self.cache.as_mut().expect("made above");
        if cache.truncate(keep as u32).is_err() {
            // A sliding window has dropped what this roll-back needs: start over.
            *cache = SeqCache::new(&model.cache_layout_for_layers(layers));
            self.tokens.clear();
        } else {
            self.tokens.truncate(keep);
        }
        let from = self.tokens.len();
        self.feed(engine, &context[from..])?;
        for i in 0..max {
            let id = argmax(&self.ws.logits(0, vocab)[..vocab]);
            if id as usize >= target_vocab {
                break;
            }
            out.push(id);
            // Nothing follows the end of a generation.
            if engine.tokenizer().is_eog(id) {
                break;
            }
            if i + 1 < max {
                self.feed(engine, &[id])?;
            }
        }
        Ok(())
    }
}
