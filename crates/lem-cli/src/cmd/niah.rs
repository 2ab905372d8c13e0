//! `lem niah`: needle-in-a-haystack recall under several cache configurations side by
//! side (the harness is `lem_engine::niah`; docs/bounded-memory.md).

use anyhow::Context;
use clap::ValueEnum;
use lem_engine::niah::{self, CacheConfig, CaseSpec, Form, NeedleKind, Task};
use lem_engine::{Engine, EngineConfig};
use lem_kv::KvBound;
use lem_tokenizer::Bos;
use serde::Serialize;

use crate::common::{ModelArgs, print_json};

/// How the model is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FormArg {
    /// A user turn through the model's chat template.
    Chat,
    /// Plain text ending "The special magic number for X mentioned in the provided text is:".
    Completion,
}

/// What the needle's value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum KindArg {
    /// A 7-digit number.
    Number,
    /// A word.
    Word,
    /// A UUID.
    Uuid,
}

/// Which RULER task each case poses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TaskArg {
    /// One needle, asked for.
    Single,
    /// `--needles` needles with different keys; one is asked for, the others distract.
    MultiKey,
    /// `--needles` needles with one key; all their values are asked for.
    MultiValue,
}

/// Arguments of `lem niah`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt lengths in tokens (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1000,2000,4000")]
    lengths: Vec<usize>,
    /// Needle depths in percent of the haystack (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "0,25,50,75,100")]
    depths: Vec<u32>,
    /// A cache configuration to measure (repeatable): `full`, or comma-separated
    /// k=TYPE, v=TYPE, sinks=N, window=N, e.g. "k=q4_0,v=q4_0" or "sinks=4,window=512".
    /// Full attention always runs, as the reference.
    #[arg(long = "config", value_name = "CONFIG")]
    configs: Vec<CacheConfig>,
    /// Chat template (instruction models) or completion form.
    #[arg(long, value_enum, default_value_t = FormArg::Chat)]
    form: FormArg,
    /// What the needle's value is.
    #[arg(long, value_enum, default_value_t = KindArg::Number)]
    kind: KindArg,
    /// The task: a single needle, multi-key (one asked among distractors) or
    /// multi-value (every value of one key asked for).
    #[arg(long, value_enum, default_value_t = TaskArg::Single)]
    task: TaskArg,
    /// Needles per case for the multi-key and multi-value tasks (2 to 10).
    #[arg(long, default_value_t = 4)]
    needles: usize,
    /// Haystacks per cell (each from its own seed).
    #[arg(long, default_value_t = 1)]
    samples: usize,
    /// Seed of the first haystack.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Most tokens of each answer (chat answers often repeat the question first); by
    /// default 32, and 12 more per value past the first for multi-value.
    #[arg(long)]
    max_tokens: Option<usize>,
    /// Sinks of the negative control (a sink window with the needle outside it).
    #[arg(long, default_value_t = 4)]
    control_sinks: u32,
    /// Window of the negative control; only cells whose needle lies outside the sinks and
    /// the window are counted for it.
    #[arg(long, default_value_t = 64)]
    control_window: u32,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    json: bool,
    /// Also write a heat map PNG: one grid per configuration (rows lengths, columns
    /// depths, colour the accuracy), with its resident K/V against full attention's.
    #[arg(long, value_name = "FILE")]
    png: Option<std::path::PathBuf>,
}

/// One grid cell of one configuration.
#[derive(Debug, Serialize)]
struct Cell {
    length: usize,
    depth: u32,
    /// Cases counted (the control skips those whose needle is inside its window).
    samples: usize,
    /// Cases whose answer gave everything asked.
    hits: usize,
    /// Mean score over the cases counted (the fraction of the asked values each answer
    /// gave, none of a distractor's), or `None` when no case counted.
    accuracy: Option<f64>,
    prompt_tokens: usize,
    resident_bytes: usize,
    decode_tok_s: f64,
    /// The asked values (comma-separated for multi-value) and the model's answers, case
    /// by case.
    values: Vec<String>,
    answers: Vec<String>,
}

/// One configuration's results.
#[derive(Debug, Serialize)]
struct ConfigReport {
    config: CacheConfig,
    sinks: Option<u32>,
    window: Option<u32>,
    /// Whether this is the negative control.
    control: bool,
    cells: Vec<Cell>,
    /// Mean accuracy per length, over the cells that counted.
    per_length: Vec<(usize, Option<f64>)>,
    mean_accuracy: Option<f64>,
    /// Largest resident K/V over the run.
    resident_bytes: usize,
    /// Mean decode speed.
    decode_tok_s: f64,
}

fn mean(xs: impl Iterator<Item = f64>) -> Option<f64> {
    let (n, s) = xs.fold((0usize, 0.0), |(n, s), x| (n + 1, s + x));
    (n > 0).then(|| s / n as f64)
}

/// Runs `lem niah`.
pub fn run(a: Args) -> anyhow::Result<()> {
    if a.lengths.is_empty() || a.depths.is_empty() || a.samples == 0 {
        anyhow::bail!("--lengths, --depths and --samples need at least one value each");
    }
    if let Some(d) = a.depths.iter().find(|&&d| d > 100) {
        anyhow::bail!("--depths: {d} is not a percentage (0 to 100)");
    }
    let form = match a.form {
        FormArg::Chat => Form::Chat,
        FormArg::Completion => Form::Completion,
    };
    let kind = match a.kind {
        KindArg::Number => NeedleKind::Number,
        KindArg::Word => NeedleKind::Word,
        KindArg::Uuid => NeedleKind::Uuid,
    };
    let task = match a.task {
        TaskArg::Single => Task::Single,
        TaskArg::MultiKey => Task::MultiKey { distractors: a.needles.saturating_sub(1) },
        TaskArg::MultiValue => Task::MultiValue { values: a.needles },
    };
    if task != Task::Single && !(2..=Task::MAX_NEEDLES).contains(&a.needles) {
        anyhow::bail!("--needles: {} is not 2 to {}", a.needles, Task::MAX_NEEDLES);
    }
    let max_tokens = a.max_tokens.unwrap_or_else(|| niah::default_max_tokens(task));
    let mut configs = vec![CacheConfig::full()];
    configs.extend(a.configs.iter().filter(|c| c.name != "full").cloned());
    let control = CacheConfig {
        name: format!("control: sinks={},window={}", a.control_sinks, a.control_window),
        bound: Some(KvBound::new(a.control_sinks, a.control_window.max(1))),
        ..CacheConfig::full()
    };
    let path = a.model.path()?;
    let ecfg = EngineConfig { threads: a.model.threads, ctx_size: a.model.ctx_size };
    let base = a.model.load.options();
    let load = |c: &CacheConfig| -> anyhow::Result<Engine> {
        let (engine, choice) = c.load(&path, ecfg, base).with_context(|| format!("loading {}", path.display()))?;
        if let Some(choice) = choice {
            let reach: Vec<String> = choice
                .reach
                .iter()
                .map(|r| format!("{}:{:.2}/{:.2}/{:.3}", r.layer, r.max_head, r.mean_head, r.needle))
                .collect();
            eprintln!(
                "[{}: auto keeps layers {:?} full, measured on {} calibration tokens; far attention mass per layer (max/mean head): {}]",
                c.name,
                choice.full_layers,
                choice.calibration_tokens,
                reach.join(" ")
            );
        }
        Ok(engine)
    };
    // The cases, built once with the reference engine's tokenizer.
    let reference = load(&configs[0])?;
    let overhead = niah::overhead(&reference, form, kind, task)?;
    let tok = reference.tokenizer().clone();
    let count = move |s: &str| tok.encode(s, Bos::Omit).map_or(0, |ids| ids.len());
    let mut cases = Vec::new();
    for &length in &a.lengths {
        if length + max_tokens > reference.ctx_size() {
            anyhow::bail!(
                "length {length} plus {max_tokens} answer tokens exceeds the context of {} (--ctx-size)",
                reference.ctx_size()
            );
        }
        for &depth in &a.depths {
            for s in 0..a.samples {
                let seed = a.seed + (length as u64) * 1_000_003 + u64::from(depth) * 1009 + s as u64;
                let spec = CaseSpec { length, depth, seed, kind, task };
                cases.push(niah::build_case(&spec, overhead, &count)?);
            }
        }
    }
    drop(reference);

    let mut reports = Vec::new();
    for (c, is_control) in configs.iter().map(|c| (c, false)).chain(std::iter::once((&control, true))) {
        let engine = load(c)?;
        if !a.json {
            eprintln!("[{}: {} cases]", c.name, cases.len());
        }
        let mut cells = Vec::new();
        for &length in &a.lengths {
            for &depth in &a.depths {
                let mut cell = Cell {
                    length,
                    depth,
                    samples: 0,
                    hits: 0,
                    accuracy: None,
                    prompt_tokens: 0,
                    resident_bytes: 0,
                    decode_tok_s: 0.0,
                    values: Vec::new(),
                    answers: Vec::new(),
                };
                let (mut speeds, mut score) = (Vec::new(), 0.0);
                for case in cases.iter().filter(|k| k.length == length && k.depth == depth) {
                    let r = niah::run_case(&engine, case, form, max_tokens)?;
                    cell.prompt_tokens = cell.prompt_tokens.max(r.prompt_tokens);
                    cell.resident_bytes = cell.resident_bytes.max(r.resident_bytes);
                    if is_control {
                        // Counted only where the bound evicted the needle.
                        if !r.needle_evicted(KvBound::new(a.control_sinks, a.control_window)) {
                            continue;
                        }
                    }
                    cell.samples += 1;
                    cell.hits += usize::from(r.hit);
                    score += r.score;
                    speeds.push(r.decode_tok_s);
                    cell.values.push(case.values().join(","));
                    cell.answers.push(r.answer);
                }
                cell.accuracy = (cell.samples > 0).then(|| score / cell.samples as f64);
                cell.decode_tok_s = mean(speeds.into_iter()).unwrap_or(0.0);
                cells.push(cell);
            }
        }
        let per_length = a
            .lengths
            .iter()
            .map(|&l| (l, mean(cells.iter().filter(|c| c.length == l).filter_map(|c| c.accuracy))))
            .collect();
        reports.push(ConfigReport {
            sinks: c.bound.map(|b| b.sinks),
            window: c.bound.map(|b| b.window),
            control: is_control,
            per_length,
            mean_accuracy: mean(cells.iter().filter_map(|c| c.accuracy)),
            resident_bytes: cells.iter().map(|c| c.resident_bytes).max().unwrap_or(0),
            decode_tok_s: mean(cells.iter().filter(|c| c.samples > 0).map(|c| c.decode_tok_s)).unwrap_or(0.0),
            config: c.clone(),
            cells,
        });
    }
    if let Some(png) = &a.png {
        write_heatmap(&a, &reports, png)?;
    }
    if a.json {
        return print_json(&serde_json::json!({
            "model": path.file_name().map(|f| f.to_string_lossy()),
            "form": form,
            "kind": kind,
            "task": task,
            "lengths": a.lengths,
            "depths": a.depths,
            "samples": a.samples,
            "seed": a.seed,
            "configs": reports,
        }));
    }
    print_tables(&a, &reports);
    Ok(())
}

/// `--png`: one heat map per configuration, titled with its mean and its resident K/V
/// as a fraction of full attention's.
fn write_heatmap(a: &Args, reports: &[ConfigReport], path: &std::path::Path) -> anyhow::Result<()> {
    let full = reports.first().map_or(0, |r| r.resident_bytes).max(1) as f64;
    let panels: Vec<lem_inspect::HeatPanel> = reports
        .iter()
        .map(|r| lem_inspect::HeatPanel {
            title: format!(
                "{}: mean {}, resident K/V {:.2} of full",
                r.config.name,
                r.mean_accuracy.map_or_else(|| "-".to_owned(), |m| format!("{m:.2}")),
                r.resident_bytes as f64 / full
            ),
            row_name: "prompt tokens".into(),
            rows: a.lengths.iter().map(usize::to_string).collect(),
            col_name: "needle depth (%)".into(),
            cols: a.depths.iter().map(|d| d.to_string()).collect(),
            values: a
                .lengths
                .iter()
                .map(|&l| r.cells.iter().filter(|c| c.length == l).map(|c| c.accuracy).collect())
                .collect(),
        })
        .collect();
    lem_inspect::plot_heatmaps(&panels, path).with_context(|| format!("writing {}", path.display()))
}

/// The per-cell accuracy table and the per-configuration summary.
fn print_tables(a: &Args, reports: &[ConfigReport]) {
    let fmt = |x: Option<f64>| x.map_or_else(|| "   -".to_owned(), |x| format!("{x:4.2}"));
    let mut head = format!("{:<34} {:>6}", "config", "length");
    for d in &a.depths {
        head.push_str(&format!(" {:>5}", format!("d{d}")));
    }
    println!("{head}  {:>5}", "mean");
    for r in reports {
        for &(l, m) in &r.per_length {
            let mut line = format!("{:<34} {l:>6}", r.config.name);
            for c in r.cells.iter().filter(|c| c.length == l) {
                line.push_str(&format!(" {:>5}", fmt(c.accuracy)));
            }
            println!("{line}  {:>5}", fmt(m));
        }
    }
    println!();
    println!("{:<34} {:>8} {:>14} {:>12}", "config", "accuracy", "resident KiB", "decode tok/s");
    for r in reports {
        println!(
            "{:<34} {:>8} {:>14.0} {:>12.1}",
            r.config.name,
            fmt(r.mean_accuracy),
            r.resident_bytes as f64 / 1024.0,
            r.decode_tok_s
        );
    }
}
