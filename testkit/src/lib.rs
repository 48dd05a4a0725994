//! What the integration tests, `cargo xtask` (bench, VM matrix) and the VM guest's client share:
//! the daemon harness, one HTTP GET, one reader of Prometheus text, and the host fixtures the
//! tests build (network namespaces, cgroups, BPF program lists, an ftrace record of the closes
//! this sandbox's kernel hides from BPF).
//!
//! Failures: what xtask calls returns `std::io::Result` (the `try_` methods of [`Daemon`],
//! [`get`], [`linger_zero`]); what only tests call panics with a message, as a test should.
mod bpf;
mod cgroup;
mod daemon;
mod exposition;
mod hidden;
mod http;
pub mod metrics;
mod net;
mod netns;
mod process;

use std::path::PathBuf;

pub use crate::{
    bpf::{loaded_programs, program_ids, programs_gone},
    cgroup::{Cgroup, MemoryCgroup},
    daemon::{Daemon, pin_dir},
    exposition::{series, value, wait_value},
    hidden::{Hidden, HiddenCloses},
    http::{get, get_with},
    net::{closed_port, linger_zero},
    netns::Netns,
    process::{as_comm, ci, is_root, privileged, sh, which},
};

/// The workspace root (this crate sits directly under it).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}
