//! virtio-net on a tap device: one RX and one TX queue, a MAC address, no offloads.
//!
//! # Data flow
//!
//! - TX: guest kick → pop each chain, gather it (device-readable descriptors only, at most
//!   one header plus 64 KiB) into one buffer, clear the header's offload fields (none were
//!   negotiated), write the frame to the tap, return the chain with length 0.
//! - RX: the tap fd is watched edge-triggered; when it is readable, or the guest adds RX
//!   buffers, frames are read (each with its 12-byte `virtio_net_hdr_v1`, the tap's
//!   `IFF_VNET_HDR`) and scattered into RX chains until the tap is empty or the guest has no
//!   buffers; a frame read while no buffer is free waits in the device for the next RX kick.
//!   A frame larger than the chain offered is dropped and counted.
//!
//! The backend is a trait ([`NetBackend`]) so the tests drive the device with a fake tap.

pub mod device;
pub mod tap;

pub use device::{Net, NetBackend, NetMetrics};
pub use tap::{Tap, TapError};

/// `sizeof(struct virtio_net_hdr_v1)`: the header before every frame, both directions.
pub const VNET_HDR_LEN: usize = 12;
/// The largest frame plus header the device moves (64 KiB frames, for taps with a large MTU).
pub const MAX_BUFFER: usize = VNET_HDR_LEN + 65_550;
/// Queue size for RX and TX.
pub const QUEUE_SIZE: u16 = 256;
/// RX queue index.
pub const RXQ: usize = 0;
/// TX queue index.
pub const TXQ: usize = 1;
/// `VIRTIO_NET_F_MAC`.
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;

#[cfg(test)]
mod tests;
