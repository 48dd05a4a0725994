//! Who started a connect. Recorded in process context; RSTs and ICMP errors arrive in
//! softirq where the current task is unrelated, so failures look the owner up by socket.
use agent_common::{Drop, Owner};
use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
};

use crate::maps::{self, OWNERS};

#[inline(always)]
pub fn record(sk: *const u8) {
    let owner = Owner {
        // SAFETY: helpers callable from any tracing program.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        start_ns: unsafe { bpf_ktime_get_ns() },
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        _pad: 0,
        comm: bpf_get_current_comm().unwrap_or_default(),
    };
    if OWNERS.insert(sk as u64, owner, 0).is_err() {
        maps::drop(Drop::OwnerMapFull);
    }
}

/// Removes and returns the owner of `sk` (zeroed when unknown, e.g. a connect that started
/// before the agent did).
#[inline(always)]
pub fn take(sk: *const u8) -> Owner {
    let key = sk as u64;
    // SAFETY: the value is copied out before the entry is removed.
    let owner = unsafe { OWNERS.get(key) }.copied().unwrap_or_default();
    let _ = OWNERS.remove(key);
    owner
}

#[inline(always)]
pub fn forget(sk: *const u8) {
    let _ = OWNERS.remove(sk as u64);
}
