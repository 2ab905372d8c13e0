//! Deterministic mutators: byte-level (flips, interesting integers at random offsets,
//! truncation, growth, chunk copies and deletions, splices of another seed) and
//! JSON-aware (parse, change one value's type or size, delete or duplicate members,
//! serialise), so that structured formats are mutated past their outer syntax.

use rand::{Rng, RngCore};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

/// Little-endian integers that break length and count fields.
const INTERESTING: [u64; 14] =
    [0, 1, 2, 7, 8, 0x7f, 0x80, 0xff, 0xffff, 0x7fff_ffff, 0xffff_ffff, 0x1_0000_0000, 0x7fff_ffff_ffff_ffff, u64::MAX];

/// One byte-level mutation of `data` (in place); `other` is another seed to splice from.
/// `hot` is the prefix where structure lives (headers, metadata): most offsets fall in it.
pub fn mutate_bytes(rng: &mut ChaCha8Rng, data: &mut Vec<u8>, other: &[u8], hot: usize) {
    let offset = |rng: &mut ChaCha8Rng, len: usize| -> usize {
        if len == 0 {
            return 0;
        }
        let hot = hot.clamp(1, len);
        if rng.random_bool(0.85) { rng.random_range(0..hot) } else { rng.random_range(0..len) }
    };
    match rng.random_range(0..8u32) {
        0 => {
            // Flip a few bits.
            for _ in 0..rng.random_range(1..=4) {
                if !data.is_empty() {
                    let i = offset(rng, data.len());
                    data[i] ^= 1 << rng.random_range(0..8);
                }
            }
        }
        1 => {
            // A random byte.
            if !data.is_empty() {
                let i = offset(rng, data.len());
                data[i] = rng.random();
            }
        }
        2 | 3 => {
            // An interesting integer, 1 to 8 bytes wide.
            let v = INTERESTING[rng.random_range(0..INTERESTING.len())];
            let width = [1usize, 2, 4, 8][rng.random_range(0..4)];
            if data.len() >= width {
                let i = offset(rng, data.len() - width + 1);
                data[i..i + width].copy_from_slice(&v.to_le_bytes()[..width]);
            }
        }
        4 => {
            // Truncate.
            let n = offset(rng, data.len() + 1);
            data.truncate(n);
        }
        5 => {
            // Grow: random bytes or a copy of a chunk.
            let n = rng.random_range(1..64);
            let at = offset(rng, data.len() + 1);
            let mut chunk = vec![0u8; n];
            rng.fill_bytes(&mut chunk);
            data.splice(at..at, chunk);
        }
        6 => {
            // Delete a chunk.
            if !data.is_empty() {
                let at = offset(rng, data.len());
                let n = rng.random_range(1..=(data.len() - at).min(64));
                data.drain(at..at + n);
            }
        }
        _ => {
            // Splice: our head, the other seed's tail.
            if !other.is_empty() {
                let at = offset(rng, data.len() + 1);
                let from = rng.random_range(0..other.len());
                data.truncate(at);
                data.extend_from_slice(&other[from..]);
            }
        }
    }
}

/// Values that break JSON consumers: wrong types, extremes, empty and long strings.
fn interesting_value(rng: &mut ChaCha8Rng) -> Value {
    match rng.random_range(0..12u32) {
        0 => Value::Null,
        1 => Value::Bool(rng.random()),
        2 => Value::from(-1),
        3 => Value::from(0),
        4 => Value::from(u64::MAX),
        5 => Value::from(i64::MIN),
        6 => serde_json::json!(1e308),
        7 => Value::String(String::new()),
        8 => Value::String("\u{0}\u{ffff}<|im_start|>{{ x }}".repeat(rng.random_range(1..40))),
        9 => Value::Array(vec![]),
        10 => serde_json::json!({}),
        _ => Value::from(rng.random_range(-5..100_000i64)),
    }
}

/// Every path to a value inside `v` (object keys and array indices).
fn paths(v: &Value, prefix: &mut Vec<PathStep>, out: &mut Vec<Vec<PathStep>>) {
    if out.len() > 4096 {
        return;
    }
    out.push(prefix.clone());
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                prefix.push(PathStep::Key(k.clone()));
                paths(c, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(a) => {
            // Large arrays (vocabularies, merges): a sample of their elements.
            let step = (a.len() / 64).max(1);
            for (i, c) in a.iter().enumerate().step_by(step) {
                prefix.push(PathStep::Index(i));
                paths(c, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

#[derive(Debug, Clone)]
enum PathStep {
    Key(String),
    Index(usize),
}

fn at<'a>(v: &'a mut Value, path: &[PathStep]) -> Option<&'a mut Value> {
    let mut cur = v;
    for s in path {
        cur = match (s, cur) {
            (PathStep::Key(k), Value::Object(m)) => m.get_mut(k)?,
            (PathStep::Index(i), Value::Array(a)) => a.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// One JSON-aware mutation of the document `data`; falls back to a byte mutation when
/// `data` is not JSON (a previous mutation broke it, which is a test case too).
pub fn mutate_json(rng: &mut ChaCha8Rng, data: &mut Vec<u8>, other: &[u8]) {
    let Ok(mut doc) = serde_json::from_slice::<Value>(data) else {
        mutate_bytes(rng, data, other, data.len());
        return;
    };
    let mut all = Vec::new();
    paths(&doc, &mut Vec::new(), &mut all);
    let path = all[rng.random_range(0..all.len())].clone();
    if let Some(target) = at(&mut doc, &path) {
        match rng.random_range(0..5u32) {
            0 | 1 => *target = interesting_value(rng),
            2 => match target {
                // Remove a member or an element.
                Value::Object(m) if !m.is_empty() => {
                    let k = m.keys().nth(rng.random_range(0..m.len())).cloned();
                    if let Some(k) = k {
                        m.remove(&k);
                    }
                }
                Value::Array(a) if !a.is_empty() => {
                    a.remove(rng.random_range(0..a.len()));
                }
                other => *other = interesting_value(rng),
            },
            3 => match target {
                // Duplicate an element, or add an unknown member.
                Value::Array(a) if !a.is_empty() => {
                    let e = a[rng.random_range(0..a.len())].clone();
                    a.push(e);
                }
                Value::Object(m) => {
                    m.insert(format!("lem_fuzz_{}", rng.random_range(0..4)), interesting_value(rng));
                }
                other => *other = Value::Array(vec![other.clone(), other.clone()]),
            },
            _ => {
                // Numbers nudged by one (off-by-one offsets, lengths, ids).
                if let Some(n) = target.as_i64() {
                    *target = Value::from(n + [-1i64, 1][rng.random_range(0..2)]);
                } else {
                    *target = interesting_value(rng);
                }
            }
        }
    }
    *data = serde_json::to_vec(&doc).unwrap_or_default();
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn mutations_are_deterministic_and_change_the_input() {
        let seed = br#"{"a": [1, 2, {"b": "c"}], "d": 4}"#.to_vec();
        let run = || {
            let mut rng = ChaCha8Rng::seed_from_u64(7);
            (0..200)
                .map(|i| {
                    let mut d = seed.clone();
                    if i % 2 == 0 {
                        mutate_json(&mut rng, &mut d, &seed)
                    } else {
                        mutate_bytes(&mut rng, &mut d, &seed, 8)
                    }
                    d
                })
                .collect::<Vec<_>>()
        };
        let (a, b) = (run(), run());
        assert_eq!(a, b);
        let changed = a.iter().filter(|d| **d != seed).count();
        assert!(changed > 150, "only {changed} of 200 mutations changed the input");
    }
}
