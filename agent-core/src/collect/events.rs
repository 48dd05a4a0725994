//! Individual events from the `trace` copy of the programs, decoded into what `refusal-agent
//! trace` prints: a text line or one JSON object.
use std::collections::BTreeMap;

use agent_common::{Event, event_kind};
use serde::Serialize;

use crate::collect::labels;

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
