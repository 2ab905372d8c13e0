//! The spec's building blocks (§2): `cos`, `mean_vec`, `entropy`.
//!
//! All three accept any element type that converts losslessly to `f64` (`f32` keys as
//! stored, or `f64` intermediate vectors) and do every operation in `f64`. Sums run
//! sequentially in index order from `+0.0`, so results are reproducible bit for bit.

/// Sum of squares, sequential, in f64.
#[inline]
pub(crate) fn sq_norm<A: Copy + Into<f64>>(a: &[A]) -> f64 {
    let mut s = 0.0f64;
    for &x in a {
        let x: f64 = x.into();
        s += x * x;
    }
    s
}

/// Dot product, sequential, in f64. Callers guarantee equal lengths.
#[inline]
fn dot<A: Copy + Into<f64>>(a: &[A], b: &[A]) -> f64 {
    let mut s = 0.0f64;
    for (&x, &y) in a.iter().zip(b) {
        let (x, y): (f64, f64) = (x.into(), y.into());
        s += x * y;
    }
    s
}

/// `LANES` dot products of `a` with equally long vectors `bs`, each summed sequentially
/// in index order from `+0.0`: bit for bit `[dot(a, bs[0]), ...]`. The independent sums
/// run interleaved, so they overlap in the CPU's pipeline instead of each waiting on its
/// own chain of additions (several times faster than `LANES` calls of [`dot`]).
#[inline]
fn dots<const LANES: usize, A: Copy + Into<f64>>(a: &[A], bs: [&[A]; LANES]) -> [f64; LANES] {
    let bs = bs.map(|b| &b[..a.len()]);
    let mut s = [0.0f64; LANES];
    for (k, &x) in a.iter().enumerate() {
        let x: f64 = x.into();
        for n in 0..LANES {
            let y: f64 = bs[n][k].into();
            s[n] += x * y;
        }
    }
    s
}

/// Cosines of every pair `i < j` of `vs` (equally long, non-empty vectors with squared
/// norms `sq`), handed to `f(i, j, cos)` in `i`-outer, `j`-inner order. Bit-identical to
/// `cos_with_sq_norms(vs[i], vs[j], sq[i], sq[j])` per pair; computed [`dots`]-wise.
pub(crate) fn pair_cosines<A: Copy + Into<f64>, V: AsRef<[A]>>(
    vs: &[V],
    sq: &[f64],
    mut f: impl FnMut(usize, usize, f64),
) {
    const LANES: usize = 8;
    let n = vs.len();
    for i in 0..n {
        let a = vs[i].as_ref();
        let mut j = i + 1;
        while j + LANES <= n {
            let ds = dots::<LANES, A>(a, std::array::from_fn(|m| vs[j + m].as_ref()));
            for (m, d) in ds.into_iter().enumerate() {
                f(i, j + m, cos_from_dot(d, sq[i], sq[j + m]));
            }
            j += LANES;
        }
        for j in j..n {
            f(i, j, cos_from_dot(dot(a, vs[j].as_ref()), sq[i], sq[j]));
        }
    }
}

/// `cos` given precomputed squared norms ([`sq_norm`]). Bit-identical to [`cos`] for
/// equal-length non-empty inputs; the scorer uses it to avoid recomputing norms for every
/// pair.
#[inline]
pub(crate) fn cos_with_sq_norms<A: Copy + Into<f64>>(a: &[A], b: &[A], sq_a: f64, sq_b: f64) -> f64 {
    if sq_a == 0.0 || sq_b == 0.0 {
        return 0.0;
    }
    cos_from_dot(dot(a, b), sq_a, sq_b)
}

/// `dot / sqrt(|a|² · |b|²)`, clamped to `[-1, 1]`; 0 for a zero denominator.
///
/// The denominator is `sqrt(|a|² · |b|²)` rather than `|a| · |b|`: algebraically the same,
/// but `sqrt(x²) == x` exactly in binary floating point, so `cos(a, a)` is exactly 1.
/// Should the product overflow or underflow (impossible for f32 inputs), it falls back to
/// `sqrt(|a|²) · sqrt(|b|²)`.
#[inline]
fn cos_from_dot(dot: f64, sq_a: f64, sq_b: f64) -> f64 {
    if sq_a == 0.0 || sq_b == 0.0 {
        return 0.0;
    }
    let mut den = (sq_a * sq_b).sqrt();
    if den == 0.0 || den.is_infinite() {
        den = sq_a.sqrt() * sq_b.sqrt();
    }
    if den == 0.0 {
        return 0.0;
    }
    (dot / den).clamp(-1.0, 1.0)
}

/// Cosine similarity `dot(a, b) / (|a| |b|)`, computed in f64 as
/// `dot / sqrt(|a|² · |b|²)` (so that `cos(a, a)` is exactly 1).
///
/// Returns 0 when the lengths differ, when either vector is empty, or when the
/// denominator is 0 (a zero vector). The quotient is clamped to `[-1, 1]`, which only
/// removes last-bit rounding excursions.
///
/// Inputs are expected to be finite; with NaN or infinite elements the result is
/// unspecified (it may be NaN). [`KeySnapshot`](crate::KeySnapshot) refuses such keys, so
/// [`score`](crate::score) never sees them.
///
/// ```
/// use lem_score::cos;
/// assert_eq!(cos(&[1.0f32, 0.0], &[2.0, 0.0]), 1.0);
/// assert_eq!(cos(&[3.0f64, 4.0], &[5.0, 0.0]), 0.6);
/// assert_eq!(cos(&[1.0f32], &[1.0, 2.0]), 0.0); // lengths differ
/// assert_eq!(cos::<f32>(&[], &[]), 0.0);
/// ```
pub fn cos<A: Copy + Into<f64>>(a: &[A], b: &[A]) -> f64 {
    if a.len() != b.len() || a.is_empty() {
        return 0.0;
    }
    cos_with_sq_norms(a, b, sq_norm(a), sq_norm(b))
}

/// Element-wise mean of equally long vectors, in f64: `sum_k vs[k][i] / vs.len()`, the sum
/// taken in the order of `vs`.
///
/// Returns an empty vector when `vs` is empty or the lengths differ (so that [`cos`] of
/// the result with anything is 0, the spec's convention for degenerate input).
///
/// ```
/// use lem_score::mean_vec;
/// assert_eq!(mean_vec(&[vec![1.0f32, 2.0], vec![3.0, 6.0]]), vec![2.0, 4.0]);
/// assert!(mean_vec(&[vec![1.0f32], vec![1.0, 2.0]]).is_empty());
/// ```
pub fn mean_vec<A: Copy + Into<f64>, V: AsRef<[A]>>(vs: &[V]) -> Vec<f64> {
    let Some(first) = vs.first() else {
        return Vec::new();
    };
    let n = first.as_ref().len();
    if vs.iter().any(|v| v.as_ref().len() != n) {
        return Vec::new();
    }
    let mut acc = vec![0.0f64; n];
    for v in vs {
        for (a, &x) in acc.iter_mut().zip(v.as_ref()) {
            *a += x.into();
        }
    }
    let k = vs.len() as f64;
    for a in &mut acc {
        *a /= k;
    }
    acc
}

/// Normalised Shannon entropy of the per-position magnitudes of a position-major `[T*D]`
/// vector, in `[0, 1]`.
///
/// For each position `p`, `m_p = |flat[p*D .. (p+1)*D]|`; with `S = sum m_p`, the result
/// is `(-sum_{q_p > 0} q_p log2 q_p) / log2(T)` where `q_p = m_p / S`.
///
/// Returns 0 when `T <= 1`, `D == 0`, `S == 0`, or `flat.len() != T * D` (degenerate
/// input, the spec's convention). The quotient is clamped to `[0, 1]` to remove last-bit
/// rounding excursions (uniform magnitudes with `T` not a power of two can otherwise give
/// `1.0000000000000002`).
///
/// ```
/// use lem_score::entropy;
/// // T = 4 positions of equal magnitude: exactly 1.
/// assert_eq!(entropy(&[1.0f32, 0.0, 0.0, 1.0, -1.0, 0.0, 0.0, -1.0], 4, 2), 1.0);
/// // All magnitude at one position: exactly 0.
/// assert_eq!(entropy(&[0.0f32, 0.0, 3.0, 4.0], 2, 2), 0.0);
/// ```
pub fn entropy<A: Copy + Into<f64>>(flat: &[A], t: usize, d: usize) -> f64 {
    if t <= 1 || d == 0 || t.checked_mul(d) != Some(flat.len()) {
        return 0.0;
    }
    let mags: Vec<f64> = flat.chunks_exact(d).map(|p| sq_norm(p).sqrt()).collect();
    let mut s = 0.0f64;
    for &m in &mags {
        s += m;
    }
    if s == 0.0 {
        return 0.0;
    }
    let mut e = 0.0f64;
    for &m in &mags {
        let q = m / s;
        if q > 0.0 {
            e -= q * q.log2();
        }
    }
    (e / (t as f64).log2()).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_cosines_match_cos_bitwise() {
        // 11 vectors: full batches of 4 and remainders, zero vectors included.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let mut vs: Vec<Vec<f32>> = (0..11).map(|_| (0..37).map(|_| next()).collect()).collect();
        vs[3] = vec![0.0; 37];
        let sq: Vec<f64> = vs.iter().map(|v| sq_norm(v)).collect();
        let mut seen = Vec::new();
        pair_cosines(&vs, &sq, |i, j, c| seen.push((i, j, c.to_bits())));
        let mut want = Vec::new();
        for i in 0..vs.len() {
            for j in i + 1..vs.len() {
                want.push((i, j, cos(&vs[i], &vs[j]).to_bits()));
            }
        }
        assert_eq!(seen, want);
    }

    #[test]
    fn cos_degenerate_cases_are_zero() {
        assert_eq!(cos(&[1.0f64, 2.0], &[1.0]), 0.0);
        assert_eq!(cos::<f64>(&[], &[]), 0.0);
        assert_eq!(cos(&[0.0f64, 0.0], &[1.0, 2.0]), 0.0);
        assert_eq!(cos(&[0.0f64, 0.0], &[0.0, 0.0]), 0.0);
    }

    #[test]
    fn cos_is_clamped_and_symmetric() {
        let a = [0.1f64, 0.2, 0.3, 1e-3, 7.0];
        assert_eq!(cos(&a, &a), 1.0);
        let b = [-0.1f64, -0.2, -0.3, -1e-3, -7.0];
        assert_eq!(cos(&a, &b), -1.0);
        let c = [3.0f64, -1.0, 0.5, 2.0, 0.25];
        assert_eq!(cos(&a, &c).to_bits(), cos(&c, &a).to_bits());
    }

    #[test]
    fn cos_with_sq_norms_matches_cos_bitwise() {
        let a = [0.3f32, -1.7, 2.9, 1e-20];
        let b = [1.1f32, 0.4, -0.8, 3.0];
        let got = cos_with_sq_norms(&a, &b, sq_norm(&a), sq_norm(&b));
        assert_eq!(got.to_bits(), cos(&a, &b).to_bits());
    }

    #[test]
    fn cos_of_a_vector_with_itself_is_exactly_one() {
        let mut x = 0.123_456_7f64;
        for n in 1..200usize {
            let v: Vec<f64> = (0..n)
                .map(|i| {
                    x = (x * 9301.0 + 49297.0 * i as f64).rem_euclid(233_280.0) / 1000.0 - 100.0;
                    x
                })
                .collect();
            assert_eq!(cos(&v, &v), 1.0, "n={n}");
            let neg: Vec<f64> = v.iter().map(|y| -y).collect();
            assert_eq!(cos(&v, &neg), -1.0, "n={n}");
        }
    }

    #[test]
    fn cos_survives_extreme_f64_magnitudes() {
        // |a|²·|b|² overflows / underflows: the fallback denominator is used.
        assert_eq!(cos(&[1e100f64, 0.0], &[1e100, 0.0]), 1.0);
        assert_eq!(cos(&[1e-100f64, 0.0], &[1e-100, 0.0]), 1.0);
        assert_eq!(cos(&[1e-100f64, 1e-100], &[-1e100, -1e100]), -1.0);
    }

    #[test]
    fn mean_vec_empty_input() {
        let none: [Vec<f32>; 0] = [];
        assert!(mean_vec(&none).is_empty());
    }

    #[test]
    fn entropy_degenerate_cases_are_zero() {
        assert_eq!(entropy(&[1.0f32, 2.0], 1, 2), 0.0); // T <= 1
        assert_eq!(entropy::<f32>(&[], 3, 0), 0.0); // D == 0
        assert_eq!(entropy(&[0.0f32; 6], 3, 2), 0.0); // S == 0
        assert_eq!(entropy(&[1.0f32; 5], 3, 2), 0.0); // wrong length
        assert_eq!(entropy(&[1.0f32; 5], usize::MAX, 2), 0.0); // T*D overflows
    }

    #[test]
    fn entropy_uniform_non_power_of_two_is_one() {
        for t in 2..40usize {
            let flat = vec![0.7f32; t * 3];
            let e = entropy(&flat, t, 3);
            assert!((e - 1.0).abs() < 1e-12 && e <= 1.0, "t={t}: {e}");
        }
    }

    #[test]
    fn entropy_two_to_one_split() {
        // magnitudes 2 and 1: q = 2/3, 1/3; E = log2(3) - 2/3; log2(T) = 1.
        let e = entropy(&[2.0f32, 1.0], 2, 1);
        let want = 3f64.log2() - 2.0 / 3.0;
        assert!((e - want).abs() < 1e-12, "{e} vs {want}");
    }
}
