//! Who a socket belongs to. Recorded in process context when a connect starts; RSTs and ICMP
//! errors arrive in softirq where the current task is unrelated, so later events look the
//! owner up by socket: in [`SLOTS`], else in `OWNERS`.
use core::mem::MaybeUninit;

use agent_common::{COMM_LEN, Drop, Owner, config};
use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_task_btf, generated::bpf_get_current_comm,
    },
    macros::map,
    maps::Array,
};

use crate::{
    count,
    maps::OWNERS,
    runtime,
    sock::{self, Btf, Mem},
};

/// The owner of a socket no connect of ours recorded, as far as the connect path knows.
pub const NOBODY: Owner = Owner {
    cgroup_id: 0,
    start_ns: 0,
    tgid: 0,
    flags: 0,
    comm: [0; COMM_LEN],
};

/// A slot of [`SLOTS`]: the socket it holds (0: free) and its owner.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Slot {
    sk: u64,
    owner: Owner,
}

const SLOT_BITS: u32 = 15;

/// Owners by socket, direct-mapped: one slot per hash of the socket's address. An array
/// lookup is a few inlined instructions where a hash map's insert, lookup and delete each
/// cost a helper call, a bucket lock and a free list; a socket whose slot another live socket
/// holds goes to `OWNERS` instead. Kernel-side only: user space expires `OWNERS` entries, and
/// a slot older than that is taken over here.
#[map(name = "OWNER_SLOTS")]
static SLOTS: Array<Slot> = Array::with_max_entries(1 << SLOT_BITS, 0);

/// A slot whose owner is older than this belongs to a socket whose close was never seen (user
/// space gives `OWNERS` entries as long).
const SLOT_MAX_AGE_NS: u64 = 6 * 3600 * 1_000_000_000;

#[inline(always)]
fn slot(sk: *const u8) -> Option<&'static mut Slot> {
    // Fibonacci hashing: sockets are slab objects a fixed stride apart.
    let i = (runtime::address(sk).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - SLOT_BITS)) as u32;
    // SAFETY: a slot of an array map; concurrent writers are sockets of the same slot at the
    // same instant, which at worst lose one owner (counted without its process).
    SLOTS.get_ptr_mut(i).map(|s| unsafe { &mut *s })
}

/// Writes the current task into `o`, every byte.
#[inline(always)]
fn fill_current(o: &mut Owner, start_ns: u64) {
    o.start_ns = start_ns;
    o.flags = 0;
    let words = o.comm.as_mut_ptr().cast::<[u64; 2]>();
    let (comm, tgid, cgroups, dfl_cgrp) = (
        sock::off!(task_comm),
        sock::off!(task_tgid),
        sock::off!(task_cgroups),
        sock::off!(css_set_dfl_cgrp),
    );
    // Before 5.11 (no `bpf_get_current_task_btf`) the helpers: fewer calls than probe reads.
    if sock::off!(task_btf) != 0 && comm != 0 && tgid != 0 && cgroups != 0 && dfl_cgrp != 0 {
        // Plain loads through the task's BTF pointer where `bpf_get_current_comm` scans and
        // copies the name byte by byte: `task->comm` is NUL-padded (set with strscpy_pad,
        // copied whole at fork), as the helper's output is. The cgroup as
        // `bpf_get_current_cgroup_id` finds it: the task's default-hierarchy cgroup's id.
        // SAFETY: helper callable from any tracing program.
        let task = unsafe { bpf_get_current_task_btf() } as *const u8;
        o.tgid = Btf::get::<i32>(task, tgid).unwrap_or(0) as u32;
        let css_set = Btf::get::<*const u8>(task, cgroups);
        let cgroup = css_set.and_then(|c| Btf::get::<*const u8>(c, dfl_cgrp));
        o.cgroup_id = cgroup.map_or(0, sock::cgroup_kn_id::<Btf>);
        // SAFETY: `comm` is 16 bytes at an 8-aligned offset of an 8-aligned struct.
        unsafe { *words = Btf::get(task, comm).unwrap_or_default() };
        return;
    }
    // SAFETY: helpers callable from any tracing program.
    o.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    o.tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // The name is part of map keys: zeroed first, as the helper may leave the bytes after the
    // NUL alone. Volatile word stores: `[0; 16]` compiles to a byte-wise memset call. Then
    // straight into the field: aya's wrapper returns the name by value, copied bytewise.
    // SAFETY: as above.
    unsafe {
        words.cast::<u64>().write_volatile(0);
        words.cast::<u64>().add(1).write_volatile(0);
        bpf_get_current_comm(o.comm.as_mut_ptr().cast(), COMM_LEN as u32);
    }
}

/// The current task as the owner, built in `o`.
#[inline(always)]
pub fn current(o: &mut MaybeUninit<Owner>) -> &mut Owner {
    let o = runtime::zero(o);
    fill_current(o, runtime::tick_ns());
    o
}

/// The current task as the owner of an event with no socket to look up (a classic
/// tracepoint's record), unless it is a kernel thread running softirq work for nobody in
/// particular: then [`NOBODY`].
#[inline(always)]
pub fn current_task(o: &mut MaybeUninit<Owner>) -> &Owner {
    if kernel_thread() { &NOBODY } else { current(o) }
}

#[inline(always)]
pub fn record(sk: *const u8) {
    let now = runtime::tick_ns();
    if let Some(s) = slot(sk)
        && (s.sk == 0 || s.sk == sk as u64 || now.wrapping_sub(s.owner.start_ns) > SLOT_MAX_AGE_NS)
    {
        s.sk = sk as u64;
        fill_current(&mut s.owner, now);
        return;
    }
    let mut o = MaybeUninit::uninit();
    let owner: &Owner = current(&mut o);
    if OWNERS.insert(sk as u64, owner, 0).is_err() {
        count::drop(Drop::OwnerMapFull);
    }
}

/// Records the owner at → SYN_SENT unless a dedicated connect hook (fentry/kprobe) does.
#[inline(always)]
pub fn record_from_state(sk: *const u8) {
    if runtime::config(config::OWNER_FROM_CONNECT) == 0 {
        record(sk);
    }
}

/// The recorded owner, in place (no copy: an `Owner` copied by value goes a byte at a time).
#[inline(always)]
pub fn get(sk: *const u8) -> Option<&'static Owner> {
    get_mut(sk).map(|o| &*o)
}

/// As [`get`], to set its `flags`.
#[inline(always)]
pub fn get_mut(sk: *const u8) -> Option<&'static mut Owner> {
    if let Some(s) = slot(sk)
        && s.sk == sk as u64
    {
        return Some(&mut s.owner);
    }
    // SAFETY: a delete racing with the access (user space expiring the entry) can only make
    // the values stale or the write moot.
    OWNERS.get_ptr_mut(sk as u64).map(|o| unsafe { &mut *o })
}

/// The socket closes: `last` sees its owner ([`NOBODY`] if none was recorded) one last time,
/// then the owner is dropped. One lookup serves both. Most sockets that close never had an
/// owner (accepted ones), and a hash lookup that misses takes no lock.
#[inline(always)]
pub fn close<R>(sk: *const u8, last: impl FnOnce(&Owner) -> R) -> R {
    // Forgetting is not idempotent: an idle copy running first would hide the owner from the
    // counting one.
    let forget = runtime::counting();
    if let Some(s) = slot(sk)
        && s.sk == sk as u64
    {
        let r = last(&s.owner);
        if forget {
            s.sk = 0;
        }
        return r;
    }
    // SAFETY: a delete racing with the read (user space expiring the entry) can only make
    // the values stale.
    let Some(o) = (unsafe { OWNERS.get(sk as u64) }) else {
        return last(&NOBODY);
    };
    let r = last(o);
    if forget {
        let _ = OWNERS.remove(sk as u64);
    }
    r
}

/// Owner of a socket: the recorded one, else (accepted sockets, UDP) the socket's own cgroup,
/// and the current task's name only when `current_ok` says the event runs in the owning task
/// (close(2), sendmsg(2)), that task is in the socket's cgroup and is not a kernel thread
/// (softirq work deferred to `ksoftirqd`, whose cgroup is the root's, like every host
/// process's); built in `scratch`, since an `Owner` returned by value is copied a byte at a
/// time.
#[inline(always)]
pub fn of_socket<M: Mem>(sk: *const u8, current_ok: bool, scratch: &mut MaybeUninit<Owner>) -> &Owner {
    if let Some(o) = get(sk) {
        return o;
    }
    let cgroup_id = sock::cgroup_id::<M>(sk);
    if current_ok && !kernel_thread() {
        let cur = current(scratch);
        if cur.cgroup_id == cgroup_id {
            cur.start_ns = 0;
            // SAFETY: initialised by `current`.
            return unsafe { scratch.assume_init_ref() };
        }
    }
    let o = runtime::zero(scratch);
    o.cgroup_id = cgroup_id;
    o
}

/// `PF_KTHREAD`: the task is a kernel thread.
const PF_KTHREAD: u32 = 0x0020_0000;

#[inline(always)]
fn kernel_thread() -> bool {
    // Unreadable flags count as a kernel thread: no name beats a wrong one.
    sock::Task::current()
        .get::<u32>(sock::off!(task_flags))
        .map_or(true, |f| f & PF_KTHREAD != 0)
}
