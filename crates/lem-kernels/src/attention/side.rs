//! One side (keys or values) of a cache as attention reads it: f32 or f16 rows through
//! [`crate::simd`]'s row kernels, or GGML blocks ([`KvQuant`]) dequantised a few cached
//! rows at a time into a small per-thread buffer (never a dequantised copy of the cache)
//! and then run through the same f32 row kernels: the same dot products and the same
//! multiply-adds in the same order, so attention over blocks equals attention over f32
//! rows holding the dequantised values, bit for bit, whatever the batch shape.

use std::cell::RefCell;
use std::ops::Range;

use half::f16;

use super::KvElem;
use crate::kvq::KvQuant;
use crate::simd;

/// One side of a cache in its storage: `cells` rows of `n_kv * head_dim` values, each
/// head's `head_dim` values contiguous (for blocks: `head_dim / 32` whole blocks per head).
#[derive(Debug, Clone, Copy)]
pub enum KvRows<'a> {
    /// f32 values, `[cells][n_kv][head_dim]`.
    F32(&'a [f32]),
    /// f16 values, same layout.
    F16(&'a [f16]),
    /// GGML blocks, `[cells][n_kv][head_dim / 32]` blocks of `kind`.
    Blocks {
        /// The block format.
        kind: KvQuant,
        /// The blocks' bytes.
        data: &'a [u8],
        /// When set, every head was rotated by [`crate::kvq::hadamard`] in chunks of this
        /// size before it was quantised: keys meet queries rotated the same way, and a
        /// weighted sum of values is rotated back.
        rotation: Option<usize>,
    },
}

/// Cached rows dequantised at a time (into a per-thread buffer of `CHUNK * head_dim`
/// floats, at most 16 KiB for heads of 256) before the f32 row kernels run over them.
const CHUNK: usize = 16;

thread_local! {
    /// Dequantised rows (per thread).
    static ROW: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// What attention needs of one side of the cache.
pub(crate) trait Side: Copy + Sync {
    /// Whether the storage holds exactly `cells` rows of `n_kv` heads of `hd` values.
    fn holds(&self, cells: usize, n_kv: usize, hd: usize) -> bool;
    /// Rounds queries before their products with these keys (f16 keys meet f16 queries,
    /// as in GGML).
    fn round_query(&self, q: &mut [f32]);
    /// Rounds attention weights before their products with these values.
    fn round_weight(&self, w: &mut [f32]);
    /// Turns weighted sums of these values (rows of `head_dim`) into the output.
    fn finish(&self, _out: &mut [f32]) {}
    /// `out[r * ld + c - cells.start] = scale * (q_r . k_c)` for KV head `g`.
    #[allow(clippy::too_many_arguments)]
    fn qk(
        &self,
        q: &[f32],
        n_kv: usize,
        hd: usize,
        g: usize,
        cells: Range<usize>,
        scale: f32,
        out: &mut [f32],
        ld: usize,
    );
    /// `out_r += sum over c in cells, in order, of w[r * ld + c - cells.start] * v_c` for KV
    /// head `g` (zero weights skipped).
    #[allow(clippy::too_many_arguments)]
    fn pv(&self, w: &[f32], ld: usize, n_kv: usize, hd: usize, g: usize, cells: Range<usize>, out: &mut [f32]);
}

impl<E: KvElem> Side for &[E] {
    fn holds(&self, cells: usize, n_kv: usize, hd: usize) -> bool {
        self.len() == cells * n_kv * hd
    }
    fn round_query(&self, q: &mut [f32]) {
        E::round_slice(q);
    }
    fn round_weight(&self, w: &mut [f32]) {
        E::round_slice(w);
    }
    #[inline]
    fn qk(
        &self,
        q: &[f32],
        n_kv: usize,
        hd: usize,
        g: usize,
        cells: Range<usize>,
        scale: f32,
        out: &mut [f32],
        ld: usize,
    ) {
        let rows = simd::Rows { data: self, stride: n_kv * hd, offset: g * hd, len: hd };
        simd::qk(q, rows, cells, scale, out, ld);
    }
    #[inline]
    fn pv(&self, w: &[f32], ld: usize, n_kv: usize, hd: usize, g: usize, cells: Range<usize>, out: &mut [f32]) {
        let rows = simd::Rows { data: self, stride: n_kv * hd, offset: g * hd, len: hd };
        simd::pv(w, ld, rows, cells, out);
    }
}

impl Side for KvRows<'_> {
    fn holds(&self, cells: usize, n_kv: usize, hd: usize) -> bool {
        match *self {
            KvRows::F32(d) => d.holds(cells, n_kv, hd),
            KvRows::F16(d) => d.holds(cells, n_kv, hd),
            KvRows::Blocks { kind, data, rotation } => {
                hd.is_multiple_of(crate::kvq::BLOCK)
                    && data.len() == cells * kind.row_bytes(n_kv * hd)
                    && rotation.is_none_or(|n| n.is_power_of_two() && hd.is_multiple_of(n))
            }
        }
    }
    fn round_query(&self, q: &mut [f32]) {
        match *self {
            KvRows::F32(d) => d.round_query(q),
            KvRows::F16(d) => d.round_query(q),
            // Blocks are widened to f32: queries stay f32 (rotated as the keys were).
            KvRows::Blocks { rotation, .. } => {
                if let Some(n) = rotation {
                    crate::kvq::hadamard(q, n);
                }
            }
        }
    }
    fn round_weight(&self, w: &mut [f32]) {
        match *self {
            KvRows::F32(d) => d.round_weight(w),
            KvRows::F16(d) => d.round_weight(w),
            KvRows::Blocks { .. } => {}
        }
    }
    fn finish(&self, out: &mut [f32]) {
        if let KvRows::Blocks { rotation: Some(n), .. } = *self {
            crate::kvq::hadamard(out, n);
        }
    }
    fn qk(
        &self,
        q: &[f32],
        n_kv: usize,
        hd: usize,
        g: usize,
        cells: Range<usize>,
        scale: f32,
        out: &mut [f32],
        ld: usize,
    ) {
        match *self {
            KvRows::F32(d) => d.qk(q, n_kv, hd, g, cells, scale, out, ld),
            KvRows::F16(d) => d.qk(q, n_kv, hd, g, cells, scale, out, ld),
            KvRows::Blocks { kind, data, .. } => {
                let (row, head) = (kind.row_bytes(n_kv * hd), kind.row_bytes(hd));
                let n = q.len() / hd;
                assert!(out.len() == n * ld && ld >= cells.len(), "score shape");
                ROW.with(|b| {
                    let buf = &mut *b.borrow_mut();
                    buf.resize(CHUNK * hd, 0.0);
                    let mut c0 = cells.start;
                    while c0 < cells.end {
                        let m = CHUNK.min(cells.end - c0);
                        for i in 0..m {
                            kind.dequantize(&data[(c0 + i) * row + g * head..][..head], &mut buf[i * hd..(i + 1) * hd]);
                        }
                        let rows = simd::Rows { data: &buf[..m * hd], stride: hd, offset: 0, len: hd };
                        simd::qk(q, rows, 0..m, scale, &mut out[c0 - cells.start..], ld);
                        c0 += m;
                    }
                });
            }
        }
    }
    fn pv(&self, w: &[f32], ld: usize, n_kv: usize, hd: usize, g: usize, cells: Range<usize>, out: &mut [f32]) {
        match *self {
            KvRows::F32(d) => d.pv(w, ld, n_kv, hd, g, cells, out),
            KvRows::F16(d) => d.pv(w, ld, n_kv, hd, g, cells, out),
            KvRows::Blocks { kind, data, .. } => {
                let (row, head) = (kind.row_bytes(n_kv * hd), kind.row_bytes(hd));
                let n = out.len() / hd;
                assert!(w.len() == n * ld && ld >= cells.len(), "weight shape");
                ROW.with(|b| {
                    let buf = &mut *b.borrow_mut();
                    buf.resize(CHUNK * hd, 0.0);
                    let mut c0 = cells.start;
                    while c0 < cells.end {
                        let m = CHUNK.min(cells.end - c0);
                        let i0 = c0 - cells.start;
                        // Chunks no row weighs (masked, or underflowed) are not read.
                        if (0..n).any(|r| w[r * ld + i0..r * ld + i0 + m].iter().any(|&p| p != 0.0)) {
                            for i in 0..m {
                                let src = &data[(c0 + i) * row + g * head..][..head];
                                kind.dequantize(src, &mut buf[i * hd..(i + 1) * hd]);
                            }
                            let rows = simd::Rows { data: &buf[..m * hd], stride: hd, offset: 0, len: hd };
                            simd::pv(&w[i0..], ld, rows, 0..m, out);
                        }
                        c0 += m;
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::{AttnShape, KvData, KvView, Mask, attention};
    use crate::kvq::BLOCK;
    use crate::threads::Threads;

    fn data(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
            })
            .collect()
    }

    fn quantize(kind: KvQuant, x: &[f32]) -> (Vec<u8>, Vec<f32>) {
        let mut b = vec![0u8; kind.row_bytes(x.len())];
        kind.quantize(x, &mut b);
        let mut y = vec![0f32; x.len()];
        kind.dequantize_scalar(&b, &mut y);
        (b, y)
    }

    struct Case {
        n_head: usize,
        n_kv: usize,
        hd: usize,
        mask: Mask,
        cell_pos: Vec<u32>,
        q_pos: Vec<u32>,
    }

    impl Case {
        fn shape(&self) -> AttnShape {
            let scale = 1.0 / (self.hd as f32).sqrt();
            AttnShape { n_head: self.n_head, n_kv: self.n_kv, head_dim: self.hd, scale, softcap: None, mask: self.mask }
        }
    }

    fn run(c: &Case, q: &[f32], q_pos: &[u32], data: KvData<'_>, th: &Threads) -> Vec<f32> {
        let mut out = vec![f32::NAN; q.len()];
        attention(q, q_pos, KvView { data, pos: &c.cell_pos }, &c.shape(), &mut out, None, th);
        out
    }

    /// f64 attention over `k`/`v` for query row (t, h).
    fn reference(c: &Case, q: &[f32], k: &[f32], v: &[f32]) -> Vec<f64> {
        let (stride, group) = (c.n_kv * c.hd, c.n_head / c.n_kv);
        let scale = 1.0 / (c.hd as f64).sqrt();
        let mut out = vec![0f64; q.len()];
        for (t, &qp) in c.q_pos.iter().enumerate() {
            for h in 0..c.n_head {
                let g = h / group;
                let qr = &q[(t * c.n_head + h) * c.hd..][..c.hd];
                let s: Vec<f64> = (0..c.cell_pos.len())
                    .map(|cell| {
                        if !c.mask.visible(qp, c.cell_pos[cell]) {
                            return f64::NEG_INFINITY;
                        }
                        let kr = &k[cell * stride + g * c.hd..][..c.hd];
                        qr.iter().zip(kr).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() * scale
                    })
                    .collect();
                let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                let sum: f64 = e.iter().sum();
                for (cell, w) in e.iter().enumerate() {
                    let vr = &v[cell * stride + g * c.hd..][..c.hd];
                    for d in 0..c.hd {
                        out[(t * c.n_head + h) * c.hd + d] += w / sum * vr[d] as f64;
                    }
                }
            }
        }
        out
    }

    /// Blocks of `b` when `kind` is given, else the f32 values.
    fn side<'a>(kind: Option<KvQuant>, b: &'a Option<Vec<u8>>, f: &'a [f32]) -> KvRows<'a> {
        match (kind, b) {
            (Some(kind), Some(data)) => KvRows::Blocks { kind, data: &data[..], rotation: None },
            _ => KvRows::F32(f),
        }
    }

    fn cases() -> Vec<Case> {
        vec![
            // Prompt with grouped-query attention, SmolLM2's head size.
            Case {
                n_head: 6,
                n_kv: 2,
                hd: 64,
                mask: Mask::Causal,
                cell_pos: (0..40).collect(),
                q_pos: (0..40).collect(),
            },
            // Decode over a ring with holes, Gemma 3's head size.
            Case {
                n_head: 4,
                n_kv: 1,
                hd: 256,
                mask: Mask::SlidingWindow { window: 16 },
                cell_pos: (0..24u32).map(|c| if c % 7 == 3 { u32::MAX } else { 30 + c }).collect(),
                q_pos: vec![54],
            },
            Case { n_head: 2, n_kv: 2, hd: 32, mask: Mask::Causal, cell_pos: (0..9).collect(), q_pos: vec![5, 8] },
        ]
    }

    #[test]
    fn blocks_equal_f32_rows_of_their_values_bit_for_bit() {
        // Same products and sums in the same order as the f32 path over the dequantised
        // values, so bit-identical, for every thread count and batch split.
        let pools = [Threads::new(1), Threads::new(3)];
        for (i, c) in cases().iter().enumerate() {
            let n = c.cell_pos.len() * c.n_kv * c.hd;
            let q = data(c.q_pos.len() * c.n_head * c.hd, 10 + i as u64);
            let (kf, vf) = (data(n, 20 + i as u64), data(n, 30 + i as u64));
            for (kk, vk) in
                [(KvQuant::Q8_0, KvQuant::Q8_0), (KvQuant::Q4_0, KvQuant::Q5_1), (KvQuant::Q4_1, KvQuant::Q5_0)]
            {
                let ((kb, kd), (vb, vd)) = (quantize(kk, &kf), quantize(vk, &vf));
                let want = run(c, &q, &c.q_pos, KvData::F32 { k: &kd, v: &vd }, &pools[0]);
                let split = KvData::Split {
                    k: KvRows::Blocks { kind: kk, data: &kb, rotation: None },
                    v: KvRows::Blocks { kind: vk, data: &vb, rotation: None },
                };
                for th in &pools {
                    let got = run(c, &q, &c.q_pos, split, th);
                    assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "case {i} {kk:?}/{vk:?}");
                    // One query token at a time (decode) gives the same bits as the batch.
                    let row = c.n_head * c.hd;
                    for (t, &p) in c.q_pos.iter().enumerate() {
                        let one = run(c, &q[t * row..(t + 1) * row], &[p], split, th);
                        assert!(
                            one.iter().zip(&want[t * row..]).all(|(a, b)| a.to_bits() == b.to_bits()),
                            "case {i} token {t}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn quantised_attention_is_within_the_quantisation_error_of_f64() {
        // Against f64 attention over the unquantised values. Each score moves by at most
        // `delta = scale * sum |q_i| * err_k` (err_k: the format's bound for the block), so
        // every weight moves by a factor within e^(+-2 delta) and the output by at most
        // `max err_v + (e^(2 delta) - 1) * max |v|` (plus f32 rounding).
        let th = Threads::new(2);
        for (i, c) in cases().iter().enumerate() {
            let n = c.cell_pos.len() * c.n_kv * c.hd;
            let q = data(c.q_pos.len() * c.n_head * c.hd, 40 + i as u64);
            let (kf, vf) = (data(n, 50 + i as u64), data(n, 60 + i as u64));
            let want = reference(c, &q, &kf, &vf);
            let max_err = |kind: Option<KvQuant>, x: &[f32]| {
                kind.map_or(0.0, |k| x.chunks_exact(BLOCK).map(|b| k.max_error(b)).fold(0f32, f32::max))
            };
            let combos = [
                (Some(KvQuant::Q8_0), Some(KvQuant::Q8_0)),
                (Some(KvQuant::Q4_0), Some(KvQuant::Q4_0)),
                (Some(KvQuant::Q4_1), Some(KvQuant::Q5_1)),
                (Some(KvQuant::Q5_0), None),
                (None, Some(KvQuant::Q8_0)),
            ];
            for (kk, vk) in combos {
                let kb = kk.map(|k| quantize(k, &kf).0);
                let vb = vk.map(|k| quantize(k, &vf).0);
                let split = KvData::Split { k: side(kk, &kb, &kf), v: side(vk, &vb, &vf) };
                let got = run(c, &q, &c.q_pos, split, &th);
                let (ek, ev) = (max_err(kk, &kf), max_err(vk, &vf));
                let qsum = q.chunks_exact(c.hd).map(|r| r.iter().map(|x| x.abs()).sum::<f32>()).fold(0f32, f32::max);
                let delta = c.shape().scale * qsum * ek;
                let vmax = vf.iter().fold(0f32, |m, x| m.max(x.abs()));
                let tol = ev + ((2.0 * delta).exp() - 1.0) * vmax + 1e-4;
                let worst = got.iter().zip(&want).map(|(g, w)| (*g as f64 - w).abs()).fold(0f64, f64::max);
                assert!(worst <= tol as f64, "case {i} {kk:?}/{vk:?}: error {worst} > bound {tol}");
                // The bound is not vacuous: quantisation moved the output.
                if kk.is_some() || vk.is_some() {
                    assert!(worst > 1e-6, "case {i} {kk:?}/{vk:?}: no error at all?");
                }
            }
        }
    }

    #[test]
    fn rotated_blocks_are_within_the_quantisation_error_of_f64() {
        // Keys and values rotated per head (as the cache stores them) before quantising;
        // attention rotates queries and its output. The rotation is orthonormal, so with
        // 2-norms: each score moves by at most `delta = scale * |q| * |dk|` and each output
        // row by at most `max |dv| + (e^(2 delta) - 1) * max |v|`.
        use crate::kvq::{hadamard, key_rotation, value_rotation};
        let th = Threads::new(2);
        let norm = |x: &[f32]| x.iter().map(|a| a * a).sum::<f32>().sqrt();
        for (i, c) in cases().iter().enumerate().take(2) {
            let n = c.cell_pos.len() * c.n_kv * c.hd;
            let q = data(c.q_pos.len() * c.n_head * c.hd, 80 + i as u64);
            let (kf, mut vf) = (data(n, 81 + i as u64), data(n, 82 + i as u64));
            // An outlier channel, which rotation spreads out.
            vf.iter_mut().step_by(c.hd).for_each(|x| *x *= 8.0);
            let want = reference(c, &q, &kf, &vf);
            let (kr, vr) = (key_rotation(c.hd).unwrap(), value_rotation(c.hd).unwrap());
            for kind in [KvQuant::Q8_0, KvQuant::Q4_0, KvQuant::Q5_1] {
                let (mut kx, mut vx) = (kf.clone(), vf.clone());
                hadamard(&mut kx, kr);
                hadamard(&mut vx, vr);
                let ((kb, mut kd), (vb, mut vd)) = (quantize(kind, &kx), quantize(kind, &vx));
                let split = KvData::Split {
                    k: KvRows::Blocks { kind, data: &kb, rotation: Some(kr) },
                    v: KvRows::Blocks { kind, data: &vb, rotation: Some(vr) },
                };
                let got = run(c, &q, &c.q_pos, split, &th);
                // Errors of the stored (rotated) rows, measured in the original basis.
                hadamard(&mut kd, kr);
                hadamard(&mut vd, vr);
                let err = |a: &[f32], b: &[f32]| {
                    a.chunks_exact(c.hd)
                        .zip(b.chunks_exact(c.hd))
                        .map(|(x, y)| norm(&x.iter().zip(y).map(|(p, q)| p - q).collect::<Vec<_>>()))
                        .fold(0f32, f32::max)
                };
                let (dk, dv) = (err(&kd, &kf), err(&vd, &vf));
                let qmax = q.chunks_exact(c.hd).map(norm).fold(0f32, f32::max);
                let vmax = vf.chunks_exact(c.hd).map(norm).fold(0f32, f32::max);
                let delta = c.shape().scale * qmax * dk;
                let tol = dv + ((2.0 * delta).exp() - 1.0) * vmax + 1e-3;
                let worst = got.iter().zip(&want).map(|(g, w)| (*g as f64 - w).abs()).fold(0f64, f64::max);
                assert!(worst <= tol as f64, "case {i} {kind:?}: error {worst} > bound {tol}");
                assert!(worst > 1e-6, "case {i} {kind:?}: no error at all?");
            }
        }
    }

    #[test]
    fn mixed_float_sides_match_the_float_paths() {
        // Float sides through `Split` take the float paths: K f16 / V f16 split equals
        // the f16 path bit for bit.
        let c = &cases()[0];
        let n = c.cell_pos.len() * c.n_kv * c.hd;
        let q = data(c.q_pos.len() * c.n_head * c.hd, 70);
        let (kf, vf) = (data(n, 71), data(n, 72));
        let (k16, v16): (Vec<f16>, Vec<f16>) =
            (kf.iter().map(|&x| f16::from_f32(x)).collect(), vf.iter().map(|&x| f16::from_f32(x)).collect());
        let th = Threads::new(2);
        let want = run(c, &q, &c.q_pos, KvData::F16 { k: &k16, v: &v16 }, &th);
        let got = run(c, &q, &c.q_pos, KvData::Split { k: KvRows::F16(&k16), v: KvRows::F16(&v16) }, &th);
        assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()));
    }
}
