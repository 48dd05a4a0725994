//! `refusal-agent check`: which hooks this kernel offers and which attach mode each gets.
use std::process::ExitCode;

use agent_core::{
    config::AttachMode,
    kernel::hooks::{HOOKS, programs, target, wanted},
};

use crate::kernel::{self, loader};

pub fn run(mode: AttachMode, opt_in: &[&str]) -> ExitCode {
    let kernel = match loader::prepare() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("refusal-agent: {e}");
            return ExitCode::from(1);
        }
    };
    println!("kernel {}", kernel::release());
    let probed = match loader::probe_all(&kernel) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("refusal-agent: {e}");
            return ExitCode::from(1);
        }
    };
    let mut all_ok = true;
    let mut missing = Vec::new();
    println!(
        "{:<14} {:<11} {:<52} {:<31} {:<6} detail",
        "HOOK", "MODE", "TARGET", "PROGRAM", "WORKS"
    );
    for ((hook, modes), spec) in probed.iter().zip(HOOKS) {
        // The mode the daemon would use: the first that works, in chain order, of the forced
        // mode where the hook offers it on this kernel (which it then must get, as `run`
        // requires).
        let wanted = wanted(spec, opt_in);
        let forced = wanted && loader::forced(&kernel, spec, mode);
        let chosen = modes.iter().position(|(m, r)| r.is_ok() && (!forced || *m == mode));
        all_ok &= chosen.is_some() || !(spec.required || forced);
        if chosen.is_none() && wanted {
            missing.push(spec);
        }
        for (i, ((m, result), (_, attach))) in modes.iter().zip(spec.chain).enumerate() {
            let works = if result.is_ok() { "yes" } else { "no" };
            let detail = match result {
                Ok(()) if Some(i) == chosen && wanted => "used".to_string(),
                Ok(()) if Some(i) == chosen => format!("off: opt-in, run --{}", hook.replace('_', "-")),
                Ok(()) => "available".to_string(),
                Err(why) => why.clone(),
            };
            // Program names match `refusal_agent_bpf_run_seconds_total{program}`.
            let programs = match programs(attach).join(",") {
                p if p.is_empty() => "-".to_string(),
                p => p,
            };
            println!(
                "{hook:<14} {:<11} {:<52} {programs:<31} {works:<6} {detail}",
                m.name(),
                target(attach)
            );
        }
    }
    for spec in missing {
        println!(
            "missing: {}: {} are not counted on this kernel (no mode of the hook works: see why above)",
            spec.name, spec.signal
        );
    }
    if all_ok { ExitCode::SUCCESS } else { ExitCode::from(1) }
}
