//! `cargo xtask bench`: the figures of BENCHMARKS.md. Every figure is a median of interleaved
//! rounds or a ratio of runs paired within one round, taken in this one invocation.
use std::{
    fmt::Write as _,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use testkit::value;

use crate::root;

mod share;

pub struct Opts {
    pub rounds: usize,
    pub refused: u64,
    pub success: u64,
    /// A quick pass for CI: small counts, conservation checked, report written to `out`.
    pub smoke: bool,
    pub out: PathBuf,
    /// Only this part, its section printed (BENCHMARKS.md is left alone).
    pub only: Option<Part>,
}

/// A part of the benchmarks that runs on its own, for quick iterations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// Connect-path overhead and kernel time next to the floor and bpftrace, and the
    /// per-program profile (sections 1–2).
    Kernel,
    /// RSS and `/metrics` scrape cost at 10,000 series (section 4–5).
    Memory,
    /// Event-to-metric latency (section 6).
    Latency,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    None,
    Floor,
    Agent,
    /// The agent with the opt-in `connect_sync` hook: what its syscall tracepoints cost.
    AgentSync,
    Bpftrace,
}

impl Variant {
    const ALL: [Variant; 5] = [
        Variant::None,
        Variant::Floor,
        Variant::Agent,
        Variant::AgentSync,
        Variant::Bpftrace,
    ];

    fn name(self) -> &'static str {
        match self {
            Variant::None => "no tracing",
            Variant::Floor => "floor (empty programs, same hooks)",
            Variant::Agent => "refusal-agent",
            Variant::AgentSync => "refusal-agent --connect-sync (opt-in hook)",
            Variant::Bpftrace => "bpftrace 0.17, same counting",
        }
    }
}

/// Smoke runs use the debug build the tests already made; measurements use release. Both from
/// cargo's target directory (`CARGO_TARGET_DIR` when set).
fn bin(name: &str) -> PathBuf {
    let profile = if SMOKE.get().copied().unwrap_or(false) {
        "debug"
    } else {
        "release"
    };
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), |d| root().join(d));
    target.join(profile).join(name)
}

static SMOKE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// Minimal HTTP/1.0 GET: (status, body).
fn get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((code, body.to_string()))
}

struct Daemon {
    child: Child,
    addr: SocketAddr,
}

impl Daemon {
    fn start(flags: &[&str]) -> Result<Daemon> {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let mut cmd = Command::new(bin("refusal-agent"));
        cmd.args(["run", "--listen", &addr.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .args(flags);
        let mut child = cmd.spawn().context("starting refusal-agent")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !get(addr, "/readyz").is_ok_and(|(c, _)| c == 200) {
            if child.try_wait()?.is_some() || Instant::now() > deadline {
                let _ = child.kill();
                bail!("refusal-agent did not become ready");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Daemon { child, addr })
    }

    fn metrics(&self) -> Result<String> {
        let (code, body) = get(self.addr, "/metrics")?;
        if code != 200 {
            bail!("/metrics answered {code}");
        }
        Ok(body)
    }

    /// Kernel ns and runs of all the agent's programs so far.
    fn kernel_time(&self) -> Result<(f64, f64)> {
        let m = self.metrics()?;
        Ok((
            value(&m, "refusal_agent_bpf_run_seconds_total", &[]) * 1e9,
            value(&m, "refusal_agent_bpf_runs_total", &[]),
        ))
    }

    /// CPU seconds of the daemon's threads so far, to the nanosecond (`/proc/<pid>/task/*/schedstat`;
    /// `/proc/<pid>/stat` counts 10 ms ticks, too coarse for seconds of a mostly idle daemon).
    fn cpu_seconds(&self) -> Result<f64> {
        let mut ns = 0u64;
        for task in std::fs::read_dir(format!("/proc/{}/task", self.child.id()))? {
            let stat = std::fs::read_to_string(task?.path().join("schedstat"))?;
            ns += stat.split_whitespace().next().context("schedstat")?.parse::<u64>()?;
        }
        Ok(ns as f64 / 1e9)
    }

    fn rss_mib(&self) -> Result<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .context("VmRSS")?;
        Ok(kb / 1024.0)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

struct Bpftrace {
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
        Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()?;
        self.child.wait()?;
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
fn client_cpu() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get() - 1)
}

/// Runs the client loop on [`client_cpu`]; returns ns per operation.
fn client(args: &[String]) -> Result<f64> {
    let out = Command::new("taskset")
        .args(["-c", &client_cpu().to_string()])
        .arg(bin("connect-loop"))
        .args(args)
        .output()
        .context("taskset connect-loop (util-linux)")?;
    if !out.status.success() {
        bail!("connect-loop {args:?} failed");
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let ns = text.split_whitespace().nth(1).context("connect-loop output")?;
    Ok(ns.parse()?)
}

/// The median, the least and the greatest.
fn median_range(v: &[f64]) -> (f64, f64, f64) {
    let (lo, hi) = v.iter().fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(*x), b.max(*x)));
    (median(v.to_vec()), lo, hi)
}

fn median(mut v: Vec<f64>) -> f64 {
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

#[derive(Default)]
struct Samples {
    refused_ns: Vec<f64>,
    success_ns: Vec<f64>,
    refused_ratio: Vec<f64>,
    success_ratio: Vec<f64>,
    refused_kernel_ns: Vec<f64>,
    success_kernel_ns: Vec<f64>,
}

/// What one round of one variant measured.
struct Round {
    refused_ns: f64,
    success_ns: f64,
    kernel: Option<(f64, f64)>,
}

/// Loops per measurement: each variant's figure is the median of this many back-to-back
/// loops, so one disturbed loop does not move it.
const LOOPS: u64 = 3;

/// The median ns per operation of [`LOOPS`] loops that make `n` operations in all.
fn loops(kind: &str, port: Option<u16>, n: u64) -> Result<f64> {
    let mut args = vec![kind.to_string()];
    args.extend(port.map(|p| p.to_string()));
    args.push((n / LOOPS).to_string());
    Ok(median((0..LOOPS).map(|_| client(&args)).collect::<Result<_>>()?))
}

/// What a variant runs while the loops are timed.
enum Tracer {
    None,
    Agent(Daemon),
    Bpftrace(Bpftrace),
}

impl Tracer {
    /// Starts `v`'s tracer, then settles what starting it stirs up (loading, freed memory, the
    /// first scrape) before anything is timed; the same for every variant.
    fn start(v: Variant, o: &Opts) -> Result<Tracer> {
        let t = match v {
            Variant::None => Tracer::None,
            Variant::Bpftrace => Tracer::Bpftrace(Bpftrace::start()?),
            Variant::Floor => Tracer::Agent(Daemon::start(&["--bench-empty-programs"])?),
            Variant::Agent => Tracer::Agent(Daemon::start(&[])?),
            Variant::AgentSync => Tracer::Agent(Daemon::start(&["--connect-sync"])?),
        };
        std::thread::sleep(Duration::from_secs(1));
        client(&["refused".into(), free_port().to_string(), (o.refused / 10).to_string()])?;
        Ok(t)
    }

    /// Stops it, checking that it counted exactly `refused` failures to `port` where it counts.
    fn stop(self, v: Variant, port: u16, refused: u64) -> Result<()> {
        let counted = match self {
            Tracer::Bpftrace(bt) => bt.stop(port)? as f64,
            Tracer::Agent(d) if v != Variant::Floor => value(
                &d.metrics()?,
                "refusal_connect_failures_total",
                &[("dst_port", &port.to_string())],
            ),
            _ => return Ok(()),
        };
        if counted != refused as f64 {
            bail!("{} counted {counted} of {refused} refused connects", v.name());
        }
        Ok(())
    }

    fn kernel_time(&self) -> Result<Option<(f64, f64)>> {
        match self {
            Tracer::Agent(d) => d.kernel_time().map(Some),
            _ => Ok(None),
        }
    }
}

fn one_round(v: Variant, o: &Opts) -> Result<Round> {
    let port = free_port();
    // What the loops make in all (multiples of LOOPS).
    let (refused, success) = (o.refused / LOOPS * LOOPS, o.success / LOOPS * LOOPS);
    let t = Tracer::start(v, o)?;
    let k0 = t.kernel_time()?;
    let refused_ns = loops("refused", Some(port), o.refused)?;
    let k1 = t.kernel_time()?;
    let success_ns = loops("success", None, o.success)?;
    let k2 = t.kernel_time()?;
    t.stop(v, port, refused)?;
    let kernel = match (k0, k1, k2) {
        (Some(k0), Some(k1), Some(k2)) => Some(((k1.0 - k0.0) / refused as f64, (k2.0 - k1.0) / success as f64)),
        _ => None,
    };
    Ok(Round {
        refused_ns,
        success_ns,
        kernel,
    })
}

/// Tracing code's share of the client CPU during refused connects, per variant (perf): a
/// figure from within one run, which the machine's drifting speed does not move.
fn shares(o: &Opts, report: &mut String) -> Result<Vec<(Variant, f64)>> {
    let cpu = client_cpu();
    let mut rounds: Vec<(Variant, Vec<f64>)> = Variant::ALL.iter().map(|v| (*v, Vec::new())).collect();
    for r in 0..o.rounds {
        for i in 0..rounds.len() {
            let (v, samples) = &mut rounds[(i + r) % Variant::ALL.len()];
            let port = free_port();
            let t = Tracer::start(*v, o)?;
            let mut cmd = Command::new("taskset");
            cmd.args(["-c", &cpu.to_string()]).arg(bin("connect-loop")).args([
                "refused",
                &port.to_string(),
                &o.refused.to_string(),
            ]);
            samples.push(share::tracing_share(cpu, &mut cmd)?);
            t.stop(*v, port, o.refused)?;
        }
    }
    writeln!(report, "### Profile: tracing code's share of a refused connect\n")?;
    writeln!(
        report,
        "`perf record -g -F 10000` on the client's CPU during {} refused connects, per variant and round ({} rounds, \
         order rotated): the samples whose stack passes through tracing (a tracepoint's probes, BPF or classic, with \
         the programs, maps, helpers and locks under them; the syscall slow path that syscall tracepoints turn on), as \
         a share of all samples, median and range over the rounds; as overhead, share / (1 − share) is what that code \
         adds to an untraced connect. Each figure comes from inside one run, so the machine's drifting speed between \
         runs (the ranges above) moves it far less; it leaves out indirect costs such as cache misses.\n",
        o.refused, o.rounds
    )?;
    writeln!(report, "| variant | share of CPU samples (range) | as overhead |")?;
    writeln!(report, "| --- | --- | --- |")?;
    let mut out = Vec::new();
    for (v, samples) in rounds {
        let (m, lo, hi) = median_range(&samples);
        writeln!(
            report,
            "| {} | {m:.2} % ({lo:.2}–{hi:.2}) | {:+.1} % |",
            v.name(),
            as_overhead(m)
        )?;
        out.push((v, m));
    }
    writeln!(report)?;
    Ok(out)
}

/// A share of a traced run's time (percent) as overhead on the untraced run (percent).
fn as_overhead(share: f64) -> f64 {
    share / (100.0 - share) * 100.0
}

fn overhead(o: &Opts, report: &mut String) -> Result<Vec<(Variant, Samples)>> {
    let mut samples: Vec<(Variant, Samples)> = Variant::ALL.iter().map(|v| (*v, Samples::default())).collect();
    let mut record = |v: Variant, m: &Round, base: (f64, f64)| -> Result<()> {
        let s = &mut samples.iter_mut().find(|(sv, _)| *sv == v).context("variant")?.1;
        s.refused_ns.push(m.refused_ns);
        s.success_ns.push(m.success_ns);
        s.refused_ratio.push(m.refused_ns / base.0);
        s.success_ratio.push(m.success_ns / base.1);
        if let Some((kr, ks)) = m.kernel {
            s.refused_kernel_ns.push(kr);
            s.success_kernel_ns.push(ks);
        }
        Ok(())
    };
    let traced = &Variant::ALL[1..];
    for r in 0..o.rounds {
        let mut order = traced.to_vec();
        order.rotate_left(r % traced.len());
        // Every traced variant sits between two untraced measurements and is compared with
        // their mean: the machine's speed drifts over seconds, which this cancels.
        let mut before = one_round(Variant::None, o)?;
        for v in order {
            let m = one_round(v, o)?;
            let after = one_round(Variant::None, o)?;
            let mean = |f: fn(&Round) -> f64| (f(&before) + f(&after)) / 2.0;
            record(v, &m, (mean(|r| r.refused_ns), mean(|r| r.success_ns)))?;
            record(Variant::None, &before, (before.refused_ns, before.success_ns))?;
            before = after;
        }
        eprintln!("bench: round {}/{} done", r + 1, o.rounds);
    }
    writeln!(report, "### 1–2. Connect-path overhead and kernel time\n")?;
    writeln!(
        report,
        "{} interleaved rounds (traced variants' order rotated each round, each one between two untraced measurements); \
         per measurement, {} refused connects to a closed loopback port and {} connect/accept/close rounds, each as the \
         median of {LOOPS} back-to-back loops. Ratios are per measurement against the mean of the untraced ones on either \
         side, then the median over rounds; \
         kernel time is the sum of `run_time_ns` over the agent's programs (`kernel.bpf_stats_enabled=1`) divided by the \
         connects. bpftrace and refusal-agent counts were checked exact every round.\n",
        o.rounds, o.refused, o.success
    )?;
    writeln!(
        report,
        "| variant | refused: ns/connect | refused: ratio (range) | refused: added ns | refused: kernel ns | successful: ns/round | successful: ratio (range) | successful: added ns | successful: kernel ns |"
    )?;
    writeln!(report, "| --- | --- | --- | --- | --- | --- | --- | --- | --- |")?;
    let base_r = median(samples[0].1.refused_ns.clone());
    let base_s = median(samples[0].1.success_ns.clone());
    for (v, s) in &samples {
        let kr = median(s.refused_kernel_ns.clone());
        let ks = median(s.success_kernel_ns.clone());
        let k = |x: f64| {
            if x.is_nan() {
                "–".to_string()
            } else {
                format!("{x:.0}")
            }
        };
        // The median ratio, the spread of the rounds' ratios, and what the median adds to
        // the untraced median.
        let ratio = |r: &[f64], base: f64| {
            let (m, lo, hi) = median_range(r);
            (format!("{m:.3} ({lo:.2}–{hi:.2})"), format!("{:+.0}", (m - 1.0) * base))
        };
        let (rr, ra) = ratio(&s.refused_ratio, base_r);
        let (sr, sa) = ratio(&s.success_ratio, base_s);
        writeln!(
            report,
            "| {} | {:.0} | {rr} | {ra} | {} | {:.0} | {sr} | {sa} | {} |",
            v.name(),
            median(s.refused_ns.clone()),
            k(kr),
            median(s.success_ns.clone()),
            k(ks),
        )?;
    }
    writeln!(report)?;
    Ok(samples)
}

/// `program → (kernel ns, runs)` from the daemon's own metrics.
fn per_program(d: &Daemon) -> Result<std::collections::BTreeMap<String, (f64, f64)>> {
    let mut out = std::collections::BTreeMap::new();
    for line in d.metrics()?.lines() {
        for (metric, seconds) in [
            ("refusal_agent_bpf_run_seconds_total{program=\"", true),
            ("refusal_agent_bpf_runs_total{program=\"", false),
        ] {
            if let Some(rest) = line.strip_prefix(metric) {
                let (name, v) = rest.split_once("\"} ").context("metric line")?;
                let e: &mut (f64, f64) = out.entry(name.to_string()).or_default();
                if seconds {
                    e.0 = v.parse::<f64>()? * 1e9
                } else {
                    e.1 = v.parse()?
                }
            }
        }
    }
    Ok(out)
}

/// Where the kernel time goes, program by program: the profile behind the kernel-time targets.
fn profile(o: &Opts, report: &mut String) -> Result<()> {
    writeln!(
        report,
        "### Profile: kernel time by program
"
    )?;
    writeln!(report, "One run each of {} refused connects and {} successful rounds; runs per connect and ns per run of each program (`run_time_ns / run_cnt`).
", o.refused, o.success)?;
    writeln!(
        report,
        "| program | refused: runs/connect | refused: ns/run | refused: ns/connect | successful: runs/round | successful: ns/run | successful: ns/round |"
    )?;
    writeln!(report, "| --- | --- | --- | --- | --- | --- | --- |")?;
    let d = Daemon::start(&[])?;
    let p0 = per_program(&d)?;
    client(&["refused".into(), free_port().to_string(), o.refused.to_string()])?;
    let p1 = per_program(&d)?;
    client(&["success".into(), o.success.to_string()])?;
    let p2 = per_program(&d)?;
    let delta = |a: &std::collections::BTreeMap<String, (f64, f64)>,
                 b: &std::collections::BTreeMap<String, (f64, f64)>,
                 k: &str| {
        let (x, y) = (
            a.get(k).copied().unwrap_or_default(),
            b.get(k).copied().unwrap_or_default(),
        );
        (y.0 - x.0, y.1 - x.1)
    };
    let (mut total_r, mut total_s) = (0.0, 0.0);
    for name in p2.keys() {
        let (tr, nr) = delta(&p0, &p1, name);
        let (ts, ns) = delta(&p1, &p2, name);
        if nr == 0.0 && ns == 0.0 {
            continue;
        }
        total_r += tr / o.refused as f64;
        total_s += ts / o.success as f64;
        let per = |t: f64, n: f64| if n > 0.0 { format!("{:.0}", t / n) } else { "–".into() };
        writeln!(
            report,
            "| `{name}` | {:.2} | {} | {:.0} | {:.2} | {} | {:.0} |",
            nr / o.refused as f64,
            per(tr, nr),
            tr / o.refused as f64,
            ns / o.success as f64,
            per(ts, ns),
            ts / o.success as f64
        )?;
    }
    writeln!(report, "| **total** | | | **{total_r:.0}** | | | **{total_s:.0}** |\n")?;
    Ok(())
}

fn cpu_at_rates(o: &Opts, report: &mut String) -> Result<Vec<(String, f64, f64)>> {
    let d = Daemon::start(&[])?;
    let secs: u64 = if o.smoke { 1 } else { 5 };
    let mut rows = Vec::new();
    for rate in [Some(1_000u64), Some(10_000), None] {
        let port = free_port();
        let n = rate.map_or(if o.smoke { 5_000 } else { 200_000 }, |r| r * secs);
        let mut args = vec!["refused".to_string(), port.to_string(), n.to_string()];
        if let Some(r) = rate {
            args.push(r.to_string());
        }
        let c0 = d.cpu_seconds()?;
        let t0 = Instant::now();
        let ns = client(&args)?;
        let wall = t0.elapsed().as_secs_f64();
        let cpu = d.cpu_seconds()? - c0;
        let counted = value(
            &d.metrics()?,
            "refusal_connect_failures_total",
            &[("dst_port", &port.to_string())],
        );
        if counted != n as f64 {
            bail!("counted {counted} of {n} refused connects at rate {rate:?}");
        }
        let achieved = 1e9 / ns;
        let label = rate.map_or(format!("maximum ({achieved:.0}/s)"), |r| format!("{r}/s"));
        rows.push((label, cpu / n as f64 * 1e6, cpu / wall * 100.0));
    }
    writeln!(report, "### 3. Daemon CPU per million refusals\n")?;
    writeln!(
        report,
        "CPU time of the daemon's threads from `/proc/<pid>/task/*/schedstat` (nanoseconds) while the loop ran; every \
         refusal counted exactly.\n"
    )?;
    writeln!(report, "| rate | CPU s per million refusals | CPU % of one core |")?;
    writeln!(report, "| --- | --- | --- |")?;
    for (label, per_million, pct) in &rows {
        writeln!(report, "| {label} | {per_million:.3} | {pct:.2} |")?;
    }
    writeln!(report)?;
    Ok(rows)
}

/// Refused connects to `count` distinct ports from `first` (skipping any that accept).
fn scan(first: u32, count: u32) {
    for p in first..first + count {
        let _ = TcpStream::connect(("127.0.0.1", p as u16));
    }
}

fn memory_and_scrape(o: &Opts, report: &mut String) -> Result<(f64, f64, f64, f64)> {
    let (scan_ports, series) = if o.smoke { (2_000, 1_000) } else { (65_535, 10_000) };
    let d = Daemon::start(&[])?;
    let rss0 = d.rss_mib()?;
    scan(1, scan_ports);
    let m = d.metrics()?;
    let rss_scan = d.rss_mib()?;
    let folded = value(
        &m,
        "refusal_agent_series_overflow_total",
        &[("metric", "refusal_connect_failures_total")],
    );
    drop(d);

    let d = Daemon::start(&[])?;
    scan(20_000, series);
    // Let a tick resolve everything once before timing scrapes.
    std::thread::sleep(Duration::from_millis(500));
    let mut times = Vec::new();
    let mut size = 0;
    for _ in 0..11 {
        let t = Instant::now();
        size = d.metrics()?.len();
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let rss_series = d.rss_mib()?;
    let m = d.metrics()?;
    let live = m
        .lines()
        .filter(|l| l.starts_with("refusal_connect_failures_total{"))
        .count();
    let scrape_ms = median(times);
    writeln!(report, "### 4–5. Memory and scrape cost\n")?;
    writeln!(report, "| measurement | value |")?;
    writeln!(report, "| --- | --- |")?;
    writeln!(report, "| RSS at start | {rss0:.1} MiB |")?;
    writeln!(
        report,
        "| RSS after a {scan_ports}-port loopback connect scan | {rss_scan:.1} MiB ({folded:.0} label sets folded into `other`) |"
    )?;
    writeln!(
        report,
        "| RSS with {live} live `refusal_connect_failures_total` series (plus as many inbound ones) | {rss_series:.1} MiB |"
    )?;
    writeln!(
        report,
        "| `/metrics` scrape at that size, median of 11 | {scrape_ms:.1} ms, {:.0} KiB |",
        size as f64 / 1024.0
    )?;
    writeln!(report)?;
    Ok((rss_scan, rss_series, scrape_ms, size as f64))
}

fn latency(report: &mut String) -> Result<f64> {
    let d = Daemon::start(&[])?;
    let mut times = Vec::new();
    for _ in 0..9 {
        let port = free_port();
        let _ = TcpStream::connect(("127.0.0.1", port));
        let t = Instant::now();
        while value(
            &d.metrics()?,
            "refusal_connect_failures_total",
            &[("dst_port", &port.to_string())],
        ) < 1.0
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let ms = median(times);
    writeln!(report, "### 6. Event-to-metric latency\n")?;
    writeln!(
        report,
        "From a refused connect returning to its count in `/metrics` (polled back to back), median of 9: **{ms:.1} ms**. Counters are read from the kernel maps at scrape time, so this is one scrape.\n"
    )?;
    Ok(ms)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} × {cpu}, kernel {}", kernel.trim())
}

pub fn run(o: &Opts) -> Result<()> {
    let _ = SMOKE.set(o.smoke);
    let mut build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    build
        .current_dir(root())
        .args(["build", "-p", "agent-user", "-p", "refusal-bench"]);
    if !o.smoke {
        build.arg("--release");
    }
    crate::run(&mut build)?;
    no_other_tracer()?;
    if let Some(part) = o.only {
        let mut report = String::new();
        match part {
            Part::Kernel => {
                with_bpf_stats(|| {
                    overhead(o, &mut report)?;
                    profile(o, &mut report)
                })?;
                shares(o, &mut report)?;
            }
            Part::Memory => {
                memory_and_scrape(o, &mut report)?;
            }
            Part::Latency => {
                latency(&mut report)?;
            }
        }
        print!("{report}");
        return Ok(());
    }
    let mut report = String::new();
    let (samples, cpu, rss_series, scrape_ms, latency_ms) = with_bpf_stats(|| {
        let samples = overhead(o, &mut report)?;
        profile(o, &mut report)?;
        let cpu = cpu_at_rates(o, &mut report)?;
        let (_, rss_series, scrape_ms, _) = memory_and_scrape(o, &mut report)?;
        let latency_ms = latency(&mut report)?;
        Ok((samples, cpu, rss_series, scrape_ms, latency_ms))
    })?;
    // Without bpf stats, whose clock reads would count as tracing code.
    let shares = shares(o, &mut report)?;
    let measured = Measured {
        samples,
        shares,
        cpu,
        rss_series,
        scrape_ms,
        latency_ms,
    };
    targets(&measured, &mut report)?;
    let date = Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())?;
    let doc = format!(
        "# Benchmarks\n\nRegenerate with `cargo xtask bench` (as root; about 7 minutes after the release build). Machine: {}. Date: {date}. \
         Every figure is a median of interleaved rounds or of per-round ratios taken in one invocation; these machines are \
         shared and noisy, so wall-clock ratios move by a few percent between runs while kernel time per program is steady.\n\n{report}",
        machine()
    );
    std::fs::write(&o.out, doc).with_context(|| format!("writing {}", o.out.display()))?;
    eprintln!("bench: wrote {}", o.out.display());
    Ok(())
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
fn with_bpf_stats<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    let stats = Path::new("/proc/sys/kernel/bpf_stats_enabled");
    let before = std::fs::read_to_string(stats).unwrap_or_default();
    std::fs::write(stats, "1").context("enabling kernel.bpf_stats_enabled (needs root)")?;
    let result = f();
    let _ = std::fs::write(stats, before.trim());
    result
}

/// Everything the targets are judged on.
struct Measured {
    samples: Vec<(Variant, Samples)>,
    shares: Vec<(Variant, f64)>,
    cpu: Vec<(String, f64, f64)>,
    rss_series: f64,
    scrape_ms: f64,
    latency_ms: f64,
}

fn targets(m: &Measured, report: &mut String) -> Result<()> {
    let get = |v: Variant| &m.samples.iter().find(|(sv, _)| *sv == v).expect("every variant ran").1;
    let (floor, agent, bt) = (get(Variant::Floor), get(Variant::Agent), get(Variant::Bpftrace));
    let over = |s: &Samples| (median(s.refused_ratio.clone()) - 1.0) * 100.0;
    let (agent_pp, floor_pp, bt_pp) = (over(agent), over(floor), over(bt));
    let share = |v: Variant| as_overhead(m.shares.iter().find(|(sv, _)| *sv == v).map_or(f64::NAN, |s| s.1));
    let (agent_pr, floor_pr, bt_pr) = (share(Variant::Agent), share(Variant::Floor), share(Variant::Bpftrace));
    let kr = median(agent.refused_kernel_ns.clone()) / median(floor.refused_kernel_ns.clone());
    let ks = median(agent.success_kernel_ns.clone()) / median(floor.success_kernel_ns.clone());
    let max_cpu = m.cpu.last().map_or(f64::NAN, |c| c.2);
    let verdict = |ok: bool| if ok { "met" } else { "**not met**" };
    writeln!(report, "### 7. Targets\n")?;
    writeln!(report, "| target | measured | |")?;
    writeln!(report, "| --- | --- | --- |")?;
    let third = (agent_pp <= bt_pp / 3.0, agent_pr <= bt_pr / 3.0);
    let near = (agent_pp - floor_pp <= 2.0, agent_pr - floor_pr <= 2.0);
    let rows = [
        (
            "refused-connect overhead ≤ ⅓ of bpftrace's: wall clock".to_string(),
            format!("{agent_pp:+.1} % vs bpftrace {bt_pp:+.1} %"),
            third.0,
        ),
        (
            "… by profile (tracing code's share)".to_string(),
            format!("{agent_pr:+.1} % vs bpftrace {bt_pr:+.1} %"),
            third.1,
        ),
        (
            "… and within 2 points of the floor: wall clock".to_string(),
            format!("floor {floor_pp:+.1} %"),
            near.0,
        ),
        ("… by profile".to_string(), format!("floor {floor_pr:+.1} %"), near.1),
        (
            "kernel time per refused connect ≤ 2.5× floor".to_string(),
            format!("{kr:.2}×"),
            kr <= 2.5,
        ),
        (
            "kernel time per successful connect ≤ 1.8× floor".to_string(),
            format!("{ks:.2}×"),
            ks <= 1.8,
        ),
        (
            "daemon CPU ≤ 1 % of a core at the maximum rate".to_string(),
            format!("{max_cpu:.2} %"),
            max_cpu <= 1.0,
        ),
        (
            "RSS ≤ 48 MiB at 10,000 series".to_string(),
            format!("{:.1} MiB", m.rss_series),
            m.rss_series <= 48.0,
        ),
        (
            "scrape ≤ 50 ms at 10,000 series".to_string(),
            format!("{:.1} ms", m.scrape_ms),
            m.scrape_ms <= 50.0,
        ),
        (
            "event-to-metric latency ≤ 1 s".to_string(),
            format!("{:.1} ms", m.latency_ms),
            m.latency_ms <= 1000.0,
        ),
        (
            "zero lost counts".to_string(),
            "every variant that counts was exact in every round".to_string(),
            true,
        ),
    ];
    let unmet = rows.iter().filter(|r| !r.2).count();
    for (what, measured, ok) in rows {
        writeln!(report, "| {what} | {measured} | {} |", verdict(ok))?;
    }
    writeln!(report)?;
    if unmet == 0 {
        return Ok(());
    }
    writeln!(report, "### Why what is not met is not met\n")?;
    if (!third.0 && third.1) || (!near.0 && near.1) {
        writeln!(
            report,
            "- **Wall clock against profile.** The untraced loop's speed drifts by several percent over seconds on \
             this machine (the ranges in the first table), more than the differences judged here; the profile measures \
             each tracer's code inside its own run and meets the target. The wall-clock medians are kept as measured.\n"
        )?;
    }
    if !third.1 {
        writeln!(
            report,
            "- **A third of bpftrace's ({agent_pr:+.1} % against {bt_pr:+.1} %).** The floor alone is {floor_pr:+.1} %: \
             the four hooks the agent needs fire six times per refused connect (state change twice, error report twice, \
             RST sent, RST received), and entering a program costs that much before it does anything. bpftrace counts \
             the same signals on classic tracepoints, four programs and three hash maps; the agent's own work on top of \
             its floor is {:+.1} points, the work listed next.\n",
            agent_pr - floor_pr
        )?;
    }
    if !near.1 {
        writeln!(
            report,
            "- **Within 2 points of the floor ({:+.1} points).** The agent's work per refused connect: the owner at \
             SYN_SENT (a direct-mapped array slot), the failure at CLOSE (one per-CPU hash update), the inbound \
             refusal (one probe read of the packet headers, one per-CPU hash update), the RST in SYN_SENT (a flag \
             on the owner); see the kernel-time profile, where `send_reset_btf` and `sock_state_btf` carry nearly \
             all of it. Taking pieces out one at a time put the largest single cost in the inbound refusal's \
             packet read: the bytes behind `skb->head` have no BTF type, so a tracing program can only probe-read \
             them (`bpf_skb_load_bytes` and skb dynptrs are for networking programs); its hash update costs little.\n",
            agent_pr - floor_pr
        )?;
    }
    if kr > 2.5 || ks > 1.8 {
        writeln!(
            report,
            "- **Kernel time ({kr:.2}× / {ks:.2}× the floor).** The floor is the same programs returning at once, so \
             the ratio is the work itself: per refused connect two hash updates (target, inbound), one probe read, \
             the owner's array slot twice; see the kernel-time profile.\n"
        )?;
    }
    if m.rss_series > 48.0 || m.scrape_ms > 50.0 {
        writeln!(
            report,
            "- **RSS and scrape at 10,000 series ({:.1} MiB, {:.0} ms).** A scrape reads every entry of the per-target \
             maps (`BPF_MAP_LOOKUP_BATCH`) and writes some 50,000 lines from label text kept per series; the 250 ms \
             tick reads two of those maps too, so a scrape can wait for one.\n",
            m.rss_series, m.scrape_ms
        )?;
    }
    Ok(())
}
