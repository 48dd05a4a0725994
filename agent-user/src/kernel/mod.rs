//! The kernel stage: privileges, BTF offsets and tracefs formats of the running kernel, loading
//! and attaching the programs through each hook's fallback chain, and the pins that keep them
//! counting across restarts, and the programs' own log.
pub mod caps;
pub mod kernel_log;
pub mod loader;
pub mod offsets;
pub mod pins;
pub mod tracefs;

/// The running kernel's release (`uname -r`).
pub fn release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
