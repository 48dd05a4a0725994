// Lets agent-user list this crate as a build-dependency (see agent-user/build.rs).
#![no_std]
