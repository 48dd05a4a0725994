//! The kernel's `WATCH` array (a byte per destination port, in 8-byte slots), mapped into
//! memory: user space scans all 65,536 ports on every tick and flips single bytes without a
//! syscall, while the programs read and set them with plain loads and stores.
use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
};

use aya::maps::MapData;

const PORTS: usize = 1 << 16;
/// Array elements are laid out `round_up(value_size, 8)` apart.
const SLOT: usize = 8;
const LEN: usize = PORTS * SLOT;

pub struct WatchMap {
    base: NonNull<u8>,
    /// Holds the map's fd for as long as the mapping is used.
    _map: MapData,
}

// SAFETY: the mapping is plain shared memory; every access is a volatile byte load or store.
unsafe impl Send for WatchMap {}

impl WatchMap {
    /// Maps `WATCH` (created `BPF_F_MMAPABLE` with one slot per port).
    pub fn new(map: MapData) -> io::Result<Self> {
        // SAFETY: a fresh shared mapping of the map's fd; the kernel checks the flag and size.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Self { base, _map: map })
    }

    fn slot(&self, port: u16) -> *mut u8 {
        // SAFETY: `port` < PORTS, so the slot is inside the mapping.
        unsafe { self.base.as_ptr().add(usize::from(port) * SLOT) }
    }

    /// The ports currently watched.
    pub fn ports(&self) -> impl Iterator<Item = u16> + '_ {
        // SAFETY: inside the mapping; volatile, as the kernel writes concurrently.
        (0..=u16::MAX).filter(|p| unsafe { self.slot(*p).read_volatile() } != 0)
    }

    pub fn set(&self, port: u16, on: bool) {
        // SAFETY: as above; a byte store cannot tear.
        unsafe { self.slot(port).write_volatile(u8::from(on)) }
    }
}

impl Drop for WatchMap {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, no longer used.
        unsafe { libc::munmap(self.base.as_ptr().cast(), LEN) };
    }
}
