//! Fetch models into the cache and print their paths.
//!
//! Usage: `cargo run -p lem-hub --release --example fetch -- [ALIAS|PATH ...]`
//! (no arguments: list the registry and its cache status).

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        match lem_hub::list() {
            Ok(models) => {
                for m in models {
                    println!(
                        "{:<14} {:>4} MB  {:<8} {}  ({})",
                        m.spec.alias,
                        m.spec.size_mb(),
                        if m.present { "present" } else { "absent" },
                        m.path.display(),
                        m.spec.description
                    );
                }
                return ExitCode::SUCCESS;
            }
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let mut ok = true;
    for arg in &args {
        match lem_hub::resolve(arg, lem_hub::Progress::Bar) {
            Ok(path) => println!("{arg}: {}", path.display()),
            Err(e) => {
                eprintln!("error: {arg}: {e}");
                ok = false;
            }
        }
    }
    if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
