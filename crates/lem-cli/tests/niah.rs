//! `lem niah` through the binary: on the packaged SmolLM2 a tiny grid gives well-formed
//! JSON and its negative control (a sink window with the needle outside it) scores below
//! full attention; bad configurations are usage errors.
#![allow(missing_docs)]

mod common;

use common::{ok_on, packaged, run};

#[test]
fn niah_configurations_are_checked() {
    for (config, why) in [("sinks=4", "sinks and window go together"), ("k=q3_k", "unknown KV cache type")] {
        let (out, _, stderr) = run(&["niah", "--config", config]);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(why), "{stderr}");
    }
}

#[test]
fn niah_control_scores_below_full_attention() {
    let Some(m) = packaged("smollm2-135m") else { return };
    let out = ok_on(&m, &["niah", "--lengths", "600", "--depths", "10,50", "--config", "k=q8_0,v=q8_0", "--json"]);
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
    // The control holds at most its sinks, window and one batch.
    assert!(configs[2]["resident_bytes"].as_u64() < configs[0]["resident_bytes"].as_u64());
}
