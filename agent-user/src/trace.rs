//! `refusal-agent trace`: a live stream of individual events. Loads its own copy of the
//! programs with event emission on (the daemon's never emit) and drains the ring buffer on a
//! timer: the programs never wake anyone per event.
use std::{
    collections::BTreeMap,
    io::Write,
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use agent_common::{Event, event_kind, names};
use aya::maps::RingBuf;
use serde::Serialize;

use crate::{collector::monotonic_ns, config::AttachMode, labels, loader, workload::CgroupResolver};

const DRAIN_EVERY: Duration = Duration::from_millis(100);

#[derive(Debug, PartialEq, Serialize)]
pub struct Line {
    /// Unix time in seconds.
    pub time: f64,
    pub kind: &'static str,
    pub pid: u32,
    pub comm: String,
    pub workload: String,
    pub proto: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errno: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_port: Option<u16>,
}

/// Decodes one event. `realtime_offset_ns` turns the kernel's monotonic time into Unix time.
pub fn line(ev: &Event, workload: String, reasons: &BTreeMap<u32, String>, realtime_offset_ns: i128) -> Line {
    let time = (i128::from(ev.ts_ns) + realtime_offset_ns) as f64 / 1e9;
    let mut l = Line {
        time,
        kind: "unknown",
        pid: ev.tgid,
        comm: labels::comm(&ev.comm),
        workload,
        proto: labels::proto(ev.proto),
        dst_addr: None,
        dst_port: None,
        errno: None,
        state: None,
        reason: None,
        local_addr: None,
        local_port: None,
        peer_addr: None,
        peer_port: None,
    };
    let dst = |l: &mut Line| {
        l.dst_addr = Some(labels::addr(ev.daddr));
        l.dst_port = Some(ev.dport);
    };
    match ev.kind {
        event_kind::CONNECT_FAILED => {
            l.kind = "connect_failed";
            dst(&mut l);
            l.errno = Some(labels::errno(ev.code));
        }
        event_kind::RESET_RECEIVED => {
            l.kind = "reset_received";
            dst(&mut l);
            l.state = Some(labels::tcp_state(ev.code as u8));
        }
        event_kind::RESET_SENT => {
            l.kind = "reset_sent";
            let code = u32::from(ev.code);
            l.reason = Some(reasons.get(&code).cloned().unwrap_or_else(|| format!("reason_{code}")));
        }
        event_kind::INBOUND_REFUSED => {
            l.kind = "inbound_refused";
            l.local_addr = Some(labels::addr(ev.daddr));
            l.local_port = Some(ev.dport);
            l.peer_addr = Some(labels::addr(ev.saddr));
            l.peer_port = Some(ev.sport);
        }
        _ => {}
    }
    l
}

pub fn text(l: &Line) -> String {
    let mut out = format!(
        "{:.3} {:<15} pid={} comm={} workload={} {}",
        l.time, l.kind, l.pid, l.comm, l.workload, l.proto
    );
    let addr = |a: &str, p: u16| {
        if a.contains(':') {
            format!("[{a}]:{p}")
        } else {
            format!("{a}:{p}")
        }
    };
    if let (Some(a), Some(p)) = (&l.dst_addr, l.dst_port) {
        out += &format!(" dst={}", addr(a, p));
    }
    if let (Some(a), Some(p)) = (&l.local_addr, l.local_port) {
        out += &format!(" local={}", addr(a, p));
    }
    if let (Some(a), Some(p)) = (&l.peer_addr, l.peer_port) {
        out += &format!(" peer={}", addr(a, p));
    }
    for (k, v) in [
        ("errno", l.errno.as_deref()),
        ("state", l.state),
        ("reason", l.reason.as_deref()),
    ] {
        if let Some(v) = v {
            out += &format!(" {k}={v}");
        }
    }
    out
}

fn realtime_offset_ns() -> i128 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    now.as_nanos() as i128 - i128::from(monotonic_ns())
}

pub fn run(attach: AttachMode, opt_in: &[&str], json: bool) -> ExitCode {
    let result = (|| -> Result<(), String> {
        let kernel = loader::prepare().map_err(|e| e.to_string())?;
        let mut loaded =
            loader::load_and_attach(&kernel, attach, opt_in, loader::Flavor::Trace, None).map_err(|e| e.to_string())?;
        let map = loaded.ebpf.take_map(names::EVENTS).ok_or("EVENTS map missing")?;
        let mut ring = RingBuf::try_from(map).map_err(|e| e.to_string())?;
        let mut resolver = CgroupResolver::new().ok();
        let stop = Arc::new(AtomicBool::new(false));
        for sig in [libc::SIGINT, libc::SIGTERM] {
            signal_flag(sig, &stop)?;
        }
        let offset = realtime_offset_ns();
        let mut out = std::io::stdout().lock();
        eprintln!("tracing; Ctrl-C to stop");
        while !stop.load(Ordering::Relaxed) {
            while let Some(item) = ring.next() {
                if item.len() < size_of::<Event>() {
                    continue;
                }
                // SAFETY: the kernel wrote a whole `Event` (checked length); read unaligned.
                let ev: Event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                let workload = match resolver.as_mut() {
                    Some(r) => r.workload(ev.cgroup_id),
                    None => format!("cgroup:{}", ev.cgroup_id),
                };
                let l = line(&ev, workload, &kernel.resolved.rst_reasons, offset);
                let text = if json {
                    serde_json::to_string(&l).unwrap_or_default()
                } else {
                    text(&l)
                };
                if writeln!(out, "{text}").and_then(|_| out.flush()).is_err() {
                    return Ok(()); // stdout closed (piped into head): done.
                }
            }
            std::thread::sleep(DRAIN_EVERY);
        }
        Ok(())
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("refusal-agent trace: {e}");
            ExitCode::from(1)
        }
    }
}

static STOP: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();

extern "C" fn on_signal(_: libc::c_int) {
    if let Some(s) = STOP.get() {
        s.store(true, Ordering::Relaxed);
    }
}

/// Sets `flag` on `sig`: Ctrl-C ends the loop and the programs detach on drop.
fn signal_flag(sig: libc::c_int, flag: &Arc<AtomicBool>) -> Result<(), String> {
    let _ = STOP.set(flag.clone());
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    let prev = unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    if prev == libc::SIG_ERR {
        Err(format!("installing a handler for signal {sig}"))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_each_kind() {
        let mut ev = Event {
            ts_ns: 2_000_000_000,
            tgid: 42,
            kind: event_kind::CONNECT_FAILED,
            proto: 6,
            code: 111,
            dport: 8080,
            ..Event::default()
        };
        ev.comm[..4].copy_from_slice(b"curl");
        ev.daddr = std::net::Ipv4Addr::new(10, 0, 0, 7).to_ipv6_mapped().octets();
        let l = line(&ev, "/".into(), &BTreeMap::new(), 1_000_000_000);
        assert_eq!(l.time, 3.0);
        assert_eq!(
            text(&l),
            "3.000 connect_failed  pid=42 comm=curl workload=/ tcp dst=10.0.0.7:8080 errno=ECONNREFUSED"
        );
        let json = serde_json::to_value(&l).unwrap();
        assert_eq!(json["errno"], "ECONNREFUSED");
        assert_eq!(json["dst_port"], 8080);
        assert!(json.get("reason").is_none());

        let reasons = BTreeMap::from([(5, "tcp_abort_on_close".to_string())]);
        let sent = Event {
            kind: event_kind::RESET_SENT,
            code: 5,
            ..Event::default()
        };
        assert_eq!(
            line(&sent, "/".into(), &reasons, 0).reason.as_deref(),
            Some("tcp_abort_on_close")
        );
        let inbound = Event {
            kind: event_kind::INBOUND_REFUSED,
            dport: 22,
            sport: 5555,
            ..Event::default()
        };
        let l = line(&inbound, "unknown".into(), &reasons, 0);
        assert_eq!(
            (l.kind, l.local_port, l.peer_port),
            ("inbound_refused", Some(22), Some(5555))
        );
        let rcv = Event {
            kind: event_kind::RESET_RECEIVED,
            code: 1,
            ..Event::default()
        };
        assert_eq!(line(&rcv, "/".into(), &reasons, 0).state, Some("established"));
    }
}
