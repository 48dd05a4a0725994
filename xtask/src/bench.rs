//! `cargo xtask bench`: the figures of BENCHMARKS.md. Every figure is a median of interleaved
//! rounds or a ratio of runs paired within one round, taken in this one invocation.
//!
//! `harness` starts and stops what is measured and runs the client loops; each part measures
//! and writes its section; `report` judges the targets and writes the document.
mod cpu;
mod harness;
mod latency;
mod memory;
mod overhead;
mod profile;
mod render;
mod report;
mod share;

use std::path::PathBuf;

use anyhow::Result;

use self::harness::with_bpf_stats;

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
    /// The render stage alone: the direct writer against the `prometheus` crate's model at
    /// 10,000 series (after section 4–5).
    Render,
    /// Event-to-metric latency (section 6).
    Latency,
}

pub fn run(o: &Opts) -> Result<()> {
    harness::prepare(o)?;
    let mut report = String::new();
    if let Some(part) = o.only {
        match part {
            Part::Kernel => {
                with_bpf_stats(|| {
                    overhead::run(o, &mut report)?;
                    profile::run(o, &mut report)
                })?;
                share::run(o, &mut report)?;
            }
            Part::Memory => {
                memory::run(o, &mut report)?;
            }
            Part::Render => {
                render::run(o, &mut report)?;
            }
            Part::Latency => {
                latency::run(&mut report)?;
            }
        }
        print!("{report}");
        return Ok(());
    }
    let (samples, cpu, (rss_series, scrape_ms), latency_ms) = with_bpf_stats(|| {
        let samples = overhead::run(o, &mut report)?;
        profile::run(o, &mut report)?;
        let cpu = cpu::run(o, &mut report)?;
        let memory = memory::run(o, &mut report)?;
        render::run(o, &mut report)?;
        let latency_ms = latency::run(&mut report)?;
        Ok((samples, cpu, memory, latency_ms))
    })?;
    // Without bpf stats, whose clock reads would count as tracing code.
    let shares = share::run(o, &mut report)?;
    let measured = report::Measured {
        samples,
        shares,
        cpu,
        rss_series,
        scrape_ms,
        latency_ms,
    };
    report::write(o, &measured, report)
}
