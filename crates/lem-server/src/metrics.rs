//! Prometheus metrics: counters, gauges and histograms kept with atomics, rendered as
//! the text exposition format by `GET /metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use lem_state::PrefixStats;

/// A histogram with fixed bucket bounds (seconds).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_ns: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    /// An empty histogram over `bounds` (ascending upper bounds, in seconds).
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, seconds: f64) {
        if let Some(i) = self.bounds.iter().position(|&b| seconds <= b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_ns.fetch_add((seconds.max(0.0) * 1e9) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cumulative += c.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9);
        let _ = writeln!(out, "{name}_count {count}");
    }
}

const TTFT_BOUNDS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
const TOKEN_BOUNDS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0];
const REQUEST_BOUNDS: &[f64] = &[0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// Every metric the server keeps.
#[derive(Debug)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    errors: Mutex<BTreeMap<&'static str, u64>>,
    /// Prompt tokens of finished generations.
    pub prompt_tokens: AtomicU64,
    /// Prompt tokens that came from reused KV state (prefix cache or session).
    pub cached_tokens: AtomicU64,
    /// Generated tokens.
    pub generated_tokens: AtomicU64,
    /// Generations by finish reason.
    finishes: Mutex<BTreeMap<&'static str, u64>>,
    /// Time from request arrival to first token.
    pub ttft: Histogram,
    /// Time between consecutive tokens of one sequence.
    pub token_latency: Histogram,
    /// Time from request arrival to its response's end.
    pub request_duration: Histogram,
    /// Sequences in the batch (gauge).
    pub active: AtomicU64,
    /// Requests waiting for a batch slot (gauge).
    pub queued: AtomicU64,
    /// KV bytes held by the sequences in the batch (gauge).
    pub batch_kv_bytes: AtomicU64,
    /// KV bytes of the finished sequences kept for reuse (gauge).
    pub recent_kv_bytes: AtomicU64,
    /// Forward passes run by the batcher.
    pub batch_steps: AtomicU64,
    /// Sequences summed over those steps (divide by steps for the mean batch size).
    pub batch_sequences: AtomicU64,
    /// Session wakes that found a session.
    pub session_wakes: AtomicU64,
    /// Session sleeps.
    pub session_sleeps: AtomicU64,
    /// Draft tokens proposed and verified (speculative decoding).
    pub draft_tokens: AtomicU64,
    /// Draft tokens the model accepted.
    pub draft_accepted: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Mutex::default(),
            errors: Mutex::default(),
            prompt_tokens: AtomicU64::new(0),
            cached_tokens: AtomicU64::new(0),
            generated_tokens: AtomicU64::new(0),
            finishes: Mutex::default(),
            ttft: Histogram::new(TTFT_BOUNDS),
            token_latency: Histogram::new(TOKEN_BOUNDS),
            request_duration: Histogram::new(REQUEST_BOUNDS),
            active: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            batch_kv_bytes: AtomicU64::new(0),
            recent_kv_bytes: AtomicU64::new(0),
            batch_steps: AtomicU64::new(0),
            batch_sequences: AtomicU64::new(0),
            session_wakes: AtomicU64::new(0),
            session_sleeps: AtomicU64::new(0),
            draft_tokens: AtomicU64::new(0),
            draft_accepted: AtomicU64::new(0),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Escapes a label value.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl Metrics {
    /// Counts a finished HTTP request (and an error, for an error response).
    pub fn request(&self, method: &str, route: &str, status: u16, error: Option<&'static str>, seconds: f64) {
        *lock(&self.requests).entry((method.to_owned(), route.to_owned(), status)).or_default() += 1;
        if let Some(kind) = error {
            *lock(&self.errors).entry(kind).or_default() += 1;
        }
        self.request_duration.observe(seconds);
    }

    /// Counts a finished generation.
    pub fn generation(&self, finish: &'static str, prompt: usize, cached: usize, generated: usize) {
        self.prompt_tokens.fetch_add(prompt as u64, Ordering::Relaxed);
        self.cached_tokens.fetch_add(cached as u64, Ordering::Relaxed);
        self.generated_tokens.fetch_add(generated as u64, Ordering::Relaxed);
        *lock(&self.finishes).entry(finish).or_default() += 1;
    }

    /// Counts a finished generation's speculation.
    pub fn speculation(&self, stats: &lem_engine::SpeculationStats) {
        self.draft_tokens.fetch_add(stats.drafted as u64, Ordering::Relaxed);
        self.draft_accepted.fetch_add(stats.accepted as u64, Ordering::Relaxed);
    }

    /// The exposition text, with the prefix cache's counters.
    pub fn render(&self, prefix: &PrefixStats) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        let gauge = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        let _ = writeln!(out, "# HELP lem_requests_total HTTP requests by method, route and status.");
        let _ = writeln!(out, "# TYPE lem_requests_total counter");
        for ((method, route, status), n) in lock(&self.requests).iter() {
            let _ = writeln!(
                out,
                "lem_requests_total{{method=\"{}\",route=\"{}\",status=\"{status}\"}} {n}",
                label(method),
                label(route)
            );
        }
        let _ = writeln!(out, "# HELP lem_errors_total Error responses by error type.");
        let _ = writeln!(out, "# TYPE lem_errors_total counter");
        for (kind, n) in lock(&self.errors).iter() {
            let _ = writeln!(out, "lem_errors_total{{type=\"{kind}\"}} {n}");
        }
        let _ = writeln!(out, "# HELP lem_generations_total Finished generations by finish reason.");
        let _ = writeln!(out, "# TYPE lem_generations_total counter");
        for (reason, n) in lock(&self.finishes).iter() {
            let _ = writeln!(out, "lem_generations_total{{finish_reason=\"{reason}\"}} {n}");
        }
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(&mut out, "lem_prompt_tokens_total", "Prompt tokens (tokens in).", load(&self.prompt_tokens));
        counter(
            &mut out,
            "lem_cached_prompt_tokens_total",
            "Prompt tokens served from reused KV state.",
            load(&self.cached_tokens),
        );
        counter(&mut out, "lem_generated_tokens_total", "Generated tokens (tokens out).", load(&self.generated_tokens));
        self.ttft.render(&mut out, "lem_time_to_first_token_seconds", "Time from request arrival to first token.");
        self.token_latency.render(&mut out, "lem_token_latency_seconds", "Time between consecutive tokens.");
        self.request_duration.render(&mut out, "lem_request_duration_seconds", "Time to the end of the response.");
        gauge(&mut out, "lem_active_sequences", "Sequences in the batch.", load(&self.active));
        gauge(&mut out, "lem_queued_requests", "Requests waiting for a batch slot.", load(&self.queued));
        counter(&mut out, "lem_batch_steps_total", "Batched forward passes.", load(&self.batch_steps));
        counter(
            &mut out,
            "lem_draft_tokens_total",
            "Draft tokens verified (speculative decoding).",
            load(&self.draft_tokens),
        );
        counter(
            &mut out,
            "lem_draft_accepted_tokens_total",
            "Draft tokens the model accepted.",
            load(&self.draft_accepted),
        );
        counter(
            &mut out,
            "lem_batch_sequences_total",
            "Sequences summed over batched forward passes.",
            load(&self.batch_sequences),
        );
        counter(&mut out, "lem_prefix_cache_hits_total", "Prefix cache look-ups that reused blocks.", prefix.hits);
        counter(&mut out, "lem_prefix_cache_misses_total", "Prefix cache look-ups that found nothing.", prefix.misses);
        counter(
            &mut out,
            "lem_prefix_cache_reused_tokens_total",
            "Tokens restored from the prefix cache.",
            prefix.reused_tokens,
        );
        counter(
            &mut out,
            "lem_prefix_cache_blocks_stored_total",
            "Blocks stored in the prefix cache.",
            prefix.blocks_stored,
        );
        gauge(
            &mut out,
            "lem_prefix_cache_memory_bytes",
            "Bytes of KV in the prefix cache's memory tier.",
            prefix.memory_bytes,
        );
        gauge(
            &mut out,
            "lem_prefix_cache_disk_bytes",
            "Bytes of KV in the prefix cache's disk tier.",
            prefix.disk_bytes,
        );
        gauge(
            &mut out,
            "lem_batch_kv_bytes",
            "Bytes of KV held by the sequences in the batch.",
            load(&self.batch_kv_bytes),
        );
        gauge(
            &mut out,
            "lem_recent_kv_bytes",
            "Bytes of KV held by recently finished sequences kept for reuse.",
            load(&self.recent_kv_bytes),
        );
        gauge(
            &mut out,
            "lem_kv_bytes",
            "Bytes of KV in memory: the batch's sequences, the kept sequences and the prefix cache.",
            load(&self.batch_kv_bytes) + load(&self.recent_kv_bytes) + prefix.memory_bytes,
        );
        counter(&mut out, "lem_session_wakes_total", "Sessions woken from disk.", load(&self.session_wakes));
        counter(&mut out, "lem_session_sleeps_total", "Sessions put to sleep on disk.", load(&self.session_sleeps));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let h = Histogram::new(&[0.1, 1.0]);
        for s in [0.05, 0.5, 0.7, 5.0] {
            h.observe(s);
        }
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"0.1\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"1\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("x_count 4\n"), "{out}");
        assert!(out.contains("x_sum 6.25"), "{out}");
    }

    #[test]
    fn render_has_every_family() {
        let m = Metrics::default();
        m.request("POST", "/v1/chat/completions", 200, None, 0.2);
        m.request("POST", "/v1/chat/completions", 400, Some("invalid_request_error"), 0.001);
        m.generation("stop", 10, 4, 3);
        let text = m.render(&PrefixStats::default());
        for needle in [
            "lem_requests_total{method=\"POST\",route=\"/v1/chat/completions\",status=\"200\"} 1",
            "lem_errors_total{type=\"invalid_request_error\"} 1",
            "lem_prompt_tokens_total 10",
            "lem_cached_prompt_tokens_total 4",
            "lem_generated_tokens_total 3",
            "lem_generations_total{finish_reason=\"stop\"} 1",
            "# TYPE lem_time_to_first_token_seconds histogram",
            "# TYPE lem_token_latency_seconds histogram",
            "lem_prefix_cache_hits_total 0",
            "lem_prefix_cache_reused_tokens_total 0",
            "lem_kv_bytes 0",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
