//! The fuzz smoke of `cargo xtask test`: every cargo-fuzz target in `fuzz/` runs briefly from its
//! committed corpus (`fuzz/corpus/<target>/`), and any crash, panic, leak, timeout or
//! out-of-memory fails. A regression corpus check as much as a search: a crash input found later
//! goes into the corpus, so the smoke replays it on every run.
//!
//! cargo-fuzz needs a nightly toolchain (sanitizer flags); it is installed into `.tools/` when
//! missing. Targets build in the dev profile with AddressSanitizer: quicker to build than release
//! (the build dominates a short run), and overflow checks on make arithmetic overflow a crash.
//! Without nightly the smoke fails under CI=true and skips loudly otherwise.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::{root, run};

/// Every target in fuzz/Cargo.toml.
pub const TARGETS: &[&str] = &[
    "config_toml",
    "cgroup_workload",
    "runtime_files",
    "btf_parse",
    "sock_diag_parse",
    "web_config",
    "tracefs_format",
    "kernel_log",
];
/// Fuzzing time per target, in seconds.
const SECONDS: u32 = 10;
/// Targets fuzzing at once (one core each).
const PARALLEL: usize = 2;
/// Environment the outer `cargo xtask` leaves behind that would steer the nightly build wrong.
const CARGO_ENV: &[&str] = &[
    "RUSTUP_TOOLCHAIN",
    "CARGO",
    "RUSTC",
    "RUSTDOC",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET_DIR",
];

pub fn smoke() -> Result<()> {
    let started = Instant::now();
    if !nightly_available() {
        if testkit::ci() {
            bail!(
                "fuzz smoke: no nightly toolchain (`rustup toolchain install nightly`) and CI=true: refusing to skip"
            );
        }
        eprintln!(
            "\n!!! SKIPPED fuzz smoke: cargo-fuzz needs a nightly toolchain (`rustup toolchain install nightly`) !!!\n"
        );
        return Ok(());
    }
    let tools_bin = ensure_cargo_fuzz()?;
    let root = root();
    eprintln!("xtask: building the fuzz targets (nightly, dev profile, AddressSanitizer)");
    run(cargo_fuzz(&tools_bin, &root).args(["build", "--dev"]))?;

    let logs = root.join("target/fuzz-smoke");
    let mut results = Vec::new();
    for batch in TARGETS.chunks(PARALLEL) {
        let mut running: Vec<(&str, Child, PathBuf)> = Vec::new();
        for &target in batch {
            // libFuzzer writes what it finds into its first corpus directory: a scratch one,
            // so the committed corpus only changes on purpose.
            let scratch = logs.join("corpus").join(target);
            let _ = std::fs::remove_dir_all(&scratch);
            std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
            let log = logs.join(format!("{target}.log"));
            let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
            let child = cargo_fuzz(&tools_bin, &root)
                .args(["run", "--dev", target])
                .arg(&scratch)
                .arg(root.join("fuzz/corpus").join(target))
                .arg("--")
                .arg(format!("-max_total_time={SECONDS}"))
                .args(["-timeout=10", "-rss_limit_mb=2048", "-print_final_stats=1"])
                .stdout(out.try_clone()?)
                .stderr(out)
                .spawn()
                .with_context(|| format!("starting the {target} fuzzer"))?;
            running.push((target, child, log));
        }
        for (target, mut child, log) in running {
            let status = child.wait()?;
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            results.push(Outcome::read(target, status.success(), &text, &log));
        }
    }

    eprintln!("\nfuzz smoke ({SECONDS} s per target, {PARALLEL} at once):");
    eprintln!(
        "  {:<18} {:>10} {:>9} {:>6}  result",
        "target", "execs", "execs/s", "new"
    );
    for r in &results {
        eprintln!(
            "  {:<18} {:>10} {:>9} {:>6}  {}",
            r.target,
            r.execs.map_or("?".into(), |n| n.to_string()),
            r.per_sec.map_or("?".into(), |n| n.to_string()),
            r.new_units.map_or("?".into(), |n| n.to_string()),
            if r.ok { "ok" } else { "FAILED" }
        );
    }
    eprintln!("  total {:.0?} including the build\n", started.elapsed());
    let failed: Vec<&Outcome> = results.iter().filter(|r| !r.ok).collect();
    for r in &failed {
        eprintln!("--- {} (full log: {}) ---\n{}", r.target, r.log.display(), r.tail);
        eprintln!(
            "reproduce: cargo +nightly fuzz run --dev {} fuzz/artifacts/{}/<crash file>\n",
            r.target, r.target
        );
    }
    if !failed.is_empty() {
        let names: Vec<&str> = failed.iter().map(|r| r.target).collect();
        bail!("fuzz smoke failed: {}", names.join(", "));
    }
    Ok(())
}

struct Outcome {
    target: &'static str,
    ok: bool,
    execs: Option<u64>,
    per_sec: Option<u64>,
    new_units: Option<u64>,
    tail: String,
    log: PathBuf,
}

impl Outcome {
    fn read(target: &'static str, ok: bool, text: &str, log: &Path) -> Outcome {
        let stat = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("stat::{name}:")))
                .and_then(|v| v.trim().parse().ok())
        };
        let lines: Vec<&str> = text.lines().collect();
        Outcome {
            target,
            ok,
            execs: stat("number_of_executed_units"),
            per_sec: stat("average_exec_per_sec"),
            new_units: stat("new_units_added"),
            tail: lines[lines.len().saturating_sub(40)..].join("\n"),
            log: log.to_path_buf(),
        }
    }
}

fn nightly_available() -> bool {
    Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `rustup run nightly cargo fuzz …` in the workspace root, with `.tools/bin` first on PATH.
fn cargo_fuzz(tools_bin: &Path, root: &Path) -> Command {
    let mut c = Command::new("rustup");
    c.args(["run", "nightly", "cargo", "fuzz"]).current_dir(root);
    for var in CARGO_ENV {
        c.env_remove(var);
    }
    c.env("PATH", path_with(tools_bin));
    c
}

fn path_with(dir: &Path) -> std::ffi::OsString {
    let mut paths = vec![dir.to_path_buf()];
    paths.extend(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()));
    std::env::join_paths(paths).unwrap_or_default()
}

/// cargo-fuzz from PATH or `.tools/bin`, else installed into `.tools/` (about a minute, once).
fn ensure_cargo_fuzz() -> Result<PathBuf> {
    let tools = root().join(".tools");
    let bin = tools.join("bin");
    let works = |cmd: &mut Command| cmd.arg("--version").output().is_ok_and(|o| o.status.success());
    if works(&mut Command::new(bin.join("cargo-fuzz"))) || works(&mut Command::new("cargo-fuzz")) {
        return Ok(bin);
    }
    eprintln!("xtask: installing cargo-fuzz into {}", tools.display());
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(cargo)
        .args(["install", "cargo-fuzz", "--locked", "--root"])
        .arg(&tools))?;
    Ok(bin)
}
