//! Why this host refused a connection: the diagnosis names, and the one made from the addresses
//! of the listeners on the port (`listeners.rs` adds what the listener history says).
use std::net::{IpAddr, SocketAddr};

use crate::collect::sockdiag::canonical;

/// The listeners on `port`, canonical, sorted and deduplicated.
fn on_port(port: u16, listeners: &[SocketAddr]) -> Vec<SocketAddr> {
    let mut found: Vec<SocketAddr> = listeners.iter().map(|l| canonical(*l)).collect();
    found.retain(|l| l.port() == port);
    found.sort();
    found.dedup();
    found
}

/// Why this host answered a SYN with a RST (NO_SOCKET): what its listeners say about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Diagnosis {
    /// Nothing listens, and what listened before is not known.
    NotListening,
    LoopbackOnly,
    WrongAddress,
    /// The last listener was killed by a signal (or the OOM killer).
    ListenerKilled,
    /// The last listener's process exited.
    ListenerExited,
    /// The last listener was closed by its process, which lived on.
    ListenerClosed,
    /// Nothing listened since the agent started, nor when it started.
    NeverListened,
}

impl Diagnosis {
    /// The `diagnosis` label value.
    pub fn name(self) -> &'static str {
        match self {
            Self::NotListening => "not_listening",
            Self::LoopbackOnly => "loopback_only",
            Self::WrongAddress => "wrong_address",
            Self::ListenerKilled => "listener_killed",
            Self::ListenerExited => "listener_exited",
            Self::ListenerClosed => "listener_closed",
            Self::NeverListened => "never_listened",
        }
    }

    /// One sentence a person can act on, naming the listeners that did not match.
    pub fn explain(self, local: SocketAddr, listeners: &[SocketAddr]) -> String {
        let (local, port) = (canonical(local), local.port());
        let same = on_port(port, listeners);
        let names = same.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
        let (subject, one) = match same.len() {
            0 => (format!("the listeners on port {port}"), false),
            1 => (format!("a listener on {names}"), true),
            _ => (format!("listeners on {names}"), false),
        };
        let (accept, be, they) = if one {
            ("accepts", "is", "it does")
        } else {
            ("accept", "are", "they do")
        };
        let ip = local.ip();
        match self {
            Self::NotListening | Self::ListenerKilled | Self::ListenerExited | Self::ListenerClosed => {
                format!("nothing listens on TCP port {port}, so connections to {local} are refused")
            }
            Self::NeverListened => {
                format!("nothing has listened on TCP port {port}, so connections to {local} are refused")
            }
            Self::LoopbackOnly => {
                format!("{subject} {accept} only loopback connections, but this connection arrived on {ip}")
            }
            Self::WrongAddress => {
                format!("{subject} {be} bound to another address, so {they} not accept this connection to {ip}")
            }
        }
    }
}

/// Diagnoses a refused inbound SYN to `local`. `None` when a listener would have accepted it
/// (exact address, `0.0.0.0` for IPv4, or `::`, which without IPV6_V6ONLY accepts IPv4 too): the
/// refusal was then transient, e.g. a full backlog or a listener that appeared since.
pub fn diagnose(local: SocketAddr, listeners: &[SocketAddr]) -> Option<Diagnosis> {
    let local_ip = canonical(local).ip();
    let ips: Vec<IpAddr> = on_port(local.port(), listeners).iter().map(SocketAddr::ip).collect();
    let accepts = |ip: &IpAddr| *ip == local_ip || (ip.is_unspecified() && (ip.is_ipv6() || local_ip.is_ipv4()));
    if ips.is_empty() {
        Some(Diagnosis::NotListening)
    } else if ips.iter().any(accepts) {
        None
    } else if !local_ip.is_loopback() && ips.iter().all(IpAddr::is_loopback) {
        Some(Diagnosis::LoopbackOnly)
    } else {
        Some(Diagnosis::WrongAddress)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    fn addrs(list: &str) -> Vec<SocketAddr> {
        list.split_whitespace().map(sa).collect()
    }

    #[test]
    fn diagnose_table() {
        use Diagnosis::*;
        let cases = [
            ("10.0.0.1:80", "", Some(NotListening)),
            ("10.0.0.1:80", "10.0.0.1:81 0.0.0.0:8080", Some(NotListening)),
            ("10.0.0.1:80", "10.0.0.1:80", None),
            ("10.0.0.1:80", "0.0.0.0:80", None),
            ("10.0.0.1:80", "[::]:80", None),
            ("[fd00::1]:80", "[::]:80", None),
            ("[fd00::1]:80", "[fd00::1]:80 127.0.0.1:80", None),
            ("[fd00::1]:80", "0.0.0.0:80", Some(WrongAddress)),
            ("[::ffff:10.0.0.1]:80", "10.0.0.1:80", None),
            ("10.0.0.1:80", "[::ffff:10.0.0.1]:80", None),
            ("[::ffff:10.0.0.1]:80", "0.0.0.0:80", None),
            ("10.0.0.1:80", "127.0.0.1:80", Some(LoopbackOnly)),
            ("10.0.0.1:80", "127.0.0.5:80 [::1]:80", Some(LoopbackOnly)),
            ("[fd00::1]:80", "[::1]:80", Some(LoopbackOnly)),
            ("10.0.0.1:80", "[::ffff:127.0.0.1]:80", Some(LoopbackOnly)),
            ("127.0.0.5:80", "127.0.0.1:80", Some(WrongAddress)),
            ("127.0.0.5:80", "127.0.0.5:80", None),
            ("10.0.0.1:80", "10.0.0.2:80", Some(WrongAddress)),
            ("10.0.0.1:80", "10.0.0.2:80 127.0.0.1:80", Some(WrongAddress)),
            ("10.0.0.1:80", "10.0.0.2:80 10.0.0.1:81", Some(WrongAddress)),
        ];
        for (local, listeners, want) in cases {
            assert_eq!(diagnose(sa(local), &addrs(listeners)), want, "{local} vs {listeners}");
        }
    }

    #[test]
    fn names() {
        use Diagnosis::*;
        let names = [NotListening, LoopbackOnly, WrongAddress].map(Diagnosis::name);
        assert_eq!(names, ["not_listening", "loopback_only", "wrong_address"]);
        let names = [ListenerKilled, ListenerExited, ListenerClosed, NeverListened].map(Diagnosis::name);
        assert_eq!(
            names,
            [
                "listener_killed",
                "listener_exited",
                "listener_closed",
                "never_listened"
            ]
        );
    }

    #[test]
    fn explain_sentences() {
        let l = addrs("127.0.0.1:8080 10.0.0.2:9090 [::1]:9090 [::ffff:10.0.0.3]:9090 10.0.0.2:9090");
        assert_eq!(
            Diagnosis::LoopbackOnly.explain(sa("10.0.0.1:8080"), &l),
            "a listener on 127.0.0.1:8080 accepts only loopback connections, but this connection arrived on 10.0.0.1"
        );
        assert_eq!(
            Diagnosis::NotListening.explain(sa("[::ffff:10.0.0.1]:7"), &l),
            "nothing listens on TCP port 7, so connections to 10.0.0.1:7 are refused"
        );
        assert_eq!(
            Diagnosis::WrongAddress.explain(sa("10.0.0.1:9090"), &l),
            "listeners on 10.0.0.2:9090, 10.0.0.3:9090, [::1]:9090 are bound to another address, \
             so they do not accept this connection to 10.0.0.1"
        );
        assert_eq!(
            Diagnosis::WrongAddress.explain(sa("10.0.0.1:8080"), &l),
            "a listener on 127.0.0.1:8080 is bound to another address, so it does not accept this connection to 10.0.0.1"
        );
    }
}
