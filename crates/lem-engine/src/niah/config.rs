//! Cache configurations a `lem niah` run measures side by side.

use lem_kv::recall::RecallSelect;
use lem_kv::{KvBound, KvDtype, SinkPositions};
use lem_model::LoadOptions;
use serde::Serialize;

use super::NiahError;
use crate::kv_policy::{self, AutoChoice, FullLayers};
use crate::{Engine, EngineError};

/// A cache configuration to measure: storage types and an optional sink + window bound.
///
/// Written `full` (f16 K and V, every position), or comma-separated `k=TYPE`, `v=TYPE`,
/// `sinks=N`, `window=N` (types are llama.cpp's names, each defaulting to f16; `sinks`
/// and `window` go together), and with a bound `positions=original|rebased`,
/// `full=0/9/19|auto[:N]` (layers left full), `recall=B` (evicted blocks recalled) and
/// `select=bound|exact|sketch` (how they are ranked); `ubatch=N` sets the tokens per forward,
/// which size sliding-window rings (`--ubatch-size`), e.g.
/// `k=q4_0,v=q4_0` or `sinks=4,window=512,k=q8_0` or `sinks=4,window=512,recall=4`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CacheConfig {
    /// The configuration as written.
    pub name: String,
    /// Key storage type.
    pub k: KvDtype,
    /// Value storage type.
    pub v: KvDtype,
    /// Sinks and window of the full-attention layers, if bounded.
    #[serde(skip)]
    pub bound: Option<KvBound>,
    /// Layers the bound leaves full (`full=0/9/19` or `full=auto[:N]`).
    #[serde(skip)]
    pub full: Option<FullLayers>,
    /// Most tokens per forward (`ubatch=N`; `None`: the default), which sizes
    /// sliding-window rings.
    #[serde(skip)]
    pub ubatch: Option<usize>,
}

impl CacheConfig {
    /// The full-attention f16 reference.
    pub fn full() -> CacheConfig {
        CacheConfig { name: "full".into(), k: KvDtype::F16, v: KvDtype::F16, bound: None, full: None, ubatch: None }
    }

    /// `base` with this configuration's cache types and bound (the bound is left out
    /// when `auto` is to measure the full layers first).
    pub fn load_options(&self, base: LoadOptions) -> LoadOptions {
        let kv_bound = match self.full {
            Some(FullLayers::Auto(_)) => None,
            Some(FullLayers::Listed(keep_full)) => self.bound.map(|b| KvBound { keep_full, ..b }),
            None => self.bound,
        };
        LoadOptions {
            kv_dtype: self.k,
            kv_dtype_v: Some(self.v),
            kv_bound,
            max_batch: self.ubatch.or(base.max_batch),
            ..base
        }
    }

    /// Loads the engine this configuration measures; with `full=auto` the full layers
    /// are measured and the choice returned.
    pub fn load(
        &self,
        path: &std::path::Path,
        cfg: crate::EngineConfig,
        base: LoadOptions,
    ) -> Result<(Engine, Option<AutoChoice>), EngineError> {
        let mut engine = Engine::load_with(path, cfg, self.load_options(base))?;
        let choice = match (self.full, self.bound) {
            (Some(FullLayers::Auto(keep)), Some(bound)) => {
                let keep = keep.unwrap_or_else(|| kv_policy::default_keep(&engine));
                Some(kv_policy::bound_auto(&mut engine, bound, keep)?)
            }
            _ => None,
        };
        Ok((engine, choice))
    }
}

impl std::str::FromStr for CacheConfig {
    type Err = NiahError;

    fn from_str(s: &str) -> Result<CacheConfig, NiahError> {
        let bad = |why: String| NiahError::Config { config: s.to_owned(), why };
        let name = s.trim().to_owned();
        if name == "full" {
            return Ok(CacheConfig::full());
        }
        let mut c = CacheConfig { name, ..CacheConfig::full() };
        let (mut sinks, mut window, mut positions, mut recall, mut select) = (None, None, None, None, None);
        for part in s.split(',').map(str::trim) {
            let (key, value) = part.split_once('=').ok_or_else(|| bad(format!("'{part}' is not key=value")))?;
            let number =
                || value.trim().parse::<u32>().map_err(|_| bad(format!("{key}: '{value}' is not a whole number")));
            match key.trim() {
                "k" => c.k = value.parse().map_err(|e: lem_kv::KvError| bad(e.to_string()))?,
                "v" => c.v = value.parse().map_err(|e: lem_kv::KvError| bad(e.to_string()))?,
                "sinks" => sinks = Some(number()?),
                "window" => window = Some(number()?),
                "positions" => positions = Some(value.parse::<SinkPositions>().map_err(bad)?),
                "full" => c.full = Some(value.parse::<FullLayers>().map_err(bad)?),
                "recall" => recall = Some(number()?),
                "select" => select = Some(value.parse::<RecallSelect>().map_err(bad)?),
                "ubatch" => match number()? {
                    0 => return Err(bad("ubatch must be at least 1".into())),
                    n => c.ubatch = Some(n as usize),
                },
                other => return Err(bad(format!("unknown key '{other}'"))),
            }
        }
        c.bound = match (sinks, window) {
            (None, None) => None,
            (Some(_), Some(0)) => return Err(bad("window must be at least 1".into())),
            (Some(sinks), Some(window)) => {
                let (positions, recall_blocks) = (positions.unwrap_or_default(), recall.unwrap_or(0));
                let recall_select = select.unwrap_or_default();
                Some(KvBound { positions, recall_blocks, recall_select, ..KvBound::new(sinks, window) })
            }
            _ => return Err(bad("sinks and window go together".into())),
        };
        if select.is_some() && recall.is_none() {
            return Err(bad("select needs recall".into()));
        }
        if c.bound.is_none() && (positions.is_some() || c.full.is_some() || recall.is_some()) {
            return Err(bad("positions, full and recall need sinks and window".into()));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configurations_parse_and_refuse_nonsense() {
        assert_eq!("full".parse::<CacheConfig>().unwrap(), CacheConfig::full());
        let c: CacheConfig = "k=q4_0,v=q8_0".parse().unwrap();
        assert_eq!((c.k, c.v, c.bound), (KvDtype::Q4_0, KvDtype::Q8_0, None));
        let c: CacheConfig = "sinks=4, window=512".parse().unwrap();
        assert_eq!((c.k, c.v, c.bound), (KvDtype::F16, KvDtype::F16, Some(KvBound::new(4, 512))));
        let o = c.load_options(LoadOptions::default());
        assert_eq!((o.kv_bound, o.kv_dtype_v), (Some(KvBound::new(4, 512)), Some(KvDtype::F16)));
        let c: CacheConfig = "sinks=4,window=512,k=q8_0,ubatch=64".parse().unwrap();
        assert_eq!((c.ubatch, c.load_options(LoadOptions::default()).max_batch), (Some(64), Some(64)));
        assert_eq!(CacheConfig::full().load_options(LoadOptions::default()).max_batch, None);
        for bad in
            ["ubatch=0", "sinks=4", "window=512", "k=q3_k", "sinks=4,window=0", "depth=3", "fast", "sinks=x,window=2"]
        {
            let err = bad.parse::<CacheConfig>().unwrap_err();
            assert!(matches!(err, NiahError::Config { .. }), "{bad}: {err}");
        }
    }
}
