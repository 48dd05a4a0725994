//! The daemon under test: `refusal-agent run` on a free loopback port, pinning under a
//! directory of its own, its stderr in a log file; killed and unpinned on drop.
use std::{
    ffi::OsStr,
    fs::File,
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{http::get, net::closed_port};

/// A debug build on a busy two-core machine can take this long to attach everything.
const READY_WITHIN: Duration = Duration::from_secs(60);

pub struct Daemon {
    child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
    /// A pin directory of its own, removed with it (callers that pass `--pin-dir` manage theirs).
    own_pins: Option<PathBuf>,
}

/// A bpffs directory for one daemon's pins.
pub fn pin_dir(name: &str) -> PathBuf {
    PathBuf::from(format!("/sys/fs/bpf/refusal-agent-test/{}-{name}", std::process::id()))
}

fn answers_readyz(addr: SocketAddr) -> bool {
    get(addr, "/readyz").is_ok_and(|(code, _)| code == 200)
}

impl Daemon {
    /// Starts `bin run` on a free loopback port, without waiting for it. Each daemon pins under
    /// its own directory unless `args` name one, so daemons run side by side.
    pub fn try_spawn(bin: impl AsRef<Path>, args: &[&str]) -> io::Result<Daemon> {
        let bin = bin.as_ref();
        let addr = SocketAddr::from(([127, 0, 0, 1], closed_port()));
        let log = std::env::temp_dir().join(format!("refusal-agent-test-{}-{}.log", std::process::id(), addr.port()));
        let own_pins = (!args.contains(&"--pin-dir")).then(|| pin_dir(&addr.port().to_string()));
        let child = Command::new(bin)
            .arg("run")
            .arg("--listen")
            .arg(addr.to_string())
            .args(own_pins.iter().flat_map(|d| [OsStr::new("--pin-dir"), d.as_os_str()]))
            .args(args)
            .stdout(Stdio::null())
            .stderr(File::create(&log)?)
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("starting {}: {e}", bin.display())))?;
        Ok(Daemon {
            child,
            addr,
            log,
            own_pins,
        })
    }

    /// Starts and waits for `/readyz`.
    pub fn try_start(bin: impl AsRef<Path>, args: &[&str]) -> io::Result<Daemon> {
        Self::try_start_when(bin, args, answers_readyz)
    }

    /// Starts and waits until `ready(addr)` (TLS or auth make a plain `/readyz` unusable).
    pub fn try_start_when(
        bin: impl AsRef<Path>,
        args: &[&str],
        ready: impl Fn(SocketAddr) -> bool,
    ) -> io::Result<Daemon> {
        let mut d = Self::try_spawn(bin, args)?;
        let deadline = Instant::now() + READY_WITHIN;
        while Instant::now() < deadline {
            if let Some(status) = d.child.try_wait()? {
                return Err(io::Error::other(format!(
                    "daemon exited early ({status}):\n{}",
                    d.log()
                )));
            }
            if ready(d.addr) {
                return Ok(d);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(io::Error::other(format!(
            "daemon not ready after {} s:\n{}",
            READY_WITHIN.as_secs(),
            d.log()
        )))
    }

    /// [`Daemon::try_spawn`], panicking.
    pub fn spawn(bin: impl AsRef<Path>, args: &[&str]) -> Daemon {
        Self::try_spawn(bin, args).unwrap_or_else(|e| panic!("spawn refusal-agent: {e}"))
    }

    /// [`Daemon::try_start`], panicking.
    pub fn start(bin: impl AsRef<Path>, args: &[&str]) -> Daemon {
        Self::start_when(bin, args, answers_readyz)
    }

    /// [`Daemon::try_start_when`], panicking.
    pub fn start_when(bin: impl AsRef<Path>, args: &[&str], ready: impl Fn(SocketAddr) -> bool) -> Daemon {
        Self::try_start_when(bin, args, ready).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_metrics(&self) -> io::Result<String> {
        let (code, body) = get(self.addr, "/metrics")?;
        if code != 200 {
            return Err(io::Error::other(format!("/metrics answered {code}: {body}")));
        }
        Ok(body)
    }

    pub fn metrics(&self) -> String {
        self.try_metrics().unwrap_or_else(|e| panic!("scrape /metrics: {e}"))
    }

    /// Resident memory in KiB, from /proc.
    pub fn try_rss_kib(&self) -> io::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .ok_or_else(|| io::Error::other("no VmRSS in /proc/<pid>/status"))
    }

    pub fn rss_kib(&self) -> u64 {
        self.try_rss_kib().unwrap_or_else(|e| panic!("RSS of the daemon: {e}"))
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits at most `limit` for the process to exit; its exit code, or None if it did not.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// Stops with SIGTERM and returns the exit code.
    pub fn stop(mut self) -> Option<i32> {
        self.signal(15);
        self.child.wait().unwrap().code()
    }

    pub fn signal(&self, sig: i32) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
        // Unpinning detaches whatever a killed daemon left counting.
        if let Some(dir) = &self.own_pins {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
