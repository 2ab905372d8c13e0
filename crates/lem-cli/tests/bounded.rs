//! Bounded memory through the binary: `--kv-sinks` / `--kv-window` keep resident KV
//! bytes flat past the bound (on the packaged SmolLM2), and the two flags go together.
#![allow(missing_docs)]

mod common;

use common::{ok_on, packaged, run};

/// A varied text of about `words` words (roughly as many tokens for SmolLM2, plus some).
fn text(words: usize) -> String {
    let w = ["amber", "river", "stone", "lantern", "quiet", "market", "seven", "north", "copper", "garden", "window"];
    (0..words).map(|i| w[(i * 7 + i / 11) % w.len()]).collect::<Vec<_>>().join(" ")
}

fn resident(m: &std::path::Path, words: usize, bound: bool) -> (usize, usize) {
    let prompt = text(words);
    let mut args = vec!["generate", "-p", &prompt, "-n", "2", "--temperature", "0", "--json", "--ctx-size", "4096"];
    if bound {
        args.extend(["--kv-sinks", "4", "--kv-window", "512"]);
    }
    let v: serde_json::Value = serde_json::from_str(&ok_on(m, &args)).unwrap();
    (v["kv"]["resident_bytes"].as_u64().unwrap() as usize, v["prompt_ids"].as_array().unwrap().len())
}

#[test]
fn sink_window_resident_bytes_stop_growing() {
    let Some(m) = packaged("smollm2-135m") else { return };
    let (short, n_short) = resident(&m, 1500, true);
    let (long, n_long) = resident(&m, 1900, true);
    assert!(n_short > 1100 && n_long > n_short + 300, "prompts of {n_short} and {n_long} tokens");
    // Both past sinks + window + one batch (4 + 512 + 512 cells): the same bytes.
    assert_eq!(short, long, "resident bytes grew from {n_short} to {n_long} tokens");
    // SmolLM2: 30 layers x 3 KV heads x 64 x f16, K and V: 23040 bytes a cell.
    assert_eq!(short, (4 + 512 + 512) * 23040);
    let (full, _) = resident(&m, 1500, false);
    assert!(full > short, "full cache {full} bytes, bounded {short}");
}

#[test]
fn sinks_and_window_go_together() {
    for args in [&["generate", "-p", "x", "--kv-sinks", "4"][..], &["generate", "-p", "x", "--kv-window", "8"]] {
        let (out, _, stderr) = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("--kv-"), "{stderr}");
    }
    let (out, _, stderr) = run(&["generate", "-p", "x", "--kv-sinks", "4", "--kv-window", "0"]);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
}
