//! A sequence: token ids, KV cache and forward buffers.

use lem_kv::SeqCache;
use lem_model::{LogitsRequest, Observer, SeqInput, Workspace};

use crate::engine::Engine;
use crate::error::EngineError;

/// One sequence of tokens and the state the model built for them.
#[derive(Debug)]
pub struct Sequence {
    tokens: Vec<u32>,
    cache: SeqCache,
    ws: Workspace,
}

impl Sequence {
    pub(crate) fn new(cache: SeqCache) -> Sequence {
        Sequence { tokens: Vec::new(), cache, ws: Workspace::default() }
    }

    /// A sequence made from restored state (a snapshot, a session, prefix-cache blocks):
    /// `tokens` and a cache built for `engine`'s model that holds exactly those tokens.
    pub fn from_cache(engine: &Engine, tokens: Vec<u32>, cache: SeqCache) -> Result<Sequence, EngineError> {
        if cache.len() as usize != tokens.len() {
            return Err(EngineError::StateMismatch(format!(
                "cache holds {} positions for {} tokens",
                cache.len(),
                tokens.len()
            )));
        }
        if let Some(what) = engine.model().cache_layout().difference(cache.layout()) {
            return Err(EngineError::StateMismatch(format!("cache layout differs from the model's: {what}")));
        }
        if tokens.len() > engine.ctx_size() {
            return Err(EngineError::PromptTooLong { tokens: tokens.len(), ctx: engine.ctx_size() });
        }
        Ok(Sequence { tokens, cache, ws: Workspace::default() })
    }

    /// Token ids the cache holds state for.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether the sequence is empty.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The KV cache.
    pub fn cache(&self) -> &SeqCache {
        &self.cache
    }

    /// Bytes of KV state held.
    pub fn kv_bytes(&self) -> usize {
        self.cache.bytes_used()
    }

    /// Bytes the sequence holds in memory: its KV cache as allocated (reserved room
    /// included) and its token ids. Forward buffers are not counted; [`Sequence::compact`]
    /// frees them.
    pub fn resident_bytes(&self) -> usize {
        self.cache.bytes_allocated() + self.tokens.capacity() * 4
    }

    /// Frees everything a sequence that is only kept (for reuse, not fed now) does not
    /// need: room reserved beyond its tokens and the forward buffers. Feeding it again
    /// reallocates them.
    pub fn compact(&mut self) {
        self.cache.shrink_to_fit();
        self.tokens.shrink_to_fit();
        self.ws = Workspace::default();
    }

    /// Makes room for `total` tokens so that feeding up to there does not allocate.
    pub fn reserve(&mut self, total: usize) {
        self.tokens.reserve(total.saturating_sub(self.tokens.len()));
        self.cache.reserve(total);
    }

    /// Appends `tokens`, running them through the model in batches, and returns the
    /// logits of the last one.
    pub fn feed(&mut self, engine: &Engine, tokens: &[u32]) -> Result<&[f32], EngineError> {
        self.feed_observed(engine, tokens, None)
    }

    /// [`Sequence::feed`] with `observer` watching every forward pass (see
    /// [`lem_model::Observer`]); with `None` it is exactly `feed`.
    pub fn feed_observed(
        &mut self,
        engine: &Engine,
        tokens: &[u32],
        observer: Option<&mut dyn Observer>,
    ) -> Result<&[f32], EngineError> {
        if tokens.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        self.feed_inner(engine, tokens, LogitsRequest::Last, &mut |_, _| {}, observer)?;
        let vocab = engine.model().vocab();
        Ok(self.ws.logits(0, vocab))
    }

    /// Appends `tokens` in batches; with [`LogitsRequest::All`], `on_logits(position,
    /// row)` sees every position's logits; with `Last`, only the final batch keeps logits.
    pub fn feed_each(
        &mut self,
        engine: &Engine,
        tokens: &[u32],
        request: LogitsRequest,
        on_logits: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<(), EngineError> {
        self.feed_inner(engine, tokens, request, on_logits, None)
    }

    fn feed_inner(
        &mut self,
        engine: &Engine,
        tokens: &[u32],
        request: LogitsRequest,
        on_logits: &mut dyn FnMut(usize, &[f32]),
        mut observer: Option<&mut dyn Observer>,
    ) -> Result<(), EngineError> {
        let total = self.tokens.len() + tokens.len();
        if total > engine.ctx_size() {
            return Err(EngineError::PromptTooLong { tokens: total, ctx: engine.ctx_size() });
        }
        let model = engine.model();
        let vocab = model.vocab();
        let chunks: Vec<&[u32]> = tokens.chunks(model.max_batch()).collect();
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.into_iter().enumerate() {
            let logits = match request {
                LogitsRequest::All => LogitsRequest::All,
                LogitsRequest::Last if i == last => LogitsRequest::Last,
                _ => LogitsRequest::None,
            };
            let first = self.tokens.len();
            let mut input = [SeqInput { tokens: chunk, cache: &mut self.cache, logits }];
            // Reborrow for this call only (shortening the trait object's lifetime too).
            let obs: Option<&mut dyn Observer> = match &mut observer {
                Some(o) => Some(&mut **o),
                None => None,
            };
            model.forward(&mut input, &mut self.ws, engine.threads(), obs)?;
            self.tokens.extend_from_slice(chunk);
            if logits == LogitsRequest::All {
                for (j, row) in self.ws.logits(0, vocab).chunks_exact(vocab).enumerate() {
                    on_logits(first + j, row);
                }
            }
        }
        Ok(())
    }

    /// Rolls back to the first `len` tokens.
    pub fn truncate(&mut self, len: usize) -> Result<(), EngineError> {
        if len < self.tokens.len() {
            self.cache.truncate(len as u32)?;
            self.tokens.truncate(len);
        }
        Ok(())
    }

    /// An independent copy of this sequence (tokens and cache).
    pub fn fork(&self) -> Sequence {
        Sequence { tokens: self.tokens.clone(), cache: self.cache.fork(), ws: Workspace::default() }
    }

    /// Token ids and cache, mutably, for the batch scheduler (which runs many sequences
    /// through one forward and keeps the two in step itself).
    pub(crate) fn parts_mut(&mut self) -> (&mut Vec<u32>, &mut SeqCache) {
        (&mut self.tokens, &mut self.cache)
    }

    /// Number of leading tokens shared with `ids`.
    pub fn common_prefix(&self, ids: &[u32]) -> usize {
        self.tokens.iter().zip(ids).take_while(|(a, b)| a == b).count()
    }
}
