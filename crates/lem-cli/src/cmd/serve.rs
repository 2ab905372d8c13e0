//! `lem serve`: the HTTP server (OpenAI, Anthropic and Ollama APIs).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use lem_server::{ServerConfig, SessionLimits};

use crate::common::ModelArgs;

/// Arguments of `lem serve`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Address to listen on (loopback by default; 0.0.0.0 exposes the server).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0: any free port, printed at start).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Require this key as `Authorization: Bearer KEY` or `x-api-key: KEY`.
    #[arg(long, env = "LEM_API_KEY")]
    api_key: Option<String>,
    /// Most sequences generating at once (they share each forward pass).
    #[arg(long, default_value_t = 16)]
    max_concurrent: usize,
    /// Most requests waiting for a slot; more are refused with 429.
    #[arg(long, default_value_t = 64)]
    max_queue: usize,
    /// Most prompt tokens prefilled per batch step (long prompts are split).
    #[arg(long, default_value_t = 256)]
    prefill_chunk: usize,
    /// Largest request body in bytes (larger: 413).
    #[arg(long, default_value_t = 2 << 20)]
    max_body_bytes: usize,
    /// Directory of named sessions (default: $LEM_SESSIONS_DIR, else the lem cache).
    #[arg(long)]
    sessions_dir: Option<PathBuf>,
    /// Directory for the prefix cache's disk tier (default: memory only).
    #[arg(long)]
    prefix_cache_dir: Option<PathBuf>,
    /// Memory budget of the prefix cache in MiB.
    #[arg(long, default_value_t = 512)]
    prefix_cache_mib: usize,
    /// Seconds running generations get to finish on SIGTERM/SIGINT.
    #[arg(long, default_value_t = 10)]
    shutdown_grace: u64,
    /// A Jinja chat template (Hugging Face conventions) used instead of the model's.
    #[arg(long, value_name = "FILE")]
    chat_template_file: Option<PathBuf>,
    /// `<think>` reasoning: show (inline in the content), hide (dropped) or capture
    /// (returned apart: reasoning_content, thinking blocks, message.thinking).
    #[arg(long, default_value = "capture")]
    reasoning: lem_server::reasoning::ReasoningMode,
    /// How /v1/embeddings and /api/embed pool the final hidden states: mean, last or first.
    #[arg(long, default_value = "mean")]
    pooling: lem_engine::Pooling,
    /// Finished sequences kept in memory for token-exact reuse by the next request.
    #[arg(long, default_value_t = 8)]
    kept_sequences: usize,
    /// Memory budget of the kept sequences in MiB (least recently used dropped first;
    /// /metrics reports lem_recent_kv_bytes).
    #[arg(long, default_value_t = 256)]
    kept_mib: usize,
    /// Most named sessions; a request creating one more gets 507 (existing ones go on).
    #[arg(long, default_value_t = 10_000)]
    max_sessions: usize,
    /// Most MiB of session files on disk; past it, creating a session gets 507.
    #[arg(long, default_value_t = 10_240)]
    sessions_max_mib: u64,
    /// Speculative decoding for every request (a request opts out with
    /// `"speculative": false`); the output is the same either way.
    #[command(flatten)]
    draft: crate::cmd::draft_args::DraftArgs,
}

/// Runs `lem serve`.
pub fn run(a: Args) -> anyhow::Result<()> {
    limit_malloc_arenas();
    ignore_file_size_signal();
    lem_server::init_logging();
    let chat_template = match &a.chat_template_file {
        Some(p) => Some(std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?),
        None => None,
    };
    let engine = a.model.load()?;
    let draft = a.draft.config(&engine)?;
    let config = ServerConfig {
        host: a.host,
        port: a.port,
        api_key: a.api_key.filter(|k| !k.is_empty()),
        max_concurrent: a.max_concurrent,
        max_queue: a.max_queue,
        prefill_chunk: a.prefill_chunk,
        max_body_bytes: a.max_body_bytes,
        sessions_dir: a.sessions_dir,
        prefix_cache_dir: a.prefix_cache_dir,
        prefix_cache_memory: a.prefix_cache_mib << 20,
        shutdown_grace: Duration::from_secs(a.shutdown_grace),
        chat_template,
        reasoning: a.reasoning,
        pooling: a.pooling,
        recent_sequences: a.kept_sequences,
        recent_bytes: a.kept_mib << 20,
        session_limits: SessionLimits { max_sessions: a.max_sessions, max_bytes: a.sessions_max_mib << 20 },
        draft,
    };
    lem_server::run(engine, &a.model.model, &config, |addr, state| {
        eprintln!(
            "lem: serving {} on http://{addr} (OpenAI /v1, Anthropic /v1/messages, Ollama /api; ctx {}, batch {}, sessions in {}; tool calls: {}, reasoning: {}, draft: {})",
            state.names.primary,
            state.engine.ctx_size(),
            config.max_concurrent,
            state.sessions.dir().display(),
            state.tool_format.name(),
            state.reasoning.name(),
            a.draft.draft.as_deref().unwrap_or("none")
        );
    })
    .context("serving")
}

/// A write past the file-size limit (`RLIMIT_FSIZE`, `ulimit -f`) raises SIGXFSZ, whose
/// default action kills the process. A server must not die because one session save hit
/// a limit: with the signal ignored such a write fails with EFBIG ("File too large"),
/// which the save reports like a full disk (logged, the session keeps its previous
/// turn) while the server goes on serving (docs/decisions.md, "SIGXFSZ in the server").
fn ignore_file_size_signal() {
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to SIG_IGN installs no handler code; called
    // before the server starts its threads.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

/// glibc gives every thread that allocates its own heap arena (up to 8 per core) and
/// rarely returns their free memory, so a server whose requests allocate on tokio's
/// worker and blocking threads (session wakes read and decode whole KV files) grows
/// resident memory with traffic that holds nothing: measured with `bench/soak.py --only
/// session_turn`, 16 clients over 100 sessions for 2 minutes, resident memory crept from
/// 340 to 410 MiB with the default arenas and stayed flat at 265-280 MiB with two
/// (docs/decisions.md, "Allocator arenas in the server"). `MALLOC_ARENA_MAX` in the
/// environment still wins.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only changes allocator tuning; called before the server starts
        // its threads.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}
