//! The TCP listeners of this network namespace, through NETLINK_SOCK_DIAG (request and reply
//! parsing in `agent_core::collect::sockdiag`).
use std::{
    io,
    net::SocketAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use agent_core::collect::sockdiag::{ListenError, RECV_BUF, parse_dump, request};

/// Every TCP listener of this network namespace, both families, sorted and deduplicated
/// (SO_REUSEPORT groups show up once). IPv4-mapped IPv6 addresses come back as IPv4.
pub fn tcp_listeners() -> Result<Vec<SocketAddr>, ListenError> {
    let sock = open_socket()?;
    let fd = sock.as_raw_fd();
    let mut buf = vec![0u8; RECV_BUF];
    let mut out = Vec::new();
    for (seq, family) in [(1, libc::AF_INET as u8), (2, libc::AF_INET6 as u8)] {
        let req = request(family, seq);
        // SAFETY: `req` is valid for `req.len()` bytes; an unconnected netlink socket sends to the kernel.
        retry(|| unsafe { libc::send(fd, req.as_ptr().cast(), req.len(), 0) }).map_err(ListenError::Send)?;
        loop {
            // SAFETY: `buf` is writable for `buf.len()` bytes. MSG_TRUNC makes netlink return the
            // datagram's full length, so an oversized one is caught below instead of silently cut.
            let n = retry(|| unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_TRUNC) })
                .map_err(ListenError::Recv)?;
            let datagram = buf.get(..n).filter(|d| !d.is_empty());
            let progress = parse_dump(datagram.ok_or(ListenError::Malformed("empty or oversized datagram"))?)?;
            out.extend(progress.listeners);
            if progress.done {
                break;
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn open_socket() -> Result<OwnedFd, ListenError> {
    // SAFETY: plain syscall with constant arguments; the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(ListenError::Socket(io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a fresh, valid descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // A daemon must not hang forever on a kernel that never answers.
    let tv = libc::timeval { tv_sec: 5, tv_usec: 0 };
    let len = size_of::<libc::timeval>() as libc::socklen_t;
    // SAFETY: `tv` is a valid timeval and `len` is its size.
    let rc = unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, (&raw const tv).cast(), len) };
    if rc < 0 {
        return Err(ListenError::Socket(io::Error::last_os_error()));
    }
    Ok(sock)
}

/// Runs a syscall that returns a length or -1, again after EINTR.
fn retry(mut call: impl FnMut() -> isize) -> io::Result<usize> {
    loop {
        if let Ok(n) = usize::try_from(call()) {
            return Ok(n);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    #[test]
    fn finds_real_listeners() {
        let v4 = TcpListener::bind("127.0.0.1:0").expect("bind v4");
        let any = TcpListener::bind("0.0.0.0:0").expect("bind any");
        let v6 = TcpListener::bind("[::1]:0").expect("bind v6");
        let addrs: Vec<SocketAddr> = [&v4, &any, &v6].iter().map(|l| l.local_addr().expect("addr")).collect();
        let found = tcp_listeners().expect("sock_diag dump");
        for a in &addrs {
            assert!(found.contains(a), "{a} missing from {found:?}");
        }
        drop(v6);
        let found = tcp_listeners().expect("sock_diag dump");
        assert!(!found.contains(&addrs[2]), "{} still listed", addrs[2]);
        assert!(found.contains(&addrs[0]) && found.contains(&addrs[1]));
    }
}
