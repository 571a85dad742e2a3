//! virtio-vsock in user space: the device, its connection multiplexer, and Firecracker's
//! hybrid Unix-socket backend.
//!
//! moat's hosts have neither `/dev/vhost-vsock` nor loopback vsock, so the guest's vsock
//! device is emulated here, once, and used two ways: served to QEMU over vhost-user
//! ([`vhost_user`]) and inline in the built-in VMM's event loop ([`inline`]).
//!
//! # How data flows
//!
//! ```text
//!            guest driver                          host processes
//!   TX queue ──chains──▶ device::process_tx          ▲ │  <uds>: "CONNECT <port>\n" → "OK <hostport>\n"
//!                          │ packet::gather_tx        │ │  <uds>_<P>: guest-initiated connections
//!                          ▼                          │ ▼
//!                     VsockBackend::send_pkt ──▶ VsockMuxer ──▶ Connection (per 4-tuple)
//!                                                    │ epoll fd (listener, streams, timer)
//!   RX queue ◀─chains── device::process_rx ◀── VsockBackend::recv_pkt
//!                          packet::write_rx
//!   event queue ◀────── device::send_transport_reset (backend restart)
//! ```
//!
//! - [`packet`] gathers a TX descriptor chain (header and data may span any number of
//!   descriptors: Linux 6.12 splits packets over about 32 KiB) into one bounded buffer, parses
//!   the 44-byte header with the `virtio-vsock` crate's types, and scatters RX packets into
//!   write-only chains.
//! - [`device`] pops chains, hands packets to a [`VsockBackend`], returns every chain it
//!   consumes to the used ring (a malformed chain included), and says when to interrupt.
//! - [`muxer`] is the backend: a sans-IO-ish core with its own epoll fd that an outer loop
//!   watches (the vhost-user daemon, or the built-in VMM's event manager). It owns the
//!   [`connection`]s and the hybrid listener ([`hybrid`]).
//! - [`connection`] is the per-connection state machine with credit-based flow control in
//!   both directions.
//! - [`metrics`] counts packets, and every packet dropped or connection reset because of
//!   what the guest sent.
//!
//! # A hostile guest
//!
//! Everything from the guest is checked: descriptor direction and lengths, the header's
//! length, CIDs, type and op, credit. A malformed chain is dropped (and returned to the
//! used ring), an addressable bad packet resets its connection, and a counter says why.
//! Memory is bounded: one 64 KiB + 44 B gather buffer, at most `conn_buf_size` bytes
//! buffered per connection (the credit the guest was given; more is a reset), at most
//! `max_connections` connections, and a bounded queue of replies to unknown connections
//! (when it is full the TX queue is left alone until the guest takes RX buffers). A slow host
//! reader fills its connection's buffer, after which the guest simply gets no more credit.

pub mod backend;
pub mod connection;
pub mod device;
pub mod hybrid;
pub mod inline;
pub mod metrics;
pub mod muxer;
pub mod packet;
pub mod vhost_user;

#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils;
#[cfg(test)]
mod tests;

pub use backend::{TxPacket, VsockBackend};
pub use device::{DeviceError, QueueOutcome, VsockDevice};
pub use metrics::{MetricsSnapshot, VsockMetrics};
pub use muxer::{MuxerConfig, MuxerError, VsockMuxer};
pub use packet::{Header, PacketError};

/// The host's CID (`VMADDR_CID_HOST`).
pub const HOST_CID: u64 = 2;
/// moat's guests' CID.
pub const DEFAULT_GUEST_CID: u64 = 3;

/// `VIRTIO_VSOCK_TYPE_STREAM`, the only socket type offered.
pub const TYPE_STREAM: u16 = 1;

/// Connection request.
pub const OP_REQUEST: u16 = 1;
/// Connection accepted.
pub const OP_RESPONSE: u16 = 2;
/// Connection reset (or refused).
pub const OP_RST: u16 = 3;
/// One or both directions shut down; see the `SHUTDOWN_*` flags.
pub const OP_SHUTDOWN: u16 = 4;
/// Data.
pub const OP_RW: u16 = 5;
/// The sender's `buf_alloc`/`fwd_cnt` changed.
pub const OP_CREDIT_UPDATE: u16 = 6;
/// The sender asks for a credit update.
pub const OP_CREDIT_REQUEST: u16 = 7;

/// `SHUTDOWN` flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// `SHUTDOWN` flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// The largest payload of one packet, in either direction (Linux's
/// `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`). A TX header announcing more is malformed.
pub const MAX_PKT_DATA: usize = 64 * 1024;

/// `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`, the only event.
pub const EVENT_TRANSPORT_RESET: u32 = 0;

/// Queue indices.
pub const RXQ: usize = 0;
/// The TX queue's index.
pub const TXQ: usize = 1;
/// The event queue's index.
pub const EVQ: usize = 2;
/// RX, TX, event.
pub const NUM_QUEUES: usize = 3;
/// The largest queue size the device accepts (QEMU 7.2's `vhost-user-vsock-device` asks
/// for 1024).
pub const MAX_QUEUE_SIZE: u16 = 1024;
