//! The engine thread: owns the [`Batcher`], admits requests from a channel, runs one
//! batched forward per step and streams tokens back through per-request channels.
//!
//! Requests wait in a FIFO queue while the batch is full; [`WorkerHandle::submit`]
//! refuses with [`ApiError::QueueFull`] once `max_active + max_queue` requests are in
//! flight. At admission the prefix cache restores the longest cached prefix of the
//! prompt (unless the request brought a longer one, from a session); every prefill step
//! stores the prompt blocks it completed (while a sliding window still holds them), and
//! when a job ends its remaining complete blocks are stored, before the thread looks at
//! the next request, so a request sent after a response has ended always sees that
//! response's blocks.
//!
//! A request whose receiver is dropped (the client went away) is removed from the queue,
//! or cancelled in the batch before the next forward.

use std::collections::{HashMap, VecDeque};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lem_engine::sampling::TokenLogprobs;
use lem_engine::{
    BatchConfig, BatchEvent, Batcher, Engine, FinishReason, Finished, GenerateRequest, Job, JobId, Pooling, Sequence,
    TokenSink,
};
use lem_state::PrefixCache;
use lem_tokenizer::Tokenizer;
use tokio::sync::mpsc::UnboundedSender;

use crate::error::{ApiError, ServerError};
use crate::metrics::Metrics;

/// How the engine thread schedules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerConfig {
    /// Most sequences generating at once (the batch).
    pub max_active: usize,
    /// Most requests waiting for a batch slot.
    pub max_queue: usize,
    /// Most prompt tokens prefilled per step.
    pub prefill_chunk: usize,
    /// Finished sequences kept whole for token-exact prefix reuse (0: none).
    pub recent_sequences: usize,
    /// Byte budget of those sequences' KV state.
    pub recent_bytes: usize,
    /// How embeddings pool the token states.
    pub pooling: Pooling,
}

/// A token's log-probability with its text, as the APIs report it.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// The token's text (lossy UTF-8).
    pub token: String,
    /// The token's bytes.
    pub bytes: Vec<u8>,
    /// Natural log-probability.
    pub logprob: f32,
    /// The most likely alternatives (text, bytes, log-probability).
    pub top: Vec<(String, Vec<u8>, f32)>,
}

/// What a request's channel carries.
#[derive(Debug)]
pub enum Event {
    /// Text released by a token (possibly empty), with its log-probability when asked.
    Token {
        /// The text.
        text: String,
        /// Log-probabilities.
        logprob: Option<TokenLogprob>,
    },
    /// Generation ended.
    Done(Box<Done>),
    /// Generation failed.
    Failed(ApiError),
}

/// The end of a generation.
#[derive(Debug)]
pub struct Done {
    /// Why it ended.
    pub finish: FinishReason,
    /// The stop string that ended it (index into the request's list).
    pub stopped_by: Option<usize>,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Prompt tokens whose KV state was reused.
    pub cached_tokens: usize,
    /// Generated tokens (including an end-of-generation token).
    pub completion_tokens: usize,
    /// The generated text.
    pub text: String,
    /// Milliseconds from request arrival to first token.
    pub ttft_ms: f64,
    /// Decode speed of this sequence.
    pub decode_tok_s: f64,
    /// The sequence, when the request asked for it back (sessions).
    pub seq: Option<Sequence>,
}

/// A request for the engine thread.
#[derive(Debug)]
pub struct Submission {
    /// The whole prompt (at least one token).
    pub prompt_ids: Vec<u32>,
    /// A sequence to continue (a woken session); its common prefix with the prompt is
    /// reused.
    pub seq: Option<Sequence>,
    /// Budget, sampling and stops.
    pub request: GenerateRequest,
    /// Log-probability alternatives per token.
    pub top_logprobs: Option<usize>,
    /// Return the sequence in [`Done`].
    pub want_seq: bool,
    /// When the request arrived (for time to first token).
    pub received: Instant,
    /// For the logs.
    pub request_id: String,
    /// Where the events go.
    pub events: UnboundedSender<Event>,
}

/// An embedding request for the engine thread: it runs between batch steps, at most
/// `prefill_chunk` input tokens (or one input) per step, so generation keeps going.
#[derive(Debug)]
pub struct EmbedSubmission {
    /// Token ids of every input (checked by the handler: non-empty, within the context
    /// and the vocabulary).
    pub inputs: Vec<Vec<u32>>,
    /// For the logs.
    pub request_id: String,
    /// Where the vectors (one per input, in order) go.
    pub reply: tokio::sync::oneshot::Sender<Result<Vec<Vec<f32>>, ApiError>>,
}

/// An embedding request in progress.
struct EmbedWork {
    sub: Box<EmbedSubmission>,
    vectors: Vec<Vec<f32>>,
}

enum Command {
    Generate(Box<Submission>),
    Embed(Box<EmbedSubmission>),
    Shutdown(Duration),
}

/// The handle request handlers hold.
#[derive(Debug)]
pub struct WorkerHandle {
    tx: Mutex<Sender<Command>>,
    inflight: Arc<AtomicUsize>,
    limit: usize,
    max_active: usize,
    closing: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl WorkerHandle {
    /// Starts the engine thread.
    pub fn start(
        engine: Arc<Engine>,
        prefix: Arc<PrefixCache>,
        metrics: Arc<Metrics>,
        config: WorkerConfig,
    ) -> Result<WorkerHandle, ServerError> {
        let (tx, rx) = channel();
        let inflight = Arc::new(AtomicUsize::new(0));
        let max_active = config.max_active.max(1);
        let worker = Worker {
            batcher: Batcher::new(BatchConfig { max_active, prefill_chunk: config.prefill_chunk }),
            engine,
            prefix,
            metrics,
            inflight: inflight.clone(),
            waiting: VecDeque::new(),
            embeds: VecDeque::new(),
            embed_chunk: config.prefill_chunk.max(1),
            pooling: config.pooling,
            jobs: HashMap::new(),
            deadline: None,
            recent: Recent { seqs: VecDeque::new(), max: config.recent_sequences, budget: config.recent_bytes },
        };
        let thread = std::thread::Builder::new()
            .name("lem-engine".into())
            .spawn(move || worker.run(rx))
            .map_err(ServerError::Start)?;
        Ok(WorkerHandle {
            tx: Mutex::new(tx),
            inflight,
            limit: max_active + config.max_queue,
            max_active,
            closing: AtomicBool::new(false),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queues a request, or refuses it when the queue is full or the server is closing.
    pub fn submit(&self, sub: Submission) -> Result<(), ApiError> {
        self.send(Command::Generate(Box::new(sub)))
    }

    /// Queues an embedding request (it counts against the same queue limit).
    pub fn embed(&self, sub: EmbedSubmission) -> Result<(), ApiError> {
        self.send(Command::Embed(Box::new(sub)))
    }

    fn send(&self, cmd: Command) -> Result<(), ApiError> {
        if self.closing.load(Ordering::SeqCst) {
            return Err(ApiError::ShuttingDown);
        }
        let before = self.inflight.fetch_add(1, Ordering::SeqCst);
        if before >= self.limit {
            self.inflight.fetch_sub(1, Ordering::SeqCst);
            return Err(ApiError::QueueFull { queued: before.saturating_sub(self.max_active) });
        }
        let sent = self.tx.lock().unwrap_or_else(|e| e.into_inner()).send(cmd);
        if sent.is_err() {
            self.inflight.fetch_sub(1, Ordering::SeqCst);
            return Err(ApiError::ShuttingDown);
        }
        Ok(())
    }

    /// Requests in flight (queued or generating).
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::SeqCst)
    }

    /// Stops taking requests; running ones get `grace` to finish, then are cancelled.
    pub fn shutdown(&self, grace: Duration) {
        if !self.closing.swap(true, Ordering::SeqCst) {
            let _ = self.tx.lock().unwrap_or_else(|e| e.into_inner()).send(Command::Shutdown(grace));
        }
    }

    /// Whether shutdown began.
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// Waits for the engine thread to end (after [`WorkerHandle::shutdown`]).
    pub fn join(&self) {
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

/// Per-job bookkeeping on the engine thread.
struct Meta {
    events: UnboundedSender<Event>,
    prompt_tokens: usize,
    cached_tokens: usize,
    want_seq: bool,
    received: Instant,
    admitted: Instant,
    request_id: String,
}

struct Worker {
    batcher: Batcher,
    engine: Arc<Engine>,
    prefix: Arc<PrefixCache>,
    metrics: Arc<Metrics>,
    inflight: Arc<AtomicUsize>,
    waiting: VecDeque<Box<Submission>>,
    embeds: VecDeque<EmbedWork>,
    /// Most input tokens embedded per step (the prefill chunk).
    embed_chunk: usize,
    pooling: Pooling,
    jobs: HashMap<JobId, Meta>,
    deadline: Option<Instant>,
    recent: Recent,
}

/// The last few finished sequences, kept whole: a new prompt starts from the one it
/// shares most with, token for token (the prefix cache then adds whole blocks only if
/// they reach further). This catches what blocks cannot: the tail of a shared system
/// prompt, the previous turn's reply.
struct Recent {
    seqs: VecDeque<Sequence>,
    max: usize,
    budget: usize,
}

impl Recent {
    /// A sequence holding the longest prefix of `prompt` any kept sequence has.
    fn start(&self, engine: &Engine, prompt: &[u32]) -> Sequence {
        let best = self.seqs.iter().map(|s| (s.common_prefix(prompt), s)).max_by_key(|(n, _)| *n);
        match best {
            Some((n, s)) if n > 0 => {
                let mut seq = s.fork();
                match seq.truncate(n) {
                    Ok(()) => seq,
                    Err(_) => engine.new_sequence(),
                }
            }
            _ => engine.new_sequence(),
        }
    }

    /// Keeps `seq` (newest first), dropping kept sequences it extends and the oldest
    /// beyond the count and byte budgets.
    fn keep(&mut self, mut seq: Sequence) {
        if seq.is_empty() || self.max == 0 {
            return;
        }
        // A kept sequence costs what it holds: no reserved room, no forward buffers.
        seq.compact();
        self.seqs.retain(|s| seq.common_prefix(s.tokens()) < s.len());
        self.seqs.push_front(seq);
        while self.seqs.len() > self.max || (!self.seqs.is_empty() && self.bytes() > self.budget) {
            self.seqs.pop_back();
        }
    }

    fn bytes(&self) -> usize {
        self.seqs.iter().map(Sequence::resident_bytes).sum()
    }
}

impl Worker {
    fn run(mut self, rx: Receiver<Command>) {
        loop {
            if self.batcher.is_idle() && self.waiting.is_empty() && self.embeds.is_empty() {
                if self.deadline.is_some() {
                    break;
                }
                match rx.recv() {
                    Ok(cmd) => self.command(cmd),
                    Err(_) => break,
                }
            }
            while let Ok(cmd) = rx.try_recv() {
                self.command(cmd);
            }
            self.drop_abandoned();
            while self.batcher.has_capacity() {
                let Some(sub) = self.waiting.pop_front() else { break };
                self.admit(sub);
            }
            if self.deadline.is_some_and(|d| Instant::now() >= d) {
                for f in self.batcher.cancel_all() {
                    self.finish(f);
                }
                for sub in std::mem::take(&mut self.waiting) {
                    let _ = sub.events.send(Event::Failed(ApiError::ShuttingDown));
                    self.inflight.fetch_sub(1, Ordering::SeqCst);
                }
                for work in std::mem::take(&mut self.embeds) {
                    let _ = work.sub.reply.send(Err(ApiError::ShuttingDown));
                    self.inflight.fetch_sub(1, Ordering::SeqCst);
                }
            }
            self.embed_step();
            if !self.batcher.is_idle() {
                let n = self.batcher.active() as u64;
                let finished = self.batcher.step(&self.engine);
                self.metrics.batch_steps.fetch_add(1, Ordering::Relaxed);
                self.metrics.batch_sequences.fetch_add(n, Ordering::Relaxed);
                for f in finished {
                    self.finish(f);
                }
            }
            self.metrics.active.store(self.batcher.active() as u64, Ordering::Relaxed);
            self.metrics.queued.store(self.waiting.len() as u64, Ordering::Relaxed);
            self.metrics.batch_kv_bytes.store(self.batcher.kv_bytes() as u64, Ordering::Relaxed);
            self.metrics.recent_kv_bytes.store(self.recent.bytes() as u64, Ordering::Relaxed);
        }
        tracing::info!("engine thread stopped");
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Generate(sub) => self.waiting.push_back(sub),
            Command::Embed(sub) => self.embeds.push_back(EmbedWork { sub, vectors: Vec::new() }),
            Command::Shutdown(grace) => {
                tracing::info!(
                    grace_s = grace.as_secs_f64(),
                    active = self.batcher.active(),
                    queued = self.waiting.len(),
                    "draining"
                );
                self.deadline = Some(Instant::now() + grace);
            }
        }
    }

    /// Forgets queued requests whose client went away.
    fn drop_abandoned(&mut self) {
        let before = self.waiting.len();
        self.waiting.retain(|s| !s.events.is_closed());
        let gone = before - self.waiting.len();
        if gone > 0 {
            self.inflight.fetch_sub(gone, Ordering::SeqCst);
            tracing::info!(requests = gone, "queued requests abandoned by their clients");
        }
    }

    /// Embeds the next inputs of the oldest embedding request: as many as fit in one
    /// prefill chunk of tokens (at least one input), then answers it when all are done.
    fn embed_step(&mut self) {
        let Some(work) = self.embeds.front_mut() else { return };
        if work.sub.reply.is_closed() {
            self.embeds.pop_front();
            self.inflight.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        let from = work.vectors.len();
        let mut end = from + 1;
        let mut tokens = work.sub.inputs[from].len();
        while end < work.sub.inputs.len() && tokens + work.sub.inputs[end].len() <= self.embed_chunk {
            tokens += work.sub.inputs[end].len();
            end += 1;
        }
        let result = self.engine.embed(&work.sub.inputs[from..end], self.pooling);
        let failed = match result {
            Ok(v) => {
                work.vectors.extend(v);
                None
            }
            Err(e) => Some(e),
        };
        if failed.is_none() && work.vectors.len() < work.sub.inputs.len() {
            return;
        }
        let Some(work) = self.embeds.pop_front() else { return };
        self.inflight.fetch_sub(1, Ordering::SeqCst);
        let reply = match failed {
            Some(e) => {
                tracing::warn!(request_id = work.sub.request_id, error = %e, "embedding failed");
                Err(e.into())
            }
            None => {
                let tokens: usize = work.sub.inputs.iter().map(Vec::len).sum();
                tracing::info!(
                    request_id = work.sub.request_id,
                    inputs = work.sub.inputs.len(),
                    tokens,
                    "embedding finished"
                );
                Ok(work.vectors)
            }
        };
        let _ = work.sub.reply.send(reply);
    }

    fn admit(&mut self, sub: Box<Submission>) {
        let Submission { prompt_ids, seq, request, top_logprobs, want_seq, received, request_id, events } = *sub;
        let engine = &*self.engine;
        let mut seq = seq.unwrap_or_else(|| self.recent.start(engine, &prompt_ids));
        if let Err(e) = self.prefix.restore(engine, &mut seq, &prompt_ids) {
            tracing::warn!(request_id, error = %e, "prefix cache restore failed; computing the prompt");
        }
        // Keep the shared prefix, leaving at least one prompt token to feed (its logits
        // start generation).
        let mut reuse = seq.common_prefix(&prompt_ids).min(prompt_ids.len().saturating_sub(1));
        if seq.truncate(reuse).is_err() {
            seq = engine.new_sequence();
            reuse = 0;
        }
        let sink = ChannelSink {
            tx: events.clone(),
            tokenizer: engine.tokenizer().clone(),
            metrics: self.metrics.clone(),
            prefix: self.prefix.clone(),
            request_id: request_id.clone(),
            received,
            last: None,
        };
        let job = Job { seq, prompt_ids: prompt_ids[reuse..].to_vec(), request, top_logprobs, sink: Box::new(sink) };
        let meta = Meta {
            events,
            prompt_tokens: prompt_ids.len(),
            cached_tokens: reuse,
            want_seq,
            received,
            admitted: Instant::now(),
            request_id,
        };
        match self.batcher.admit(engine, job) {
            Ok(id) => {
                self.jobs.insert(id, meta);
            }
            Err(_) => {
                // Unreachable: admission happens only with capacity.
                let _ = meta.events.send(Event::Failed(ApiError::Internal("the batch is full".into())));
                self.inflight.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    fn finish(&mut self, f: Finished) {
        self.inflight.fetch_sub(1, Ordering::SeqCst);
        let Some(meta) = self.jobs.remove(&f.id) else { return };
        match f.result {
            Ok(g) => {
                let finish = finish_name(g.finish_reason);
                self.metrics.generation(finish, meta.prompt_tokens, meta.cached_tokens, g.ids.len());
                self.metrics.speculation(&g.speculation);
                if let Err(e) = self.prefix.store(&self.engine, &f.seq) {
                    tracing::warn!(request_id = meta.request_id, error = %e, "prefix cache store failed");
                }
                tracing::info!(
                    request_id = meta.request_id,
                    prompt_tokens = meta.prompt_tokens,
                    cached_tokens = meta.cached_tokens,
                    completion_tokens = g.ids.len(),
                    finish,
                    ttft_ms = format!("{:.1}", ttft_ms(&meta, &g)),
                    decode_tok_s = format!("{:.1}", g.timings.decode_tok_s),
                    total_ms = format!("{:.1}", meta.received.elapsed().as_secs_f64() * 1e3),
                    "generation finished"
                );
                let done = Done {
                    finish: g.finish_reason,
                    stopped_by: f.stopped_by,
                    prompt_tokens: meta.prompt_tokens,
                    cached_tokens: meta.cached_tokens,
                    completion_tokens: g.ids.len(),
                    ttft_ms: ttft_ms(&meta, &g),
                    decode_tok_s: g.timings.decode_tok_s,
                    text: g.text,
                    seq: None,
                };
                let mut done = Box::new(done);
                if meta.want_seq {
                    done.seq = Some(f.seq);
                } else {
                    self.recent.keep(f.seq);
                }
                let _ = meta.events.send(Event::Done(done));
            }
            Err(e) => {
                tracing::warn!(request_id = meta.request_id, error = %e, "generation failed");
                let _ = meta.events.send(Event::Failed(e.into()));
            }
        }
    }
}

/// Milliseconds from arrival to first token: the job's own time to first token is
/// measured from its admission, after any wait in the queue.
fn ttft_ms(meta: &Meta, g: &lem_engine::Generation) -> f64 {
    (meta.admitted - meta.received).as_secs_f64() * 1e3 + g.timings.ttft_ms
}

/// The metrics label of a finish reason.
pub fn finish_name(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::ContextFull => "context_full",
        FinishReason::Cancelled => "cancelled",
    }
}

/// Streams a job's events into its request's channel.
struct ChannelSink {
    tx: UnboundedSender<Event>,
    tokenizer: Arc<Tokenizer>,
    metrics: Arc<Metrics>,
    /// Blocks are stored as the prefill passes them (see [`TokenSink::prefilled`]).
    prefix: Arc<PrefixCache>,
    request_id: String,
    received: Instant,
    last: Option<Instant>,
}

impl ChannelSink {
    fn logprob(&self, lp: &TokenLogprobs) -> TokenLogprob {
        let text = |id: u32| {
            let bytes = self.tokenizer.token_piece_bytes(id).map(<[u8]>::to_vec).unwrap_or_default();
            (String::from_utf8_lossy(&bytes).into_owned(), bytes)
        };
        let (token, bytes) = text(lp.token);
        let top = lp
            .top
            .iter()
            .map(|&(id, l)| {
                let (t, b) = text(id);
                (t, b, l)
            })
            .collect();
        TokenLogprob { token, bytes, logprob: lp.logprob, top }
    }
}

impl TokenSink for ChannelSink {
    fn event(&mut self, event: BatchEvent<'_>) -> ControlFlow<()> {
        let ev = match event {
            BatchEvent::Token { text, logprobs, .. } => {
                let now = Instant::now();
                match self.last {
                    None => self.metrics.ttft.observe((now - self.received).as_secs_f64()),
                    Some(t) => self.metrics.token_latency.observe((now - t).as_secs_f64()),
                }
                self.last = Some(now);
                Event::Token { text: text.to_owned(), logprob: logprobs.map(|l| self.logprob(l)) }
            }
            BatchEvent::Tail { text } => Event::Token { text: text.to_owned(), logprob: None },
        };
        match self.tx.send(ev) {
            Ok(()) => ControlFlow::Continue(()),
            Err(_) => ControlFlow::Break(()),
        }
    }

    fn is_cancelled(&self) -> bool {
        self.tx.is_closed()
    }

    fn prefilled(&mut self, engine: &Engine, seq: &Sequence) {
        if let Err(e) = self.prefix.store(engine, seq) {
            tracing::warn!(request_id = self.request_id, error = %e, "prefix cache store failed");
        }
    }
}
