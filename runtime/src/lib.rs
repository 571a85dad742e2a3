//! The moat runtime: everything on the host side of a moat sandbox.
//!
//! - [`host`]: what the host's KVM can do, and so which backend to use.
//! - [`paths`]: where the guest kernel, initramfs and helpers are.
//! - [`initramfs`]: the guest image builder.
//! - [`qemu`]: the QEMU backend.
//! - [`vsock`]: host↔guest vsock: the hybrid-socket client, the agent client, the backend.
//! - [`shim`]: `containerd-shim-moat-v2`, one VM per pod.

pub mod boot;
pub mod bundle;
pub mod cli;
pub mod hooks;
pub mod host;
pub mod initramfs;
pub mod paths;
pub mod qemu;
pub mod sandbox;
pub mod shim;
pub mod state;
pub mod virtiofsd;
pub mod vsock;
