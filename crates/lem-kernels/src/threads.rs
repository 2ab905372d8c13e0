//! One thread pool per engine, sized once, shared by every kernel.

use std::ops::Range;

/// The worker pool the kernels run on.
///
/// With one thread, work runs inline on the caller (no pool, no synchronisation). With
/// more, a dedicated rayon pool is used, so lem never competes with a global pool that a
/// dependency might also start (no oversubscription).
pub struct Threads {
    pool: Option<rayon::ThreadPool>,
    n: usize,
}

impl std::fmt::Debug for Threads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Threads").field("n", &self.n).finish()
    }
}

impl Threads {
    /// A pool of `n` threads (0 means "number of available cores").
    pub fn new(n: usize) -> Threads {
        let n = if n == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { n };
        let pool = if n > 1 {
            rayon::ThreadPoolBuilder::new().num_threads(n).thread_name(|i| format!("lem-worker-{i}")).build().ok()
        } else {
            None
        };
        let n = if pool.is_some() { n } else { 1 };
        Threads { pool, n }
    }

    /// Number of threads work is spread over.
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
        match &self.pool {
            Some(pool) if len > min_chunk => {
                // A few chunks per thread balance uneven work without much overhead.
                let want = self.n * 4;
                let chunk = len.div_ceil(want).max(min_chunk);
                let n_chunks = len.div_ceil(chunk);
                pool.install(|| {
                    use rayon::prelude::*;
                    (0..n_chunks).into_par_iter().for_each(|c| {
                        let start = c * chunk;
                        f(start..(start + chunk).min(len));
                    });
                });
            }
            _ => f(0..len),
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
