//! Emulated devices: the port I/O and MMIO buses, the legacy PC devices, and virtio.

pub mod bus;
pub mod legacy;
pub mod virtio;
