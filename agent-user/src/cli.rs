//! Command line. Flags win over `REFUSAL_…` environment variables (merged by clap), which win
//! over the config file, which wins over the defaults in `agent_core::config`.
use std::{net::SocketAddr, path::PathBuf};

use agent_core::config::{AttachMode, Config, ConfigError, HumanDuration, KernelLog, LogFormat};
use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "refusal-agent",
    version = concat!(env!("CARGO_PKG_VERSION"), " (revision ", env!("REFUSAL_AGENT_REVISION"), ")"),
    about = "Why was that connection refused, and will it fix itself?"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the probes and serve Prometheus metrics and the targets API.
    Run(Box<RunArgs>),
    /// Show which hooks this kernel offers and which attach mode each gets.
    Check {
        /// Force one attach mode for every hook that offers it.
        #[arg(long, value_enum, env = "REFUSAL_ATTACH")]
        attach: Option<AttachMode>,
        /// Show the opt-in connect_sync hook as `run --connect-sync` would attach it.
        #[arg(long, env = "REFUSAL_CONNECT_SYNC")]
        connect_sync: bool,
    },
    /// Live stream of individual events (text, or one JSON object per line with --json).
    Trace {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Force one attach mode for every hook that offers it.
        #[arg(long, value_enum, env = "REFUSAL_ATTACH")]
        attach: Option<AttachMode>,
        /// Also trace connect(2) failures inside the syscall (the opt-in connect_sync hook).
        #[arg(long, env = "REFUSAL_CONNECT_SYNC")]
        connect_sync: bool,
        /// Where the host's / is seen, for the runtimes' files that name workloads.
        #[arg(long, env = "REFUSAL_HOST_ROOT", default_value = "/")]
        host_root: PathBuf,
    },
    /// Show the running daemon's targets as a table (from /api/targets).
    Status {
        /// Address of the running daemon.
        #[arg(long, env = "REFUSAL_LISTEN", default_value = "127.0.0.1:9977")]
        listen: SocketAddr,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// HTTP listen address [default: 0.0.0.0:9977].
    #[arg(long, env = "REFUSAL_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// TOML config file; keys as in the README.
    #[arg(long, env = "REFUSAL_CONFIG")]
    pub config: Option<PathBuf>,
    /// A success within this long of the first refusal is a cold start [default: 180s].
    #[arg(long, env = "REFUSAL_COLD_START_MAX")]
    pub cold_start_max: Option<HumanDuration>,
    /// Refusals for this long with no success make a target persistent [default: 180s].
    #[arg(long, env = "REFUSAL_PERSISTENT_AFTER")]
    pub persistent_after: Option<HumanDuration>,
    /// Refused connects needed before a target can be persistent [default: 3].
    #[arg(long, env = "REFUSAL_MIN_ATTEMPTS")]
    pub min_attempts: Option<u64>,
    /// Episodes within --flap-window that make a target flapping [default: 3].
    #[arg(long, env = "REFUSAL_FLAP_EPISODES")]
    pub flap_episodes: Option<u32>,
    /// [default: 15m].
    #[arg(long, env = "REFUSAL_FLAP_WINDOW")]
    pub flap_window: Option<HumanDuration>,
    /// Forget targets idle this long [default: 1h].
    #[arg(long, env = "REFUSAL_FORGET_AFTER")]
    pub forget_after: Option<HumanDuration>,
    /// A client silent this long while its target began accepting gave up [default: 30s].
    #[arg(long, env = "REFUSAL_GAVE_UP_AFTER")]
    pub gave_up_after: Option<HumanDuration>,
    /// Cold starts within this window make the retry advice [default: 24h].
    #[arg(long, env = "REFUSAL_ADVICE_WINDOW")]
    pub advice_window: Option<HumanDuration>,
    /// Cold starts needed before a target or port gets retry advice [default: 5].
    #[arg(long, env = "REFUSAL_ADVICE_MIN_COLD_STARTS")]
    pub advice_min_cold_starts: Option<usize>,
    /// Series per metric before new label sets fold into "other" [default: 10000].
    #[arg(long, env = "REFUSAL_MAX_SERIES")]
    pub max_series: Option<usize>,
    /// [default: text].
    #[arg(long, value_enum, env = "REFUSAL_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// The eBPF programs' own log (failed probe reads, unknown families), under the target
    /// refusal_agent::ebpf; fixed at load [default: off, unless REFUSAL_LOG enables that target].
    #[arg(long, value_enum, env = "REFUSAL_KERNEL_LOG")]
    pub kernel_log: Option<KernelLog>,
    /// Force one attach mode for every hook that offers it [default: auto].
    #[arg(long, value_enum, env = "REFUSAL_ATTACH")]
    pub attach: Option<AttachMode>,
    /// Also count connect(2) failures inside the syscall (no route); costs on every syscall.
    #[arg(long, env = "REFUSAL_CONNECT_SYNC")]
    pub connect_sync: bool,
    /// Benchmarks only: attach programs that return at once (the cost floor).
    #[arg(long, hide = true)]
    pub bench_empty_programs: bool,
    /// Tests only: the programs read each socket's family where its protocol is, so every TCP
    /// failure meets an unknown family (and goes uncounted): tests/kernel_log.rs.
    #[arg(long, hide = true)]
    pub test_unknown_family: bool,
    /// Web config file (TLS, basic auth) in the Prometheus exporter-toolkit format.
    #[arg(long = "web.config.file", env = "REFUSAL_WEB_CONFIG_FILE")]
    pub web_config_file: Option<PathBuf>,
    /// bpffs directory for maps and links kept across restarts [default: /sys/fs/bpf/refusal-agent].
    #[arg(long, env = "REFUSAL_PIN_DIR")]
    pub pin_dir: Option<PathBuf>,
    /// Keep the programs counting after a clean stop, for a planned restart.
    #[arg(long, env = "REFUSAL_KEEP_PINS")]
    pub keep_pins: bool,
    /// Switch to this user (name or uid) after attaching [default: stay root, minimal capabilities].
    #[arg(long, env = "REFUSAL_USER")]
    pub user: Option<String>,
    /// Where the host's / is seen, for the runtimes' files that name workloads [default: /].
    #[arg(long, env = "REFUSAL_HOST_ROOT")]
    pub host_root: Option<PathBuf>,
}

impl RunArgs {
    /// The effective configuration: file (if any) under flags and environment.
    pub fn config(&self) -> Result<Config, ConfigError> {
        let mut c = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        macro_rules! set {
            ($($field:ident $(. $inner:tt)?),*) => {
                $(if let Some(v) = &self.$field { c.$field = v.clone()$(.$inner)?; })*
            };
        }
        set!(
            listen,
            cold_start_max.0,
            persistent_after.0,
            min_attempts,
            flap_episodes,
            flap_window.0,
            forget_after.0,
            gave_up_after.0,
            advice_window.0,
            advice_min_cold_starts,
            max_series,
            log_format,
            kernel_log,
            attach,
            pin_dir,
            host_root
        );
        if self.keep_pins {
            c.keep_pins = true;
        }
        if self.connect_sync {
            c.connect_sync = true;
        }
        if let Some(u) = &self.user {
            c.user = Some(u.clone());
        }
        if let Some(p) = &self.web_config_file {
            c.web_config_file = Some(p.clone());
        }
        c.validate()?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn run_args(args: &[&str]) -> Result<RunArgs, clap::Error> {
        let cli = Cli::try_parse_from(["refusal-agent", "run"].iter().chain(args))?;
        match cli.command {
            Command::Run(r) => Ok(*r),
            _ => unreachable!(),
        }
    }

    #[test]
    fn flags_override_file() {
        let dir = std::env::temp_dir().join(format!("refusal-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(&file, "min_attempts = 7\ncold_start_max = \"90s\"\n").unwrap();
        let c = run_args(&["--config", file.to_str().unwrap(), "--min-attempts", "4"])
            .unwrap()
            .config()
            .unwrap();
        assert_eq!(c.min_attempts, 4);
        assert_eq!(c.cold_start_max, Duration::from_secs(90));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bad_flags_are_usage_errors_naming_the_flag() {
        let e = run_args(&["--cold-start-max", "soon"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("--cold-start-max"), "{e}");
        let e = run_args(&["--attach", "uprobe"]).unwrap_err();
        assert!(e.to_string().contains("--attach"), "{e}");
        // The contract's spelling, not clap's kebab-case default.
        assert_eq!(
            run_args(&["--attach", "tp_btf"]).unwrap().attach,
            Some(AttachMode::TpBtf)
        );
    }

    #[test]
    fn host_root_from_flag_env_or_file() {
        let dir = std::env::temp_dir().join(format!("refusal-cli-root-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(&file, "host_root = \"/from-file\"\n").unwrap();
        let config = file.to_str().unwrap();
        let c = run_args(&["--config", config]).unwrap().config().unwrap();
        assert_eq!(c.host_root, PathBuf::from("/from-file"));
        let c = run_args(&["--config", config, "--host-root", "/host"])
            .unwrap()
            .config()
            .unwrap();
        assert_eq!(c.host_root, PathBuf::from("/host"));
        let e = run_args(&["--host-root", "host"]).unwrap().config().unwrap_err();
        assert!(e.to_string().contains("host_root"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn kernel_log_from_flag_or_file() {
        assert_eq!(run_args(&[]).unwrap().config().unwrap().kernel_log, KernelLog::Off);
        let c = run_args(&["--kernel-log", "debug"]).unwrap().config().unwrap();
        assert_eq!(c.kernel_log, KernelLog::Debug);
        let e = run_args(&["--kernel-log", "loud"]).unwrap_err();
        assert!(e.to_string().contains("--kernel-log"), "{e}");
    }

    #[test]
    fn zero_min_attempts_is_rejected_by_key() {
        let e = run_args(&["--min-attempts", "0"]).unwrap().config().unwrap_err();
        assert!(e.to_string().contains("min_attempts"), "{e}");
    }
}
