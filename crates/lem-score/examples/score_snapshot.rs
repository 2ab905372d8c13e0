//! Scores a key snapshot file and prints the result as JSON.
//!
//! ```text
//! cargo run -p lem-score --example score_snapshot -- keys.safetensors
//! ```
//!
//! Without an argument it builds a small synthetic snapshot (2 layers, 8 KV heads), saves
//! it to a temporary file, loads it back and scores that.

use lem_score::{KeySnapshot, SnapshotMeta, score};

fn synthetic() -> KeySnapshot {
    let (l, h, t, d) = (2, 8, 6, 4);
    let layers = (0..l)
        .map(|li| {
            Some(
                (0..h)
                    .map(|hi| (0..t * d).map(|i| (((li * 31 + hi * 7 + i * 3) % 11) as f32 - 5.0) / 5.0).collect())
                    .collect(),
            )
        })
        .collect();
    let meta = SnapshotMeta {
        model_fingerprint: "synthetic".into(),
        model_name: "example".into(),
        token_ids: (0..t as u32).collect(),
        post_rotary: true,
    };
    KeySnapshot::new(meta, h, t, d, layers).expect("valid shapes")
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let snap = match std::env::args_os().nth(1) {
        Some(path) => KeySnapshot::load(path)?,
        None => {
            let path = std::env::temp_dir().join(format!("lem-score-example-{}.safetensors", std::process::id()));
            synthetic().save(&path)?;
            let snap = KeySnapshot::load(&path)?;
            std::fs::remove_file(&path)?;
            snap
        }
    };
    if !snap.meta().post_rotary {
        eprintln!("warning: keys are not post-rotary; scores are not comparable");
    }
    println!("{}", serde_json::to_string_pretty(&score(&snap))?);
    Ok(())
}
