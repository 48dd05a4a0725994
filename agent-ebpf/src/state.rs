//! `inet_sock_set_state`, the hot path: every TCP state change on the host comes through here.
//! Owner capture at → SYN_SENT (it runs inside `tcp_v{4,6}_connect`, in the connecting task);
//! the failure count at SYN_SENT → CLOSE with `sk_err` set, which also covers clients that
//! closed the socket before the RST arrived (no error report then); successes only to ports
//! user space watches.
use agent_common::{config, proto, tcp_state};
use aya_ebpf::{
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};

use crate::{
    maps::{self, WATCH},
    owner, sock,
};

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn sock_state_btf(ctx: BtfTracePointContext) -> u32 {
    maps::run(|| on_state(ctx.arg(0), ctx.arg(1), ctx.arg(2)))
}

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn sock_state_tp(ctx: TracePointContext) -> u32 {
    maps::run(|| try_sock_state_tp(&ctx))
}

fn try_sock_state_tp(ctx: &TracePointContext) -> Result<u32, u32> {
    // SAFETY: offsets come from this kernel's format file for this event.
    let (sk, old, new) = unsafe {
        (
            ctx.read_at::<u64>(sock::off!(tp.state_skaddr) as usize),
            ctx.read_at::<i32>(sock::off!(tp.state_oldstate) as usize),
            ctx.read_at::<i32>(sock::off!(tp.state_newstate) as usize),
        )
    };
    on_state(
        sk.map_err(|_| 0u32)? as *const u8,
        old.map_err(|_| 0u32)?,
        new.map_err(|_| 0u32)?,
    )
}

/// Exits before any map access unless the change enters or leaves SYN_SENT, or closes.
#[inline(always)]
fn on_state(sk: *const u8, old: i32, new: i32) -> Result<u32, u32> {
    if new == tcp_state::SYN_SENT {
        // No protocol check: only TCP (and SCTP, harmlessly: its entry goes at close) enters
        // SYN_SENT, and a probe read here would cost every connect on the host.
        owner::record_from_state(sk);
        return Ok(0);
    }
    if old == tcp_state::SYN_SENT && new == tcp_state::ESTABLISHED {
        // The owner stays recorded: resets on this connection are attributed through it.
        if maps::config(config::WATCHING) != 0 {
            count_success(sk)?;
        }
        return Ok(0);
    }
    if new != tcp_state::CLOSE {
        return Ok(0);
    }
    if old == tcp_state::SYN_SENT {
        count_failure(sk)?;
    }
    owner::forget(sk);
    Ok(0)
}

#[inline(always)]
fn count_success(sk: *const u8) -> Result<u32, u32> {
    let (daddr, dport) = sock::peer(sk)?;
    if WATCH.get_ptr(dport).is_none() {
        return Ok(0);
    }
    let o = owner::get(sk).unwrap_or_default();
    maps::connect_outcome(&o, proto::TCP, daddr, dport, 0);
    Ok(0)
}

#[inline(always)]
fn count_failure(sk: *const u8) -> Result<u32, u32> {
    let err: i32 = sock::read(sk, sock::off!(sk_err))?;
    // SYN_SENT → CLOSE without an error is the application closing its own socket.
    if err <= 0 || !sock::is_tcp(sk) {
        return Ok(0);
    }
    let o = owner::get(sk).unwrap_or_default();
    let (daddr, dport) = sock::peer(sk)?;
    maps::connect_outcome(&o, proto::TCP, daddr, dport, err as u16);
    Ok(0)
}
