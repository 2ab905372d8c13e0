//! Debug helper: capture layer-0 tensors for given ids, print JSON.
#![allow(missing_docs)]
use lem_model::{Capture, CaptureKind, Captured, LogitsRequest, Model, Observer, SeqInput, Workspace};

struct Obs(serde_json::Map<String, serde_json::Value>);
impl Observer for Obs {
    fn wants(&self, layer: usize) -> Capture {
        if layer == 0 {
            Capture::KEYS | Capture::KEYS_PRE_ROPE | Capture::QUERIES | Capture::VALUES | Capture::ATTENTION
        } else {
            Capture::NONE
        }
    }
    fn on_capture(&mut self, c: Captured<'_>) {
        let name = match c.kind {
            CaptureKind::Keys => "k",
            CaptureKind::KeysPreRope => "kpre",
            CaptureKind::Queries => "q",
            CaptureKind::Values => "v",
            CaptureKind::Attention => "attn",
        };
        self.0.insert(name.into(), serde_json::json!(c.data));
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let model = Model::load(std::path::Path::new(&args[1])).unwrap();
    let ids: Vec<u32> = serde_json::from_str(&args[2]).unwrap();
    let threads = lem_kernels::Threads::new(1);
    let mut cache = model.new_cache();
    let mut ws = Workspace::default();
    let mut obs = Obs(Default::default());
    let mut input = [SeqInput { tokens: &ids, cache: &mut cache, logits: LogitsRequest::Last }];
    model.forward(&mut input, &mut ws, &threads, Some(&mut obs)).unwrap();
    println!("{}", serde_json::Value::Object(obs.0));
}
