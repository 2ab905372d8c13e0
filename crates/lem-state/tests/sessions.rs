//! Named sessions on tiny models: sleep and wake are exact, the index lists what is on
//! disk (and repairs itself after a crash between the two writes), fork and remove work,
//! a save killed midway leaves the previous state, and waking checks identity.
#![allow(missing_docs)]

mod common;

use std::collections::BTreeMap;

use common::{gen_ids, load, tiny};
use lem_state::{SessionStore, StateError, Transcript, TranscriptMessage, atomic_write_with};

fn prompt(n: usize, seed: u32) -> Vec<u32> {
    (0..n as u32).map(|i| 3 + (i.wrapping_mul(2654435761).wrapping_add(seed * 97) >> 7) % 61).collect()
}

fn transcript(turns: usize) -> Transcript {
    Transcript {
        messages: (0..turns)
            .map(|i| TranscriptMessage {
                role: if i % 2 == 0 { "user" } else { "assistant" }.into(),
                content: format!("message {i}"),
            })
            .collect(),
    }
}

#[test]
fn sleep_wake_list_fork_remove() {
    let d = tempfile::tempdir().unwrap();
    let e = load(&tiny::write(&tiny::gemma3(11), d.path(), "g.gguf"));
    let store = SessionStore::open(d.path().join("store")).unwrap();
    assert!(store.wake("nobody", &e).unwrap().is_none());
    assert!(store.list().unwrap().is_empty());

    let p = prompt(600, 1);
    let mut seq = e.new_sequence();
    seq.feed(&e, &p).unwrap();
    let labels = BTreeMap::from([("user".to_owned(), "ada".to_owned())]);
    let info = store.sleep_with_labels("chat-1", &e, &seq, &transcript(2), Some(labels.clone())).unwrap();
    assert_eq!((info.tokens, info.messages), (600, 2));
    assert_eq!(info.labels, labels);
    assert_eq!(info.model_fingerprint, e.model_fingerprint().unwrap());

    let cont = prompt(4, 5);
    let full: Vec<u32> = p.iter().chain(&cont).copied().collect();
    let want = gen_ids(&e, &mut e.new_sequence(), &full, 5);
    let (mut woken, t) = store.wake("chat-1", &e).unwrap().unwrap();
    assert_eq!(t, transcript(2));
    assert_eq!(gen_ids(&e, &mut woken, &cont, 5), want);

    // Sleeping again keeps labels and creation time.
    let again = store.sleep("chat-1", &e, &woken, &transcript(4)).unwrap();
    assert_eq!(again.labels, labels);
    assert_eq!(again.created_unix_ms, info.created_unix_ms);
    assert_eq!(again.messages, 4);
    assert!(again.tokens > 600);

    let forked = store.fork("chat-1", "chat-2").unwrap();
    assert_eq!(forked.tokens, again.tokens);
    assert!(matches!(store.fork("chat-1", "chat-2"), Err(StateError::SessionExists(_))));
    assert!(matches!(store.fork("none", "x"), Err(StateError::NoSuchSession(_))));
    let names: Vec<String> = store.list().unwrap().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["chat-1", "chat-2"]);
    let (shown, t) = store.show("chat-2").unwrap();
    assert_eq!((shown.tokens, t.messages.len()), (again.tokens, 4));

    assert!(store.remove("chat-1").unwrap());
    assert!(!store.remove("chat-1").unwrap());
    assert!(store.wake("chat-1", &e).unwrap().is_none());
    let (w2, _) = store.wake("chat-2", &e).unwrap().unwrap();
    assert_eq!(w2.tokens(), woken.tokens());
    assert_eq!(store.list().unwrap().len(), 1);

    for bad in ["", "../x", ".hidden", "a/b", "sp ace", &"x".repeat(129)] {
        assert!(matches!(store.wake(bad, &e), Err(StateError::InvalidName(_))), "{bad:?}");
    }
}

#[test]
fn killed_mid_save_keeps_the_previous_state() {
    let d = tempfile::tempdir().unwrap();
    let e = load(&tiny::write(&tiny::llama(7), d.path(), "m.gguf"));
    let store = SessionStore::open(d.path().join("store")).unwrap();
    let mut seq = e.new_sequence();
    seq.feed(&e, &prompt(30, 1)).unwrap();
    store.sleep("s", &e, &seq, &transcript(1)).unwrap();
    let path = store.file("s").unwrap();
    let good = std::fs::read(&path).unwrap();
    // A save that dies after writing half the new file.
    let err = atomic_write_with(&path, |w| {
        w.write_all(&good[..good.len() / 2])?;
        Err(std::io::Error::other("killed"))
    });
    assert!(err.is_err());
    // A crashed process's leftover temporary file in the directory.
    std::fs::write(path.with_file_name(".s.lemkv.999.1.0.tmp"), &good[..100]).unwrap();
    let (woken, t) = store.wake("s", &e).unwrap().unwrap();
    assert_eq!(woken.tokens(), seq.tokens());
    assert_eq!(t, transcript(1));
    assert_eq!(store.list().unwrap().len(), 1);
}

#[test]
fn index_is_repaired_from_the_files() {
    let d = tempfile::tempdir().unwrap();
    let e = load(&tiny::write(&tiny::llama(7), d.path(), "m.gguf"));
    let store = SessionStore::open(d.path().join("store")).unwrap();
    let mut seq = e.new_sequence();
    seq.feed(&e, &prompt(10, 1)).unwrap();
    store.sleep("a", &e, &seq, &transcript(1)).unwrap();
    store.sleep("b", &e, &seq, &transcript(3)).unwrap();
    // A crash after the session file was replaced but before the index was: simulate by
    // losing the index, then by a stale entry and a vanished file.
    std::fs::remove_file(d.path().join("store/index.json")).unwrap();
    let list = store.list().unwrap();
    assert_eq!(list.iter().map(|s| (s.name.as_str(), s.messages)).collect::<Vec<_>>(), [("a", 1), ("b", 3)]);
    std::fs::remove_file(store.file("a").unwrap()).unwrap();
    seq.feed(&e, &prompt(5, 2)).unwrap();
    let mut snap = lem_state::Snapshot::capture(&e, &seq, BTreeMap::new(), BTreeMap::new()).unwrap();
    snap.write(&store.file("b").unwrap()).unwrap();
    let list = store.list().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].tokens, 15);
}

#[test]
fn waking_checks_identity() {
    let d = tempfile::tempdir().unwrap();
    let e = load(&tiny::write(&tiny::llama(7), d.path(), "m.gguf"));
    let other = load(&tiny::write(&tiny::llama(9), d.path(), "other.gguf"));
    let store = SessionStore::open(d.path().join("store")).unwrap();
    let mut seq = e.new_sequence();
    seq.feed(&e, &prompt(10, 1)).unwrap();
    store.sleep("s", &e, &seq, &transcript(1)).unwrap();
    let err = store.wake("s", &other).unwrap_err();
    assert!(matches!(err, StateError::ModelMismatch { .. }), "{err}");
    // A corrupted session file.
    let path = store.file("s").unwrap();
    let mut b = std::fs::read(&path).unwrap();
    let at = b.len() - 10;
    b[at] ^= 4;
    std::fs::write(&path, b).unwrap();
    assert!(matches!(store.wake("s", &e), Err(StateError::Checksum { .. })));
}

#[test]
fn store_is_shared_across_threads() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny::write(&tiny::llama(7), d.path(), "m.gguf");
    let store = std::sync::Arc::new(SessionStore::open(d.path().join("store")).unwrap());
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let (store, model) = (store.clone(), model.clone());
            std::thread::spawn(move || {
                let e = load(&model);
                let mut seq = e.new_sequence();
                seq.feed(&e, &prompt(8 + t, t as u32)).unwrap();
                for i in 0..3 {
                    store.sleep(&format!("t{t}"), &e, &seq, &transcript(i)).unwrap();
                    let (w, _) = store.wake(&format!("t{t}"), &e).unwrap().unwrap();
                    assert_eq!(w.tokens(), seq.tokens());
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let list = store.list().unwrap();
    assert_eq!(list.len(), 4);
    assert!(list.iter().all(|s| s.messages == 2));
}
