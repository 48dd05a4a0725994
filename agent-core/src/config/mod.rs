//! Daemon configuration: defaults < TOML file < environment (`REFUSAL_…`) < flags. The
//! environment and flags are merged by clap (agent-user's `cli.rs`); this module owns the defaults, the
//! file format and the final validation. Pure: no I/O except reading the file.
use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use serde::{Deserialize, Deserializer, de};

pub mod web;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("`{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

/// Every key of the config file, its default and its meaning.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// HTTP listen address for /metrics, /healthz, /readyz, /api/targets. Default `0.0.0.0:9977`.
    pub listen: SocketAddr,
    /// A success within this long of an episode's first refusal is a cold start. Default `180s`.
    #[serde(deserialize_with = "duration")]
    pub cold_start_max: Duration,
    /// Refusals for at least this long (and `min_attempts`) with no success: persistent. Default `180s`.
    #[serde(deserialize_with = "duration")]
    pub persistent_after: Duration,
    /// Refused connects needed before a target can be persistent. Default `3`.
    pub min_attempts: u64,
    /// Episodes within `flap_window` that make a target flapping. Default `3`.
    pub flap_episodes: u32,
    /// Default `15m`.
    #[serde(deserialize_with = "duration")]
    pub flap_window: Duration,
    /// A target with no refusal, success or open episode for this long is forgotten (memory
    /// stays bounded). Default `1h`.
    #[serde(deserialize_with = "duration")]
    pub forget_after: Duration,
    /// A client whose episode is open, silent this long (or twice its longest wait between
    /// retries, if longer) while its target began accepting within `cold_start_max` of its last
    /// refusal, gave up: its retry budget was shorter than the boot. Default `30s`.
    #[serde(deserialize_with = "duration")]
    pub gave_up_after: Duration,
    /// Cold starts older than this no longer count toward retry advice. Default `24h`.
    #[serde(deserialize_with = "duration")]
    pub advice_window: Duration,
    /// Cold starts needed within `advice_window` before a target or port gets retry advice.
    /// Default `5`.
    pub advice_min_cold_starts: usize,
    /// Series per metric before new label sets fold into `other`. Default `10000`.
    pub max_series: usize,
    /// `text` or `json`. Default `text`.
    pub log_format: LogFormat,
    /// The eBPF programs' own log (a probe read that failed, a socket of an unknown family):
    /// `off`, `error`, `warn`, `info`, `debug`, `trace`. Fixed when the programs load; records
    /// reach the log under the target `refusal_agent::ebpf`, which `REFUSAL_LOG` can also turn
    /// on. Default `off`: the verifier then drops every call.
    pub kernel_log: KernelLog,
    /// Force one attach mode for every hook that offers it, or `auto`. Default `auto`.
    pub attach: AttachMode,
    /// Also count connect(2) failures that happen inside the syscall, before any TCP state (no
    /// route: `ENETUNREACH`, `EADDRNOTAVAIL`, `EACCES`/`EPERM`). Default `false`: its two
    /// syscall tracepoints put every syscall of every process on the host on the kernel's
    /// tracing slow path (BENCHMARKS.md measures the cost).
    pub connect_sync: bool,
    /// Prometheus exporter-toolkit web config (TLS, basic auth) for the HTTP endpoints. Default:
    /// none (plain HTTP, no auth).
    pub web_config_file: Option<std::path::PathBuf>,
    /// bpffs directory for the maps and links that keep counting while the daemon restarts.
    /// Default `/sys/fs/bpf/refusal-agent`.
    pub pin_dir: PathBuf,
    /// Leave the programs attached and counting at a clean stop, for a planned restart. Default
    /// `false`: SIGTERM detaches everything and removes `pin_dir`.
    pub keep_pins: bool,
    /// After attaching, switch to this user (name or numeric uid). Default: stay root, with
    /// only the capabilities still needed.
    pub user: Option<String>,
    /// Where the host's filesystem is seen: the container runtimes' files that name workloads
    /// (`var/log/pods`, `run/containerd`, `var/lib/docker`, …) are read below it. Default `/`;
    /// `/host` for an agent in a container that mounts them there.
    pub host_root: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        // The verdict thresholds' defaults live with the rules they tune.
        let t = Thresholds::default();
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 9977)),
            cold_start_max: t.cold_start_max,
            persistent_after: t.persistent_after,
            min_attempts: t.min_attempts,
            flap_episodes: t.flap_episodes,
            flap_window: t.flap_window,
            forget_after: t.forget_after,
            gave_up_after: t.gave_up_after,
            advice_window: t.advice_window,
            advice_min_cold_starts: t.advice_min_cold_starts,
            max_series: 10_000,
            log_format: LogFormat::Text,
            kernel_log: KernelLog::Off,
            attach: AttachMode::Auto,
            connect_sync: false,
            web_config_file: None,
            pin_dir: PathBuf::from("/sys/fs/bpf/refusal-agent"),
            keep_pins: false,
            user: None,
            host_root: PathBuf::from("/"),
        }
    }
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.display().to_string(),
            message,
        })
    }

    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())
    }

    pub fn thresholds(&self) -> Thresholds {
        Thresholds {
            cold_start_max: self.cold_start_max,
            persistent_after: self.persistent_after,
            min_attempts: self.min_attempts,
            flap_episodes: self.flap_episodes,
            flap_window: self.flap_window,
            forget_after: self.forget_after,
            gave_up_after: self.gave_up_after,
            advice_window: self.advice_window,
            advice_min_cold_starts: self.advice_min_cold_starts,
        }
    }

    /// Rejects values that parse but make no sense, naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = |key, d: Duration| {
            if d.is_zero() {
                Err(ConfigError::Invalid {
                    key,
                    message: "must be longer than 0s (e.g. 90s, 3m)".into(),
                })
            } else {
                Ok(())
            }
        };
        positive("cold_start_max", self.cold_start_max)?;
        positive("persistent_after", self.persistent_after)?;
        positive("flap_window", self.flap_window)?;
        positive("forget_after", self.forget_after)?;
        positive("gave_up_after", self.gave_up_after)?;
        positive("advice_window", self.advice_window)?;
        if self.advice_min_cold_starts == 0 {
            return Err(ConfigError::Invalid {
                key: "advice_min_cold_starts",
                message: "must be at least 1".into(),
            });
        }
        if self.min_attempts == 0 {
            return Err(ConfigError::Invalid {
                key: "min_attempts",
                message: "must be at least 1".into(),
            });
        }
        if self.flap_episodes < 2 {
            return Err(ConfigError::Invalid {
                key: "flap_episodes",
                message: "must be at least 2".into(),
            });
        }
        if self.max_series == 0 {
            return Err(ConfigError::Invalid {
                key: "max_series",
                message: "must be at least 1".into(),
            });
        }
        if !self.pin_dir.is_absolute() || self.pin_dir.parent().is_none() {
            return Err(ConfigError::Invalid {
                key: "pin_dir",
                message: "must be an absolute directory path below a bpffs mount, e.g. /sys/fs/bpf/refusal-agent"
                    .into(),
            });
        }
        if !self.host_root.is_absolute() {
            return Err(ConfigError::Invalid {
                key: "host_root",
                message: "must be an absolute directory path where the host's / is seen, e.g. / or /host".into(),
            });
        }
        if self.user.as_deref().is_some_and(str::is_empty) {
            return Err(ConfigError::Invalid {
                key: "user",
                message: "must be a user name or a numeric uid".into(),
            });
        }
        Ok(())
    }
}

/// The verdict rules' knobs; each is a flag and config key (README, "Verdicts").
#[derive(Clone, Debug, PartialEq)]
pub struct Thresholds {
    pub cold_start_max: Duration,
    pub persistent_after: Duration,
    pub min_attempts: u64,
    pub flap_episodes: u32,
    pub flap_window: Duration,
    /// Idle targets (no refusal, no success, no open episode younger than this) are dropped.
    pub forget_after: Duration,
    /// Silence after which a client whose target began accepting gave up.
    pub gave_up_after: Duration,
    /// The window of cold starts retry advice is made from, and how many it needs.
    pub advice_window: Duration,
    pub advice_min_cold_starts: usize,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            cold_start_max: Duration::from_secs(180),
            persistent_after: Duration::from_secs(180),
            min_attempts: 3,
            flap_episodes: 3,
            flap_window: Duration::from_secs(15 * 60),
            forget_after: Duration::from_secs(3600),
            gave_up_after: Duration::from_secs(30),
            advice_window: Duration::from_secs(24 * 3600),
            advice_min_cold_starts: 5,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The level of the eBPF programs' log, least to most verbose: a level shows its records and
/// those of every level before it (aya-log's `AYA_LOG_LEVEL`, 0 to 5).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum KernelLog {
    #[default]
    Off,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl KernelLog {
    pub fn name(self) -> &'static str {
        match self {
            KernelLog::Off => "off",
            KernelLog::Error => "error",
            KernelLog::Warn => "warn",
            KernelLog::Info => "info",
            KernelLog::Debug => "debug",
            KernelLog::Trace => "trace",
        }
    }

    /// What a `tracing` filter (`REFUSAL_LOG`'s syntax) asks for `target`: its most specific
    /// directive naming a prefix of it (`refusal_agent::ebpf=debug`, `refusal_agent=trace`; a
    /// bare target means `trace`). A directive without a target (`info`) does not count: the
    /// programs log only when asked by name.
    pub fn from_filter(filter: &str, target: &str) -> KernelLog {
        let named = filter.split(',').filter_map(|d| {
            let d = d.trim();
            let (t, level) = match d.split_once('=') {
                Some((t, level)) => (t, Self::parse(level.trim())?),
                None if Self::parse(d).is_some() => return None,
                None => (d, KernelLog::Trace),
            };
            // A span filter (`target[span{field}]`) narrows to spans the programs never enter.
            let t = t.trim();
            (!t.is_empty() && !t.contains('[') && target.starts_with(t)).then_some((t.len(), level))
        });
        named
            .max_by_key(|(len, _)| *len)
            .map_or(KernelLog::Off, |(_, level)| level)
    }

    fn parse(level: &str) -> Option<KernelLog> {
        [
            KernelLog::Off,
            KernelLog::Error,
            KernelLog::Warn,
            KernelLog::Info,
            KernelLog::Debug,
            KernelLog::Trace,
        ]
        .into_iter()
        .find(|l| l.name().eq_ignore_ascii_case(level))
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
pub enum AttachMode {
    #[default]
    Auto,
    Fentry,
    Kprobe,
    /// Spelled as in the README and the config file, not clap's default `tp-btf`.
    #[cfg_attr(feature = "cli", value(name = "tp_btf"))]
    TpBtf,
    Tracepoint,
}

impl AttachMode {
    pub fn name(self) -> &'static str {
        match self {
            AttachMode::Auto => "auto",
            AttachMode::Fentry => "fentry",
            AttachMode::Kprobe => "kprobe",
            AttachMode::TpBtf => "tp_btf",
            AttachMode::Tracepoint => "tracepoint",
        }
    }
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A duration as people write it: `90s`, `3m`, `1h30m`, `250ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("invalid duration {s:?}: expected a number with a unit (ms, s, m, h), e.g. 90s, 3m, 1h30m");
        let mut total = Duration::ZERO;
        let mut rest = s.trim();
        if rest.is_empty() {
            return Err(bad());
        }
        while !rest.is_empty() {
            let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
            let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
            rest = &rest[digits..];
            let unit = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
            let part = match &rest[..unit] {
                "ms" => Duration::from_millis(n),
                "s" => Duration::from_secs(n),
                "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(bad)?),
                "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(bad)?),
                _ => return Err(bad()),
            };
            total = total.checked_add(part).ok_or_else(bad)?;
            rest = &rest[unit..];
        }
        Ok(Self(total))
    }
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    s.parse::<HumanDuration>().map(|h| h.0).map_err(de::Error::custom)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn defaults_match_the_design() {
        let c = Config::default();
        assert_eq!(c.listen.to_string(), "0.0.0.0:9977");
        assert_eq!(c.cold_start_max, Duration::from_secs(180));
        assert_eq!(c.persistent_after, Duration::from_secs(180));
        assert_eq!(c.min_attempts, 3);
        assert_eq!(c.flap_episodes, 3);
        assert_eq!(c.flap_window, Duration::from_secs(900));
        assert_eq!(c.max_series, 10_000);
        assert_eq!(c.attach, AttachMode::Auto);
        assert_eq!(c.gave_up_after, Duration::from_secs(30));
        assert_eq!(c.advice_window, Duration::from_secs(86_400));
        assert_eq!(c.advice_min_cold_starts, 5);
        assert_eq!(c.host_root, PathBuf::from("/"));
        assert_eq!(c.kernel_log, KernelLog::Off);
        assert_eq!(Config::from_toml("").unwrap(), c);
        c.validate().unwrap();
    }

    #[test]
    fn kernel_log_from_a_filter_only_by_name() {
        let t = "refusal_agent::ebpf";
        assert_eq!(KernelLog::from_filter("info", t), KernelLog::Off);
        assert_eq!(KernelLog::from_filter("debug,hyper=warn", t), KernelLog::Off);
        assert_eq!(
            KernelLog::from_filter("info,refusal_agent::ebpf=debug", t),
            KernelLog::Debug
        );
        assert_eq!(KernelLog::from_filter("refusal_agent=trace", t), KernelLog::Trace);
        assert_eq!(KernelLog::from_filter("refusal_agent::ebpf", t), KernelLog::Trace);
        assert_eq!(
            KernelLog::from_filter("refusal_agent=debug,refusal_agent::ebpf=off", t),
            KernelLog::Off
        );
        assert_eq!(KernelLog::from_filter("refusal_agent::ebpf=WARN", t), KernelLog::Warn);
        assert_eq!(
            KernelLog::from_filter("refusal_agent::collect=debug", t),
            KernelLog::Off
        );
        assert_eq!(KernelLog::from_filter("refusal_agent::ebpf=loud", t), KernelLog::Off);
        assert_eq!(KernelLog::from_filter("refusal_agent[tick]=debug", t), KernelLog::Off);
    }

    #[test]
    fn file_overrides_defaults() {
        let c = Config::from_toml("cold_start_max = \"90s\"\nmin_attempts = 5\nattach = \"tp_btf\"\n").unwrap();
        assert_eq!(c.cold_start_max, Duration::from_secs(90));
        assert_eq!(c.min_attempts, 5);
        assert_eq!(c.attach, AttachMode::TpBtf);
        assert_eq!(c.persistent_after, Duration::from_secs(180));
    }

    #[test]
    fn bad_files_name_the_key() {
        let e = Config::from_toml("listn = \"x\"").unwrap_err();
        assert!(e.contains("unknown field `listn`"), "{e}");
        let e = Config::from_toml("cold_start_max = \"soon\"").unwrap_err();
        assert!(e.contains("cold_start_max") && e.contains("e.g. 90s"), "{e}");
        let e = Config::from_toml("min_attempts = \"three\"").unwrap_err();
        assert!(e.contains("min_attempts"), "{e}");
        let e = Config::from_toml("kernel_log = \"loud\"").unwrap_err();
        assert!(e.contains("kernel_log") && e.contains("`debug`"), "{e}");
        assert_eq!(
            Config::from_toml("kernel_log = \"warn\"").unwrap().kernel_log,
            KernelLog::Warn
        );
        let c = Config {
            min_attempts: 0,
            ..Config::default()
        };
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "`min_attempts`: must be at least 1"
        );
        let c = Config::from_toml("host_root = \"host\"").unwrap();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .starts_with("`host_root`: must be an absolute")
        );
    }

    #[test]
    fn durations() {
        let d = |s: &str| s.parse::<HumanDuration>().map(|h| h.0);
        assert_eq!(d("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(d("3m"), Ok(Duration::from_secs(180)));
        assert_eq!(d("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(d("250ms"), Ok(Duration::from_millis(250)));
        for bad in ["", "90", "s", "3 m", "1x", "-1s", "99999999999999999999h"] {
            assert!(d(bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn seconds_round_trip(n in 0u64..10_000_000) {
            prop_assert_eq!(format!("{n}s").parse::<HumanDuration>().unwrap().0, Duration::from_secs(n));
        }

        #[test]
        fn duration_parser_never_panics(s in "\\PC{0,20}") {
            let _ = s.parse::<HumanDuration>();
        }
    }
}
