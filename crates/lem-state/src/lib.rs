//! lem's durable KV state: snapshot files, an automatic prefix cache and named sessions
//! that sleep and wake. The in-memory cache and its sequence operations (append,
//! truncate, fork, raw export/import) are `lem-kv`'s; this crate persists them.
//!
//! Every piece of persisted state records the [`Identity`] it was made under (model
//! fingerprint, tokenizer fingerprint, cache layout) and is refused, with a
//! [`StateError`] naming what differs, under any other; files carry a SHA-256 over their
//! tensors and are written atomically. The format is documented in `docs/kv-state.md`.
//!
//! # Snapshots
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let engine = lem_engine::Engine::load("m.gguf".as_ref(), Default::default())?;
//! let mut seq = engine.new_sequence();
//! seq.feed(&engine, &[1, 2, 3])?;
//! lem_state::save_snapshot("s.lemkv".as_ref(), &engine, &seq, Default::default())?;
//! let restored = lem_state::load_snapshot("s.lemkv".as_ref(), &engine)?;
//! assert_eq!(restored.tokens(), seq.tokens());
//! # Ok(()) }
//! ```
//!
//! # Prefix cache (for servers: share one `Arc<PrefixCache>`)
//!
//! - [`PrefixCache::new`]`(`[`PrefixCacheConfig`]`)`: memory tier, optional disk tier.
//! - [`generate_cached`]: `lem_engine::generate` that restores the longest cached prefix
//!   first and stores new blocks; or, step by step, [`PrefixCache::restore`] into an
//!   empty sequence before feeding a prompt and [`PrefixCache::store`] after (which
//!   stores the blocks every layer still holds; [`prefill_cached`] stores blocks as it
//!   goes, which matters for prompts longer than a sliding window plus one batch; a
//!   `lem_engine::Batcher` job does the same by calling `store` from its sink's
//!   `TokenSink::prefilled`, as `lem serve` does).
//! - [`PrefixCache::stats`]: hits, misses, reused tokens, bytes per tier.
//!
//! # Sessions (for servers: one `SessionStore` shared by all handlers)
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let engine = lem_engine::Engine::load("m.gguf".as_ref(), Default::default())?;
//! use lem_state::{SessionStore, Transcript};
//! let store = SessionStore::open(SessionStore::default_dir().unwrap())?;
//! let (mut seq, mut transcript) = match store.wake("alice", &engine)? {
//!     Some(state) => state,
//!     None => (engine.new_sequence(), Transcript::default()),
//! };
//! // ... render transcript + the new user message, sync `seq`, generate, push messages ...
//! store.sleep("alice", &engine, &seq, &transcript)?;
//! for s in store.list()? {
//!     println!("{} {} tokens", s.name, s.tokens);
//! }
//! store.fork("alice", "alice-2")?;
//! store.remove("alice-2")?;
//! # Ok(()) }
//! ```

mod container;
mod error;
mod fsutil;
mod identity;
mod kvtensor;
mod prefill;
pub mod prefix;
mod session;
mod snapshot;

pub use error::StateError;
pub use fsutil::{atomic_write, atomic_write_with, rfc3339};
pub use identity::Identity;
pub use prefill::{PrefillReport, generate_cached, prefill_cached};
pub use prefix::{PrefixCache, PrefixCacheConfig, PrefixStats};
pub use session::{SessionInfo, SessionStore, Transcript, TranscriptMessage, valid_session_name};
pub use snapshot::{
    LayerInfo, SNAPSHOT_FORMAT, SNAPSHOT_VERSION, Snapshot, SnapshotInfo, inspect_snapshot, load_snapshot,
    save_snapshot,
};
