//! After sections 4–5: the render stage of a scrape alone, the daemon's direct writer against the
//! `prometheus` crate's model built per scrape (`render-ab`, in `bench/`): what keeps the
//! families with a series per target off the crate's registry.
use std::{fmt::Write as _, process::Command};

use anyhow::{Context as _, Result, bail};

use super::{
    Opts,
    harness::{bin, client_cpu, median_range},
};

pub(super) fn run(o: &Opts, report: &mut String) -> Result<()> {
    let (series, rounds) = if o.smoke { (1_000, 3) } else { (10_000, 11) };
    let out = Command::new("taskset")
        .args(["-c", &client_cpu().to_string()])
        .arg(bin("render-ab"))
        .args([series.to_string(), rounds.to_string()])
        .output()
        .context("taskset render-ab (util-linux)")?;
    if !out.status.success() {
        bail!("render-ab failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let (mut direct, mut model, mut ratio, mut bytes) = (Vec::new(), Vec::new(), Vec::new(), 0.0);
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (a, b): (f64, f64) = match f[..] {
            [_, a, b] => (a.parse()?, b.parse()?),
            _ => bail!("render-ab output: {line}"),
        };
        match f[0] {
            "round" => {
                direct.push(a / 1e6);
                model.push(b / 1e6);
                ratio.push(b / a);
            }
            _ => bytes = a,
        }
    }
    let ((d, d_lo, d_hi), (m, m_lo, m_hi), (r, r_lo, r_hi)) =
        (median_range(&direct), median_range(&model), median_range(&ratio));
    writeln!(
        report,
        "### Render stage: the direct writer or the `prometheus` crate's model\n"
    )?;
    writeln!(
        report,
        "The render stage of a scrape alone (no map reads, no HTTP), on {series} `refusal_connect_failures_total` series \
         (20 pods) and {series} `refusal_inbound_refused_total` series, {:.0} KiB of text either way, {rounds} interleaved \
         rounds (order alternating), one CPU. The direct writer is what the daemon runs (label text cached per series \
         between scrapes); the model is the crate's, built for the same snapshot each scrape (a `Metric` and its \
         `LabelPair`s per series, summed by label set, then `TextEncoder`), and was checked to write the same samples. \
         Medians (range); the ratio is per round.\n",
        bytes / 1024.0
    )?;
    writeln!(report, "| writer | ms per scrape (range) |")?;
    writeln!(report, "| --- | --- |")?;
    writeln!(
        report,
        "| direct (`agent_core::serve::exposition`) | {d:.1} ({d_lo:.1}–{d_hi:.1}) |"
    )?;
    writeln!(
        report,
        "| `prometheus` 0.14 model + `TextEncoder` | {m:.1} ({m_lo:.1}–{m_hi:.1}) |"
    )?;
    writeln!(report, "| model ÷ direct | {r:.1}× ({r_lo:.1}–{r_hi:.1}) |")?;
    writeln!(report)?;
    Ok(())
}
