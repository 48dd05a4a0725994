//! Loopback ports and socket options.
use std::{collections::BTreeSet, io, net::TcpListener, os::fd::AsFd, sync::Mutex, time::Duration};

/// A loopback port with nothing listening on it: one the kernel just picked as free, and never
/// handed out before in this process. Tests of one binary run at once; a port the kernel gives
/// out again once its prober closed would put two tests' listeners on one port.
pub fn closed_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("bind 127.0.0.1:0");
        if given.insert(port) {
            return port;
        }
    }
}

/// SO_LINGER {on, 0}: closing `s` aborts its connection with a RST.
pub fn linger_zero(s: &impl AsFd) -> io::Result<()> {
    socket2::SockRef::from(s).set_linger(Some(Duration::ZERO))
}
