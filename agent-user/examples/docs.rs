//! Man pages and shell completions from the clap definitions, for the Debian package
//! (`cargo xtask package`): `cargo run -p agent-user --example docs -- DIR` writes
//! `DIR/man/refusal-agent.1` (one page per subcommand beside it) and
//! `DIR/completions/{refusal-agent.bash,_refusal-agent,refusal-agent.fish}`.
use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::CommandFactory as _;
use clap_complete::Shell;
use refusal_agent::cli::Cli;

fn main() -> Result<()> {
    let dir = PathBuf::from(std::env::args().nth(1).context("usage: docs DIR")?);
    let man = dir.join("man");
    let completions = dir.join("completions");
    for d in [&man, &completions] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    // One page per real subcommand: `help` needs none (nor `help run`, `help check`, …).
    clap_mangen::generate_to(Cli::command().disable_help_subcommand(true), &man).context("man pages")?;
    let mut cmd = Cli::command();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd, "refusal-agent", &completions)
            .with_context(|| format!("{shell} completions"))?;
    }
    Ok(())
}
