//! Rare conditions, reported through aya-log: a probe read that fails, a socket of an address
//! family the programs do not know, a packet that is neither IPv4 nor IPv6. Never on a path
//! every connect takes, never for a full map (`DROPS` counts those): a record costs a ring
//! buffer reservation and a wakeup.
//!
//! The level is aya-log's `AYA_LOG_LEVEL`, a frozen global the loader sets (`debug` in `trace`,
//! what `kernel_log` asks for in the daemon): the verifier sees it as a constant and drops the
//! calls above it, keeping the level's load and compare on these error paths. Built with the
//! `no-log` feature every call is empty: that build is the one a daemon whose log is off loads
//! (agent-user's `kernel/loader.rs`), so off costs nothing at all. No pointer is ever logged:
//! the verifier refuses it.

/// A `bpf_probe_read_kernel` at `offset` from its base failed.
#[inline(always)]
pub fn read_failed(offset: u32) {
    #[cfg(not(feature = "no-log"))]
    aya_log_ebpf::debug!(&(), "probe read failed at offset {}", offset);
    #[cfg(feature = "no-log")]
    let _ = offset;
}

/// A socket on a TCP or UDP path whose family is neither `AF_INET` nor `AF_INET6`.
#[inline(always)]
pub fn unknown_family(family: u16, port: u16) {
    #[cfg(not(feature = "no-log"))]
    aya_log_ebpf::warn!(&(), "socket of unknown address family {} (port {})", family, port);
    #[cfg(feature = "no-log")]
    let _ = (family, port);
}

/// A TCP segment whose IP version nibble is neither 4 nor 6.
#[inline(always)]
pub fn not_ip(version: u8) {
    #[cfg(not(feature = "no-log"))]
    aya_log_ebpf::warn!(&(), "segment of IP version {}", version);
    #[cfg(feature = "no-log")]
    let _ = version;
}
