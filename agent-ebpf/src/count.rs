//! What the programs count: connect outcomes per target, resets, inbound refusals, the
//! overflow and drop counters, the watched ports, and `trace` events.
use agent_common::{
    Counter, Drop, Event, InboundKey, Owner, ResetKey, ResetSentKey, TargetKey, overflow, proto, tcp_state,
};
use aya_ebpf::{
    bindings::{BPF_NOEXIST, BPF_RB_NO_WAKEUP},
    maps::{PerCpuArray, PerCpuHashMap},
};

use crate::{
    maps::{
        CONFIG, DROPS, EMIT_EVENTS, EVENTS, INBOUND, OVERFLOW, RESETS_FOLDED, RESETS_RECEIVED, RESETS_SENT, TARGETS,
        TARGETS_FOLDED, WATCH,
    },
    runtime::{copy_comm, counting, now, zero},
    sock::{self, Addr},
};

/// Adds `n` to a counter in a map value with one atomic instruction: a program run from a
/// softirq on this CPU (the error report recovering a state change the state program lost)
/// can land between a plain load and store of the same key's value, and one count would be lost.
#[inline(always)]
fn add_to(counter: &mut u64, n: u64) {
    // SAFETY: an 8-aligned `u64` in a map value, valid for the program's run. The old value is
    // not used, so this is the plain atomic add every kernel takes (BPF_XADD), not a fetch.
    unsafe { core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(counter, n) };
}

#[inline(always)]
fn bump(array: &PerCpuArray<u64>, index: u32) {
    if let Some(slot) = array.get_ptr_mut(index) {
        // SAFETY: this CPU's slot of a per-CPU array.
        add_to(unsafe { &mut *slot }, 1);
    }
}

#[inline(always)]
pub fn drop(what: Drop) {
    bump(&DROPS, what as u32);
}

/// Applies `update` to this CPU's value of `key`, inserting `init` first time; false when the
/// map is full.
#[inline(always)]
fn add<K, V>(map: &PerCpuHashMap<K, V>, key: &K, init: V, update: impl Fn(&mut V)) -> bool {
    if let Some(v) = map.get_ptr_mut(key) {
        // SAFETY: this CPU's value slot.
        update(unsafe { &mut *v });
        return true;
    }
    match map.insert(key, init, BPF_NOEXIST.into()) {
        Ok(()) => true,
        // Another CPU inserted the key between our lookup and insert.
        Err(-17) => {
            if let Some(v) = map.get_ptr_mut(key) {
                // SAFETY: as above.
                update(unsafe { &mut *v });
            }
            true
        }
        Err(_) => false,
    }
}

#[inline(always)]
fn add_one<K>(map: &PerCpuHashMap<K, u64>, key: &K, overflow_slot: u32) {
    if !counting() {
        return;
    }
    if !add(map, key, 1, |v| add_to(v, 1)) {
        drop(Drop::ResetMapFull);
        bump(&OVERFLOW, overflow_slot);
    }
}

/// Forgets a key's destination: past a full map, counts keep their process.
#[inline(always)]
fn fold_destination(daddr: &mut [u8; 16], dport: &mut u16) {
    // SAFETY: 16 bytes at an 8-aligned offset of every key (after `cgroup_id`); word stores,
    // where `[0; 16]` would be a byte-wise memset.
    unsafe { daddr.as_mut_ptr().cast::<[u64; 2]>().write_volatile([0, 0]) };
    *dport = 0;
}

/// Counts one connect outcome for `key` at `now`, `resets` (0 or 1) of them caused by a RST in
/// SYN_SENT. A failure that finds the map full is counted without its destination
/// (`TARGETS_FOLDED`), and where that is full too, by protocol and errno alone (`OVERFLOW`).
#[inline(always)]
fn count_target(key: &mut TargetKey, now: u64, resets: u64) {
    let init = Counter {
        count: 1,
        last_ns: now,
        resets,
    };
    let update = |c: &mut Counter| {
        add_to(&mut c.count, 1);
        c.last_ns = now;
        if resets != 0 {
            add_to(&mut c.resets, resets);
        }
    };
    if key.errno != 0 {
        watch(key.dport);
    }
    if add(&TARGETS, key, init, update) {
        return;
    }
    drop(Drop::TargetMapFull);
    // Successes only tell verdicts a target came up: a folded one tells nothing.
    if key.errno == 0 {
        return;
    }
    fold_destination(&mut key.daddr, &mut key.dport);
    if add(&TARGETS_FOLDED, key, init, update) {
        return;
    }
    let slot = overflow::FAILURES
        + u32::from(key.proto == proto::UDP) * overflow::ERRNO_SLOTS
        + u32::from(key.errno).min(overflow::ERRNO_SLOTS - 1);
    bump(&OVERFLOW, slot);
    if resets != 0 {
        bump(&OVERFLOW, overflow::RESETS_RECEIVED + tcp_state::SYN_SENT as u32);
    }
}

/// Whether successful connects to `port` are counted.
#[inline(always)]
pub fn watched(port: u16) -> bool {
    WATCH.get(u32::from(port)).is_some_and(|w| *w != 0)
}

/// Starts counting successful connects to `port` (see `WATCH`).
#[inline(always)]
fn watch(port: u16) {
    raise(WATCH.get_ptr_mut(u32::from(port)));
    raise(CONFIG.get_ptr_mut(agent_common::config::WATCHING));
}

/// Sets a flag in an array map to 1, storing only when it changes: every program on every CPU
/// reads these cache lines, and a store would pull them away. Racing stores write the same value.
#[inline(always)]
fn raise<T: Copy + PartialEq + From<u8>>(flag: Option<*mut T>) {
    if let Some(f) = flag {
        // SAFETY: an element of an array map, valid for the program's run.
        unsafe {
            if *f == T::from(0) {
                *f = T::from(1);
            }
        }
    }
}

/// A connect outcome at `at_ns` (`CLOCK_MONOTONIC`): counted per target (errno 0 is a success
/// to a watched port), `resets` (0 or 1) of it caused by a RST in SYN_SENT, and every failure
/// also streamed for `trace`.
#[inline(always)]
pub fn connect_outcome(o: &Owner, proto: u8, daddr: Addr, dport: u16, errno: u16, resets: u64, at_ns: u64) {
    if !counting() {
        return;
    }
    let mut key = core::mem::MaybeUninit::uninit();
    let key: &mut TargetKey = zero(&mut key);
    key.cgroup_id = o.cgroup_id;
    key.daddr = sock::bytes(daddr);
    copy_comm(&mut key.comm, &o.comm);
    key.dport = dport;
    key.errno = errno;
    key.proto = proto;
    count_target(key, at_ns, resets);
    if errno != 0 {
        emit(|| Event {
            cgroup_id: o.cgroup_id,
            tgid: o.tgid,
            kind: agent_common::event_kind::CONNECT_FAILED,
            proto,
            code: errno,
            comm: o.comm,
            daddr: sock::bytes(daddr),
            dport,
            ..Event::default()
        });
    }
}

/// As [`count_target`]: past a full map the destination folds (`RESETS_FOLDED`), then the state
/// alone (`OVERFLOW`).
#[inline(always)]
pub fn count_reset_received(key: &mut ResetKey) {
    if !counting() || add(&RESETS_RECEIVED, key, 1, |v| add_to(v, 1)) {
        return;
    }
    drop(Drop::ResetMapFull);
    fold_destination(&mut key.daddr, &mut key.dport);
    if !add(&RESETS_FOLDED, key, 1, |v| add_to(v, 1)) {
        bump(&OVERFLOW, overflow::RESETS_RECEIVED + u32::from(key.state).min(15));
    }
}

#[inline(always)]
pub fn count_reset_sent(key: &ResetSentKey) {
    add_one(&RESETS_SENT, key, overflow::RESETS_SENT + key.reason.min(63));
}

#[inline(always)]
pub fn count_inbound(key: &InboundKey) {
    add_one(&INBOUND, key, overflow::INBOUND);
}

#[inline(always)]
pub fn emit(event: impl FnOnce() -> Event) {
    // SAFETY: reading a static the loader may rewrite before load.
    if unsafe { core::ptr::read_volatile(&EMIT_EVENTS) } == 0 {
        return;
    }
    let mut ev = event();
    ev.ts_ns = now();
    if EVENTS.output::<Event>(&ev, BPF_RB_NO_WAKEUP.into()).is_err() {
        drop(Drop::TraceRingFull);
    }
}
