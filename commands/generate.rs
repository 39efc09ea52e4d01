//! `wsgw generate-docs DIR` (hidden): writes shell completions (`DIR/completions/`) and one man
//! page per subcommand (`DIR/man/`) from the clap definitions. `scripts/gen-docs.sh` runs it on
//! the repository; the test `cli::generated_docs_are_current` fails when they are stale.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap_complete::Shell;

/// Write completions and man pages (for packaging; hidden from --help).
#[derive(clap::Args)]
pub struct Args {
    /// Directory that receives completions/ and man/.
    dir: PathBuf,
}

pub fn run(args: Args, mut cli: clap::Command) -> anyhow::Result<ExitCode> {
    let completions = args.dir.join("completions");
    let man = args.dir.join("man");
    for dir in [&completions, &man] {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cli, "wsgw", &completions)
            .with_context(|| format!("cannot write {shell} completions"))?;
    }
    clap_mangen::generate_to(cli, &man).context("cannot write man pages")?;
    Ok(ExitCode::SUCCESS)
}
