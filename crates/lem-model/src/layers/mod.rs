//! The shared layer library. Architecture files only choose and wire these.

mod attention;
mod block;
mod linear;
mod mlp;
mod norm;

pub use attention::{Attention, AttentionConfig};
pub(crate) use block::BlockBuffers;
pub use block::DecoderBlock;
pub use linear::Linear;
pub use mlp::{Activation, GatedMlp};
pub use norm::RmsNorm;

use lem_kernels::{Scratch, Threads};

/// Kernel context shared by every layer during one forward call.
pub struct Kernels<'a> {
    /// Worker pool.
    pub threads: &'a Threads,
    /// Activation quantization buffer.
    pub scratch: &'a mut Scratch,
}

/// Makes `buf` exactly `len` long, reusing its capacity (no allocation once warm).
pub(crate) fn fit(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buf.len() != len {
        buf.resize(len, 0.0);
    }
    &mut buf[..]
}
