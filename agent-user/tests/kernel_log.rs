//! The eBPF programs' own log (aya-log), against the real kernel: off by default it costs the
//! verifier what the same programs built without logging cost, and on, a provoked condition
//! reaches the daemon's log once per occurrence.
use std::collections::BTreeMap;

use agent_core::config::KernelLog;
use refusal_agent::kernel::loader;
use testkit::privileged;

/// The same programs with every log call compiled out (agent-user's build.rs, `no-log`).
const NO_LOG: &str = env!("REFUSAL_EBPF_NO_LOG");

#[test]
fn disabled_logging_costs_the_verifier_nothing() {
    if !privileged("disabled_logging_costs_the_verifier_nothing") {
        return;
    }
    let kernel = loader::prepare().unwrap();
    let no_log = std::fs::read(NO_LOG).unwrap();
    let count = |object: &[u8], log| -> BTreeMap<String, Option<u32>> {
        loader::verified_instructions(object, &kernel, log).unwrap().into_iter().collect()
    };
    let with = count(loader::OBJECT, KernelLog::Off);
    let without = count(&no_log, KernelLog::Off);
    let on = count(loader::OBJECT, KernelLog::Trace);
    eprintln!("{:<24} {:>8} {:>8} {:>8}", "program", "no-log", "off", "trace");
    for (name, w) in &with {
        let show = |c: Option<&Option<u32>>| c.copied().flatten().map_or("-".into(), |n| n.to_string());
        eprintln!("{name:<24} {:>8} {:>8} {:>8}", show(without.get(name)), show(Some(w)), show(on.get(name)));
    }
    assert!(!with.is_empty());
    assert_eq!(with, without);
}
