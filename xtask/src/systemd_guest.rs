//! `cargo xtask test-systemd`: the Debian package under a real systemd (PID 1), on Debian's 6.1
//! and 6.12 kernels under qemu, booted as the kernel matrix boots them (`kernels::fetch`,
//! `kernels::qemu`).
//!
//! The guest's root is Debian bookworm built by mmdebstrap from Debian's packages (systemd,
//! apt, curl, bpftool, kmod), cached as a gzipped cpio under `target/systemd-guest/`; booted as
//! the initramfs itself (`/init` is systemd), with a second cpio appended per run holding the
//! two `.deb`s (the package, and the same one at a newer Debian revision for the upgrade),
//! `vm-client`, the sock_diag modules and `systemd-guest.sh`, run by a oneshot unit after
//! multi-user.target that prints `@@ ` lines on the console and powers off. The host demands:
//! install enables and starts the unit, ready; refused connects counted exactly through a
//! `systemctl restart`, a SIGKILL (systemd restarts the daemon) and an upgrade; the
//! capabilities and user the README promises; logs in the journal; `systemd-analyze verify`
//! clean and `security` rating the unit as the README quotes; removal stopping it and leaving no
//! program, map, link or pin; purge removing the configuration.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use testkit::{metrics::FAILURES, value};

use crate::{kernels, package, root, run, target_dir};

/// What mmdebstrap puts in the guest's root besides `minbase` (apt, dpkg, bash, coreutils).
const SUITE: &str = "bookworm";
/// man-db: `systemd-analyze verify` runs `man` on the unit's `Documentation=man:` pages.
const INCLUDE: &str = "systemd-sysv,iproute2,curl,bpftool,kmod,man-db";
/// Refused connects the guest makes in each phase (systemd-guest.sh), all to one port.
const PHASES: [(&str, f64); 4] = [
    ("install", 100.0),
    ("restart", 300.0),
    ("sigkill", 200.0),
    ("upgrade", 100.0),
];
/// After attaching the daemon keeps CAP_BPF and CAP_DAC_READ_SEARCH (README, Security).
const CAPS_KEPT: &str = "0000008000000004";
/// The unit's bounding set (CAP_BPF, CAP_PERFMON, CAP_DAC_READ_SEARCH): not the daemon's to
/// shrink without CAP_SETPCAP, and out of reach anyway with no_new_privs and no ambient set.
const CAPS_UNIT: &str = "000000c000000004";
const GUEST_LIB: &str = "usr/local/lib/refusal-guest";
const TEST_UNIT: &str = "\
[Unit]
Description=refusal-agent package test (@@ lines on the console), then power off
After=multi-user.target
SuccessAction=poweroff-force
FailureAction=poweroff-force

[Service]
Type=oneshot
ExecStart=/usr/local/lib/refusal-guest/systemd-guest.sh
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyS0
TimeoutStartSec=20min

[Install]
WantedBy=multi-user.target
";

pub fn test() -> Result<()> {
    let started = Instant::now();
    let dir = target_dir().join("systemd-guest");
    std::fs::create_dir_all(&dir)?;
    // The package, and the same at a newer Debian revision to upgrade to.
    let mut debs = Vec::new();
    for revision in [None, Some("2")] {
        let deb = package::build(revision)?;
        let kept = dir.join(deb.file_name().context("a .deb")?);
        std::fs::copy(&deb, &kept)?;
        debs.push(kept);
    }
    run(crate::cargo().args(["build", "-p", "xtask", "--bin", "vm-client"]))?;
    let base = rootfs(&dir)?;
    let mut boots = Vec::new();
    for k in kernels::KERNELS.iter().filter(|k| ["6.1", "6.12"].contains(&k.series)) {
        let image = kernels::fetch(k, &target_dir().join("kernels"))?;
        let initrd = dir.join(format!("{}.initrd", k.series));
        overlay(&base, &image, &debs, &initrd)?;
        let log = dir.join(format!("{}.console.log", k.series));
        eprintln!("xtask: booting {} with systemd under qemu", k.series);
        let child = kernels::qemu(&image, &initrd, &log, "console=ttyS0 panic=-1")?;
        boots.push((k.series, child, log, Instant::now()));
    }
    let mut failures = Vec::new();
    let mut report = String::new();
    for (series, child, log, at) in boots {
        let outcome = kernels::wait(child, at, &log);
        let console = std::fs::read_to_string(&log).unwrap_or_default();
        let g = Guest::parse(&console);
        let mut bad = Vec::new();
        if let Err(e) = outcome {
            bad.push(format!("{e:#}"));
        }
        judge(&g, &mut bad);
        let _ = writeln!(
            report,
            "  {series:<5} {} in {:.0?} (guest: systemd up at {}s, done at {}s); {}",
            if bad.is_empty() { "PASS" } else { "FAIL" },
            at.elapsed(),
            g.times.get("boot").map_or("?", String::as_str),
            g.times.get("done").map_or("?", String::as_str),
            g.security.as_deref().unwrap_or("no security score"),
        );
        failures.extend(
            bad.into_iter()
                .map(|b| format!("{series}: {b} (console: {})", log.display())),
        );
        if series == "6.1" {
            readme_score(&g, &mut failures)?;
        }
    }
    eprintln!(
        "\ntest-systemd: the package under systemd, per kernel\n\n{report}  total {:.0?}",
        started.elapsed()
    );
    if !failures.is_empty() {
        for f in &failures {
            eprintln!("FAILED {f}");
        }
        bail!("test-systemd: {} failures", failures.len());
    }
    Ok(())
}

/// The guest's root as a gzipped cpio, built once per suite and package list.
fn rootfs(dir: &Path) -> Result<PathBuf> {
    let key = format!("{SUITE} {INCLUDE}");
    let out = dir.join("rootfs.cpio.gz");
    let stamp = dir.join("rootfs.key");
    if out.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(key.as_str()) {
        return Ok(out);
    }
    let tree = dir.join("rootfs");
    let _ = std::fs::remove_dir_all(&tree);
    eprintln!("xtask: building the guest's root with mmdebstrap ({SUITE}: {INCLUDE})");
    run(Command::new("mmdebstrap")
        .args(["--variant=minbase", "--quiet", &format!("--include={INCLUDE}"), SUITE])
        .arg(&tree)
        .arg(mirror()?))?;
    // systemd as /init; no login prompts (the serial getty would wait for a device that never
    // shows up as a udev device here).
    std::os::unix::fs::symlink("/lib/systemd/systemd", tree.join("init"))?;
    for unit in ["serial-getty@ttyS0.service", "getty@tty1.service"] {
        std::os::unix::fs::symlink("/dev/null", tree.join("etc/systemd/system").join(unit))?;
    }
    cpio(&tree, &out)?;
    std::fs::remove_dir_all(&tree)?;
    std::fs::write(&stamp, key)?;
    Ok(out)
}

/// The machine's own Debian mirror: the `URIs:` of its deb822 apt source for `SUITE`.
fn mirror() -> Result<String> {
    for entry in std::fs::read_dir("/etc/apt/sources.list.d")? {
        let text = std::fs::read_to_string(entry?.path()).unwrap_or_default();
        for stanza in text.split("\n\n") {
            let field = |name: &str| {
                stanza
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.trim().to_string())
            };
            if let (Some(uri), Some(suites)) = (field("URIs:"), field("Suites:"))
                && suites.split_whitespace().any(|s| s == SUITE)
            {
                return Ok(uri);
            }
        }
    }
    Ok("http://deb.debian.org/debian".into())
}

fn cpio(tree: &Path, out: &Path) -> Result<()> {
    run(Command::new("sh")
        .arg("-c")
        .arg("find . | cpio -o -H newc --quiet | gzip -1 > \"$0\"")
        .arg(out)
        .current_dir(tree))
}

/// `base` with a second archive appended (the kernel unpacks both): the packages, vm-client,
/// the kernel's sock_diag modules, the test script and its unit, enabled.
fn overlay(base: &Path, image: &Path, debs: &[PathBuf], out: &Path) -> Result<()> {
    let tree = out.with_extension("d");
    let _ = std::fs::remove_dir_all(&tree);
    let lib = tree.join(GUEST_LIB);
    let wants = tree.join("etc/systemd/system/multi-user.target.wants");
    for d in [lib.join("modules"), tree.join("usr/local/bin"), wants.clone()] {
        std::fs::create_dir_all(d)?;
    }
    for deb in debs {
        std::fs::copy(deb, lib.join(deb.file_name().unwrap_or_default()))?;
    }
    let client = target_dir().join("debug/vm-client");
    std::fs::copy(&client, tree.join("usr/local/bin/vm-client"))
        .with_context(|| format!("copying {}", client.display()))?;
    run(Command::new("strip")
        .arg("--strip-debug")
        .arg(tree.join("usr/local/bin/vm-client")))?;
    let modules = image.parent().and_then(Path::parent).unwrap_or(image).join("modules");
    for entry in std::fs::read_dir(&modules)? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let to = lib.join("modules").join(name.trim_end_matches(".xz"));
        if name.ends_with(".xz") {
            let raw = Command::new("xz").arg("-dc").arg(&path).output()?;
            std::fs::write(&to, raw.stdout)?;
        } else {
            std::fs::copy(&path, &to)?;
        }
    }
    let script = lib.join("systemd-guest.sh");
    std::fs::write(&script, include_str!("systemd-guest.sh"))?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    std::fs::write(tree.join("etc/systemd/system/refusal-guest-test.service"), TEST_UNIT)?;
    std::os::unix::fs::symlink(
        "../refusal-guest-test.service",
        wants.join("refusal-guest-test.service"),
    )?;
    let extra = out.with_extension("overlay.cpio.gz");
    cpio(&tree, &extra)?;
    std::fs::remove_dir_all(&tree)?;
    let mut initrd = std::fs::read(base)?;
    initrd.extend(std::fs::read(&extra)?);
    std::fs::write(out, initrd)?;
    std::fs::remove_file(&extra)?;
    Ok(())
}

/// What the guest printed, from its `@@ ` lines.
#[derive(Default)]
struct Guest {
    /// Single-valued lines: tag (and phase) → the rest.
    said: BTreeMap<String, String>,
    times: BTreeMap<String, String>,
    metrics: BTreeMap<String, String>,
    /// Multi-line outputs by tag (and phase): apt, status, security, prog …
    lines: BTreeMap<String, Vec<String>>,
    security: Option<String>,
}

/// Tags whose first word is a phase.
const PHASED: [&str; 8] = ["ready", "pid", "metrics", "client", "bpf", "prog", "pins", "etc"];

impl Guest {
    fn parse(console: &str) -> Guest {
        let mut g = Guest::default();
        for (tag, rest) in kernels::console_lines(console) {
            let (key, rest) = if PHASED.contains(&tag) || tag == "time" || tag == "active" || tag == "dpkg" {
                let (phase, rest) = rest.split_once(' ').unwrap_or((rest, ""));
                (format!("{tag} {phase}"), rest)
            } else {
                (tag.to_string(), rest)
            };
            match tag {
                "time" => {
                    g.times.insert(key["time ".len()..].to_string(), rest.to_string());
                }
                "metrics" => {
                    let m = g.metrics.entry(key["metrics ".len()..].to_string()).or_default();
                    m.push_str(rest);
                    m.push('\n');
                }
                "apt" | "status" | "security" | "verify-log" | "prog" | "journal-log" => {
                    if tag == "security" && rest.contains("Overall exposure level") {
                        g.security = Some(rest.trim_start_matches('→').trim().to_string());
                    }
                    g.lines.entry(key).or_default().push(rest.to_string());
                }
                _ => {
                    g.said.insert(key, rest.to_string());
                }
            }
        }
        g
    }

    fn said(&self, key: &str) -> &str {
        self.said.get(key).map_or("(nothing)", String::as_str)
    }

    fn status(&self, field: &str) -> String {
        self.lines
            .get("status")
            .into_iter()
            .flatten()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .map_or_else(|| "(absent)".into(), |v| v.trim().to_string())
    }
}

fn judge(g: &Guest, bad: &mut Vec<String>) {
    if !g.said.contains_key("done") {
        bad.push("the guest did not finish".into());
    }
    fn expect(bad: &mut Vec<String>, what: &str, got: &str, want: &str) {
        if got != want {
            bad.push(format!("{what}: {got:?}, expected {want:?}"));
        }
    }
    let apt = |phase: &str| g.lines.get(phase).map(|l| l.join("\n")).unwrap_or_default();
    expect(bad, "apt-get install exit", g.said("install"), "0");
    expect(bad, "systemctl is-enabled", g.said("enabled"), "enabled");
    // The same exact count through every phase: nothing lost, nothing doubled.
    let mut total = 0.0;
    let mut last_pid = String::new();
    for (phase, n) in PHASES {
        total += n;
        expect(
            bad,
            &format!("{phase}: vm-client"),
            g.said(&format!("client {phase}")),
            &format!("refused {n}"),
        );
        expect(
            bad,
            &format!("{phase}: /readyz"),
            g.said(&format!("ready {phase}")),
            "1",
        );
        let m = g.metrics.get(phase).map_or("", String::as_str);
        let got = value(m, FAILURES, &[("dst_port", "7001"), ("errno", "ECONNREFUSED")]);
        expect(
            bad,
            &format!("{phase}: refused connects counted"),
            &got.to_string(),
            &total.to_string(),
        );
        let pid = g.said(&format!("pid {phase}")).to_string();
        if phase != "install" && pid == last_pid {
            bad.push(format!("{phase}: the daemon's pid {pid} did not change"));
        }
        last_pid = pid;
    }
    expect(bad, "systemctl restart exit", g.said("restart"), "0");
    expect(bad, "restarts by systemd after SIGKILL", g.said("restarts"), "1");
    expect(bad, "upgrade exit", g.said("upgrade"), "0");
    expect(bad, "version after upgrade", g.said("version"), "0.1.0-2");
    let build_info = g
        .metrics
        .get("upgrade")
        // Labels in any order (the registry writes them sorted); a revision that is not empty.
        .map(|m| {
            m.lines().any(|l| {
                l.starts_with("refusal_agent_build_info{")
                    && l.contains("version=\"0.1.0\"")
                    && l.contains("revision=\"")
                    && !l.contains("revision=\"\"")
            })
        })
        .unwrap_or(false);
    if !build_info {
        bad.push("refusal_agent_build_info with version and revision missing after the upgrade".into());
    }
    // Who the daemon runs as, and with what (README: Run it under systemd; Security).
    expect(bad, "user", g.said("user"), "refusal-agent");
    for (field, want) in [
        ("CapEff", CAPS_KEPT),
        ("CapPrm", CAPS_KEPT),
        ("CapBnd", CAPS_UNIT),
        // Cleared with the drop, so a child would get nothing.
        ("CapAmb", "0000000000000000"),
        ("NoNewPrivs", "1"),
    ] {
        expect(bad, field, &g.status(field), want);
    }
    if g.status("Uid").split_whitespace().next().is_none_or(|u| u == "0") {
        bad.push(format!("Uid: {}: not a dynamic user", g.status("Uid")));
    }
    // Three starts before the journal is read (install, restart, after the SIGKILL), each
    // logging every hook that attached (the 7 not opt-in) and where it pinned.
    expect(
        bad,
        "journal: 'hook attached' and 'pinned' lines",
        g.said("journal"),
        "21 3",
    );
    expect(bad, "systemd-analyze verify exit", g.said("verify"), "0");
    let verify = apt("verify-log");
    if !verify.trim().is_empty() {
        bad.push(format!("systemd-analyze verify complained:\n{verify}"));
    }
    if g.security.is_none() {
        bad.push(format!("systemd-analyze security gave no score:\n{}", apt("security")));
    }
    // Removal: stopped, and nothing of the agent left in the kernel.
    expect(bad, "apt-get remove exit", g.said("remove"), "0");
    expect(
        bad,
        "after remove, systemctl is-active",
        g.said("active remove"),
        "inactive",
    );
    for phase in ["remove", "purge"] {
        expect(
            bad,
            &format!("BPF programs, maps, links after {phase}"),
            g.said(&format!("bpf {phase}")),
            g.said("bpf before"),
        );
        expect(
            bad,
            &format!("/sys/fs/bpf after {phase}"),
            g.said(&format!("pins {phase}")),
            g.said("pins before"),
        );
    }
    expect(
        bad,
        "/etc/refusal-agent after remove (conffile kept)",
        g.said("etc remove"),
        "refusal-agent.toml ",
    );
    expect(bad, "apt-get purge exit", g.said("purge"), "0");
    if !g.said("etc purge").contains("No such file") {
        bad.push(format!("/etc/refusal-agent after purge: {:?}", g.said("etc purge")));
    }
    if !bad.is_empty() {
        for phase in ["apt", "journal-log", "prog remove"] {
            if let Some(l) = g.lines.get(phase) {
                bad.push(format!("{phase}:\n{}", l.join("\n")));
            }
        }
    }
}

/// README quotes `systemd-analyze security`'s verdict on the unit: it must be this run's.
fn readme_score(g: &Guest, failures: &mut Vec<String>) -> Result<()> {
    let Some(score) = &g.security else {
        return Ok(());
    };
    // "Overall exposure level for refusal-agent.service: 2.1 OK 🙂" → "2.1 OK"
    let verdict: Vec<&str> = score
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .take(2)
        .collect();
    let quoted = format!(
        "`systemd-analyze security refusal-agent.service` rates it {}",
        verdict.join(" ")
    );
    let readme = std::fs::read_to_string(root().join("README.md"))?;
    if !readme.contains(&quoted) {
        failures.push(format!("README.md must say: {quoted}"));
    }
    Ok(())
}
