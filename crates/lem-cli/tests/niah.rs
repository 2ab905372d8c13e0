//! `lem niah` through the binary: on the packaged SmolLM2 a tiny grid gives well-formed
//! JSON and its negative control (a sink window with the needle outside it) scores below
//! full attention; bad configurations are usage errors.
#![allow(missing_docs)]

mod common;

use common::{ok_on, packaged, run};

#[test]
fn niah_configurations_are_checked() {
    for (config, why) in [
        ("sinks=4", "sinks and window go together"),
        ("k=q3_k", "unknown KV cache type"),
        ("sinks=4,window=64,select=exact", "select needs recall"),
        ("sinks=4,window=64,recall=2,select=best", "is not bound, exact or sketch"),
    ] {
        let (out, _, stderr) = run(&["niah", "--config", config]);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(why), "{stderr}");
    }
}

#[test]
fn niah_control_scores_below_full_attention() {
    let Some(m) = packaged("smollm2-135m") else { return };
    let d = tempfile::tempdir().unwrap();
    let png = d.path().join("niah.png");
    let png_arg = png.to_str().unwrap();
    let args =
        ["niah", "--lengths", "600", "--depths", "10,50", "--config", "k=q8_0,v=q8_0", "--json", "--png", png_arg];
    let out = ok_on(&m, &args);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let configs = v["configs"].as_array().unwrap();
    let names: Vec<&str> = configs.iter().map(|c| c["config"]["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["full", "k=q8_0,v=q8_0", "control: sinks=4,window=64"]);
    for c in configs {
        let cells = c["cells"].as_array().unwrap();
        assert_eq!(cells.len(), 2);
        assert_eq!(cells[0]["values"].as_array().unwrap().len(), cells[0]["samples"].as_u64().unwrap() as usize);
        for cell in cells {
            assert_eq!(cell["length"], 600);
            let tokens = cell["prompt_tokens"].as_u64().unwrap();
            assert!((560..=680).contains(&tokens), "prompt of {tokens} tokens for length 600");
            assert!(cell["resident_bytes"].as_u64().unwrap() > 0);
        }
        assert_eq!(c["per_length"][0][0], 600);
    }
    let acc = |i: usize| configs[i]["mean_accuracy"].as_f64().unwrap();
    assert!(acc(2) < acc(0), "control {} vs full {}", acc(2), acc(0));
    assert_eq!(configs[2]["control"], true);
    assert_eq!((configs[2]["sinks"].as_u64(), configs[2]["window"].as_u64()), (Some(4), Some(64)));
    // The heat map: a PNG of one 1 x 2 grid per configuration.
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    let height = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    assert_eq!(height, 3 * (56 + 44 + 44), "three panels of one row");
    // The control holds at most its sinks, window and one batch.
    assert!(configs[2]["resident_bytes"].as_u64() < configs[0]["resident_bytes"].as_u64());
}

#[test]
fn niah_multi_needle_tasks_ask_and_score_as_they_say() {
    let (out, _, stderr) = run(&["niah", "--task", "multi-key", "--needles", "11", "--lengths", "600"]);
    assert!(!out.status.success());
    assert!(stderr.contains("--needles: 11 is not 2 to 10"), "{stderr}");
    let Some(m) = packaged("smollm2-135m") else { return };
    for (task, needles, task_json) in [
        ("multi-key", 3, serde_json::json!({"multi_key": {"distractors": 2}})),
        ("multi-value", 3, serde_json::json!({"multi_value": {"values": 3}})),
    ] {
        let n = needles.to_string();
        let args = ["niah", "--task", task, "--needles", &n, "--lengths", "600", "--depths", "40", "--json"];
        let v: serde_json::Value = serde_json::from_str(&ok_on(&m, &args)).unwrap();
        assert_eq!(v["task"], task_json, "{task}");
        for c in v["configs"].as_array().unwrap() {
            let cell = &c["cells"][0];
            let tokens = cell["prompt_tokens"].as_u64().unwrap();
            assert!((560..=680).contains(&tokens), "{task}: prompt of {tokens} tokens for length 600");
            let Some(acc) = cell["accuracy"].as_f64() else { continue };
            // A score is a whole number of asked values over how many were asked.
            let asked = cell["values"][0].as_str().unwrap().split(',').collect::<Vec<_>>();
            let expected = if task == "multi-value" { needles } else { 1 };
            assert_eq!(asked.len(), expected, "{task}: {asked:?}");
            assert!(asked.iter().all(|x| x.len() == 7 && x.bytes().all(|b| b.is_ascii_digit())), "{asked:?}");
            let answer = cell["answers"][0].as_str().unwrap();
            let given = asked.iter().filter(|x| answer.contains(*x)).count();
            if task == "multi-value" {
                assert_eq!(acc, given as f64 / expected as f64, "{task}: {answer:?} for {asked:?}");
            } else {
                assert!(acc == 0.0 || given == 1, "{task}: {acc} for {answer:?}, asked {asked:?}");
            }
        }
    }
}
