//! Records from the eBPF programs' aya-log ring (the daemon must survive any bytes there).
#![no_main]

use agent_core::kernel::log_record;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = log_record::decode(data);
});
