//! `inet_sk_error_report` for UDP: a connected UDP socket refused by ICMP port unreachable
//! (ECONNREFUSED), or host/net unreachable. TCP failures are counted by `state.rs`, here only
//! those whose state change it did not see.
use agent_common::{proto, tcp_state};
use aya_ebpf::{
    macros::{btf_tracepoint, fentry, kprobe, tracepoint},
    programs::{BtfTracePointContext, FEntryContext, ProbeContext, TracePointContext},
};

use crate::{
    count, owner, runtime,
    sock::{self, Btf, Mem, Probe},
    state,
};

#[btf_tracepoint(function = "inet_sk_error_report")]
pub fn error_report_btf(ctx: BtfTracePointContext) -> u32 {
    runtime::run(|| on_error_report::<Btf>(ctx.arg(0)))
}

/// Before 5.15 there is no error-report tracepoint: the default `sk_error_report` callback,
/// which every UDP socket has, called where the tracepoint would fire (after `sk_err` is set).
#[fentry(function = "sock_def_error_report")]
pub fn error_report_fentry(ctx: FEntryContext) -> u32 {
    runtime::run(|| on_error_report::<Btf>(ctx.arg(0)))
}

#[kprobe]
pub fn error_report_kprobe(ctx: ProbeContext) -> u32 {
    runtime::run(|| on_error_report::<Probe>(ctx.arg::<*const u8>(0).ok_or(0u32)?))
}

#[inline(always)]
fn on_error_report<M: Mem>(sk: *const u8) -> Result<u32, u32> {
    let protocol = sock::protocol::<M>(sk);
    if protocol == u16::from(proto::TCP) {
        return closed_unseen::<M>(sk);
    }
    if protocol != u16::from(proto::UDP) {
        return Ok(0);
    }
    let err: i32 = M::get(sk, sock::off!(sk_err))?;
    let (daddr, dport) = sock::peer::<M>(sk)?;
    // ICMP for an unconnected socket (IP_RECVERR) has no destination to attribute it to.
    if err <= 0 || dport == 0 {
        return Ok(0);
    }
    // Loopback and veth deliver the ICMP error in the sending task's context.
    let mut scratch = core::mem::MaybeUninit::uninit();
    let o = owner::of_socket::<M>(sk, true, &mut scratch);
    count::connect_outcome(o, proto::UDP, daddr, dport, err as u16, 0, runtime::now());
    Ok(0)
}

/// A TCP socket closed without the state program seeing it. The kernel skips a program's run
/// nested in its own on the same CPU (`recursion_misses`): a softirq that closes a connecting
/// socket (its timeout, an ICMP error, a RST) on top of the state program running in process
/// context (a connect starting, a socket closing) loses that state change. The error is
/// reported just after it (from 6.10, and for RSTs before), by a program not running then: a
/// closed socket whose owner is still recorded closed unseen (the state program forgets the
/// owner at every close it sees), and one that never accepted a SYN-ACK closed from SYN_SENT.
/// The owner is forgotten either way, as the state program would have. A report with the
/// destination already gone (`tcp_disconnect()`'s, after connect(2) returned the error, which
/// it also took from `sk_err`) is too late to count: counted under port 0 it would be wrong.
#[inline(always)]
fn closed_unseen<M: Mem>(sk: *const u8) -> Result<u32, u32> {
    if i32::from(sock::state::<M>(sk)) != tcp_state::CLOSE {
        return Ok(0);
    }
    owner::close(sk, |o| match o {
        Some(o) if sock::never_synchronized::<M>(sk) && sock::peer::<M>(sk).is_ok_and(|(_, port)| port != 0) => {
            state::count_failure::<M>(sk, o)
        }
        _ => Ok(0),
    })
}

/// The classic tracepoint's record has no socket: attribution falls back to the current task
/// (none where that is a kernel thread).
#[tracepoint(category = "sock", name = "inet_sk_error_report")]
pub fn error_report_tp(ctx: TracePointContext) -> u32 {
    runtime::run(|| try_error_report_tp(&ctx))
}

fn try_error_report_tp(ctx: &TracePointContext) -> Result<u32, u32> {
    let read = |off: u32| -> Result<u16, u32> {
        // SAFETY: offsets come from this kernel's format file for this event.
        unsafe { ctx.read_at::<u16>(off as usize) }.map_err(|_| 0)
    };
    // SAFETY: as above.
    let err = unsafe { ctx.read_at::<i32>(sock::off!(tp.error_report_error) as usize) }.map_err(|_| 0u32)?;
    let dport = read(sock::off!(tp.error_report_dport))?;
    if read(sock::off!(tp.error_report_protocol))? != u16::from(proto::UDP) || err <= 0 || dport == 0 {
        return Ok(0);
    }
    // SAFETY: as above.
    let daddr = unsafe {
        if read(sock::off!(tp.error_report_family))? == sock::AF_INET {
            sock::mapped(
                ctx.read_at::<u32>(sock::off!(tp.error_report_daddr) as usize)
                    .map_err(|_| 0u32)?,
            )
        } else {
            ctx.read_at::<sock::Addr>(sock::off!(tp.error_report_daddr_v6) as usize)
                .map_err(|_| 0u32)?
        }
    };
    let mut o = core::mem::MaybeUninit::uninit();
    count::connect_outcome(
        owner::current_task(&mut o),
        proto::UDP,
        daddr,
        dport,
        err as u16,
        0,
        runtime::now(),
    );
    Ok(0)
}
