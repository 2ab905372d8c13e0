//! `lem session`: list, show, fork and remove the named chat sessions that
//! `lem chat --session NAME` puts to sleep.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use lem_state::{SessionInfo, SessionStore, rfc3339};

use crate::common::print_json;

/// Where sessions live (shared by `lem session` and `lem chat --session`).
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// Session store directory (default: `sessions` in the lem cache directory).
    #[arg(long = "sessions-dir", value_name = "DIR", env = "LEM_SESSIONS_DIR")]
    pub dir: Option<PathBuf>,
}

impl StoreArgs {
    /// Opens the store.
    pub fn open(&self) -> anyhow::Result<SessionStore> {
        let dir = match &self.dir {
            Some(d) => d.clone(),
            None => SessionStore::default_dir()
                .context("no session directory: set --sessions-dir, LEM_SESSIONS_DIR or HOME")?,
        };
        SessionStore::open(&dir).with_context(|| format!("opening session store {}", dir.display()))
    }
}

/// Arguments of `lem session`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    store: StoreArgs,
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// List the sessions.
    List {
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Show one session: its metadata and transcript.
    Show {
        /// Session name.
        name: String,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Copy a session to a new name (the copy continues independently).
    Fork {
        /// Existing session.
        src: String,
        /// New session name.
        dst: String,
    },
    /// Delete a session.
    Rm {
        /// Session name.
        name: String,
    },
}

fn line(s: &SessionInfo) -> String {
    let labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!(
        "{:<24} {:>7} tokens {:>4} msgs {:>9.1} MiB  {}  {}{}",
        s.name,
        s.tokens,
        s.messages,
        s.bytes as f64 / (1 << 20) as f64,
        rfc3339(s.last_used_unix_ms),
        s.model_file,
        if labels.is_empty() { String::new() } else { format!("  [{}]", labels.join(", ")) }
    )
}

/// Runs `lem session`.
pub fn run(a: Args) -> anyhow::Result<()> {
    let store = a.store.open()?;
    match a.action {
        Action::List { json } => {
            let list = store.list()?;
            if json {
                return print_json(&list);
            }
            let mut o = std::io::stdout().lock();
            for s in &list {
                writeln!(o, "{}", line(s))?;
            }
        }
        Action::Show { name, json } => {
            let (info, transcript) = store.show(&name)?;
            if json {
                let mut v = serde_json::to_value(&info)?;
                v["transcript"] = serde_json::to_value(&transcript)?;
                v["model_fingerprint"] = serde_json::json!(info.model_fingerprint);
                return print_json(&v);
            }
            let mut o = std::io::stdout().lock();
            writeln!(o, "{}", line(&info))?;
            writeln!(o, "  model fingerprint {}", info.model_fingerprint)?;
            writeln!(o, "  created {}", rfc3339(info.created_unix_ms))?;
            for m in &transcript.messages {
                writeln!(o, "  [{}] {}", m.role, m.content.replace('\n', "\n    "))?;
            }
        }
        Action::Fork { src, dst } => {
            let info = store.fork(&src, &dst)?;
            eprintln!("forked {src} -> {dst} ({} tokens)", info.tokens);
        }
        Action::Rm { name } => {
            if !store.remove(&name)? {
                anyhow::bail!("no session named '{name}'");
            }
            eprintln!("removed {name}");
        }
    }
    Ok(())
}
