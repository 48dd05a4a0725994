//! What every program run needs whatever it counts: the entry-point wrapper, the generation
//! gate, runtime switches, clocks, a pointer as a number, and zeroing and copying that the
//! target would otherwise turn into byte-wise `memset`/`memmove` calls.
use aya_ebpf::{
    helpers::{bpf_jiffies64, bpf_ktime_get_ns},
    macros::map,
    maps::PerCpuArray,
};

use crate::maps::{CONFIG, EMPTY_PROGRAMS, GENERATION};

/// Per-CPU working space of one program run.
#[repr(C)]
#[derive(Clone, Copy)]
struct Scratch {
    /// The jiffy of this CPU's last clock read and what it read: see [`tick_ns`].
    jiffies: u64,
    ns: u64,
    /// See [`address`].
    addr: u64,
}

#[map(name = "SCRATCH")]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// The body of every entry point: the benchmarks' empty variant returns before `body` runs;
/// `Err` carries the return value of an early exit.
#[inline(always)]
pub fn run(body: impl FnOnce() -> Result<u32, u32>) -> u32 {
    // SAFETY: reading a static the loader may rewrite before load.
    if unsafe { core::ptr::read_volatile(&EMPTY_PROGRAMS) } != 0 {
        return 0;
    }
    match body() {
        Ok(v) | Err(v) => v,
    }
}

#[inline(always)]
pub fn counting() -> bool {
    // SAFETY: reading a static the loader may rewrite before load.
    config(agent_common::config::GENERATION) == unsafe { core::ptr::read_volatile(&GENERATION) }
}

#[inline(always)]
pub fn config(index: u32) -> u32 {
    CONFIG.get(index).copied().unwrap_or(0)
}

/// `bpf_ktime_get_ns()`: for rare events only, see [`tick_ns`].
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: helper callable from any tracing program.
    unsafe { bpf_ktime_get_ns() }
}

/// `bpf_ktime_get_ns()` to within a jiffy, read at most once a jiffy per CPU: a clock read
/// costs hundreds of ns on virtual machines whose TSC reads trap (these machines), a jiffies
/// read nothing. For times that a tick of error does not hurt.
#[inline(always)]
pub fn tick_ns() -> u64 {
    // SAFETY: helpers callable from any tracing program.
    let jiffies = unsafe { bpf_jiffies64() };
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's slot; a program interleaving on this CPU at worst stores a time a
    // tick off.
    unsafe {
        if (*s).jiffies != jiffies {
            (*s).jiffies = jiffies;
            (*s).ns = now();
        }
        (*s).ns
    }
}

/// The address `p` holds, as a number. A BTF pointer allows no arithmetic but adding an
/// offset; stored into a map value and read back (privileged programs may), it is a plain
/// number to the verifier. A program run from an interrupt between the store and the load
/// (softirq network processing) would leave its own value: two round trips that disagree
/// mean that happened, and a third settles it.
#[inline(always)]
pub fn address(p: *const u8) -> u64 {
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's slot. Volatile: every round trip must happen.
    let round_trip = || unsafe {
        core::ptr::write_volatile(core::ptr::addr_of_mut!((*s).addr), p as u64);
        core::ptr::read_volatile(core::ptr::addr_of!((*s).addr))
    };
    let (a, b) = (round_trip(), round_trip());
    if a == b { a } else { round_trip() }
}

/// Copies a task name between the 8-aligned `comm` fields of owners and keys as two words:
/// assigned as a byte array (or as a word array) it is moved with a call to a byte-wise
/// `memmove`. Volatile, so the loads and stores are not merged back into one.
#[inline(always)]
pub fn copy_comm(dst: &mut [u8; agent_common::COMM_LEN], src: &[u8; agent_common::COMM_LEN]) {
    let (d, s) = (dst.as_mut_ptr().cast::<u64>(), src.as_ptr().cast::<u64>());
    // SAFETY: every `comm` sits at an 8-aligned offset of an 8-aligned struct.
    unsafe {
        d.write_volatile(s.read_volatile());
        d.add(1).write_volatile(s.add(1).read_volatile());
    }
}

/// Zeroes `v` in place (a key or an owner) a word at a time: `[0; N]`, `mem::zeroed()` and
/// runs of zero stores become calls to a byte-wise `memset` on this target. Volatile, so the
/// stores are not merged back into one; in place, since a moved value may be copied bytewise.
#[inline(always)]
pub fn zero<T: Copy>(v: &mut core::mem::MaybeUninit<T>) -> &mut T {
    match core::mem::align_of::<T>() {
        8.. => fill::<T, u64>(v),
        4 => fill::<T, u32>(v),
        2 => fill::<T, u16>(v),
        _ => fill::<T, u8>(v),
    }
    // SAFETY: every byte written; plain data, all zeros is valid.
    unsafe { v.assume_init_mut() }
}

#[inline(always)]
fn fill<T, W: Default>(v: &mut core::mem::MaybeUninit<T>) {
    const { assert!(core::mem::size_of::<T>().is_multiple_of(core::mem::size_of::<W>())) };
    let words = v.as_mut_ptr().cast::<W>();
    for i in 0..core::mem::size_of::<T>() / core::mem::size_of::<W>() {
        // SAFETY: inside `v`; `W` is no more aligned than `T`.
        unsafe { words.add(i).write_volatile(W::default()) };
    }
}
