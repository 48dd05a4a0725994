//! The foundation slice end to end: the real daemon, real refused connects, a real scrape.
use std::{net::TcpStream, process::Command, time::Duration};

use testkit::{
    Daemon, closed_port, get, loaded_programs,
    metrics::{BUILD_INFO, FAILURES, PROBE_ATTACHED},
    pin_dir, privileged, program_ids, programs_gone, sh, value, wait_value,
};

const BIN: &str = env!("CARGO_BIN_EXE_refusal-agent");

#[test]
fn curl_refusals_are_counted_exactly_and_attributed() {
    if !privileged("curl_refusals_are_counted_exactly_and_attributed") {
        return;
    }
    let d = Daemon::start(BIN, &[]);
    let port = closed_port();
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "--connect-timeout", "2"])
        .arg(format!("http://127.0.0.1:{port}/[1-500]"))
        .output()
        .expect("run curl");
    assert_eq!(out.status.code(), Some(7), "curl should fail to connect: {out:?}");
    let port_s = port.to_string();
    let labels = [
        ("comm", "curl"),
        ("dst_addr", "127.0.0.1"),
        ("dst_port", port_s.as_str()),
        ("errno", "ECONNREFUSED"),
        ("proto", "tcp"),
    ];
    assert_eq!(wait_value(&d, FAILURES, &labels, 500.0), 500.0);
    // Nothing else was attributed to that port.
    assert_eq!(value(&d.metrics(), FAILURES, &[("dst_port", port_s.as_str())]), 500.0);
    assert_eq!(d.stop(), Some(0));
}

#[test]
fn own_client_refusals_ipv4_and_ipv6_with_comm() {
    if !privileged("own_client_refusals_ipv4_and_ipv6_with_comm") {
        return;
    }
    let d = Daemon::start(BIN, &[]);
    let port = closed_port();
    std::thread::Builder::new()
        .name("refclient".into())
        .spawn(move || {
            for _ in 0..37 {
                let e = TcpStream::connect(("127.0.0.1", port)).unwrap_err();
                assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
            }
            for _ in 0..5 {
                let e = TcpStream::connect(("::1", port)).unwrap_err();
                assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
            }
        })
        .unwrap()
        .join()
        .unwrap();
    let port_s = port.to_string();
    let v4 = [
        ("comm", "refclient"),
        ("dst_addr", "127.0.0.1"),
        ("dst_port", port_s.as_str()),
        ("errno", "ECONNREFUSED"),
    ];
    let v6 = [
        ("comm", "refclient"),
        ("dst_addr", "::1"),
        ("dst_port", port_s.as_str()),
        ("errno", "ECONNREFUSED"),
    ];
    assert_eq!(wait_value(&d, FAILURES, &v4, 37.0), 37.0);
    assert_eq!(wait_value(&d, FAILURES, &v6, 5.0), 5.0);
}

#[test]
fn successful_connects_are_not_failures() {
    if !privileged("successful_connects_are_not_failures") {
        return;
    }
    let d = Daemon::start(BIN, &[]);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    for _ in 0..20 {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (_peer, _) = listener.accept().unwrap();
        drop(s);
    }
    // A refused connect afterwards proves the daemon was counting all along.
    let closed = closed_port();
    let _ = TcpStream::connect_timeout(&([127, 0, 0, 1], closed).into(), Duration::from_secs(1)).unwrap_err();
    let closed_s = closed.to_string();
    assert_eq!(wait_value(&d, FAILURES, &[("dst_port", closed_s.as_str())], 1.0), 1.0);
    assert_eq!(
        value(&d.metrics(), FAILURES, &[("dst_port", port.to_string().as_str())]),
        0.0
    );
}

#[test]
fn endpoints_and_self_metrics() {
    if !privileged("endpoints_and_self_metrics") {
        return;
    }
    let d = Daemon::start(BIN, &[]);
    assert_eq!(get(d.addr, "/healthz").unwrap(), (200, "ok\n".into()));
    assert_eq!(get(d.addr, "/readyz").unwrap().0, 200);
    assert_eq!(get(d.addr, "/nope").unwrap().0, 404);
    let m = d.metrics();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(
        value(
            &m,
            BUILD_INFO,
            &[
                ("kernel", kernel.trim()),
                ("version", env!("CARGO_PKG_VERSION")),
                ("revision", &git_head()),
            ]
        ),
        1.0
    );
    // Exactly one mode per hook is in use, and on this kernel it is tp_btf (fentry is refused
    // under lockdown, kprobes are absent).
    for hook in ["state", "connect"] {
        assert_eq!(value(&m, PROBE_ATTACHED, &[("hook", hook)]), 1.0, "{hook}\n{m}");
    }
    assert_eq!(value(&m, PROBE_ATTACHED, &[("hook", "state"), ("mode", "tp_btf")]), 1.0);
    let log = d.log();
    assert!(log.contains("hook attached"), "{log}");
}

#[test]
fn forced_tracepoint_mode_counts_the_same() {
    if !privileged("forced_tracepoint_mode_counts_the_same") {
        return;
    }
    let d = Daemon::start(BIN, &["--attach", "tracepoint"]);
    let m = d.metrics();
    assert_eq!(
        value(&m, PROBE_ATTACHED, &[("hook", "state"), ("mode", "tracepoint")]),
        1.0,
        "{m}"
    );
    assert_eq!(
        value(&m, PROBE_ATTACHED, &[("hook", "connect"), ("mode", "tracepoint")]),
        1.0,
        "{m}"
    );
    let port = closed_port();
    std::thread::Builder::new()
        .name("tpclient".into())
        .spawn(move || {
            for _ in 0..11 {
                TcpStream::connect(("127.0.0.1", port)).unwrap_err();
            }
        })
        .unwrap()
        .join()
        .unwrap();
    let port_s = port.to_string();
    assert_eq!(
        wait_value(
            &d,
            FAILURES,
            &[("comm", "tpclient"), ("dst_port", port_s.as_str())],
            11.0
        ),
        11.0
    );
}

#[test]
fn forcing_an_unavailable_mode_exits_1_naming_it() {
    if !privileged("forcing_an_unavailable_mode_exits_1_naming_it") {
        return;
    }
    // fentry is refused by this kernel's lockdown (TOOLCHAIN.md).
    let pins = pin_dir("forced-fentry");
    let out = Command::new(BIN)
        .args(["run", "--listen", "127.0.0.1:0", "--attach", "fentry", "--pin-dir"])
        .arg(&pins)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("forced attach mode fentry failed"), "{err}");
    // A start that failed leaves nothing pinned.
    assert!(!pins.exists(), "{} left behind", pins.display());
}

#[test]
fn bad_configuration_exits_2_naming_the_key() {
    // (flags, TOML file or "", what the message must name, the accepted form it must show)
    let table: &[(&[&str], &str, &str, &str)] = &[
        (&["--min-attempts", "zero"], "", "--min-attempts", "invalid digit"),
        (&["--listen", "nope"], "", "--listen", "socket address"),
        (
            &["--attach", "bogus"],
            "",
            "--attach",
            "auto, fentry, kprobe, tp_btf, tracepoint",
        ),
        (&["--log-format", "xml"], "", "--log-format", "text, json"),
        (&["--cold-start-max", "soon"], "", "--cold-start-max", "e.g. 90s"),
        (&["--max-series", "0"], "", "`max_series`", "at least 1"),
        (&["--flap-episodes", "1"], "", "`flap_episodes`", "at least 2"),
        (&["--forget-after", "0s"], "", "`forget_after`", "longer than 0s"),
        (&[], "persistent_after = \"forever\"\n", "persistent_after", "e.g. 90s"),
        (
            &[],
            "listn = \"0.0.0.0:1\"\n",
            "unknown field `listn`",
            "expected one of",
        ),
        (&[], "min_attempts = \"three\"\n", "min_attempts", "expected u64"),
        (&[], "keep_pins = \"yes\"\n", "keep_pins", "boolean"),
        (&[], "connect_sync = 1\n", "connect_sync", "boolean"),
        (&["--pin-dir", "pins"], "", "`pin_dir`", "absolute"),
        (&["--user", ""], "", "`user`", "user name or a numeric uid"),
        (&["--host-root", "host"], "", "`host_root`", "absolute"),
        (&[], "host_root = \"/no/such/root\"\n", "`host_root`", "not a directory"),
    ];
    let dir = std::env::temp_dir().join(format!("refusal-badcfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (i, (flags, file, key, form)) in table.iter().enumerate() {
        let mut cmd = Command::new(BIN);
        cmd.arg("run").args(*flags);
        if !flags.contains(&"--listen") {
            // Should a case ever be accepted, the daemon must not take the real port.
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        if !file.is_empty() {
            let path = dir.join(format!("bad{i}.toml"));
            std::fs::write(&path, file).unwrap();
            cmd.arg("--config").arg(path);
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flags:?} {file:?}: {err}");
        assert!(err.contains(key) && err.contains(form), "{flags:?} {file:?}: {err}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn unprivileged_start_exits_1_naming_the_capability() {
    if !privileged("unprivileged_start_exits_1_naming_the_capability") {
        return;
    }
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            BIN,
        ])
        .args(["run", "--listen", "127.0.0.1:0"])
        .output()
        .expect("setpriv (util-linux)");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing capability CAP_BPF"), "{err}");
}

#[test]
fn sigterm_exits_0_within_2s_and_leaves_no_program_behind() {
    if !privileged("sigterm_exits_0_within_2s_and_leaves_no_program_behind") {
        return;
    }
    let mut d = Daemon::start(BIN, &[]);
    let ours = program_ids(d.pid());
    // The four programs attached on this kernel (state, which also tells RSTs received,
    // error_report, send_reset, oom; connect_sync is opt-in); refused modes leave nothing loaded.
    assert_eq!(ours.len(), 4, "{ours:?}");
    assert!(ours.is_subset(&loaded_programs()));
    sh(&format!("kill -TERM {}", d.pid()));
    assert_eq!(
        d.wait_exit(Duration::from_secs(2)),
        Some(0),
        "SIGTERM must end the daemon within 2 s, with 0"
    );
    assert!(
        programs_gone(&ours),
        "programs left loaded: {:?}",
        ours.intersection(&loaded_programs()).collect::<Vec<_>>()
    );
}

/// The revision the build script stamps: the checkout's HEAD (tests run from a git checkout).
fn git_head() -> String {
    let out = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("git");
    assert!(out.status.success(), "git rev-parse HEAD failed");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn version_names_the_release_and_the_git_revision() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "refusal-agent {} (revision {})\n",
            env!("CARGO_PKG_VERSION"),
            git_head()
        )
    );
}
