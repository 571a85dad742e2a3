//! moat-vmm: the virtual machine monitor side of moat.
//!
//! Today it holds the virtio-vsock device ([`devices::virtio::vsock`]), which moat serves to
//! QEMU as a vhost-user backend and which the built-in VMM will run inline.

pub mod devices;
