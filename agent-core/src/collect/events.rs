//! Individual events from the `trace` copy of the programs, and the listener events every copy
//! sends, decoded into what `refusal-agent trace` prints: a text line or one JSON object.
use std::collections::BTreeMap;

use agent_common::{Event, event_kind};
use serde::Serialize;

use crate::collect::{
    labels,
    listening::{Ending, ListenerEvent, signal_name},
};

#[derive(Debug, Default, PartialEq, Serialize)]
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
    /// The network namespace of a listener event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns: Option<u32>,
    /// How the task that closed a listener was ending.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub how: Option<String>,
}

/// Decodes a listener event (`proto` is TCP); times as in [`line`].
pub fn listener_line(ev: &ListenerEvent, realtime_offset_ns: i128) -> Line {
    let time = |at: std::time::Duration| (at.as_nanos() as i128 + realtime_offset_ns) as f64 / 1e9;
    let mut l = Line {
        proto: "tcp",
        ..Line::default()
    };
    let (at, process, local, netns) = match ev {
        ListenerEvent::Started {
            at,
            netns,
            local,
            owner,
        } => {
            l.kind = "listen_started";
            (at, Some(owner), Some(local), Some(netns))
        }
        ListenerEvent::Stopped {
            at,
            netns,
            local,
            by,
            ending,
            ..
        } => {
            l.kind = "listen_stopped";
            l.how = Some(match ending {
                Ending::Alive => "closed".to_string(),
                Ending::Exited { code } => format!("exited with code {code}"),
                Ending::Signaled { signal, .. } => format!("killed by {}", signal_name(*signal)),
            });
            (at, Some(by), Some(local), Some(netns))
        }
        ListenerEvent::OomVictim { at, tgid, pid } => {
            l.kind = "oom_victim";
            l.pid = if *tgid != 0 { *tgid } else { *pid };
            (at, None, None, None)
        }
    };
    l.time = time(*at);
    if let Some(p) = process {
        (l.pid, l.comm, l.workload) = (p.tgid, p.comm.to_string(), p.workload.to_string());
    }
    if let Some(local) = local {
        l.local_addr = Some(local.ip().to_string());
        l.local_port = Some(local.port());
    }
    l.netns = netns.copied();
    l
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
        ..Line::default()
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
    if let Some(ns) = l.netns {
        out += &format!(" netns={ns}");
    }
    for (k, v) in [
        ("errno", l.errno.as_deref()),
        ("state", l.state),
        ("reason", l.reason.as_deref()),
        ("how", l.how.as_deref()),
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

    #[test]
    fn renders_listener_events() {
        let owner = crate::collect::listening::Process {
            tgid: 88,
            comm: "node".into(),
            workload: "service:proxy.service".into(),
        };
        let stopped = ListenerEvent::Stopped {
            at: std::time::Duration::from_secs(2),
            netns: 4026531840,
            local: "0.0.0.0:3000".parse().unwrap(),
            by: owner,
            pid: 88,
            ending: Ending::Exited { code: 1 },
            last_reset: None,
        };
        assert_eq!(
            text(&listener_line(&stopped, 1_000_000_000)),
            "3.000 listen_stopped  pid=88 comm=node workload=service:proxy.service tcp local=0.0.0.0:3000 \
             netns=4026531840 how=exited with code 1"
        );
        let oom = ListenerEvent::OomVictim {
            at: std::time::Duration::from_secs(1),
            tgid: 0,
            pid: 51,
        };
        let l = listener_line(&oom, 0);
        assert_eq!((l.kind, l.pid, l.local_port), ("oom_victim", 51, None));
    }
}
