//! Loopback ports and socket options.
use std::{io, net::TcpListener, os::fd::AsFd, time::Duration};

/// A loopback port with nothing listening on it: one the kernel just picked as free.
pub fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// SO_LINGER {on, 0}: closing `s` aborts its connection with a RST.
pub fn linger_zero(s: &impl AsFd) -> io::Result<()> {
    socket2::SockRef::from(s).set_linger(Some(Duration::ZERO))
}
