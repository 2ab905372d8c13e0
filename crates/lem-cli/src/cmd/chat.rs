//! `lem chat`: an interactive conversation that keeps its KV state between turns, and
//! with `--session NAME` across processes (woken at start, put to sleep after each turn).

use std::io::{BufRead, IsTerminal, Write};
use std::ops::ControlFlow;

use lem_engine::{Engine, GenerateRequest, Sequence};
use lem_state::{StateError, Transcript, generate_cached};
use lem_tokenizer::{Bos, ChatMessage};

use crate::cmd::kv::PrefixCacheArgs;
use crate::cmd::session::StoreArgs;
use crate::common::{GrammarArgs, ModelArgs, SamplingArgs};

/// Arguments of `lem chat`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// System message that opens the conversation.
    #[arg(long)]
    system: Option<String>,
    /// Most tokens per reply.
    #[arg(long, short = 'n', default_value_t = 512)]
    max_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Every reply is constrained by the grammar.
    #[command(flatten)]
    grammar: GrammarArgs,
    /// Named session: wake its KV state and transcript at start, sleep after each turn.
    #[arg(long, value_name = "NAME")]
    session: Option<String>,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    prefix: PrefixCacheArgs,
    #[command(flatten)]
    draft: crate::cmd::draft_args::DraftArgs,
}

/// Feeds only what the cache does not already hold: the rendered conversation is
/// compared with the sequence's tokens and the sequence is rolled back to the common
/// prefix (or restarted when that is impossible).
fn sync_prefix(engine: &Engine, seq: &mut Sequence, ids: &[u32]) -> usize {
    let keep = seq.common_prefix(ids).min(ids.len().saturating_sub(1));
    if seq.truncate(keep).is_err() {
        *seq = engine.new_sequence();
        return 0;
    }
    keep
}

/// Runs `lem chat`.
pub fn run(a: Args) -> anyhow::Result<()> {
    let grammar = a.grammar.grammar()?;
    let engine = a.model.load()?;
    let draft = a.draft.config(&engine)?;
    let interactive = std::io::stdin().is_terminal();
    let base: Vec<ChatMessage> = a.system.iter().map(|s| ChatMessage::system(s.clone())).collect();
    let mut messages = base.clone();
    let mut seq = engine.new_sequence();
    let cache = a.prefix.open()?;
    let session = match &a.session {
        Some(name) => Some((a.store.open()?, name.clone())),
        None => None,
    };
    if let Some((store, name)) = &session {
        if let Some((woken, transcript)) = store.wake(name, &engine)? {
            eprintln!("(woke session {name}: {} tokens, {} messages)", woken.len(), transcript.messages.len());
            seq = woken;
            messages = transcript.to_chat();
            if a.system.is_some() && messages.first() != base.first() {
                eprintln!("(--system ignored: the session keeps its own history; /reset to start over)");
            }
        } else {
            eprintln!("(new session {name})");
        }
    }
    let sleep = |seq: &Sequence, messages: &[ChatMessage]| -> anyhow::Result<()> {
        if let Some((store, name)) = &session {
            store.sleep(name, &engine, seq, &Transcript::from_chat(messages))?;
        }
        Ok(())
    };
    if interactive {
        eprintln!("lem chat: {} ({}); /reset clears the history, /exit quits", a.model.model, engine.path().display());
    }
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        if interactive {
            eprint!("> ");
            std::io::stderr().flush()?;
        }
        let Some(line) = lines.next() else { break };
        let line = line?;
        let input = line.trim();
        match input {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                messages = base.clone();
                seq = engine.new_sequence();
                sleep(&seq, &messages)?;
                eprintln!("(history cleared)");
                continue;
            }
            _ => {}
        }
        messages.push(ChatMessage::user(input.to_owned()));
        let text = engine.render_chat(&messages)?;
        let ids = engine.tokenizer().encode(&text, Bos::ModelDefault)?;
        let keep = sync_prefix(&engine, &mut seq, &ids);
        let req = GenerateRequest {
            max_tokens: a.max_tokens,
            sampling: a.sampling.params(),
            stop: Vec::new(),
            grammar: grammar.clone(),
            draft: draft.clone(),
        };
        let mut out = std::io::stdout().lock();
        let mut on_text = |s: &str| match out.write_all(s.as_bytes()).and_then(|()| out.flush()) {
            Ok(()) => ControlFlow::Continue(()),
            Err(_) => ControlFlow::Break(()),
        };
        let g = match generate_cached(&engine, &mut seq, &ids[keep..], &req, cache.as_ref(), &mut on_text) {
            Ok((g, _)) => g,
            Err(StateError::Engine(lem_engine::EngineError::PromptTooLong { tokens, ctx })) => {
                eprintln!("(conversation of {tokens} tokens no longer fits the context of {ctx}; use /reset)");
                messages.pop();
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        writeln!(out)?;
        if interactive {
            eprintln!("[{} tokens, {:.1} tok/s, reused {} cached tokens]", g.ids.len(), g.timings.decode_tok_s, keep);
        }
        messages.push(ChatMessage::assistant(g.text));
        sleep(&seq, &messages)?;
    }
    Ok(())
}
