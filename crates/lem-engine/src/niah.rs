//! Needle in a haystack (RULER-style): recall of one fact hidden in a long, varied text.
//!
//! A [`Case`] is a deterministic haystack (sentences from a seeded generator of templates
//! and word lists, written for lem) with one needle, "The special magic {kind} for {key}
//! is: {value}.", placed at a requested depth, and a question about it. [`prompt`] wraps
//! it in the model's chat template ([`Form::Chat`]) or as a text to continue
//! ([`Form::Completion`], ending "The special magic number for {key} mentioned in the
//! provided text is:"); [`run_case`] decodes greedily and scores exactly: a hit when the
//! value appears in the answer as a whole word. A [`CacheConfig`] (`full`,
//! `k=q4_0,v=q4_0`, `sinks=4,window=512`, ...) names the cache a run is measured under;
//! `lem niah` runs a grid of lengths x depths under several of them side by side.

use std::ops::{ControlFlow, Range};

use lem_kv::recall::RecallSelect;
use lem_kv::{KvBound, KvDtype, SinkPositions};
use lem_model::LoadOptions;
use lem_tokenizer::{Bos, ChatMessage};
use serde::Serialize;

use crate::kv_policy::{self, AutoChoice, FullLayers};
use crate::sampling::SamplingParams;
use crate::{Engine, EngineError, GenerateRequest, generate};

/// Errors of the harness's inputs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NiahError {
    /// A cache configuration that does not parse.
    #[error(
        "bad cache configuration '{config}': {why} (expected 'full' or comma-separated k=TYPE, v=TYPE, sinks=N, window=N, positions=original|rebased, full=LAYERS|auto[:N], recall=B)"
    )]
    Config {
        /// The configuration as given.
        config: String,
        /// What is wrong with it.
        why: String,
    },
    /// A depth above 100 percent.
    #[error("depth {0} is not a percentage (0 to 100)")]
    Depth(u32),
}

/// A small deterministic generator (SplitMix64): the same seed gives the same haystack on
/// every machine.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x6C65_6D5F_6E69_6168)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// One element of `xs`.
    pub fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len())]
    }
}

const PEOPLE: &[&str] = &[
    "the baker",
    "a retired pilot",
    "my neighbour",
    "the night guard",
    "a young painter",
    "the ferry captain",
    "an old librarian",
    "the gardener",
    "a travelling tailor",
    "the schoolteacher",
    "a quiet clockmaker",
    "the village doctor",
    "a street musician",
    "the harbour master",
    "a curious child",
    "the beekeeper",
];
const VERBS: &[&str] = &[
    "repaired",
    "painted",
    "carried",
    "described",
    "sold",
    "borrowed",
    "measured",
    "polished",
    "forgot",
    "found",
    "sketched",
    "wrapped",
    "counted",
    "mended",
    "returned",
    "admired",
];
const THINGS: &[&str] = &[
    "a wooden chair",
    "the copper kettle",
    "a box of letters",
    "an umbrella",
    "the iron gate",
    "a basket of pears",
    "the broken lantern",
    "a map of the coast",
    "a pair of boots",
    "the blue bicycle",
    "a jar of honey",
    "the garden fence",
    "an old violin",
    "a stack of plates",
    "the kitchen clock",
    "a roll of canvas",
];
const PLACES: &[&str] = &[
    "near the market",
    "by the river",
    "behind the station",
    "in the small square",
    "at the edge of town",
    "under the bridge",
    "beside the bakery",
    "on the hill road",
    "in the covered yard",
    "outside the library",
    "along the canal",
    "at the corner shop",
];
const TIMES: &[&str] = &[
    "on Monday morning",
    "late in the evening",
    "before the rain came",
    "after lunch",
    "at dawn",
    "during the festival",
    "in early spring",
    "on a windy afternoon",
    "the week before",
    "just after sunset",
];
const ADJECTIVES: &[&str] =
    &["cheerful", "patient", "tired", "careful", "busy", "thoughtful", "restless", "calm", "proud", "puzzled"];
const WEATHER: &[&str] = &[
    "The sky was grey",
    "A light wind blew",
    "The streets were quiet",
    "It had rained all night",
    "The air smelled of bread",
    "Sunlight fell on the roofs",
    "Fog hung over the water",
    "The bells rang twice",
];
const KEY_ADJ: &[&str] = &[
    "amber", "brisk", "cobalt", "dusty", "eager", "frosty", "gentle", "hollow", "ivory", "jolly", "lunar", "mellow",
    "nimble", "olive", "plain", "quiet", "rustic", "silver", "tidy", "velvet",
];
const KEY_NOUN: &[&str] = &[
    "falcon", "harbor", "meadow", "lantern", "pebble", "orchard", "compass", "thimble", "canyon", "beacon", "walnut",
    "kettle", "glacier", "sparrow", "ribbon", "anchor", "thistle", "marble", "cedar", "quarry",
];
const VALUE_WORDS: &[&str] = &[
    "tangerine",
    "marigold",
    "porcelain",
    "sandalwood",
    "labyrinth",
    "saxophone",
    "avalanche",
    "chrysalis",
    "mandolin",
    "nightingale",
    "obsidian",
    "quicksilver",
    "rhubarb",
    "sycamore",
    "tapestry",
    "zeppelin",
];

/// One sentence of haystack: a template filled from the word lists.
pub fn sentence(rng: &mut Rng) -> String {
    let cap = |s: &str| {
        let mut c = s.chars();
        c.next().map(|f| f.to_uppercase().chain(c).collect::<String>()).unwrap_or_default()
    };
    match rng.below(6) {
        0 => format!("{} {} {} {}.", cap(rng.pick(PEOPLE)), rng.pick(VERBS), rng.pick(THINGS), rng.pick(PLACES)),
        1 => format!("{}, {} {} {}.", cap(rng.pick(TIMES)), rng.pick(PEOPLE), rng.pick(VERBS), rng.pick(THINGS)),
        2 => format!("{} while {} looked {}.", rng.pick(WEATHER), rng.pick(PEOPLE), rng.pick(ADJECTIVES)),
        3 => format!(
            "Nobody knew why {} had {} {} {}.",
            rng.pick(PEOPLE),
            rng.pick(VERBS),
            rng.pick(THINGS),
            rng.pick(TIMES)
        ),
        4 => format!(
            "{} seemed {}, and {} {} {}.",
            cap(rng.pick(PEOPLE)),
            rng.pick(ADJECTIVES),
            rng.pick(PEOPLE),
            rng.pick(VERBS),
            rng.pick(THINGS)
        ),
        _ => format!("{} {}; {} was {}.", rng.pick(WEATHER), rng.pick(PLACES), rng.pick(PEOPLE), rng.pick(ADJECTIVES)),
    }
}

/// What a needle's value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum NeedleKind {
    /// A 7-digit number.
    #[default]
    Number,
    /// A word.
    Word,
    /// A UUID (8-4-4-4-12 hex digits).
    Uuid,
}

impl NeedleKind {
    /// The word the needle and question use ("number", "word", "uuid").
    pub fn name(self) -> &'static str {
        match self {
            NeedleKind::Number => "number",
            NeedleKind::Word => "word",
            NeedleKind::Uuid => "uuid",
        }
    }

    fn value(self, rng: &mut Rng) -> String {
        match self {
            NeedleKind::Number => (1_000_000 + rng.below(9_000_000)).to_string(),
            NeedleKind::Word => rng.pick(VALUE_WORDS).to_owned(),
            NeedleKind::Uuid => {
                let (a, b) = (rng.next_u64(), rng.next_u64());
                format!(
                    "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
                    a >> 32,
                    (a >> 16) & 0xffff,
                    a & 0xffff,
                    b >> 48,
                    b & 0xffff_ffff_ffff
                )
            }
        }
    }
}

/// The fact hidden in the haystack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Needle {
    /// What the value is.
    pub kind: NeedleKind,
    /// Whose value it is (two words joined by a hyphen).
    pub key: String,
    /// The value to recall.
    pub value: String,
}

impl Needle {
    /// "The special magic {kind} for {key} is: {value}."
    pub fn sentence(&self) -> String {
        format!("The special magic {} for {} is: {}.", self.kind.name(), self.key, self.value)
    }
}

/// How the model is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Form {
    /// A user turn through the model's chat template (instruction models).
    #[default]
    Chat,
    /// Plain text the model continues: "... The special magic number for X mentioned in
    /// the provided text is:".
    Completion,
}

/// One grid cell's input: a haystack of about `length` prompt tokens with the needle at
/// `depth` percent of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Case {
    /// Target prompt length in tokens.
    pub length: usize,
    /// Depth of the needle, in percent of the haystack (0: first, 100: last).
    pub depth: u32,
    /// The needle.
    pub needle: Needle,
    /// The haystack with the needle in it.
    pub context: String,
    /// Byte range of the needle sentence in `context`.
    pub needle_span: std::ops::Range<usize>,
}

const INSTRUCTION: &str = "A special magic value is hidden in the following text. Memorise it; \
you will be asked about it at the end.";

/// The question asked after the text.
fn question(n: &Needle) -> String {
    format!(
        "What is the special magic {} for {} mentioned in the provided text? Answer with the {} only.",
        n.kind.name(),
        n.key,
        n.kind.name()
    )
}

/// The end of a completion-form prompt, which the model continues with the value.
fn answer_prefix(n: &Needle) -> String {
    format!("The special magic {} for {} mentioned in the provided text is:", n.kind.name(), n.key)
}

/// The text around the context: what [`prompt`] puts before and after it (for the chat
/// form, inside the user turn).
fn wrap(n: &Needle, context: &str, form: Form) -> String {
    match form {
        Form::Chat => format!("{INSTRUCTION}\n\n{context}\n\n{}", question(n)),
        Form::Completion => format!("{INSTRUCTION}\n\n{context}\n\n{}\n{}", question(n), answer_prefix(n)),
    }
}

/// Builds the case for `length` prompt tokens (as `count` counts them; the prompt
/// wrapping is counted in `overhead`) and `depth` percent: sentences from `seed`'s
/// generator until the haystack reaches `length - overhead` tokens, and the needle
/// between the two sentences nearest to `depth` percent of the haystack's tokens.
/// `count` measures each sentence alone (with its leading space), so the total is near
/// the target, not exact.
pub fn build_case(
    length: usize,
    depth: u32,
    seed: u64,
    kind: NeedleKind,
    overhead: usize,
    count: &dyn Fn(&str) -> usize,
) -> Result<Case, NiahError> {
    if depth > 100 {
        return Err(NiahError::Depth(depth));
    }
    let mut rng = Rng::new(seed);
    let needle =
        Needle { kind, key: format!("{}-{}", rng.pick(KEY_ADJ), rng.pick(KEY_NOUN)), value: kind.value(&mut rng) };
    let needle_text = needle.sentence();
    let target = length.saturating_sub(overhead + count(&format!(" {needle_text}")));
    let mut sentences = Vec::new();
    let mut prefix = vec![0usize];
    while *prefix.last().expect("prefix") < target {
        let s = sentence(&mut rng);
        prefix.push(prefix.last().expect("prefix") + count(&format!(" {s}")));
        sentences.push(s);
    }
    let total = *prefix.last().expect("prefix");
    let want = total * depth as usize / 100;
    let at = (0..prefix.len()).min_by_key(|&i| prefix[i].abs_diff(want)).unwrap_or(0);
    let mut context = String::new();
    let mut needle_span = 0..0;
    for i in 0..=sentences.len() {
        if i == at {
            if !context.is_empty() {
                context.push(' ');
            }
            needle_span.start = context.len();
            context.push_str(&needle_text);
            needle_span.end = context.len();
        }
        if let Some(s) = sentences.get(i) {
            if !context.is_empty() {
                context.push(' ');
            }
            context.push_str(s);
        }
    }
    Ok(Case { length, depth, needle, context, needle_span })
}

/// The prompt text of `case` in `form`, and the byte range in it of the needle sentence
/// (empty at 0 when the context holds no needle).
pub fn prompt(engine: &Engine, case: &Case, form: Form) -> Result<(String, Range<usize>), EngineError> {
    let body = wrap(&case.needle, &case.context, form);
    let text = match form {
        Form::Completion => body,
        Form::Chat => engine.render_chat(&[ChatMessage::user(body)])?,
    };
    let marker = case.needle.sentence();
    let span = text.find(&marker).map_or(0..0, |i| i..i + marker.len());
    Ok((text, span))
}

/// Prompt tokens of `case`'s wrapping alone (instruction, question, template), so that
/// [`build_case`] can aim the whole prompt at its length.
pub fn overhead(engine: &Engine, form: Form, kind: NeedleKind) -> Result<usize, EngineError> {
    let needle = Needle { kind, key: "amber-falcon".into(), value: kind.value(&mut Rng::new(0)) };
    let empty = Case { length: 0, depth: 0, needle, context: String::new(), needle_span: 0..0 };
    let (text, _) = prompt(engine, &empty, form)?;
    Ok(engine.tokenizer().encode(&text, Bos::ModelDefault)?.len())
}

/// Whether `answer` recalls `value`: the value appears in it as a whole word (not inside
/// a longer number or word), case as given.
pub fn is_hit(answer: &str, value: &str) -> bool {
    let word = |c: char| c.is_alphanumeric() || c == '-';
    answer.match_indices(value).any(|(i, _)| {
        let before = answer[..i].chars().next_back();
        let after = answer[i + value.len()..].chars().next();
        !before.is_some_and(word) && !after.is_some_and(word)
    })
}

/// What one case gave under one cache configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CaseResult {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Tokens before the start of the needle (its first position).
    pub needle_start_token: usize,
    /// Tokens before the end of the needle (its last position + 1).
    pub needle_end_token: usize,
    /// The model's answer.
    pub answer: String,
    /// Whether it recalls the value ([`is_hit`]).
    pub hit: bool,
    /// Peak K/V bytes the sequence held.
    pub resident_bytes: usize,
    /// Decode speed, tokens per second after the first.
    pub decode_tok_s: f64,
}

/// Runs one case greedily on `engine` (whose cache layout is the configuration measured)
/// with at most `max_tokens` generated.
pub fn run_case(engine: &Engine, case: &Case, form: Form, max_tokens: usize) -> Result<CaseResult, EngineError> {
    let (text, needle) = prompt(engine, case, form)?;
    let tok = engine.tokenizer();
    let ids = tok.encode(&text, Bos::ModelDefault)?;
    let tokens_before = |at: usize| tok.encode(&text[..at], Bos::ModelDefault).map(|t| t.len());
    let (needle_start_token, needle_end_token) = (tokens_before(needle.start)?, tokens_before(needle.end)?);
    let stop = match form {
        Form::Completion => vec!["\n".to_owned()],
        Form::Chat => Vec::new(),
    };
    let req = GenerateRequest { max_tokens, sampling: SamplingParams::greedy(), stop, draft: None, grammar: None };
    let mut seq = engine.new_sequence();
    let g = generate(engine, &mut seq, &ids, &req, &mut |_| ControlFlow::Continue(()))?;
    Ok(CaseResult {
        prompt_tokens: ids.len(),
        needle_start_token,
        needle_end_token,
        hit: is_hit(&g.text, &case.needle.value),
        answer: g.text,
        resident_bytes: seq.cache().memory().resident_bytes,
        decode_tok_s: g.timings.decode_tok_s,
    })
}

impl CaseResult {
    /// Whether `bound` evicted the whole needle before the answer: it starts past the
    /// sinks and ends before the window that the first answer token sees.
    pub fn needle_evicted(&self, bound: KvBound) -> bool {
        self.needle_start_token >= bound.sinks as usize
            && self.needle_end_token + bound.window as usize <= self.prompt_tokens
    }
}

/// A cache configuration to measure: storage types and an optional sink + window bound.
///
/// Written `full` (f16 K and V, every position), or comma-separated `k=TYPE`, `v=TYPE`,
/// `sinks=N`, `window=N` (types are llama.cpp's names, each defaulting to f16; `sinks`
/// and `window` go together), and with a bound `positions=original|rebased`,
/// `full=0/9/19|auto[:N]` (layers left full), `recall=B` (evicted blocks recalled) and
/// `select=bound|exact` (how they are ranked), e.g.
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
}

impl CacheConfig {
    /// The full-attention f16 reference.
    pub fn full() -> CacheConfig {
        CacheConfig { name: "full".into(), k: KvDtype::F16, v: KvDtype::F16, bound: None, full: None }
    }

    /// `base` with this configuration's cache types and bound (the bound is left out
    /// when `auto` is to measure the full layers first).
    pub fn load_options(&self, base: LoadOptions) -> LoadOptions {
        let kv_bound = match self.full {
            Some(FullLayers::Auto(_)) => None,
            Some(FullLayers::Listed(keep_full)) => self.bound.map(|b| KvBound { keep_full, ..b }),
            None => self.bound,
        };
        LoadOptions { kv_dtype: self.k, kv_dtype_v: Some(self.v), kv_bound, ..base }
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

    /// Whitespace words: a stand-in tokenizer.
    fn words(s: &str) -> usize {
        s.split_whitespace().count()
    }

    #[test]
    fn haystacks_are_deterministic_for_a_seed() {
        let a = build_case(500, 50, 7, NeedleKind::Number, 30, &words).unwrap();
        let b = build_case(500, 50, 7, NeedleKind::Number, 30, &words).unwrap();
        assert_eq!(a, b);
        let c = build_case(500, 50, 8, NeedleKind::Number, 30, &words).unwrap();
        assert_ne!(a.context, c.context);
        assert_ne!(a.needle, c.needle);
        // Varied: many distinct sentences.
        let distinct: std::collections::HashSet<&str> = a.context.split(". ").collect();
        assert!(distinct.len() > 30, "{} distinct sentences", distinct.len());
    }

    #[test]
    fn needles_sit_at_the_requested_depth() {
        for depth in [0, 25, 50, 75, 100] {
            let c = build_case(2000, depth, 3, NeedleKind::Number, 0, &words).unwrap();
            assert_eq!(&c.context[c.needle_span.clone()], c.needle.sentence());
            assert_eq!(c.context.matches("special magic").count(), 1);
            let before = words(&c.context[..c.needle_span.start]) as f64;
            let total = words(&c.context) as f64;
            let at = 100.0 * before / total;
            assert!((at - f64::from(depth)).abs() < 2.0, "depth {depth}: needle at {at:.1}%");
        }
        assert!(build_case(2000, 0, 3, NeedleKind::Number, 0, &words).unwrap().context.starts_with("The special"));
        let last = build_case(2000, 100, 3, NeedleKind::Number, 0, &words).unwrap();
        assert!(last.context.ends_with(&last.needle.sentence()));
        assert_eq!(build_case(10, 101, 3, NeedleKind::Number, 0, &words).unwrap_err(), NiahError::Depth(101));
    }

    #[test]
    fn lengths_come_near_the_target() {
        for length in [300, 1000, 4000] {
            let c = build_case(length, 40, 11, NeedleKind::Number, 25, &words).unwrap();
            let got = words(&c.context) + 25;
            assert!(got >= length && got < length + 30, "target {length}, got {got}");
        }
    }

    #[test]
    fn needle_values_have_their_kind_s_shape() {
        let n = build_case(50, 0, 1, NeedleKind::Number, 0, &words).unwrap().needle;
        assert!(n.value.len() == 7 && n.value.bytes().all(|b| b.is_ascii_digit()), "{}", n.value);
        assert!(
            n.sentence().starts_with("The special magic number for ")
                && n.sentence().ends_with(&format!("is: {}.", n.value))
        );
        let u = build_case(50, 0, 1, NeedleKind::Uuid, 0, &words).unwrap().needle.value;
        assert_eq!(u.split('-').map(str::len).collect::<Vec<_>>(), [8, 4, 4, 4, 12], "{u}");
        let w = build_case(50, 0, 1, NeedleKind::Word, 0, &words).unwrap().needle.value;
        assert!(VALUE_WORDS.contains(&w.as_str()));
    }

    #[test]
    fn hits_need_the_whole_value() {
        assert!(is_hit(" 1234567", "1234567"));
        assert!(is_hit("The special magic number is 1234567.", "1234567"));
        assert!(!is_hit("12345678", "1234567"));
        assert!(!is_hit("123456", "1234567"));
        assert!(!is_hit("", "1234567"));
    }

    #[test]
    fn configurations_parse_and_refuse_nonsense() {
        assert_eq!("full".parse::<CacheConfig>().unwrap(), CacheConfig::full());
        let c: CacheConfig = "k=q4_0,v=q8_0".parse().unwrap();
        assert_eq!((c.k, c.v, c.bound), (KvDtype::Q4_0, KvDtype::Q8_0, None));
        let c: CacheConfig = "sinks=4, window=512".parse().unwrap();
        assert_eq!((c.k, c.v, c.bound), (KvDtype::F16, KvDtype::F16, Some(KvBound::new(4, 512))));
        let o = c.load_options(LoadOptions::default());
        assert_eq!((o.kv_bound, o.kv_dtype_v), (Some(KvBound::new(4, 512)), Some(KvDtype::F16)));
        for bad in ["sinks=4", "window=512", "k=q3_k", "sinks=4,window=0", "depth=3", "fast", "sinks=x,window=2"] {
            let err = bad.parse::<CacheConfig>().unwrap_err();
            assert!(matches!(err, NiahError::Config { .. }), "{bad}: {err}");
        }
    }
}
