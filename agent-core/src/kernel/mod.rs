//! What attaching needs to know about a kernel, without touching one: the hook table, the BTF
//! parser and tracefs record formats.
pub mod btf;
pub mod hooks;
pub mod kallsyms;
pub mod tracefs;
