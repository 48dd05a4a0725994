//! cgroup → workload name, the way operators name things, from the cgroup v2 path
//! (`container:<id12>`, `pod:<uid>`, `service:<unit>`, else the path).
use std::path::PathBuf;

/// Names a workload from its cgroup v2 path (relative to the cgroup2 mount, leading `/`).
pub fn from_cgroup_path(path: &str) -> String {
    let leaf = path.rsplit('/').find(|s| !s.is_empty()).unwrap_or("");
    if let Some(id) = container_id(leaf) {
        return format!("container:{}", &id[..12]);
    }
    if let Some(uid) = path.split('/').find_map(pod_uid) {
        return format!("pod:{uid}");
    }
    if let Some(unit) = leaf.strip_suffix(".service") {
        return format!("service:{unit}.service");
    }
    if path.is_empty() { "/".into() } else { path.into() }
}

/// A 64-hex container id in a runtime's scope or directory name: `docker-<id>.scope`,
/// `cri-containerd-<id>.scope`, `crio-<id>.scope`, `libpod-<id>.scope`, or a bare `<id>`
/// (cgroupfs driver).
fn container_id(leaf: &str) -> Option<&str> {
    let name = leaf.strip_suffix(".scope").unwrap_or(leaf);
    let id = name.rsplit(['-', ':']).next().unwrap_or(name);
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

/// The pod UID in a kubepods slice (`kubepods-burstable-pod<uid>.slice`, systemd driver, with
/// `_` for `-`) or directory (`pod<uid>`, cgroupfs driver).
fn pod_uid(segment: &str) -> Option<String> {
    let name = segment.strip_suffix(".slice").unwrap_or(segment);
    let pos = name.rfind("pod")?;
    let uid = name[pos + 3..].replace('_', "-");
    let valid = uid.len() == 36
        && uid.bytes().enumerate().all(|(i, b)| {
            if [8, 13, 18, 23].contains(&i) {
                b == b'-'
            } else {
                b.is_ascii_hexdigit()
            }
        });
    valid.then_some(uid)
}

/// Mount point of the cgroup2 filesystem from `/proc/self/mountinfo` text.
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        if post.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        pre.split_whitespace().nth(4).map(PathBuf::from)
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const ID: &str = "4f3c2b1a09e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2";

    #[test]
    fn container_runtimes() {
        for leaf in [
            format!("docker-{ID}.scope"),
            format!("cri-containerd-{ID}.scope"),
            format!("crio-{ID}.scope"),
            format!("libpod-{ID}.scope"),
            ID.to_string(),
        ] {
            assert_eq!(
                from_cgroup_path(&format!("/system.slice/{leaf}")),
                "container:4f3c2b1a09e8",
                "{leaf}"
            );
        }
    }

    #[test]
    fn kubernetes_pods() {
        let uid = "0b5e9a7c-1d2f-4e3a-9b8c-7d6e5f4a3b2c";
        let systemd = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
            uid.replace('-', "_")
        );
        assert_eq!(from_cgroup_path(&systemd), format!("pod:{uid}"));
        assert_eq!(
            from_cgroup_path(&format!("/kubepods/besteffort/pod{uid}")),
            format!("pod:{uid}")
        );
        // A container inside the pod is named by its container id.
        assert_eq!(
            from_cgroup_path(&format!("{systemd}/cri-containerd-{ID}.scope")),
            "container:4f3c2b1a09e8"
        );
    }

    #[test]
    fn systemd_services_and_fallbacks() {
        assert_eq!(from_cgroup_path("/system.slice/nginx.service"), "service:nginx.service");
        assert_eq!(
            from_cgroup_path("/user.slice/user-0.slice/session-3.scope"),
            "/user.slice/user-0.slice/session-3.scope"
        );
        assert_eq!(from_cgroup_path("/"), "/");
        assert_eq!(from_cgroup_path(""), "/");
        // 63 hex chars is not a container id.
        assert_eq!(
            from_cgroup_path(&format!("/x/docker-{}.scope", &ID[1..])),
            format!("/x/docker-{}.scope", &ID[1..])
        );
    }

    #[test]
    fn finds_cgroup2_mount() {
        let mi = "25 30 0:22 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(mi), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(cgroup2_mount("1 2 0:3 / / rw - ext4 /dev/vda rw\n"), None);
    }

    proptest! {
        #[test]
        fn mapping_never_panics_and_is_never_empty(path in "(/[a-z0-9_.:-]{0,70}){0,6}") {
            prop_assert!(!from_cgroup_path(&path).is_empty());
        }
    }
}
