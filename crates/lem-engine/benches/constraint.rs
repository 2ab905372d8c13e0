//! Cost of the grammar mask next to a decode step on SmolLM2-135M (issue 15: the mask
//! must cost under 10% of a decode step).
//!
//! For each grammar: a constrained greedy generation gives the decode speed and the
//! token ids; replaying those ids through a fresh constraint times the mask alone
//! (llguidance's mask computation plus the masked logits row) per token. Prints one line
//! per grammar. Run: `cargo bench -p lem-engine --bench constraint` (the model must be in
//! the lem cache: `lem models fetch smollm2-135m`).

use std::ops::ControlFlow;
use std::time::Instant;

use lem_engine::{Engine, EngineConfig, GenerateRequest, Grammar, generate};
use lem_tokenizer::{Bos, ChatMessage};
use serde_json::json;

fn main() {
    let spec = lem_hub::find("smollm2-135m").expect("known alias");
    let path = lem_hub::models_dir().expect("models dir").join(spec.file_name);
    if !path.is_file() {
        eprintln!("skipping: {} is missing (lem models fetch smollm2-135m)", path.display());
        return;
    }
    let threads = std::env::var("LEM_BENCH_THREADS").ok().and_then(|t| t.parse().ok()).unwrap_or(0);
    let engine = Engine::load(&path, EngineConfig { threads, ctx_size: 2048 }).expect("load");
    let grammars = [
        (
            "schema person",
            Grammar::JsonSchema(json!({
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "age": {"type": "integer", "minimum": 0, "maximum": 150},
                    "email": {"type": "string", "format": "email"},
                    "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 5},
                },
                "required": ["name", "age", "email", "tags"],
            })),
        ),
        ("json object", Grammar::JsonObject),
        ("regex", Grammar::Regex("([A-Z][a-z]+ ){3,8}[0-9]{4}".into())),
    ];
    let t = Instant::now();
    engine.constraint_factory().expect("factory");
    println!("token trie for {} tokens: {:.1} ms (once per engine)", engine.tokenizer().vocab_size(), ms(t));
    let text = engine.render_chat(&[ChatMessage::user("Describe a person as JSON, with a list of tags.")]).unwrap();
    let prompt = engine.tokenizer().encode(&text, Bos::ModelDefault).unwrap();
    let plain = run(&engine, &prompt, None);
    let plain_ms = 1e3 / plain.timings.decode_tok_s;
    println!("unconstrained decode: {plain_ms:.3} ms/token");
    for (name, grammar) in grammars {
        let t = Instant::now();
        let mut c = engine.constraint_factory().unwrap().compile(&grammar).expect("compiles");
        let compile_ms = ms(t);
        let g = run(&engine, &prompt, Some(grammar));
        let logits = vec![0.0f32; engine.model().vocab()];
        let t = Instant::now();
        let mut masked = 0;
        for &id in &g.ids {
            if engine.tokenizer().is_eog(id) {
                break;
            }
            std::hint::black_box(c.mask(&logits).expect("mask"));
            c.commit(id, false).expect("commit");
            masked += 1;
        }
        let mask_ms = ms(t) / masked.max(1) as f64;
        let decode_ms = 1e3 / g.timings.decode_tok_s;
        println!(
            "{name}: {} tokens, compile {compile_ms:.2} ms, mask {mask_ms:.3} ms/token, constrained decode \
             {decode_ms:.3} ms/token, mask = {:.1}% of an unconstrained decode step",
            g.ids.len(),
            100.0 * mask_ms / plain_ms
        );
    }
}

fn run(engine: &Engine, prompt: &[u32], grammar: Option<Grammar>) -> lem_engine::Generation {
    let req = GenerateRequest { max_tokens: 128, grammar, ..Default::default() };
    let mut seq = engine.new_sequence();
    generate(engine, &mut seq, prompt, &req, &mut |_| ControlFlow::Continue(())).expect("generate")
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}
