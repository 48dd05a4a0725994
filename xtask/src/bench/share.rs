//! The share of a refused connect's CPU time spent in tracing code, from `perf record` on the
//! client's CPU. One run gives it, so it does not drift with the machine's speed the way
//! wall-clock ratios between runs do: the direct cost of each tracer, measured inside its run.
use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

/// Kernel symbols that run only because something traces: BPF programs and trampolines, the
/// tracepoint glue (BTF and classic, syscall tracepoints' slow path) and the helpers and map
/// code the programs call. LSM and socket-storage stubs run untraced too, so they are not here.
const TRACING: &[&str] = &[
    "bpf_prog_",
    "bpf_trampoline",
    "bpf_trace_run",
    "__bpf_trace_",
    "__traceiter_",
    "trace_call_bpf",
    "perf_trace_",
    "perf_tp_event",
    "perf_syscall_",
    "syscall_trace_enter",
    "syscall_exit_work",
    "__htab",
    "htab_",
    "lookup_nulls_elem_raw",
    "pcpu_freelist",
    "bpf_probe_read",
    "bpf_get_current",
    "bpf_ktime",
    "bpf_skc_to",
    "bpf_ringbuf",
    "bpf_map_",
];

fn tracing(symbol: &str) -> bool {
    TRACING.iter().any(|p| symbol.starts_with(p)) || symbol.contains("_nofault")
}

/// Percent of the samples on `cpu` that fell in tracing code while `workload` ran there.
pub fn tracing_share(cpu: usize, workload: &mut Command) -> Result<f64> {
    let data = std::env::temp_dir().join(format!("refusal-bench-{}.perf", std::process::id()));
    let mut record = Command::new("perf");
    record
        .args(["record", "-q", "-F", "10000", "-C", &cpu.to_string(), "-o"])
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
        .args([
            "report",
            "--stdio",
            "--no-children",
            "--sort",
            "symbol",
            "-g",
            "none",
            "-i",
        ])
        .arg(data)
        .output()
        .context("perf report")?;
    if !out.status.success() {
        bail!("perf report failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(parse(&String::from_utf8_lossy(&out.stdout)))
}

/// Sums the `perf report` lines (`  1.01%  [k] symbol`) whose symbol is tracing code.
fn parse(report: &str) -> f64 {
    report
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let pct = words.next()?.strip_suffix('%')?.parse::<f64>().ok()?;
            let symbol = words.nth(1)?;
            tracing(symbol).then_some(pct)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_only_tracing_symbols() {
        let report = "# Samples: 1K\n\
            \x20    4.50%  [k] _raw_spin_unlock_irqrestore   -   -\n\
            \x20    1.01%  [k] bpf_prog_add9af4a9c7e4272_sock_state_btf   -   -\n\
            \x20    0.63%  [k] bpf_trace_run1   -   -\n\
            \x20    0.44%  [k] lookup_nulls_elem_raw   -   -\n\
            \x20    0.25%  [k] bpf_sk_storage_free   -   -\n\
            \x20    0.10%  [k] copy_from_kernel_nofault   -   -\n\
            \x20    0.08%  [k] bpf_lsm_socket_connect   -   -\n";
        assert!((parse(report) - 2.18).abs() < 1e-9, "{}", parse(report));
    }
}
