//! Project automation: `cargo xtask setup | build | package | run | test | test-kernels |
//! test-systemd`.
mod bench;
mod fuzz;
mod kernels;
mod package;
mod setup;
mod stages;
mod systemd_guest;

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building needs (rust-src, bpf-linker) when missing. Idempotent.
    Setup {
        /// Also install the Debian packages the tests use, and cargo-deb.
        #[arg(long)]
        test_deps: bool,
    },
    /// Build the daemon (release) with its embedded kernel object.
    Build,
    /// Build the Debian package (target/debian/refusal-agent_*.deb) and check its contents and
    /// lintian's verdict.
    Package {
        /// Debian revision (the part after the version's `-`), for a newer package of the same
        /// version.
        #[arg(long)]
        revision: Option<String>,
    },
    /// Boot Debian guests with systemd as PID 1 (6.1 and 6.12 kernels), install the package and
    /// check the service: ready, counting, capabilities, restarts, journal, upgrade, removal
    /// (part of `test`).
    TestSystemd,
    /// Build and start the daemon as root; arguments go to `refusal-agent run`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Measure the connect-path overhead and the daemon's costs; writes BENCHMARKS.md.
    Bench {
        /// Interleaved rounds of every variant.
        #[arg(long, default_value_t = 7)]
        rounds: usize,
        /// Refused connects per round and variant.
        #[arg(long, default_value_t = 20_000)]
        refused: u64,
        /// Successful connect/accept/close rounds per round and variant.
        #[arg(long, default_value_t = 5_000)]
        success: u64,
        /// Quick pass (CI): one small round, exact counts checked, report to a temporary file.
        #[arg(long)]
        smoke: bool,
        /// Where to write the report.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Run only this part and print its section (BENCHMARKS.md is left alone).
        #[arg(long, value_enum)]
        only: Option<bench::Part>,
    },
    /// Run every cargo-fuzz target briefly from its committed corpus (part of `test`).
    FuzzSmoke,
    /// Boot Debian's 6.1 and 6.12 kernels under qemu and run the daemon in every attach mode
    /// with exact counts (part of `test`).
    TestKernels {
        /// Rewrite README's "What attaches where" tables from this run.
        #[arg(long)]
        bless: bool,
    },
    /// Set up everything and run every test (unit, kernel integration, end to end).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Cargo's target directory (`CARGO_TARGET_DIR` when set, relative to the workspace root).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), |d| root().join(d))
}

fn smoke_report() -> PathBuf {
    std::env::temp_dir().join("refusal-agent-BENCHMARKS.smoke.md")
}

pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Setup { test_deps } => {
            setup::toolchain()?;
            if test_deps {
                setup::test_packages()?;
                setup::cargo_deb()?;
            }
        }
        Cmd::Build => {
            setup::toolchain()?;
            run(cargo().args(["build", "--release", "-p", "agent-user"]))?;
        }
        Cmd::Package { revision } => {
            setup::toolchain()?;
            setup::test_packages()?;
            let deb = package::build(revision.as_deref())?;
            println!("{}", deb.display());
        }
        Cmd::TestSystemd => {
            setup::toolchain()?;
            setup::test_packages()?;
            systemd_guest::test()?;
        }
        Cmd::Run { args } => {
            setup::toolchain()?;
            run(cargo().args(["build", "--release", "-p", "agent-user"]))?;
            let bin = root().join("target/release/refusal-agent");
            let mut cmd = if testkit::is_root() {
                Command::new(&bin)
            } else {
                let mut c = Command::new("sudo");
                c.arg(&bin);
                c
            };
            run(cmd.arg("run").args(args))?;
        }
        Cmd::Bench {
            rounds,
            refused,
            success,
            smoke,
            out,
            only,
        } => {
            setup::toolchain()?;
            setup::test_packages()?;
            let opts = if smoke {
                bench::Opts {
                    rounds: 1,
                    refused: 2_000,
                    success: 500,
                    smoke,
                    out: out.unwrap_or_else(smoke_report),
                    only,
                }
            } else {
                bench::Opts {
                    rounds,
                    refused,
                    success,
                    smoke,
                    out: out.unwrap_or_else(|| root().join("BENCHMARKS.md")),
                    only,
                }
            };
            bench::run(&opts)?;
        }
        Cmd::FuzzSmoke => fuzz::smoke()?,
        Cmd::TestKernels { bless } => {
            setup::toolchain()?;
            setup::test_packages()?;
            kernels::matrix(&kernels::Opts { bless })?;
        }
        Cmd::Test { args } => {
            // Seconds, and it names the module that breaks the data flow before anything builds.
            stages::check(&root())?;
            setup::toolchain()?;
            setup::test_packages()?;
            if !testkit::is_root() {
                eprintln!("xtask: not root: kernel tests will skip (and fail when CI=true)");
            }
            // agent-ebpf builds for bpfel-unknown-none only (through agent-user's build.rs).
            run(cargo()
                .args(["test", "--workspace", "--exclude", "agent-ebpf"])
                .args(&args))?;
            if args.is_empty() {
                // The benchmark harness, briefly: every counting variant exact, and the report
                // regenerates.
                bench::run(&bench::Opts {
                    rounds: 1,
                    refused: 2_000,
                    success: 500,
                    smoke: true,
                    out: smoke_report(),
                    only: None,
                })?;
                fuzz::smoke()?;
                kernels::matrix(&kernels::Opts { bless: false })?;
                systemd_guest::test()?;
            }
        }
    }
    Ok(())
}
