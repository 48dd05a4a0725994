//! The eBPF programs' own log (aya-log), against the real kernel: off by default it costs the
//! verifier what the same programs built without logging cost, and on, a provoked condition
//! reaches the daemon's log once per occurrence.
use std::collections::BTreeMap;

use agent_core::config::KernelLog;
use refusal_agent::kernel::loader;
use testkit::{Daemon, closed_port, privileged};

const BIN: &str = env!("CARGO_BIN_EXE_refusal-agent");

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
        loader::verified_instructions(object, &kernel, log)
            .unwrap()
            .into_iter()
            .collect()
    };
    let with = count(loader::OBJECT, KernelLog::Off);
    let without = count(&no_log, KernelLog::Off);
    let on = count(loader::OBJECT, KernelLog::Trace);
    eprintln!("{:<24} {:>8} {:>8} {:>8}", "program", "no-log", "off", "trace");
    for (name, w) in &with {
        let show = |c: Option<&Option<u32>>| c.copied().flatten().map_or("-".into(), |n| n.to_string());
        eprintln!(
            "{name:<24} {:>8} {:>8} {:>8}",
            show(without.get(name)),
            show(Some(w)),
            show(on.get(name))
        );
    }
    assert!(!with.is_empty());
    assert_eq!(with, without);
}

/// `--test-unknown-family` makes every refused connect meet a socket of an unknown family, a
/// condition the programs log at `warn`: each one reaches the daemon's log once, under the
/// programs' target.
#[test]
fn a_provoked_condition_is_logged_once_per_occurrence() {
    if !privileged("a_provoked_condition_is_logged_once_per_occurrence") {
        return;
    }
    let d = Daemon::start(BIN, &["--test-unknown-family", "--kernel-log", "warn"]);
    let lines = |port: u16| {
        let want = format!("socket of unknown address family 6 (port {port})");
        d.log()
            .lines()
            .filter(|l| l.contains("refusal_agent::ebpf") && l.contains(&want))
            .count()
    };
    let refuse = |port: u16, times: usize| {
        for _ in 0..times {
            std::net::TcpStream::connect(("127.0.0.1", port)).unwrap_err();
        }
    };
    let (port, marker) = (closed_port(), closed_port());
    refuse(port, 25);
    // Records leave the ring in order: once the marker's is in the log, every earlier one is.
    refuse(marker, 1);
    while lines(marker) == 0 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(lines(port), 25, "{}", d.log());
    assert_eq!(lines(marker), 1);
    assert_eq!(d.stop(), Some(0));
}
