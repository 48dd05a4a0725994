//! Whole maps in a few `BPF_MAP_LOOKUP_BATCH` calls (Linux 5.6; per-CPU arrays later, read key
//! by key before). aya's iterator costs two syscalls per key (next key, then lookup), 40,000 of
//! them for a scrape at 10,000 series; a batch brings thousands of entries per call.
use std::{
    io,
    mem::size_of,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::{
    Pod,
    maps::{MapData, MapError},
    sys::SyscallError,
};

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// The kernel's "operation not supported" (not in libc: it is not a user-space errno).
const ENOTSUPP: i32 = 524;
/// Bytes of keys and values one call fills at most: small enough for malloc to reuse rather than
/// map and unmap (the batch shrinks on hosts with many CPUs).
const BATCH_BYTES: usize = 96 * 1024;

/// `union bpf_attr`'s member for the `BPF_MAP_*_BATCH` commands.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Calls `f` with every key of the hash or array `map` and its values: one per possible CPU for a
/// per-CPU map, else one.
pub fn for_each<K: Pod, V: Pod>(map: &MapData, per_cpu: bool, mut f: impl FnMut(K, &[V])) -> Result<(), MapError> {
    let syscall_error = |io_error| SyscallError {
        call: "bpf_map_lookup_batch",
        io_error,
    };
    let (cpus, stride) = if per_cpu {
        // The kernel lays per-CPU values out 8-byte aligned.
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| syscall_error(e))?;
        (cpus, size_of::<V>().next_multiple_of(8))
    } else {
        (1, size_of::<V>())
    };
    let mut batch = (BATCH_BYTES / (size_of::<K>() + cpus * stride)).max(16);
    let (mut keys, mut values) = (Vec::new(), Vec::new());
    let mut per_cpu: Vec<V> = Vec::with_capacity(cpus);
    // The kernel's cursor (a hash bucket, an array index): passed back to continue where the last
    // call ended.
    let (mut cursor, mut next) = (0u64, 0u64);
    let mut first = true;
    loop {
        keys.resize(batch * size_of::<K>(), 0u8);
        values.resize(batch * cpus * stride, 0u8);
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { &raw const cursor as u64 },
            out_batch: &raw mut next as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: u32::try_from(batch).unwrap_or(u32::MAX),
            map_fd: map.fd().as_fd().as_raw_fd() as u32,
            ..Default::default()
        };
        // SAFETY: every pointer in `attr` points at a live buffer of the size `count` implies.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &raw mut attr,
                size_of::<BatchAttr>() as libc::c_uint,
            )
        };
        let err = (ret < 0).then(io::Error::last_os_error);
        match err.as_ref().and_then(io::Error::raw_os_error) {
            // No batch lookup for this map type on this kernel (per-CPU arrays before 5.13):
            // the kernel's ENOTSUPP.
            Some(ENOTSUPP) if first => return one_by_one(map, cpus, stride, f).map_err(|e| syscall_error(e).into()),
            // One hash bucket holds more entries than fit: retry bigger.
            Some(libc::ENOSPC) => {
                batch *= 2;
                continue;
            }
            // ENOENT: the last batch (possibly empty).
            None | Some(libc::ENOENT) => {}
            Some(_) => return Err(syscall_error(err.unwrap_or_else(io::Error::last_os_error)).into()),
        }
        for i in 0..attr.count as usize {
            // SAFETY: the kernel filled `attr.count` keys and their values; reads are unaligned.
            let key = unsafe { keys.as_ptr().add(i * size_of::<K>()).cast::<K>().read_unaligned() };
            per_cpu.clear();
            per_cpu.extend((0..cpus).map(|cpu| {
                // SAFETY: as above, `cpus` values per key, `stride` bytes apart.
                unsafe {
                    values
                        .as_ptr()
                        .add((i * cpus + cpu) * stride)
                        .cast::<V>()
                        .read_unaligned()
                }
            }));
            f(key, &per_cpu);
        }
        if err.is_some() {
            return Ok(());
        }
        cursor = next;
        first = false;
    }
}

/// `union bpf_attr`'s member for `BPF_MAP_LOOKUP_ELEM` and `BPF_MAP_GET_NEXT_KEY`.
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    /// `value` for a lookup, `next_key` for the next key.
    value: u64,
    flags: u64,
}

fn elem_call(cmd: libc::c_long, attr: &mut ElemAttr) -> io::Result<()> {
    // SAFETY: `attr` points at live buffers of the map's key and value sizes.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut ElemAttr,
            size_of::<ElemAttr>() as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// [`for_each`] two syscalls per key, for maps the kernel cannot read in batches.
fn one_by_one<K: Pod, V: Pod>(map: &MapData, cpus: usize, stride: usize, mut f: impl FnMut(K, &[V])) -> io::Result<()> {
    let map_fd = map.fd().as_fd().as_raw_fd() as u32;
    let (mut key, mut next) = (vec![0u8; size_of::<K>()], vec![0u8; size_of::<K>()]);
    let mut values = vec![0u8; cpus * stride];
    let mut per_cpu: Vec<V> = Vec::with_capacity(cpus);
    let mut first = true;
    loop {
        let mut attr = ElemAttr {
            map_fd,
            // A null key asks for the first one.
            key: if first { 0 } else { key.as_ptr() as u64 },
            value: next.as_mut_ptr() as u64,
            ..Default::default()
        };
        match elem_call(BPF_MAP_GET_NEXT_KEY, &mut attr) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            r => r?,
        }
        std::mem::swap(&mut key, &mut next);
        first = false;
        let mut attr = ElemAttr {
            map_fd,
            key: key.as_ptr() as u64,
            value: values.as_mut_ptr() as u64,
            ..Default::default()
        };
        match elem_call(BPF_MAP_LOOKUP_ELEM, &mut attr) {
            // Deleted since its key was listed.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            r => r?,
        }
        per_cpu.clear();
        // SAFETY: the kernel filled `cpus` values `stride` bytes apart; reads are unaligned.
        per_cpu.extend((0..cpus).map(|cpu| unsafe { values.as_ptr().add(cpu * stride).cast::<V>().read_unaligned() }));
        // SAFETY: the kernel wrote a whole key.
        f(unsafe { key.as_ptr().cast::<K>().read_unaligned() }, &per_cpu);
    }
}
