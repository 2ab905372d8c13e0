//! lem's engine: owns sequences (and so their KV caches), runs generation with sampling
//! and stop strings, teacher-forced evaluation and benchmarks, on top of a
//! [`lem_model::Model`] and a [`lem_tokenizer::Tokenizer`].
//!
//! The model never holds state between calls: a [`Sequence`] carries the token ids, the
//! [`lem_kv::SeqCache`] and the reusable forward buffers, and every operation on it
//! (feed, truncate, fork) goes through the engine.

pub mod batch;
mod bench;
pub mod constraint;
pub mod decode;
pub mod draft;
mod embed;
mod engine;
mod error;
mod eval;
mod generate;
pub mod kv_policy;
pub mod niah;
pub mod sampling;
mod sequence;
pub mod stop;

pub use batch::{BatchConfig, BatchEvent, Batcher, Finished, Job, JobId, TokenSink};
pub use bench::{
    BenchReport, DraftBenchReport, ParallelReport, bench, bench_draft, bench_parallel, peak_rss_bytes, verify_cost,
};
pub use constraint::{Constraint, ConstraintFactory, Grammar};
pub use decode::{DecodeEvent, Decoded, Decoder, SpeculationStats, StepOutcome};
pub use draft::{DraftConfig, DraftLength, DraftMethod, DraftModel, Drafter, NGramDrafter, Speculator};
pub use embed::Pooling;
pub use engine::{Engine, EngineConfig};
pub use error::EngineError;
pub use eval::{EvalReport, eval};
pub use generate::{
    FinishReason, GenerateHook, GenerateRequest, Generation, Timings, TokenStep, generate, generate_with,
    generate_with_drafter,
};
pub use sequence::Sequence;
