//! Rendering kernel values as Prometheus label values. Pure functions, and [`Interned`], which
//! resolves each distinct value once.
use std::{
    net::{IpAddr, Ipv6Addr},
    sync::Arc,
};

pub const OTHER: &str = "other";

use foldhash::HashMap;

/// A resolved label value, shared: every series and target naming the same workload or comm
/// points at one allocation, and clones cost a reference count.
pub type Label = Arc<str>;

/// Label values resolved once and reused by every collection: the same comms and errnos recur
/// on every key of every map, every 250 ms. Bounded by the distinct raw values.
#[derive(Debug, Default)]
pub struct Interned {
    comms: HashMap<[u8; 16], Label>,
    errnos: HashMap<u16, Label>,
}

impl Interned {
    pub fn comm(&mut self, raw: &[u8; 16]) -> Label {
        self.comms.entry(*raw).or_insert_with(|| comm(raw).into()).clone()
    }

    pub fn errno(&mut self, e: u16) -> Label {
        self.errnos.entry(e).or_insert_with(|| errno(e).into()).clone()
    }
}

/// Canonical text form of a 16-byte address; IPv4-mapped IPv6 prints as IPv4.
pub fn addr(bytes: [u8; 16]) -> String {
    canonical_ip(bytes).to_string()
}

pub fn canonical_ip(bytes: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(bytes);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// `task_struct.comm` up to its NUL; empty (an owner the agent never saw) is `unknown`.
pub fn comm(raw: &[u8]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    if end == 0 {
        return "unknown".into();
    }
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

pub fn proto(p: u8) -> &'static str {
    match p {
        agent_common::proto::UDP => "udp",
        _ => "tcp",
    }
}

/// TCP state names as `include/net/tcp_states.h` spells them, lower case.
pub fn tcp_state(s: u8) -> &'static str {
    match s {
        1 => "established",
        2 => "syn_sent",
        3 => "syn_recv",
        4 => "fin_wait1",
        5 => "fin_wait2",
        6 => "time_wait",
        7 => "close",
        8 => "close_wait",
        9 => "last_ack",
        10 => "listen",
        11 => "closing",
        12 => "new_syn_recv",
        13 => "bound_inactive",
        _ => "unknown",
    }
}

/// Symbolic errno name (`ECONNREFUSED`); unknown values as `E<number>`.
pub fn errno(e: u16) -> String {
    let name = match e {
        1 => "EPERM",
        4 => "EINTR",
        11 => "EAGAIN",
        12 => "ENOMEM",
        13 => "EACCES",
        22 => "EINVAL",
        32 => "EPIPE",
        71 => "EPROTO",
        90 => "EMSGSIZE",
        92 => "ENOPROTOOPT",
        97 => "EAFNOSUPPORT",
        98 => "EADDRINUSE",
        99 => "EADDRNOTAVAIL",
        100 => "ENETDOWN",
        101 => "ENETUNREACH",
        102 => "ENETRESET",
        103 => "ECONNABORTED",
        104 => "ECONNRESET",
        105 => "ENOBUFS",
        110 => "ETIMEDOUT",
        111 => "ECONNREFUSED",
        112 => "EHOSTDOWN",
        113 => "EHOSTUNREACH",
        125 => "ECANCELED",
        _ => return format!("E{e}"),
    };
    name.into()
}

/// Appends `v` with `\`, newline and (in label values) `"` escaped.
pub fn escape(out: &mut String, v: &str, quote: bool) {
    let special = |b: u8| b == b'\\' || b == b'\n' || (quote && b == b'"');
    if !v.bytes().any(special) {
        out.push_str(v);
        return;
    }
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn ipv4_mapped_prints_as_ipv4() {
        let mut b = [0u8; 16];
        b[10] = 0xff;
        b[11] = 0xff;
        b[12..].copy_from_slice(&[10, 0, 0, 7]);
        assert_eq!(addr(b), "10.0.0.7");
    }

    #[test]
    fn ipv6_is_canonical() {
        let ip: Ipv6Addr = "fd00:0:0:0:0:0:0:7".parse().unwrap();
        assert_eq!(addr(ip.octets()), "fd00::7");
        assert_eq!(addr(Ipv6Addr::LOCALHOST.octets()), "::1");
    }

    #[test]
    fn comm_stops_at_nul_and_names_unknown() {
        assert_eq!(comm(b"curl\0\0\0\0\0\0\0\0\0\0\0\0"), "curl");
        assert_eq!(comm(&[0; 16]), "unknown");
        assert_eq!(comm(b"0123456789abcdef"), "0123456789abcdef");
    }

    #[test]
    fn interned_values_are_shared() {
        let mut i = Interned::default();
        let a = i.comm(b"curl\0\0\0\0\0\0\0\0\0\0\0\0");
        let b = i.comm(b"curl\0\0\0\0\0\0\0\0\0\0\0\0");
        assert_eq!(&*a, "curl");
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(&*i.errno(111), "ECONNREFUSED");
        assert!(Arc::ptr_eq(&i.errno(9999), &i.errno(9999)));
    }

    #[test]
    fn tcp_state_names() {
        assert_eq!(tcp_state(1), "established");
        assert_eq!(tcp_state(2), "syn_sent");
        assert_eq!(tcp_state(8), "close_wait");
        assert_eq!(tcp_state(200), "unknown");
    }

    #[test]
    fn errno_names() {
        assert_eq!(errno(111), "ECONNREFUSED");
        assert_eq!(errno(110), "ETIMEDOUT");
        assert_eq!(errno(113), "EHOSTUNREACH");
        assert_eq!(errno(101), "ENETUNREACH");
        assert_eq!(errno(104), "ECONNRESET");
        assert_eq!(errno(9999), "E9999");
    }

    proptest! {
        #[test]
        fn addr_round_trips(bytes in any::<[u8; 16]>()) {
            let text = addr(bytes);
            let parsed: IpAddr = text.parse().unwrap();
            let back = match parsed {
                IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                IpAddr::V6(v6) => v6.octets(),
            };
            prop_assert_eq!(back, bytes);
        }
    }
}
