//! Needle in a haystack (RULER-style): recall of facts hidden in a long, varied text.
//!
//! A [`Case`] is a deterministic haystack (sentences from a seeded generator of templates
//! and word lists, written for lem: [`haystack`]) with needles of the form "The special
//! magic {kind} for {key} is: {value}.", the asked one placed at a requested depth, and a
//! question about it. The [`Task`] is RULER's: a single needle, several keys of which one
//! is asked (the others are distractors), or several values of one key, all asked for.
//! [`prompt`] wraps a case in the model's chat template ([`Form::Chat`]) or as a text to
//! continue ([`Form::Completion`], ending "The special magic number for {key} mentioned
//! in the provided text is:"); [`run_case`] decodes greedily and scores exactly
//! ([`Case::score`]). A [`CacheConfig`] (`full`, `k=q4_0,v=q4_0`, `sinks=4,window=512`,
//! ...) names the cache a run is measured under; `lem niah` runs a grid of lengths x
//! depths under several of them side by side.

mod config;
pub mod haystack;

use std::ops::{ControlFlow, Range};

use lem_kv::KvBound;
use lem_tokenizer::{Bos, ChatMessage};
use serde::Serialize;

pub use config::CacheConfig;
use haystack::{KEY_ADJ, KEY_NOUN, Rng, VALUE_WORDS, sentence};

use crate::sampling::SamplingParams;
use crate::{Engine, EngineError, GenerateRequest, generate};

/// Errors of the harness's inputs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NiahError {
    /// A cache configuration that does not parse.
    #[error(
        "bad cache configuration '{config}': {why} (expected 'full' or comma-separated k=TYPE, v=TYPE, sinks=N, window=N, positions=original|rebased, full=LAYERS|auto[:N], recall=B, select=bound|exact|sketch, ubatch=N)"
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
    /// A case with no needle or more than [`Task::MAX_NEEDLES`].
    #[error("{0} needles in a case: a case holds 1 to 10")]
    Needles(usize),
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

/// Which RULER task a case poses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// One needle; the question asks for its value.
    #[default]
    Single,
    /// The asked needle and `distractors` others of the same kind with other keys and
    /// values; the answer must give the asked value and none of the distractors'.
    MultiKey {
        /// Needles with other keys.
        distractors: usize,
    },
    /// `values` needles with the asked key, each with its own value; the question asks
    /// for all of them, and the score is the fraction given.
    MultiValue {
        /// Needles with the asked key.
        values: usize,
    },
}

impl Task {
    /// Most needles one case may hold (the word kind has 16 distinct values).
    pub const MAX_NEEDLES: usize = 10;

    /// Needles in one case.
    pub fn needles(self) -> usize {
        match self {
            Task::Single => 1,
            Task::MultiKey { distractors } => 1 + distractors,
            Task::MultiValue { values } => values,
        }
    }

    /// The name `lem niah --task` reads.
    pub fn name(self) -> &'static str {
        match self {
            Task::Single => "single",
            Task::MultiKey { .. } => "multi-key",
            Task::MultiValue { .. } => "multi-value",
        }
    }

    fn plural(self) -> bool {
        matches!(self, Task::MultiValue { .. })
    }
}

/// What one grid cell's case is made from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaseSpec {
    /// Target prompt length in tokens.
    pub length: usize,
    /// Depth of the asked needle (the first value of a multi-value case), in percent of
    /// the haystack.
    pub depth: u32,
    /// Seed of the haystack, the keys, the values and the other needles' places.
    pub seed: u64,
    /// What the values are.
    pub kind: NeedleKind,
    /// The task.
    pub task: Task,
}

/// One grid cell's input: a haystack of about `length` prompt tokens with the asked
/// needle at `depth` percent of it (and, for the multi-needle tasks, the other needles at
/// seeded places).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Case {
    /// Target prompt length in tokens.
    pub length: usize,
    /// Depth of the asked needle, in percent of the haystack (0: first, 100: last).
    pub depth: u32,
    /// The task.
    pub task: Task,
    /// Every needle; the first is the one asked about (its key is the question's).
    pub needles: Vec<Needle>,
    /// The haystack with the needles in it.
    pub context: String,
    /// Byte range of each needle's sentence in `context`, in the order of `needles`.
    pub spans: Vec<Range<usize>>,
}

impl Case {
    /// The needle the question names.
    pub fn asked(&self) -> &Needle {
        &self.needles[0]
    }

    /// Whether needle `i` carries a value the answer must give (its key is asked).
    fn is_target(&self, i: usize) -> bool {
        self.needles[i].key == self.asked().key
    }

    /// The values the answer must give.
    pub fn values(&self) -> Vec<&str> {
        (0..self.needles.len()).filter(|&i| self.is_target(i)).map(|i| self.needles[i].value.as_str()).collect()
    }

    /// How much of the answer's due `answer` gives, from 0 to 1: for a single needle and
    /// multi-key, 1 when it gives the asked value as a whole word ([`is_hit`]) and no
    /// distractor's value, else 0; for multi-value, the fraction of the values it gives.
    pub fn score(&self, answer: &str) -> f64 {
        let values = self.values();
        let found = values.iter().filter(|v| is_hit(answer, v)).count();
        let distracted = (0..self.needles.len()).any(|i| !self.is_target(i) && is_hit(answer, &self.needles[i].value));
        if distracted { 0.0 } else { found as f64 / values.len() as f64 }
    }
}

const INSTRUCTION: &str = "A special magic value is hidden in the following text. Memorise it; \
you will be asked about it at the end.";
const INSTRUCTION_MANY: &str = "Special magic values are hidden in the following text. Memorise them; \
you will be asked about them at the end.";

/// The question asked after the text.
fn question(n: &Needle, task: Task) -> String {
    let kind = n.kind.name();
    if task.plural() {
        format!(
            "What are all the special magic {kind}s for {} mentioned in the provided text? Answer with the {kind}s only.",
            n.key
        )
    } else {
        format!(
            "What is the special magic {kind} for {} mentioned in the provided text? Answer with the {kind} only.",
            n.key
        )
    }
}

/// The end of a completion-form prompt, which the model continues with the value.
fn answer_prefix(n: &Needle, task: Task) -> String {
    if task.plural() {
        format!("The special magic {}s for {} mentioned in the provided text are:", n.kind.name(), n.key)
    } else {
        format!("The special magic {} for {} mentioned in the provided text is:", n.kind.name(), n.key)
    }
}

/// The text around the context: what [`prompt`] puts before and after it (for the chat
/// form, inside the user turn).
fn wrap(n: &Needle, task: Task, context: &str, form: Form) -> String {
    let instruction = if task == Task::Single { INSTRUCTION } else { INSTRUCTION_MANY };
    let q = question(n, task);
    match form {
        Form::Chat => format!("{instruction}\n\n{context}\n\n{q}"),
        Form::Completion => format!("{instruction}\n\n{context}\n\n{q}\n{}", answer_prefix(n, task)),
    }
}

/// A key: two words joined by a hyphen.
fn key(rng: &mut Rng) -> String {
    format!("{}-{}", rng.pick(KEY_ADJ), rng.pick(KEY_NOUN))
}

/// The needles of `spec`: the asked one first (drawn first, so a single-needle case is
/// what it always was), then the others, with keys and values distinct where the task
/// needs them distinct.
fn needles(spec: &CaseSpec, rng: &mut Rng) -> Vec<Needle> {
    let kind = spec.kind;
    let mut out = vec![Needle { kind, key: key(rng), value: kind.value(rng) }];
    let asked = out[0].key.clone();
    while out.len() < spec.task.needles() {
        let key = match spec.task {
            Task::MultiValue { .. } => asked.clone(),
            _ => key(rng),
        };
        let value = kind.value(rng);
        // Values are always distinct; keys are, unless they are all the asked one.
        if out.iter().any(|n| n.value == value || (key != asked || !spec.task.plural()) && n.key == key) {
            continue;
        }
        out.push(Needle { kind, key, value });
    }
    out
}

/// Builds the case of `spec` (prompt tokens as `count` counts them; the prompt wrapping
/// is counted in `overhead`): sentences from the seed's generator until the haystack
/// reaches `length - overhead` tokens, the asked needle between the two sentences
/// nearest to `depth` percent of the haystack's tokens, and any other needle between two
/// sentences the generator picks. `count` measures each sentence alone (with its leading
/// space), so the total is near the target, not exact.
pub fn build_case(spec: &CaseSpec, overhead: usize, count: &dyn Fn(&str) -> usize) -> Result<Case, NiahError> {
    if spec.depth > 100 {
        return Err(NiahError::Depth(spec.depth));
    }
    let n = spec.task.needles();
    if n == 0 || n > Task::MAX_NEEDLES {
        return Err(NiahError::Needles(n));
    }
    let mut rng = Rng::new(spec.seed);
    let needles = needles(spec, &mut rng);
    let texts: Vec<String> = needles.iter().map(Needle::sentence).collect();
    let needle_tokens: usize = texts.iter().map(|t| count(&format!(" {t}"))).sum();
    let target = spec.length.saturating_sub(overhead + needle_tokens);
    let mut sentences = Vec::new();
    let mut prefix = vec![0usize];
    while *prefix.last().expect("prefix") < target {
        let s = sentence(&mut rng);
        prefix.push(prefix.last().expect("prefix") + count(&format!(" {s}")));
        sentences.push(s);
    }
    let total = *prefix.last().expect("prefix");
    let want = total * spec.depth as usize / 100;
    let at = (0..prefix.len()).min_by_key(|&i| prefix[i].abs_diff(want)).unwrap_or(0);
    // Where each needle goes: before sentence `slot` (`sentences.len()`: at the end).
    let mut slots = vec![at];
    slots.extend((1..n).map(|_| rng.below(sentences.len() + 1)));
    let mut context = String::new();
    let mut spans = vec![0..0; n];
    let push = |context: &mut String, s: &str| {
        if !context.is_empty() {
            context.push(' ');
        }
        let start = context.len();
        context.push_str(s);
        start..context.len()
    };
    for i in 0..=sentences.len() {
        for j in (0..n).filter(|&j| slots[j] == i) {
            spans[j] = push(&mut context, &texts[j]);
        }
        if let Some(s) = sentences.get(i) {
            push(&mut context, s);
        }
    }
    Ok(Case { length: spec.length, depth: spec.depth, task: spec.task, needles, context, spans })
}

/// The prompt text of `case` in `form`, and the byte ranges in it of the sentences of the
/// needles whose values are asked for (none when the context holds no needle).
pub fn prompt(engine: &Engine, case: &Case, form: Form) -> Result<(String, Vec<Range<usize>>), EngineError> {
    let body = wrap(case.asked(), case.task, &case.context, form);
    let text = match form {
        Form::Completion => body,
        Form::Chat => engine.render_chat(&[ChatMessage::user(body)])?,
    };
    let spans = match (case.context.is_empty(), text.find(&case.context)) {
        (false, Some(at)) => (0..case.needles.len())
            .filter(|&i| case.is_target(i))
            .map(|i| case.spans[i].start + at..case.spans[i].end + at)
            .collect(),
        _ => Vec::new(),
    };
    Ok((text, spans))
}

/// Prompt tokens of a case's wrapping alone (instruction, question, template), so that
/// [`build_case`] can aim the whole prompt at its length.
pub fn overhead(engine: &Engine, form: Form, kind: NeedleKind, task: Task) -> Result<usize, EngineError> {
    let needle = Needle { kind, key: "amber-falcon".into(), value: kind.value(&mut Rng::new(0)) };
    let empty = Case {
        length: 0,
        depth: 0,
        task,
        needles: vec![needle],
        context: String::new(),
        spans: std::iter::once(0..0).collect(),
    };
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
    /// Tokens before the start of the earliest asked needle (its first position).
    pub needle_start_token: usize,
    /// Tokens before the end of the latest asked needle (its last position + 1).
    pub needle_end_token: usize,
    /// The model's answer.
    pub answer: String,
    /// How much of the due answer it gives ([`Case::score`]).
    pub score: f64,
    /// Whether it gives all of it.
    pub hit: bool,
    /// Peak K/V bytes the sequence held.
    pub resident_bytes: usize,
    /// Decode speed, tokens per second after the first.
    pub decode_tok_s: f64,
}

/// The most answer tokens `task` needs by default: 32, and 12 more per value past the
/// first of a multi-value case (a 7-digit number is up to 7 tokens and a separator).
pub fn default_max_tokens(task: Task) -> usize {
    32 + 12 * task.needles().saturating_sub(1) * usize::from(task.plural())
}

/// Runs one case greedily on `engine` (whose cache layout is the configuration measured)
/// with at most `max_tokens` generated.
pub fn run_case(engine: &Engine, case: &Case, form: Form, max_tokens: usize) -> Result<CaseResult, EngineError> {
    let (text, spans) = prompt(engine, case, form)?;
    let tok = engine.tokenizer();
    let ids = tok.encode(&text, Bos::ModelDefault)?;
    let tokens_before = |at: usize| tok.encode(&text[..at], Bos::ModelDefault).map(|t| t.len());
    let first = spans.iter().map(|s| s.start).min().unwrap_or(0);
    let last = spans.iter().map(|s| s.end).max().unwrap_or(0);
    let (needle_start_token, needle_end_token) = (tokens_before(first)?, tokens_before(last)?);
    // A completion ends at the end of its line; a list of values may take several lines.
    let stop = match form {
        Form::Completion if case.task.plural() => vec!["\n\n".to_owned()],
        Form::Completion => vec!["\n".to_owned()],
        Form::Chat => Vec::new(),
    };
    let req = GenerateRequest { max_tokens, sampling: SamplingParams::greedy(), stop, draft: None, grammar: None };
    let mut seq = engine.new_sequence();
    let g = generate(engine, &mut seq, &ids, &req, &mut |_| ControlFlow::Continue(()))?;
    let score = case.score(&g.text);
    Ok(CaseResult {
        prompt_tokens: ids.len(),
        needle_start_token,
        needle_end_token,
        score,
        hit: score == 1.0,
        answer: g.text,
        resident_bytes: seq.cache().memory().resident_bytes,
        decode_tok_s: g.timings.decode_tok_s,
    })
}

impl CaseResult {
    /// Whether `bound` evicted every asked needle before the answer: the earliest starts
    /// past the sinks and the latest ends before the window that the first answer token
    /// sees.
    pub fn needle_evicted(&self, bound: KvBound) -> bool {
        self.needle_start_token >= bound.sinks as usize
            && self.needle_end_token + bound.window as usize <= self.prompt_tokens
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whitespace words: a stand-in tokenizer.
    fn words(s: &str) -> usize {
        s.split_whitespace().count()
    }

    fn case(length: usize, depth: u32, seed: u64, kind: NeedleKind, task: Task, overhead: usize) -> Case {
        build_case(&CaseSpec { length, depth, seed, kind, task }, overhead, &words).unwrap()
    }

    fn single(length: usize, depth: u32, seed: u64, overhead: usize) -> Case {
        case(length, depth, seed, NeedleKind::Number, Task::Single, overhead)
    }

    #[test]
    fn haystacks_are_deterministic_for_a_seed() {
        let a = single(500, 50, 7, 30);
        assert_eq!(a, single(500, 50, 7, 30));
        let c = single(500, 50, 8, 30);
        assert_ne!(a.context, c.context);
        assert_ne!(a.needles, c.needles);
        // Varied: many distinct sentences.
        let distinct: std::collections::HashSet<&str> = a.context.split(". ").collect();
        assert!(distinct.len() > 30, "{} distinct sentences", distinct.len());
    }

    #[test]
    fn needles_sit_at_the_requested_depth() {
        for depth in [0, 25, 50, 75, 100] {
            let c = single(2000, depth, 3, 0);
            assert_eq!(&c.context[c.spans[0].clone()], c.asked().sentence());
            assert_eq!(c.context.matches("special magic").count(), 1);
            let before = words(&c.context[..c.spans[0].start]) as f64;
            let total = words(&c.context) as f64;
            let at = 100.0 * before / total;
            assert!((at - f64::from(depth)).abs() < 2.0, "depth {depth}: needle at {at:.1}%");
        }
        assert!(single(2000, 0, 3, 0).context.starts_with("The special"));
        let last = single(2000, 100, 3, 0);
        assert!(last.context.ends_with(&last.asked().sentence()));
        let spec = CaseSpec { length: 10, depth: 101, seed: 3, kind: NeedleKind::Number, task: Task::Single };
        assert_eq!(build_case(&spec, 0, &words).unwrap_err(), NiahError::Depth(101));
        for task in [Task::MultiValue { values: 0 }, Task::MultiKey { distractors: 10 }] {
            let spec = CaseSpec { depth: 50, task, ..spec };
            assert!(matches!(build_case(&spec, 0, &words), Err(NiahError::Needles(_))), "{task:?}");
        }
    }

    #[test]
    fn lengths_come_near_the_target() {
        for task in [Task::Single, Task::MultiKey { distractors: 3 }, Task::MultiValue { values: 4 }] {
            for length in [300, 1000, 4000] {
                let c = case(length, 40, 11, NeedleKind::Number, task, 25);
                let got = words(&c.context) + 25;
                assert!(got >= length && got < length + 30, "{task:?}: target {length}, got {got}");
            }
        }
    }

    #[test]
    fn multi_key_cases_hide_distractors_with_other_keys_and_values() {
        for seed in 0..20 {
            let c = case(1500, 30, seed, NeedleKind::Word, Task::MultiKey { distractors: 3 }, 0);
            assert_eq!(c.needles.len(), 4);
            assert_eq!(c.context.matches("special magic word for").count(), 4);
            for (n, span) in c.needles.iter().zip(&c.spans) {
                assert_eq!(&c.context[span.clone()], n.sentence());
            }
            let keys: std::collections::HashSet<&str> = c.needles.iter().map(|n| n.key.as_str()).collect();
            let values: std::collections::HashSet<&str> = c.needles.iter().map(|n| n.value.as_str()).collect();
            assert_eq!((keys.len(), values.len()), (4, 4), "{:?}", c.needles);
            assert_eq!(c.values(), [c.asked().value.as_str()]);
            // The asked needle stays where the depth puts it.
            let at = 100.0 * words(&c.context[..c.spans[0].start]) as f64 / words(&c.context) as f64;
            assert!((at - 30.0).abs() < 3.0, "asked needle at {at:.1}%");
            // Scored on the asked value alone, and wrong when a distractor's is given too.
            let (asked, other) = (&c.asked().value, &c.needles[1].value);
            assert_eq!(c.score(&format!(" {asked}.")), 1.0);
            assert_eq!(c.score(&format!(" {other}.")), 0.0);
            assert_eq!(c.score(&format!(" {asked} or {other}")), 0.0);
        }
        // The same seed as a single case gives the same asked needle and haystack words.
        let s = single(1500, 30, 5, 0);
        let m = case(1500, 30, 5, NeedleKind::Number, Task::MultiKey { distractors: 2 }, 0);
        assert_eq!(s.asked(), m.asked());
    }

    #[test]
    fn multi_value_cases_ask_for_every_value_of_one_key() {
        let c = case(2000, 60, 9, NeedleKind::Number, Task::MultiValue { values: 4 }, 0);
        assert_eq!(c.needles.len(), 4);
        assert!(c.needles.iter().all(|n| n.key == c.asked().key));
        let values = c.values();
        assert_eq!(values.len(), 4);
        assert_eq!(values.iter().collect::<std::collections::HashSet<_>>().len(), 4);
        assert_eq!(c.score(&values.join(", ")), 1.0);
        assert_eq!(c.score(&format!("{} and {}", values[2], values[0])), 0.5);
        assert_eq!(c.score("none"), 0.0);
        assert!(question(c.asked(), c.task).contains("all the special magic numbers"));
        assert!(answer_prefix(c.asked(), c.task).ends_with("are:"));
        assert_eq!(default_max_tokens(c.task), 32 + 36);
        assert_eq!(default_max_tokens(Task::MultiKey { distractors: 3 }), 32);
    }

    #[test]
    fn needle_values_have_their_kind_s_shape() {
        let n = single(50, 0, 1, 0).needles.remove(0);
        assert!(n.value.len() == 7 && n.value.bytes().all(|b| b.is_ascii_digit()), "{}", n.value);
        assert!(
            n.sentence().starts_with("The special magic number for ")
                && n.sentence().ends_with(&format!("is: {}.", n.value))
        );
        let u = case(50, 0, 1, NeedleKind::Uuid, Task::Single, 0).asked().value.clone();
        assert_eq!(u.split('-').map(str::len).collect::<Vec<_>>(), [8, 4, 4, 4, 12], "{u}");
        let w = case(50, 0, 1, NeedleKind::Word, Task::Single, 0).asked().value.clone();
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
}
