//! Mirrors of candle's GGML block types with public fields.
//!
//! candle's block structs keep their fields `pub(crate)`, so the SIMD kernels read the
//! same memory through these `#[repr(C)]` twins. Half-precision fields are kept as their
//! raw `u16` bits; the kernels convert them with F16C. The assertions below pin sizes
//! and alignments to candle's, so a layout change upstream fails the build instead of
//! silently misreading weights.

#![allow(dead_code)] // Some fields exist only to pin the layout.

use candle_core::quantized::k_quants as ck;
use std::mem::{align_of, size_of};

/// `Q4_0`: 32 weights `d * (q - 8)`, `q` in 0..16, two per byte (low nibbles first).
#[repr(C)]
pub(crate) struct Q4_0 {
    pub(crate) d: u16,
    pub(crate) qs: [u8; 16],
}

/// `Q4_1`: 32 weights `d * q + m`, `q` in 0..16.
#[repr(C)]
pub(crate) struct Q4_1 {
    pub(crate) d: u16,
    pub(crate) m: u16,
    pub(crate) qs: [u8; 16],
}

/// `Q5_0`: 32 weights `d * (q - 16)`; low four bits in nibbles, bit `i` of `qh` is the
/// fifth bit of weight `i`.
#[repr(C)]
pub(crate) struct Q5_0 {
    pub(crate) d: u16,
    pub(crate) qh: [u8; 4],
    pub(crate) qs: [u8; 16],
}

/// `Q5_1`: 32 weights `d * q + m`, `q` in 0..32, laid out as in [`Q5_0`].
#[repr(C)]
pub(crate) struct Q5_1 {
    pub(crate) d: u16,
    pub(crate) m: u16,
    pub(crate) qh: [u8; 4],
    pub(crate) qs: [u8; 16],
}

/// `Q8_0`: 32 values `d * q`.
#[repr(C)]
pub(crate) struct Q8_0 {
    pub(crate) d: u16,
    pub(crate) qs: [i8; 32],
}

/// `Q8_1`: 32 values `d * q`, with `s = d * sum(q)`.
#[repr(C)]
pub(crate) struct Q8_1 {
    pub(crate) d: u16,
    pub(crate) s: u16,
    pub(crate) qs: [i8; 32],
}

/// `Q4_K`: 256 weights in 8 sub-blocks of 32 with 6-bit scales and mins.
#[repr(C)]
pub(crate) struct Q4K {
    pub(crate) d: u16,
    pub(crate) dmin: u16,
    pub(crate) scales: [u8; 12],
    pub(crate) qs: [u8; 128],
}

/// `Q5_K`: as [`Q4K`] plus a fifth bit per weight in `qh`.
#[repr(C)]
pub(crate) struct Q5K {
    pub(crate) d: u16,
    pub(crate) dmin: u16,
    pub(crate) scales: [u8; 12],
    pub(crate) qh: [u8; 32],
    pub(crate) qs: [u8; 128],
}

/// `Q6_K`: 256 weights `d * scale * (q - 32)` in 16 sub-blocks of 16, `q` in 0..64.
#[repr(C)]
pub(crate) struct Q6K {
    pub(crate) ql: [u8; 128],
    pub(crate) qh: [u8; 64],
    pub(crate) scales: [i8; 16],
    pub(crate) d: u16,
}

/// `Q8_K`: 256 activations `d * q`, with the sums of each run of 16 `q`s.
#[repr(C)]
pub(crate) struct Q8K {
    pub(crate) d: f32,
    pub(crate) qs: [i8; 256],
    pub(crate) bsums: [i16; 16],
}

macro_rules! same_layout {
    ($($ours:ty => $theirs:ty),* $(,)?) => {
        $(const _: () = assert!(
            size_of::<$ours>() == size_of::<$theirs>() && align_of::<$ours>() == align_of::<$theirs>()
        );)*
    };
}

same_layout!(
    Q4_0 => ck::BlockQ4_0,
    Q4_1 => ck::BlockQ4_1,
    Q5_0 => ck::BlockQ5_0,
    Q5_1 => ck::BlockQ5_1,
    Q8_0 => ck::BlockQ8_0,
    Q8_1 => ck::BlockQ8_1,
    Q4K => ck::BlockQ4K,
    Q5K => ck::BlockQ5K,
    Q6K => ck::BlockQ6K,
    Q8K => ck::BlockQ8K,
);
