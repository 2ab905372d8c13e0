//! What every handler shares.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use lem_engine::Engine;
use lem_state::{PrefixCache, SessionStore};
use tokio::sync::Notify;

use lem_tokenizer::ChatTemplate;

use crate::metrics::Metrics;
use crate::params::ModelNames;
use crate::reasoning::ReasoningMode;
use crate::tools::ToolFormat;
use crate::worker::WorkerHandle;

/// The shared server state (cheap to clone).
pub type AppState = Arc<ServerState>;

/// The shared server state.
#[derive(Debug)]
pub struct ServerState {
    /// The engine (tokenizer and template for handlers; the model runs on the engine
    /// thread).
    pub engine: Arc<Engine>,
    /// Names the model answers to.
    pub names: ModelNames,
    /// The engine thread.
    pub worker: WorkerHandle,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The prefix cache (used by the engine thread; read here for metrics).
    pub prefix: Arc<PrefixCache>,
    /// Named sessions.
    pub sessions: Arc<SessionStore>,
    /// One lock per session name: requests on a session run one after another, and a
    /// session's save finishes before the next request wakes it.
    session_locks: SessionLocks,
    /// Background work that must finish before exit (session saves).
    pub background: Arc<Background>,
    /// The API key, when one is required.
    pub api_key: Option<String>,
    /// Body size limit in bytes.
    pub max_body_bytes: usize,
    /// When the server started.
    pub started: SystemTime,
    /// The chat template given with `--chat-template-file` (otherwise the engine's).
    chat_template: Option<ChatTemplate>,
    /// The tool-call format of the chat template in use.
    pub tool_format: ToolFormat,
    /// What happens to reasoning (`--reasoning`) unless a request says otherwise.
    pub reasoning: ReasoningMode,
    /// Limits on the session store, checked when a request creates a session.
    pub session_limits: SessionLimits,
    /// Speculative decoding for requests that do not opt out (`--draft`).
    pub draft: Option<lem_engine::DraftConfig>,
    next_request: AtomicU64,
}

impl ServerState {
    /// Assembles the state.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        engine: Arc<Engine>,
        names: ModelNames,
        worker: WorkerHandle,
        metrics: Arc<Metrics>,
        prefix: Arc<PrefixCache>,
        sessions: Arc<SessionStore>,
        api_key: Option<String>,
        max_body_bytes: usize,
    ) -> ServerState {
        ServerState {
            names,
            worker,
            metrics,
            prefix,
            sessions,
            session_locks: SessionLocks::default(),
            session_limits: SessionLimits::default(),
            background: Arc::default(),
            api_key,
            max_body_bytes,
            started: SystemTime::now(),
            tool_format: ToolFormat::detect(engine.template().source(), &engine.model().config().architecture),
            engine,
            chat_template: None,
            reasoning: ReasoningMode::default(),
            draft: None,
            next_request: AtomicU64::new(1),
        }
    }

    /// The same state with a chat template replacing the model's (`--chat-template-file`)
    /// and a default reasoning mode (`--reasoning`).
    #[must_use]
    pub fn with_chat(mut self, template: Option<ChatTemplate>, reasoning: ReasoningMode) -> ServerState {
        if let Some(t) = template {
            self.tool_format = ToolFormat::detect(t.source(), &self.engine.model().config().architecture);
            self.chat_template = Some(t);
        }
        self.reasoning = reasoning;
        self
    }

    /// The same state with limits on the session store (`--max-sessions`,
    /// `--sessions-max-mib`).
    #[must_use]
    pub fn with_session_limits(mut self, limits: SessionLimits) -> ServerState {
        self.session_limits = limits;
        self
    }

    /// The same state speculating on every request that does not opt out (`--draft`).
    #[must_use]
    pub fn with_draft(mut self, draft: Option<lem_engine::DraftConfig>) -> ServerState {
        self.draft = draft;
        self
    }

    /// The chat template requests are rendered with.
    pub fn template(&self) -> &ChatTemplate {
        self.chat_template.as_ref().unwrap_or_else(|| self.engine.template())
    }

    /// A new request id (`req-<n>`).
    pub fn request_id(&self) -> String {
        format!("req-{}", self.next_request.fetch_add(1, Ordering::Relaxed))
    }

    /// The lock of session `name` ([`SessionLocks::get`]).
    pub fn session_lock(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.session_locks.get(name)
    }

    /// Seconds since the Unix epoch.
    pub fn now_unix() -> u64 {
        SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
    }
}

/// One async lock per session name, kept only while someone uses it: the map holds an
/// entry per name that a request holds or waits on (plus at most the last one handed
/// out), not one per name ever seen, so a server that sees many distinct names does not
/// grow without bound.
///
/// A lock handed out by [`SessionLocks::get`] is an `Arc` clone; holders
/// (`lock_owned` guards) and waiters keep their clone. An entry whose `Arc` only the map
/// holds has no holder and no waiter, and since clones are made only under the map's
/// mutex, nobody can be about to use it: dropping it is safe, and the next request on the
/// name gets a fresh lock, which excludes exactly as the old one did.
#[derive(Debug, Default)]
pub struct SessionLocks {
    map: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl SessionLocks {
    /// The lock of `name` (the one other users of `name` hold or wait on, if any);
    /// drops the entries nobody uses.
    pub fn get(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|n, lock| n == name || Arc::strong_count(lock) > 1);
        map.entry(name.to_owned()).or_default().clone()
    }

    /// Names with an entry (used, or the last handed out).
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no name has an entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Counts background tasks so that shutdown can wait for them.
#[derive(Debug, Default)]
pub struct Background {
    running: AtomicUsize,
    idle: Notify,
}

impl Background {
    /// Runs `f` on the blocking pool, counted until it returns.
    pub fn spawn_blocking(self: &Arc<Self>, f: impl FnOnce() + Send + 'static) {
        self.running.fetch_add(1, Ordering::SeqCst);
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            f();
            if me.running.fetch_sub(1, Ordering::SeqCst) == 1 {
                me.idle.notify_waiters();
            }
        });
    }

    /// Waits until no task runs, or `timeout` passes; returns whether all finished.
    pub async fn wait(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.idle.notified();
            if self.running.load(Ordering::SeqCst) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.running.load(Ordering::SeqCst) == 0;
            }
        }
    }
}

/// How many sessions the store may hold, and how many bytes on disk, before a request
/// that would create another is refused (existing sessions keep working).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// Most sessions.
    pub max_sessions: usize,
    /// Most bytes of session files.
    pub max_bytes: u64,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits { max_sessions: 10_000, max_bytes: 10 << 30 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_lock_map_stays_bounded_over_many_names() {
        let locks = SessionLocks::default();
        for i in 0..10_000 {
            let guard = locks.get(&format!("s{i}")).lock_owned().await;
            drop(guard);
        }
        // Only the last name handed out may still have an entry.
        assert!(locks.len() <= 1, "{} entries after 10,000 finished names", locks.len());

        // Held locks keep their entries; they go once released.
        let mut held = Vec::new();
        for i in 0..50 {
            held.push(locks.get(&format!("h{i}")).lock_owned().await);
        }
        assert_eq!(locks.len(), 50);
        drop(held);
        drop(locks.get("other"));
        assert_eq!(locks.len(), 1);
    }

    #[tokio::test]
    async fn pruning_never_breaks_mutual_exclusion() {
        let locks = Arc::new(SessionLocks::default());
        let first = locks.get("x").lock_owned().await;
        // A waiter on the same name.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let waiter = {
            let lock = locks.get("x");
            tokio::spawn(async move {
                let guard = lock.lock_owned().await;
                tx.send(()).unwrap();
                guard
            })
        };
        // Many other names come and go, pruning the map each time.
        for i in 0..1000 {
            drop(locks.get(&format!("o{i}")).lock_owned().await);
        }
        // "x" is still the lock the holder and the waiter share.
        assert!(locks.get("x").try_lock().is_err(), "a second user of x got in while the first held it");
        tokio::task::yield_now().await;
        assert!(rx.try_recv().is_err(), "the waiter got x while the first held it");
        drop(first);
        let second = waiter.await.unwrap();
        rx.recv().await.unwrap();
        for i in 0..1000 {
            drop(locks.get(&format!("p{i}")).lock_owned().await);
        }
        assert!(locks.get("x").try_lock().is_err(), "a third user of x got in while the waiter held it");
        drop(second);
        assert!(locks.get("x").try_lock().is_ok());
        assert!(locks.len() <= 1);
    }
}
