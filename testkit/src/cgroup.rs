//! cgroup v2 directories for workload names.
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
