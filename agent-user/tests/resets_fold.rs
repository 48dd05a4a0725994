//! Resets received past a full kernel map keep their process: the destination folds, the
//! process stays. Alone in its own test binary: every daemon sees every connection on the host,
//! and another test's traffic would take keys of the map this one fills.
use std::{
    net::{Ipv4Addr, TcpListener, TcpStream},
    time::Duration,
};

use testkit::{
    Daemon, as_comm, linger_zero,
    metrics::{EVENTS_DROPPED, RESETS_RECEIVED},
    privileged, value,
};

const BIN: &str = env!("CARGO_BIN_EXE_refusal-agent");
/// `RESETS_RECEIVED`'s entries (agent-ebpf/src/maps.rs).
const MAP_ENTRIES: usize = 8192;
const FOLDED: usize = 300;

#[test]
fn resets_past_a_full_map_keep_their_process() {
    if !privileged("resets_past_a_full_map_keep_their_process") {
        return;
    }
    let d = Daemon::start(BIN, &[]);
    // One listener takes every loopback address; each accepted connection is aborted (linger
    // 0), so its client receives a RST in ESTABLISHED from a destination of its own.
    let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let n = MAP_ENTRIES + FOLDED;
    let server = std::thread::spawn(move || {
        for _ in 0..n {
            let (s, _) = listener.accept().unwrap();
            linger_zero(&s).unwrap();
        }
    });
    let reset = as_comm("resetter", move || {
        (0..n as u32)
            .filter(|i| {
                let a = Ipv4Addr::new(127, 3, (i >> 8) as u8, *i as u8);
                // The server's abort arrives as a RST in ESTABLISHED: the read fails with
                // ECONNRESET, or connect(2) does when the RST came before it returned.
                let reset = |e: &std::io::Error| e.kind() == std::io::ErrorKind::ConnectionReset;
                match TcpStream::connect((a, port)) {
                    Ok(mut s) => {
                        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                        std::io::Read::read(&mut s, &mut [0u8; 1]).is_err_and(|e| reset(&e))
                    }
                    Err(e) => reset(&e),
                }
            })
            .count()
    });
    server.join().unwrap();
    assert_eq!(reset, n);
    std::thread::sleep(Duration::from_millis(600));
    let m = d.metrics();
    let mine = [("comm", "resetter"), ("state", "established")];
    assert_eq!(
        value(&m, RESETS_RECEIVED, &mine),
        n as f64,
        "every reset, with its process"
    );
    assert_eq!(
        value(
            &m,
            RESETS_RECEIVED,
            &[&mine[..], &[("dst_addr", "other"), ("dst_port", "other")]].concat()
        ),
        FOLDED as f64,
        "the resets past the full map, destination folded"
    );
    assert_eq!(value(&m, RESETS_RECEIVED, &[("comm", "other")]), 0.0);
    assert_eq!(value(&m, EVENTS_DROPPED, &[("where", "reset_map_full")]), FOLDED as f64);
}
