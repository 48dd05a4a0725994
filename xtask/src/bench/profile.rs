//! Where the kernel time goes, program by program: one daemon, one refused and one successful
//! run, each program's runs and run time from the daemon's own metrics.
use std::{collections::BTreeMap, fmt::Write as _};

use anyhow::{Context as _, Result};
use testkit::{
    Daemon, closed_port,
    metrics::{BPF_RUN_SECONDS, BPF_RUNS},
};

use super::{
    Opts,
    harness::{client, start_agent},
};

/// `program → (kernel ns, runs)` from the daemon's own metrics.
fn per_program(d: &Daemon) -> Result<BTreeMap<String, (f64, f64)>> {
    let mut out = BTreeMap::new();
    for line in d.try_metrics()?.lines() {
        for (metric, seconds) in [(BPF_RUN_SECONDS, true), (BPF_RUNS, false)] {
            if let Some(rest) = line.strip_prefix(metric).and_then(|r| r.strip_prefix("{program=\"")) {
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
pub(super) fn run(o: &Opts, report: &mut String) -> Result<()> {
    writeln!(report, "### Profile: kernel time by program\n")?;
    writeln!(
        report,
        "One run each of {} refused connects and {} successful rounds; runs per connect and ns per run of each program (`run_time_ns / run_cnt`).\n",
        o.refused, o.success
    )?;
    writeln!(
        report,
        "| program | refused: runs/connect | refused: ns/run | refused: ns/connect | successful: runs/round | successful: ns/run | successful: ns/round |"
    )?;
    writeln!(report, "| --- | --- | --- | --- | --- | --- | --- |")?;
    let d = start_agent(&[])?;
    let p0 = per_program(&d)?;
    client(&["refused".into(), closed_port().to_string(), o.refused.to_string()])?;
    let p1 = per_program(&d)?;
    client(&["success".into(), o.success.to_string()])?;
    let p2 = per_program(&d)?;
    let delta = |a: &BTreeMap<String, (f64, f64)>, b: &BTreeMap<String, (f64, f64)>, k: &str| {
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
