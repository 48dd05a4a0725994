//! Loading the kernel object and attaching each hook through its own fallback chain. Every
//! refused mode is remembered with the reason, for the log, `check` and
//! `refusal_agent_probe_attached`.
use agent_common::{Offsets, config, names};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::Array,
    programs::{BtfTracePoint, FEntry, KProbe, ProgramError, TracePoint},
};

use crate::config::AttachMode;

/// The embedded kernel object, built by `build.rs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/refusal-agent-ebpf"));

/// How one mode of a hook attaches.
#[derive(Debug)]
pub enum Attach {
    Fentry(&'static [(&'static str, &'static str)]),
    Kprobe {
        program: &'static str,
        functions: &'static [&'static str],
    },
    TpBtf {
        program: &'static str,
        tracepoint: &'static str,
    },
    Tracepoint {
        program: &'static str,
        category: &'static str,
        name: &'static str,
    },
    /// Provided by another hook's program when that hook attached in the same mode.
    SameAs(&'static str),
}

pub struct Hook {
    pub name: &'static str,
    pub chain: &'static [(AttachMode, Attach)],
}

/// In attach order: `connect` may ride on `state`, so `state` goes first.
pub static HOOKS: &[Hook] = &[
    Hook {
        name: "state",
        chain: &[
            (
                AttachMode::TpBtf,
                Attach::TpBtf {
                    program: "sock_state_btf",
                    tracepoint: "inet_sock_set_state",
                },
            ),
            (
                AttachMode::Tracepoint,
                Attach::Tracepoint {
                    program: "sock_state_tp",
                    category: "sock",
                    name: "inet_sock_set_state",
                },
            ),
        ],
    },
    Hook {
        name: "connect",
        chain: &[
            (
                AttachMode::Fentry,
                Attach::Fentry(&[
                    ("connect4_fentry", "tcp_v4_connect"),
                    ("connect6_fentry", "tcp_v6_connect"),
                ]),
            ),
            (
                AttachMode::Kprobe,
                Attach::Kprobe {
                    program: "connect_kprobe",
                    functions: &["tcp_v4_connect", "tcp_v6_connect"],
                },
            ),
            (AttachMode::TpBtf, Attach::SameAs("state")),
            (AttachMode::Tracepoint, Attach::SameAs("state")),
        ],
    },
];

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("loading the kernel object: {0}")]
    Object(#[source] aya::EbpfError),
    #[error("hook {hook}: forced attach mode {mode} failed: {why}")]
    Forced {
        hook: &'static str,
        mode: AttachMode,
        why: String,
    },
    #[error("hook {hook}: no attach mode worked ({})", summary(.refused))]
    NoMode {
        hook: &'static str,
        refused: Vec<(AttachMode, String)>,
    },
    #[error("writing the CONFIG map: {0}")]
    Config(#[source] aya::maps::MapError),
}

fn summary(refused: &[(AttachMode, String)]) -> String {
    refused
        .iter()
        .map(|(m, why)| format!("{m}: {why}"))
        .collect::<Vec<_>>()
        .join("; ")
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookReport {
    pub hook: &'static str,
    pub mode: Option<AttachMode>,
    /// Modes tried before `mode` (or all of them), with why each was refused.
    pub refused: Vec<(AttachMode, String)>,
}

pub struct Loaded {
    pub ebpf: Ebpf,
    pub hooks: Vec<HookReport>,
}

pub fn load(btf: &Btf, offsets: &Offsets) -> Result<Ebpf, LoadError> {
    EbpfLoader::new()
        .btf(Some(btf))
        .override_global(names::OFFSETS, offsets, true)
        .load(OBJECT)
        .map_err(LoadError::Object)
}

/// Loads the object and attaches every hook, forcing `mode` on the hooks that offer it.
pub fn load_and_attach(
    btf: &Btf,
    offsets: &Offsets,
    mode: AttachMode,
) -> Result<Loaded, LoadError> {
    let mut ebpf = load(btf, offsets)?;
    let mut hooks: Vec<HookReport> = Vec::new();
    for hook in HOOKS {
        let forced = mode != AttachMode::Auto && hook.chain.iter().any(|(m, _)| *m == mode);
        let mut report = HookReport {
            hook: hook.name,
            mode: None,
            refused: Vec::new(),
        };
        for (m, attach) in hook.chain.iter().filter(|(m, _)| !forced || *m == mode) {
            match attach_one(&mut ebpf, btf, attach, *m, &hooks) {
                Ok(()) => {
                    report.mode = Some(*m);
                    break;
                }
                Err(why) if forced => {
                    return Err(LoadError::Forced {
                        hook: hook.name,
                        mode: *m,
                        why,
                    });
                }
                Err(why) => report.refused.push((*m, why)),
            }
        }
        if report.mode.is_none() {
            return Err(LoadError::NoMode {
                hook: hook.name,
                refused: report.refused,
            });
        }
        hooks.push(report);
    }
    let from_connect = hooks.iter().any(|h| {
        h.hook == "connect" && matches!(h.mode, Some(AttachMode::Fentry | AttachMode::Kprobe))
    });
    let mut cfg: Array<_, u32> =
        Array::try_from(ebpf.map_mut(names::CONFIG).expect("CONFIG map in object"))
            .map_err(LoadError::Config)?;
    cfg.set(config::OWNER_FROM_CONNECT, u32::from(from_connect), 0)
        .map_err(LoadError::Config)?;
    Ok(Loaded { ebpf, hooks })
}

/// One hook's modes, each with whether it attached or why not.
pub type Probe = (&'static str, Vec<(AttachMode, Result<(), String>)>);

/// Tries every mode of every hook independently (a fresh object per attempt), for `check`.
pub fn probe_all(btf: &Btf, offsets: &Offsets) -> Result<Vec<Probe>, LoadError> {
    let mut out = Vec::new();
    for hook in HOOKS {
        let mut modes = Vec::new();
        for (m, attach) in hook.chain {
            let mut ebpf = load(btf, offsets)?;
            let result = match attach {
                // Shares the other hook's program: works where that one does in this mode.
                Attach::SameAs(other) => out
                    .iter()
                    .find(|(h, _): &&Probe| h == other)
                    .and_then(|(_, ms)| ms.iter().find(|(om, _)| om == m))
                    .map(|(_, r)| {
                        r.clone()
                            .map_err(|why| format!("{other} hook in {m} mode refused: {why}"))
                    })
                    .unwrap_or_else(|| Err(format!("{other} hook not probed"))),
                _ => attach_one(&mut ebpf, btf, attach, *m, &[]),
            };
            modes.push((*m, result));
        }
        out.push((hook.name, modes));
    }
    Ok(out)
}

fn attach_one(
    ebpf: &mut Ebpf,
    btf: &Btf,
    attach: &Attach,
    mode: AttachMode,
    done: &[HookReport],
) -> Result<(), String> {
    let explain = |e: ProgramError| explain(mode, &error_chain(&e));
    match attach {
        Attach::Fentry(targets) => {
            for (program, function) in *targets {
                let prog: &mut FEntry = program_mut(ebpf, program)?;
                prog.load(function, btf).map_err(explain)?;
                prog.attach().map_err(explain)?;
            }
        }
        Attach::Kprobe { program, functions } => {
            let prog: &mut KProbe = program_mut(ebpf, program)?;
            prog.load().map_err(explain)?;
            let mut links = Vec::new();
            for f in *functions {
                match prog.attach(f, 0) {
                    Ok(link) => links.push(link),
                    Err(e) => {
                        for link in links {
                            let _ = prog.detach(link);
                        }
                        return Err(explain(e));
                    }
                }
            }
        }
        Attach::TpBtf {
            program,
            tracepoint,
        } => {
            let prog: &mut BtfTracePoint = program_mut(ebpf, program)?;
            prog.load(tracepoint, btf).map_err(explain)?;
            prog.attach().map_err(explain)?;
        }
        Attach::Tracepoint {
            program,
            category,
            name,
        } => {
            if let Err(e) = crate::tracefs::ensure_mounted() {
                return Err(format!(
                    "tracefs is not mounted and mounting it failed: {e}"
                ));
            }
            let prog: &mut TracePoint = program_mut(ebpf, program)?;
            prog.load().map_err(explain)?;
            prog.attach(category, name).map_err(explain)?;
        }
        Attach::SameAs(other) => {
            let theirs = done.iter().find(|h| h.hook == *other).and_then(|h| h.mode);
            if theirs != Some(mode) {
                return Err(format!(
                    "comes with the {other} hook, which attached as {}",
                    theirs.map_or("nothing", AttachMode::name)
                ));
            }
        }
    }
    Ok(())
}

fn program_mut<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, String>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let prog = ebpf
        .program_mut(name)
        .ok_or_else(|| format!("program {name} missing from the object"))?;
    prog.try_into().map_err(|e: ProgramError| e.to_string())
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// Adds what a person needs to know to an attach error: the usual causes on hardened kernels.
pub fn explain(mode: AttachMode, error: &str) -> String {
    let hint = match mode {
        AttachMode::Fentry
            if error.contains("Operation not permitted") || error.contains("EPERM") =>
        {
            Some("refused with EPERM: kernel lockdown (integrity mode) forbids fentry/fexit")
        }
        AttachMode::Kprobe if error.contains("kprobe/type") || error.contains("No such file") => {
            Some("this kernel has no kprobes (CONFIG_KPROBES unset)")
        }
        AttachMode::TpBtf | AttachMode::Fentry
            if error.contains("BTF") || error.contains("btf") =>
        {
            Some("needs kernel BTF (/sys/kernel/btf/vmlinux)")
        }
        _ => None,
    };
    match hint {
        Some(h) => format!("{h} ({error})"),
        None => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explains_lockdown_and_missing_kprobes() {
        assert!(
            explain(
                AttachMode::Fentry,
                "load failed: Operation not permitted (os error 1)"
            )
            .starts_with("refused with EPERM")
        );
        assert!(
            explain(
                AttachMode::Kprobe,
                "`/sys/bus/event_source/devices/kprobe/type`: No such file or directory"
            )
            .starts_with("this kernel has no kprobes")
        );
        assert_eq!(explain(AttachMode::Tracepoint, "boom"), "boom");
    }

    #[test]
    fn every_hook_ends_its_chain_with_a_tracepoint_and_state_comes_first() {
        assert_eq!(HOOKS[0].name, "state");
        for hook in HOOKS {
            assert_eq!(
                hook.chain.last().map(|(m, _)| *m),
                Some(AttachMode::Tracepoint),
                "{}",
                hook.name
            );
        }
    }
}
