//! Continuous batching: many sequences generate at once and share each forward pass.
//!
//! A [`Batcher`] holds up to [`BatchConfig::max_active`] generating sequences. Every call
//! to [`Batcher::step`] runs exactly one [`lem_model::Model::forward`] over
//!
//! - one token for every sequence that is decoding (the token it sampled last step), and
//! - prompt chunks of the sequences that are still prefilling, at most
//!   [`BatchConfig::prefill_chunk`] prompt tokens per step in all, oldest job first (so a
//!   long prompt delays the decoding sequences by one chunk at a time, not by its whole
//!   prefill),
//!
//! then samples the next token of every sequence that got logits, each with its own
//! [`Sampler`](crate::sampling::Sampler) (own parameters and seed), and hands the text to the job's [`TokenSink`].
//! Jobs join at any step ([`Batcher::admit`]) and leave the batch as soon as they finish;
//! nobody waits for the slowest sequence.
//!
//! Per sequence, the result is what [`generate`](crate::generate) gives for the same
//! sequence, prompt and request: both drive the same [`Decoder`] (sampling history,
//! end-of-generation, stop-string, length and context rules, streamed text, timings), and
//! feed the same tokens in the same order. The matrix products treat every row of a batch on its own and
//! attention runs per sequence over its own cache, so greedy output is identical
//! whatever else is in the batch.
//!
//! A job whose request has a `draft` speculates here as in `generate`: its
//! [`Speculator`] drafts before the step, the job feeds its pending token plus the
//! draft with logits for every position, and the decoder keeps what it agrees with, so
//! sequences with and without drafts share one forward and each produces exactly what
//! it would alone. Draft tokens use the batch room that decoding tokens and the
//! scheduled prompt chunks leave.
//!
//! A sink that says it is cancelled ([`TokenSink::is_cancelled`], e.g. the client went
//! away) or that answers [`ControlFlow::Break`] ends its job at once with
//! [`FinishReason::Cancelled`](crate::FinishReason::Cancelled); its sequence leaves the batch before the next forward.
//!
//! The batcher is single-threaded and synchronous: the caller (for example a server's
//! engine thread) owns it, admits jobs and calls `step` while [`Batcher::is_idle`] is
//! false. Finished jobs come back from `step` with their [`Sequence`], so the caller can
//! keep the KV state (a prefix cache, a session). A sink also hears of every prefill step
//! ([`TokenSink::prefilled`]), so a prefix cache can store blocks while a sliding window
//! still holds them.

use std::ops::ControlFlow;

use lem_model::{LogitsRequest, SeqInput, Workspace};

use crate::decode::{DecodeEvent, Decoder};
use crate::draft::Speculator;
use crate::engine::Engine;
use crate::error::EngineError;
use crate::generate::{GenerateRequest, Generation};
use crate::sampling::TokenLogprobs;
use crate::sequence::Sequence;

/// How a [`Batcher`] schedules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    /// Most sequences in the batch at once (at least 1).
    pub max_active: usize,
    /// Most prompt tokens prefilled per step, over all prefilling sequences (at least 1).
    pub prefill_chunk: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig { max_active: 16, prefill_chunk: 256 }
    }
}

/// Identifies a job within one [`Batcher`].
pub type JobId = u64;

/// What a job's sink is told while it runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BatchEvent<'a> {
    /// A token was sampled (end-of-generation tokens are not reported). `text` is the text
    /// that became final with it: possibly empty (half a UTF-8 character, or the possible
    /// start of a stop string is held back).
    Token {
        /// The token id.
        id: u32,
        /// Text released by this token.
        text: &'a str,
        /// Log-probabilities, when the job asked for them.
        logprobs: Option<&'a TokenLogprobs>,
    },
    /// Held-back text released when generation ends without a stop string.
    Tail {
        /// The text.
        text: &'a str,
    },
}

/// Receives a job's output as it is produced.
pub trait TokenSink: Send {
    /// Called for every event; [`ControlFlow::Break`] cancels the job.
    fn event(&mut self, event: BatchEvent<'_>) -> ControlFlow<()>;

    /// Whether the receiver went away; checked before every step, so a job is cancelled
    /// even while it is still prefilling.
    fn is_cancelled(&self) -> bool {
        false
    }

    /// Called after every step that fed part of the job's prompt, with the sequence
    /// holding everything fed so far. A prefix cache stores here the blocks the step
    /// completed: every layer still holds their positions now (a step feeds at most one
    /// batch, and a sliding-window ring keeps the window plus one batch), while by the end
    /// of a long prompt a sliding window has dropped its early positions.
    fn prefilled(&mut self, _engine: &Engine, _seq: &Sequence) {}
}

/// Work for the batcher.
pub struct Job {
    /// The sequence to continue: empty, or holding a reused prefix (from a cache, a
    /// session). `prompt_ids` are fed after what it holds, as [`generate`](crate::generate)
    /// does.
    pub seq: Sequence,
    /// Tokens to feed before generating; may be empty when `seq` is not (generation then
    /// continues from the sequence's last token).
    pub prompt_ids: Vec<u32>,
    /// Token budget, sampling and stop strings.
    pub request: GenerateRequest,
    /// Report the log-probabilities of each sampled token and of this many most likely
    /// alternatives.
    pub top_logprobs: Option<usize>,
    /// Where the output goes.
    pub sink: Box<dyn TokenSink>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("seq_len", &self.seq.len())
            .field("prompt_ids", &self.prompt_ids.len())
            .field("request", &self.request)
            .finish_non_exhaustive()
    }
}

/// A job that left the batch.
pub struct Finished {
    /// The id [`Batcher::admit`] gave it.
    pub id: JobId,
    /// The sequence, holding the state of everything fed (prompt and generated tokens,
    /// except the last sampled one, which was never fed).
    pub seq: Sequence,
    /// The generation, or why it failed.
    pub result: Result<Generation, EngineError>,
    /// Index (into the request's `stop`) of the stop string that ended generation.
    pub stopped_by: Option<usize>,
    /// The job's sink, back to the caller (to send a final message, for instance).
    pub sink: Box<dyn TokenSink>,
}

impl std::fmt::Debug for Finished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Finished").field("id", &self.id).field("result", &self.result).finish_non_exhaustive()
    }
}

/// One generating sequence.
struct Slot {
    id: JobId,
    seq: Sequence,
    /// Prompt tokens to feed, and how many were fed.
    prompt: Vec<u32>,
    fed: usize,
    /// What to feed next while decoding: the pending token, then any draft tokens.
    input: Vec<u32>,
    /// Draft tokens at the end of `input` (fed this step, verified by its logits).
    drafted: usize,
    decoding: bool,
    /// Drafting, when the request speculates.
    spec: Option<Speculator<'static>>,
    /// Sampling, streaming, stop strings, limits and timings: the same state machine
    /// [`generate`](crate::generate) drives.
    decoder: Decoder,
    sink: Box<dyn TokenSink>,
    error: Option<EngineError>,
}

impl Slot {
    /// Samples from the rows of logits of the pending token and the draft tokens after
    /// it (all fed already), streams the result, and rolls the draft back to what was
    /// accepted.
    fn on_logits(&mut self, rows: &[f32], vocab: usize) {
        let sink = &mut self.sink;
        let mut on_event = |ev: DecodeEvent<'_>| match ev {
            DecodeEvent::Token { eog: true, .. } => ControlFlow::Continue(()),
            DecodeEvent::Token { id, text, logprobs, .. } => sink.event(BatchEvent::Token { id, text, logprobs }),
            DecodeEvent::Tail { text } => sink.event(BatchEvent::Tail { text }),
        };
        let drafted = std::mem::take(&mut self.drafted);
        let accepted_before = self.decoder.stats().accepted;
        let out = match self.decoder.step(rows, vocab, self.seq.tokens(), drafted, &mut on_event) {
            Ok(out) => out,
            Err(e) => {
                self.error = Some(e);
                return;
            }
        };
        if drafted > 0 {
            if let Err(e) = self.seq.truncate(self.seq.len() - drafted + out.keep) {
                self.error = Some(e);
                return;
            }
            if let Some(spec) = self.spec.as_mut() {
                spec.settle(drafted, self.decoder.stats().accepted - accepted_before);
            }
        }
        if let Some(id) = out.next {
            self.input.clear();
            self.input.push(id);
        }
    }

    /// Drafts after the pending token, within `room` tokens of the batch.
    fn draft(&mut self, engine: &Engine, room: usize) {
        let Some(spec) = self.spec.as_mut() else {
            return;
        };
        let max_draft = engine.model().max_batch().saturating_sub(1);
        let cap = self.decoder.draft_room(self.seq.len(), max_draft).min(room);
        self.input.truncate(1);
        match spec.draft(engine, self.seq.tokens(), cap, &mut self.input) {
            Ok(n) => self.drafted = n,
            Err(e) => {
                self.input.truncate(1);
                self.error = Some(e);
            }
        }
    }

    fn done(&self) -> bool {
        self.decoder.is_done() || self.error.is_some()
    }

    /// Flushes held-back text and builds the result.
    fn finalize(mut self) -> Finished {
        let sink = &mut self.sink;
        let d = self.decoder.finish(self.prompt.len(), &mut |ev| match ev {
            DecodeEvent::Tail { text } => sink.event(BatchEvent::Tail { text }),
            DecodeEvent::Token { .. } => ControlFlow::Continue(()),
        });
        let stopped_by = d.stopped_by;
        let result = match self.error.take() {
            Some(e) => Err(e),
            None => Ok(Generation {
                prompt_ids: self.prompt,
                ids: d.ids,
                text: d.text,
                finish_reason: d.finish_reason,
                timings: d.timings,
                speculation: d.speculation,
            }),
        };
        Finished { id: self.id, seq: self.seq, result, stopped_by, sink: self.sink }
    }
}

/// The continuous-batching scheduler (see the module documentation).
pub struct Batcher {
    config: BatchConfig,
    slots: Vec<Slot>,
    /// Jobs that failed on admission, reported by the next step.
    rejected: Vec<Finished>,
    /// Forward buffers shared by every step.
    ws: Workspace,
    /// (slot index, tokens this step, logits request), in slot order.
    plan: Vec<(usize, usize, LogitsRequest)>,
    next_id: JobId,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").field("config", &self.config).field("active", &self.slots.len()).finish()
    }
}

impl Batcher {
    /// An empty batcher.
    pub fn new(config: BatchConfig) -> Batcher {
        let config = BatchConfig { max_active: config.max_active.max(1), prefill_chunk: config.prefill_chunk.max(1) };
        Batcher {
            config,
            slots: Vec::new(),
            rejected: Vec::new(),
            ws: Workspace::default(),
            plan: Vec::new(),
            next_id: 0,
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> BatchConfig {
        self.config
    }

    /// Sequences in the batch.
    pub fn active(&self) -> usize {
        self.slots.len()
    }

    /// Whether another job can be admitted now.
    pub fn has_capacity(&self) -> bool {
        self.slots.len() < self.config.max_active
    }

    /// Whether there is nothing to step (no sequence and no rejection to report).
    pub fn is_idle(&self) -> bool {
        self.slots.is_empty() && self.rejected.is_empty()
    }

    /// Bytes of KV state held by the sequences in the batch.
    pub fn kv_bytes(&self) -> usize {
        self.slots.iter().map(|s| s.seq.kv_bytes()).sum()
    }

    /// Adds a job to the batch; its prefill starts with the next step. A job that cannot
    /// run (empty prompt, prompt over the context, invalid sampling parameters) still gets
    /// an id, and comes back from the next [`Batcher::step`] with the error.
    ///
    /// Returns the job unchanged when the batch is full ([`Batcher::has_capacity`]).
    pub fn admit(&mut self, engine: &Engine, job: Job) -> Result<JobId, Box<Job>> {
        if !self.has_capacity() {
            return Err(Box::new(job));
        }
        let id = self.next_id;
        self.next_id += 1;
        let Job { mut seq, mut prompt_ids, request, top_logprobs, sink } = job;
        let prepared = prepare(engine, &mut seq, &mut prompt_ids, &request, top_logprobs).and_then(|decoder| {
            let spec = request.draft.as_ref().map(|d| Speculator::from_config(engine, d)).transpose()?;
            Ok((decoder, spec))
        });
        match prepared {
            Ok((decoder, spec)) => {
                self.slots.push(Slot {
                    id,
                    seq,
                    prompt: prompt_ids,
                    fed: 0,
                    input: Vec::with_capacity(if spec.is_some() { 16 } else { 1 }),
                    drafted: 0,
                    decoding: false,
                    spec,
                    decoder,
                    sink,
                    error: None,
                });
            }
            Err(e) => self.rejected.push(Finished { id, seq, result: Err(e), stopped_by: None, sink }),
        }
        Ok(id)
    }

    /// Runs one forward over the batch, samples, streams, and returns the jobs that
    /// finished (including cancelled and failed ones, and admission failures).
    pub fn step(&mut self, engine: &Engine) -> Vec<Finished> {
        let mut done = std::mem::take(&mut self.rejected);
        for s in &mut self.slots {
            if !s.done() && s.sink.is_cancelled() {
                s.decoder.cancel();
            }
        }
        self.reap(&mut done);
        if self.slots.is_empty() {
            return done;
        }

        // Plan: every decoding sequence feeds one token; prompt chunks fill the rest of
        // the budget, oldest job first; drafts use the room that is left.
        let max_batch = engine.model().max_batch();
        let n_decode = self.slots.iter().filter(|s| s.decoding).count();
        let mut budget = self.config.prefill_chunk.min(max_batch.saturating_sub(n_decode));
        let prefill: usize = self.slots.iter().filter(|s| !s.decoding).map(|s| s.prompt.len() - s.fed).sum();
        let mut room = max_batch.saturating_sub(n_decode + prefill.min(budget));
        self.plan.clear();
        for (i, s) in self.slots.iter_mut().enumerate() {
            if s.decoding {
                s.draft(engine, room);
                room -= s.drafted;
                let logits = if s.drafted > 0 { LogitsRequest::All } else { LogitsRequest::Last };
                self.plan.push((i, 1 + s.drafted, logits));
            } else if budget > 0 {
                let n = (s.prompt.len() - s.fed).min(budget);
                budget -= n;
                let logits = if s.fed + n == s.prompt.len() { LogitsRequest::Last } else { LogitsRequest::None };
                self.plan.push((i, n, logits));
            }
        }

        let forward = {
            let mut inputs = Vec::with_capacity(self.plan.len());
            let mut plan = self.plan.iter().peekable();
            for (i, s) in self.slots.iter_mut().enumerate() {
                let Some(&(_, n, logits)) = plan.next_if(|p| p.0 == i) else {
                    continue;
                };
                let tokens: &[u32] = if s.decoding { &s.input } else { &s.prompt[s.fed..s.fed + n] };
                let (_, cache) = s.seq.parts_mut();
                inputs.push(SeqInput { tokens, cache, logits });
            }
            engine.model().forward(&mut inputs, &mut self.ws, engine.threads(), None)
        };
        if let Err(e) = forward {
            // Inputs are checked before anything is computed; fail every sequence that was
            // in the call (the message is the same for each).
            let msg = e.to_string();
            for &(i, _, _) in &self.plan {
                self.slots[i].error = Some(EngineError::Model(lem_model::ModelError::Input(msg.clone())));
            }
            self.reap(&mut done);
            return done;
        }

        let vocab = engine.model().vocab();
        for (b, &(i, n, logits)) in self.plan.iter().enumerate() {
            let s = &mut self.slots[i];
            let (tokens, _) = s.seq.parts_mut();
            if s.decoding {
                tokens.extend_from_slice(&s.input);
            } else {
                tokens.extend_from_slice(&s.prompt[s.fed..s.fed + n]);
                s.fed += n;
                s.sink.prefilled(engine, &s.seq);
            }
            if logits != LogitsRequest::None {
                if !s.decoding {
                    s.decoding = true;
                    s.decoder.prefilled();
                }
                s.on_logits(self.ws.logits(b, vocab), vocab);
            }
        }
        self.reap(&mut done);
        done
    }

    /// Ends every job now (as cancelled) and returns them, e.g. at a shutdown deadline.
    pub fn cancel_all(&mut self) -> Vec<Finished> {
        let mut done = std::mem::take(&mut self.rejected);
        for s in &mut self.slots {
            if !s.done() {
                s.decoder.cancel();
            }
        }
        self.reap(&mut done);
        done
    }

    /// Moves finished slots out, keeping the order of the others.
    fn reap(&mut self, done: &mut Vec<Finished>) {
        if !self.slots.iter().any(Slot::done) {
            return;
        }
        let (finished, active): (Vec<Slot>, Vec<Slot>) =
            std::mem::take(&mut self.slots).into_iter().partition(Slot::done);
        self.slots = active;
        done.extend(finished.into_iter().map(Slot::finalize));
    }
}

/// Checks a job against the context and its parameters and sets up the sequence as
/// [`generate`](crate::generate) does (continuing from the last token when there is no
/// new prompt).
fn prepare(
    engine: &Engine,
    seq: &mut Sequence,
    prompt_ids: &mut Vec<u32>,
    request: &GenerateRequest,
    top_logprobs: Option<usize>,
) -> Result<Decoder, EngineError> {
    let ctx = engine.ctx_size();
    if prompt_ids.is_empty() && seq.is_empty() {
        return Err(EngineError::EmptyPrompt);
    }
    if seq.len() + prompt_ids.len() >= ctx {
        return Err(EngineError::PromptTooLong { tokens: seq.len() + prompt_ids.len(), ctx });
    }
    let decoder = Decoder::new(engine, request, ctx, top_logprobs)?;
    if prompt_ids.is_empty() {
        let last = *seq.tokens().last().ok_or(EngineError::EmptyPrompt)?;
        seq.truncate(seq.len() - 1)?;
        prompt_ids.push(last);
    }
    // Room for the prompt and a first stretch of output; the cache grows past that.
    seq.reserve((seq.len() + prompt_ids.len() + request.max_tokens.min(256)).min(ctx));
    Ok(decoder)
}
