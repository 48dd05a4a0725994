//! The eBPF programs' own log (aya-log), against the real kernel: off (the default) the daemon's
//! programs are those built without logging, to the verified instruction; on, a provoked
//! condition reaches the daemon's log once per occurrence.
use std::collections::BTreeMap;

use agent_core::config::KernelLog;
use refusal_agent::kernel::loader;
use testkit::{Daemon, closed_port, privileged, program_ids};

const BIN: &str = env!("CARGO_BIN_EXE_refusal-agent");

/// The kernel's name of a program: its first 15 bytes.
fn kernel_name(name: &str) -> String {
    name.chars().take(15).collect()
}

/// With its log off (the default), the daemon runs the programs built without logging: each
/// one's verified instruction count is theirs. Also prints what the programs with their log
/// calls cost at `off` (the level's load and compare stay on each path through a call) and at
/// `trace`, and checks the level reaches the verifier (`trace` costs more).
#[test]
fn the_default_daemon_runs_the_programs_built_without_logging() {
    if !privileged("the_default_daemon_runs_the_programs_built_without_logging") {
        return;
    }
    let kernel = loader::prepare().unwrap();
    let count = |object: &[u8], log| -> BTreeMap<String, Option<u32>> {
        let counts = loader::verified_instructions(object, &kernel, log).unwrap();
        counts.into_iter().map(|(name, n)| (kernel_name(&name), n)).collect()
    };
    let no_log = count(loader::OBJECT_NO_LOG, KernelLog::Off);
    let (off, trace) = (
        count(loader::OBJECT, KernelLog::Off),
        count(loader::OBJECT, KernelLog::Trace),
    );
    let d = Daemon::start(BIN, &[]);
    let ids = program_ids(d.pid());
    let daemon: BTreeMap<String, Option<u32>> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| ids.contains(&u64::from(p.id())))
        .map(|p| {
            (
                p.name_as_str().unwrap_or_default().to_string(),
                p.verified_instruction_count(),
            )
        })
        .collect();
    assert_eq!(d.stop(), Some(0));
    let show = |c: Option<&Option<u32>>| c.copied().flatten().map_or("-".into(), |n| n.to_string());
    eprintln!(
        "{:<16} {:>8} {:>8} {:>10} {:>10}",
        "program", "no-log", "daemon", "log: off", "log: trace"
    );
    for (name, n) in &no_log {
        let (d, o, t) = (show(daemon.get(name)), show(off.get(name)), show(trace.get(name)));
        eprintln!("{name:<16} {:>8} {d:>8} {o:>10} {t:>10}", show(Some(n)));
    }
    assert!(!daemon.is_empty());
    for (name, n) in &daemon {
        assert!(
            n.is_some(),
            "{name}: this kernel reports no verified instruction count (5.16+)"
        );
        assert_eq!(no_log.get(name), Some(n), "{name}");
    }
    assert!(
        off.iter().any(|(name, o)| trace[name] > *o),
        "the level does not reach the verifier"
    );
}

/// `--test-unknown-family` makes every refused connect meet a socket of an unknown family, a
/// condition the programs log at `warn`: each one reaches the daemon's log once, under the
/// programs' target.
#[test]
fn a_provoked_condition_is_logged_once_per_occurrence() {
    if !privileged("a_provoked_condition_is_logged_once_per_occurrence") {
        return;
    }
    // Picked before the daemon starts: picking one listens on it, and a listener's family is
    // read (and logged) too.
    let (port, marker) = (closed_port(), closed_port());
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
