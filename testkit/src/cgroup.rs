//! Cgroups made for tests: v2 directories for workload names, memory-limited ones for OOM kills.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// A cgroup made for the test, removed on drop (after its processes exited).
pub struct Cgroup(PathBuf);

impl Cgroup {
    pub fn new(rel: &str) -> Cgroup {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let root = mountinfo
            .lines()
            .find_map(|l| {
                let (pre, post) = l.split_once(" - ")?;
                (post.starts_with("cgroup2 ")).then(|| pre.split_whitespace().nth(4).unwrap().to_string())
            })
            .expect("cgroup2 mounted");
        let path = Path::new(&root).join(rel);
        std::fs::create_dir_all(&path).unwrap();
        Cgroup(path)
    }

    /// Runs `cmd` in a shell that first moves itself into this cgroup.
    pub fn run(&self, cmd: &str) {
        let procs = self.0.join("cgroup.procs");
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("echo $$ > {} && exec {cmd}", procs.display()))
            .output()
            .unwrap();
        assert!(out.status.code().is_some(), "{out:?}");
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Leaf first, then the parents the test created.
        let mut p = self.0.clone();
        while p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("refusal-") || p != self.0)
        {
            if std::fs::remove_dir(&p).is_err() {
                break;
            }
            p = match p.parent() {
                Some(parent) => parent.to_path_buf(),
                None => break,
            };
            if !p.to_string_lossy().contains("refusal-test") {
                break;
            }
        }
    }
}

/// A cgroup with a memory limit, for OOM kills: cgroup v2 where its memory controller can be
/// enabled, else the v1 memory hierarchy (hybrid hosts). Removed on drop.
pub struct MemoryCgroup(PathBuf);

/// Mount points from `/proc/self/mountinfo`: (filesystem type, super options, mount point).
fn mounts() -> Vec<(String, String, PathBuf)> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mountinfo
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let mut post = post.split_whitespace();
            let (fstype, _source, options) = (post.next()?, post.next()?, post.next()?);
            Some((
                fstype.into(),
                options.into(),
                PathBuf::from(pre.split_whitespace().nth(4)?),
            ))
        })
        .collect()
}

impl MemoryCgroup {
    /// A cgroup `name` whose processes may use `limit` bytes, without swap; `None` where the
    /// host has no memory controller to give one (loudly, and a failure under CI).
    pub fn new(name: &str, limit: u64) -> Option<MemoryCgroup> {
        let write = |dir: &Path, file: &str, value: &str| std::fs::write(dir.join(file), value).is_ok();
        for (fstype, options, at) in mounts() {
            if fstype == "cgroup2"
                && std::fs::read_to_string(at.join("cgroup.controllers")).is_ok_and(|c| c.contains("memory"))
            {
                let _ = write(&at, "cgroup.subtree_control", "+memory");
                let dir = at.join(name);
                if std::fs::create_dir_all(&dir).is_ok()
                    && write(&dir, "memory.max", &limit.to_string())
                    && write(&dir, "memory.swap.max", "0")
                {
                    return Some(MemoryCgroup(dir));
                }
            }
            if fstype == "cgroup" && options.split(',').any(|o| o == "memory") {
                // Below this process's own memory cgroup: a container may own only that one.
                let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
                let rel = own
                    .lines()
                    .find_map(|l| {
                        let mut f = l.splitn(3, ':');
                        let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
                        controllers
                            .split(',')
                            .any(|c| c == "memory")
                            .then(|| path.trim_start_matches('/'))
                    })
                    .unwrap_or("");
                let dir = at.join(rel).join(name);
                if std::fs::create_dir_all(&dir).is_ok() && write(&dir, "memory.limit_in_bytes", &limit.to_string()) {
                    let _ = write(&dir, "memory.swappiness", "0");
                    return Some(MemoryCgroup(dir));
                }
            }
        }
        let why = "no memory cgroup controller on this host (neither cgroup v2's nor v1's can be used)";
        if crate::ci() {
            panic!("{name}: {why}, and CI=true: refusing to skip");
        }
        eprintln!("\n!!! SKIPPED {name}: {why} !!!\n");
        None
    }

    /// A `sh -c` script that moves the shell into the cgroup, then runs its arguments in its
    /// place: `sh -c SCRIPT sh PROGRAM ARGS…`.
    pub fn shell(&self) -> String {
        format!("echo $$ > {}/cgroup.procs && exec \"$@\"", self.0.display())
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}
