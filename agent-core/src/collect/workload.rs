//! cgroup → workload, named the way operators know it (README, "Workloads"): the cgroup v2 path
//! says what kind of workload it is and carries its ids; the container runtimes' own files
//! ([`crate::collect::runtimes`]) give the names. Without them, the id forms
//! (`container:<id12>`, `pod:<uid>`), `service:<unit>`, else the path.
use std::{fmt, hash::Hash, ops::Deref, path::PathBuf, sync::Arc};

use crate::collect::labels::escape;

/// A workload's label values: `workload`, and `namespace`, `pod`, `container` as cAdvisor and
/// kube-state-metrics name them (empty outside Kubernetes).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Names {
    pub workload: String,
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

/// A resolved workload, shared like a [`crate::collect::labels::Label`]: every series, target
/// and listener of one cgroup points at one allocation. Its label text is written once, here,
/// not per series or scrape.
#[derive(Clone)]
pub struct Workload(Arc<Inner>);

struct Inner {
    names: Names,
    /// `workload="…",namespace="…",pod="…",container="…"`, escaped.
    text: String,
}

impl Workload {
    pub fn new(names: Names) -> Self {
        let mut text = String::new();
        for (i, (key, value)) in [
            ("workload", &names.workload),
            ("namespace", &names.namespace),
            ("pod", &names.pod),
            ("container", &names.container),
        ]
        .into_iter()
        .enumerate()
        {
            if i > 0 {
                text.push(',');
            }
            text.push_str(key);
            text.push_str("=\"");
            escape(&mut text, value, true);
            text.push('"');
        }
        Workload(Arc::new(Inner { names, text }))
    }

    /// The four label pairs, escaped, comma-separated, without braces.
    pub fn label_text(&self) -> &str {
        &self.0.text
    }

    /// How many labels [`Workload::label_text`] holds.
    pub const LABELS: usize = 4;
}

impl Deref for Workload {
    type Target = Names;

    fn deref(&self) -> &Names {
        &self.0.names
    }
}

impl PartialEq for Workload {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0.names == other.0.names
    }
}

impl Eq for Workload {}

impl Hash for Workload {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.names.hash(state);
    }
}

impl PartialOrd for Workload {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Workload {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.names.cmp(&other.0.names)
    }
}

impl fmt::Debug for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.names.fmt(f)
    }
}

/// The `workload` value.
impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.names.workload)
    }
}

/// A workload known only by its `workload` value (no Kubernetes names).
impl From<&str> for Workload {
    fn from(workload: &str) -> Self {
        Workload::new(Names {
            workload: workload.into(),
            ..Names::default()
        })
    }
}

impl From<String> for Workload {
    fn from(workload: String) -> Self {
        Workload::new(Names {
            workload,
            ..Names::default()
        })
    }
}

/// The container runtime a cgroup's scope names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Runtime {
    Docker,
    Containerd,
    Crio,
    Podman,
}

impl Runtime {
    pub const ALL: [Runtime; 4] = [Runtime::Containerd, Runtime::Crio, Runtime::Docker, Runtime::Podman];
}

/// What a cgroup v2 path says about its workload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CgroupPath<'a> {
    /// A 64-hex container id in the leaf.
    pub container_id: Option<&'a str>,
    /// The runtime its scope's prefix names; `None` for a bare id (cgroupfs driver).
    pub runtime: Option<Runtime>,
    /// The Kubernetes pod uid of an enclosing kubepods slice or directory, with dashes.
    pub pod_uid: Option<String>,
}

pub fn parse(path: &str) -> CgroupPath<'_> {
    let mut segments = path.rsplit('/').filter(|s| !s.is_empty());
    let leaf = segments.next().unwrap_or("");
    let found = container_id(leaf);
    let runtime = match found {
        Some((_, Some(r))) => Some(r),
        // cgroupfs driver: Docker's bare ids live under `/docker/`.
        Some((_, None)) if segments.next() == Some("docker") => Some(Runtime::Docker),
        _ => None,
    };
    CgroupPath {
        container_id: found.map(|f| f.0),
        runtime,
        pod_uid: path.split('/').find_map(pod_uid),
    }
}

/// What the runtimes' files say about a cgroup's container or pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Found {
    #[default]
    Nothing,
    /// A Kubernetes pod, and the container's name (empty: the pod's sandbox, or not known).
    Pod {
        namespace: String,
        pod: String,
        container: String,
    },
    /// A container outside Kubernetes: its name, or `<project>/<service>` for Compose.
    Container(String),
}

impl Found {
    pub fn pod(namespace: &str, pod: &str, container: &str) -> Found {
        Found::Pod {
            namespace: namespace.into(),
            pod: pod.into(),
            container: container.into(),
        }
    }

    fn or_else(self, f: impl FnOnce() -> Found) -> Found {
        match self {
            Found::Nothing => f(),
            found => found,
        }
    }
}

/// Where names come from, by id: the kubelet's log layout and each runtime's own files. The
/// daemon reads them under `--host-root`; tests give tables.
pub trait Sources {
    /// `/var/log/containers`: a container id's pod, namespace and name.
    fn kubelet_container(&mut self, id: &str) -> Found;
    /// `/var/log/pods`: a pod uid's namespace and name.
    fn kubelet_pod(&mut self, uid: &str) -> Found;
    /// A runtime's record of container `id`.
    fn runtime(&mut self, runtime: Runtime, id: &str) -> Found;
}

/// Names the workload of the cgroup at `path` (relative to the cgroup2 mount, leading `/`) from
/// `sources`, falling back to the id forms.
pub fn resolve(path: &str, sources: &mut impl Sources) -> Names {
    let cgroup = parse(path);
    let runtimes = |sources: &mut dyn FnMut(Runtime) -> Found| match cgroup.runtime {
        Some(r) => sources(r),
        None => Runtime::ALL
            .into_iter()
            .fold(Found::Nothing, |found, r| found.or_else(|| sources(r))),
    };
    let found = match (&cgroup.pod_uid, cgroup.container_id) {
        (Some(uid), id) => id
            .map_or(Found::Nothing, |id| {
                sources
                    .kubelet_container(id)
                    .or_else(|| runtimes(&mut |r| sources.runtime(r, id)))
            })
            .or_else(|| sources.kubelet_pod(uid)),
        (None, Some(id)) => runtimes(&mut |r| sources.runtime(r, id)),
        (None, None) => Found::Nothing,
    };
    named(path, found)
}

/// The names of a workload the runtimes' files describe as `found`.
pub fn named(path: &str, found: Found) -> Names {
    match found {
        Found::Pod {
            namespace,
            pod,
            container,
        } => Names {
            workload: format!("pod:{namespace}/{pod}"),
            namespace,
            pod,
            container,
        },
        Found::Container(name) => Names {
            workload: format!("container:{name}"),
            ..Names::default()
        },
        Found::Nothing => Names {
            workload: from_cgroup_path(path),
            ..Names::default()
        },
    }
}

/// The id form of a workload from its cgroup v2 path alone.
pub fn from_cgroup_path(path: &str) -> String {
    let cgroup = parse(path);
    let leaf = path.rsplit('/').find(|s| !s.is_empty()).unwrap_or("");
    if let Some(id) = cgroup.container_id {
        return format!("container:{}", &id[..12]);
    }
    if let Some(uid) = cgroup.pod_uid {
        return format!("pod:{uid}");
    }
    if let Some(unit) = leaf.strip_suffix(".service") {
        return format!("service:{unit}.service");
    }
    if path.is_empty() { "/".into() } else { path.into() }
}

/// A 64-hex container id in a runtime's scope or directory name: `docker-<id>.scope`,
/// `cri-containerd-<id>.scope`, `crio-<id>.scope`, `libpod-<id>.scope`, or a bare `<id>`
/// (cgroupfs driver); with the runtime the prefix names.
fn container_id(leaf: &str) -> Option<(&str, Option<Runtime>)> {
    let name = leaf.strip_suffix(".scope").unwrap_or(leaf);
    let id = name.rsplit(['-', ':']).next().unwrap_or(name);
    if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let prefix = &name[..name.len() - 64];
    let runtime = match prefix.trim_end_matches(['-', ':']) {
        "docker" => Some(Runtime::Docker),
        "cri-containerd" => Some(Runtime::Containerd),
        "crio" | "crio-conmon" => Some(Runtime::Crio),
        "libpod" | "libpod-conmon" => Some(Runtime::Podman),
        _ => None,
    };
    Some((id, runtime))
}

/// The pod UID in a kubepods slice (`kubepods-burstable-pod<uid>.slice`, systemd driver, with
/// `_` for `-`) or directory (`pod<uid>`, cgroupfs driver). A UID is a UUID, or 32 hex digits
/// for static pods (the kubelet hashes their manifest).
fn pod_uid(segment: &str) -> Option<String> {
    let name = segment.strip_suffix(".slice").unwrap_or(segment);
    let pos = name.rfind("pod")?;
    let uid = name[pos + 3..].replace('_', "-");
    let uuid = uid.len() == 36
        && uid.bytes().enumerate().all(|(i, b)| {
            if [8, 13, 18, 23].contains(&i) {
                b == b'-'
            } else {
                b.is_ascii_hexdigit()
            }
        });
    let hash = uid.len() == 32 && uid.bytes().all(|b| b.is_ascii_hexdigit());
    (uuid || hash).then_some(uid)
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
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    const ID: &str = "4f3c2b1a09e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2";
    const UID: &str = "0b5e9a7c-1d2f-4e3a-9b8c-7d6e5f4a3b2c";

    fn kubepods() -> String {
        format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
            UID.replace('-', "_")
        )
    }

    #[test]
    fn container_runtimes() {
        for (leaf, runtime) in [
            (format!("docker-{ID}.scope"), Some(Runtime::Docker)),
            (format!("cri-containerd-{ID}.scope"), Some(Runtime::Containerd)),
            (format!("crio-{ID}.scope"), Some(Runtime::Crio)),
            (format!("libpod-{ID}.scope"), Some(Runtime::Podman)),
            (ID.to_string(), None),
        ] {
            let path = format!("/system.slice/{leaf}");
            assert_eq!(from_cgroup_path(&path), "container:4f3c2b1a09e8", "{leaf}");
            assert_eq!(parse(&path).runtime, runtime, "{leaf}");
            assert_eq!(parse(&path).container_id, Some(ID), "{leaf}");
        }
        assert_eq!(parse(&format!("/docker/{ID}")).runtime, Some(Runtime::Docker));
    }

    #[test]
    fn kubernetes_pods() {
        let systemd = kubepods();
        assert_eq!(from_cgroup_path(&systemd), format!("pod:{UID}"));
        assert_eq!(
            from_cgroup_path(&format!("/kubepods/besteffort/pod{UID}")),
            format!("pod:{UID}")
        );
        // A container inside the pod is named by its container id.
        let path = format!("{systemd}/cri-containerd-{ID}.scope");
        assert_eq!(from_cgroup_path(&path), "container:4f3c2b1a09e8");
        assert_eq!(
            parse(&path),
            CgroupPath {
                container_id: Some(ID),
                runtime: Some(Runtime::Containerd),
                pod_uid: Some(UID.into()),
            }
        );
        // Static pods' uids are a hash of their manifest.
        let hash = "d41d8cd98f00b204e9800998ecf8427e";
        assert_eq!(
            from_cgroup_path(&format!("/kubepods.slice/kubepods-pod{hash}.slice")),
            format!("pod:{hash}")
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

    /// Sources as tables, recording what was asked.
    #[derive(Default)]
    struct Table {
        containers: HashMap<String, Found>,
        pods: HashMap<String, Found>,
        runtimes: HashMap<(Runtime, String), Found>,
        asked: Vec<String>,
    }

    impl Sources for Table {
        fn kubelet_container(&mut self, id: &str) -> Found {
            self.asked.push(format!("kubelet_container {}", &id[..4]));
            self.containers.get(id).cloned().unwrap_or_default()
        }

        fn kubelet_pod(&mut self, uid: &str) -> Found {
            self.asked.push(format!("kubelet_pod {}", &uid[..4]));
            self.pods.get(uid).cloned().unwrap_or_default()
        }

        fn runtime(&mut self, runtime: Runtime, id: &str) -> Found {
            self.asked.push(format!("{runtime:?} {}", &id[..4]));
            self.runtimes
                .get(&(runtime, id.to_string()))
                .cloned()
                .unwrap_or_default()
        }
    }

    fn pod(container: &str) -> Found {
        Found::pod("shop", "web-7d4f9c-x2k", container)
    }

    #[test]
    fn pods_named_from_the_kubelet_then_the_bundle_then_the_pod_directory() {
        let path = format!("{}/cri-containerd-{ID}.scope", kubepods());
        let want = Names {
            workload: "pod:shop/web-7d4f9c-x2k".into(),
            namespace: "shop".into(),
            pod: "web-7d4f9c-x2k".into(),
            container: "nginx".into(),
        };
        let mut t = Table::default();
        t.containers.insert(ID.into(), pod("nginx"));
        assert_eq!(resolve(&path, &mut t), want);
        assert_eq!(t.asked, ["kubelet_container 4f3c"]);

        let mut t = Table::default();
        t.runtimes.insert((Runtime::Containerd, ID.into()), pod("nginx"));
        assert_eq!(resolve(&path, &mut t), want);
        assert_eq!(t.asked, ["kubelet_container 4f3c", "Containerd 4f3c"]);

        // Only the pod is known: its names, no container.
        let mut t = Table::default();
        t.pods.insert(UID.into(), pod(""));
        let names = resolve(&path, &mut t);
        assert_eq!(
            (names.workload.as_str(), names.container.as_str()),
            ("pod:shop/web-7d4f9c-x2k", "")
        );
        assert_eq!(
            t.asked,
            ["kubelet_container 4f3c", "Containerd 4f3c", "kubelet_pod 0b5e"]
        );

        // Nothing known: the id form, no Kubernetes labels.
        let mut t = Table::default();
        assert_eq!(
            resolve(&path, &mut t),
            Names {
                workload: "container:4f3c2b1a09e8".into(),
                ..Names::default()
            }
        );
        // A bare id (cgroupfs driver) asks every runtime, in order.
        let mut t = Table::default();
        resolve(&format!("/kubepods/burstable/pod{UID}/{ID}"), &mut t);
        assert_eq!(
            t.asked,
            [
                "kubelet_container 4f3c",
                "Containerd 4f3c",
                "Crio 4f3c",
                "Docker 4f3c",
                "Podman 4f3c",
                "kubelet_pod 0b5e"
            ]
        );
    }

    #[test]
    fn containers_named_by_their_runtime_and_services_by_their_unit() {
        let mut t = Table::default();
        t.runtimes
            .insert((Runtime::Docker, ID.into()), Found::Container("shop/web".into()));
        t.runtimes
            .insert((Runtime::Podman, ID.into()), Found::Container("db".into()));
        let name = |t: &mut Table, path: &str| resolve(path, t).workload;
        assert_eq!(
            name(&mut t, &format!("/system.slice/docker-{ID}.scope")),
            "container:shop/web"
        );
        assert_eq!(name(&mut t, &format!("/docker/{ID}")), "container:shop/web");
        assert_eq!(
            name(&mut t, &format!("/machine.slice/libpod-{ID}.scope")),
            "container:db"
        );
        assert_eq!(t.asked, ["Docker 4f3c", "Docker 4f3c", "Podman 4f3c"]);
        assert_eq!(name(&mut t, "/system.slice/nginx.service"), "service:nginx.service");
        assert_eq!(t.asked.len(), 3, "a service asks no runtime");
    }

    #[test]
    fn label_text_is_escaped_once_and_equality_is_by_names() {
        let w = Workload::new(Names {
            workload: "container:a\"b".into(),
            ..Names::default()
        });
        assert_eq!(
            w.label_text(),
            r#"workload="container:a\"b",namespace="",pod="",container="""#
        );
        assert_eq!(w, Workload::from("container:a\"b"));
        assert_eq!(w.to_string(), "container:a\"b");
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
            prop_assert!(!resolve(&path, &mut Table::default()).workload.is_empty());
        }
    }
}
