//! One thread pool per engine, sized once, shared by every kernel.
//!
//! A decode step is ~150 small parallel sections (every matrix product, attention), each
//! a few tens of microseconds. A general-purpose pool pays a sleep/wake handoff for each
//! (the caller blocks, a worker wakes, then the caller wakes again); on two vCPUs that was
//! about a tenth of decode time. This pool is built for that pattern:
//!
//! - the calling thread works too: `n` threads means the caller plus `n - 1` workers, so
//!   nothing is oversubscribed and the caller never sleeps while work is left;
//! - a parallel section is published with one atomic store; chunks are claimed with a
//!   compare-and-swap on one word holding (section, chunk count, next chunk), so a worker
//!   that arrives late can never run a chunk of a section that has moved on;
//! - idle workers spin briefly (`spin_loop`, so the sibling hyper-thread keeps running)
//!   and then park on a condition variable, so an idle engine costs no CPU;
//! - a section started while another one is running on the same pool (a nested call, or
//!   two threads sharing an engine) runs inline on its caller instead of waiting.
//!
//! Results never depend on the number of threads: callers split work into ranges whose
//! results do not depend on who computes them.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker spins for the next section before parking.
const SPIN: Duration = Duration::from_micros(200);

/// Bits of the state word: section number | chunk count | next chunk.
const CHUNK_BITS: u32 = 20;
const CHUNK_MASK: u64 = (1 << CHUNK_BITS) - 1;

fn pack(section: u64, n_chunks: u64, next: u64) -> u64 {
    (section << (2 * CHUNK_BITS)) | (n_chunks << CHUNK_BITS) | next
}

fn unpack(s: u64) -> (u64, u64, u64) {
    (s >> (2 * CHUNK_BITS), (s >> CHUNK_BITS) & CHUNK_MASK, s & CHUNK_MASK)
}

/// The chunk function of the current section, lifetime erased.
type ChunkFn = dyn Fn(usize) + Sync;

struct Shared {
    /// (section, chunk count, next chunk to claim).
    state: AtomicU64,
    /// The current section's chunk function (a `*const ChunkFn` boxed as a thin pointer).
    func: AtomicPtr<&'static ChunkFn>,
    /// Chunks of the current section that have finished.
    done: AtomicUsize,
    /// A chunk panicked in a worker.
    panicked: AtomicBool,
    /// Workers parked (or about to park) on `wake`.
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
    shutdown: AtomicBool,
    /// Held by the thread running a section; others run theirs inline.
    busy: Mutex<()>,
}

impl Shared {
    /// Claims and runs chunks of section `section` until none is left.
    fn work(&self, section: u64) {
        loop {
            let s = self.state.load(Ordering::Acquire);
            let (sec, n, next) = unpack(s);
            if sec != section || next >= n {
                return;
            }
            // The function is read before the claim; the claim succeeding proves the
            // section was still open, and a section's function is only replaced after
            // every chunk of it has finished, so the function read is this section's.
            let f = self.func.load(Ordering::Acquire);
            if self.state.compare_exchange_weak(s, s + 1, Ordering::AcqRel, Ordering::Relaxed).is_err() {
                continue;
            }
            // SAFETY: see above; the caller of `for_ranges` keeps the closure alive until
            // `done` reaches the chunk count, which needs this chunk to finish.
            let f: &ChunkFn = unsafe { *f };
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(next as usize))).is_err() {
                self.panicked.store(true, Ordering::Relaxed);
            }
            self.done.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn worker_loop(&self) {
        let mut seen = unpack(self.state.load(Ordering::Acquire)).0;
        loop {
            // Spin for a new section, then park.
            let start = Instant::now();
            let mut section = None;
            let mut spins = 0u32;
            while section.is_none() {
                if self.shutdown.load(Ordering::Acquire) {
                    return;
                }
                let (sec, _, _) = unpack(self.state.load(Ordering::Acquire));
                if sec != seen {
                    section = Some(sec);
                    break;
                }
                spins += 1;
                if spins.is_multiple_of(64) && start.elapsed() > SPIN {
                    let mut g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
                    self.sleepers.fetch_add(1, Ordering::SeqCst);
                    loop {
                        let (sec, _, _) = unpack(self.state.load(Ordering::SeqCst));
                        if sec != seen || self.shutdown.load(Ordering::SeqCst) {
                            break;
                        }
                        g = self.wake.wait(g).unwrap_or_else(|e| e.into_inner());
                    }
                    self.sleepers.fetch_sub(1, Ordering::SeqCst);
                    drop(g);
                    spins = 0;
                    continue;
                }
                std::hint::spin_loop();
            }
            let sec = section.unwrap_or(seen);
            seen = sec;
            self.work(sec);
        }
    }
}

/// The worker pool the kernels run on.
///
/// With one thread, work runs inline on the caller (no workers, no synchronisation).
pub struct Threads {
    n: usize,
    shared: Option<Arc<Shared>>,
    workers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Threads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Threads").field("n", &self.n).finish()
    }
}

impl Threads {
    /// A pool of `n` threads, the caller included (0 means "number of available cores").
    pub fn new(n: usize) -> Threads {
        let n = if n == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { n };
        if n <= 1 {
            return Threads { n: 1, shared: None, workers: Vec::new() };
        }
        let shared = Arc::new(Shared {
            state: AtomicU64::new(0),
            func: AtomicPtr::new(std::ptr::null_mut()),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            shutdown: AtomicBool::new(false),
            busy: Mutex::new(()),
        });
        let mut workers = Vec::with_capacity(n - 1);
        for i in 1..n {
            let s = Arc::clone(&shared);
            match std::thread::Builder::new().name(format!("lem-worker-{i}")).spawn(move || s.worker_loop()) {
                Ok(h) => workers.push(h),
                Err(_) => break,
            }
        }
        let n = workers.len() + 1;
        Threads { n, shared: if n > 1 { Some(shared) } else { None }, workers }
    }

    /// Number of threads work is spread over (the caller included).
    pub fn count(&self) -> usize {
        self.n
    }

    /// Run `f` over `0..len`, split into contiguous ranges of at least `min_chunk` items
    /// (the last may be shorter), in parallel when there is more than one thread.
    pub fn for_ranges<F>(&self, len: usize, min_chunk: usize, f: F)
    where
        F: Fn(Range<usize>) + Sync + Send,
    {
        if len == 0 {
            return;
        }
        let min_chunk = min_chunk.max(1);
        let Some(shared) = self.shared.as_deref().filter(|_| len > min_chunk) else {
            return f(0..len);
        };
        let busy = match shared.busy.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            // Nested, or another thread is using the pool: do it here.
            Err(std::sync::TryLockError::WouldBlock) => return f(0..len),
        };
        // A few chunks per thread balance uneven work without much overhead.
        let chunk = len.div_ceil(self.n * 4).max(min_chunk);
        let n_chunks = len.div_ceil(chunk).min(CHUNK_MASK as usize) as u64;
        let chunk = len.div_ceil(n_chunks as usize);
        let run = |c: usize| {
            let start = c * chunk;
            if start < len {
                f(start..(start + chunk).min(len));
            }
        };
        let run_ref: &(dyn Fn(usize) + Sync + '_) = &run;
        // SAFETY: the lifetime is erased only for the duration of this call: we return
        // (or unwind) only after every claimed chunk has finished, and no chunk of this
        // section can be claimed after that (all are claimed).
        let run_static: &'static ChunkFn =
            unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync + '_), &'static ChunkFn>(run_ref) };
        let holder: &&'static ChunkFn = &run_static;

        let (section, _, _) = unpack(shared.state.load(Ordering::Acquire));
        let section = (section + 1) & ((1 << (64 - 2 * CHUNK_BITS)) - 1);
        shared.done.store(0, Ordering::Relaxed);
        shared.panicked.store(false, Ordering::Relaxed);
        shared.func.store(std::ptr::from_ref(holder).cast_mut(), Ordering::Release);
        shared.state.store(pack(section, n_chunks, 0), Ordering::SeqCst);
        if shared.sleepers.load(Ordering::SeqCst) > 0 {
            let _g = shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            shared.wake.notify_all();
        }
        shared.work(section);
        while shared.done.load(Ordering::Acquire) < n_chunks as usize {
            std::hint::spin_loop();
        }
        drop(busy);
        if shared.panicked.load(Ordering::Relaxed) {
            panic!("a kernel panicked on a pool thread");
        }
    }

    /// Runs `f(start, chunk)` over disjoint chunks of `data` (each at least `min_chunk`
    /// long but the last, `start` its offset in `data`), in parallel when there is more
    /// than one thread. For element-wise work, whose results do not depend on the split.
    pub fn for_chunks_mut<T, F>(&self, data: &mut [T], min_chunk: usize, f: F)
    where
        T: Send,
        F: Fn(usize, &mut [T]) + Sync + Send,
    {
        let ptr = SharedMut(data.as_mut_ptr());
        self.for_ranges(data.len(), min_chunk, |r| {
            // SAFETY: the ranges handed out by `for_ranges` are disjoint and within `data`,
            // which stays mutably borrowed for the whole call.
            let chunk = unsafe { std::slice::from_raw_parts_mut(ptr.ptr().add(r.start), r.len()) };
            f(r.start, chunk);
        });
    }
}

impl Drop for Threads {
    fn drop(&mut self) {
        if let Some(shared) = &self.shared {
            shared.shutdown.store(true, Ordering::SeqCst);
            let _g = shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            shared.wake.notify_all();
        }
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}

/// A raw pointer that may be shared between workers writing disjoint elements.
pub(crate) struct SharedMut<T>(pub(crate) *mut T);
// SAFETY: users only write disjoint indices from different threads.
unsafe impl<T> Send for SharedMut<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for SharedMut<T> {}

impl<T> Clone for SharedMut<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SharedMut<T> {}

impl<T> SharedMut<T> {
    /// The pointer (a method, so closures capture the whole `Send` wrapper).
    #[inline]
    pub(crate) fn ptr(self) -> *mut T {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_slice_once() {
        for n in [1, 2, 3] {
            let t = Threads::new(n);
            let mut v = vec![0u32; 10_007];
            t.for_chunks_mut(&mut v, 100, |start, c| {
                for (i, x) in c.iter_mut().enumerate() {
                    *x += (start + i) as u32 + 1;
                }
            });
            assert!(v.iter().enumerate().all(|(i, &x)| x == i as u32 + 1), "{n} threads");
        }
    }

    #[test]
    fn every_item_runs_exactly_once() {
        for n in [1, 2, 3, 5] {
            let t = Threads::new(n);
            for len in [0usize, 1, 2, 7, 64, 1000, 12345] {
                for min_chunk in [1, 4, 100] {
                    let hits: Vec<AtomicUsize> = (0..len).map(|_| AtomicUsize::new(0)).collect();
                    t.for_ranges(len, min_chunk, |r| {
                        for i in r {
                            hits[i].fetch_add(1, Ordering::Relaxed);
                        }
                    });
                    assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "n={n} len={len}");
                }
            }
        }
    }

    #[test]
    fn many_short_sections_nested_and_concurrent_calls() {
        let t = Arc::new(Threads::new(2));
        let total = AtomicUsize::new(0);
        for _ in 0..20_000 {
            t.for_ranges(16, 1, |r| {
                total.fetch_add(r.len(), Ordering::Relaxed);
            });
        }
        assert_eq!(total.load(Ordering::Relaxed), 20_000 * 16);
        // A section inside a section runs inline.
        let inner = AtomicUsize::new(0);
        t.for_ranges(8, 1, |_| t.for_ranges(10, 1, |r| _ = inner.fetch_add(r.len(), Ordering::Relaxed)));
        assert_eq!(inner.load(Ordering::Relaxed), 80);
        // Two threads sharing one pool.
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let t = Arc::clone(&t);
                std::thread::spawn(move || {
                    let sum = AtomicUsize::new(0);
                    for _ in 0..2000 {
                        t.for_ranges(100, 1, |r| _ = sum.fetch_add(r.sum::<usize>(), Ordering::Relaxed));
                    }
                    sum.load(Ordering::Relaxed)
                })
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap(), 2000 * 4950);
        }
    }

    #[test]
    fn a_panicking_chunk_reaches_the_caller_and_the_pool_survives() {
        let t = Threads::new(2);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            t.for_ranges(64, 1, |r| assert!(!r.contains(&40), "boom"));
        }));
        assert!(r.is_err());
        let n = AtomicUsize::new(0);
        t.for_ranges(64, 1, |r| _ = n.fetch_add(r.len(), Ordering::Relaxed));
        assert_eq!(n.load(Ordering::Relaxed), 64);
    }

    #[test]
    fn idle_pool_parks_and_wakes() {
        let t = Threads::new(3);
        std::thread::sleep(SPIN * 20);
        let n = AtomicUsize::new(0);
        t.for_ranges(300, 1, |r| _ = n.fetch_add(r.len(), Ordering::Relaxed));
        assert_eq!(n.load(Ordering::Relaxed), 300);
    }
}
