//! BENCHMARKS.md: the sections the parts wrote, under a header naming the machine, and the
//! targets judged on what they measured.
use std::{fmt::Write as _, process::Command};

use anyhow::{Context as _, Result};

use super::{
    Opts,
    harness::{Variant, median},
    overhead::Samples,
    share::as_overhead,
};

/// What follows this line in the document survives regeneration: comparisons of two trees that
/// one run of the bench cannot make (a change's before and after).
const KEPT: &str = "<!-- kept when regenerated -->";

/// Appends the targets to the parts' `report` and writes the whole document to `o.out`, keeping
/// its [`KEPT`] part.
pub(super) fn write(o: &Opts, m: &Measured, mut report: String) -> Result<()> {
    targets(m, &mut report)?;
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
    let kept = std::fs::read_to_string(&o.out)
        .ok()
        .and_then(|old| Some(format!("{KEPT}{}", old.split_once(KEPT)?.1)))
        .unwrap_or_default();
    std::fs::write(&o.out, doc + &kept).with_context(|| format!("writing {}", o.out.display()))?;
    eprintln!("bench: wrote {}", o.out.display());
    Ok(())
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

/// Everything the targets are judged on.
pub(super) struct Measured {
    pub(super) samples: Vec<(Variant, Samples)>,
    pub(super) shares: Vec<(Variant, f64)>,
    pub(super) cpu: Vec<(String, f64, f64)>,
    pub(super) rss_series: f64,
    pub(super) scrape_ms: f64,
    pub(super) latency_ms: f64,
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
    // Issue 22: below the floor of the hooks the agent used to need, by running fewer programs.
    let share_near = agent_pr - floor_pr <= 1.0;
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
            "kernel time per refused connect ≤ the floor's".to_string(),
            format!("{kr:.2}×"),
            kr <= 1.0,
        ),
        (
            "kernel time per successful connect ≤ 1.2× floor".to_string(),
            format!("{ks:.2}×"),
            ks <= 1.2,
        ),
        (
            "tracing share of a refused connect within 1 point of the floor's".to_string(),
            format!("{:+.1} points", agent_pr - floor_pr),
            share_near,
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
             the floor's hooks fire six times per refused connect (state change twice, error report twice, RST sent, \
             RST received; the agent no longer runs the last), and entering a program costs that much before it does \
             anything. bpftrace counts \
             the same signals on classic tracepoints, four programs and three hash maps; the agent's own work on top of \
             its floor is {:+.1} points, the work listed next.\n",
            agent_pr - floor_pr
        )?;
    }
    if !near.1 || !share_near {
        writeln!(
            report,
            "- **Within 2 points (and 1) of the floor ({:+.1} points).** The agent's work per refused connect: the owner at \
             SYN_SENT (a direct-mapped array slot), the failure at CLOSE (one per-CPU hash update), the inbound \
             refusal (one probe read of the packet headers, one per-CPU hash update), the RST in SYN_SENT (told at \
             the close, from the socket); see the kernel-time profile, where `send_reset_btf` and `sock_state_btf` carry nearly \
             all of it. Taking pieces out one at a time put the largest single cost in the inbound refusal's \
             packet read: the bytes behind `skb->head` have no BTF type, so a tracing program can only probe-read \
             them (`bpf_skb_load_bytes` and skb dynptrs are for networking programs); its hash update costs little.\n",
            agent_pr - floor_pr
        )?;
    }
    if kr > 1.0 || ks > 1.2 {
        writeln!(
            report,
            "- **Kernel time ({kr:.2}× / {ks:.2}× the floor).** The floor is six empty runs per refused connect; the \
             agent runs five, and on this kernel (tp_btf only, no UDP-only hook) the error report's two are the \
             floor's own cost for TCP. What is left is the work: per refused connect two hash updates (target, \
             inbound), one probe read of the packet, the owner's array slot twice; see the kernel-time profile.\n"
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
