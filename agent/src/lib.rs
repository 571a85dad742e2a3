//! moat-agent: PID 1 inside every moat guest.
//!
//! It mounts the guest's base filesystems, enables the cgroup v2 controllers, reaps
//! zombies, and serves the host's requests over vsock (see `moat-protocol`). The binary's
//! `main` wires these together; the modules are a library so that the host-side tests can
//! exercise them.

pub mod config;
pub mod container;
pub mod hostrun;
pub mod init;
pub mod log;
pub mod reaper;
pub mod rpc;
pub mod server;
pub mod testsvc;
