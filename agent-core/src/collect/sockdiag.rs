//! NETLINK_SOCK_DIAG: the request for a network namespace's TCP listeners and the parser of
//! the kernel's reply (untrusted bytes: every length is checked). The socket I/O is the
//! collector's.
//!
//! sock_diag rather than /proc/net/tcp{,6}: it is binary, filtered by state in the kernel, and does
//! not walk every established socket just to find the listening ones.

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6},
};

// Kernel ABI (linux/sock_diag.h, linux/inet_diag.h, net/tcp_states.h), spelled out where libc
// releases differ in what they export.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = libc::NLMSG_ERROR as u16;
const NLMSG_DONE: u16 = libc::NLMSG_DONE as u16;
const TCP_LISTEN: u8 = 10;
pub const NLMSG_HDRLEN: usize = 16;
/// `struct inet_diag_req_v2`: family, protocol, ext, pad, states, then a 48-byte `inet_diag_sockid`.
pub const REQ_LEN: usize = 56;
/// `struct inet_diag_msg`; attributes may follow it and are ignored.
const DIAG_MSG_LEN: usize = 72;
/// Large enough for any dump datagram (the kernel fills at most 32 KiB per skb).
pub const RECV_BUF: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot open a NETLINK_SOCK_DIAG socket: {0}")]
    Socket(io::Error),
    #[error("cannot send the sock_diag request: {0}")]
    Send(io::Error),
    #[error("cannot receive the sock_diag dump: {0}")]
    Recv(io::Error),
    #[error("the kernel refused the sock_diag dump: {}", io::Error::from_raw_os_error(*errno))]
    Netlink { errno: i32 },
    #[error("malformed sock_diag reply: {0}")]
    Malformed(&'static str),
}

/// What one received datagram contributed to a dump.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ParseProgress {
    pub listeners: Vec<Listening>,
    /// NLMSG_DONE was seen: the dump is complete.
    pub done: bool,
}

/// A listening socket: where, and its inode (`socket:[inode]` among its holders' fds).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Listening {
    pub addr: SocketAddr,
    pub inode: u32,
}

/// A dump request for the TCP listeners of one address family.
pub fn request(family: u8, seq: u32) -> [u8; NLMSG_HDRLEN + REQ_LEN] {
    let mut m = [0u8; NLMSG_HDRLEN + REQ_LEN];
    m[0..4].copy_from_slice(&((NLMSG_HDRLEN + REQ_LEN) as u32).to_ne_bytes());
    m[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m[6..8].copy_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    m[8..12].copy_from_slice(&seq.to_ne_bytes());
    m[16] = family;
    m[17] = libc::IPPROTO_TCP as u8;
    m[20..24].copy_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
    m
}

/// Parses one datagram of a sock_diag dump. Never panics: every length is checked against `buf`.
pub fn parse_dump(buf: &[u8]) -> Result<ParseProgress, ListenError> {
    let mut progress = ParseProgress::default();
    let mut rest = buf;
    while !rest.is_empty() {
        let (Some(len), Some(ty)) = (read_u32(rest, 0), read_u16(rest, 4)) else {
            return Err(ListenError::Malformed("truncated netlink header"));
        };
        let len = len as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            return Err(ListenError::Malformed("netlink message length out of bounds"));
        }
        let payload = &rest[NLMSG_HDRLEN..len];
        // DONE and ERROR carry a negative errno first: a failed dump, or (0 in ERROR) an ACK.
        let errno = read_u32(payload, 0).map_or(0, |v| (v as i32).saturating_neg());
        match ty {
            NLMSG_ERROR if payload.len() < 4 => return Err(ListenError::Malformed("truncated NLMSG_ERROR")),
            NLMSG_DONE | NLMSG_ERROR if errno > 0 => return Err(ListenError::Netlink { errno }),
            NLMSG_DONE => {
                progress.done = true;
                return Ok(progress);
            }
            SOCK_DIAG_BY_FAMILY => progress.listeners.extend(parse_diag_msg(payload)?),
            _ => {} // NLMSG_NOOP, an ACK, and anything newer
        }
        // Messages are 4-byte aligned; the last one may omit its padding.
        rest = rest.get(len.next_multiple_of(4)..).unwrap_or(&[]);
    }
    Ok(progress)
}

/// One `inet_diag_msg`; `None` for sockets that are not listening or of an unknown family.
fn parse_diag_msg(p: &[u8]) -> Result<Option<Listening>, ListenError> {
    if p.len() < DIAG_MSG_LEN {
        return Err(ListenError::Malformed("truncated inet_diag_msg"));
    }
    let (family, state) = (p[0], p[1]);
    let port = u16::from_be_bytes([p[4], p[5]]);
    let mut src = [0u8; 16];
    src.copy_from_slice(&p[8..24]);
    let ifindex = read_u32(p, 40).unwrap_or(0);
    let inode = read_u32(p, 68).unwrap_or(0);
    if state != TCP_LISTEN {
        return Ok(None);
    }
    let addr = match i32::from(family) {
        libc::AF_INET => SocketAddr::from((Ipv4Addr::new(src[0], src[1], src[2], src[3]), port)),
        libc::AF_INET6 => {
            let ip = Ipv6Addr::from(src);
            // The interface index is the scope only where a scope means something.
            let scope = if ip.is_unicast_link_local() { ifindex } else { 0 };
            canonical(SocketAddr::V6(SocketAddrV6::new(ip, port, 0, scope)))
        }
        _ => return Ok(None),
    };
    Ok(Some(Listening { addr, inode }))
}

fn read_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn read_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`) as plain IPv4, so both spellings compare equal.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(ip) => SocketAddr::from((ip, v6.port())),
            None => addr,
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    fn nlmsg(ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut m = ((NLMSG_HDRLEN + payload.len()) as u32).to_ne_bytes().to_vec();
        m.extend(ty.to_ne_bytes());
        m.extend([0; 10]);
        m.extend(payload);
        m.resize(m.len().next_multiple_of(4), 0);
        m
    }

    fn diag_msg(family: i32, state: u8, port: u16, src: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; DIAG_MSG_LEN + 8]; // + an attribute-sized tail, which is ignored
        (p[0], p[1]) = (family as u8, state);
        p[4..6].copy_from_slice(&port.to_be_bytes());
        p[8..8 + src.len()].copy_from_slice(src);
        p[68..72].copy_from_slice(&4242u32.to_ne_bytes()); // inode
        nlmsg(SOCK_DIAG_BY_FAMILY, &p)
    }

    fn sample_dump() -> Vec<u8> {
        let mapped: Ipv6Addr = "::ffff:10.0.0.1".parse().expect("mapped");
        let mut buf = diag_msg(libc::AF_INET, TCP_LISTEN, 8080, &[127, 0, 0, 1]);
        buf.extend(diag_msg(libc::AF_INET6, TCP_LISTEN, 443, &Ipv6Addr::LOCALHOST.octets()));
        buf.extend(diag_msg(libc::AF_INET6, TCP_LISTEN, 22, &mapped.octets()));
        buf.extend(diag_msg(libc::AF_INET, 1, 9, &[10, 0, 0, 9])); // ESTABLISHED: skipped
        buf.extend(nlmsg(NLMSG_DONE, &0i32.to_ne_bytes()));
        buf
    }

    fn addrs(list: &str) -> Vec<SocketAddr> {
        list.split_whitespace().map(sa).collect()
    }

    #[test]
    fn parses_a_dump() {
        let p = parse_dump(&sample_dump()).expect("valid dump");
        assert!(p.done);
        let found: Vec<SocketAddr> = p.listeners.iter().map(|l| l.addr).collect();
        assert_eq!(found, addrs("127.0.0.1:8080 [::1]:443 10.0.0.1:22"));
        assert!(p.listeners.iter().all(|l| l.inode == 4242));
        let partial = parse_dump(&diag_msg(libc::AF_INET6, TCP_LISTEN, 1, &[0; 16])).expect("one entry");
        let found: Vec<SocketAddr> = partial.listeners.iter().map(|l| l.addr).collect();
        assert_eq!((found, partial.done), (addrs("[::]:1"), false));
    }

    #[test]
    fn netlink_errors() {
        let errno = |buf: &[u8]| match parse_dump(buf) {
            Err(ListenError::Netlink { errno }) => errno,
            other => panic!("expected a netlink error, got {other:?}"),
        };
        let mut err = (-libc::EPERM).to_ne_bytes().to_vec();
        err.extend(&request(2, 1)[..NLMSG_HDRLEN]);
        assert_eq!(errno(&nlmsg(NLMSG_ERROR, &err)), libc::EPERM);
        assert_eq!(errno(&nlmsg(NLMSG_DONE, &(-libc::EINTR).to_ne_bytes())), libc::EINTR);
        assert!(matches!(
            parse_dump(&nlmsg(NLMSG_ERROR, &[])),
            Err(ListenError::Malformed(_))
        ));
        let ack = nlmsg(NLMSG_ERROR, &0i32.to_ne_bytes());
        assert_eq!(parse_dump(&ack).expect("ack"), ParseProgress::default());
    }

    #[test]
    fn every_truncation_is_handled() {
        let buf = sample_dump();
        for n in 0..buf.len() {
            let _ = parse_dump(&buf[..n]);
        }
        assert!(parse_dump(&buf[..buf.len() - 3]).is_err());
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_dump(&bytes);
        }

        #[test]
        fn corrupted_dumps_never_panic(at in 0usize..1024, byte in any::<u8>(), cut in 0usize..1024) {
            let mut buf = sample_dump();
            let len = buf.len();
            buf[at % len] = byte;
            let _ = parse_dump(&buf[..cut % (len + 1)]);
        }
    }
}
