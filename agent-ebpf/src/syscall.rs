//! connect(2) failures that happen inside the syscall, before any TCP state change (no route:
//! ENETUNREACH; EADDRNOTAVAIL; EACCES/EPERM from policy). Only classic syscall tracepoints
//! exist for these, and they run in the calling task, so the caller is the owner.
use agent_common::proto;
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task, bpf_probe_read_user},
    macros::{map, tracepoint},
    maps::PerCpuArray,
    programs::TracePointContext,
};

use crate::{count, owner, runtime, sock};

/// Errors connect(2) returns only synchronously; asynchronous ones (ECONNREFUSED, ETIMEDOUT,
/// EHOSTUNREACH…) are counted at the state change and must not be counted twice.
const SYNC_ERRORS: [i64; 4] = [
    101, /* ENETUNREACH */
    99,  /* EADDRNOTAVAIL */
    13,  /* EACCES */
    1,   /* EPERM */
];

/// The connect(2) in progress on this CPU: stashed at entry, read at exit. A connect that fails
/// synchronously never sleeps in between, so it finds its own entry here; one that slept (and
/// may have migrated or been overwritten) did not fail synchronously anyway.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Pending {
    pid_tgid: u64,
    fd: u64,
    addr: u64,
}

#[map(name = "CONNECTING")]
static CONNECTING: PerCpuArray<Pending> = PerCpuArray::with_max_entries(1, 0);

#[tracepoint(category = "syscalls", name = "sys_enter_connect")]
pub fn connect_enter(ctx: TracePointContext) -> u32 {
    runtime::run(|| try_connect_enter(&ctx))
}

/// Costs three loads and a store per connect(2); the sockaddr is read only on failure.
fn try_connect_enter(ctx: &TracePointContext) -> Result<u32, u32> {
    let slot = CONNECTING.get_ptr_mut(0).ok_or(0u32)?;
    let pending = Pending {
        pid_tgid: bpf_get_current_pid_tgid(),
        fd: sock::tp_field::<_, 16>(ctx, sock::off!(tp.connect_fd))?,
        addr: sock::tp_field::<_, 24>(ctx, sock::off!(tp.connect_uservaddr))?,
    };
    // SAFETY: this CPU's slot; no other program on this CPU writes it concurrently.
    unsafe { *slot = pending };
    Ok(0)
}

#[inline(always)]
fn user<T>(addr: *const u8, offset: usize) -> Result<T, u32> {
    // SAFETY: bpf_probe_read_user validates the user pointer.
    unsafe { bpf_probe_read_user(addr.wrapping_add(offset).cast::<T>()) }.map_err(|_| 0)
}

#[tracepoint(category = "syscalls", name = "sys_exit_connect")]
pub fn connect_exit(ctx: TracePointContext) -> u32 {
    runtime::run(|| try_connect_exit(&ctx))
}

fn try_connect_exit(ctx: &TracePointContext) -> Result<u32, u32> {
    let ret: i64 = sock::tp_field::<_, 16>(ctx, sock::off!(tp.exit_connect_ret))?;
    if ret >= 0 || !SYNC_ERRORS.contains(&-ret) {
        return Ok(0);
    }
    let p = *CONNECTING.get(0).ok_or(0u32)?;
    if p.pid_tgid != bpf_get_current_pid_tgid() {
        return Ok(0);
    }
    let addr = p.addr as *const u8;
    let dport = u16::from_be(user(addr, 2)?);
    let daddr = match user::<u16>(addr, 0)? {
        sock::AF_INET => sock::mapped(user(addr, 4)?),
        sock::AF_INET6 => user::<sock::Addr>(addr, 8)?,
        _ => return Ok(0),
    };
    let proto = match socket_protocol(p.fd)? {
        p if p == u16::from(proto::TCP) => proto::TCP,
        p if p == u16::from(proto::UDP) => proto::UDP,
        _ => return Ok(0),
    };
    let mut o = core::mem::MaybeUninit::uninit();
    count::connect_outcome(
        owner::current(&mut o),
        proto,
        daddr,
        dport,
        (-ret) as u16,
        0,
        runtime::now(),
    );
    Ok(0)
}

/// `current->files->fdt->fd[fd]->private_data->sk->sk_protocol`: only on the failure path.
#[inline(always)]
fn socket_protocol(fd: u64) -> Result<u16, u32> {
    // SAFETY: helper callable from any tracing program.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let files: *const u8 = sock::read(task, sock::off!(task_files))?;
    let fdt: *const u8 = sock::read(files, sock::off!(files_fdt))?;
    let max_fds: u32 = sock::read(fdt, sock::off!(fdtable_max_fds))?;
    if fd >= u64::from(max_fds) {
        return Err(0);
    }
    let fds: *const u8 = sock::read(fdt, sock::off!(fdtable_fd))?;
    let file: *const u8 = sock::read(fds, (fd * 8) as u32)?;
    let socket: *const u8 = sock::read(file, sock::off!(file_private_data))?;
    let sk: *const u8 = sock::read(socket, sock::off!(socket_sk))?;
    Ok(sock::protocol::<sock::Probe>(sk))
}
