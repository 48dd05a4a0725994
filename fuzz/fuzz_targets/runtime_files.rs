//! The container runtimes' files that name workloads, as a host (or anything that can write
//! there) may hold them: an OCI bundle's config.json, Docker's config.v2.json, Podman's storage
//! lists, and the kubelet's log file names; then a whole resolution with sources that answer
//! from the same bytes.
#![no_main]

use agent_core::collect::{
    runtimes::{docker, kubelet, oci, podman},
    workload::{self, Found, Runtime, Sources},
};
use libfuzzer_sys::fuzz_target;

/// Sources whose every answer is what the input's bytes parse to.
struct Bytes<'a>(&'a [u8]);

impl Sources for Bytes<'_> {
    fn kubelet_container(&mut self, id: &str) -> Found {
        let text = String::from_utf8_lossy(self.0);
        (text.lines())
            .filter_map(kubelet::container_log)
            .find(|(i, _)| *i == id)
            .map(|(_, f)| f)
            .unwrap_or_default()
    }

    fn kubelet_pod(&mut self, _uid: &str) -> Found {
        oci::names(self.0).unwrap_or_default()
    }

    fn runtime(&mut self, runtime: Runtime, _id: &str) -> Found {
        match runtime {
            Runtime::Docker => docker::names(self.0).unwrap_or_default(),
            _ => oci::names(self.0).unwrap_or_default(),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // Whatever parses names a workload with a non-empty `workload` label.
    let _ = podman::names(data);
    let text = String::from_utf8_lossy(data);
    for line in text.lines().take(16) {
        let _ = kubelet::pod_dir(line);
        let names = workload::resolve(line, &mut Bytes(data));
        assert!(!names.workload.is_empty());
        assert!(names.namespace.is_empty() == names.pod.is_empty());
    }
});
