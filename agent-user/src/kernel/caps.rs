//! Capabilities: the check that names what is missing before any bpf() call fails deep inside,
//! and the drop to what is still needed once the programs are attached.
use std::ffi::CString;

use caps::{CapSet, Capability, CapsHashSet};

/// Kept after attaching: CAP_BPF to read and write the maps (kernels before 6.5 check it on
/// every bpf() call), CAP_DAC_READ_SEARCH to name new cgroups' workloads (open_by_handle_at).
pub const KEPT: [Capability; 2] = [Capability::CAP_BPF, Capability::CAP_DAC_READ_SEARCH];

/// Effective capability set of this process (empty if it cannot be read).
pub fn effective() -> CapsHashSet {
    caps::read(None, CapSet::Effective).unwrap_or_default()
}

/// The first capability needed to load and attach the programs that `caps` lacks.
pub fn missing_for_bpf(caps: &CapsHashSet) -> Option<&'static str> {
    let has = |c| caps.contains(&c) || caps.contains(&Capability::CAP_SYS_ADMIN);
    if !has(Capability::CAP_BPF) {
        return Some("CAP_BPF (or CAP_SYS_ADMIN on kernels before 5.8)");
    }
    if !has(Capability::CAP_PERFMON) {
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
#[error("dropping privileges: {what}: {detail}")]
pub struct DropError {
    what: &'static str,
    detail: String,
}

fn check<E: std::fmt::Display>(what: &'static str, r: Result<(), E>) -> Result<(), DropError> {
    r.map_err(|e| DropError {
        what,
        detail: e.to_string(),
    })
}

/// A libc call's return code as a result.
fn rc(rc: libc::c_int) -> Result<(), std::io::Error> {
    match rc {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Switches to `to` (if any) and keeps only [`KEPT`] (those this process has) in every set, with
/// no_new_privs. Must run before any other thread starts: capabilities are per thread. Returns
/// the capabilities kept.
pub fn drop_privileges(to: Option<&Identity>) -> Result<CapsHashSet, DropError> {
    let permitted = caps::read(None, CapSet::Permitted).unwrap_or_default();
    let keep: CapsHashSet = KEPT.into_iter().filter(|c| permitted.contains(c)).collect();
    // Without CAP_SETPCAP the bounding set stays (each drop fails); it only matters across
    // execve, which the daemon never does (and no_new_privs below forbids gaining anything
    // through one).
    for cap in caps::all().difference(&keep) {
        let _ = caps::drop(None, CapSet::Bounding, *cap);
    }
    check("clearing ambient capabilities", caps::clear(None, CapSet::Ambient))?;
    if let Some(id) = to {
        check("PR_SET_KEEPCAPS", caps::securebits::set_keepcaps(true))?;
        // SAFETY: setgroups reads one gid from a local; setres[ug]id take plain ids. Before any
        // other thread exists.
        unsafe {
            check("setgroups", rc(libc::setgroups(1, &id.gid)))?;
            check("setresgid", rc(libc::setresgid(id.gid, id.gid, id.gid)))?;
            check("setresuid", rc(libc::setresuid(id.uid, id.uid, id.uid)))?;
        }
    }
    // Effective first: it must stay within the permitted set at every step.
    check("capset effective", caps::set(None, CapSet::Effective, &keep))?;
    check("capset permitted", caps::set(None, CapSet::Permitted, &keep))?;
    check("capset inheritable", caps::clear(None, CapSet::Inheritable))?;
    // SAFETY: prctl with plain integer arguments.
    check(
        "no_new_privs",
        rc(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }),
    )?;
    Ok(keep)
}

/// Names of the capabilities in `kept`, in [`KEPT`]'s order.
pub fn names(kept: &CapsHashSet) -> Vec<String> {
    KEPT.iter()
        .filter(|c| kept.contains(c))
        .map(ToString::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(caps: &[Capability]) -> CapsHashSet {
        caps.iter().copied().collect()
    }

    #[test]
    fn names_what_is_missing() {
        use Capability::*;
        assert_eq!(missing_for_bpf(&caps::all()), None);
        assert_eq!(
            missing_for_bpf(&set(&[])).unwrap(),
            "CAP_BPF (or CAP_SYS_ADMIN on kernels before 5.8)"
        );
        assert_eq!(
            missing_for_bpf(&set(&[CAP_BPF])).unwrap(),
            "CAP_PERFMON (or CAP_SYS_ADMIN on kernels before 5.8)"
        );
        assert_eq!(missing_for_bpf(&set(&[CAP_BPF, CAP_PERFMON])), None);
        assert_eq!(missing_for_bpf(&set(&[CAP_SYS_ADMIN])), None);
    }

    #[test]
    fn users_resolve_by_name_and_number() {
        assert_eq!(resolve_user("root").unwrap(), Identity { uid: 0, gid: 0 });
        assert_eq!(resolve_user("4242").unwrap().uid, 4242);
        assert!(resolve_user("no-such-user-here").unwrap_err().contains("no user named"));
        assert_eq!(
            names(&set(&[Capability::CAP_PERFMON, Capability::CAP_BPF])),
            ["CAP_BPF"]
        );
    }
}
