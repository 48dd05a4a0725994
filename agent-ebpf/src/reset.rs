//! RSTs sent by this host (by `sk_rst_reason`; with no socket and reason NO_SOCKET, an inbound
//! connection refused, addresses taken from the packet); those received are told by the state
//! program (`state.rs`). Before 6.10 `tcp_send_reset` neither has a reason nor fires without a socket, so
//! inbound refusals fall back to `kfree_skb` with drop reason NO_SOCKET, and before 5.17 (no
//! drop reason) to the functions that send the RST, or `kfree_skb` called from `tcp_v{4,6}_rcv`.
use agent_common::{
    Event, InboundKey, RST_REASON_NOT_SPECIFIED, ResetSentKey, TCP_RCV_RANGES, config, event_kind, proto,
};
use aya_ebpf::{
    macros::{btf_tracepoint, fentry, kprobe, tracepoint},
    programs::{BtfTracePointContext, FEntryContext, ProbeContext, TracePointContext},
};

use crate::{
    count,
    maps::TCP_RCV,
    owner, runtime,
    sock::{self, Btf, Mem, Probe},
};

#[btf_tracepoint(function = "tcp_send_reset")]
pub fn send_reset_btf(ctx: BtfTracePointContext) -> u32 {
    runtime::run(|| on_send_reset::<Btf>(ctx.arg(0), ctx.arg(1), ctx.arg(2)))
}

/// Before 6.10 the tracepoint is `tcp_send_reset(sk, skb)`: no reason, and never without a socket.
#[btf_tracepoint(function = "tcp_send_reset")]
pub fn send_reset_btf_pre610(ctx: BtfTracePointContext) -> u32 {
    runtime::run(|| on_send_reset::<Btf>(ctx.arg(0), ctx.arg(1), RST_REASON_NOT_SPECIFIED))
}

#[tracepoint(category = "tcp", name = "tcp_send_reset")]
pub fn send_reset_tp(ctx: TracePointContext) -> u32 {
    runtime::run(|| {
        // SAFETY: offset from this kernel's format file for this event.
        let reason = unsafe { ctx.read_at::<u32>(sock::off!(tp.send_reset_reason) as usize) }.map_err(|_| 0u32)?;
        try_send_reset_tp(&ctx, reason)
    })
}

/// Before 6.10 the record has no `reason` field (and no reset without a socket).
#[tracepoint(category = "tcp", name = "tcp_send_reset")]
pub fn send_reset_tp_pre610(ctx: TracePointContext) -> u32 {
    runtime::run(|| try_send_reset_tp(&ctx, RST_REASON_NOT_SPECIFIED))
}

#[inline(always)]
fn try_send_reset_tp(ctx: &TracePointContext, reason: u32) -> Result<u32, u32> {
    // SAFETY: offsets come from this kernel's format file for this event.
    let (sk, skb) = unsafe {
        (
            ctx.read_at::<u64>(sock::off!(tp.send_reset_skaddr) as usize)
                .map_err(|_| 0u32)?,
            ctx.read_at::<u64>(sock::off!(tp.send_reset_skbaddr) as usize)
                .map_err(|_| 0u32)?,
        )
    };
    on_send_reset::<Probe>(sk as *const u8, skb as *const u8, reason)
}

#[inline(always)]
fn on_send_reset<M: Mem>(sk: *const u8, skb: *const u8, reason: u32) -> Result<u32, u32> {
    // An inbound refusal, not a reset of ours: counted here unless a program of its own does.
    if sk.is_null()
        && reason == sock::off!(rst_no_socket)
        && inbound_refused::<M>(skb, runtime::config(config::INBOUND_BY_SEND_RESET) != 0)?
    {
        return Ok(0);
    }
    // Active resets (abort on close, linger 0) run in the closing task; others in softirq.
    let mut scratch = core::mem::MaybeUninit::uninit();
    let o = if !sk.is_null() && sock::is_full::<M>(sk) {
        owner::of_socket::<M>(sk, true, &mut scratch)
    } else {
        &owner::NOBODY
    };
    let mut key = core::mem::MaybeUninit::uninit();
    let key: &mut ResetSentKey = runtime::zero(&mut key);
    key.cgroup_id = o.cgroup_id;
    runtime::copy_comm(&mut key.comm, &o.comm);
    key.reason = reason;
    count::count_reset_sent(key);
    count::emit(|| Event {
        cgroup_id: o.cgroup_id,
        tgid: o.tgid,
        kind: event_kind::RESET_SENT,
        proto: proto::TCP,
        code: reason as u16,
        comm: o.comm,
        ..Event::default()
    });
    Ok(0)
}

/// Whether `skb` is a bare SYN, a refused inbound connection, and then counts it if `count`;
/// false for any other segment (a stray segment to a closed port is not a connection attempt).
#[inline(always)]
fn inbound_refused<M: Mem>(skb: *const u8, count: bool) -> Result<bool, u32> {
    // tp_btf marks this argument nullable: the verifier wants the check before any offset.
    if skb.is_null() {
        return Ok(false);
    }
    let p = sock::Packet::new::<M>(skb)?;
    let flags = p.flags();
    if p.ip_proto()? != proto::TCP || flags & sock::TCP_SYN == 0 || flags & sock::TCP_ACK != 0 {
        return Ok(false);
    }
    if !count {
        return Ok(true);
    }
    let (laddr, lport) = p.dst()?;
    let mut key = core::mem::MaybeUninit::uninit();
    let key: &mut InboundKey = runtime::zero(&mut key);
    key.laddr = sock::bytes(laddr);
    key.netns = sock::skb_netns::<M>(skb);
    key.lport = lport;
    count::count_inbound(key);
    count::emit(|| {
        let (saddr, sport) = p.src().unwrap_or_default();
        Event {
            kind: event_kind::INBOUND_REFUSED,
            proto: proto::TCP,
            daddr: sock::bytes(laddr),
            dport: lport,
            saddr: sock::bytes(saddr),
            sport,
            ..Event::default()
        }
    });
    Ok(true)
}

/// Before 5.17 no tracepoint tells a SYN dropped for want of a socket: the functions that answer
/// it, `tcp_v{4,6}_send_reset`, called with no socket only then (the 6.10+ tracepoint fires
/// inside them).
#[fentry(function = "tcp_v4_send_reset")]
pub fn inbound4_fentry(ctx: FEntryContext) -> u32 {
    runtime::run(|| on_reset_without_socket::<Btf>(ctx.arg(0), ctx.arg(1)))
}

#[fentry(function = "tcp_v6_send_reset")]
pub fn inbound6_fentry(ctx: FEntryContext) -> u32 {
    runtime::run(|| on_reset_without_socket::<Btf>(ctx.arg(0), ctx.arg(1)))
}

#[kprobe]
pub fn inbound_kprobe(ctx: ProbeContext) -> u32 {
    runtime::run(|| {
        on_reset_without_socket::<Probe>(
            ctx.arg::<*const u8>(0).ok_or(0u32)?,
            ctx.arg::<*const u8>(1).ok_or(0u32)?,
        )
    })
}

#[inline(always)]
fn on_reset_without_socket<M: Mem>(sk: *const u8, skb: *const u8) -> Result<u32, u32> {
    if sk.is_null() {
        inbound_refused::<M>(skb, true)?;
    }
    Ok(0)
}

#[btf_tracepoint(function = "kfree_skb")]
pub fn kfree_skb_btf(ctx: BtfTracePointContext) -> u32 {
    runtime::run(|| on_kfree_skb::<Btf>(ctx.arg(0), ctx.arg(2)))
}

#[tracepoint(category = "skb", name = "kfree_skb")]
pub fn kfree_skb_tp(ctx: TracePointContext) -> u32 {
    runtime::run(|| try_kfree_skb_tp(&ctx))
}

fn try_kfree_skb_tp(ctx: &TracePointContext) -> Result<u32, u32> {
    // SAFETY: offsets come from this kernel's format file for this event.
    let (skb, reason) = unsafe {
        (
            ctx.read_at::<u64>(sock::off!(tp.kfree_skb_skbaddr) as usize)
                .map_err(|_| 0u32)?,
            ctx.read_at::<u32>(sock::off!(tp.kfree_skb_reason) as usize)
                .map_err(|_| 0u32)?,
        )
    };
    on_kfree_skb::<Probe>(skb as *const u8, reason)
}

#[inline(always)]
fn on_kfree_skb<M: Mem>(skb: *const u8, reason: u32) -> Result<u32, u32> {
    if reason != sock::off!(drop_no_socket) {
        return Ok(0);
    }
    inbound_refused::<M>(skb, true)?;
    Ok(0)
}

/// Before 5.17 `kfree_skb(skb, location)` has no drop reason: a bare SYN that `tcp_v4_rcv` or
/// `tcp_v6_rcv` frees found no socket (it was answered with a RST just before; a SYN a
/// listener takes is consumed, not freed). For kernels that refuse fentry and kprobes.
#[btf_tracepoint(function = "kfree_skb")]
pub fn kfree_skb_btf_pre517(ctx: BtfTracePointContext) -> u32 {
    runtime::run(|| on_kfree_skb_at::<Btf>(ctx.arg(0), ctx.arg(1)))
}

#[tracepoint(category = "skb", name = "kfree_skb")]
pub fn kfree_skb_tp_pre517(ctx: TracePointContext) -> u32 {
    runtime::run(|| {
        // SAFETY: offsets come from this kernel's format file for this event.
        let (skb, location) = unsafe {
            (
                ctx.read_at::<u64>(sock::off!(tp.kfree_skb_skbaddr) as usize)
                    .map_err(|_| 0u32)?,
                ctx.read_at::<u64>(sock::off!(tp.kfree_skb_location) as usize)
                    .map_err(|_| 0u32)?,
            )
        };
        on_kfree_skb_at::<Probe>(skb as *const u8, location)
    })
}

#[inline(always)]
fn on_kfree_skb_at<M: Mem>(skb: *const u8, location: u64) -> Result<u32, u32> {
    let from_tcp_rcv = (0..TCP_RCV_RANGES).any(|i| {
        // SAFETY: reading a static the loader rewrites before load.
        let (start, end) = unsafe {
            (
                core::ptr::read_volatile(&TCP_RCV[2 * i]),
                core::ptr::read_volatile(&TCP_RCV[2 * i + 1]),
            )
        };
        (start..end).contains(&location)
    });
    if from_tcp_rcv {
        inbound_refused::<M>(skb, true)?;
    }
    Ok(0)
}

/// The benchmarks' floor only (`hooks::FLOOR_ONLY`): where the agent once counted RSTs
/// received, now told by the state program, an empty program keeps the floor on the hooks the
/// agent used to need.
#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn floor_receive_reset_btf(_ctx: BtfTracePointContext) -> u32 {
    0
}
