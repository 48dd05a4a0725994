//! This process and the commands it runs: privilege, CI, shell commands, thread names.
use std::{path::PathBuf, process::Command};

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:").map(|u| u.split_whitespace().next() == Some("0")))
        })
        .unwrap_or(false)
}

/// Under CI (`CI=true`) a skip would hide a broken pipeline: what would skip fails instead.
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// True when the test may touch the kernel. Without root it skips loudly, except under CI,
/// where it fails.
pub fn privileged(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if ci() {
        panic!("{test}: needs root (CAP_BPF, CAP_PERFMON) and CI=true: refusing to skip");
    }
    eprintln!("\n!!! SKIPPED {test}: needs root (CAP_BPF, CAP_PERFMON) to load eBPF programs !!!\n");
    false
}

/// Runs a command, panicking with its output when it fails.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `f` on a thread named `comm` (the kernel's comm of its connects) and waits for it.
pub fn as_comm<T: Send + 'static>(comm: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .name(comm.into())
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}

/// Where `prog` is on PATH.
pub fn which(prog: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(prog))
            .find(|p| p.is_file())
    })
}
