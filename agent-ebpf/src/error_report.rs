//! `inet_sk_error_report` for UDP: a connected UDP socket refused by ICMP port unreachable
//! (ECONNREFUSED), or host/net unreachable. TCP failures are counted by `state.rs`.
use agent_common::proto;
use aya_ebpf::{
    macros::{btf_tracepoint, fentry, kprobe, tracepoint},
    programs::{BtfTracePointContext, FEntryContext, ProbeContext, TracePointContext},
};

use crate::{
    count, owner, runtime,
    sock::{self, Btf, Mem, Probe},
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
    if sock::protocol::<M>(sk) != u16::from(proto::UDP) {
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
    count::connect_outcome(o, proto::UDP, daddr, dport, err as u16, runtime::now());
    Ok(0)
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
        runtime::now(),
    );
    Ok(0)
}
