//! Field offsets from a tracefs `format` file (classic tracepoint records).
#![no_main]

use agent_core::kernel::tracefs;
use libfuzzer_sys::fuzz_target;

/// Fields the loader asks for (offsets.rs).
const FIELDS: &[&str] = &[
    "skaddr",
    "oldstate",
    "newstate",
    "skbaddr",
    "reason",
    "error",
    "dport",
    "family",
    "protocol",
    "daddr",
    "daddr_v6",
    "fd",
    "uservaddr",
    "ret",
    "common_pid",
    "",
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for field in FIELDS {
        let _ = tracefs::field_offset(text, field);
    }
    // A field name from the input itself: everything before the first NUL, when there is one.
    if let Some((field, format)) = text.split_once('\0') {
        let _ = tracefs::field_offset(format, field);
    }
});
