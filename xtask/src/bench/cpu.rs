//! Section 3: the daemon's CPU per million refusals at fixed rates and at the maximum.
use std::{fmt::Write as _, time::Instant};

use anyhow::{Result, bail};
use testkit::closed_port;

use super::{
    Opts,
    harness::{client, counted, cpu_seconds, start_agent},
};

pub(super) fn run(o: &Opts, report: &mut String) -> Result<Vec<(String, f64, f64)>> {
    let d = start_agent(&[])?;
    let secs: u64 = if o.smoke { 1 } else { 5 };
    let mut rows = Vec::new();
    for rate in [Some(1_000u64), Some(10_000), None] {
        let port = closed_port();
        let n = rate.map_or(if o.smoke { 5_000 } else { 200_000 }, |r| r * secs);
        let mut args = vec!["refused".to_string(), port.to_string(), n.to_string()];
        if let Some(r) = rate {
            args.push(r.to_string());
        }
        let c0 = cpu_seconds(&d)?;
        let t0 = Instant::now();
        let ns = client(&args)?;
        let wall = t0.elapsed().as_secs_f64();
        let cpu = cpu_seconds(&d)? - c0;
        let counted = counted(&d, port)?;
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
