//! The share of a refused connect's CPU time spent in tracing code, from `perf record -g` on
//! the client's CPU. One run gives it, so it does not drift with the machine's speed the way
//! wall-clock ratios between runs do: the direct cost of each tracer, measured inside its run.
use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

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
pub fn tracing_share(cpu: usize, workload: &mut Command) -> Result<f64> {
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
