//! The share of a refused connect's CPU time spent in tracing code, from `perf record -g` on
//! the client's CPU. One run gives it, so it does not drift with the machine's speed the way
//! wall-clock ratios between runs do: the direct cost of each tracer, measured inside its run.
use std::{fmt::Write as _, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};
use testkit::closed_port;

use super::{
    Opts,
    harness::{Tracer, Variant, client_command, client_cpu, median_range},
};

/// Where tracing enters from the traced code: a sample with one of these on its stack runs
/// only because something traces (the tracepoint's probes, BPF or classic, with the programs,
/// maps, helpers and locks under them; the syscall slow path that any syscall tracepoint
/// turns on; fentry trampolines). Counted once per sample, so nesting cannot count twice.
const ENTRIES: &[&str] = &[
    "__traceiter_",
    "bpf_trace_run",
    "trace_call_bpf",
    "syscall_trace_enter",
    "syscall_exit_work",
    "bpf_trampoline_",
];

/// Percent of the samples on `cpu` that ran tracing code while `workload` ran there.
fn tracing_share(cpu: usize, workload: &mut Command) -> Result<f64> {
    let data = std::env::temp_dir().join(format!("refusal-bench-{}.perf", std::process::id()));
    let mut record = Command::new("perf");
    record
        .args(["record", "-q", "-g", "-F", "10000", "-C", &cpu.to_string(), "-o"])
        .arg(&data)
        .arg("--")
        .arg(workload.get_program())
        .args(workload.get_args());
    let out = record.output().context("perf record (apt-get install linux-perf)")?;
    if !out.status.success() {
        bail!("perf record failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let share = share_in(&data);
    let _ = std::fs::remove_file(&data);
    share
}

fn share_in(data: &Path) -> Result<f64> {
    let out = Command::new("perf")
        .args(["script", "-F", "ip,sym", "-i"])
        .arg(data)
        .output()
        .context("perf script")?;
    if !out.status.success() {
        bail!("perf script failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    parse(&String::from_utf8_lossy(&out.stdout))
}

/// `perf script -F ip,sym`: one stack per sample (a frame per line, `addr symbol`), samples
/// separated by blank lines.
fn parse(script: &str) -> Result<f64> {
    let (mut all, mut tracing) = (0u64, 0u64);
    for sample in script.split("\n\n").filter(|s| !s.trim().is_empty()) {
        all += 1;
        let traced = sample
            .lines()
            .filter_map(|frame| frame.split_whitespace().nth(1))
            .any(|sym| ENTRIES.iter().any(|e| sym.starts_with(e)));
        tracing += u64::from(traced);
    }
    if all == 0 {
        bail!("perf recorded no samples");
    }
    Ok(tracing as f64 * 100.0 / all as f64)
}

/// Tracing code's share of the client CPU during refused connects, per variant (perf): a
/// figure from within one run, which the machine's drifting speed does not move.
pub(super) fn run(o: &Opts, report: &mut String) -> Result<Vec<(Variant, f64)>> {
    let cpu = client_cpu();
    let mut rounds: Vec<(Variant, Vec<f64>)> = Variant::ALL.iter().map(|v| (*v, Vec::new())).collect();
    for r in 0..o.rounds {
        for i in 0..rounds.len() {
            let (v, samples) = &mut rounds[(i + r) % Variant::ALL.len()];
            let port = closed_port();
            let t = Tracer::start(*v, o)?;
            let mut cmd = client_command(&["refused".into(), port.to_string(), o.refused.to_string()]);
            samples.push(tracing_share(cpu, &mut cmd)?);
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
pub(super) fn as_overhead(share: f64) -> f64 {
    share / (100.0 - share) * 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_each_sample_with_a_tracing_frame_once() {
        let script = "\n\tffffffff8225a6c6 do_syscall_64\n\tffffffff81000130 entry_SYSCALL_64_after_hwframe\n\n\
            \tffffffffc0001234 bpf_prog_add9af4a9c7e4272_sock_state_btf\n\tffffffff81234567 bpf_trace_run3\n\
            \tffffffff81234568 __traceiter_inet_sock_set_state\n\tffffffff81234569 tcp_set_state\n\n\
            \tffffffff81234570 _raw_spin_lock\n\tffffffff81234571 htab_map_update_elem\n\
            \tffffffff81234572 trace_call_bpf\n\n\
            \t7f694f494137 [unknown]\n\n";
        assert_eq!(parse(script).unwrap(), 50.0);
        assert!(parse("\n\n").is_err());
    }
}
