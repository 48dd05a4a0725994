//! `cargo xtask test-kernels`: the agent on the kernels users run, not only on the development
//! machines' locked-down one (where only tp_btf and tracepoints attach).
//!
//! Debian's own 5.10 (bullseye), 6.1 and 6.12 kernels (`apt-get download`, unpacked, never
//! installed) boot under qemu (TCG: KVM fails in these nested machines) from an initramfs holding
//! busybox, the agent, `vm-client` and the two sock_diag modules. Inside, `guest-init.sh` runs `check`, then for each
//! attach mode `check --attach` and the daemon forced onto it while `vm-client` makes refused
//! (IPv4 and IPv6), reset, cold-start and misaddressed connects, and prints `/metrics`. The host
//! demands exact counts under the right labels, the forced mode on every hook that offers it,
//! and the per-kernel programs (the pre-6.10 fallbacks on 6.1, the fentry ones for hooks whose
//! tracepoints 5.10 lacks) having run. The kernels boot at once; downloads and unpacked kernels
//! are cached under `target/kernels/`.
use std::{
    fmt::Write as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use testkit::{
    metrics::{
        BPF_RUNS, COLD_START_COUNT, EPISODES, EVENTS_DROPPED, FAILURES, INBOUND_DIAGNOSIS, INBOUND_REFUSED,
        LISTENER_LOST, PROBE_ATTACHED, RESETS_RECEIVED, RESETS_SENT,
    },
    value,
};

use crate::{root, run, target_dir};

/// A Debian kernel series the matrix boots.
pub(crate) struct Kernel {
    pub(crate) series: &'static str,
    /// The package that depends on the series' current image. The cloud flavour: a third of the
    /// generic one's size, with the same BPF, kprobe and BTF configuration.
    meta: &'static str,
    /// The Debian suite it comes from when not the machine's own: apt gets a sources entry for
    /// it and package lists of its own under `target/kernels/<suite>/`, used for this only.
    suite: Option<&'static str>,
    /// `sk_rst_reason` label of an abort by SO_LINGER 0.
    abort_reason: &'static str,
    /// The programs that must count RSTs sent, inbound refusals and UDP errors in (tp_btf,
    /// tracepoint) mode.
    send_reset: [&'static str; 2],
    inbound: [&'static str; 2],
    error_report: [&'static str; 2],
    /// `(hook, mode, instead)`: the hook has no form of the mode on this kernel (the tracepoint
    /// is younger), so `--attach mode` leaves it on its chain, which gives it `instead`.
    instead: &'static [(&'static str, &'static str, &'static str)],
    /// The program that tells an OOM kill in tp_btf mode (`mark_victim` changed form in 6.8; the
    /// older form's program is chosen by the tracepoint's arguments, not by version).
    oom_btf: &'static str,
}

pub(crate) const KERNELS: &[Kernel] = &[
    Kernel {
        series: "5.10",
        meta: "linux-image-cloud-amd64",
        suite: Some("bullseye"),
        abort_reason: "not_specified",
        send_reset: ["send_reset_btf_pre610", "send_reset_tp_pre610"],
        // No drop reason in `kfree_skb` (5.17): where it was called from tells an inbound
        // refusal. No `inet_sk_error_report` tracepoint (5.15): UDP errors come from fentry on
        // the callback it reports from (first in its chain after the tracepoints).
        inbound: ["kfree_skb_btf_pre517", "kfree_skb_tp_pre517"],
        error_report: ["error_report_fentry", "error_report_fentry"],
        instead: &[
            ("error_report", "tp_btf", "fentry"),
            ("error_report", "tracepoint", "fentry"),
        ],
        oom_btf: "mark_victim_btf_pre68",
    },
    // Before 6.10 `tcp_send_reset` has no reason and never fires without a socket: the pre-6.10
    // programs count resets, `kfree_skb` (drop reason NO_SOCKET) the inbound refusals.
    Kernel {
        series: "6.1",
        meta: "linux-image-cloud-amd64",
        suite: None,
        abort_reason: "not_specified",
        send_reset: ["send_reset_btf_pre610", "send_reset_tp_pre610"],
        inbound: ["kfree_skb_btf", "kfree_skb_tp"],
        error_report: ["error_report_btf", "error_report_tp"],
        instead: &[],
        // Debian backported the two-argument `mark_victim` (6.8) to its 6.1.
        oom_btf: "mark_victim_btf",
    },
    Kernel {
        series: "6.12",
        meta: "linux-image-6.12-cloud-amd64",
        suite: None,
        abort_reason: "tcp_state",
        send_reset: ["send_reset_btf", "send_reset_tp"],
        inbound: ["send_reset_btf", "send_reset_tp"],
        error_report: ["error_report_btf", "error_report_tp"],
        instead: &[],
        oom_btf: "mark_victim_btf",
    },
];

const MODES: [&str; 4] = ["fentry", "kprobe", "tp_btf", "tracepoint"];
const HOOKS: [&str; 8] = [
    "state",
    "connect",
    "connect_sync",
    "error_report",
    "send_reset",
    "inbound",
    "receive_reset",
    "oom",
];

/// The hooks that offer a mode on `k`: `--attach` must put each of them on it.
fn offering(k: &Kernel, mode: &str) -> Vec<&'static str> {
    let all: &[&str] = match mode {
        "fentry" | "kprobe" => &["connect", "error_report", "inbound"],
        "tp_btf" => &[
            "state",
            "connect",
            "error_report",
            "send_reset",
            "inbound",
            "receive_reset",
            "oom",
        ],
        _ => &HOOKS,
    };
    all.iter()
        .copied()
        .filter(|h| !k.instead.iter().any(|(hook, m, _)| hook == h && *m == mode))
        .collect()
}

/// Programs that must have run in `mode` (their run counts are in `/metrics`).
fn must_run(k: &Kernel, mode: &str) -> Vec<&'static str> {
    let mut programs = match mode {
        "fentry" => vec![
            "connect4_fentry",
            "connect6_fentry",
            "error_report_fentry",
            "inbound4_fentry",
            "inbound6_fentry",
        ],
        "kprobe" => vec!["connect_kprobe", "error_report_kprobe", "inbound_kprobe"],
        "tp_btf" => vec![
            "sock_state_btf",
            k.error_report[0],
            "receive_reset_btf",
            k.send_reset[0],
            k.inbound[0],
            k.oom_btf,
        ],
        _ => vec![
            "sock_state_tp",
            k.error_report[1],
            "receive_reset_tp",
            "connect_enter",
            "connect_exit",
            k.send_reset[1],
            k.inbound[1],
            "mark_victim_tp",
        ],
    };
    // From 6.10 the inbound hook rides on the send_reset program.
    programs.sort_unstable();
    programs.dedup();
    programs
}

/// Traffic per run: `guest-init.sh` makes it on ports base + 1…10, with these counts, which it
/// reads from the kernel command line (`ra.<name>=<count>`).
const REFUSED_V4: f64 = 200.0;
const REFUSED_V6: f64 = 50.0;
const RESETS: f64 = 50.0;
const ELSEWHERE: f64 = 20.0;
const UDP_REFUSED: f64 = 30.0;
const NO_ROUTE: f64 = 10.0;
/// Refused connects to each port whose listener died (SIGKILL, the OOM killer).
const LOST: f64 = 5.0;
const TRAFFIC: [(&str, f64); 7] = [
    ("refused_v4", REFUSED_V4),
    ("refused_v6", REFUSED_V6),
    ("resets", RESETS),
    ("elsewhere", ELSEWHERE),
    ("udp", UDP_REFUSED),
    ("noroute", NO_ROUTE),
    ("lost", LOST),
];
/// The diagnosis of the refusals to each port (base + n, address): nothing ever listened on 1;
/// 5 and 6 have a listener on another address; 9's listener was killed, 10's OOM-killed.
const DIAGNOSES: [(u16, &str, &str); 5] = [
    (1, "127.0.0.1", "never_listened"),
    (5, "192.0.2.1", "loopback_only"),
    (6, "127.0.0.1", "wrong_address"),
    (9, "127.0.0.1", "listener_killed"),
    (10, "127.0.0.1", "listener_killed"),
];
/// A guest takes about 5 minutes (TCG, debug build, the three kernels at once; 6 on a machine
/// other work loads too); past this it hangs.
const BOOT_TIMEOUT: Duration = Duration::from_secs(720);
const README_BEGIN: &str = "<!-- test-kernels: begin -->";
const README_END: &str = "<!-- test-kernels: end -->";

pub struct Opts {
    /// Rewrite README's "What attaches where" from this run instead of requiring it to match.
    pub bless: bool,
}

pub fn matrix(opts: &Opts) -> Result<()> {
    let started = Instant::now();
    let dir = target_dir().join("kernels");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut build = crate::cargo();
    run(build.args([
        "build",
        "-p",
        "agent-user",
        "--bin",
        "refusal-agent",
        "-p",
        "xtask",
        "--bin",
        "vm-client",
    ]))?;
    let bins = target_dir().join("debug");

    let (mut boots, mut unpacked) = (Vec::new(), Vec::new());
    for k in KERNELS {
        let image = fetch(k, &dir)?;
        unpacked.extend(image.parent().and_then(Path::parent).map(Path::to_path_buf));
        let initrd = dir.join(format!("{}.initrd.gz", k.series));
        initramfs(&image, &bins, &initrd)?;
        let log = dir.join(format!("{}.console.log", k.series));
        eprintln!(
            "xtask: booting {} ({}) under qemu",
            k.series,
            image.file_name().unwrap_or_default().to_string_lossy()
        );
        boots.push((k, boot(&image, &initrd, &log)?, log, Instant::now()));
    }
    prune(&dir, &unpacked)?;
    let mut report = String::new();
    let mut failures = Vec::new();
    let mut checks = Vec::new();
    for (k, child, log, at) in boots {
        let outcome = wait(child, at, &log);
        let console = std::fs::read_to_string(&log).unwrap_or_default();
        let guest = Guest::parse(&console);
        let elapsed = at.elapsed();
        let mut fail = |what: String| failures.push(format!("{} {what}", k.series));
        if let Err(e) = outcome {
            fail(format!("{e:#} (console: {})", log.display()));
        }
        judge(k, &guest, &mut report, &mut fail);
        let _ = writeln!(report, "  ({} booted as {} in {elapsed:.0?})", k.series, guest.release);
        checks.push((k, guest));
    }
    readme(&checks, opts.bless, &mut |f| failures.push(f))?;

    eprintln!("\ntest-kernels: counted / expected per attach mode, every mode forced with --attach\n");
    eprintln!("{report}");
    eprintln!("  total {:.0?}", started.elapsed());
    if !failures.is_empty() {
        for (k, g) in &checks {
            for r in g.runs.iter().filter(|r| {
                failures
                    .iter()
                    .any(|f| f.starts_with(&format!("{} {}:", k.series, r.mode)))
            }) {
                eprintln!("\n--- {} {}: daemon log ---\n{}", k.series, r.mode, r.log.join("\n"));
            }
        }
        eprintln!();
        for f in &failures {
            eprintln!("FAILED {f}");
        }
        bail!(
            "test-kernels: {} failures (consoles in {})",
            failures.len(),
            dir.display()
        );
    }
    Ok(())
}

/// The kernel image of `k`'s current Debian package, downloaded and unpacked once.
pub(crate) fn fetch(k: &Kernel, dir: &Path) -> Result<PathBuf> {
    let apt = apt_options(k, dir)?;
    let package = match image_package(k.meta, &apt) {
        Ok(p) => p,
        Err(_) => {
            // Fresh machines (and a suite's own lists) may have no package lists yet.
            run(Command::new("apt-get").args(["update", "-q"]).args(&apt))?;
            image_package(k.meta, &apt)?
        }
    };
    let release = package.trim_start_matches("linux-image-");
    if !release.starts_with(&format!("{}.", k.series)) {
        bail!(
            "{} depends on {package}, not a {} kernel: update KERNELS in xtask/src/kernels.rs",
            k.meta,
            k.series
        );
    }
    let unpacked = dir.join(&package);
    let image = unpacked.join("boot").join(format!("vmlinuz-{release}"));
    if image.exists() {
        return Ok(image);
    }
    eprintln!("xtask: downloading {package}");
    let scratch = dir.join("download");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)?;
    run(Command::new("apt-get")
        .args(["download", "-q", &package])
        .args(&apt)
        .current_dir(&scratch))?;
    let deb = std::fs::read_dir(&scratch)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download left no .deb")?;
    let tree = scratch.join("tree");
    run(Command::new("dpkg").arg("-x").arg(&deb).arg(&tree))?;
    // Keep the image and the modules the guest loads; the rest of the package is 100 MB.
    let modules = unpacked.join("modules");
    std::fs::create_dir_all(unpacked.join("boot"))?;
    std::fs::create_dir_all(&modules)?;
    for name in ["inet_diag", "tcp_diag"] {
        let found = find_module(&tree.join("lib/modules").join(release), name)?;
        std::fs::copy(&found, modules.join(found.file_name().unwrap_or_default()))?;
    }
    std::fs::copy(tree.join("boot").join(format!("vmlinuz-{release}")), &image)?;
    std::fs::remove_dir_all(&scratch)?;
    Ok(image)
}

/// Removes kernels unpacked for packages Debian has since replaced.
fn prune(dir: &Path, current: &[PathBuf]) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let old = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("linux-image-"));
        if old && !current.contains(&path) {
            std::fs::remove_dir_all(&path)?;
        }
    }
    Ok(())
}

/// apt's options for `k`'s suite: a sources list naming the machine's own Debian mirror with that
/// suite, and lists and caches of its own, so the machine's apt setup is left alone. None for
/// the machine's own suite.
fn apt_options(k: &Kernel, dir: &Path) -> Result<Vec<String>> {
    let Some(suite) = k.suite else {
        return Ok(Vec::new());
    };
    let own = dir.join(suite);
    let sources = own.join("sources.list");
    if !sources.exists() {
        let out = Command::new("apt-get")
            .args([
                "indextargets",
                "--format",
                "$(REPO_URI)",
                "Identifier: Packages",
                "Label: Debian",
            ])
            .output()
            .context("apt-get indextargets")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mirror = text
            .lines()
            .next()
            .context("no Debian archive among apt's sources (apt-get indextargets)")?;
        std::fs::create_dir_all(own.join("lists/partial"))?;
        std::fs::create_dir_all(own.join("cache/archives/partial"))?;
        std::fs::write(
            &sources,
            format!("deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {mirror} {suite} main\n"),
        )?;
    }
    let at = |key: &str, path: PathBuf| format!("-o{key}={}", path.display());
    Ok(vec![
        at("Dir::Etc::SourceList", sources),
        "-oDir::Etc::SourceParts=/dev/null".into(),
        at("Dir::State::Lists", own.join("lists")),
        at("Dir::Cache", own.join("cache")),
    ])
}

fn image_package(meta: &str, apt: &[String]) -> Result<String> {
    let out = Command::new("apt-cache").args(["depends", meta]).args(apt).output()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Depends: linux-image-")
                .map(|p| format!("linux-image-{p}"))
        })
        .with_context(|| format!("apt-cache depends {meta}: no linux-image dependency"))
}

fn find_module(dir: &Path, name: &str) -> Result<PathBuf> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let file = path.file_name().unwrap_or_default().to_string_lossy();
        if path.is_dir() {
            if let Ok(found) = find_module(&path, name) {
                return Ok(found);
            }
        } else if file == format!("{name}.ko") || file == format!("{name}.ko.xz") {
            return Ok(path);
        }
    }
    bail!("no {name}.ko under {}", dir.display())
}

/// A gzipped newc cpio: busybox, the two binaries and the libraries they link, the modules
/// next to `image`, and `guest-init.sh` as `/init`.
fn initramfs(image: &Path, bins: &Path, out: &Path) -> Result<()> {
    let tree = out.with_extension("d");
    let _ = std::fs::remove_dir_all(&tree);
    for d in ["bin", "proc", "sys", "dev", "tmp", "modules"] {
        std::fs::create_dir_all(tree.join(d))?;
    }
    let busybox = testkit::which("busybox").context("busybox not found (cargo xtask setup --test-deps installs it)")?;
    let programs = [busybox, bins.join("refusal-agent"), bins.join("vm-client")];
    for p in &programs {
        let to = tree.join("bin").join(p.file_name().unwrap_or_default());
        std::fs::copy(p, &to).with_context(|| format!("copying {}", p.display()))?;
        // The debug build's DWARF would be most of the image, unpacked by an emulated CPU.
        run(Command::new("strip").arg("--strip-debug").arg(&to))?;
    }
    let ldd = Command::new("ldd").args(&programs).output()?;
    // Paths of the libraries, not the `/usr/bin/busybox:` headers of each program.
    for lib in String::from_utf8_lossy(&ldd.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/') && !w.ends_with(':'))
    {
        let to = tree.join(lib.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().unwrap_or(&tree))?;
        std::fs::copy(lib, &to).with_context(|| format!("copying {lib}"))?;
    }
    let modules = image.parent().and_then(Path::parent).unwrap_or(image).join("modules");
    for entry in std::fs::read_dir(&modules)? {
        let path = entry?.path();
        std::fs::copy(&path, tree.join("modules").join(path.file_name().unwrap_or_default()))?;
    }
    let init = tree.join("init");
    std::fs::write(&init, include_str!("guest-init.sh"))?;
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755))?;
    run(Command::new("sh")
        .arg("-c")
        .arg("find . | cpio -o -H newc --quiet | gzip -1 > \"$0\"")
        .arg(out)
        .current_dir(&tree))?;
    std::fs::remove_dir_all(&tree)?;
    Ok(())
}

fn boot(image: &Path, initrd: &Path, log: &Path) -> Result<Child> {
    let traffic: String = TRAFFIC.iter().map(|(name, n)| format!(" ra.{name}={n}")).collect();
    let append = format!("console=ttyS0 panic=-1 quiet ra.modes={}{traffic}", MODES.join(","));
    qemu(image, initrd, log, &append)
}

/// A qemu guest (TCG, 2 GiB, one CPU) booting `image` from `initrd`, its console in `log`.
pub(crate) fn qemu(image: &Path, initrd: &Path, log: &Path, append: &str) -> Result<Child> {
    Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-cpu", "max", "-m", "2048", "-smp", "1"])
        .args(["-nodefaults", "-display", "none", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .arg("-kernel")
        .arg(image)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", append])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("starting qemu-system-x86_64")
}

pub(crate) fn wait(mut child: Child, since: Instant, log: &Path) -> Result<()> {
    loop {
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                bail!("qemu exited with {status}");
            }
            return Ok(());
        }
        if since.elapsed() > BOOT_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "no poweroff within {BOOT_TIMEOUT:?}, killed (console: {})",
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What the guest printed, from its `@@ ` lines.
#[derive(Default)]
struct Guest {
    release: String,
    check_exit: Option<i32>,
    check: Vec<String>,
    runs: Vec<Run>,
    done: bool,
}

#[derive(Default)]
struct Run {
    mode: String,
    base: u16,
    check_exit: Option<i32>,
    check: Vec<String>,
    ready: bool,
    clients: Vec<String>,
    metrics: String,
    exit: Option<i32>,
    /// `trace --attach` events: (count, kind, port or reason).
    trace: Vec<(f64, String, String)>,
    trace_exit: Option<i32>,
    log: Vec<String>,
}

impl Run {
    fn traced(&self, kind: &str, key: &str) -> f64 {
        self.trace
            .iter()
            .filter(|(_, k, v)| k == kind && v == key)
            .map(|(n, _, _)| n)
            .sum()
    }
}

/// The `@@ TAG REST` lines a guest printed on its console, as `(TAG, REST)`. The firmware's
/// escape sequences may precede the first one on its line.
pub(crate) fn console_lines(console: &str) -> impl Iterator<Item = (&str, &str)> {
    console.lines().filter_map(|l| {
        let line = l[l.find("@@ ")? + 3..].trim_end_matches('\r');
        Some(line.split_once(' ').unwrap_or((line, "")))
    })
}

impl Guest {
    fn parse(console: &str) -> Guest {
        let mut g = Guest::default();
        for (tag, rest) in console_lines(console) {
            let code = || rest.trim().parse().ok();
            match (tag, g.runs.last_mut()) {
                ("kernel", _) => g.release = rest.to_string(),
                ("mode", _) => {
                    let (mode, base) = rest.split_once(' ').unwrap_or((rest, ""));
                    g.runs.push(Run {
                        mode: mode.to_string(),
                        base: base.parse().unwrap_or(0),
                        ..Run::default()
                    });
                }
                ("check-exit", None) => g.check_exit = code(),
                ("check", None) => g.check.push(rest.to_string()),
                ("check-exit", Some(r)) => r.check_exit = code(),
                ("check", Some(r)) => r.check.push(rest.to_string()),
                ("ready", Some(r)) => r.ready = rest == "1",
                ("client", Some(r)) => r.clients.push(rest.to_string()),
                ("metrics", Some(r)) => {
                    r.metrics.push_str(rest);
                    r.metrics.push('\n');
                }
                ("exit", Some(r)) => r.exit = code(),
                ("trace-exit", Some(r)) => r.trace_exit = code(),
                ("trace", Some(r)) => {
                    if let [n, kind, key] = rest.split_whitespace().collect::<Vec<_>>()[..] {
                        r.trace.push((n.parse().unwrap_or(0.0), kind.into(), key.into()));
                    }
                }
                ("log", Some(r)) => r.log.push(rest.to_string()),
                ("done", _) => g.done = true,
                _ => {}
            }
        }
        g
    }
}

/// Checks one kernel's runs, appends its rows to `report` and every mismatch to `fail`.
fn judge(k: &Kernel, g: &Guest, report: &mut String, fail: &mut dyn FnMut(String)) {
    if !g.release.starts_with(&format!("{}.", k.series)) {
        fail(format!("booted {:?}, not a {} kernel", g.release, k.series));
    }
    if g.check_exit != Some(0) {
        fail(format!("`check` exited {:?}:\n{}", g.check_exit, g.check.join("\n")));
    }
    if !g.done {
        fail("the guest did not finish".into());
    }
    if report.is_empty() {
        let _ = writeln!(
            report,
            "  {:<6} {:<10} {:<6} {:>8} {:>6} {:>8} {:>6} {:>6} {:>6} {:>7} {:>6} {:>7} {:>4} {:>4} {:>4} {:>8}  programs that ran",
            "kernel",
            "mode",
            "result",
            "refused",
            "v6",
            "inbound",
            "rst→",
            "rst←",
            "cold",
            "episode",
            "udp",
            "noroute",
            "diag",
            "kill",
            "oom",
            "traced"
        );
    }
    for mode in MODES {
        let Some(r) = g.runs.iter().find(|r| r.mode == mode) else {
            fail(format!("{mode}: no run"));
            continue;
        };
        let mut bad = Vec::new();
        judge_run(k, r, &mut bad);
        let m = &r.metrics;
        let p = |n: u16| (r.base + n).to_string();
        let cold = r
            .clients
            .iter()
            .find_map(|c| c.strip_prefix("cold-start "))
            .unwrap_or("?");
        let diag = DIAGNOSES
            .iter()
            .filter(|(n, a, d)| {
                value(
                    m,
                    INBOUND_DIAGNOSIS,
                    &[("local_addr", a), ("local_port", &p(*n)), ("diagnosis", d)],
                ) == 1.0
            })
            .count();
        // A table cell: what /metrics counted, over what was made.
        let got = |name: &str, labels: &[(&str, &str)], want: f64| format!("{}/{want}", value(m, name, labels));
        let ran: Vec<&str> = must_run(k, mode)
            .into_iter()
            .filter(|prog| value(m, BPF_RUNS, &[("program", prog)]) > 0.0)
            .collect();
        let _ = writeln!(
            report,
            "  {:<6} {:<10} {:<6} {:>8} {:>6} {:>8} {:>6} {:>6} {:>6} {:>7} {:>6} {:>7} {:>4} {:>4} {:>4} {:>8}  {}",
            k.series,
            mode,
            if bad.is_empty() { "PASS" } else { "FAIL" },
            got(FAILURES, &[("dst_port", &p(1))], REFUSED_V4),
            got(FAILURES, &[("dst_port", &p(2))], REFUSED_V6),
            got(INBOUND_REFUSED, &[("local_port", &p(1))], REFUSED_V4),
            got(RESETS_SENT, &[], RESETS),
            got(RESETS_RECEIVED, &[("state", "established")], RESETS),
            format!("{}/{cold}", value(m, FAILURES, &[("dst_port", &p(4))])),
            got(EPISODES, &[("dst_port", &p(4)), ("outcome", "cold_start")], 1.0),
            got(FAILURES, &[("dst_port", &p(7))], UDP_REFUSED),
            got(FAILURES, &[("dst_port", &p(8))], NO_ROUTE),
            format!("{diag}/{}", DIAGNOSES.len()),
            got(LISTENER_LOST, &[("local_port", &p(9)), ("cause", "killed")], 1.0),
            got(LISTENER_LOST, &[("local_port", &p(10)), ("cause", "oom_killed")], 1.0),
            format!("{}/{REFUSED_V4}", r.traced("connect_failed", &p(1))),
            ran.join(","),
        );
        for b in bad {
            fail(format!("{mode}: {b}"));
        }
    }
}

fn judge_run(k: &Kernel, r: &Run, bad: &mut Vec<String>) {
    let mode = r.mode.as_str();
    if r.check_exit != Some(0) {
        bad.push(format!(
            "`check --attach {mode}` exited {:?}:\n{}",
            r.check_exit,
            r.check.join("\n")
        ));
    }
    let uses: Vec<(&str, &str)> = offering(k, mode)
        .into_iter()
        .map(|h| (h, mode))
        .chain(
            k.instead
                .iter()
                .filter(|(_, m, _)| *m == mode)
                .map(|(h, _, i)| (*h, *i)),
        )
        .collect();
    for (hook, used_mode) in &uses {
        let used = r.check.iter().any(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.first() == Some(hook) && cols.get(1) == Some(used_mode) && l.ends_with(" used")
        });
        if !used {
            bad.push(format!("`check --attach {mode}` does not use {used_mode} for {hook}"));
        }
    }
    if !r.ready {
        bad.push(format!("`run --attach {mode}` never became ready (exit {:?})", r.exit));
        return;
    }
    if r.exit != Some(0) {
        bad.push(format!("the daemon exited {:?} on SIGTERM", r.exit));
    }
    if r.trace_exit != Some(0) {
        bad.push(format!("`trace --attach {mode}` exited {:?} on SIGINT", r.trace_exit));
    }
    let cold: Option<f64> = r
        .clients
        .iter()
        .find_map(|c| c.strip_prefix("cold-start ")?.parse().ok());
    let want_clients = [
        format!("refused {REFUSED_V4}"),
        format!("refused {REFUSED_V6}"),
        format!("reset {RESETS}"),
        format!("cold-start {}", cold.unwrap_or(-1.0)),
        format!("udp {UDP_REFUSED}"),
        format!("noroute {NO_ROUTE}"),
        format!("listen-killed {LOST}"),
        format!("listen-oom {LOST}"),
        format!("elsewhere {ELSEWHERE}"),
        format!("elsewhere {ELSEWHERE}"),
    ];
    if r.clients != want_clients || cold.is_none() {
        bad.push(format!("vm-client said {:?}, expected {want_clients:?}", r.clients));
    }
    let m = &r.metrics;
    let p = |n: u16| (r.base + n).to_string();
    let mut expect = |name: &str, labels: &[(&str, &str)], want: f64| {
        let got = value(m, name, labels);
        if got != want {
            bad.push(format!("{name}{labels:?} = {got}, expected {want}"));
        }
    };
    // Failures no RST announces, each under its own labels and nothing else on its port: UDP
    // refused by ICMP (error_report) and no route inside connect(2) (connect_sync).
    for (port, proto, addr, errno, n) in [
        (p(7), "udp", "127.0.0.1", "ECONNREFUSED", UDP_REFUSED),
        (p(8), "tcp", "198.51.100.1", "ENETUNREACH", NO_ROUTE),
    ] {
        let labels = |comm| {
            [
                ("comm", comm),
                ("proto", proto),
                ("dst_addr", addr),
                ("dst_port", port.as_str()),
                ("errno", errno),
            ]
        };
        // A UDP error runs in the sender's softirq, unless the one-CPU guest has deferred
        // softirq work to ksoftirqd: then no process is named (README, known limits), and
        // never the kernel thread.
        let unknown = if proto == "udp" {
            value(m, FAILURES, &labels("unknown"))
        } else {
            0.0
        };
        expect(
            FAILURES,
            &[&labels("vm-client")[..], &[("workload", "/")]].concat(),
            n - unknown,
        );
        expect(FAILURES, &[("dst_port", port.as_str())], n);
    }
    // Each listener lost once, by its cause, and nothing else lost on its port.
    for (n, cause) in [(9, "killed"), (10, "oom_killed")] {
        let labels = [
            ("comm", "vm-client"),
            ("local_port", &p(n)),
            ("cause", cause),
            ("after_reset", "false"),
        ];
        expect(LISTENER_LOST, &labels, 1.0);
        expect(LISTENER_LOST, &[("local_port", &p(n))], 1.0);
    }
    let refused = [
        ("127.0.0.1", p(1), REFUSED_V4),
        ("::1", p(2), REFUSED_V6),
        ("127.0.0.1", p(4), cold.unwrap_or(-1.0)),
        ("192.0.2.1", p(5), ELSEWHERE),
        ("127.0.0.1", p(6), ELSEWHERE),
        ("127.0.0.1", p(9), LOST),
        ("127.0.0.1", p(10), LOST),
    ];
    for (addr, port, n) in &refused {
        let port = port.as_str();
        let target = [
            ("workload", "/"),
            ("comm", "vm-client"),
            ("proto", "tcp"),
            ("dst_addr", addr),
            ("dst_port", port),
        ];
        expect(FAILURES, &[&target[..], &[("errno", "ECONNREFUSED")]].concat(), *n);
        // Nothing else counted for that port: no double count under another label.
        expect(FAILURES, &[("dst_port", port)], *n);
        expect(
            RESETS_RECEIVED,
            &[
                ("comm", "vm-client"),
                ("dst_addr", addr),
                ("dst_port", port),
                ("state", "syn_sent"),
            ],
            *n,
        );
        expect(INBOUND_REFUSED, &[("local_addr", addr), ("local_port", port)], *n);
        expect(INBOUND_REFUSED, &[("local_port", port)], *n);
    }
    expect(
        RESETS_SENT,
        &[("comm", "vm-client"), ("reason", k.abort_reason)],
        RESETS,
    );
    expect(RESETS_SENT, &[], RESETS);
    expect(RESETS_RECEIVED, &[("state", "established")], RESETS);
    let cold_port = p(4);
    expect(
        EPISODES,
        &[
            ("comm", "vm-client"),
            ("dst_port", &cold_port),
            ("outcome", "cold_start"),
        ],
        1.0,
    );
    expect(COLD_START_COUNT, &[("dst_port", &cold_port)], 1.0);
    for (n, addr, diagnosis) in DIAGNOSES {
        expect(
            INBOUND_DIAGNOSIS,
            &[("local_addr", addr), ("local_port", &p(n)), ("diagnosis", diagnosis)],
            1.0,
        );
    }
    for hook in HOOKS {
        expect(PROBE_ATTACHED, &[("hook", hook)], 1.0);
    }
    for (hook, used_mode) in &uses {
        expect(PROBE_ATTACHED, &[("hook", hook), ("mode", used_mode)], 1.0);
    }
    for place in [
        "owner_map_full",
        "target_map_full",
        "reset_map_full",
        "listen_ring_full",
    ] {
        expect(EVENTS_DROPPED, &[("where", place)], 0.0);
    }
    for prog in must_run(k, mode) {
        if value(m, BPF_RUNS, &[("program", prog)]) == 0.0 {
            bad.push(format!("program {prog} never ran"));
        }
    }
    for (_, port, n) in &refused {
        for kind in ["connect_failed", "reset_received", "inbound_refused"] {
            let got = r.traced(kind, port);
            if got != *n {
                bad.push(format!("trace: {got} {kind} events for port {port}, expected {n}"));
            }
        }
    }
    let got = r.traced("reset_sent", k.abort_reason);
    if got != RESETS {
        bad.push(format!(
            "trace: {got} reset_sent events ({}), expected {RESETS}",
            k.abort_reason
        ));
    }
}

/// README's "What attaches where" holds `check` on each kernel: it must match this run, or be
/// rewritten from it with `--bless`.
fn readme(checks: &[(&Kernel, Guest)], bless: bool, fail: &mut dyn FnMut(String)) -> Result<()> {
    let path = root().join("README.md");
    let text = std::fs::read_to_string(&path)?;
    let Some((head, rest)) = text.split_once(README_BEGIN) else {
        bail!("README.md has no {README_BEGIN} marker");
    };
    let Some((old, tail)) = rest.split_once(README_END) else {
        bail!("README.md has no {README_END} marker");
    };
    let rows = |g: &Guest| {
        g.check
            .iter()
            .skip_while(|l| !l.starts_with("HOOK"))
            .cloned()
            .collect::<Vec<_>>()
    };
    if bless {
        let mut new = String::from("\n");
        for (k, g) in checks {
            let _ = writeln!(new, "Debian {} (`{}`, {}):\n\n```text", k.series, k.meta, g.release);
            for row in rows(g) {
                let _ = writeln!(new, "{}", row.trim_end());
            }
            new.push_str("```\n\n");
        }
        std::fs::write(&path, format!("{head}{README_BEGIN}{new}{README_END}{tail}"))?;
        eprintln!("xtask: README.md \"What attaches where\" rewritten from this run");
        return Ok(());
    }
    for (k, g) in checks {
        let marker = format!("Debian {} (", k.series);
        let kept: Vec<String> = old
            .split_once(&marker)
            .and_then(|(_, s)| s.split_once("```text\n"))
            .map(|(_, s)| {
                s.split("```")
                    .next()
                    .unwrap_or_default()
                    .lines()
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let now: Vec<String> = rows(g).iter().map(|l| l.trim_end().to_string()).collect();
        if kept != now {
            fail(format!(
                "README.md's `check` table differs from this run's:\n{}\n(rewrite it with `cargo xtask test-kernels --bless`)",
                now.join("\n")
            ));
        }
    }
    Ok(())
}
