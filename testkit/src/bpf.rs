//! The kernel's BPF programs: which a process holds, which are loaded, when they are gone.
use std::{
    collections::BTreeSet,
    process::Command,
    time::{Duration, Instant},
};

/// Program ids held by a process, from its fds' fdinfo.
pub fn program_ids(pid: u32) -> BTreeSet<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("prog_id:")?.trim().parse().ok())
        })
        .collect()
}

pub fn loaded_programs() -> BTreeSet<u64> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .expect("bpftool");
    let progs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    progs.iter().filter_map(|p| p["id"].as_u64()).collect()
}

/// Whether every program in `ids` is gone from the kernel within 5 s (it frees a program once
/// its last reference goes, after an RCU grace period).
pub fn programs_gone(ids: &BTreeSet<u64>) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ids.is_disjoint(&loaded_programs()) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}
