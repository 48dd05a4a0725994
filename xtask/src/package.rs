//! `cargo xtask package`: the Debian package, built by cargo-deb from
//! `[package.metadata.deb]` in `agent-user/Cargo.toml`, then checked: exactly the files below
//! (`dpkg-deb -c`), the conffile, the maintainer scripts doing what dh_installsystemd writes plus
//! the pin directory's removal, and lintian with no tag left but those
//! `deploy/debian/lintian-overrides` explains.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{root, run, setup, target_dir};

/// Every path in the package and its mode (directories are left out).
const CONTENTS: &[(&str, &str)] = &[
    ("./etc/refusal-agent/refusal-agent.toml", "-rw-r--r--"),
    ("./usr/bin/refusal-agent", "-rwxr-xr-x"),
    ("./usr/lib/systemd/system/refusal-agent.service", "-rw-r--r--"),
    ("./usr/lib/sysusers.d/refusal-agent.conf", "-rw-r--r--"),
    ("./usr/share/bash-completion/completions/refusal-agent", "-rw-r--r--"),
    ("./usr/share/doc/refusal-agent/README.md", "-rw-r--r--"),
    ("./usr/share/doc/refusal-agent/changelog.Debian.gz", "-rw-r--r--"),
    ("./usr/share/doc/refusal-agent/copyright", "-rw-r--r--"),
    ("./usr/share/fish/vendor_completions.d/refusal-agent.fish", "-rw-r--r--"),
    ("./usr/share/lintian/overrides/refusal-agent", "-rw-r--r--"),
    ("./usr/share/man/man1/refusal-agent-check.1.gz", "-rw-r--r--"),
    ("./usr/share/man/man1/refusal-agent-run.1.gz", "-rw-r--r--"),
    ("./usr/share/man/man1/refusal-agent-status.1.gz", "-rw-r--r--"),
    ("./usr/share/man/man1/refusal-agent-trace.1.gz", "-rw-r--r--"),
    ("./usr/share/man/man1/refusal-agent.1.gz", "-rw-r--r--"),
    (
        "./usr/share/refusal-agent/dashboards/provisioning/dashboards.yaml",
        "-rw-r--r--",
    ),
    (
        "./usr/share/refusal-agent/dashboards/provisioning/datasource.yaml",
        "-rw-r--r--",
    ),
    (
        "./usr/share/refusal-agent/dashboards/refusal-overview.json",
        "-rw-r--r--",
    ),
    ("./usr/share/refusal-agent/dashboards/refusal-target.json", "-rw-r--r--"),
    ("./usr/share/refusal-agent/prometheus-scrape.yml", "-rw-r--r--"),
    ("./usr/share/refusal-agent/rules/refusal-alerts.yml", "-rw-r--r--"),
    ("./usr/share/refusal-agent/rules/refusal-recording.yml", "-rw-r--r--"),
    ("./usr/share/refusal-agent/runbooks/refusal-agent.md", "-rw-r--r--"),
    ("./usr/share/zsh/vendor-completions/_refusal-agent", "-rw-r--r--"),
];

/// What each maintainer script must contain: dh_installsystemd's lines, and the pins' removal.
const SCRIPTS: &[(&str, &[&str])] = &[
    (
        "postinst",
        &[
            "systemd-sysusers ${DPKG_ROOT:+--root=\"$DPKG_ROOT\"} refusal-agent.conf",
            "deb-systemd-helper enable refusal-agent.service",
            "_dh_action=restart",
            "deb-systemd-invoke $_dh_action refusal-agent.service",
        ],
    ),
    (
        "prerm",
        &[
            "deb-systemd-invoke stop refusal-agent.service",
            "rm -rf /sys/fs/bpf/refusal-agent",
        ],
    ),
    (
        "postrm",
        &[
            "deb-systemd-helper purge refusal-agent.service",
            "rm -rf /sys/fs/bpf/refusal-agent",
        ],
    ),
];

/// Builds the release binary, its man pages and completions, and the `.deb` (Debian revision
/// `revision`, default the metadata's), checks it and returns its path.
pub fn build(revision: Option<&str>) -> Result<PathBuf> {
    let cargo_deb = setup::cargo_deb()?;
    run(crate::cargo().args(["build", "--release", "-p", "agent-user", "--bin", "refusal-agent"]))?;
    // cargo-deb maps `target/release/` in the asset list onto the real target directory.
    let docs = target_dir().join("release/docs");
    let _ = std::fs::remove_dir_all(&docs);
    run(crate::cargo()
        .args(["run", "-q", "-p", "agent-user", "--example", "docs", "--"])
        .arg(&docs))?;
    // Debian policy: man pages gzipped, reproducibly (no name or time in the header).
    run(Command::new("sh").arg("-c").arg("gzip -9n \"$0\"/man/*.1").arg(&docs))?;
    // cargo-deb removes the package's other .debs from target/debian: copy one before building
    // another.
    let out = target_dir().join("debian");
    let mut deb = Command::new(&cargo_deb);
    if let Some(r) = revision {
        deb.args(["--deb-revision", r]);
    }
    deb.current_dir(root())
        .args(["deb", "-p", "agent-user", "--no-build", "-o"])
        .arg(&out);
    let built = deb.output().context("starting cargo-deb")?;
    if !built.status.success() {
        bail!("cargo-deb failed: {}", String::from_utf8_lossy(&built.stderr));
    }
    let path = PathBuf::from(String::from_utf8_lossy(&built.stdout).trim());
    check(&path)?;
    eprintln!("xtask: {} checked", path.display());
    Ok(path)
}

fn stdout(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn check(deb: &Path) -> Result<()> {
    let mut bad = Vec::new();
    let listing = stdout(Command::new("dpkg-deb").arg("-c").arg(deb))?;
    // `-rw-r--r-- 0/0  1234 2026-12-02 00:00 ./usr/bin/refusal-agent`
    let mut files: Vec<(String, String)> = listing
        .lines()
        .filter(|l| !l.starts_with('d'))
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            Some((cols.get(5)?.to_string(), cols.first()?.to_string()))
        })
        .collect();
    files.sort();
    let want: Vec<(String, String)> = CONTENTS.iter().map(|(p, m)| (p.to_string(), m.to_string())).collect();
    if files != want {
        bad.push(format!(
            "dpkg-deb -c:\n{listing}\nexpected exactly (path, mode):\n{want:#?}"
        ));
    }
    if listing.lines().any(|l| l.split_whitespace().nth(1) != Some("0/0")) {
        bad.push(format!("files not owned by root (0/0):\n{listing}"));
    }
    let control = |name: &str| stdout(Command::new("dpkg-deb").arg("-I").arg(deb).arg(name));
    if control("conffiles")?.trim() != "/etc/refusal-agent/refusal-agent.toml" {
        bad.push("conffiles must be exactly /etc/refusal-agent/refusal-agent.toml".into());
    }
    for (script, lines) in SCRIPTS {
        let text = control(script).unwrap_or_default();
        for line in *lines {
            if !text.contains(line) {
                bad.push(format!("{script} lacks `{line}`:\n{text}"));
            }
        }
    }
    lintian(deb, &mut bad)?;
    if !bad.is_empty() {
        bail!("{}: {}", deb.display(), bad.join("\n\n"));
    }
    Ok(())
}

/// Lintian's errors and warnings fail; overridden tags (with their reasons in
/// `deploy/debian/lintian-overrides`) and informational ones do not.
fn lintian(deb: &Path, bad: &mut Vec<String>) -> Result<()> {
    let out = Command::new("lintian")
        .args(["--allow-root", "--no-tag-display-limit"])
        .arg(deb)
        .output()
        .context("starting lintian (cargo xtask setup --test-deps installs it)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let tags: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("E: ") || l.starts_with("W: "))
        .collect();
    if !tags.is_empty() {
        bad.push(format!("lintian:\n{}", tags.join("\n")));
    } else if !out.status.success() {
        bad.push(format!("lintian failed: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(())
}
