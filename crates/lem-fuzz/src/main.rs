//! `lem-fuzz TARGET [--minutes M | --inputs N] [--seed S]`: runs one target (or `all`)
//! and prints inputs, crashes and the slowest input; `lem-fuzz replay TARGET FILE`
//! replays a saved input. Exit status 1 when anything crashed.

use std::path::PathBuf;
use std::time::Duration;

use lem_fuzz::{Budget, Fixtures, TARGETS, fuzz, replay, target};

fn usage() -> ! {
    eprintln!("usage: lem-fuzz TARGET|all [--minutes M | --inputs N] [--seed S] [--crash-dir DIR]");
    eprintln!("       lem-fuzz replay TARGET FILE");
    eprintln!("targets:");
    for t in TARGETS {
        eprintln!("  {:<18} {}", t.name, t.about);
    }
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let fixtures = Fixtures::new(Fixtures::default_dir());
    if args.first().map(String::as_str) == Some("replay") {
        let (Some(t), Some(file)) = (args.get(1).and_then(|n| target(n)), args.get(2)) else { usage() };
        let input = std::fs::read(file).unwrap_or_else(|e| {
            eprintln!("{file}: {e}");
            std::process::exit(2)
        });
        match replay(t, &fixtures, &input) {
            Ok(()) => println!("{}: no crash", t.name),
            Err(m) => {
                println!("{}: crash: {m}", t.name);
                std::process::exit(1)
            }
        }
        return;
    }
    let Some(name) = args.first() else { usage() };
    let mut budget = Budget::Inputs(1000);
    let mut seed = 1u64;
    let mut crash_dir = PathBuf::from("target/fuzz-crashes");
    let mut it = args[1..].iter();
    while let Some(a) = it.next() {
        let v = it.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--minutes" => {
                budget = Budget::Time(Duration::from_secs_f64(v.parse::<f64>().unwrap_or_else(|_| usage()) * 60.0))
            }
            "--inputs" => budget = Budget::Inputs(v.parse().unwrap_or_else(|_| usage())),
            "--seed" => seed = v.parse().unwrap_or_else(|_| usage()),
            "--crash-dir" => crash_dir = PathBuf::from(v),
            _ => usage(),
        }
    }
    let chosen: Vec<_> =
        if name == "all" { TARGETS.iter().collect() } else { vec![target(name).unwrap_or_else(|| usage())] };
    let mut crashed = false;
    for t in chosen {
        match fuzz(t, &fixtures, seed, budget, &crash_dir) {
            Ok(r) => {
                println!("{r}");
                for c in &r.crashes {
                    println!("  crash: {} ({})", c.message, c.input.display());
                }
                if r.refused_seeds > 0 {
                    println!("  {} seeds were refused: the target's fixtures are broken", r.refused_seeds);
                }
                crashed |= !r.crashes.is_empty() || r.refused_seeds > 0;
            }
            Err(e) => {
                eprintln!("{}: {e}", t.name);
                crashed = true;
            }
        }
    }
    std::process::exit(i32::from(crashed))
}
