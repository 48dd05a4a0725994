//! What attaching needs to know about a kernel, without touching one: the hook table, the BTF
//! parser, tracefs record formats and the programs' log records.
pub mod btf;
pub mod hooks;
pub mod kallsyms;
pub mod log_record;
pub mod tracefs;
