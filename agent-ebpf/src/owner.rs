//! Who a socket belongs to. Recorded in process context when a connect starts; RSTs and ICMP
//! errors arrive in softirq where the current task is unrelated, so later events look the
//! owner up by socket.
use agent_common::{COMM_LEN, Drop, Owner, config};
use aya_ebpf::helpers::{bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns};

use crate::{
    maps::{self, OWNERS},
    sock,
};

#[inline(always)]
pub fn current() -> Owner {
    Owner {
        // SAFETY: helpers callable from any tracing program.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        start_ns: unsafe { bpf_ktime_get_ns() },
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        _pad: 0,
        comm: bpf_get_current_comm().unwrap_or_default(),
    }
}

#[inline(always)]
pub fn record(sk: *const u8) {
    if OWNERS.insert(sk as u64, current(), 0).is_err() {
        maps::drop(Drop::OwnerMapFull);
    }
}

/// Records the owner at → SYN_SENT unless a dedicated connect hook (fentry/kprobe) does.
#[inline(always)]
pub fn record_from_state(sk: *const u8) {
    if maps::config(config::OWNER_FROM_CONNECT) == 0 {
        record(sk);
    }
}

#[inline(always)]
pub fn get(sk: *const u8) -> Option<Owner> {
    // SAFETY: the value is copied out immediately.
    unsafe { OWNERS.get(sk as u64) }.copied()
}

#[inline(always)]
pub fn forget(sk: *const u8) {
    if maps::counting() {
        let _ = OWNERS.remove(sk as u64);
    }
}

/// Owner of a socket that no connect of ours recorded (accepted sockets, UDP): the socket's
/// own cgroup, and the current task's name only when `current_ok` says the event runs in the
/// owning task (close(2), sendmsg(2)) and that task is in the socket's cgroup.
#[inline(always)]
pub fn of_socket(sk: *const u8, current_ok: bool) -> Owner {
    if let Some(o) = get(sk) {
        return o;
    }
    let cgroup_id = sock::cgroup_id(sk);
    let cur = current();
    let comm = if current_ok && cur.cgroup_id == cgroup_id {
        cur.comm
    } else {
        [0; COMM_LEN]
    };
    let tgid = if current_ok && cur.cgroup_id == cgroup_id {
        cur.tgid
    } else {
        0
    };
    Owner {
        cgroup_id,
        start_ns: 0,
        tgid,
        _pad: 0,
        comm,
    }
}
