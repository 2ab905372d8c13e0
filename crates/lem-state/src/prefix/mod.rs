//! The automatic prefix cache: K/V of prompt prefixes in content-addressed blocks, shared
//! by every sequence (and, through the disk tier, every process) running the same model.
//!
//! A prompt is cut into blocks of [`PrefixCacheConfig::block_tokens`] ids. Block `b`'s key
//! is SHA-256 over block `b - 1`'s key and block `b`'s ids, and the first block's parent
//! is a root derived from the model fingerprint and cache layout, so a key names a whole
//! prefix under one model. A lookup walks the chain from the root and stops at the first
//! block that is missing; every block found is verified against the prompt's ids and its
//! parent (never trusting a hash alone), so the reused prefix is exactly the prompt's.
//!
//! Each block holds every layer's K/V of its own positions. Restoring `n` tokens imports
//! positions `0..n` of full-attention layers and the last `min(n, ring)` positions of
//! sliding-window layers, assembled from consecutive blocks, so a restore is exact for
//! every layer kind, including windows that wrapped long before position `n`.
//!
//! Two tiers, each with a byte budget and least-recently-used eviction: memory (blocks
//! shared as `Arc`s behind a mutex held only for map updates) and, optionally, a
//! directory (see `disk.rs`). [`PrefixCache`] is `Send + Sync`: share one through an
//! `Arc` among threads.

mod block;
mod disk;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use lem_engine::{Engine, Sequence};
use lem_kv::{RawLayer, SeqCache};
use serde::Serialize;

pub use block::{BLOCK_FORMAT, BLOCK_VERSION, Block, BlockKey, child_key, root_key};

use crate::error::StateError;
use crate::identity::Identity;

/// How a [`PrefixCache`] is sized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixCacheConfig {
    /// Tokens per block (at least 1; 64 by default).
    pub block_tokens: usize,
    /// Byte budget of the in-memory tier (0 disables it).
    pub memory_budget: usize,
    /// Directory of the on-disk tier (`None`: memory only).
    pub disk_dir: Option<PathBuf>,
    /// Byte budget of the on-disk tier.
    pub disk_budget: u64,
}

/// Default tokens per block.
pub const DEFAULT_BLOCK_TOKENS: usize = 64;

impl Default for PrefixCacheConfig {
    fn default() -> Self {
        PrefixCacheConfig {
            block_tokens: DEFAULT_BLOCK_TOKENS,
            memory_budget: 256 << 20,
            disk_dir: None,
            disk_budget: 4 << 30,
        }
    }
}

impl PrefixCacheConfig {
    /// The defaults with a disk tier in `dir`.
    pub fn with_disk(dir: impl Into<PathBuf>) -> PrefixCacheConfig {
        PrefixCacheConfig { disk_dir: Some(dir.into()), ..PrefixCacheConfig::default() }
    }
}

/// Counters of a [`PrefixCache`] since it was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct PrefixStats {
    /// Lookups that reused at least one block.
    pub hits: u64,
    /// Lookups that reused nothing.
    pub misses: u64,
    /// Tokens restored from the cache instead of computed.
    pub reused_tokens: u64,
    /// Blocks served from memory.
    pub blocks_from_memory: u64,
    /// Blocks served from disk.
    pub blocks_from_disk: u64,
    /// Blocks stored.
    pub blocks_stored: u64,
    /// Blocks evicted from memory.
    pub evicted_memory: u64,
    /// Blocks evicted from disk (by this process).
    pub evicted_disk: u64,
    /// Disk blocks that failed to read or write (corrupt files are deleted).
    pub disk_errors: u64,
    /// Bytes held in memory.
    pub memory_bytes: u64,
    /// Blocks held in memory.
    pub memory_blocks: u64,
    /// Bytes of block files on disk.
    pub disk_bytes: u64,
}

/// The in-memory tier: blocks with a use tick, evicted oldest tick first.
#[derive(Debug, Default)]
struct MemTier {
    map: HashMap<BlockKey, (Arc<Block>, u64)>,
    order: BTreeMap<u64, BlockKey>,
    tick: u64,
    bytes: usize,
    evicted: u64,
}

impl MemTier {
    fn get(&mut self, key: &BlockKey) -> Option<Arc<Block>> {
        self.tick += 1;
        let (block, t) = self.map.get_mut(key)?;
        self.order.remove(t);
        *t = self.tick;
        self.order.insert(self.tick, *key);
        Some(block.clone())
    }

    fn insert(&mut self, block: Arc<Block>, budget: usize) {
        let size = block.bytes();
        if size > budget || self.get(&block.key).is_some() {
            return;
        }
        while self.bytes + size > budget {
            let Some((_, old)) = self.order.pop_first() else { break };
            if let Some((b, _)) = self.map.remove(&old) {
                self.bytes -= b.bytes();
                self.evicted += 1;
            }
        }
        self.tick += 1;
        self.order.insert(self.tick, block.key);
        self.bytes += size;
        self.map.insert(block.key, (block, self.tick));
    }
}

/// The automatic prefix cache (see the module documentation). Thread-safe.
#[derive(Debug)]
pub struct PrefixCache {
    config: PrefixCacheConfig,
    mem: Mutex<MemTier>,
    disk: Option<disk::DiskTier>,
    hits: AtomicU64,
    misses: AtomicU64,
    reused_tokens: AtomicU64,
    from_memory: AtomicU64,
    from_disk: AtomicU64,
    stored: AtomicU64,
}

/// The chain of keys for a token list: one per complete block.
fn chain(identity: &Identity, tokens: &[u32], block_tokens: usize) -> Vec<BlockKey> {
    let mut parent = root_key(&identity.kv_digest(), block_tokens);
    tokens
        .chunks_exact(block_tokens)
        .map(|b| {
            parent = child_key(&parent, b);
            parent
        })
        .collect()
}

impl PrefixCache {
    /// A cache with `config` (creating the disk tier's directory).
    pub fn new(config: PrefixCacheConfig) -> Result<PrefixCache, StateError> {
        let config = PrefixCacheConfig { block_tokens: config.block_tokens.max(1), ..config };
        let disk = match &config.disk_dir {
            Some(d) => Some(disk::DiskTier::new(d, config.disk_budget)?),
            None => None,
        };
        Ok(PrefixCache {
            config,
            mem: Mutex::new(MemTier::default()),
            disk,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            reused_tokens: AtomicU64::new(0),
            from_memory: AtomicU64::new(0),
            from_disk: AtomicU64::new(0),
            stored: AtomicU64::new(0),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &PrefixCacheConfig {
        &self.config
    }

    fn mem(&self) -> std::sync::MutexGuard<'_, MemTier> {
        self.mem.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counters so far.
    pub fn stats(&self) -> PrefixStats {
        let (memory_bytes, memory_blocks, evicted_memory) = {
            let m = self.mem();
            (m.bytes as u64, m.map.len() as u64, m.evicted)
        };
        let d = self.disk.as_ref();
        PrefixStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            reused_tokens: self.reused_tokens.load(Ordering::Relaxed),
            blocks_from_memory: self.from_memory.load(Ordering::Relaxed),
            blocks_from_disk: self.from_disk.load(Ordering::Relaxed),
            blocks_stored: self.stored.load(Ordering::Relaxed),
            evicted_memory,
            evicted_disk: d.map_or(0, |d| d.evicted.load(Ordering::Relaxed)),
            disk_errors: d.map_or(0, |d| d.errors.load(Ordering::Relaxed)),
            memory_bytes,
            memory_blocks,
            disk_bytes: d.map_or(0, disk::DiskTier::bytes),
        }
    }

    /// The longest chain of cached blocks that is a prefix of `tokens`, covering at most
    /// `max_tokens` tokens, each verified against the ids and its parent. Counts a hit
    /// or a miss.
    pub fn lookup(&self, identity: &Identity, tokens: &[u32], max_tokens: usize) -> Vec<Arc<Block>> {
        let found = self.find(identity, tokens, max_tokens);
        self.count(found.len() * self.config.block_tokens, 0);
        found
    }

    /// Counts a lookup that found `n` tokens of which the caller already had `have`.
    fn count(&self, n: usize, have: usize) {
        if n > have {
            self.hits.fetch_add(1, Ordering::Relaxed);
            self.reused_tokens.fetch_add((n - have) as u64, Ordering::Relaxed);
        } else {
            self.misses.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// [`PrefixCache::lookup`] without counting.
    fn find(&self, identity: &Identity, tokens: &[u32], max_tokens: usize) -> Vec<Arc<Block>> {
        let bt = self.config.block_tokens;
        let usable = tokens.len().min(max_tokens) / bt * bt;
        let keys = chain(identity, &tokens[..usable], bt);
        let digest = identity.kv_digest();
        let mut parent = root_key(&digest, bt);
        let mut found = Vec::new();
        for (b, key) in keys.iter().enumerate() {
            let ids = &tokens[b * bt..(b + 1) * bt];
            let from_mem = self.mem().get(key);
            let block = match from_mem {
                Some(block) => {
                    self.from_memory.fetch_add(1, Ordering::Relaxed);
                    Some(block)
                }
                None => self.disk.as_ref().and_then(|d| d.get(key, &digest, &identity.layout)).map(|block| {
                    self.from_disk.fetch_add(1, Ordering::Relaxed);
                    let block = Arc::new(block);
                    self.mem().insert(block.clone(), self.config.memory_budget);
                    block
                }),
            };
            let Some(block) = block else { break };
            let valid = block.parent == parent
                && block.tokens == ids
                && block.start as usize == b * bt
                && block.layers.len() == identity.layout.layers.len();
            if !valid {
                break;
            }
            parent = *key;
            found.push(block);
        }
        found
    }

    /// Whether a block is cached in either tier.
    fn contains(&self, key: &BlockKey) -> bool {
        self.mem().map.contains_key(key) || self.disk.as_ref().is_some_and(|d| d.contains(key))
    }

    /// Stores a block in both tiers (a no-op for one already there).
    pub fn insert(&self, identity: &Identity, block: Block) {
        let block = Arc::new(block);
        self.mem().insert(block.clone(), self.config.memory_budget);
        if let Some(d) = &self.disk {
            d.put(&block, &identity.kv_digest(), &identity.layout);
        }
        self.stored.fetch_add(1, Ordering::Relaxed);
    }

    /// Restores into `seq` the longest cached prefix of `tokens` (leaving at least the
    /// last token to be fed, so the caller gets its logits), if that is longer than what
    /// `seq` already shares with `tokens`; `seq` is then replaced by a sequence holding
    /// exactly that prefix. Returns the tokens taken from the cache (0: `seq` untouched).
    /// Counts a hit (with the tokens gained over what `seq` had) or a miss; a sequence
    /// that already holds every whole block of `tokens` is not looked up at all.
    pub fn restore(&self, engine: &Engine, seq: &mut Sequence, tokens: &[u32]) -> Result<usize, StateError> {
        let bt = self.config.block_tokens;
        let have = seq.common_prefix(tokens);
        let max = tokens.len().saturating_sub(1);
        if max / bt * bt <= have {
            return Ok(0);
        }
        let identity = Identity::of(engine)?;
        let blocks = self.find(&identity, tokens, max);
        let n = blocks.len() * bt;
        self.count(n, have);
        if n <= have {
            return Ok(0);
        }
        let layout = engine.model().cache_layout();
        let mut cache = SeqCache::new(layout);
        let layers: Vec<RawLayer> = (0..layout.layers.len())
            .map(|i| {
                // A layer sharing another's K/V holds nothing.
                if layout.layers[i].shares.is_some() {
                    return cache.layer(i).export_raw();
                }
                // Full layers need 0..n; a ring needs (and holds) its last `capacity` positions.
                let keep = cache.layer(i).ring_capacity().map_or(n, |cap| cap.min(n));
                let from = n - keep;
                let parts: Vec<(&RawLayer, std::ops::Range<usize>)> = blocks[from / bt..]
                    .iter()
                    .enumerate()
                    .map(|(j, b)| (&b.layers[i], if j == 0 { from % bt..bt } else { 0..bt }))
                    .collect();
                RawLayer::concat(&parts, layout.layers[i].n_kv)
            })
            .collect();
        cache.import_raw(&layers, n as u32)?;
        *seq = Sequence::from_cache(engine, tokens[..n].to_vec(), cache)?;
        Ok(n)
    }

    /// Stores every complete block of `seq` that is not cached yet and whose positions
    /// every layer still holds. Returns the blocks stored.
    pub fn store(&self, engine: &Engine, seq: &Sequence) -> Result<usize, StateError> {
        let identity = Identity::of(engine)?;
        let bt = self.config.block_tokens;
        let keys = chain(&identity, seq.tokens(), bt);
        let mut stored = 0;
        let mut parent = root_key(&identity.kv_digest(), bt);
        for (b, key) in keys.iter().enumerate() {
            let start = (b * bt) as u32;
            if !self.contains(key)
                && let Some(layers) = seq.cache().export_raw_range(start, start + bt as u32)
            {
                let tokens = seq.tokens()[b * bt..(b + 1) * bt].to_vec();
                self.insert(&identity, Block { key: *key, parent, start, tokens, layers });
                stored += 1;
            }
            parent = *key;
        }
        Ok(stored)
    }
}
