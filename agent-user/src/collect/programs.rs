//! What the kernel counts about each of the agent's programs: run time and runs (while
//! `kernel.bpf_stats_enabled=1`), and the runs it skipped. aya's `ProgramInfo` leaves out
//! `recursion_misses` (Linux 5.12): a tracing program interrupted on a CPU (a softirq on the
//! way out of a hard interrupt) is not run again there for the nested event, which the agent
//! then never sees. One `BPF_OBJ_GET_INFO_BY_FD` reads all three.
use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd as _, BorrowedFd},
};

use aya_obj::generated::{bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, bpf_prog_info};

/// A program's counters as the kernel keeps them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub run_time_ns: u64,
    pub runs: u64,
    pub recursion_misses: u64,
}

/// `union bpf_attr`'s member for `BPF_OBJ_GET_INFO_BY_FD`.
#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

pub fn counters(prog: BorrowedFd<'_>) -> io::Result<Counters> {
    // SAFETY: bpf_prog_info is plain integers; all zeros is valid. A kernel older than a field
    // leaves it zero.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    let attr = InfoAttr {
        bpf_fd: prog.as_raw_fd() as u32,
        info_len: size_of::<bpf_prog_info>() as u32,
        info: (&raw mut info) as u64,
    };
    // SAFETY: the kernel writes at most `info_len` bytes into `info`, which outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD as libc::c_long,
            &raw const attr,
            size_of::<InfoAttr>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Counters {
        run_time_ns: info.run_time_ns,
        runs: info.run_cnt,
        recursion_misses: info.recursion_misses,
    })
}
