//! Debug helper: teacher-forced logits for token ids given as a JSON list, written as raw
//! little-endian f32 to the path in argument 3 (argmax printed as JSON).
//! `cargo run --release -p lem-model --example argmax -- MODEL '[1,2,3]' OUT.bin`
#![allow(missing_docs)]
use lem_model::{LogitsRequest, Model, SeqInput, Workspace};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let model = Model::load(std::path::Path::new(&args[1])).unwrap();
    let ids: Vec<u32> = serde_json::from_str(&std::fs::read_to_string(&args[2]).unwrap_or(args[2].clone())).unwrap();
    let threads = lem_kernels::Threads::new(2);
    let mut cache = model.new_cache();
    let mut ws = Workspace::default();
    let mut all = Vec::new();
    for chunk in ids.chunks(model.max_batch()) {
        let mut input = [SeqInput { tokens: chunk, cache: &mut cache, logits: LogitsRequest::All }];
        model.forward(&mut input, &mut ws, &threads, None).unwrap();
        all.extend_from_slice(ws.logits(0, model.vocab()));
    }
    if let Some(out) = args.get(3) {
        let bytes: Vec<u8> = all.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(out, bytes).unwrap();
    }
}
