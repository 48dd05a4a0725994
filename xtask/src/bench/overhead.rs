//! Sections 1–2: the connect path's wall clock and kernel time per variant, each traced
//! variant measured between two untraced runs, rounds interleaved.
use std::fmt::Write as _;

use anyhow::{Context as _, Result};
use testkit::closed_port;

use super::{
    Opts,
    harness::{LOOPS, Tracer, Variant, loops, median, median_range},
};

#[derive(Default)]
pub(super) struct Samples {
    pub(super) refused_ns: Vec<f64>,
    pub(super) success_ns: Vec<f64>,
    pub(super) refused_ratio: Vec<f64>,
    pub(super) success_ratio: Vec<f64>,
    pub(super) refused_kernel_ns: Vec<f64>,
    pub(super) success_kernel_ns: Vec<f64>,
}

/// What one round of one variant measured.
struct Round {
    refused_ns: f64,
    success_ns: f64,
    kernel: Option<(f64, f64)>,
}

fn one_round(v: Variant, o: &Opts) -> Result<Round> {
    let port = closed_port();
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

pub(super) fn run(o: &Opts, report: &mut String) -> Result<Vec<(Variant, Samples)>> {
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
