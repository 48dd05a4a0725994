//! Owner capture at the connect call itself (fentry, else kprobe). Where neither attaches,
//! `state.rs` records the owner at → SYN_SENT instead; user space sets
//! `config::OWNER_FROM_CONNECT` to say which one does.
use aya_ebpf::{
    macros::{fentry, kprobe},
    programs::{FEntryContext, ProbeContext},
};

use crate::{owner, runtime};

#[fentry(function = "tcp_v4_connect")]
pub fn connect4_fentry(ctx: FEntryContext) -> u32 {
    runtime::run(|| {
        owner::record(ctx.arg(0));
        Ok(0)
    })
}

#[fentry(function = "tcp_v6_connect")]
pub fn connect6_fentry(ctx: FEntryContext) -> u32 {
    runtime::run(|| {
        owner::record(ctx.arg(0));
        Ok(0)
    })
}

#[kprobe]
pub fn connect_kprobe(ctx: ProbeContext) -> u32 {
    runtime::run(|| {
        owner::record(ctx.arg::<*const u8>(0).ok_or(0u32)?);
        Ok(0)
    })
}
