//! Debug helper: teacher-forced argmax for token ids given as a JSON list.
//! `cargo run --release -p lem-model --example argmax -- MODEL '[1,2,3]'`
#![allow(missing_docs)]
use lem_model::{LogitsRequest, Model, SeqInput, Workspace};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let model = Model::load(std::path::Path::new(&args[1])).unwrap();
    let ids: Vec<u32> = serde_json::from_str(&args[2]).unwrap();
    let threads = lem_kernels::Threads::new(2);
    let mut cache = model.new_cache();
    let mut ws = Workspace::default();
    let t = std::time::Instant::now();
    let mut input = [SeqInput { tokens: &ids, cache: &mut cache, logits: LogitsRequest::All }];
    model.forward(&mut input, &mut ws, &threads, None).unwrap();
    eprintln!("forward {:?}", t.elapsed());
    let v = model.vocab();
    let l = ws.logits(0, v);
    let am: Vec<usize> = l.chunks(v).map(|r| r.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0).collect();
    println!("{}", serde_json::to_string(&am).unwrap());
}
