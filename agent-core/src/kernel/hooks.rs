//! The hooks as data: each signal the agent needs, and the attach modes that can give it, in
//! the order they are tried (ARCHITECTURE.md, "Hooks"). The loader walks this table; `check`,
//! `refusal_agent_probe_attached` and the VM matrix read it.
use crate::config::AttachMode;

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
    /// What is not counted where no mode attaches, for `check` and the log.
    pub signal: &'static str,
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
        signal: "TCP connect failures, successes and listeners",
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
        signal: "the processes of connects",
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
        signal: "failures inside connect(2)",
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
        signal: "connected UDP sockets refused by ICMP",
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
            // Before 5.15 there is no such tracepoint: the callback it reports from. Ahead of
            // the classic tracepoint, whose record has no socket to find the owner by.
            (
                AttachMode::Fentry,
                Attach::Fentry(&[("error_report_fentry", "sock_def_error_report")]),
            ),
            (
                AttachMode::Kprobe,
                Attach::Kprobe {
                    program: "error_report_kprobe",
                    functions: &["sock_def_error_report"],
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
        signal: "RSTs sent",
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
        signal: "inbound connections refused",
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
            // Before 5.17 `kfree_skb` has no drop reason: the functions that send the RST,
            // called without a socket.
            (
                AttachMode::Fentry,
                Attach::Fentry(&[
                    ("inbound4_fentry", "tcp_v4_send_reset"),
                    ("inbound6_fentry", "tcp_v6_send_reset"),
                ]),
            ),
            (
                AttachMode::Kprobe,
                Attach::Kprobe {
                    program: "inbound_kprobe",
                    functions: &["tcp_v4_send_reset", "tcp_v6_send_reset"],
                },
            ),
            (
                AttachMode::Tracepoint,
                Attach::Tracepoint(&[("kfree_skb_tp", "skb", "kfree_skb")]),
            ),
            // Before 5.17, where fentry and kprobes are refused: `kfree_skb` called from
            // `tcp_v{4,6}_rcv` for a bare SYN.
            (
                AttachMode::TpBtf,
                Attach::TpBtf {
                    program: "kfree_skb_btf_pre517",
                    tracepoint: "kfree_skb",
                },
            ),
            (
                AttachMode::Tracepoint,
                Attach::Tracepoint(&[("kfree_skb_tp_pre517", "skb", "kfree_skb")]),
            ),
        ],
    },
    Hook {
        name: "receive_reset",
        signal: "RSTs received",
        required: false,
        opt_in: false,
        // `tcp_reset()` writes the error a RST means, then closes the socket: the state
        // program tells RSTs from the close, and nothing runs on `tcp_receive_reset`.
        chain: &[
            (AttachMode::TpBtf, Attach::SameAs("sock_state_btf")),
            (AttachMode::Tracepoint, Attach::SameAs("sock_state_tp")),
        ],
    },
    Hook {
        name: "oom",
        signal: "OOM kills",
        required: false,
        opt_in: false,
        chain: &[
            (
                AttachMode::TpBtf,
                Attach::TpBtf {
                    program: "mark_victim_btf",
                    tracepoint: "mark_victim",
                },
            ),
            // Before 6.8 the tracepoint gives the victim thread's pid only.
            (
                AttachMode::TpBtf,
                Attach::TpBtf {
                    program: "mark_victim_btf_pre68",
                    tracepoint: "mark_victim",
                },
            ),
            (
                AttachMode::Tracepoint,
                Attach::Tracepoint(&[("mark_victim_tp", "oom", "mark_victim")]),
            ),
        ],
    },
];

/// Attached only by the benchmarks' floor (empty programs): hooks the agent needed before it
/// did without them, so that the floor stays the cost of the hooks it used to need.
pub static FLOOR_ONLY: &[Hook] = &[Hook {
    name: "receive_reset_floor",
    signal: "nothing (the benchmarks' floor)",
    required: false,
    opt_in: false,
    chain: &[(
        AttachMode::TpBtf,
        Attach::TpBtf {
            program: "floor_receive_reset_btf",
            tracepoint: "tcp_receive_reset",
        },
    )],
}];

/// tp_btf programs written for one form of a tracepoint whose arguments changed across kernels:
/// (program, arguments it reads, the most the form it reads has). A tp_btf program gets its
/// arguments as raw words, so one built for another form loads and reads the wrong thing.
const TP_BTF_ARGS: &[(&str, usize, Option<usize>)] = &[
    ("send_reset_btf", 3, None),
    ("send_reset_btf_pre610", 2, Some(2)),
    ("kfree_skb_btf", 3, None),
    ("kfree_skb_btf_pre517", 2, Some(2)),
    ("mark_victim_btf", 2, None),
    ("mark_victim_btf_pre68", 1, Some(1)),
];

/// Whether `program` fits `tracepoint` as this kernel declares it, with `have` arguments.
pub fn tp_btf_fits(program: &str, tracepoint: &str, have: usize) -> Result<(), String> {
    let Some((_, want, most)) = TP_BTF_ARGS.iter().find(|(p, _, _)| *p == program) else {
        return Ok(());
    };
    if have < *want {
        return Err(format!(
            "{tracepoint} has {have} arguments on this kernel, the program needs {want}"
        ));
    }
    match most {
        Some(most) if have > *most => Err(format!(
            "{tracepoint} has {have} arguments on this kernel, the program reads its older {most}-argument form"
        )),
        _ => Ok(()),
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookReport {
    pub hook: &'static str,
    pub mode: Option<AttachMode>,
    /// Modes tried before `mode` (or all of them), with why each was refused.
    pub refused: Vec<(AttachMode, String)>,
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

/// The programs a mode loads itself.
pub fn programs(attach: &Attach) -> Vec<&'static str> {
    match attach {
        Attach::Fentry(targets) => targets.iter().map(|(p, _)| *p).collect(),
        Attach::Kprobe { program, .. } | Attach::TpBtf { program, .. } => vec![*program],
        Attach::Tracepoint(events) => events.iter().map(|(p, _, _)| *p).collect(),
        Attach::SameAs(_) => Vec::new(),
    }
}

/// BPF helpers the programs call that are younger than the oldest kernel they load on, with the
/// release that added each; an older kernel's verifier knows them by number only.
const YOUNG_HELPERS: &[(u32, &str, &str)] = &[(158, "bpf_get_current_task_btf", "5.11")];

/// A verifier refusing a helper this kernel does not have names it `unknown#<id>`.
fn missing_helper(error: &str) -> Option<String> {
    let (_, rest) = error.split_once("invalid func unknown#")?;
    let id: u32 = rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()?;
    Some(match YOUNG_HELPERS.iter().find(|(n, _, _)| *n == id) {
        Some((_, name, since)) => format!("this kernel lacks BPF helper {name} (#{id}, added in Linux {since})"),
        None => format!("this kernel lacks BPF helper #{id}"),
    })
}

/// Adds what a person needs to know to an attach error: the usual causes on hardened kernels.
pub fn explain(mode: AttachMode, error: &str) -> String {
    // The verifier's log names programs and types ("…_btf"): only the text before it says
    // whether BTF itself is missing.
    let head = error.split("Verifier output:").next().unwrap_or(error);
    let helper = missing_helper(error);
    let hint = helper.as_deref().or(match mode {
        AttachMode::Fentry if error.contains("Operation not permitted") || error.contains("EPERM") => {
            Some("refused with EPERM: kernel lockdown (integrity mode) forbids fentry/fexit")
        }
        AttachMode::Kprobe if error.contains("kprobe/type") || error.contains("No such file") => {
            Some("this kernel has no kprobes (CONFIG_KPROBES unset)")
        }
        AttachMode::TpBtf | AttachMode::Fentry if head.contains("BTF") || head.contains("btf") => {
            Some("needs kernel BTF (/sys/kernel/btf/vmlinux)")
        }
        _ => None,
    });
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
    fn names_a_missing_helper_not_btf() {
        let log = "the BPF_PROG_LOAD syscall returned Invalid argument (os error 22). Verifier output: func#0 @0\n0: (85) call sock_state_btf#12\ninvalid func unknown#158\nverification time 20 usec\n)";
        assert_eq!(
            explain(AttachMode::TpBtf, log),
            "this kernel lacks BPF helper bpf_get_current_task_btf (#158, added in Linux 5.11) (the BPF_PROG_LOAD syscall returned Invalid argument (os error 22). verifier: invalid func unknown#158)"
        );
        assert!(
            explain(AttachMode::Tracepoint, &log.replace("158", "999"))
                .starts_with("this kernel lacks BPF helper #999 (")
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

    #[test]
    fn tp_btf_programs_fit_only_their_form_of_the_tracepoint() {
        assert_eq!(tp_btf_fits("send_reset_btf", "tcp_send_reset", 3), Ok(()));
        assert_eq!(
            tp_btf_fits("send_reset_btf", "tcp_send_reset", 2),
            Err("tcp_send_reset has 2 arguments on this kernel, the program needs 3".into())
        );
        assert_eq!(tp_btf_fits("kfree_skb_btf", "kfree_skb", 4), Ok(()));
        assert_eq!(
            tp_btf_fits("mark_victim_btf_pre68", "mark_victim", 2),
            Err("mark_victim has 2 arguments on this kernel, the program reads its older 1-argument form".into())
        );
        assert_eq!(tp_btf_fits("sock_state_btf", "inet_sock_set_state", 3), Ok(()));
        assert_eq!(tp_btf_fits("kfree_skb_btf_pre517", "kfree_skb", 2), Ok(()));
        assert_eq!(
            tp_btf_fits("kfree_skb_btf_pre517", "kfree_skb", 3),
            Err("kfree_skb has 3 arguments on this kernel, the program reads its older 2-argument form".into())
        );
    }
}
