//! tracefs: classic tracepoint attach reads event ids there, and record layouts come from its
//! format files (parsed by `agent_core::kernel::tracefs`). Fresh machines may not have it mounted.
use std::{io, path::Path};

pub const ROOT: &str = "/sys/kernel/tracing";

/// Mounts tracefs at [`ROOT`] unless it is already there (or the legacy debugfs path is).
pub fn ensure_mounted() -> io::Result<()> {
    if Path::new(ROOT).join("events").is_dir() || Path::new("/sys/kernel/debug/tracing/events").is_dir() {
        return Ok(());
    }
    let (src, target, fs) = (c"nodev", c"/sys/kernel/tracing", c"tracefs");
    // SAFETY: static NUL-terminated strings; no data argument.
    let rc = unsafe { libc::mount(src.as_ptr(), target.as_ptr(), fs.as_ptr(), 0, std::ptr::null()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

pub fn read_format(category: &str, event: &str) -> io::Result<String> {
    let rel = format!("events/{category}/{event}/format");
    std::fs::read_to_string(Path::new(ROOT).join(&rel))
        .or_else(|_| std::fs::read_to_string(Path::new("/sys/kernel/debug/tracing").join(rel)))
}
