//! Kernel programs of refusal-agent. One module per probe family; entry points are thin
//! wrappers around shared logic so every attach mode of a hook runs the same code.
//!
//! Module graph, a DAG: each module uses only the ones after its arrow.
//! ```text
//! connect                             → owner, runtime
//! state                               → listen, owner, count, sock, runtime
//! reset                               → owner, count, sock, runtime, maps
//! error_report                        → state, owner, count, sock, runtime
//! syscall                             → owner, count, sock, runtime
//! listen   (listener history)         → owner, count, sock, runtime, maps
//! owner    (who a socket belongs to)  → count, sock, runtime, maps
//! count    (what is counted)          → sock, runtime, maps
//! sock     (kernel struct reads)      → log, runtime
//! log      (rare conditions, aya-log) → none
//! runtime  (per-run helpers)          → maps
//! maps     (shared with user space)   → none
//! ```
#![no_std]
// `atomic_xadd`: the BPF target has no atomic read-modify-write types (no compare-and-swap
// before v3), but takes the plain atomic add.
#![allow(internal_features)]
#![feature(core_intrinsics)]
#![no_main]

mod connect;
mod count;
mod error_report;
mod listen;
mod log;
mod maps;
mod owner;
mod reset;
mod runtime;
mod sock;
mod state;
mod syscall;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
