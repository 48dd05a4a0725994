//! Capabilities: the check that names what is missing before any bpf() call fails deep inside,
//! and the drop to what is still needed once the programs are attached.
use std::ffi::CString;

pub const CAP_DAC_READ_SEARCH: u32 = 2;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// Kept after attaching: CAP_BPF to read and write the maps (kernels before 6.5 check it on
/// every bpf() call), CAP_DAC_READ_SEARCH to name new cgroups' workloads (open_by_handle_at).
pub const KEPT: [(u32, &str); 2] = [(CAP_BPF, "CAP_BPF"), (CAP_DAC_READ_SEARCH, "CAP_DAC_READ_SEARCH")];

/// Effective capability set of this process.
pub fn effective() -> u64 {
    status_field("CapEff:")
}

fn status_field(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| parse_caps(&s, field))
        .unwrap_or(0)
}

pub fn parse_caps(status: &str, field: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix(field))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// The first capability needed to load and attach the programs that `caps` lacks.
pub fn missing_for_bpf(caps: u64) -> Option<&'static str> {
    let has = |c: u32| caps & (1u64 << c) != 0;
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        return Some("CAP_BPF (or CAP_SYS_ADMIN on kernels before 5.8)");
    }
    if !has(CAP_PERFMON) && !has(CAP_SYS_ADMIN) {
        return Some("CAP_PERFMON (or CAP_SYS_ADMIN on kernels before 5.8)");
    }
    None
}

/// Lifts RLIMIT_MEMLOCK, which kernels before 5.11 charge BPF maps to (later ones charge the
/// memory cgroup): its usual 64 KiB or 8 MiB holds none of the agent's maps. Above the hard
/// limit this needs CAP_SYS_RESOURCE.
pub fn lift_memlock() -> Result<(), &'static str> {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads a local struct.
    match unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } {
        0 => Ok(()),
        _ => Err(
            "CAP_SYS_RESOURCE (or RLIMIT_MEMLOCK unlimited, e.g. systemd's LimitMEMLOCK=infinity): \
                  kernels before 5.11 charge BPF maps to locked memory",
        ),
    }
}

/// A user to switch to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
}

/// Resolves `--user`: a name from the user database, or a numeric uid (its group then is the
/// same number unless the database knows better).
pub fn resolve_user(spec: &str) -> Result<Identity, String> {
    let name = CString::new(spec).map_err(|_| format!("invalid user name {spec:?}"))?;
    // SAFETY: getpwnam returns a pointer into static storage or null; read at once, single thread.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if !pw.is_null() {
        // SAFETY: non-null passwd entry.
        let pw = unsafe { &*pw };
        return Ok(Identity {
            uid: pw.pw_uid,
            gid: pw.pw_gid,
        });
    }
    match spec.parse::<u32>() {
        Ok(uid) => {
            // SAFETY: as above.
            let pw = unsafe { libc::getpwuid(uid) };
            let gid = if pw.is_null() { uid } else { unsafe { (*pw).pw_gid } };
            Ok(Identity { uid, gid })
        }
        Err(_) => Err(format!("no user named {spec:?} (a user name or a numeric uid)")),
    }
}

#[derive(Debug, thiserror::Error)]
#[error("dropping privileges: {what}: {source}")]
pub struct DropError {
    what: &'static str,
    source: std::io::Error,
}

fn check(what: &'static str, rc: libc::c_int) -> Result<(), DropError> {
    if rc == 0 {
        Ok(())
    } else {
        Err(DropError {
            what,
            source: std::io::Error::last_os_error(),
        })
    }
}

/// Switches to `to` (if any) and keeps only [`KEPT`] (those this process has) in every set, with
/// no_new_privs. Must run before any other thread starts: capabilities are per thread. Returns
/// the capabilities kept.
pub fn drop_privileges(to: Option<&Identity>) -> Result<u64, DropError> {
    let keep = KEPT.iter().map(|(c, _)| 1u64 << c).fold(0, |a, b| a | b) & status_field("CapPrm:");
    // SAFETY: prctl/setgroups/setres[ug]id/capset with valid arguments on this thread, before
    // any other thread exists.
    unsafe {
        // Without CAP_SETPCAP the bounding set stays; it only matters across execve, which the
        // daemon never does (and no_new_privs below forbids gaining anything through one).
        let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .unwrap_or(40);
        for cap in (0..=last).filter(|c| keep & (1 << c) == 0) {
            libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0);
        }
        check(
            "clearing ambient capabilities",
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                0,
                0,
                0,
            ),
        )?;
        if let Some(id) = to {
            check("PR_SET_KEEPCAPS", libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0))?;
            check("setgroups", libc::setgroups(1, &id.gid))?;
            check("setresgid", libc::setresgid(id.gid, id.gid, id.gid))?;
            check("setresuid", libc::setresuid(id.uid, id.uid, id.uid))?;
        }
        let header = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let data = [
            CapData {
                effective: keep as u32,
                permitted: keep as u32,
                inheritable: 0,
            },
            CapData {
                effective: (keep >> 32) as u32,
                permitted: (keep >> 32) as u32,
                inheritable: 0,
            },
        ];
        check(
            "capset",
            libc::syscall(libc::SYS_capset, &header, data.as_ptr()) as libc::c_int,
        )?;
        check("no_new_privs", libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
    }
    Ok(keep)
}

/// Names of the capabilities in `mask` among [`KEPT`].
pub fn names(mask: u64) -> Vec<&'static str> {
    KEPT.iter()
        .filter(|(c, _)| mask & (1 << c) != 0)
        .map(|(_, n)| *n)
        .collect()
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_checks() {
        let status = "Name:\tx\nCapEff:\t000001ffffffffff\n";
        let all = parse_caps(status, "CapEff:").unwrap();
        assert_eq!(missing_for_bpf(all), None);
        assert_eq!(
            missing_for_bpf(0).unwrap(),
            "CAP_BPF (or CAP_SYS_ADMIN on kernels before 5.8)"
        );
        assert_eq!(
            missing_for_bpf(1 << CAP_BPF).unwrap(),
            "CAP_PERFMON (or CAP_SYS_ADMIN on kernels before 5.8)"
        );
        assert_eq!(missing_for_bpf((1 << CAP_BPF) | (1 << CAP_PERFMON)), None);
        assert_eq!(missing_for_bpf(1 << CAP_SYS_ADMIN), None);
    }

    #[test]
    fn users_resolve_by_name_and_number() {
        assert_eq!(resolve_user("root").unwrap(), Identity { uid: 0, gid: 0 });
        assert_eq!(resolve_user("4242").unwrap().uid, 4242);
        assert!(resolve_user("no-such-user-here").unwrap_err().contains("no user named"));
        assert_eq!(names((1 << CAP_BPF) | (1 << CAP_PERFMON)), ["CAP_BPF"]);
    }
}
