//! cgroup v2 path → workload name, and the cgroup2 mount point from /proc/self/mountinfo text.
#![no_main]

use agent_core::collect::workload;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = workload::cgroup2_mount(text);
    for path in std::iter::once(text).chain(text.lines().take(16)) {
        // Unrecognized paths come back as they are, so any name is possible: no panic, no
        // hang, and never empty (Prometheus would drop the label).
        assert!(!workload::from_cgroup_path(path).is_empty());
    }
});
