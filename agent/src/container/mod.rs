//! OCI containers inside the guest: what runc does on a host, done by the agent.

pub mod cgroups;
pub mod creds;
pub mod hooks;
pub mod rootfs;
pub mod seccomp;
pub mod sync;
pub mod syscall;
