//! One file per subcommand.
pub mod check;
pub mod run;
pub mod status;
pub mod trace;
