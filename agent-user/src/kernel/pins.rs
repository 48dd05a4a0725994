//! Restart continuity. While the daemon runs, its maps and links are pinned under a bpffs
//! directory (`pin_dir`), so the programs keep counting while it is down (a crash, an upgrade, a
//! `--keep-pins` restart) and the next daemon reads on from the same maps.
//!
//! Handoff: the next daemon loads its programs against the pinned maps and attaches them next to
//! the old ones, inactive (a copy counts only while `CONFIG[GENERATION]` holds its own
//! generation), then switches the generation in one map write and unpins the old links. No
//! refusal is missed and none is counted twice.
use std::{
    collections::BTreeMap,
    fs::{File, TryLockError},
    os::unix::fs::chown,
    path::{Path, PathBuf},
};

use agent_common::{config, names};
use aya::{
    maps::{Array, MapData, MapError},
    programs::links::FdLink,
};

use crate::kernel::kernel_log;

/// `statfs(2)` magic of a bpf filesystem.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("pin_dir {0}: not on a bpf filesystem, and mounting one on /sys/fs/bpf failed: {1}")]
    NotBpffs(PathBuf, std::io::Error),
    #[error("pin_dir {0}: held by another running refusal-agent (stop it, or give this one its own --pin-dir)")]
    Busy(PathBuf),
    #[error("pin_dir {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("pinned map {path}: {source}")]
    Map { path: PathBuf, source: MapError },
    #[error("pinning link {path}: {source}")]
    Link { path: PathBuf, source: aya::pin::PinError },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PinError + '_ {
    move |source| PinError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Shape of a map, as the kernel reports it and as the object declares it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

/// The maps that carry state from one daemon to the next: everything the object declares
/// except its globals (`.rodata`, `.bss`: per build), the `trace` ring buffer and the
/// programs' log ring (each copy reads its own).
pub fn object_layouts(object: &[u8]) -> BTreeMap<String, Layout> {
    let Ok(obj) = aya_obj::Object::parse(object) else {
        return BTreeMap::new();
    };
    obj.maps
        .iter()
        .filter(|(name, _)| !name.starts_with('.') && *name != names::EVENTS && *name != kernel_log::RING)
        .map(|(name, m)| {
            let layout = Layout {
                map_type: m.map_type(),
                key_size: m.key_size(),
                value_size: m.value_size(),
                max_entries: m.max_entries(),
            };
            (name.clone(), layout)
        })
        .collect()
}

/// A held pin directory (`flock`ed: one daemon per directory).
pub struct Pins {
    dir: PathBuf,
    _lock: File,
}

/// What loading needs from the pins: where each map lives and which generation to be.
pub struct Plan {
    pub maps: Vec<(String, PathBuf)>,
    pub generation: u32,
    /// Maps found pinned and reused (0: a fresh start).
    pub reused: usize,
    /// Maps found pinned with another layout (an upgrade that changed them): their counts restart.
    pub discarded: Vec<String>,
}

impl Pins {
    /// Creates and locks `dir`, mounting bpffs on /sys/fs/bpf first when nothing is mounted there.
    pub fn open(dir: &Path) -> Result<Self, PinError> {
        if !is_bpffs(dir) {
            mount_bpffs().map_err(|e| PinError::NotBpffs(dir.to_path_buf(), e))?;
            if !is_bpffs(dir) {
                let why = std::io::Error::other("still not bpffs after mounting /sys/fs/bpf");
                return Err(PinError::NotBpffs(dir.to_path_buf(), why));
            }
        }
        for d in [dir.to_path_buf(), dir.join("maps"), dir.join("links")] {
            std::fs::create_dir_all(&d).map_err(io(&d))?;
        }
        let lock = File::open(dir).map_err(io(dir))?;
        // An exclusive flock(2) on Linux, as earlier daemons took it; released when the
        // process ends, however it ends.
        lock.try_lock().map_err(|e| match e {
            TryLockError::WouldBlock => PinError::Busy(dir.to_path_buf()),
            TryLockError::Error(source) => PinError::Io {
                path: dir.to_path_buf(),
                source,
            },
        })?;
        Ok(Self {
            dir: dir.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// No predecessor's programs are pinned here.
    pub fn fresh(&self) -> bool {
        std::fs::read_dir(self.dir.join("links")).is_ok_and(|mut d| d.next().is_none())
    }

    /// Reuses every pinned map whose layout matches `layouts`; unpins the others.
    pub fn plan(&self, layouts: &BTreeMap<String, Layout>) -> Result<Plan, PinError> {
        let mut plan = Plan {
            maps: Vec::new(),
            generation: 1,
            reused: 0,
            discarded: Vec::new(),
        };
        for (name, want) in layouts {
            let path = self.dir.join("maps").join(name);
            if path.exists() {
                let map = MapData::from_pin(&path).map_err(|source| PinError::Map {
                    path: path.clone(),
                    source,
                })?;
                if pinned_layout(&map).is_some_and(|have| have == *want) {
                    plan.reused += 1;
                    if name == names::CONFIG {
                        plan.generation = following(current_generation(map));
                    }
                } else {
                    std::fs::remove_file(&path).map_err(io(&path))?;
                    plan.discarded.push(name.clone());
                }
            }
            plan.maps.push((name.clone(), path));
        }
        Ok(plan)
    }

    /// Pins this generation's links. On failure none of them stays pinned (nor attached: a link
    /// that fails to pin is dropped), and the predecessor's programs, still the counting ones,
    /// are untouched.
    pub fn pin_links(&self, generation: u32, links: Vec<(String, FdLink)>) -> Result<(), PinError> {
        let dir = self.dir.join("links");
        for (name, link) in links {
            let path = dir.join(format!("{}{name}", prefix(generation)));
            // The pin holds the link from now on; our descriptor closes with the returned value.
            if let Err(source) = link.pin(&path) {
                let ours = prefix(generation);
                let _ = self.unpin_links(|name| name.starts_with(&ours));
                return Err(PinError::Link { path, source });
            }
        }
        Ok(())
    }

    /// Unpins every link but `generation`'s (its programs count now): the old programs detach.
    /// Returns how many went.
    pub fn retire_links(&self, generation: u32) -> Result<usize, PinError> {
        let ours = prefix(generation);
        self.unpin_links(|name| !name.starts_with(&ours))
    }

    fn unpin_links(&self, which: impl Fn(&str) -> bool) -> Result<usize, PinError> {
        let dir = self.dir.join("links");
        let mut unpinned = 0;
        for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let path = entry.map_err(io(&dir))?.path();
            if path.file_name().is_some_and(|n| which(&n.to_string_lossy())) {
                std::fs::remove_file(&path).map_err(io(&path))?;
                unpinned += 1;
            }
        }
        Ok(unpinned)
    }

    /// Lets `uid:gid` remove the pins at exit after privileges are dropped.
    pub fn chown(&self, uid: u32, gid: u32) -> Result<(), PinError> {
        for d in [self.dir.clone(), self.dir.join("maps"), self.dir.join("links")] {
            chown(&d, Some(uid), Some(gid)).map_err(io(&d))?;
        }
        Ok(())
    }

    /// A clean stop: unpinning detaches the programs once the daemon's own descriptors close.
    /// The directory itself stays when its parent is not ours to write (after `--user`, below a
    /// root-owned parent without the sticky bit): it then holds nothing.
    pub fn remove(self) -> Result<(), PinError> {
        for d in [self.dir.join("links"), self.dir.join("maps")] {
            std::fs::remove_dir_all(&d).map_err(io(&d))?;
        }
        match std::fs::remove_dir(&self.dir) {
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Ok(()),
            r => r.map_err(io(&self.dir)),
        }
    }
}

fn pinned_layout(map: &MapData) -> Option<Layout> {
    let info = map.info().ok()?;
    Some(Layout {
        map_type: info.map_type().ok()? as u32,
        key_size: info.key_size(),
        value_size: info.value_size(),
        max_entries: info.max_entries(),
    })
}

fn current_generation(config_map: MapData) -> u32 {
    Array::<_, u32>::try_from(aya::maps::Map::Array(config_map))
        .ok()
        .and_then(|a| a.get(&config::GENERATION, 0).ok())
        .unwrap_or(0)
}

/// Link pin names start with their generation (bpffs names allow no dots).
fn prefix(generation: u32) -> String {
    format!("g{generation}-")
}

/// One past the generation counting now, never 0 (0 is the unpinned copies' generation).
pub fn following(generation: u32) -> u32 {
    generation.wrapping_add(1).max(1)
}

/// Whether `path`, or its nearest existing ancestor, is on bpffs.
fn is_bpffs(path: &Path) -> bool {
    let Some(path) = path.ancestors().find(|p| p.exists()) else {
        return false;
    };
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: zeroed statfs is a valid out-buffer; `c` is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}

fn mount_bpffs() -> std::io::Result<()> {
    std::fs::create_dir_all("/sys/fs/bpf")?;
    // SAFETY: NUL-terminated literals.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            c"/sys/fs/bpf".as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_skip_zero() {
        assert_eq!(following(0), 1);
        assert_eq!(following(1), 2);
        assert_eq!(following(u32::MAX), 1);
    }

    #[test]
    fn the_object_declares_every_counting_map_and_no_globals() {
        let layouts = object_layouts(crate::kernel::loader::OBJECT);
        for name in [
            names::TARGETS,
            names::OWNERS,
            names::CONFIG,
            names::INBOUND,
            names::RESETS_RECEIVED,
            names::RESETS_SENT,
            names::OVERFLOW,
            names::DROPS,
            names::WATCH,
        ] {
            assert!(layouts.contains_key(name), "{name} in {layouts:?}");
        }
        assert!(
            layouts
                .keys()
                .all(|n| !n.starts_with('.') && n != names::EVENTS && n != kernel_log::RING)
        );
        assert_eq!(layouts[names::CONFIG].max_entries, config::COUNT);
        // Each copy reads its own log ring: one a predecessor shared would mix their records.
        let object = aya_obj::Object::parse(crate::kernel::loader::OBJECT).unwrap();
        assert!(object.maps.contains_key(kernel_log::RING));
    }
}
