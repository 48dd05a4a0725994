//! `inet_sock_set_state`, the hot path: every TCP state change on the host comes through here.
//! Owner capture at → SYN_SENT (it runs inside `tcp_v{4,6}_connect`, in the connecting task);
//! the failure count at SYN_SENT → CLOSE with `sk_err` set, which also covers clients that
//! closed the socket before the RST arrived (no error report then); successes only to ports
//! user space watches; listeners starting and stopping (`listen.rs`).
use agent_common::{Owner, config, errno, owner_flags, proto, tcp_state};
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
            count_failure::<M>(sk, o)
        } else {
            Ok(0)
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
    count::connect_outcome(o, proto::TCP, daddr, dport, 0, sock::tcp_time::<M>(sk));
    Ok(0)
}

#[inline(always)]
fn count_failure<M: Mem>(sk: *const u8, o: &Owner) -> Result<u32, u32> {
    if !sock::is_tcp::<M>(sk) {
        return Ok(0);
    }
    let err: i32 = M::get(sk, sock::off!(sk_err))?;
    let err = if err > 0 { err as u16 } else { lost_error::<M>(sk, o) };
    // SYN_SENT → CLOSE with no error anywhere is the application closing its own socket.
    if err == 0 {
        return Ok(0);
    }
    let (daddr, dport) = sock::peer::<M>(sk)?;
    count::connect_outcome(o, proto::TCP, daddr, dport, err, sock::tcp_time::<M>(sk));
    Ok(0)
}

/// The connect's error where `sk_err` no longer holds it: a client woken by the error (poll,
/// epoll: Python, Node, Go, Java) reads it with `SO_ERROR`, which clears it, and may do so
/// before this state change is traced; or the error came while connect(2) held the socket and
/// the kernel kept it as a soft one. The RST seen in SYN_SENT, else the ICMP error.
#[inline(always)]
fn lost_error<M: Mem>(sk: *const u8, o: &Owner) -> u16 {
    if o.flags & owner_flags::RESET_IN_SYN_SENT != 0 {
        return errno::ECONNREFUSED;
    }
    sock::icmp_error::<M>(sk)
}
