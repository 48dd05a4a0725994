//! Idempotent installation of what the build and the tests need, into the project's own
//! `.tools/` (outside `target/`, so `cargo clean` cannot break the linker's rpath).
use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::{root, run};

const BPF_LINKER_VERSION: &str = "0.13.0";
const CARGO_DEB_VERSION: &str = "3.8.0";
/// Debian packages the tests drive: real clients, namespaces, firewall rules.
const TEST_PACKAGES: &[(&str, &str)] = &[
    ("curl", "curl"),
    ("openssl", "openssl"),
    ("ip", "iproute2"),
    ("nft", "nftables"),
    ("bpftrace", "bpftrace"),
    ("bpftool", "bpftool"),
    ("prometheus", "prometheus"),
    ("promtool", "prometheus"),
    // Listeners that die in every way a process can, and a Node server that does not handle
    // an upstream's reset.
    ("python3", "python3"),
    ("node", "nodejs"),
    // Faults injected into a running daemon's syscalls: a map read refused, a listener broken.
    ("strace", "strace"),
    // Threaded NAPI on a veth (GRO on): ICMP errors delivered in a kernel thread.
    ("ethtool", "ethtool"),
    // The benchmarks: the client pinned to a CPU, and the profile of tracing code's share.
    ("taskset", "util-linux"),
    ("perf", "linux-perf"),
    // `test-kernels`: Debian's kernels under qemu, from a busybox initramfs.
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("busybox", "busybox-static"),
    ("cpio", "cpio"),
    // `package` and the systemd guest: lintian judges the .deb, mmdebstrap builds the guest's
    // root from Debian's packages.
    ("lintian", "lintian"),
    ("mmdebstrap", "mmdebstrap"),
];

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

pub fn toolchain() -> Result<()> {
    let sysroot = output(Command::new("rustc").args(["--print", "sysroot"]))?;
    let sysroot = Path::new(&sysroot);
    if !sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        eprintln!("xtask: installing rust-src");
        let toolchain = std::env::var("RUSTUP_TOOLCHAIN").unwrap_or_else(|_| "stable".into());
        run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", &toolchain]))?;
    }
    bpf_linker(sysroot)
}

/// bpf-linker linked against this toolchain's own libLLVM: a prefix whose `lib/` points at it.
fn bpf_linker(sysroot: &Path) -> Result<()> {
    let tools = root().join(".tools");
    let linker = tools.join("bin/bpf-linker");
    if Command::new(&linker)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Ok(());
    }
    let libllvm = std::fs::read_dir(sysroot.join("lib"))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so."))
        .context("no libLLVM.so.* in the toolchain's lib/: is this a rustup toolchain?")?;
    let major = libllvm
        .trim_start_matches("libLLVM.so.")
        .split('.')
        .next()
        .context("libLLVM version")?
        .to_string();
    let prefix = tools.join("llvm");
    std::fs::create_dir_all(prefix.join("lib"))?;
    for name in ["libLLVM.so", libllvm.as_str()] {
        let link = prefix.join("lib").join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(sysroot.join("lib").join(&libllvm), &link)?;
    }
    eprintln!("xtask: building bpf-linker {BPF_LINKER_VERSION} against {libllvm} (about a minute)");
    run(Command::new("cargo")
        .args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
            "--no-default-features",
        ])
        .args(["--features", &format!("llvm-{major}"), "--root"])
        .arg(&tools)
        .env("LLVM_PREFIX", &prefix))?;
    // The nested eBPF build must relink with the new linker.
    let _ = filetime_touch(&root().join("agent-ebpf/src/main.rs"));
    Ok(())
}

/// cargo-deb (`cargo xtask package`), under `.tools/bin` like bpf-linker.
pub fn cargo_deb() -> Result<std::path::PathBuf> {
    let tools = root().join(".tools");
    let bin = tools.join("bin/cargo-deb");
    let installed = Command::new(&bin)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(CARGO_DEB_VERSION));
    if !installed {
        eprintln!("xtask: installing cargo-deb {CARGO_DEB_VERSION}");
        run(Command::new("cargo")
            .args([
                "install",
                &format!("cargo-deb@{CARGO_DEB_VERSION}"),
                "--locked",
                "--root",
            ])
            .arg(&tools))?;
    }
    Ok(bin)
}

fn filetime_touch(path: &Path) -> std::io::Result<()> {
    let f = std::fs::OpenOptions::new().append(true).open(path)?;
    f.set_modified(std::time::SystemTime::now())
}

pub fn test_packages() -> Result<()> {
    let missing: Vec<&str> = TEST_PACKAGES
        .iter()
        .filter(|(bin, _)| testkit::which(bin).is_none())
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !testkit::is_root() {
        bail!("missing test packages {missing:?}: install them (apt-get install) or run as root");
    }
    let mut pkgs = missing.clone();
    pkgs.dedup();
    eprintln!("xtask: installing {pkgs:?}");
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&pkgs)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    Ok(())
}
