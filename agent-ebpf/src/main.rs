//! Kernel programs of refusal-agent. One module per probe family; entry points are thin
//! wrappers around shared logic so every attach mode of a hook runs the same code.
#![no_std]
#![no_main]

mod connect;
mod count;
mod error_report;
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
