//! The TCP listeners of a network namespace, through NETLINK_SOCK_DIAG (request and reply
//! parsing in `agent_core::collect::sockdiag`), and the seed of the listener history: every
//! namespace's listeners as the agent starts, with the processes holding them.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs::File,
    io,
    net::SocketAddr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use agent_core::collect::{
    listening::{Process, Seed, Seeded},
    sockdiag::{ListenError, Listening, RECV_BUF, parse_dump, request},
    workload::Workload,
};

/// The agent's own network namespace's listening addresses, sorted and deduplicated
/// (SO_REUSEPORT groups show up once).
pub fn own_addresses() -> Result<Vec<SocketAddr>, ListenError> {
    let mut addrs: Vec<SocketAddr> = tcp_listeners()?.into_iter().map(|l| l.addr).collect();
    addrs.dedup();
    Ok(addrs)
}

/// Every TCP listening socket of the calling thread's network namespace, both families,
/// sorted. IPv4-mapped IPv6 addresses come back as IPv4.
pub fn tcp_listeners() -> Result<Vec<Listening>, ListenError> {
    let sock = open_socket()?;
    let fd = sock.as_raw_fd();
    let mut buf = vec![0u8; RECV_BUF];
    let mut out = Vec::new();
    for (seq, family) in [(1, libc::AF_INET as u8), (2, libc::AF_INET6 as u8)] {
        let req = request(family, seq);
        // SAFETY: `req` is valid for `req.len()` bytes; an unconnected netlink socket sends to the kernel.
        retry(|| unsafe { libc::send(fd, req.as_ptr().cast(), req.len(), 0) }).map_err(ListenError::Send)?;
        loop {
            // SAFETY: `buf` is writable for `buf.len()` bytes. MSG_TRUNC makes netlink return the
            // datagram's full length, so an oversized one is caught below instead of silently cut.
            let n = retry(|| unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_TRUNC) })
                .map_err(ListenError::Recv)?;
            let datagram = buf.get(..n).filter(|d| !d.is_empty());
            let progress = parse_dump(datagram.ok_or(ListenError::Malformed("empty or oversized datagram"))?)?;
            out.extend(progress.listeners);
            if progress.done {
                break;
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// The inode number of a network namespace file (`/proc/<pid>/ns/net`, whose link reads
/// `net:[<inode>]`), the number the kernel's events carry.
fn netns_inode(path: &Path) -> io::Result<u32> {
    let link = std::fs::read_link(path)?;
    let text = link.to_string_lossy();
    (text.strip_prefix("net:[").and_then(|t| t.strip_suffix(']')))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {text}", path.display())))
}

/// Process ids under `/proc`.
fn pids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect()
}

/// Runs `f` in network namespace `ns` (a `/proc/<pid>/ns/net` path), on a thread of its own:
/// setns(2) moves only the calling thread, which ends with `f`.
fn in_namespace<T: Send>(ns: &Path, f: impl FnOnce() -> T + Send) -> Result<T, String> {
    let file = File::open(ns).map_err(|e| format!("opening {}: {e}", ns.display()))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: a namespace file we hold open; only this thread changes namespace.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(format!(
                    "entering it (setns, needs CAP_SYS_ADMIN): {}",
                    io::Error::last_os_error()
                ));
            }
            Ok(f())
        })
        .join()
        .map_err(|_| "listing it panicked".to_string())?
    })
}

/// Names the workload of a cgroup path.
pub type Namer<'a> = &'a mut dyn FnMut(&str) -> Workload;

/// The process `pid` as `/proc` names it.
fn process(pid: u32, name: Namer) -> Option<Process> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    // The unified hierarchy's line, as the kernel's default-hierarchy cgroup id resolves.
    let path = cgroups.lines().find_map(|l| l.strip_prefix("0::")).unwrap_or("/");
    Some(Process {
        tgid: pid,
        comm: comm.trim_end().into(),
        workload: name(path),
    })
}

/// The processes holding the sockets `inodes`, from one walk of every `/proc/<pid>/fd`.
fn holders(inodes: &HashSet<u32>, name: Namer) -> HashMap<u32, Process> {
    let mut found = HashMap::new();
    for pid in pids() {
        if found.len() == inodes.len() {
            break;
        }
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.filter_map(Result::ok) {
            let Ok(link) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let text = link.to_string_lossy();
            let inode = text.strip_prefix("socket:[").and_then(|t| t.strip_suffix(']'));
            if let Some(inode) = inode.and_then(|i| i.parse::<u32>().ok()).filter(|i| inodes.contains(i))
                && !found.contains_key(&inode)
                && let Some(p) = process(pid, name)
            {
                found.insert(inode, p);
            }
        }
    }
    found
}

/// Every network namespace's listeners as the agent starts, with the processes holding them:
/// sock_diag in each (entered from a thread of its own), owners from `/proc/<pid>/fd`. Other
/// namespaces need CAP_SYS_ADMIN, and reading every process's entries CAP_SYS_PTRACE or root:
/// without them what cannot be read is left unknown, never guessed. `name` names their
/// workloads.
pub fn seed(name: Namer) -> Seed {
    let own = netns_inode(Path::new("/proc/self/ns/net")).unwrap_or(0);
    let mut entry: BTreeMap<u32, PathBuf> = BTreeMap::new();
    let mut complete = true;
    for pid in pids() {
        let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
        match netns_inode(&path) {
            Ok(ns) => {
                entry.entry(ns).or_insert(path);
            }
            // Gone meanwhile.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(_) => complete = false,
        }
    }
    let mut listed: BTreeMap<u32, Result<Vec<Listening>, String>> = BTreeMap::new();
    listed.insert(own, tcp_listeners().map_err(|e| e.to_string()));
    for (ns, path) in entry.iter().filter(|(ns, _)| **ns != own) {
        let result = in_namespace(path, tcp_listeners).and_then(|r| r.map_err(|e| e.to_string()));
        listed.insert(*ns, result);
    }
    let inodes: HashSet<u32> = listed.values().flatten().flatten().map(|l| l.inode).collect();
    let owners = holders(&inodes, name);
    let namespaces = listed
        .into_iter()
        .map(|(ns, result)| {
            let seeded = result.map(|ls| {
                ls.into_iter()
                    .map(|l| Seeded {
                        local: l.addr,
                        owner: owners.get(&l.inode).cloned(),
                    })
                    .collect()
            });
            (ns, seeded)
        })
        .collect();
    Seed {
        own,
        namespaces,
        complete,
    }
}

fn open_socket() -> Result<OwnedFd, ListenError> {
    // SAFETY: plain syscall with constant arguments; the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(ListenError::Socket(io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a fresh, valid descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // A daemon must not hang forever on a kernel that never answers.
    let tv = libc::timeval { tv_sec: 5, tv_usec: 0 };
    let len = size_of::<libc::timeval>() as libc::socklen_t;
    // SAFETY: `tv` is a valid timeval and `len` is its size.
    let rc = unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, (&raw const tv).cast(), len) };
    if rc < 0 {
        return Err(ListenError::Socket(io::Error::last_os_error()));
    }
    Ok(sock)
}

/// Runs a syscall that returns a length or -1, again after EINTR.
fn retry(mut call: impl FnMut() -> isize) -> io::Result<usize> {
    loop {
        if let Ok(n) = usize::try_from(call()) {
            return Ok(n);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    #[test]
    fn finds_real_listeners() {
        let v4 = TcpListener::bind("127.0.0.1:0").expect("bind v4");
        let any = TcpListener::bind("0.0.0.0:0").expect("bind any");
        let v6 = TcpListener::bind("[::1]:0").expect("bind v6");
        let addrs: Vec<SocketAddr> = [&v4, &any, &v6].iter().map(|l| l.local_addr().expect("addr")).collect();
        let found = own_addresses().expect("sock_diag dump");
        for a in &addrs {
            assert!(found.contains(a), "{a} missing from {found:?}");
        }
        drop(v6);
        let found = own_addresses().expect("sock_diag dump");
        assert!(!found.contains(&addrs[2]), "{} still listed", addrs[2]);
        assert!(found.contains(&addrs[0]) && found.contains(&addrs[1]));
    }

    #[test]
    fn the_seed_finds_a_listener_and_its_process() {
        // Our own fds are readable without privileges.
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let seed = seed(&mut |path| agent_core::collect::workload::from_cgroup_path(path).into());
        let own = seed.namespaces[&seed.own].as_ref().expect("own namespace listed");
        let found = own.iter().find(|s| s.local == addr).expect("seeded");
        let owner = found.owner.as_ref().expect("its process");
        assert_eq!(owner.tgid, std::process::id());
    }
}
