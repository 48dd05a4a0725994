//! Loading the kernel object and attaching each hook through its own fallback chain (the table
//! is `agent_core::kernel::hooks`). Every refused mode is remembered with the reason, for the
//! log, `check` and `refusal_agent_probe_attached`.
use agent_common::{config, names};
use agent_core::{
    config::{AttachMode, KernelLog},
    kernel::{
        btf,
        hooks::{Attach, FLOOR_ONLY, HOOKS, Hook, HookReport, explain, programs, tp_btf_fits, wanted},
    },
};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::Array,
    programs::{BtfTracePoint, FEntry, KProbe, Program, ProgramError, TracePoint, links::FdLink},
};

use crate::kernel::{caps, kernel_log, offsets, offsets::Resolved, pins::Plan, tracefs};

/// The embedded kernel object, built by `build.rs`.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/refusal-agent-ebpf"));

/// The same programs built without their log calls (`agent-ebpf`'s `no-log` feature), which a
/// copy whose log is off loads: its programs are then, instruction for instruction, those of a
/// build without logging. A disabled call still costs the verifier the level's load and
/// compare on each path through it (`tests/kernel_log.rs` prints both counts).
pub static OBJECT_NO_LOG: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/refusal-agent-ebpf-no-log"));

/// The object a copy with its log at `log` loads.
pub fn object(log: KernelLog) -> &'static [u8] {
    match log {
        KernelLog::Off => OBJECT_NO_LOG,
        _ => OBJECT,
    }
}

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

pub struct Loaded {
    pub ebpf: Ebpf,
    pub hooks: Vec<HookReport>,
    /// `(pin name, link)`, taken out of their programs when loading with pins.
    pub links: Vec<(String, FdLink)>,
}

/// What attaching needs to know about the running kernel.
pub struct Kernel {
    pub btf: Btf,
    pub ours: btf::Btf,
    pub resolved: Resolved,
}

/// Checks privileges, mounts tracefs when missing, reads BTF and resolves offsets.
pub fn prepare() -> Result<Kernel, LoadError> {
    if let Some(cap) = caps::missing_for_bpf(&caps::effective()) {
        return Err(LoadError::Privilege(cap));
    }
    if let Err(e) = tracefs::ensure_mounted() {
        tracing::warn!(error = %e, "tracefs is not mounted and could not be mounted: classic tracepoints unavailable");
    }
    let no_btf = |e: &dyn std::fmt::Display| LoadError::Kernel(format!("kernel BTF (CONFIG_DEBUG_INFO_BTF): {e}"));
    let ours = btf::Btf::from_sys().map_err(|e| no_btf(&e))?;
    // The memory cgroup took over the charge in 5.11, with this helper.
    if !offsets::has_helper(&ours, "ktime_get_coarse_ns") {
        caps::lift_memlock().map_err(LoadError::Privilege)?;
    }
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

/// `log`: the level of the programs' own log (`kernel_log`), fixed for this copy.
pub fn load(kernel: &Kernel, flavor: Flavor, log: KernelLog, pins: Option<&Plan>) -> Result<Ebpf, LoadError> {
    load_object(object(log), kernel, flavor, log, pins)
}

fn load_object(
    object: &[u8],
    kernel: &Kernel,
    flavor: Flavor,
    log: KernelLog,
    pins: Option<&Plan>,
) -> Result<Ebpf, LoadError> {
    let (emit, empty) = (u8::from(flavor == Flavor::Trace), u8::from(flavor == Flavor::Empty));
    let log = kernel_log::global(log);
    let generation = pins.map_or(0, |p| p.generation);
    let mut loader = EbpfLoader::new();
    loader
        .btf(Some(&kernel.btf))
        .override_global(names::OFFSETS, &kernel.resolved.offsets, true)
        .override_global(names::TCP_RCV, &kernel.resolved.tcp_rcv, true)
        .override_global(names::EMIT_EVENTS, &emit, true)
        .override_global(names::EMPTY_PROGRAMS, &empty, true)
        .override_global(names::GENERATION, &generation, true)
        // Absent from an object without log calls (the `no-log` build).
        .override_global(kernel_log::LEVEL, &log, false);
    for (name, path) in pins.iter().flat_map(|p| &p.maps) {
        loader.map_pin_path(name, path.as_path());
    }
    loader.load(object).map_err(LoadError::Object)
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
    log: KernelLog,
    pins: Option<&Plan>,
) -> Result<Loaded, LoadError> {
    let mut ebpf = load(kernel, flavor, log, pins)?;
    let mut links = pins.map(|_| Vec::new());
    let mut hooks: Vec<HookReport> = Vec::new();
    let mut inbound_by_send_reset = false;
    // The floor is the hooks the agent used to need, not only those it needs now.
    let floor: &[Hook] = if flavor == Flavor::Empty { FLOOR_ONLY } else { &[] };
    for hook in HOOKS.iter().filter(|h| wanted(h, opt_in)).chain(floor) {
        let forced = forced(kernel, hook, mode);
        let mut report = HookReport {
            hook: hook.name,
            mode: None,
            refused: Vec::new(),
        };
        for (m, attach) in hook.chain.iter().filter(|(m, _)| !forced || *m == mode) {
            match attach_one(&mut ebpf, kernel, attach, *m, links.as_mut()) {
                Ok(()) => {
                    report.mode = Some(*m);
                    inbound_by_send_reset |= hook.name == "inbound" && matches!(attach, Attach::SameAs(_));
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
    cfg.set(config::INBOUND_BY_SEND_RESET, u32::from(inbound_by_send_reset), 0)
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

/// Whether `--attach mode` binds `hook`: it offers the mode, in a form this kernel has. A hook
/// whose forms of the mode are all absent here (a tracepoint younger than the kernel, or of
/// another form) keeps its chain.
pub fn forced(kernel: &Kernel, hook: &Hook, mode: AttachMode) -> bool {
    mode != AttachMode::Auto
        && hook
            .chain
            .iter()
            .any(|(m, a)| *m == mode && absent(kernel, a).is_none())
}

/// Why this kernel has no such attach point (rather than refusing one it has), if so.
fn absent(kernel: &Kernel, attach: &Attach) -> Option<String> {
    match attach {
        Attach::Fentry(targets) => targets
            .iter()
            .find(|(_, f)| !kernel.ours.has_func(f))
            .map(|(_, f)| format!("{f} is not in the kernel's BTF")),
        Attach::TpBtf { program, tracepoint } => match kernel.ours.tracepoint_arg_count(tracepoint) {
            Ok(have) => tp_btf_fits(program, tracepoint, have)
                .err()
                .or_else(|| kernel.resolved.tracepoints_unavailable.get(program).cloned()),
            Err(e) => Some(format!("this kernel has no {tracepoint} tracepoint ({e})")),
        },
        Attach::Tracepoint(events) => events
            .iter()
            .find_map(|(program, _, _)| kernel.resolved.tracepoints_unavailable.get(program).cloned()),
        Attach::Kprobe { .. } => None,
        Attach::SameAs(program) => HOOKS
            .iter()
            .flat_map(|h| h.chain)
            .find(|(_, a)| programs(a).contains(program))
            .and_then(|(_, a)| absent(kernel, a))
            .map(|why| format!("{program}: {why}")),
    }
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
    probe_object(object(KernelLog::Off), kernel, KernelLog::Off).map(|(probes, _)| probes)
}

/// How many instructions the verifier went through for each program of `object` this kernel
/// loads in some mode (5.16+; `None` before), loaded as the daemon loads it with the programs'
/// log at `log`: `tests/kernel_log.rs` compares them with the daemon's own.
pub fn verified_instructions(
    object: &[u8],
    kernel: &Kernel,
    log: KernelLog,
) -> Result<Vec<(String, Option<u32>)>, LoadError> {
    let (_, ebpf) = probe_object(object, kernel, log)?;
    Ok(ebpf
        .programs()
        .filter_map(|(name, p)| {
            p.info()
                .ok()
                .map(|i| (name.to_string(), i.verified_instruction_count()))
        })
        .collect())
}

fn probe_object(object: &[u8], kernel: &Kernel, log: KernelLog) -> Result<(Vec<Probe>, Ebpf), LoadError> {
    let mut ebpf = load_object(object, kernel, Flavor::Daemon, log, None)?;
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
    Ok((out, ebpf))
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
    if let Some(why) = absent(kernel, attach).filter(|_| !matches!(attach, Attach::SameAs(_))) {
        return Err(why);
    }
    match attach {
        Attach::Fentry(targets) => {
            for (program, function) in *targets {
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
            let prog: &mut BtfTracePoint = program_mut(ebpf, program)?;
            prog.load(tracepoint, btf).map_err(explain)?;
            let id = prog.attach().map_err(explain)?;
            keep(&mut links, program, || prog.take_link(id))?;
        }
        Attach::Tracepoint(events) => {
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

/// An error with its sources, each once: what a log line or a 500 answer should say.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
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
