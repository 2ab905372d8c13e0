//! `--cache-type-k` / `--cache-type-v`: the KV cache's storage types, with llama.cpp's
//! flag names and type names; `--kv-sinks` / `--kv-window`: a bound on the full-attention
//! layers' caches (attention sinks plus a window), `--kv-positions` where the sinks sit,
//! `--kv-full-layers` the layers left full (listed, or measured: `auto`). Flattened into
//! [`crate::common::WeightArgs`], so every command that loads a model (generate, chat,
//! serve, bench, eval, kv, inspect, ...) takes them and applies them in the one place the
//! load options are built.

use clap::Args;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use lem_engine::kv_policy::FullLayers;
use lem_kv::recall::RecallSelect;
use lem_kv::{KvBound, KvDtype, SinkPositions};
use lem_model::LoadOptions;

/// The type names the flags accept (llama.cpp's).
const NAMES: [&str; 7] = ["f32", "f16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1"];

fn kv_type() -> impl TypedValueParser<Value = KvDtype> {
    PossibleValuesParser::new(NAMES).try_map(|s| s.parse::<KvDtype>())
}

/// KV cache storage flags.
#[derive(Debug, Clone, Copy, Default, Args)]
pub struct KvCacheArgs {
    /// Storage type of the KV cache's keys (default f16). The block types (q8_0, q4_0,
    /// q4_1, q5_0, q5_1) store each head in GGML blocks of 32 values and need a head size
    /// that is a multiple of 32; q8_0 costs about half of f16's memory.
    #[arg(long, value_name = "TYPE", value_parser = kv_type())]
    pub cache_type_k: Option<KvDtype>,
    /// Storage type of the KV cache's values (default f16, whatever --cache-type-k says,
    /// as in llama.cpp).
    #[arg(long, value_name = "TYPE", value_parser = kv_type())]
    pub cache_type_v: Option<KvDtype>,
    /// Keep the first N positions of every full-attention layer forever (attention
    /// sinks; 0 for a plain window). Needs --kv-window.
    #[arg(long, value_name = "N", requires = "kv_window")]
    pub kv_sinks: Option<u32>,
    /// Bound every full-attention layer to the N most recent positions (plus the
    /// --kv-sinks first ones), at their original positions: the cache stops growing at
    /// sinks + window + one batch. A model's native sliding layers stay as they are.
    /// Needs --kv-sinks.
    #[arg(long, value_name = "N", requires = "kv_sinks", value_parser = clap::value_parser!(u32).range(1..))]
    pub kv_window: Option<u32>,
    /// Where the sinks sit for the rotary embedding: `original` (where they were
    /// appended) or `rebased` (StreamingLLM: just before the window, so the distance from
    /// a query to anything it sees stays below sinks + window and, when every layer is
    /// bounded, a stream may run past the model's trained context; --ctx-size is then
    /// not capped). Needs --kv-window.
    #[arg(long, value_name = "POLICY", requires = "kv_window", value_enum)]
    pub kv_positions: Option<PositionsArg>,
    /// Full-attention layers to leave unbounded: comma-separated indices (0,9,19), or
    /// `auto[:N]` to keep the N layers (default a fifth) that attend most to a needle past
    /// the window of a calibration text, measured at load and printed. Needs --kv-window.
    #[arg(long, value_name = "LAYERS", requires = "kv_window", value_parser = clap::value_parser!(FullLayersArg))]
    pub kv_full_layers: Option<FullLayersArg>,
    /// Evicted-block recall: a bounded layer keeps every position past its window in a
    /// second tier (a temporary file) with a key summary per 32-position block, and each
    /// query also attends to the B blocks its summary ranks highest. Resident KV grows by
    /// B x 32 positions per bounded layer. Needs --kv-window and original positions.
    #[arg(long, value_name = "B", requires = "kv_window")]
    pub kv_recall_blocks: Option<u32>,
    /// How recalled blocks are ranked: `bound` (Quest's upper bound against each block's
    /// least and greatest keys; bounded memory) or `exact` (the best exact score of any
    /// key in the block, keeping every evicted key in memory: the ceiling of any summary,
    /// for measurement) or `sketch` (the best score against one-bit sketches of the keys:
    /// their signs scaled per block, a sixteenth of the f16 K/V, counted as resident).
    /// Needs --kv-recall-blocks.
    #[arg(long, value_name = "HOW", requires = "kv_recall_blocks", value_parser = clap::value_parser!(RecallSelectArg))]
    pub kv_recall_select: Option<RecallSelectArg>,
    /// Most tokens one forward processes (llama.cpp's name; default 512): prompts are
    /// fed in chunks of it, and a sliding-window layer's ring holds its window plus this
    /// many cells, so a smaller one bounds memory tighter (and drafts stay shorter).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub ubatch_size: Option<u32>,
}

/// [`RecallSelect`] as clap parses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecallSelectArg(pub RecallSelect);

impl std::str::FromStr for RecallSelectArg {
    type Err = String;

    fn from_str(s: &str) -> Result<RecallSelectArg, String> {
        s.parse().map(RecallSelectArg)
    }
}

/// `--kv-positions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PositionsArg {
    /// Every key where it was appended.
    Original,
    /// Sinks just before the window (StreamingLLM).
    Rebased,
}

/// [`FullLayers`] as clap parses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FullLayersArg(pub FullLayers);

impl std::str::FromStr for FullLayersArg {
    type Err = String;

    fn from_str(s: &str) -> Result<FullLayersArg, String> {
        s.parse().map(FullLayersArg)
    }
}

impl KvCacheArgs {
    /// `opts` with the requested cache types and bound. As in llama.cpp the two type
    /// flags are independent, each defaulting to f16; with neither, the types are left as
    /// they are (and with no bound, the bound).
    pub fn apply(&self, mut opts: LoadOptions) -> LoadOptions {
        if let Some(n) = self.ubatch_size {
            opts.max_batch = Some(n as usize);
        }
        if let Some(bound) = self.bound() {
            opts.kv_bound = match self.kv_full_layers {
                // Measured on the unbounded model first (`auto_keep`).
                Some(FullLayersArg(FullLayers::Auto(_))) => None,
                Some(FullLayersArg(FullLayers::Listed(keep_full))) => Some(KvBound { keep_full, ..bound }),
                None => Some(bound),
            };
        }
        if self.cache_type_k.is_none() && self.cache_type_v.is_none() {
            return opts;
        }
        opts.kv_dtype = self.cache_type_k.unwrap_or_default();
        opts.kv_dtype_v = Some(self.cache_type_v.unwrap_or_default());
        opts
    }

    /// The sinks, window and positions asked for (without the full layers).
    pub fn bound(&self) -> Option<KvBound> {
        let (sinks, window) = (self.kv_sinks?, self.kv_window?);
        let positions = match self.kv_positions {
            Some(PositionsArg::Rebased) => SinkPositions::Rebased,
            Some(PositionsArg::Original) | None => SinkPositions::Original,
        };
        Some(KvBound {
            positions,
            recall_blocks: self.kv_recall_blocks.unwrap_or(0),
            recall_select: self.kv_recall_select.map_or(RecallSelect::Bound, |s| s.0),
            ..KvBound::new(sinks, window)
        })
    }

    /// With `--kv-full-layers auto[:N]`: the bound to apply after measuring, and N.
    pub fn auto_keep(&self) -> Option<(KvBound, Option<usize>)> {
        match self.kv_full_layers {
            Some(FullLayersArg(FullLayers::Auto(keep))) => Some((self.bound()?, keep)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use lem_kv::LayerSet;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        kv: KvCacheArgs,
    }

    #[test]
    fn flags_take_llama_cpp_names_and_set_the_load_options() {
        let cli = Cli::try_parse_from(["lem", "--cache-type-k", "q8_0", "--cache-type-v", "q4_0"]).unwrap();
        let o = cli.kv.apply(LoadOptions::default());
        assert_eq!((o.kv_dtype, o.kv_dtype_v), (KvDtype::Q8_0, Some(KvDtype::Q4_0)));
        // Only K: V stays f16, as in llama.cpp.
        let o = Cli::try_parse_from(["lem", "--cache-type-k", "q5_1"]).unwrap().kv.apply(LoadOptions::default());
        assert_eq!((o.kv_dtype, o.kv_dtype_v), (KvDtype::Q5_1, Some(KvDtype::F16)));
        // Neither: the defaults are left alone.
        let o = Cli::try_parse_from(["lem"]).unwrap().kv.apply(LoadOptions::default());
        assert_eq!(o, LoadOptions::default());
        let err = Cli::try_parse_from(["lem", "--cache-type-k", "q4_k"]).err().unwrap().to_string();
        assert!(err.contains("q8_0"), "{err}");
        // llama.cpp's batch size: the tokens of one forward, at least 1.
        let o = Cli::try_parse_from(["lem", "--ubatch-size", "64"]).unwrap().kv.apply(LoadOptions::default());
        assert_eq!(o, LoadOptions { max_batch: Some(64), ..LoadOptions::default() });
        assert!(Cli::try_parse_from(["lem", "--ubatch-size", "0"]).is_err());
    }

    #[test]
    fn sinks_and_window_go_together_and_bound_the_load() {
        let o = Cli::try_parse_from(["lem", "--kv-sinks", "4", "--kv-window", "512"])
            .unwrap()
            .kv
            .apply(LoadOptions::default());
        assert_eq!(o.kv_bound, Some(KvBound::new(4, 512)));
        assert_eq!((o.kv_dtype, o.kv_dtype_v), (KvDtype::F16, None), "types untouched");
        let o = Cli::try_parse_from(["lem", "--kv-sinks", "0", "--kv-window", "1"])
            .unwrap()
            .kv
            .apply(LoadOptions::default());
        assert_eq!(o.kv_bound, Some(KvBound::new(0, 1)));
        for args in [&["lem", "--kv-sinks", "4"][..], &["lem", "--kv-window", "512"]] {
            let err = Cli::try_parse_from(args).err().unwrap();
            assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument, "{args:?}");
        }
        let err = Cli::try_parse_from(["lem", "--kv-sinks", "4", "--kv-window", "0"]).err().unwrap().to_string();
        assert!(err.contains("--kv-window"), "{err}");
    }

    #[test]
    fn positions_and_full_layers_refine_the_bound() {
        let parse =
            |args: &[&str]| Cli::try_parse_from([&["lem", "--kv-sinks", "4", "--kv-window", "64"], args].concat());
        let o = parse(&["--kv-positions", "rebased", "--kv-full-layers", "0, 9,19"])
            .unwrap()
            .kv
            .apply(LoadOptions::default());
        let want = KvBound {
            positions: SinkPositions::Rebased,
            keep_full: LayerSet::of([0, 9, 19]).unwrap(),
            ..KvBound::new(4, 64)
        };
        assert_eq!(o.kv_bound, Some(want));
        // auto: nothing bounded at load; the bound and the count come back for measuring.
        let cli = parse(&["--kv-full-layers", "auto:3"]).unwrap();
        assert_eq!(cli.kv.apply(LoadOptions::default()).kv_bound, None);
        assert_eq!(cli.kv.auto_keep(), Some((KvBound::new(4, 64), Some(3))));
        assert_eq!(parse(&["--kv-full-layers", "auto"]).unwrap().kv.auto_keep(), Some((KvBound::new(4, 64), None)));
        for bad in ["auto:0", "auto3", "1,x", "300", ""] {
            let err = parse(&["--kv-full-layers", bad]).err().map(|e| e.to_string());
            assert!(err.is_some(), "{bad:?} accepted");
        }
        let err = parse(&["--kv-positions", "shifted"]).err().unwrap().to_string();
        assert!(err.contains("rebased"), "{err}");
        // Both need a bound.
        for args in [&["lem", "--kv-positions", "rebased"][..], &["lem", "--kv-full-layers", "1"]] {
            let err = Cli::try_parse_from(args).err().unwrap();
            assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument, "{args:?}");
        }
    }
}
