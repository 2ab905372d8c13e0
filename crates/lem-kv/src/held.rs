//! What a layer must hold for a sequence to continue (the imports' check).

use crate::{LayerKind, LayerSpec};

/// Whether `positions` (ascending) is what a layer of `kind` must hold for a sequence of
/// `len` tokens to continue correctly (nothing, for a layer that shares another's K/V): every position [`LayerKind::needed`] names, nothing
/// at or past `len`, and (bounded layers) the positions past the sinks one contiguous run
/// ending at `len - 1`, as the ring leaves them.
pub(crate) fn check_held(spec: &LayerSpec, positions: &[u32], len: u32) -> Result<(), String> {
    if let Some(source) = spec.shares {
        if !positions.is_empty() {
            return Err(format!(
                "a layer sharing layer {source}'s K/V holds nothing, got {} positions",
                positions.len()
            ));
        }
        return Ok(());
    }
    let kind = spec.kind;
    let span = match (positions.first(), positions.last()) {
        (Some(a), Some(b)) => format!("{} positions {a}..={b}", positions.len()),
        _ => "no positions".to_owned(),
    };
    let sinks = kind.sinks().min(len);
    let tail = &positions[positions.partition_point(|&p| p < sinks)..];
    let contiguous_to_end =
        tail.last().is_none_or(|&last| last + 1 == len) && tail.windows(2).all(|w| w[0].checked_add(1) == Some(w[1]));
    let [head, recent] = kind.needed(len);
    let holds = |mut r: std::ops::Range<u32>| r.all(|p| positions.binary_search(&p).is_ok());
    let ok = contiguous_to_end && holds(head.clone()) && holds(recent.clone()) && (len == 0 || !positions.is_empty());
    if kind == LayerKind::Full && (!ok || positions.len() != len as usize) {
        return Err(format!("full-attention layer must hold positions 0..{len}, got {span}"));
    }
    if !ok {
        return Err(format!(
            "{} layer must hold positions {head:?} and a contiguous run from at most {} up to {}, got {span}",
            kind.describe(),
            recent.start,
            len.saturating_sub(1),
        ));
    }
    Ok(())
}
