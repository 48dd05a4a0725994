//! Listener history: a TCP socket entering LISTEN (in the task that called listen(2)) and
//! leaving it (in the task that dropped it: when that task is exiting, its wait status says
//! how the process ended), OOM victims (turning a SIGKILL into an OOM kill), and the last RST
//! each process received (a listener that dies just after one likely did not handle it). All
//! rare: nothing here runs on a connect. Events go to `LISTEN_EVENTS`, drained on a timer.
use agent_common::{Drop, ListenEvent, Owner, RESET_BY_CGROUP, ResetSeen, listen_event};
use aya_ebpf::{
    bindings::BPF_RB_NO_WAKEUP,
    macros::{btf_tracepoint, map, tracepoint},
    maps::LruHashMap,
    programs::{BtfTracePointContext, TracePointContext},
};

use crate::{
    count,
    maps::LISTEN_EVENTS,
    owner, runtime,
    sock::{self, Addr, Btf, Mem, Task},
};

/// `PF_EXITING`: the task is in do_exit().
const PF_EXITING: u32 = 0x4;

/// The last RST each process received on an established connection, by tgid (or by cgroup, for
/// an accepted connection): bounded, the least recently written go first.
#[map(name = "LAST_RESET")]
static LAST_RESET: LruHashMap<u64, ResetSeen> = LruHashMap::with_max_entries(4096, 0);

/// Sends `ev`, built by `fill` on a zeroed event, to user space, without waking it.
#[inline(always)]
fn send(fill: impl FnOnce(&mut ListenEvent)) {
    if !runtime::counting() {
        return;
    }
    let mut ev = core::mem::MaybeUninit::uninit();
    let ev: &mut ListenEvent = runtime::zero(&mut ev);
    ev.ts_ns = runtime::now();
    fill(ev);
    if LISTEN_EVENTS
        .output::<ListenEvent>(ev, BPF_RB_NO_WAKEUP.into())
        .is_err()
    {
        count::drop(Drop::ListenRingFull);
    }
}

/// The current task into `ev`: cgroup, tgid, pid, name.
#[inline(always)]
fn task(ev: &mut ListenEvent) -> Task {
    let mut o = core::mem::MaybeUninit::uninit();
    let o: &Owner = owner::current(&mut o);
    ev.cgroup_id = o.cgroup_id;
    ev.tgid = o.tgid;
    runtime::copy_comm(&mut ev.comm, &o.comm);
    let task = Task::current();
    ev.pid = task.get::<i32>(sock::off!(task_pid)).unwrap_or(0) as u32;
    task
}

#[inline(always)]
fn socket(ev: &mut ListenEvent, family: u16, addr: Addr, port: u16, netns: u32) {
    ev.family = family as u8;
    ev.addr = sock::bytes(addr);
    ev.port = port;
    ev.netns = netns;
}

/// → LISTEN, in the task that called listen(2).
#[inline(always)]
pub fn started<M: Mem>(sk: *const u8) -> Result<u32, u32> {
    let (family, addr, port) = sock::local::<M>(sk)?;
    let netns = sock::netns::<M>(sk);
    send(|ev| {
        ev.kind = listen_event::STARTED;
        socket(ev, family, addr, port, netns);
        task(ev);
    });
    Ok(0)
}

/// LISTEN → CLOSE, in the task that dropped the socket: close(2) while it lives, or its exit.
#[inline(always)]
pub fn stopped<M: Mem>(sk: *const u8) -> Result<u32, u32> {
    let (family, addr, bound) = sock::local::<M>(sk)?;
    let port = match sock::listening_port::<M>(sk) {
        0 => bound,
        port => port,
    };
    let netns = sock::netns::<M>(sk);
    send(|ev| {
        ev.kind = listen_event::STOPPED;
        socket(ev, family, addr, port, netns);
        let task = task(ev);
        let flags = task.get::<u32>(sock::off!(task_flags)).unwrap_or(0);
        if flags & PF_EXITING == 0 {
            return;
        }
        ev.exiting = 1;
        // The thread's own code, else the thread group's (a process killed as a whole).
        let own = task.get::<i32>(sock::off!(task_exit_code)).unwrap_or(0);
        ev.exit_status = if own != 0 {
            own as u32
        } else {
            let signal = task.follow(sock::off!(task_signal));
            signal
                .and_then(|s| s.get::<i32>(sock::off!(signal_group_exit_code)))
                .unwrap_or(0) as u32
        };
        for key in [u64::from(ev.tgid), ev.cgroup_id | RESET_BY_CGROUP] {
            // SAFETY: a value of an LRU map, copied out at once; a concurrent update can only
            // make it newer.
            if let Some(r) = unsafe { LAST_RESET.get(key) }
                && r.ts_ns > ev.reset_ns
            {
                ev.reset_ns = r.ts_ns;
                ev.reset_addr = r.addr;
                ev.reset_port = r.port;
            }
        }
    });
    Ok(0)
}

/// A RST arrived on a connection of `o` (not in SYN_SENT: that is a refusal) from `peer`.
#[inline(always)]
pub fn reset_received(o: &Owner, peer: Addr, port: u16) {
    if !runtime::counting() {
        return;
    }
    let key = if o.tgid != 0 {
        u64::from(o.tgid)
    } else {
        o.cgroup_id | RESET_BY_CGROUP
    };
    let seen = ResetSeen {
        ts_ns: runtime::now(),
        addr: sock::bytes(peer),
        port,
        _pad: [0; 6],
    };
    let _ = LAST_RESET.insert(key, seen, 0);
}

#[inline(always)]
fn oom_victim(tgid: u32, pid: u32) -> Result<u32, u32> {
    send(|ev| {
        ev.kind = listen_event::OOM_VICTIM;
        ev.tgid = tgid;
        ev.pid = pid;
    });
    Ok(0)
}

/// `mark_victim(task, uid)` (6.8+): the victim's thread group and thread.
#[btf_tracepoint(function = "mark_victim")]
pub fn mark_victim_btf(ctx: BtfTracePointContext) -> u32 {
    runtime::run(|| {
        let task: *const u8 = ctx.arg(0);
        // `task_struct.tgid` is optional (the owner's helpers stand in for it): 0 is unknown.
        let tgid = match sock::off!(task_tgid) {
            0 => 0,
            off => Btf::get::<i32>(task, off).unwrap_or(0) as u32,
        };
        let pid = Btf::get::<i32>(task, sock::off!(task_pid)).unwrap_or(0) as u32;
        oom_victim(tgid, pid)
    })
}

/// `mark_victim(pid)` before 6.8: the victim thread only.
#[btf_tracepoint(function = "mark_victim")]
pub fn mark_victim_btf_pre68(ctx: BtfTracePointContext) -> u32 {
    runtime::run(|| oom_victim(0, ctx.arg::<i32>(0) as u32))
}

#[tracepoint(category = "oom", name = "mark_victim")]
pub fn mark_victim_tp(ctx: TracePointContext) -> u32 {
    runtime::run(|| {
        let pid: i32 = sock::tp_field::<_, 8>(&ctx, sock::off!(tp.mark_victim_pid))?;
        oom_victim(0, pid as u32)
    })
}
