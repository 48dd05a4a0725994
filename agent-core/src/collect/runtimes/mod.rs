//! The container runtimes' own files, parsed: where the names of pods and containers come
//! from without asking any API (README, "Workloads"). Pure: the daemon reads the files (under
//! `--host-root`, size-capped) and hands the bytes here. Every parser has a fuzz target.
pub mod docker;
pub mod kubelet;
pub mod oci;
pub mod podman;

/// Where each runtime keeps what names its containers, relative to the host's root.
pub mod paths {
    /// The kubelet's pod log directories, `<namespace>_<pod>_<uid>/<container>/`.
    pub const KUBELET_PODS: &str = "var/log/pods";
    /// The kubelet's container log links, `<pod>_<namespace>_<container>-<id>.log`.
    pub const KUBELET_CONTAINERS: &str = "var/log/containers";
    /// containerd's CRI namespace: `<id>/config.json`, the OCI bundle with `io.kubernetes.cri.*`.
    pub const CONTAINERD_BUNDLES: &str = "run/containerd/io.containerd.runtime.v2.task/k8s.io";
    /// CRI-O's (and Podman's) container state: `<id>/userdata/config.json`, the runtime copy
    /// first, the persistent one second.
    pub const CRIO_BUNDLES: [&str; 2] = [
        "run/containers/storage/overlay-containers",
        "var/lib/containers/storage/overlay-containers",
    ];
    /// Docker's containers: `<id>/config.v2.json`.
    pub const DOCKER_CONTAINERS: &str = "var/lib/docker/containers";
    /// containers/storage's lists of Podman's containers: kept ones, `--rm` ones, and the
    /// transient store's.
    pub const PODMAN_LISTS: [&str; 3] = [
        "var/lib/containers/storage/overlay-containers/containers.json",
        "var/lib/containers/storage/overlay-containers/volatile-containers.json",
        "run/containers/storage/overlay-containers/volatile-containers.json",
    ];
}

/// A Kubernetes name as the API accepts it (DNS subdomain or label: lower-case letters, digits,
/// `-`, `.`): what the kubelet's file names split on `_` can hold, and nothing a label value or
/// a path could be confused by.
fn kube_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}
