//! `lem score attention`, `lem inspect` and `lem generate --probe` through the real
//! binary: usage and error paths (one `lem: error:` line, never a panic) on snapshots and
//! files built here, and runs on the packaged models when they are in the cache (skipped
//! with a note otherwise).
#![allow(missing_docs)]

mod common;

use std::path::{Path, PathBuf};

use common::{fails_with_one_line, ok_on, packaged, run, s, succeeds};
use lem_score::{KeySnapshot, SnapshotMeta};
use serde_json::Value;

/// A few-head snapshot (2 layers, 2 KV heads, 4 positions, D = 3) saved under `dir`.
fn snapshot(dir: &Path, post_rotary: bool) -> PathBuf {
    let meta = SnapshotMeta {
        model_fingerprint: "ab".repeat(32),
        model_name: "tiny.gguf".into(),
        token_ids: vec![1, 2, 3, 4],
        post_rotary,
    };
    let head = |s: f32| (0..12).map(|i| ((i * 7 % 5) as f32 - 2.0) * s + 0.1).collect::<Vec<f32>>();
    let layers = vec![Some(vec![head(1.0), head(0.5)]), Some(vec![head(-1.0), head(2.0)])];
    let snap = KeySnapshot::new(meta, 2, 4, 3, layers).unwrap();
    let p = dir.join(if post_rotary { "keys.safetensors" } else { "pre.safetensors" });
    snap.save(&p).unwrap();
    p
}

#[test]
fn help_lists_the_new_commands() {
    let (top, _) = succeeds(&["--help"]);
    assert!(top.contains("score") && top.contains("inspect"), "{top}");
    let (h, _) = succeeds(&["score", "attention", "--help"]);
    for flag in ["--prompt", "--keys", "--prompts", "--min-score", "--out", "--plot", "--keys-out", "--json", "--chat"]
    {
        assert!(h.contains(flag), "score attention --help lacks {flag}");
    }
    let (h, _) = succeeds(&["inspect", "--help"]);
    for flag in ["--capture", "--layers", "--out", "--prompt"] {
        assert!(h.contains(flag), "inspect --help lacks {flag}");
    }
    let (h, _) = succeeds(&["generate", "--help"]);
    assert!(h.contains("--probe"), "generate --help lacks --probe");
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["score", "attention"][..],
        &["score", "attention", "--prompts", "x.jsonl"],
        &["score", "attention", "--prompt", "hi", "--min-score", "5"],
        &["score", "attention", "--prompt", "hi", "--keys", "k.safetensors"],
        &["score", "attention", "--keys", "k.safetensors", "--keys-out", "o.safetensors"],
        &["inspect", "--prompt", "hi"],
    ] {
        let (out, _, stderr) = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    }
}

#[test]
fn score_a_saved_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let p = snapshot(dir.path(), true);
    let (table, _) = succeeds(&["score", "attention", "--keys", s(&p)]);
    for word in ["composite", "mean_coherence", "few heads", "tiny.gguf", "collapse_count", "diff_l"] {
        assert!(table.contains(word), "table lacks {word}:\n{table}");
    }
    let png = dir.path().join("plot.png");
    let (json, _) = succeeds(&["score", "attention", "--keys", s(&p), "--json", "--plot", s(&png)]);
    let v: Value = serde_json::from_str(json.trim()).unwrap();
    let want = lem_score::score(&KeySnapshot::load(&p).unwrap());
    assert_eq!(v["composite"], want.composite);
    assert_eq!(v["mean_coherence"], want.mean_coherence);
    assert_eq!(v["regime"], "few_heads");
    assert_eq!(v["few_heads"], true);
    assert_eq!(v["n_tokens"], 4);
    assert_eq!(v["model"]["fingerprint"], "ab".repeat(32));
    assert_eq!(v["features"].as_array().unwrap().len(), 5);
    assert_eq!(v["feature_labels"][4], "joint_stability");
    assert_eq!(v["layer_coherence"].as_array().unwrap().len(), 2);
    assert_eq!(v["layer_cross_alignment"].as_array().unwrap().len(), 1);
    assert_eq!(&std::fs::read(&png).unwrap()[..4], b"\x89PNG");
}

#[test]
fn pre_rotary_snapshots_are_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let p = snapshot(dir.path(), false);
    let line = fails_with_one_line(&["score", "attention", "--keys", s(&p)]);
    assert!(line.contains("pre-rotary") && line.contains("--allow-pre-rotary"), "{line}");
    let (_, stderr) = succeeds(&["score", "attention", "--keys", s(&p), "--allow-pre-rotary", "--json"]);
    assert!(stderr.contains("warning"), "{stderr}");
}

#[test]
fn bad_inputs_give_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let line = fails_with_one_line(&["score", "attention", "--keys", "/nonexistent/k.safetensors"]);
    assert!(line.contains("/nonexistent/k.safetensors"), "{line}");
    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"not a snapshot").unwrap();
    let line = fails_with_one_line(&["score", "attention", "--keys", s(&junk)]);
    assert!(line.contains("junk.safetensors"), "{line}");
    // Malformed prompt files are rejected, with the line number, before any model loads.
    let out = dir.path().join("out.jsonl");
    for (body, line_no, what) in [
        ("{\"prompt\": \"ok\"}\nnot json\n", 2, "not valid JSON"),
        ("{\"prompt\": \"ok\"}\n\n{\"prompt\": 3}\n", 3, "\"prompt\" must be a string"),
        ("[1, 2]\n", 1, "expected a JSON object"),
        ("{\"text\": \"hi\"}\n", 1, "missing \"prompt\""),
        ("{\"prompt\": \"a\", \"response\": 7}\n", 1, "\"response\" must be a string"),
    ] {
        let f = dir.path().join("in.jsonl");
        std::fs::write(&f, body).unwrap();
        let line = fails_with_one_line(&["score", "attention", "--prompts", s(&f), "--out", s(&out)]);
        assert!(line.contains(&format!("in.jsonl:{line_no}:")) && line.contains(what), "{body:?}: {line}");
    }
    let line = fails_with_one_line(&["inspect", "--prompt", "hi", "--capture", "keys,logits", "--out", "x.st"]);
    assert!(line.contains("'logits'"), "{line}");
}

// ---------------------------------------------------------------------------------------
// Packaged models (skipped when not in the cache)
// ---------------------------------------------------------------------------------------

const PROMPT: &str = "Rivers carve valleys over thousands of years.";

#[test]
fn packaged_score_prompt_keys_and_inspect() {
    for alias in ["smollm2-135m", "gemma3-270m"] {
        let Some(m) = packaged(alias) else { continue };
        let dir = tempfile::tempdir().unwrap();
        let (keys, png) = (dir.path().join("k.safetensors"), dir.path().join("p.png"));
        let out = ok_on(&m, &["score", "attention", "--json", "-p", PROMPT, "--keys-out", s(&keys), "--plot", s(&png)]);
        let v: Value = serde_json::from_str(out.trim()).unwrap();
        let n_layers = v["model"]["n_layers"].as_u64().unwrap() as usize;
        assert_eq!(v["layer_coherence"].as_array().unwrap().len(), n_layers, "{v}");
        assert_eq!(v["layer_cross_alignment"].as_array().unwrap().len(), n_layers - 1);
        assert!(v["composite"].as_u64().is_some_and(|c| c <= 10_000), "{v}");
        assert_eq!(v["regime"], "few_heads", "both packaged models have <= 4 KV heads");
        assert_eq!(v["model"]["fingerprint"].as_str().unwrap().len(), 64);
        for k in ["mean_coherence", "mean_cross_alignment", "mean_head_entropy", "phase_lock", "collapse_count"] {
            assert!(v[k].is_number(), "{k}: {v}");
        }
        assert!(v["timings"]["score_ms"].is_number());
        assert_eq!(&std::fs::read(&png).unwrap()[..4], b"\x89PNG");
        // The saved snapshot scores to exactly the same numbers.
        let again = succeeds(&["score", "attention", "--json", "--keys", s(&keys)]).0;
        let w: Value = serde_json::from_str(again.trim()).unwrap();
        for k in ["composite", "mean_coherence", "mean_cross_alignment", "phase_lock", "features", "layer_coherence"] {
            assert_eq!(v[k], w[k], "{alias}: {k} differs after save/load");
        }
        assert_eq!(w["n_tokens"], v["n_tokens"]);
        assert_eq!(w["model"]["fingerprint"], v["model"]["fingerprint"]);
        // Raw capture: the first and last layer; its keys equal the snapshot's.
        let cap = dir.path().join("cap.safetensors");
        let listing = ok_on(
            &m,
            &[
                "inspect",
                "--json",
                "-p",
                PROMPT,
                "--capture",
                "keys,values,queries,attn",
                "--layers",
                "0,-1",
                "--out",
                s(&cap),
            ],
        );
        let l: Value = serde_json::from_str(listing.trim()).unwrap();
        let t = v["n_tokens"].as_u64().unwrap() as usize;
        let last = n_layers - 1;
        let (n_kv, hd, n_head) = (
            v["model"]["n_kv_heads"].as_u64().unwrap() as usize,
            v["model"]["head_dim"].as_u64().unwrap() as usize,
            v["model"]["n_head"].as_u64().unwrap() as usize,
        );
        assert_eq!(l["tensors"].as_object().unwrap().len(), 8, "{l}");
        assert_eq!(l["tensors"][format!("keys.{last}")], serde_json::json!([n_kv, t, hd]));
        assert_eq!(l["tensors"]["queries.0"], serde_json::json!([n_head, t, hd]));
        assert_eq!(l["tensors"]["attn.0"], serde_json::json!([n_head, t, t]));
        let bytes = std::fs::read(&cap).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let snap = KeySnapshot::load(&keys).unwrap();
        let k0: Vec<f32> = st
            .tensor("keys.0")
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert!(k0 == snap.layer_keys(0).unwrap().concat(), "{alias}: inspect and score disagree on layer 0 keys");
    }
}

#[test]
fn packaged_batch_scoring_and_filter() {
    let Some(m) = packaged("smollm2-135m") else { return };
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        "{\"prompt\": \"What is the capital of France?\", \"response\": \"Paris.\"}\n\n\
         {\"prompt\": \"Count to five.\"}\n{\"prompt\": \"zzz zzz zzz zzz\", \"response\": null}\n",
    )
    .unwrap();
    let out = dir.path().join("out.jsonl");
    ok_on(&m, &["score", "attention", "--prompts", s(&input), "--out", s(&out)]);
    let rows: Vec<Value> =
        std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows.iter().map(|r| r["line"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 3, 4]);
    assert_eq!(rows[0]["response"], "Paris.");
    assert!(rows[1].get("response").is_none());
    let mut scores: Vec<u64> = rows.iter().map(|r| r["composite"].as_u64().unwrap()).collect();
    scores.sort_unstable();
    let min = scores[1];
    let kept_path = dir.path().join("kept.jsonl");
    ok_on(&m, &["score", "attention", "--prompts", s(&input), "--out", s(&kept_path), "--min-score", &min.to_string()]);
    let kept: Vec<Value> =
        std::fs::read_to_string(&kept_path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(kept.len(), scores.iter().filter(|&&c| c >= min).count());
    assert!(kept.iter().all(|r| r["composite"].as_u64().unwrap() >= min));
}

#[test]
fn packaged_generate_probe() {
    let Some(m) = packaged("smollm2-135m") else { return };
    let dir = tempfile::tempdir().unwrap();
    let probe = dir.path().join("probe.jsonl");
    let args = ["generate", "--json", "--temperature", "0", "-n", "6", "-p", PROMPT];
    let plain: Value = serde_json::from_str(ok_on(&m, &args).trim()).unwrap();
    let mut with = args.to_vec();
    with.extend(["--probe", s(&probe)]);
    let probed: Value = serde_json::from_str(ok_on(&m, &with).trim()).unwrap();
    assert_eq!(plain["ids"], probed["ids"], "the probe changed the output");
    let events: Vec<Value> =
        std::fs::read_to_string(&probe).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let n = probed["ids"].as_array().unwrap().len();
    assert_eq!(events.len(), n + 2);
    assert_eq!(events[0]["event"], "prefill");
    assert!(events[0]["composite"].is_number(), "{}", events[0]);
    assert_eq!(events[0]["n_tokens"], probed["prompt_ids"].as_array().unwrap().len());
    for (i, e) in events[1..=n].iter().enumerate() {
        assert_eq!(e["event"], "token");
        assert_eq!(e["id"], probed["ids"][i]);
        assert!(e["piece"].is_string() && e["kv_bytes"].is_number(), "{e}");
    }
    assert_eq!(events[1]["key_norms"].as_array().unwrap().len(), 30);
    assert_eq!(events[n + 1]["event"], "finish");
}
