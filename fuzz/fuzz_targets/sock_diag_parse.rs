//! One datagram of a NETLINK_SOCK_DIAG dump, as the kernel (or anything on the socket) sends it.
#![no_main]

use agent_core::{analyse::diagnosis::diagnose, collect::sockdiag::parse_dump};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(progress) = parse_dump(data) {
        // Each listener took a full inet_diag_msg (72 bytes) after a netlink header (16).
        assert!(progress.listeners.len() <= data.len() / 88);
        let addrs: Vec<_> = progress.listeners.iter().map(|l| l.addr).collect();
        for l in &addrs {
            let _ = diagnose(*l, &addrs);
        }
    }
});
