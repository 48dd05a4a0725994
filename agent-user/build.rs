use std::path::PathBuf;

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    revision();
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "agent-ebpf")
        .ok_or_else(|| anyhow!("agent-ebpf package not found"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("agent-ebpf manifest has no parent"))?;
    // The eBPF object must be built by the toolchain running this build: bpf-linker is linked
    // against its libLLVM (aya-build's default would be nightly).
    let toolchain = std::env::var("RUSTUP_TOOLCHAIN").unwrap_or_else(|_| "stable".into());
    println!("cargo:rerun-if-env-changed=RUSTUP_TOOLCHAIN");
    let build = |features: &[&str]| {
        let package = Package {
            name: ebpf.name.as_str(),
            root_dir: root_dir.as_str(),
            features,
            ..Default::default()
        };
        aya_build::build_ebpf([package], Toolchain::Custom(&toolchain))
    };
    // The same programs with every aya-log call compiled out, which the daemon loads while its
    // log is off (kernel/loader.rs): first, since both land under the bin's name.
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").context("OUT_DIR")?);
    build(&["no-log"])?;
    std::fs::rename(
        out_dir.join("refusal-agent-ebpf"),
        out_dir.join("refusal-agent-ebpf-no-log"),
    )
    .context("keeping the no-log object")?;
    build(&[])
}

/// `REFUSAL_AGENT_REVISION` for `--version` and `refusal_agent_build_info{revision}`: the git
/// commit being built, as node_exporter reports it; outside a git checkout (a source tarball)
/// whatever the environment variable of that name says, else `unknown`.
fn revision() {
    println!("cargo:rerun-if-env-changed=REFUSAL_AGENT_REVISION");
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let revision = match (
        std::env::var("REFUSAL_AGENT_REVISION").ok(),
        git(&["rev-parse", "HEAD"]),
    ) {
        (Some(r), _) if !r.is_empty() => r,
        (_, Some(r)) => {
            // A new commit or checkout moves HEAD or the branch it names (in a worktree, refs
            // live in the common directory: --git-path finds both).
            let mut watched = vec!["HEAD".to_string(), "packed-refs".to_string()];
            watched.extend(git(&["symbolic-ref", "-q", "HEAD"]));
            // Only files that exist: cargo reruns a build script on every build for a missing one.
            let paths = watched.iter().filter_map(|p| git(&["rev-parse", "--git-path", p]));
            for path in paths.filter(|p| std::path::Path::new(p).exists()) {
                println!("cargo:rerun-if-changed={path}");
            }
            r
        }
        _ => "unknown".into(),
    };
    println!("cargo:rustc-env=REFUSAL_AGENT_REVISION={revision}");
}
