//! Loading the kernel object and attaching each hook through its own fallback chain. Every
//! refused mode is remembered with the reason, for the log, `check` and
//! `refusal_agent_probe_attached`.
use agent_common::{config, names};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::Array,
    programs::{BtfTracePoint, FEntry, KProbe, Program, ProgramError, TracePoint, links::FdLink},
};

use crate::{caps, config::AttachMode, offsets, offsets::Resolved, pins::Plan, tracefs};

/// The embedded kernel object, built by `build.rs`.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/refusal-agent-ebpf"));

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
    /// `(program, category, event)`: all must attach.
    Tracepoint(&'static [(&'static str, &'static str, &'static str)]),
    /// Provided by another hook's program (named here): works where that program attached.
    SameAs(&'static str),
}

pub struct Hook {
    pub name: &'static str,
    /// Without a required hook the daemon cannot count anything and refuses to start; the others
    /// degrade to `refusal_agent_probe_attached{hook} == 0` (and an alert).
    pub required: bool,
    /// Attached only when asked for (see [`opt_in`]): it costs more than the connects it observes.
    pub opt_in: bool,
    pub chain: &'static [(AttachMode, Attach)],
}

/// In attach order: a hook that rides on another comes after it.
pub static HOOKS: &[Hook] = &[
    Hook {
        name: "state",
        required: true,
        opt_in: false,
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
                Attach::Tracepoint(&[("sock_state_tp", "sock", "inet_sock_set_state")]),
            ),
        ],
    },
    Hook {
        name: "connect",
        required: true,
        opt_in: false,
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
            (AttachMode::TpBtf, Attach::SameAs("sock_state_btf")),
            (AttachMode::Tracepoint, Attach::SameAs("sock_state_tp")),
        ],
    },
    Hook {
        name: "connect_sync",
        required: false,
        opt_in: true,
        chain: &[(
            AttachMode::Tracepoint,
            Attach::Tracepoint(&[
                ("connect_enter", "syscalls", "sys_enter_connect"),
                ("connect_exit", "syscalls", "sys_exit_connect"),
            ]),
        )],
    },
    Hook {
        name: "error_report",
        required: false,
        opt_in: false,
        chain: &[
            (
                AttachMode::TpBtf,
                Attach::TpBtf {
                    program: "error_report_btf",
                    tracepoint: "inet_sk_error_report",
                },
            ),
            (
                AttachMode::Tracepoint,
                Attach::Tracepoint(&[("error_report_tp", "sock", "inet_sk_error_report")]),
            ),
        ],
    },
    Hook {
        name: "send_reset",
        required: false,
        opt_in: false,
        chain: &[
            (
                AttachMode::TpBtf,
                Attach::TpBtf {
                    program: "send_reset_btf",
                    tracepoint: "tcp_send_reset",
                },
            ),
            // Before 6.10 the tracepoint has no reason (and fires only with a socket).
            (
                AttachMode::TpBtf,
                Attach::TpBtf {
                    program: "send_reset_btf_pre610",
                    tracepoint: "tcp_send_reset",
                },
            ),
            (
                AttachMode::Tracepoint,
                Attach::Tracepoint(&[("send_reset_tp", "tcp", "tcp_send_reset")]),
            ),
            (
                AttachMode::Tracepoint,
                Attach::Tracepoint(&[("send_reset_tp_pre610", "tcp", "tcp_send_reset")]),
            ),
        ],
    },
    Hook {
        name: "inbound",
        required: false,
        opt_in: false,
        chain: &[
            // Only the 6.10+ `tcp_send_reset` fires without a socket; before, `kfree_skb` sees
            // the SYN dropped for NO_SOCKET.
            (AttachMode::TpBtf, Attach::SameAs("send_reset_btf")),
            (AttachMode::Tracepoint, Attach::SameAs("send_reset_tp")),
            (
                AttachMode::TpBtf,
                Attach::TpBtf {
                    program: "kfree_skb_btf",
                    tracepoint: "kfree_skb",
                },
            ),
            (
                AttachMode::Tracepoint,
                Attach::Tracepoint(&[("kfree_skb_tp", "skb", "kfree_skb")]),
            ),
        ],
    },
    Hook {
        name: "receive_reset",
        required: false,
        opt_in: false,
        chain: &[
            (
                AttachMode::TpBtf,
                Attach::TpBtf {
                    program: "receive_reset_btf",
                    tracepoint: "tcp_receive_reset",
                },
            ),
            (
                AttachMode::Tracepoint,
                Attach::Tracepoint(&[("receive_reset_tp", "tcp", "tcp_receive_reset")]),
            ),
        ],
    },
];

/// tp_btf programs that read an argument older kernels lack: (program, arguments it needs).
const TP_BTF_ARGS: &[(&str, usize)] = &[("send_reset_btf", 3), ("kfree_skb_btf", 3)];

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("missing capability {0}: run as root or grant it (see README, Security)")]
    Privilege(&'static str),
    #[error("kernel feature missing: {0}")]
    Kernel(String),
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
    /// `(pin name, link)`, taken out of their programs when loading with pins.
    pub links: Vec<(String, FdLink)>,
}

/// What attaching needs to know about the running kernel.
pub struct Kernel {
    pub btf: Btf,
    pub ours: crate::btf::Btf,
    pub resolved: Resolved,
}

/// Checks privileges, mounts tracefs when missing, reads BTF and resolves offsets.
pub fn prepare() -> Result<Kernel, LoadError> {
    if let Some(cap) = caps::missing_for_bpf(caps::effective()) {
        return Err(LoadError::Privilege(cap));
    }
    if let Err(e) = tracefs::ensure_mounted() {
        tracing::warn!(error = %e, "tracefs is not mounted and could not be mounted: classic tracepoints unavailable");
    }
    let no_btf = |e: &dyn std::fmt::Display| LoadError::Kernel(format!("kernel BTF (CONFIG_DEBUG_INFO_BTF): {e}"));
    let ours = crate::btf::Btf::from_sys().map_err(|e| no_btf(&e))?;
    let resolved = offsets::resolve(&ours).map_err(|e| LoadError::Kernel(e.to_string()))?;
    let btf = Btf::from_sys_fs().map_err(|e| no_btf(&e))?;
    Ok(Kernel { btf, ours, resolved })
}

/// Which copy of the programs to load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// Counts in maps; never emits individual events.
    Daemon,
    /// Also streams every event to the ring buffer, for `trace`.
    Trace,
    /// Every program returns at once: the benchmarks' floor.
    Empty,
}

pub fn load(kernel: &Kernel, flavor: Flavor, pins: Option<&Plan>) -> Result<Ebpf, LoadError> {
    let (emit, empty) = (u8::from(flavor == Flavor::Trace), u8::from(flavor == Flavor::Empty));
    let generation = pins.map_or(0, |p| p.generation);
    let mut loader = EbpfLoader::new();
    loader
        .btf(Some(&kernel.btf))
        .override_global(names::OFFSETS, &kernel.resolved.offsets, true)
        .override_global(names::EMIT_EVENTS, &emit, true)
        .override_global(names::EMPTY_PROGRAMS, &empty, true)
        .override_global(names::GENERATION, &generation, true);
    for (name, path) in pins.iter().flat_map(|p| &p.maps) {
        loader.map_pin_path(name, path.as_path());
    }
    loader.load(OBJECT).map_err(LoadError::Object)
}

/// The opt-in hooks to attach: `connect_sync`'s syscall tracepoints put every syscall on the
/// host on the tracing slow path, so it costs even processes that never connect.
pub fn opt_in(connect_sync: bool) -> &'static [&'static str] {
    if connect_sync { &["connect_sync"] } else { &[] }
}

/// Whether `hook` is attached, given the opt-in hooks asked for.
pub fn wanted(hook: &Hook, opt_in: &[&str]) -> bool {
    !hook.opt_in || opt_in.contains(&hook.name)
}

/// Loads the object and attaches every hook (of the opt-in ones, those named in `opt_in`),
/// forcing `mode` on the hooks that offer it. With
/// `pins`, the maps are the pinned ones, the links come back to be pinned, and the programs stay
/// idle until [`activate`].
pub fn load_and_attach(
    kernel: &Kernel,
    mode: AttachMode,
    opt_in: &[&str],
    flavor: Flavor,
    pins: Option<&Plan>,
) -> Result<Loaded, LoadError> {
    let mut ebpf = load(kernel, flavor, pins)?;
    let mut links = pins.map(|_| Vec::new());
    let mut hooks: Vec<HookReport> = Vec::new();
    for hook in HOOKS.iter().filter(|h| wanted(h, opt_in)) {
        let forced = mode != AttachMode::Auto && hook.chain.iter().any(|(m, _)| *m == mode);
        let mut report = HookReport {
            hook: hook.name,
            mode: None,
            refused: Vec::new(),
        };
        for (m, attach) in hook.chain.iter().filter(|(m, _)| !forced || *m == mode) {
            match attach_one(&mut ebpf, kernel, attach, *m, links.as_mut()) {
                Ok(()) => {
                    report.mode = Some(*m);
                    break;
                }
                Err(why) => {
                    // A refused mode must not leave a loaded, unattached program behind.
                    unload(&mut ebpf, attach);
                    report.refused.push((*m, why))
                }
            }
        }
        // Unforced, optional hooks degrade: the daemon still counts what it can. A forced mode
        // is a promise about every hook that offers it.
        if report.mode.is_none() && (hook.required || forced) {
            let (hook, refused) = (hook.name, report.refused);
            return Err(match forced {
                true => LoadError::Forced {
                    hook,
                    mode,
                    why: summary(&refused),
                },
                false => LoadError::NoMode { hook, refused },
            });
        }
        hooks.push(report);
    }
    let from_connect = hooks
        .iter()
        .any(|h| h.hook == "connect" && matches!(h.mode, Some(AttachMode::Fentry | AttachMode::Kprobe)));
    let mut cfg: Array<_, u32> =
        Array::try_from(ebpf.map_mut(names::CONFIG).expect("CONFIG map in object")).map_err(LoadError::Config)?;
    cfg.set(config::OWNER_FROM_CONNECT, u32::from(from_connect), 0)
        .map_err(LoadError::Config)?;
    if pins.is_none() {
        // Unpinned copies are generation 0 and count at once.
        cfg.set(config::GENERATION, 0, 0).map_err(LoadError::Config)?;
    }
    Ok(Loaded {
        ebpf,
        hooks,
        links: links.unwrap_or_default(),
    })
}

/// Makes `generation` the copy that counts: one map write, after which a predecessor's programs
/// (pinned, sharing the maps) go idle.
pub fn activate(ebpf: &mut Ebpf, generation: u32) -> Result<(), LoadError> {
    let mut cfg: Array<_, u32> =
        Array::try_from(ebpf.map_mut(names::CONFIG).expect("CONFIG map in object")).map_err(LoadError::Config)?;
    cfg.set(config::GENERATION, generation, 0).map_err(LoadError::Config)
}

/// One hook's modes, each with whether it attached or why not.
pub type Probe = (&'static str, Vec<(AttachMode, Result<(), String>)>);

/// Tries every mode of every hook, for `check`. No two modes share a program, so one object
/// serves every attempt (a load per attempt made `check` take 35 s on an emulated CPU).
pub fn probe_all(kernel: &Kernel) -> Result<Vec<Probe>, LoadError> {
    let mut ebpf = load(kernel, Flavor::Daemon, None)?;
    let mut out: Vec<Probe> = Vec::new();
    for hook in HOOKS {
        let mut modes = Vec::new();
        for (m, attach) in hook.chain {
            let result = match attach {
                // Shares an earlier hook's program: works where that one does.
                Attach::SameAs(program) => HOOKS
                    .iter()
                    .zip(&out)
                    .flat_map(|(h, (_, results))| h.chain.iter().zip(results))
                    .find(|((_, a), _)| programs(a).contains(program))
                    .map(|(_, (_, r))| r.clone().map_err(|why| format!("{program} refused: {why}")))
                    .unwrap_or_else(|| Err(format!("{program} not probed"))),
                _ => attach_one(&mut ebpf, kernel, attach, *m, None),
            };
            modes.push((*m, result));
        }
        out.push((hook.name, modes));
    }
    Ok(out)
}

/// The programs a mode loads itself.
pub fn programs(attach: &Attach) -> Vec<&'static str> {
    match attach {
        Attach::Fentry(targets) => targets.iter().map(|(p, _)| *p).collect(),
        Attach::Kprobe { program, .. } | Attach::TpBtf { program, .. } => vec![*program],
        Attach::Tracepoint(events) => events.iter().map(|(p, _, _)| *p).collect(),
        Attach::SameAs(_) => Vec::new(),
    }
}

fn unload(ebpf: &mut Ebpf, attach: &Attach) {
    for name in programs(attach) {
        let _ = match ebpf.program_mut(name) {
            Some(Program::FEntry(p)) => p.unload(),
            Some(Program::KProbe(p)) => p.unload(),
            Some(Program::BtfTracePoint(p)) => p.unload(),
            Some(Program::TracePoint(p)) => p.unload(),
            _ => Ok(()),
        };
    }
}

/// Where attached links go: `None` leaves them owned by their programs (they detach when the
/// `Ebpf` drops); `Some` takes each out as an [`FdLink`] named for its pin.
type Links<'a> = Option<&'a mut Vec<(String, FdLink)>>;

fn attach_one(
    ebpf: &mut Ebpf,
    kernel: &Kernel,
    attach: &Attach,
    mode: AttachMode,
    mut links: Links<'_>,
) -> Result<(), String> {
    let explain = |e: ProgramError| explain(mode, &error_chain(&e));
    let btf = &kernel.btf;
    // Perf-event links can be pinned only where the kernel makes them bpf links (5.15+); older
    // kernels keep them with the program, so those hooks pause while the daemon restarts.
    let perf_pinnable = aya::features().bpf_perf_link();
    match attach {
        Attach::Fentry(targets) => {
            for (program, function) in *targets {
                if !kernel.ours.has_func(function) {
                    return Err(format!("{function} is not in the kernel's BTF"));
                }
                let prog: &mut FEntry = program_mut(ebpf, program)?;
                prog.load(function, btf).map_err(explain)?;
                let id = prog.attach().map_err(explain)?;
                keep(&mut links, program, || prog.take_link(id))?;
            }
        }
        Attach::Kprobe { program, functions } => {
            let prog: &mut KProbe = program_mut(ebpf, program)?;
            prog.load().map_err(explain)?;
            let mut ids = Vec::new();
            for f in *functions {
                match prog.attach(f, 0) {
                    Ok(id) => ids.push((f, id)),
                    Err(e) => {
                        for (_, id) in ids {
                            let _ = prog.detach(id);
                        }
                        return Err(explain(e));
                    }
                }
            }
            for (f, id) in ids.into_iter().filter(|_| perf_pinnable) {
                // bpffs refuses dots in names.
                keep(&mut links, &format!("{program}-{f}"), || prog.take_link(id))?;
            }
        }
        Attach::TpBtf { program, tracepoint } => {
            if let Some((_, want)) = TP_BTF_ARGS.iter().find(|(p, _)| p == program) {
                let have = kernel
                    .ours
                    .tracepoint_arg_count(tracepoint)
                    .map_err(|e| e.to_string())?;
                if have < *want {
                    return Err(format!(
                        "{tracepoint} has {have} arguments on this kernel, the program needs {want}"
                    ));
                }
            }
            let prog: &mut BtfTracePoint = program_mut(ebpf, program)?;
            prog.load(tracepoint, btf).map_err(explain)?;
            let id = prog.attach().map_err(explain)?;
            keep(&mut links, program, || prog.take_link(id))?;
        }
        Attach::Tracepoint(events) => {
            if let Some(why) = events
                .iter()
                .find_map(|(program, _, _)| kernel.resolved.tracepoints_unavailable.get(program))
            {
                return Err(why.clone());
            }
            for (program, category, name) in *events {
                let prog: &mut TracePoint = program_mut(ebpf, program)?;
                prog.load().map_err(explain)?;
                let id = prog.attach(category, name).map_err(explain)?;
                if perf_pinnable {
                    keep(&mut links, program, || prog.take_link(id))?;
                }
            }
        }
        // Refused modes unload their programs: a loaded program is an attached one.
        Attach::SameAs(program) => {
            if ebpf.program(program).is_none_or(|p| p.fd().is_err()) {
                return Err(format!("comes with {program}, which is not attached"));
            }
        }
    }
    Ok(())
}

/// Moves a just-attached link into `links`, when links are being collected for pinning; else it
/// stays with its program (a link taken and dropped would detach).
fn keep<L>(links: &mut Links<'_>, name: &str, take: impl FnOnce() -> Result<L, ProgramError>) -> Result<(), String>
where
    FdLink: TryFrom<L>,
    <FdLink as TryFrom<L>>::Error: std::fmt::Display,
{
    let Some(links) = links.as_deref_mut() else {
        return Ok(());
    };
    let link = take().map_err(|e| format!("taking the link of {name}: {e}"))?;
    let link = FdLink::try_from(link).map_err(|e| format!("link of {name} cannot be pinned: {e}"))?;
    links.push((name.to_string(), link));
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
        AttachMode::Fentry if error.contains("Operation not permitted") || error.contains("EPERM") => {
            Some("refused with EPERM: kernel lockdown (integrity mode) forbids fentry/fexit")
        }
        AttachMode::Kprobe if error.contains("kprobe/type") || error.contains("No such file") => {
            Some("this kernel has no kprobes (CONFIG_KPROBES unset)")
        }
        AttachMode::TpBtf | AttachMode::Fentry if error.contains("BTF") || error.contains("btf") => {
            Some("needs kernel BTF (/sys/kernel/btf/vmlinux)")
        }
        _ => None,
    };
    let error = verifier_summary(error);
    match hint {
        Some(h) => format!("{h} ({error})"),
        None => error,
    }
}

/// A verifier log is hundreds of lines; the reason is the line before its statistics.
fn verifier_summary(error: &str) -> String {
    let Some((head, log)) = error.split_once("Verifier output:") else {
        return error.to_string();
    };
    let reason = log
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("verification time"))
        .filter(|l| !l.is_empty() && *l != ")")
        .last()
        .unwrap_or("");
    let head = head.trim_end_matches([' ', '.']);
    if reason.is_empty() {
        format!("{head}, empty verifier log")
    } else {
        format!("{head}. verifier: {reason}")
    }
}

/// What a mode of a hook attaches to, for `check`.
pub fn target(attach: &Attach) -> String {
    match attach {
        Attach::Fentry(t) => t.iter().map(|(_, f)| *f).collect::<Vec<_>>().join(","),
        Attach::Kprobe { functions, .. } => functions.join(","),
        Attach::TpBtf { tracepoint, .. } => tracepoint.to_string(),
        Attach::Tracepoint(events) => events
            .iter()
            .map(|(_, c, n)| format!("{c}:{n}"))
            .collect::<Vec<_>>()
            .join(","),
        Attach::SameAs(other) => format!("(with {other})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explains_lockdown_and_missing_kprobes() {
        assert!(
            explain(AttachMode::Fentry, "load failed: Operation not permitted (os error 1)")
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
        let log = "load failed: Permission denied (os error 13). Verifier output: 0: R1=ctx()\n76: (0f) r3 += r2\nR3 pointer arithmetic prohibited\nverification time 2190 usec\nstack depth 8\n)";
        assert_eq!(
            explain(AttachMode::TpBtf, log),
            "load failed: Permission denied (os error 13). verifier: R3 pointer arithmetic prohibited"
        );
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

    #[test]
    fn every_shared_program_comes_from_an_earlier_hook_in_the_same_mode() {
        for (i, hook) in HOOKS.iter().enumerate() {
            for (mode, attach) in hook.chain {
                let Attach::SameAs(program) = attach else { continue };
                let provided = HOOKS[..i]
                    .iter()
                    .flat_map(|h| h.chain)
                    .any(|(m, a)| m == mode && programs(a).contains(program));
                assert!(provided, "{}: {program} in {mode} mode", hook.name);
            }
        }
    }
}
