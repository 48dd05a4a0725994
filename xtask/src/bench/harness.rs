//! What every part runs on: the builds it measures, the daemon and bpftrace as tracers, the
//! client loops pinned to one CPU, and medians.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use testkit::{
    Daemon, closed_port,
    metrics::{BPF_RUN_SECONDS, BPF_RUNS, FAILURES},
    value,
};

use super::Opts;
use crate::{root, target_dir};

static SMOKE: OnceLock<bool> = OnceLock::new();

/// Builds what the runs measure and refuses to go on with another tracer attached.
pub(super) fn prepare(o: &Opts) -> Result<()> {
    let _ = SMOKE.set(o.smoke);
    let mut build = crate::cargo();
    build.args(["build", "-p", "agent-user", "-p", "refusal-bench"]);
    if !o.smoke {
        build.arg("--release");
    }
    crate::run(&mut build)?;
    no_other_tracer()
}

/// Smoke runs use the debug build the tests already made; measurements use release.
pub(super) fn bin(name: &str) -> PathBuf {
    let profile = if SMOKE.get().copied().unwrap_or(false) {
        "debug"
    } else {
        "release"
    };
    target_dir().join(profile).join(name)
}

/// Refuses to measure with another tracer attached: it would run in every variant, the
/// untraced one too. (A refusal-agent stopped with `--keep-pins` keeps counting: one left
/// behind once made every figure here noisy and the untraced connect twice as slow.)
fn no_other_tracer() -> Result<()> {
    let out = Command::new("bpftool")
        .args(["-j", "link", "list"])
        .output()
        .context("bpftool link list (apt-get install bpftool)")?;
    let links = String::from_utf8_lossy(&out.stdout);
    let tracing = [
        "raw_tracepoint",
        "perf_event",
        "tracing",
        "kprobe_multi",
        "uprobe_multi",
    ]
    .iter()
    .map(|t| links.matches(&format!("\"type\":\"{t}\"")).count())
    .sum::<usize>();
    if tracing > 0 {
        bail!(
            "{tracing} tracing BPF links are attached already (`bpftool link list`): they would run in every variant, \
             the untraced one too. Detach them first (a pin directory left by `refusal-agent run --keep-pins`: rm -r it)"
        );
    }
    Ok(())
}

/// Runs `f` with `kernel.bpf_stats_enabled=1` (the programs' run times), then restores it.
pub(super) fn with_bpf_stats<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    let stats = Path::new("/proc/sys/kernel/bpf_stats_enabled");
    let before = std::fs::read_to_string(stats).unwrap_or_default();
    std::fs::write(stats, "1").context("enabling kernel.bpf_stats_enabled (needs root)")?;
    let result = f();
    let _ = std::fs::write(stats, before.trim());
    result
}

/// The daemon of this build, ready. It pins under a directory of its own, never the default
/// one a real daemon on this host may hold; dropped, it is killed and unpinned.
pub(super) fn start_agent(flags: &[&str]) -> Result<Daemon> {
    Ok(Daemon::try_start(bin("refusal-agent"), flags)?)
}

/// Refused connects to `port` the daemon has counted.
pub(super) fn counted(d: &Daemon, port: u16) -> Result<f64> {
    Ok(value(&d.try_metrics()?, FAILURES, &[("dst_port", &port.to_string())]))
}

/// Kernel ns and runs of all the daemon's programs so far.
pub(super) fn kernel_time(d: &Daemon) -> Result<(f64, f64)> {
    let m = d.try_metrics()?;
    Ok((value(&m, BPF_RUN_SECONDS, &[]) * 1e9, value(&m, BPF_RUNS, &[])))
}

/// CPU seconds of the daemon's threads so far, to the nanosecond (`/proc/<pid>/task/*/schedstat`;
/// `/proc/<pid>/stat` counts 10 ms ticks, too coarse for seconds of a mostly idle daemon).
pub(super) fn cpu_seconds(d: &Daemon) -> Result<f64> {
    let mut ns = 0u64;
    for task in std::fs::read_dir(format!("/proc/{}/task", d.pid()))? {
        let stat = std::fs::read_to_string(task?.path().join("schedstat"))?;
        ns += stat.split_whitespace().next().context("schedstat")?.parse::<u64>()?;
    }
    Ok(ns as f64 / 1e9)
}

pub(super) fn rss_mib(d: &Daemon) -> Result<f64> {
    Ok(d.try_rss_kib()? as f64 / 1024.0)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Variant {
    None,
    Floor,
    Agent,
    /// The agent with the opt-in `connect_sync` hook: what its syscall tracepoints cost.
    AgentSync,
    Bpftrace,
}

impl Variant {
    pub(super) const ALL: [Variant; 5] = [
        Variant::None,
        Variant::Floor,
        Variant::Agent,
        Variant::AgentSync,
        Variant::Bpftrace,
    ];

    pub(super) fn name(self) -> &'static str {
        match self {
            Variant::None => "no tracing",
            Variant::Floor => "floor (empty programs, same hooks)",
            Variant::Agent => "refusal-agent",
            Variant::AgentSync => "refusal-agent --connect-sync (opt-in hook)",
            Variant::Bpftrace => "bpftrace 0.17, same counting",
        }
    }
}

/// What a variant runs while the loops are timed.
pub(super) enum Tracer {
    None,
    Agent(Daemon),
    Bpftrace(Bpftrace),
}

impl Tracer {
    /// Starts `v`'s tracer, then settles what starting it stirs up (loading, freed memory, the
    /// first scrape) before anything is timed; the same for every variant.
    pub(super) fn start(v: Variant, o: &Opts) -> Result<Tracer> {
        let t = match v {
            Variant::None => Tracer::None,
            Variant::Bpftrace => Tracer::Bpftrace(Bpftrace::start()?),
            Variant::Floor => Tracer::Agent(start_agent(&["--bench-empty-programs"])?),
            Variant::Agent => Tracer::Agent(start_agent(&[])?),
            Variant::AgentSync => Tracer::Agent(start_agent(&["--connect-sync"])?),
        };
        std::thread::sleep(Duration::from_secs(1));
        client(&[
            "refused".into(),
            closed_port().to_string(),
            (o.refused / 10).to_string(),
        ])?;
        Ok(t)
    }

    /// Stops it, checking that it counted exactly `refused` failures to `port` where it counts.
    pub(super) fn stop(self, v: Variant, port: u16, refused: u64) -> Result<()> {
        let counted = match self {
            Tracer::Bpftrace(bt) => bt.stop(port)? as f64,
            Tracer::Agent(d) if v != Variant::Floor => counted(&d, port)?,
            _ => return Ok(()),
        };
        if counted != refused as f64 {
            bail!("{} counted {counted} of {refused} refused connects", v.name());
        }
        Ok(())
    }

    pub(super) fn kernel_time(&self) -> Result<Option<(f64, f64)>> {
        match self {
            Tracer::Agent(d) => kernel_time(d).map(Some),
            _ => Ok(None),
        }
    }
}

pub(super) struct Bpftrace {
    child: Child,
    out: PathBuf,
}

impl Bpftrace {
    fn start() -> Result<Bpftrace> {
        let out = std::env::temp_dir().join(format!("refusal-bench-bpftrace-{}.out", std::process::id()));
        let child = Command::new("bpftrace")
            .arg(root().join("bench/refusals.bt"))
            .stdout(std::fs::File::create(&out)?)
            .stderr(Stdio::null())
            .spawn()
            .context("starting bpftrace (apt-get install bpftrace)")?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !std::fs::read_to_string(&out).unwrap_or_default().contains("Attaching") {
            if Instant::now() > deadline {
                bail!("bpftrace did not attach");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // "Attaching" is printed before the probes are in place.
        std::thread::sleep(Duration::from_millis(500));
        Ok(Bpftrace { child, out })
    }

    /// Stops it and returns the failures it counted for `port`.
    fn stop(mut self, port: u16) -> Result<u64> {
        // bpftrace 0.17 sometimes misses a SIGINT (seen here: a bench waited 7 minutes on one):
        // ask again every second until it prints its maps and exits.
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("bpftrace did not stop on SIGINT");
            }
            Command::new("kill")
                .args(["-INT", &self.child.id().to_string()])
                .status()?;
            for _ in 0..10 {
                if self.child.try_wait()?.is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let text = std::fs::read_to_string(&self.out)?;
        let _ = std::fs::remove_file(&self.out);
        Ok(text
            .lines()
            .filter(|l| l.starts_with("@failures[") && l.contains(&format!(", {port}, 111]")))
            .filter_map(|l| l.rsplit_once(": ")?.1.trim().parse::<u64>().ok())
            .sum())
    }
}

/// The CPU the client loops run on: the last (migrations add noise).
pub(super) fn client_cpu() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get() - 1)
}

/// `connect-loop` pinned to [`client_cpu`].
pub(super) fn client_command(args: &[String]) -> Command {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", &client_cpu().to_string()])
        .arg(bin("connect-loop"))
        .args(args);
    cmd
}

/// Runs the client loop on [`client_cpu`]; returns ns per operation.
pub(super) fn client(args: &[String]) -> Result<f64> {
    let out = client_command(args)
        .output()
        .context("taskset connect-loop (util-linux)")?;
    if !out.status.success() {
        bail!("connect-loop {args:?} failed");
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let ns = text.split_whitespace().nth(1).context("connect-loop output")?;
    Ok(ns.parse()?)
}

/// Loops per measurement: each variant's figure is the median of this many back-to-back
/// loops, so one disturbed loop does not move it.
pub(super) const LOOPS: u64 = 3;

/// The median ns per operation of [`LOOPS`] loops that make `n` operations in all.
pub(super) fn loops(kind: &str, port: Option<u16>, n: u64) -> Result<f64> {
    let mut args = vec![kind.to_string()];
    args.extend(port.map(|p| p.to_string()));
    args.push((n / LOOPS).to_string());
    Ok(median((0..LOOPS).map(|_| client(&args)).collect::<Result<_>>()?))
}

/// The median, the least and the greatest.
pub(super) fn median_range(v: &[f64]) -> (f64, f64, f64) {
    let (lo, hi) = v.iter().fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(*x), b.max(*x)));
    (median(v.to_vec()), lo, hi)
}

pub(super) fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}
