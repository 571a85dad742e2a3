//! moat-vmm: moat's built-in virtual machine monitor, a KVM microVM on the rust-vmm crates.
//!
//! The modules map onto the machine, as in Firecracker:
//! - [`vstate`]: KVM, the VM, guest memory, the vCPUs and their threads;
//! - [`arch`]: the x86_64 memory layout, boot registers, CPUID, MP table;
//! - [`boot`]: loading `vmlinux` (PVH or the Linux boot protocol), initramfs, command line;
//! - [`devices`]: the buses, the legacy devices (serial console, i8042) and the virtio
//!   devices behind the virtio-mmio transport (vsock, blk, net, fs);
//! - [`builder`] and [`vmm`]: putting a VM together from a [`builder::VmConfig`] and running
//!   it: one event loop on the calling thread, one thread per vCPU;
//! - [`seccomp`]: the per-thread system call filters;
//! - [`stats`]: CPU time and memory figures for the benchmarks.
//!
//! The vsock device ([`devices::virtio::vsock`]) is also served to QEMU as a vhost-user
//! backend, so both of moat's hypervisor backends run the same device code.

pub mod arch;
pub mod boot;
pub mod builder;
pub mod devices;
pub mod seccomp;
pub mod stats;
pub mod vmm;
pub mod vstate;
