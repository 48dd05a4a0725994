//! refusal-agent, the daemon and its commands. The data flows one way, one folder per stage
//! (ARCHITECTURE.md): [`kernel`] (load, attach, pins, BTF offsets) → [`collect`] (map reads into
//! snapshots) → [`analyse`] (the tick that drives the verdicts) → [`serve`] (metrics, API,
//! HTTP). A module imports only from its own stage or an earlier one; [`cmd`] (one file per
//! subcommand) and [`cli`] sit on top. The pure logic is in `agent-core`.
pub mod analyse;
pub mod cli;
pub mod cmd;
pub mod collect;
pub mod kernel;
pub mod serve;
