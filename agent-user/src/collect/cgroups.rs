//! cgroup id → cgroup path: the kernel gives the id, `open_by_handle_at` the path (named by
//! `workloads.rs`).
use std::{
    ffi::CString,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::PathBuf,
};

use agent_core::collect::workload::cgroup2_mount;

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("no cgroup2 filesystem is mounted (looked in /proc/self/mountinfo)")]
    NoCgroup2,
    #[error("opening cgroup2 mount {path}: {source}")]
    Open { path: PathBuf, source: std::io::Error },
}

/// Resolves cgroup ids (the kernel's `bpf_get_current_cgroup_id`, a kernfs inode number) to
/// paths, through `open_by_handle_at` on the cgroup2 mount: one syscall per id, no directory
/// walk.
pub struct CgroupResolver {
    mount: PathBuf,
    mount_fd: OwnedFd,
}

impl CgroupResolver {
    pub fn new() -> Result<Self, ResolveError> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mount = cgroup2_mount(&mountinfo).ok_or(ResolveError::NoCgroup2)?;
        let c = CString::new(mount.as_os_str().as_encoded_bytes()).map_err(|_| ResolveError::NoCgroup2)?;
        // SAFETY: valid NUL-terminated path; the fd is owned below.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(ResolveError::Open {
                path: mount,
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: fd was just opened and is not shared.
        let mount_fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { mount, mount_fd })
    }

    /// The cgroup's path relative to the cgroup2 mount (leading `/`); `None` once it is gone.
    pub fn path(&self, cgroup_id: u64) -> Option<String> {
        #[repr(C)]
        struct Handle {
            bytes: u32,
            kind: i32,
            id: u64,
        }
        // FILEID_KERNFS: kernfs node ids are the cgroup ids BPF reports.
        let mut handle = Handle {
            bytes: 8,
            kind: 0xfe,
            id: cgroup_id,
        };
        // SAFETY: `handle` is a valid `struct file_handle` with 8 bytes of payload.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_open_by_handle_at,
                self.mount_fd.as_raw_fd(),
                &mut handle as *mut Handle,
                libc::O_RDONLY | libc::O_CLOEXEC | libc::O_PATH,
            )
        };
        if fd < 0 {
            return None;
        }
        // SAFETY: the syscall returned a new fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let target = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
        let rel = target.strip_prefix(&self.mount).ok()?;
        Some(format!("/{}", rel.display()).replace("//", "/"))
    }
}
