//! tracefs: classic tracepoint attach reads event ids there, and record layouts come from its
//! format files. Fresh machines may not have it mounted.
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

/// Offset of `field` in a tracepoint record, from the text of its format file.
pub fn field_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let decl = line.trim().strip_prefix("field:")?;
        let (decl, rest) = decl.split_once(';')?;
        let name = decl.rsplit([' ', '*']).next()?;
        let name = name.split('[').next()?;
        if name != field {
            return None;
        }
        rest.split(';')
            .find_map(|kv| kv.trim().strip_prefix("offset:")?.parse().ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORMAT: &str = "name: inet_sock_set_state
ID: 1520
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;
";

    #[test]
    fn parses_field_offsets() {
        assert_eq!(field_offset(FORMAT, "skaddr"), Some(8));
        assert_eq!(field_offset(FORMAT, "oldstate"), Some(16));
        assert_eq!(field_offset(FORMAT, "newstate"), Some(20));
        assert_eq!(field_offset(FORMAT, "daddr_v6"), Some(56));
        assert_eq!(field_offset(FORMAT, "state"), None);
        assert_eq!(field_offset(FORMAT, "common_pid"), Some(4));
    }
}
