//! cgroup id → [`Workload`], named as operators know it: the cgroup's path (`cgroups.rs`), then
//! the container runtimes' own files under `--host-root`, parsed by
//! `agent_core::collect::runtimes` and combined by `agent_core::collect::workload::resolve`.
//!
//! Off the scrape's path and bounded: names are cached per cgroup id, files are read only on a
//! miss and only by the tick (a scrape marks the ids the tick has not named yet as pending and
//! leaves their rows to the next scrape), every file read is size-capped, directory listings are
//! re-read on a miss at most once a second, and the cache holds at most [`MAX_CACHED`] ids,
//! dropping the least recently used. An id keeps its name as long as it stays in the cache:
//! the kernel's maps are read on every collection, so a container that exited keeps its name
//! as long as its counts are exported. A missing, partial, huge or malformed file falls back
//! to the id forms, with a debug log.
use std::{
    collections::{BTreeSet, HashMap},
    io::{self, Read},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use agent_core::collect::{
    runtimes::{docker, kubelet, oci, paths, podman},
    workload::{self, Found, Runtime, Sources, Workload},
};

use crate::collect::cgroups::CgroupResolver;

/// Cgroup ids whose names are kept: more than the kernel maps can hold keys for (targets,
/// resets both ways), so ids that still count are never the least recently used.
pub const MAX_CACHED: usize = 65_536;
/// A bundle's `config.json` or a Docker `config.v2.json` is a few KiB; a bigger one is not one.
const MAX_CONFIG: u64 = 1 << 20;
/// Podman's lists hold every container of the host, ~1 KiB each.
const MAX_LIST: u64 = 16 << 20;
/// Entries read from one directory listing.
const MAX_ENTRIES: usize = 65_536;
/// A listing that missed is read again at most this often.
const RELIST_EVERY: Duration = Duration::from_secs(1);

pub struct Workloads {
    cgroups: Option<CgroupResolver>,
    files: HostFiles,
    /// foldhash: looked up for every key of every map on every collection.
    cache: foldhash::HashMap<u64, (Workload, u64)>,
    /// Ids a scrape met that the tick has not named yet.
    pending: BTreeSet<u64>,
    /// Collections so far: an entry's last use.
    generation: u64,
    /// Cgroup id 0: no process known.
    unknown: Workload,
}

impl Workloads {
    pub fn new(cgroups: Option<CgroupResolver>, host_root: &Path) -> Self {
        Self {
            cgroups,
            files: HostFiles::new(host_root),
            cache: foldhash::HashMap::default(),
            pending: BTreeSet::new(),
            generation: 0,
            unknown: Workload::from("unknown"),
        }
    }

    /// The workload of `cgroup_id`, reading the cgroup and the runtimes' files on a miss.
    pub fn resolve(&mut self, cgroup_id: u64) -> Workload {
        if let Some(w) = self.known(cgroup_id) {
            return w;
        }
        let w = self.lookup(cgroup_id);
        self.pending.remove(&cgroup_id);
        self.cache.insert(cgroup_id, (w.clone(), self.generation));
        w
    }

    /// [`Workloads::resolve`] if `read_files`, else [`Workloads::cached`].
    pub fn name(&mut self, cgroup_id: u64, read_files: bool) -> Option<Workload> {
        if read_files {
            Some(self.resolve(cgroup_id))
        } else {
            self.cached(cgroup_id)
        }
    }

    /// The workload of `cgroup_id` if already named: no I/O. An unknown id is remembered for
    /// [`Workloads::resolve_pending`].
    pub fn cached(&mut self, cgroup_id: u64) -> Option<Workload> {
        let w = self.known(cgroup_id);
        if w.is_none() {
            self.pending.insert(cgroup_id);
        }
        w
    }

    /// Names the ids scrapes met since the last call.
    pub fn resolve_pending(&mut self) {
        for id in std::mem::take(&mut self.pending) {
            self.resolve(id);
        }
    }

    /// Starts a collection; past [`MAX_CACHED`], drops the least recently used quarter.
    pub fn next_collection(&mut self) {
        self.generation += 1;
        if self.cache.len() <= MAX_CACHED {
            return;
        }
        let mut used: Vec<(u64, u64)> = self.cache.iter().map(|(id, (_, g))| (*g, *id)).collect();
        let drop = self.cache.len() - MAX_CACHED * 3 / 4;
        used.select_nth_unstable(drop);
        for (_, id) in &used[..drop] {
            self.cache.remove(id);
        }
        tracing::debug!(kept = self.cache.len(), "workload names: least recently used dropped");
    }

    /// The workload of the cgroup at `path` (relative to the cgroup2 mount), from files.
    pub fn by_path(&mut self, path: &str) -> Workload {
        Workload::new(workload::resolve(path, &mut self.files))
    }

    fn known(&mut self, cgroup_id: u64) -> Option<Workload> {
        if cgroup_id == 0 {
            return Some(self.unknown.clone());
        }
        let (w, used) = self.cache.get_mut(&cgroup_id)?;
        *used = self.generation;
        Some(w.clone())
    }

    fn lookup(&mut self, cgroup_id: u64) -> Workload {
        match self.cgroups.as_ref().and_then(|c| c.path(cgroup_id)) {
            Some(path) => self.by_path(&path),
            // Gone before we looked, or no cgroup2 access: the id keeps its counts apart.
            None => Workload::from(format!("cgroup:{cgroup_id}")),
        }
    }
}

/// The runtimes' files under the host root, as [`Sources`].
struct HostFiles {
    root: PathBuf,
    /// `/var/log/containers`: container id → its pod.
    kubelet_containers: Listing,
    /// `/var/log/pods`: pod uid → the pod.
    kubelet_pods: Listing,
    /// Podman's containers/storage lists: container id → name.
    podman: Listing,
}

/// A directory or list read whole, kept by id, read again on a miss at most once a second.
#[derive(Default)]
struct Listing {
    by_id: HashMap<String, Found>,
    read: Option<Instant>,
}

impl Listing {
    fn get(&mut self, id: &str, reread: impl FnOnce() -> HashMap<String, Found>) -> Found {
        if let Some(found) = self.by_id.get(id) {
            return found.clone();
        }
        if self.read.is_none_or(|t| t.elapsed() >= RELIST_EVERY) {
            self.by_id = reread();
            self.read = Some(Instant::now());
        }
        self.by_id.get(id).cloned().unwrap_or_default()
    }
}

impl HostFiles {
    fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            kubelet_containers: Listing::default(),
            kubelet_pods: Listing::default(),
            podman: Listing::default(),
        }
    }

    /// The names of a directory's entries (at most [`MAX_ENTRIES`]).
    fn list(&self, rel: &str) -> Vec<String> {
        let dir = self.root.join(rel);
        match std::fs::read_dir(&dir) {
            Ok(entries) => entries
                .take(MAX_ENTRIES)
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect(),
            Err(e) => {
                quiet_if_absent(&dir, &e);
                Vec::new()
            }
        }
    }

    /// A file's bytes, if it is at most `cap` long.
    fn read(&self, rel: &Path, cap: u64) -> Option<Vec<u8>> {
        let path = self.root.join(rel);
        let result = std::fs::File::open(&path).and_then(|f| {
            let mut bytes = Vec::new();
            f.take(cap + 1).read_to_end(&mut bytes)?;
            if bytes.len() as u64 > cap {
                return Err(io::Error::new(
                    io::ErrorKind::FileTooLarge,
                    format!("larger than {cap} bytes"),
                ));
            }
            Ok(bytes)
        });
        result.inspect_err(|e| quiet_if_absent(&path, e)).ok()
    }

    /// A file parsed by `parse`; `Nothing` (with a debug log) if it cannot be.
    fn parsed(&self, rel: &Path, parse: fn(&[u8]) -> Result<Found, serde_json::Error>) -> Found {
        let Some(bytes) = self.read(rel, MAX_CONFIG) else {
            return Found::Nothing;
        };
        parse(&bytes)
            .inspect_err(|e| {
                tracing::debug!(file = %self.root.join(rel).display(), error = %e, "unreadable runtime file: the workload keeps its id form")
            })
            .unwrap_or_default()
    }
}

fn quiet_if_absent(path: &Path, e: &io::Error) {
    // Most runtimes are not on a given host: their files are absent, nothing to say.
    if e.kind() != io::ErrorKind::NotFound {
        tracing::debug!(file = %path.display(), error = %e, "unreadable runtime file: the workload keeps its id form");
    }
}

impl Sources for HostFiles {
    fn kubelet_container(&mut self, id: &str) -> Found {
        let mut listing = std::mem::take(&mut self.kubelet_containers);
        let found = listing.get(id, || {
            (self.list(paths::KUBELET_CONTAINERS).iter())
                .filter_map(|n| kubelet::container_log(n).map(|(id, f)| (id.to_string(), f)))
                .collect()
        });
        self.kubelet_containers = listing;
        found
    }

    fn kubelet_pod(&mut self, uid: &str) -> Found {
        let mut listing = std::mem::take(&mut self.kubelet_pods);
        let found = listing.get(uid, || {
            (self.list(paths::KUBELET_PODS).iter())
                .filter_map(|n| {
                    let (namespace, pod, uid) = kubelet::pod_dir(n)?;
                    Some((uid.to_string(), Found::pod(namespace, pod, "")))
                })
                .collect()
        });
        self.kubelet_pods = listing;
        found
    }

    fn runtime(&mut self, runtime: Runtime, id: &str) -> Found {
        let at = |dir: &str, file: &str| Path::new(dir).join(id).join(file);
        match runtime {
            Runtime::Containerd => self.parsed(&at(paths::CONTAINERD_BUNDLES, "config.json"), oci::names),
            Runtime::Crio => (paths::CRIO_BUNDLES.iter())
                .map(|dir| self.parsed(&at(dir, "userdata/config.json"), oci::names))
                .find(|f| *f != Found::Nothing)
                .unwrap_or_default(),
            Runtime::Docker => self.parsed(&at(paths::DOCKER_CONTAINERS, "config.v2.json"), docker::names),
            Runtime::Podman => {
                let mut listing = std::mem::take(&mut self.podman);
                let found = listing.get(id, || {
                    (paths::PODMAN_LISTS.iter())
                        .filter_map(|rel| self.read(Path::new(rel), MAX_LIST).map(|b| (rel, b)))
                        .flat_map(|(rel, bytes)| {
                            podman::names(&bytes)
                                .inspect_err(
                                    |e| tracing::debug!(file = rel, error = %e, "unreadable Podman storage list"),
                                )
                                .unwrap_or_default()
                        })
                        .map(|(id, name)| (id, Found::Container(name)))
                        .collect()
                });
                self.podman = listing;
                found
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f3c2b1a09e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2";

    fn root(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("refusal-workloads-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn huge_partial_and_malformed_files_fall_back_to_the_id_form() {
        let dir = root("bad");
        let docker = dir.join(paths::DOCKER_CONTAINERS).join(ID);
        std::fs::create_dir_all(&docker).unwrap();
        let mut w = Workloads::new(None, &dir);
        let path = format!("/system.slice/docker-{ID}.scope");
        for bytes in [
            br#"{"Name":"/web","Config":{"Lab"#.to_vec(),
            b"\0\xff".to_vec(),
            [
                br#"{"Name":"/web","x":""#.as_slice(),
                &vec![b'a'; MAX_CONFIG as usize],
                b"\"}",
            ]
            .concat(),
        ] {
            std::fs::write(docker.join("config.v2.json"), bytes).unwrap();
            assert_eq!(w.by_path(&path).workload, "container:4f3c2b1a09e8");
        }
        std::fs::write(docker.join("config.v2.json"), br#"{"Name":"/web"}"#).unwrap();
        assert_eq!(w.by_path(&path).workload, "container:web");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_listing_that_missed_is_read_again_after_a_second_only() {
        let mut l = Listing::default();
        let reads = std::cell::Cell::new(0);
        let get = |l: &mut Listing| {
            l.get("a", || {
                reads.set(reads.get() + 1);
                HashMap::from([("b".to_string(), Found::Container("b".into()))])
            })
        };
        assert_eq!(get(&mut l), Found::Nothing);
        assert_eq!(get(&mut l), Found::Nothing);
        assert_eq!(reads.get(), 1);
        assert_eq!(l.get("b", || unreachable!()), Found::Container("b".into()));
        l.read = Some(Instant::now() - RELIST_EVERY);
        get(&mut l);
        assert_eq!(reads.get(), 2);
    }

    #[test]
    fn the_cache_keeps_what_collections_use_and_stays_bounded() {
        let mut w = Workloads::new(None, Path::new("/nonexistent"));
        for id in 1..=MAX_CACHED as u64 + 1 {
            assert_eq!(w.resolve(id).workload, format!("cgroup:{id}"));
            if id % 1024 == 0 {
                w.next_collection();
                // Id 1 is in every collection: never the least recently used.
                w.resolve(1);
            }
        }
        w.next_collection();
        assert_eq!(w.cache.len(), MAX_CACHED * 3 / 4);
        assert!(w.cache.contains_key(&1));
        assert!(w.cache.contains_key(&(MAX_CACHED as u64 + 1)));
        // A scrape never reads: an unknown id is pending until the tick names it.
        assert_eq!(w.cached(2), None);
        w.resolve_pending();
        assert_eq!(w.cached(2).map(|w| w.workload.clone()), Some("cgroup:2".into()));
    }
}
