//! OCI containers inside the guest: what runc does on a host, done by the agent.

pub mod cgroups;
pub mod creds;
pub mod hooks;
pub mod manager;
pub mod process;
pub mod rootfs;
pub mod seccomp;
pub mod spec_check;
pub mod stdio;
pub mod sync;
pub mod syscall;
