//! The moat runtime: everything on the host side of a moat sandbox.
//!
//! - [`host`]: what the host's KVM can do, and so which backend to use.
//! - [`paths`]: where the guest kernel, initramfs and helpers are.
//! - [`config`]: the config file, environment and flags; the guest's size.
//! - [`check`]: `moat check`, what the host offers and which backend moat uses.
//! - [`spec_cmd`]: `moat spec` and `moat features`.
//! - [`initramfs`]: the guest image builder.
//! - [`qemu`]: the QEMU backend.
//! - [`backend`]: which VMM runs a sandbox; [`builtin`]: the built-in VMM in this process;
//!   [`guest`]: one sandbox guest, whichever VMM runs it.
//! - [`vsock`]: host↔guest vsock: the hybrid-socket client, the agent client, the backend.
//! - [`shim`]: `containerd-shim-moat-v2`, one VM per pod.

pub mod backend;
pub mod boot;
pub mod builtin;
pub mod bundle;
pub mod check;
pub mod cli;
pub mod config;
pub mod guest;
pub mod hooks;
pub mod host;
pub mod initramfs;
pub mod paths;
pub mod qemu;
pub mod sandbox;
pub mod shim;
pub mod spec_cmd;
pub mod state;
pub mod virtiofsd;
pub mod vsock;
