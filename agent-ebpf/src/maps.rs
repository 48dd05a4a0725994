use agent_common::{Drop, OVERFLOW_SLOTS, Owner, TargetKey};
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    macros::map,
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap},
};

/// In-flight connects: socket address → who started it. Deleted when the handshake ends.
#[map(name = "OWNERS")]
pub static OWNERS: HashMap<u64, Owner> = HashMap::with_max_entries(65536, 0);

/// Failed connects per target. Never evicted: when full, failures go to `OVERFLOW`.
#[map(name = "FAILURES")]
pub static FAILURES: PerCpuHashMap<TargetKey, u64> = PerCpuHashMap::with_max_entries(16384, 0);

/// Failures that found `FAILURES` full, by `proto_slot * 256 + errno`.
#[map(name = "OVERFLOW")]
pub static OVERFLOW: PerCpuArray<u64> = PerCpuArray::with_max_entries(2 * OVERFLOW_SLOTS, 0);

/// What the kernel side had to give up, by [`Drop`].
#[map(name = "DROPS")]
pub static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Drop::COUNT, 0);

/// Runtime switches written by user space once it knows which attach modes won, indexed by
/// [`agent_common::config`].
#[map(name = "CONFIG")]
pub static CONFIG: Array<u32> = Array::with_max_entries(agent_common::config::COUNT, 0);

#[inline(always)]
pub fn config(index: u32) -> u32 {
    CONFIG.get(index).copied().unwrap_or(0)
}

#[inline(always)]
pub fn bump(array: &PerCpuArray<u64>, index: u32) {
    if let Some(slot) = array.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while the program runs.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
pub fn drop(what: Drop) {
    bump(&DROPS, what as u32);
}

/// Counts one failure for `key`, falling back to the per-errno overflow slots when the
/// map is full, so no failure goes uncounted.
#[inline(always)]
pub fn count_failure(key: &TargetKey) {
    if let Some(count) = FAILURES.get_ptr_mut(key) {
        // SAFETY: this CPU's value slot.
        unsafe { *count += 1 };
        return;
    }
    match FAILURES.insert(key, 1u64, BPF_NOEXIST.into()) {
        Ok(()) => {}
        // Another CPU inserted the key between our lookup and insert.
        Err(e) if e == -17 => {
            if let Some(count) = FAILURES.get_ptr_mut(key) {
                // SAFETY: as above.
                unsafe { *count += 1 };
            }
        }
        Err(_) => {
            drop(Drop::TargetMapFull);
            let slot = u32::from(key.proto == agent_common::proto::UDP) * OVERFLOW_SLOTS
                + u32::from(key.errno).min(OVERFLOW_SLOTS - 1);
            bump(&OVERFLOW, slot);
        }
    }
}
