//! One datagram of a NETLINK_SOCK_DIAG dump, as the kernel (or anything on the socket) sends it.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../agent-user/src/listeners.rs"]
mod listeners;

fuzz_target!(|data: &[u8]| {
    if let Ok(progress) = listeners::parse_dump(data) {
        // Each listener took a full inet_diag_msg (72 bytes) after a netlink header (16).
        assert!(progress.listeners.len() <= data.len() / 88);
        for l in &progress.listeners {
            let _ = listeners::diagnose(*l, &progress.listeners);
        }
    }
});
