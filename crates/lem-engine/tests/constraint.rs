//! Constrained decoding on SmolLM2 and on the tiny random-weight models: whatever the
//! model, every output matches its grammar (checked independently: `jsonschema` for
//! schemas, `regex` for regular expressions, hand checks for grammars), generation ends
//! with `Stop` when the grammar is complete, and the output does not depend on how it
//! was decoded (alone, batched, speculative with greedy or seeded sampling).

mod common;

use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};

use lem_engine::sampling::SamplingParams;
use lem_engine::{
    BatchConfig, BatchEvent, Batcher, DraftConfig, Engine, EngineConfig, EngineError, FinishReason, GenerateRequest,
    Generation, Grammar, Job, TokenSink, generate,
};
use lem_tokenizer::Bos;
use serde_json::{Value, json};

/// How an output is checked, independently of llguidance.
enum Check {
    /// Parses as JSON and validates against this schema.
    Schema(Value),
    /// The whole output matches this regular expression.
    Regex(&'static str),
}

/// One constrained generation to try.
struct Case {
    name: &'static str,
    prompt: &'static str,
    grammar: Grammar,
    check: Check,
}

fn cases() -> Vec<Case> {
    let person = json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
        },
        "required": ["name", "age"],
        "additionalProperties": false,
    });
    let colours = json!({
        "type": "array",
        "items": {"enum": ["red", "green", "blue"]},
        "minItems": 1,
        "maxItems": 3,
    });
    let nested = json!({
        "type": "object",
        "properties": {
            "id": {"anyOf": [{"type": "integer", "minimum": 1, "maximum": 999}, {"type": "string", "maxLength": 6}]},
            "ok": {"type": "boolean"},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 2},
            "where": {"$ref": "#/$defs/place"},
        },
        "required": ["id", "ok", "where"],
        "additionalProperties": false,
        "$defs": {"place": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 10}, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
            "required": ["city", "zip"],
            "additionalProperties": false,
        }},
    });
    let gbnf = "root ::= item{1,3}\nitem ::= \"- \" [a-z]{1,8} \"\\n\"  # a short list\n";
    vec![
        Case {
            name: "schema person",
            prompt: "Describe a person as JSON.",
            grammar: Grammar::JsonSchema(person.clone()),
            check: Check::Schema(person),
        },
        Case {
            name: "schema enum array",
            prompt: "List some colours as a JSON array.",
            grammar: Grammar::JsonSchema(colours.clone()),
            check: Check::Schema(colours),
        },
        Case {
            name: "schema nested anyOf $ref",
            prompt: "Give a record as JSON.",
            grammar: Grammar::JsonSchema(nested.clone()),
            check: Check::Schema(nested),
        },
        Case {
            name: "regex phone",
            prompt: "A phone number:",
            grammar: Grammar::Regex("[0-9]{3}-[0-9]{4}".into()),
            check: Check::Regex("^[0-9]{3}-[0-9]{4}$"),
        },
        Case {
            name: "regex choice",
            prompt: "Is the sky blue? Answer yes or no.",
            grammar: Grammar::Regex("(yes|no)".into()),
            check: Check::Regex("^(yes|no)$"),
        },
        Case {
            name: "lark tuple",
            prompt: "Three small numbers:",
            grammar: Grammar::Lark("start: \"(\" NUM (\", \" NUM){0,3} \")\"\nNUM: /[0-9]{1,3}/".into()),
            check: Check::Regex(r"^\([0-9]{1,3}(, [0-9]{1,3}){0,3}\)$"),
        },
        Case {
            name: "lark inline json",
            prompt: "Answer with x.",
            grammar: Grammar::Lark(
                "start: \"x = \" obj\nobj: %json {\"x-guidance\": {\"whitespace_flexible\": false, \"key_separator\": \": \"}, \"type\": \"object\", \"properties\": {\"x\": {\"type\": \"integer\", \"minimum\": 0, \"maximum\": 9}}, \"required\": [\"x\"], \"additionalProperties\": false}".into(),
            ),
            check: Check::Regex(r#"^x = \{"x": [0-9]\}$"#),
        },
        Case {
            name: "gbnf list",
            prompt: "A shopping list:",
            grammar: Grammar::Gbnf(gbnf.into()),
            check: Check::Regex("^(- [a-z]{1,8}\n){1,3}$"),
        },
        Case {
            name: "llama grammar lark",
            prompt: "Pick a letter.",
            grammar: Grammar::from_llama_grammar("%llguidance {}\nstart: /[abc]/"),
            check: Check::Regex("^[abc]$"),
        },
    ]
}

/// Problems with `text` under `check` (empty when it passes).
fn problems(check: &Check, text: &str) -> Vec<String> {
    match check {
        Check::Schema(schema) => {
            let value: Value = match serde_json::from_str(text) {
                Ok(v) => v,
                Err(e) => return vec![format!("not JSON ({e}): {text:?}")],
            };
            let validator = jsonschema::validator_for(schema).expect("test schema compiles");
            validator.iter_errors(&value).map(|e| format!("{e} in {text:?}")).collect()
        }
        Check::Regex(rx) => {
            let re = regex::Regex::new(rx).expect("test regex compiles");
            if re.is_match(text) { vec![] } else { vec![format!("{text:?} does not match {rx}")] }
        }
    }
}

fn prompt_ids(e: &Engine, user: &str) -> Vec<u32> {
    let text = e.render_chat(&[lem_tokenizer::ChatMessage::user(user)]).unwrap();
    e.tokenizer().encode(&text, Bos::ModelDefault).unwrap()
}

fn alone(e: &Engine, prompt: &[u32], req: &GenerateRequest) -> Result<Generation, EngineError> {
    let mut seq = e.new_sequence();
    generate(e, &mut seq, prompt, req, &mut |_| ControlFlow::Continue(()))
}

fn seeded(seed: u64) -> SamplingParams {
    SamplingParams { temperature: 0.9, top_k: 40, top_p: 0.95, seed, ..SamplingParams::default() }
}

/// A sink that keeps the streamed text.
struct Collect(Arc<Mutex<String>>);

impl TokenSink for Collect {
    fn event(&mut self, event: BatchEvent<'_>) -> ControlFlow<()> {
        let (BatchEvent::Token { text, .. } | BatchEvent::Tail { text }) = event;
        self.0.lock().unwrap().push_str(text);
        ControlFlow::Continue(())
    }
}

/// All requests through one batcher at once; their generations in order.
fn batched(e: &Engine, jobs: &[(Vec<u32>, GenerateRequest)]) -> Vec<Generation> {
    let mut b = Batcher::new(BatchConfig { max_active: jobs.len(), ..BatchConfig::default() });
    let mut ids = Vec::new();
    for (prompt, req) in jobs {
        let job = Job {
            seq: e.new_sequence(),
            prompt_ids: prompt.clone(),
            request: req.clone(),
            top_logprobs: None,
            sink: Box::new(Collect(Arc::default())),
        };
        ids.push(b.admit(e, job).expect("capacity"));
    }
    let mut done = Vec::new();
    for _ in 0..10_000 {
        if b.is_idle() {
            break;
        }
        done.extend(b.step(e));
    }
    ids.iter()
        .map(|id| {
            let i = done.iter().position(|f| f.id == *id).expect("finished");
            done.remove(i).result.expect("batched generation")
        })
        .collect()
}

/// Runs every case on `e`: the output is valid and ends with `Stop`, contains no special
/// token, and is the same batched, with a draft (greedy and seeded) and alone.
fn check(e: &Engine, label: &str) -> Vec<String> {
    let mut out = Vec::new();
    let cases = cases();
    let mut jobs = Vec::new();
    let mut expected = Vec::new();
    let mut drafted = 0;
    for case in &cases {
        let prompt = prompt_ids(e, case.prompt);
        let name = format!("{label} {}", case.name);
        for sampling in [SamplingParams::greedy(), seeded(7)] {
            let req = GenerateRequest {
                max_tokens: 120,
                sampling,
                grammar: Some(case.grammar.clone()),
                ..Default::default()
            };
            let g = match alone(e, &prompt, &req) {
                Ok(g) => g,
                Err(err) => {
                    out.push(format!("{name}: {err}"));
                    continue;
                }
            };
            println!("{name} (temperature {}): {:?} {:?}", sampling.temperature, g.text, g.finish_reason);
            out.extend(problems(&case.check, &g.text).into_iter().map(|p| format!("{name}: {p}")));
            if g.finish_reason != FinishReason::Stop {
                out.push(format!("{name}: finished {:?}, not Stop", g.finish_reason));
            }
            let last = g.ids.len().saturating_sub(1);
            for (i, &id) in g.ids.iter().enumerate() {
                let eog_at_end = i == last && e.tokenizer().is_eog(id);
                if e.tokenizer().is_special(id) && !eog_at_end {
                    out.push(format!("{name}: special token {id} at {i}"));
                }
            }
            let spec = alone(e, &prompt, &GenerateRequest { draft: Some(DraftConfig::ngram()), ..req.clone() });
            match spec {
                Ok(s) if s.ids == g.ids => drafted += s.speculation.drafted,
                Ok(s) => out.push(format!("{name}: with a draft {:?} != {:?}", s.text, g.text)),
                Err(err) => out.push(format!("{name}: with a draft: {err}")),
            }
            jobs.push((prompt.clone(), req));
            expected.push((name.clone(), g));
        }
    }
    // The drafts must have been verified under the mask for the comparison to mean anything.
    if drafted == 0 {
        out.push(format!("{label}: no draft token was ever verified"));
    }
    for (g, (name, want)) in batched(e, &jobs).iter().zip(&expected) {
        if g.ids != want.ids {
            out.push(format!("{name}: batched {:?} != alone {:?}", g.text, want.text));
        }
    }
    out
}

#[test]
fn smollm2_outputs_match_their_grammars_however_decoded() {
    let e = common::engine("smollm2-135m");
    let problems = check(&e, "smollm2");
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn tiny_models_outputs_match_their_grammars_however_decoded() {
    let dir = common::tiny_models_dir();
    let mut all = Vec::new();
    for arch in ["llama", "qwen3", "gemma2"] {
        let path = dir.join(arch).join("f32.gguf");
        let e = Engine::load(&path, EngineConfig { threads: 2, ctx_size: 1024 }).unwrap();
        all.extend(check(&e, arch));
    }
    assert!(all.is_empty(), "{all:#?}");
}

#[test]
fn json_object_mode_gives_an_object_and_stops() {
    let e = common::engine("smollm2-135m");
    let prompt = prompt_ids(&e, "Give the capital of France as a JSON object with a key \"capital\".");
    let req = GenerateRequest { max_tokens: 60, grammar: Some(Grammar::JsonObject), ..Default::default() };
    let g = alone(&e, &prompt, &req).unwrap();
    let v: Value = serde_json::from_str(&g.text).unwrap_or_else(|err| panic!("{err}: {:?}", g.text));
    assert!(v.is_object(), "{v}");
    assert_eq!(g.finish_reason, FinishReason::Stop, "{:?}", g.text);
}

#[test]
fn a_grammar_that_cannot_compile_is_a_clear_error() {
    let e = common::engine("smollm2-135m");
    let prompt = prompt_ids(&e, "Hi");
    for (grammar, what) in [
        (Grammar::JsonSchema(json!({"$ref": "#/$defs/missing"})), "missing"),
        (Grammar::JsonSchema(json!({"type": "object", "minProperties": 3, "maxProperties": 1})), "minProperties"),
        (Grammar::JsonSchema(json!("string")), "must be an object or a boolean"),
        (Grammar::Regex("(unclosed".into()), "unclosed"),
        (Grammar::Lark("start: undefined_rule".into()), "undefined_rule"),
        (Grammar::Gbnf("root ::= \"a".into()), "unterminated string"),
    ] {
        let req = GenerateRequest { max_tokens: 4, grammar: Some(grammar.clone()), ..Default::default() };
        match alone(&e, &prompt, &req) {
            Err(EngineError::Grammar(msg)) => assert!(msg.contains(what), "{grammar:?}: {msg}"),
            other => panic!("{grammar:?}: expected a grammar error, got {other:?}"),
        }
        let err = e.constraint_factory().unwrap().compile(&grammar).unwrap_err();
        assert!(matches!(err, EngineError::Grammar(_)), "{err}");
    }
}

#[test]
fn grammar_token_bytes_are_raw_bytes_and_specials_are_marked() {
    for alias in ["smollm2-135m", "gemma3-270m"] {
        let e = common::engine(alias);
        let tok = e.tokenizer();
        let ids = tok.encode(" the\n", Bos::Omit).unwrap();
        let bytes: Vec<u8> = ids.iter().flat_map(|&id| tok.grammar_token_bytes(id)).collect();
        assert_eq!(bytes, b" the\n", "{alias}: {ids:?}");
        for &id in tok.eog_ids() {
            assert!(tok.is_special(id) && tok.grammar_token_bytes(id)[0] == 0xFF, "{alias}: eog {id}");
        }
        if let Some(bos) = tok.bos_id() {
            assert_eq!(tok.grammar_token_bytes(bos)[0], 0xFF, "{alias}: bos");
        }
    }
    // Gemma's SentencePiece byte tokens stand for their byte.
    let e = common::engine("gemma3-270m");
    let id = e.tokenizer().token_id("<0x0A>").expect("byte token");
    assert_eq!(e.tokenizer().grammar_token_bytes(id), b"\n");
}
