//! The on-disk tier: one file per block under `blocks/xx/`, LRU by modification time.
//!
//! Every write is atomic (temporary file, rename), so processes sharing the directory
//! never read a partial block; a block deleted by another process's eviction is a miss.
//! Reads touch the file's modification time, which is the LRU order eviction follows.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use lem_kv::CacheLayout;

use super::block::{Block, BlockKey};
use crate::error::StateError;
use crate::fsutil::atomic_write;

/// Extension of block files.
const EXT: &str = "lemblk";

/// The disk tier.
#[derive(Debug)]
pub(crate) struct DiskTier {
    dir: PathBuf,
    budget: u64,
    /// Bytes on disk as far as this process knows (`None`: not scanned yet).
    bytes: Mutex<Option<u64>>,
    pub(crate) evicted: AtomicU64,
    pub(crate) errors: AtomicU64,
}

impl DiskTier {
    pub(crate) fn new(dir: &Path, budget: u64) -> Result<DiskTier, StateError> {
        let blocks = dir.join("blocks");
        std::fs::create_dir_all(&blocks).map_err(StateError::io(&blocks))?;
        Ok(DiskTier {
            dir: blocks,
            budget,
            bytes: Mutex::new(None),
            evicted: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        })
    }

    fn path(&self, key: &BlockKey) -> PathBuf {
        let h = hex::encode(key);
        self.dir.join(&h[..2]).join(format!("{h}.{EXT}"))
    }

    pub(crate) fn contains(&self, key: &BlockKey) -> bool {
        self.path(key).is_file()
    }

    /// Bytes of block files on disk (scanned once, then tracked).
    pub(crate) fn bytes(&self) -> u64 {
        let mut b = self.bytes.lock().unwrap_or_else(|e| e.into_inner());
        *b.get_or_insert_with(|| self.scan().iter().map(|f| f.1).sum())
    }

    /// The block at `key`, verified; a corrupt file is deleted and reads as a miss.
    pub(crate) fn get(&self, key: &BlockKey, kv_digest: &[u8; 32], layout: &CacheLayout) -> Option<Block> {
        let path = self.path(key);
        let bytes = std::fs::read(&path).ok()?;
        match Block::decode(&path, &bytes, key, kv_digest, layout) {
            Ok(b) => {
                if let Ok(f) = std::fs::File::options().write(true).open(&path) {
                    let _ = f.set_modified(SystemTime::now());
                }
                Some(b)
            }
            Err(_) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Writes `block` unless it is there already, then keeps the tier within budget.
    pub(crate) fn put(&self, block: &Block, kv_digest: &[u8; 32], layout: &CacheLayout) {
        let path = self.path(&block.key);
        if path.is_file() {
            return;
        }
        let written = block
            .encode(kv_digest, layout)
            .map_err(|e| StateError::malformed(&path, e))
            .and_then(|bytes| atomic_write(&path, &bytes).map(|()| bytes.len() as u64));
        let Ok(size) = written else {
            self.errors.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let total = {
            let mut b = self.bytes.lock().unwrap_or_else(|e| e.into_inner());
            let t = b.map_or_else(|| self.scan().iter().map(|f| f.1).sum(), |t| t + size);
            *b = Some(t);
            t
        };
        if total > self.budget {
            self.evict();
        }
    }

    /// Every block file: (modification time, size, path).
    fn scan(&self) -> Vec<(SystemTime, u64, PathBuf)> {
        let mut out = Vec::new();
        let Ok(subdirs) = std::fs::read_dir(&self.dir) else { return out };
        for sub in subdirs.flatten() {
            let Ok(files) = std::fs::read_dir(sub.path()) else { continue };
            for f in files.flatten() {
                let p = f.path();
                if p.extension().is_some_and(|e| e == EXT)
                    && let Ok(m) = f.metadata()
                {
                    out.push((m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len(), p));
                }
            }
        }
        out
    }

    /// Deletes least recently used blocks until the tier is at 90% of its budget.
    fn evict(&self) {
        let mut files = self.scan();
        files.sort_by_key(|f| f.0);
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        let target = self.budget / 10 * 9;
        for (_, size, path) in files {
            if total <= target {
                break;
            }
            if std::fs::remove_file(&path).is_ok() {
                self.evicted.fetch_add(1, Ordering::Relaxed);
            }
            total -= size;
        }
        *self.bytes.lock().unwrap_or_else(|e| e.into_inner()) = Some(total);
    }
}
