//! Rotary scaling from `rope_scaling` / `rope_parameters`, turned into the values
//! llama.cpp's converter would have written to a GGUF file (scaling type, factor, original
//! context, `rope_freqs` / `rope_factors_*`), so both sources build the same rotary table.

use serde_json::{Map, Value};

use super::config::HfConfig;
use crate::config::{Factors, RopeScaling, YarnConfig};
use crate::error::ModelError;

/// The rotary parameter object: `rope_parameters` (transformers 5) or `rope_scaling`,
/// its `full_attention` entry when it has per-layer-type entries; `None` when absent.
pub(crate) fn rope_params(cfg: &HfConfig) -> Option<&Map<String, Value>> {
    let p = cfg.get("rope_parameters").or_else(|| cfg.get("rope_scaling"))?.as_object()?;
    Some(p.get("full_attention").and_then(Value::as_object).unwrap_or(p))
}

/// Reads one number of the parameter object.
fn num(cfg: &HfConfig, p: &Map<String, Value>, key: &str) -> Result<Option<f64>, ModelError> {
    match p.get(key).filter(|v| !v.is_null()) {
        None => Ok(None),
        Some(v) => {
            v.as_f64().map(Some).ok_or_else(|| cfg.err(format!("rope_scaling '{key}' should be a number, found {v}")))
        }
    }
}

/// A required positive number.
fn positive(cfg: &HfConfig, p: &Map<String, Value>, key: &str, ty: &str) -> Result<f64, ModelError> {
    match num(cfg, p, key)? {
        Some(f) if f > 0.0 && f.is_finite() => Ok(f),
        Some(f) => Err(cfg.err(format!("rope_scaling '{key}' of {ty} scaling must be positive, found {f}"))),
        None => Err(cfg.err(format!("rope_scaling of type '{ty}' has no '{key}'"))),
    }
}

/// Llama 3.x per-frequency divisors for `n_rot` rotating dimensions (what the converter
/// writes as `rope_freqs`): 1 for short wavelengths, `factor` for long ones, a smooth
/// blend between `orig / high` and `orig / low`. Computed in f64 like the converter's
/// Python floats, rounded to f32 at the end.
pub(crate) fn llama3_factors(n_rot: usize, base: f64, factor: f64, low: f64, high: f64, orig: f64) -> Vec<f32> {
    let (low_wavelen, high_wavelen) = (orig / low, orig / high);
    (0..n_rot)
        .step_by(2)
        .map(|i| {
            let freq = 1.0 / base.powf(i as f64 / n_rot as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            let f = if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth = (orig / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            };
            f as f32
        })
        .collect()
}

/// A list of `n` factors.
fn factor_list(cfg: &HfConfig, p: &Map<String, Value>, key: &str, n: usize) -> Result<Vec<f32>, ModelError> {
    let list = p
        .get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| cfg.err(format!("rope_scaling of type 'longrope' has no '{key}' list")))?;
    if list.len() != n {
        return Err(cfg.err(format!(
            "rope_scaling '{key}' has {} values, expected {n} (half the rotating dimensions)",
            list.len()
        )));
    }
    list.iter()
        .map(|v| {
            v.as_f64()
                .filter(|f| f.is_finite() && *f > 0.0)
                .map(|f| f as f32)
                .ok_or_else(|| cfg.err(format!("rope_scaling '{key}' holds {v}, not a positive number")))
        })
        .collect()
}

/// The scaling `config.json` declares for `n_rot` rotating dimensions, rotary base
/// `base`, training context `context_length`; `run_context` is the context the model
/// will run at (LongRoPE picks its long factors only beyond the original context).
pub(crate) fn scaling(
    cfg: &HfConfig,
    n_rot: usize,
    base: f64,
    context_length: usize,
    run_context: Option<usize>,
) -> Result<RopeScaling, ModelError> {
    let Some(p) = rope_params(cfg) else { return Ok(RopeScaling::NONE) };
    let ty = match p.get("rope_type").or_else(|| p.get("type")) {
        None | Some(Value::Null) => return Ok(RopeScaling::NONE),
        Some(Value::String(s)) => s.to_ascii_lowercase(),
        Some(other) => return Err(cfg.err(format!("rope_scaling type should be a string, found {other}"))),
    };
    // The original context: in the object, else at top level (Phi-3), else the training one.
    let orig = |p: &Map<String, Value>| -> Result<f64, ModelError> {
        match num(cfg, p, "original_max_position_embeddings")? {
            Some(o) => Ok(o),
            None => match cfg.get("original_max_position_embeddings") {
                Some(v) => v.as_f64().ok_or_else(|| {
                    cfg.err(format!("'original_max_position_embeddings' should be a number, found {v}"))
                }),
                None => Ok(context_length as f64),
            },
        }
    };
    let mut s = RopeScaling::NONE;
    match ty.as_str() {
        "default" | "none" => {}
        "linear" => s.freq_scale = (1.0 / positive(cfg, p, "factor", "linear")?) as f32,
        "llama3" => {
            let factor = num(cfg, p, "factor")?.unwrap_or(8.0);
            let low = num(cfg, p, "low_freq_factor")?.unwrap_or(1.0);
            let high = num(cfg, p, "high_freq_factor")?.unwrap_or(4.0);
            let orig = num(cfg, p, "original_max_position_embeddings")?.unwrap_or(8192.0);
            if !(factor > 0.0 && low > 0.0 && high > low && orig > 0.0) {
                return Err(cfg.err(format!(
                    "llama3 rope_scaling needs factor > 0 and high_freq_factor > low_freq_factor > 0 (factor {factor}, low {low}, high {high}, original {orig})"
                )));
            }
            s.factors = Some(Factors::Values(llama3_factors(n_rot, base, factor, low, high, orig)));
        }
        "yarn" => {
            let factor = positive(cfg, p, "factor", "yarn")?;
            let orig = orig(p)?;
            if !(orig >= 1.0 && orig <= u32::MAX as f64) {
                return Err(cfg.err(format!("yarn original_max_position_embeddings {orig} is out of range")));
            }
            s.freq_scale = (1.0 / factor) as f32;
            s.yarn = Some(YarnConfig {
                orig_ctx: orig as u32,
                beta_fast: num(cfg, p, "beta_fast")?.unwrap_or(32.0) as f32,
                beta_slow: num(cfg, p, "beta_slow")?.unwrap_or(1.0) as f32,
            });
            // The kernel multiplies by 1 + 0.1 ln(factor) itself (transformers' default
            // attention factor); an explicit one replaces that default.
            if let Some(af) = num(cfg, p, "attention_factor")?.or(num(cfg, p, "attn_factor")?) {
                let implicit = if factor > 1.0 { 1.0 + 0.1 * factor.ln() } else { 1.0 };
                s.attn_factor = (af / implicit) as f32;
            }
        }
        "longrope" | "su" => {
            let half = n_rot / 2;
            let short = factor_list(cfg, p, "short_factor", half)?;
            let long = factor_list(cfg, p, "long_factor", half)?;
            let orig = orig(p)?;
            // llama.cpp: the long factors once the context exceeds the original one.
            let use_long = run_context.is_some_and(|c| c as f64 > orig);
            s.factors = Some(Factors::Values(if use_long { long } else { short }));
            let max = context_length as f64;
            s.attn_factor = match num(cfg, p, "attention_factor")? {
                Some(af) => af as f32,
                None if max > orig && orig > 1.0 => (1.0 + (max / orig).ln() / orig.ln()).sqrt() as f32,
                None => 1.0,
            };
        }
        other => return Err(ModelError::Unsupported(format!("rope scaling type '{other}'"))),
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Llama 3.1 8B's settings: factor 8, low 1, high 4, original 8192, head_dim 128,
    /// base 500000. Expected values computed independently from the definition.
    #[test]
    fn llama3_factors_follow_the_definition() {
        let f = llama3_factors(128, 500_000.0, 8.0, 1.0, 4.0, 8192.0);
        assert_eq!(f.len(), 64);
        // High frequencies (wavelength < 8192/4 = 2048) are untouched.
        assert!(f[..8].iter().all(|&x| x == 1.0), "{:?}", &f[..8]);
        // Low frequencies (wavelength > 8192) are divided by the full factor.
        assert!(f[56..].iter().all(|&x| x == 8.0), "{:?}", &f[56..]);
        for (i, &x) in f.iter().enumerate() {
            let theta = 500_000f64.powf(-(2.0 * i as f64) / 128.0);
            let wl = 2.0 * std::f64::consts::PI / theta;
            let want = if wl < 2048.0 {
                1.0
            } else if wl > 8192.0 {
                8.0
            } else {
                // Interpolate 1/f linearly in 8192/wl between 1/8 (at 1) and 1 (at 4).
                let t = (8192.0 / wl - 1.0) / 3.0;
                1.0 / (1.0 / 8.0 + t * (1.0 - 1.0 / 8.0))
            };
            assert!((f64::from(x) - want).abs() < 1e-5, "factor {i}: {x} vs {want}");
        }
        // Monotonic non-decreasing from 1 to 8.
        assert!(f.windows(2).all(|w| w[0] <= w[1]));
        assert!(f.iter().any(|&x| x > 1.0 && x < 8.0));
    }

    /// The tiny fixture's factors (README: [1, 1, 1, 4.7818, 8, 8, 8, 8]).
    #[test]
    fn llama3_factors_of_the_tiny_fixture() {
        let f = llama3_factors(16, 10_000.0, 8.0, 1.0, 4.0, 256.0);
        assert_eq!(&f[..3], &[1.0, 1.0, 1.0]);
        assert!((f[3] - 4.7818).abs() < 1e-4, "{}", f[3]);
        assert_eq!(&f[4..], &[8.0; 4]);
    }
}
