//! `inet_sock_set_state`: owner capture at → SYN_SENT (it runs inside `tcp_v{4,6}_connect`,
//! in the connecting task) and the failure count at SYN_SENT → CLOSE with `sk_err` set, which
//! also covers clients that closed the socket before the RST arrived (no error report then).
use agent_common::{TargetKey, config, proto, tcp_state};
use aya_ebpf::{
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};

use crate::{maps, owner, sock};

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn sock_state_btf(ctx: BtfTracePointContext) -> u32 {
    match on_state(ctx.arg(0), ctx.arg(1), ctx.arg(2)) {
        Ok(v) | Err(v) => v,
    }
}

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn sock_state_tp(ctx: TracePointContext) -> u32 {
    match try_sock_state_tp(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

fn try_sock_state_tp(ctx: &TracePointContext) -> Result<u32, u32> {
    let off = sock::offsets();
    // SAFETY: offsets come from this kernel's format file for this event.
    let (sk, old, new) = unsafe {
        (
            ctx.read_at::<u64>(off.tp_state_skaddr as usize),
            ctx.read_at::<i32>(off.tp_state_oldstate as usize),
            ctx.read_at::<i32>(off.tp_state_newstate as usize),
        )
    };
    on_state(
        sk.map_err(|_| 0u32)? as *const u8,
        old.map_err(|_| 0u32)?,
        new.map_err(|_| 0u32)?,
    )
}

/// Every TCP state change on the host comes through here: exit before any map access unless
/// the change enters or leaves SYN_SENT.
#[inline(always)]
fn on_state(sk: *const u8, old: i32, new: i32) -> Result<u32, u32> {
    if new == tcp_state::SYN_SENT {
        let off = sock::offsets();
        if maps::config(config::OWNER_FROM_CONNECT) == 0 && sock::is_tcp(sk, &off) {
            owner::record(sk);
        }
        return Ok(0);
    }
    if old != tcp_state::SYN_SENT {
        return Ok(0);
    }
    if new != tcp_state::CLOSE {
        owner::forget(sk);
        return Ok(0);
    }
    let off = sock::offsets();
    let err: i32 = sock::read(sk, off.sk_err)?;
    // SYN_SENT → CLOSE without an error is the application closing its own socket.
    if err == 0 || !sock::is_tcp(sk, &off) {
        owner::forget(sk);
        return Ok(0);
    }
    let owner = owner::take(sk);
    let (daddr, dport) = sock::peer(sk, &off)?;
    maps::count_failure(&TargetKey {
        cgroup_id: owner.cgroup_id,
        daddr,
        comm: owner.comm,
        dport,
        errno: err as u16,
        proto: proto::TCP,
        _pad: [0; 3],
    });
    Ok(0)
}
