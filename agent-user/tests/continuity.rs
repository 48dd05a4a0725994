//! Restart continuity and least privilege, against the real daemon and kernel: pinned maps and
//! links count through a SIGKILL and a planned restart with not one refusal lost or doubled, one
//! daemon per pin directory, and after attaching the daemon keeps only the capabilities it needs.
use std::{
    net::TcpStream,
    path::PathBuf,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::Duration,
};

use testkit::{
    Cgroup, Daemon, as_comm, closed_port, metrics::FAILURES, pin_dir, privileged, program_ids, programs_gone, value,
    wait_value,
};

const BIN: &str = env!("CARGO_BIN_EXE_refusal-agent");

/// A pin directory the test shares between daemons, removed at the end (which detaches
/// anything still pinned there).
struct Pins(PathBuf);

impl Pins {
    fn new(name: &str) -> Pins {
        Pins(pin_dir(name))
    }

    fn arg(&self) -> &str {
        self.0.to_str().unwrap()
    }

    fn links(&self) -> usize {
        std::fs::read_dir(self.0.join("links")).map_or(0, |d| d.count())
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Refused connects to `port` from a thread named `comm`, one every 2 ms until stopped.
struct Refuser {
    stop: Arc<AtomicBool>,
    made: Arc<AtomicU64>,
    thread: thread::JoinHandle<()>,
}

impl Refuser {
    fn start(comm: &str, port: u16) -> Refuser {
        let (stop, made) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let (s, m) = (stop.clone(), made.clone());
        let thread = thread::Builder::new()
            .name(comm.into())
            .spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    let e = TcpStream::connect(("127.0.0.1", port)).unwrap_err();
                    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
                    m.fetch_add(1, Ordering::Relaxed);
                    thread::sleep(Duration::from_millis(2));
                }
            })
            .unwrap();
        Refuser { stop, made, thread }
    }

    fn made(&self) -> u64 {
        self.made.load(Ordering::Relaxed)
    }

    /// Waits until `more` refusals beyond now have been made.
    fn wait_more(&self, more: u64) {
        let want = self.made() + more;
        while self.made() < want {
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
        self.made.load(Ordering::Relaxed)
    }
}

fn refuse(comm: &str, port: u16, n: usize) {
    as_comm(comm, move || {
        for _ in 0..n {
            TcpStream::connect(("127.0.0.1", port)).unwrap_err();
        }
    });
}

/// `maps_reused=N` from the daemon's startup log.
fn maps_reused(log: &str) -> usize {
    log.split("maps_reused=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no maps_reused in the log:\n{log}"))
}

fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

#[test]
fn sigkill_while_refusals_continue_then_restart_counts_every_one() {
    if !privileged("sigkill_while_refusals_continue_then_restart_counts_every_one") {
        return;
    }
    let pins = Pins::new("sigkill");
    let port = closed_port();
    let first = Daemon::start(BIN, &["--pin-dir", pins.arg()]);
    assert_eq!(maps_reused(&first.log()), 0);
    let refuser = Refuser::start("killedloop", port);
    refuser.wait_more(200);
    first.signal(9);
    drop(first);
    // The pinned programs count while no daemon runs.
    assert!(pins.links() > 0);
    refuser.wait_more(200);
    let second = Daemon::start(BIN, &["--pin-dir", pins.arg()]);
    let pinned_maps = std::fs::read_dir(pins.0.join("maps")).unwrap().count();
    assert_eq!(maps_reused(&second.log()), pinned_maps);
    refuser.wait_more(200);
    let made = refuser.finish();
    let port_s = port.to_string();
    let labels = [
        ("comm", "killedloop"),
        ("dst_port", port_s.as_str()),
        ("errno", "ECONNREFUSED"),
    ];
    assert_eq!(wait_value(&second, FAILURES, &labels, made as f64), made as f64);
    // Nothing trickles in after the count matched: the handoff counted nothing twice.
    thread::sleep(Duration::from_millis(600));
    assert_eq!(value(&second.metrics(), FAILURES, &labels), made as f64);
    assert_eq!(second.stop(), Some(0));
    assert!(!pins.0.exists(), "a clean stop removes {}", pins.0.display());
}

#[test]
fn keep_pins_counts_across_a_planned_restart_and_a_plain_stop_detaches() {
    if !privileged("keep_pins_counts_across_a_planned_restart_and_a_plain_stop_detaches") {
        return;
    }
    let pins = Pins::new("keep");
    let port = closed_port();
    let port_s = port.to_string();
    let labels = [("comm", "plannedloop"), ("dst_port", port_s.as_str())];
    let mut first = Daemon::start(BIN, &["--pin-dir", pins.arg(), "--keep-pins"]);
    let first_programs = program_ids(first.pid());
    refuse("plannedloop", port, 50);
    assert_eq!(wait_value(&first, FAILURES, &labels, 50.0), 50.0);
    first.signal(15);
    assert_eq!(first.wait_exit(Duration::from_secs(2)), Some(0));
    assert_eq!(pins.links(), first_programs.len(), "every program stays attached");
    refuse("plannedloop", port, 40);
    let mut second = Daemon::start(BIN, &["--pin-dir", pins.arg()]);
    let second_programs = program_ids(second.pid());
    // The predecessor's programs went when the new ones took over.
    assert!(programs_gone(&first_programs), "predecessor's programs left attached");
    refuse("plannedloop", port, 10);
    assert_eq!(wait_value(&second, FAILURES, &labels, 100.0), 100.0);
    second.signal(15);
    assert_eq!(second.wait_exit(Duration::from_secs(2)), Some(0));
    assert!(!pins.0.exists());
    assert!(programs_gone(&second_programs), "programs left attached");
}

#[test]
fn a_second_daemon_on_the_same_pins_exits_1_and_the_first_keeps_counting() {
    if !privileged("a_second_daemon_on_the_same_pins_exits_1_and_the_first_keeps_counting") {
        return;
    }
    let pins = Pins::new("busy");
    let mut first = Daemon::start(BIN, &["--pin-dir", pins.arg()]);
    let out = Command::new(BIN)
        .args(["run", "--listen", "127.0.0.1:0", "--pin-dir", pins.arg()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("held by another running refusal-agent"), "{err}");
    assert!(first.alive());
    let port = closed_port();
    let port_s = port.to_string();
    refuse("busyloop", port, 7);
    let labels = [("comm", "busyloop"), ("dst_port", port_s.as_str())];
    assert_eq!(wait_value(&first, FAILURES, &labels, 7.0), 7.0);
}

#[test]
fn after_attaching_it_runs_as_the_user_with_two_capabilities_and_still_counts() {
    if !privileged("after_attaching_it_runs_as_the_user_with_two_capabilities_and_still_counts") {
        return;
    }
    let pins = Pins::new("user");
    let mut d = Daemon::start(BIN, &["--pin-dir", pins.arg(), "--user", "nobody"]);
    let pid = d.pid();
    assert_eq!(status_field(pid, "Uid:"), "65534\t65534\t65534\t65534");
    assert_eq!(status_field(pid, "Gid:"), "65534\t65534\t65534\t65534");
    // CAP_BPF (39) and CAP_DAC_READ_SEARCH (2), in every set.
    for set in ["CapEff:", "CapPrm:", "CapBnd:"] {
        assert_eq!(status_field(pid, set), "0000008000000004", "{set}");
    }
    assert_eq!(status_field(pid, "CapInh:"), "0000000000000000");
    assert_eq!(status_field(pid, "NoNewPrivs:"), "1");
    // A cgroup made after the drop still gets its workload name (open_by_handle_at).
    let cg = Cgroup::new("refusal-test.slice/refusal-test-priv.service");
    let port = closed_port();
    cg.run(&format!("curl -s http://127.0.0.1:{port}/[1-6]"));
    let port_s = port.to_string();
    let labels = [
        ("workload", "service:refusal-test-priv.service"),
        ("comm", "curl"),
        ("dst_port", port_s.as_str()),
    ];
    assert_eq!(wait_value(&d, FAILURES, &labels, 6.0), 6.0);
    // The process collector still reads the daemon's own /proc entries as that user.
    let m = d.metrics();
    assert!(value(&m, "process_open_fds", &[]) > 3.0, "{m}");
    assert!(value(&m, "process_resident_memory_bytes", &[]) > 1e6, "{m}");
    // The pins were handed to the user, so the unprivileged daemon can remove them.
    d.signal(15);
    assert_eq!(d.wait_exit(Duration::from_secs(2)), Some(0));
    assert!(
        !pins.0.join("links").exists() && !pins.0.join("maps").exists(),
        "nothing stays pinned"
    );
}

#[test]
fn without_user_it_stays_root_but_drops_every_other_capability() {
    if !privileged("without_user_it_stays_root_but_drops_every_other_capability") {
        return;
    }
    let d = Daemon::start(BIN, &[]);
    assert_eq!(status_field(d.pid(), "Uid:"), "0\t0\t0\t0");
    assert_eq!(status_field(d.pid(), "CapEff:"), "0000008000000004");
    assert_eq!(d.stop(), Some(0));
}

#[test]
fn unknown_user_and_relative_pin_dir_exit_2_naming_the_key() {
    for (args, key) in [
        (&["--user", "no-such-user-here"][..], "`user`"),
        (&["--pin-dir", "relative/pins"][..], "`pin_dir`"),
    ] {
        let out = Command::new(BIN)
            .args(["run", "--listen", "127.0.0.1:0"])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key), "{args:?}: {err}");
    }
}
