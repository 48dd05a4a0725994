//! `inet_sock_set_state`, the hot path: every TCP state change on the host comes through here.
//! Owner capture at → SYN_SENT (it runs inside `tcp_v{4,6}_connect`, in the connecting task);
//! the failure count at SYN_SENT → CLOSE with `sk_err` set, which also covers clients that
//! closed the socket before the RST arrived (no error report then); successes only to ports
//! user space watches; listeners starting and stopping (`listen.rs`); RSTs received, told
//! from the close they cause (`tcp_reset()` writes `sk_err`, then `tcp_done()` changes the
//! state), so no program runs on `tcp_receive_reset`. The kernel skips a run nested in this
//! program's own on the same CPU: `error_report.rs` counts the connect failures it lost.
use agent_common::{Event, Owner, ResetKey, config, errno, event_kind, proto, reset_errno, tcp_state};
use aya_ebpf::{
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};

use crate::{
    count, listen, owner, runtime,
    sock::{self, Btf, Mem, Probe},
};

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn sock_state_btf(ctx: BtfTracePointContext) -> u32 {
    runtime::run(|| on_state::<Btf>(ctx.arg(0), ctx.arg(1), ctx.arg(2)))
}

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn sock_state_tp(ctx: TracePointContext) -> u32 {
    runtime::run(|| try_sock_state_tp(&ctx))
}

fn try_sock_state_tp(ctx: &TracePointContext) -> Result<u32, u32> {
    let sk: u64 = sock::tp_field::<_, 8>(ctx, sock::off!(tp.state_skaddr))?;
    on_state::<Probe>(
        sk as *const u8,
        sock::tp_field::<_, 16>(ctx, sock::off!(tp.state_oldstate))?,
        sock::tp_field::<_, 20>(ctx, sock::off!(tp.state_newstate))?,
    )
}

/// Exits before any map access unless the change enters or leaves SYN_SENT, or closes.
#[inline(always)]
fn on_state<M: Mem>(sk: *const u8, old: i32, new: i32) -> Result<u32, u32> {
    if new == tcp_state::SYN_SENT {
        // No protocol check: only TCP (and SCTP, harmlessly: its entry goes at close) enters
        // SYN_SENT, and a read here would cost every connect on the host.
        owner::record_from_state(sk);
        return Ok(0);
    }
    if old == tcp_state::SYN_SENT && new == tcp_state::ESTABLISHED {
        // The owner stays recorded: resets on this connection are attributed through it.
        if runtime::config(config::WATCHING) != 0 {
            count_success::<M>(sk)?;
        }
        return Ok(0);
    }
    if new != tcp_state::CLOSE {
        // Listeners start rarely: one compare on every other change.
        return if new == tcp_state::LISTEN {
            listen::started::<M>(sk)
        } else {
            Ok(0)
        };
    }
    // A listener never had an owner entry: no lookup.
    if old == tcp_state::LISTEN {
        return listen::stopped::<M>(sk);
    }
    // Forgotten whatever the count met: a slot left taken would send its next sockets to
    // `OWNERS` for hours.
    owner::close(sk, |o| {
        if old == tcp_state::SYN_SENT {
            count_failure::<M>(sk, o.unwrap_or(&owner::NOBODY))
        } else {
            reset_received::<M>(sk, o, old)
        }
    })
}

#[inline(always)]
fn count_success<M: Mem>(sk: *const u8) -> Result<u32, u32> {
    let (daddr, dport) = sock::peer::<M>(sk)?;
    if !count::watched(dport) {
        return Ok(0);
    }
    let o = owner::get(sk).unwrap_or(&owner::NOBODY);
    count::connect_outcome(o, proto::TCP, daddr, dport, 0, 0, sock::tcp_time::<M>(sk));
    Ok(0)
}

/// A connect failed at SYN_SENT → CLOSE (here, or in `error_report.rs` for a change this
/// program was kept from seeing).
#[inline(always)]
pub(crate) fn count_failure<M: Mem>(sk: *const u8, o: &Owner) -> Result<u32, u32> {
    if !sock::is_tcp::<M>(sk) {
        return Ok(0);
    }
    let err: i32 = M::get(sk, sock::off!(sk_err))?;
    // `sk_err` 0 here with a RST's traces: a client read it first (`SO_ERROR` after poll:
    // Python, Node, Go, Java), racing the state change.
    let reset = (err == i32::from(errno::ECONNREFUSED) || err <= 0) && sock::reset_in_syn_sent::<M>(sk);
    let err = match err {
        1.. => err as u16,
        _ if reset => errno::ECONNREFUSED,
        _ => sock::icmp_error::<M>(sk),
    };
    // SYN_SENT → CLOSE with no error anywhere is the application closing its own socket.
    if err == 0 {
        return Ok(0);
    }
    let (daddr, dport) = sock::peer::<M>(sk)?;
    // Counted with the failure it caused: one map update, not two.
    count::connect_outcome(
        o,
        proto::TCP,
        daddr,
        dport,
        err,
        u64::from(reset),
        sock::tcp_time::<M>(sk),
    );
    if reset {
        count::emit(|| received_event(o, daddr, dport, tcp_state::SYN_SENT as u8));
    }
    Ok(0)
}

/// A RST received outside SYN_SENT: `tcp_reset()` wrote EPIPE (in CLOSE_WAIT) or ECONNRESET
/// just before this change to CLOSE. Nothing else writes those before the change: an abort
/// writes ECONNABORTED, a timeout ETIMEDOUT or an ICMP error, `tcp_disconnect()` its
/// ECONNRESET only after it. A RST hitting a socket already in CLOSE changes nothing and is
/// not seen.
#[inline(always)]
fn reset_received<M: Mem>(sk: *const u8, recorded: Option<&Owner>, old: i32) -> Result<u32, u32> {
    let err: i32 = M::get(sk, sock::off!(sk_err))?;
    let by_reset = if old == tcp_state::CLOSE_WAIT {
        reset_errno::EPIPE
    } else {
        reset_errno::ECONNRESET
    };
    if err != by_reset || !sock::is_tcp::<M>(sk) {
        return Ok(0);
    }
    // Runs in softirq for a remote RST: never the current task.
    let mut scratch = core::mem::MaybeUninit::uninit();
    let o = match recorded {
        Some(o) => o,
        None => owner::unrecorded::<M>(sk, false, &mut scratch),
    };
    let (daddr, dport) = sock::peer::<M>(sk)?;
    let mut key = core::mem::MaybeUninit::uninit();
    let key: &mut ResetKey = runtime::zero(&mut key);
    key.cgroup_id = o.cgroup_id;
    key.daddr = sock::bytes(daddr);
    runtime::copy_comm(&mut key.comm, &o.comm);
    key.dport = dport;
    key.state = old as u8;
    count::count_reset_received(key);
    listen::reset_received(o, daddr, dport);
    count::emit(|| received_event(o, daddr, dport, old as u8));
    Ok(0)
}

#[inline(always)]
fn received_event(o: &Owner, daddr: sock::Addr, dport: u16, state: u8) -> Event {
    Event {
        cgroup_id: o.cgroup_id,
        tgid: o.tgid,
        kind: event_kind::RESET_RECEIVED,
        proto: proto::TCP,
        code: u16::from(state),
        comm: o.comm,
        daddr: sock::bytes(daddr),
        dport,
        ..Event::default()
    }
}
