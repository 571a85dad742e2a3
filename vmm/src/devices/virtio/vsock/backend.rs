//! The boundary between the vsock device (queues, descriptor chains) and where its
//! connections go (today the hybrid Unix-socket [`super::muxer::VsockMuxer`]).
//!
//! Data flow: the device gathers each TX chain into a [`TxPacket`] and calls
//! [`VsockBackend::send_pkt`]; when RX buffers are available and
//! [`VsockBackend::has_pending_rx`] says so, it asks [`VsockBackend::recv_pkt`] for the next
//! packet and writes it into the chain. The backend's own file descriptors sit behind one
//! epoll fd ([`VsockBackend::epoll_fd`]); the outer event loop calls
//! [`VsockBackend::process_events`] when it is readable, then runs the device's RX path.

use std::os::fd::RawFd;

use super::packet::Header;

/// One packet from the guest: its header and exactly `hdr.len` payload bytes.
#[derive(Debug, Clone, Copy)]
pub struct TxPacket<'a> {
    /// The decoded header.
    pub hdr: Header,
    /// The payload (empty for control packets).
    pub data: &'a [u8],
}

/// Where the device's connections go.
pub trait VsockBackend: Send {
    /// Takes one well-formed packet from the guest. Never fails: whatever is wrong with the
    /// packet is answered (reset, drop) and counted by the backend.
    fn send_pkt(&mut self, pkt: &TxPacket<'_>);

    /// The guest sent a chain whose header was intact but whose payload was not (too long,
    /// shorter than announced): reset the connection it names.
    fn reject_pkt(&mut self, hdr: &Header);

    /// False when the backend cannot take another packet now (its queue of replies is full);
    /// the device then leaves the TX queue alone until RX has drained.
    fn tx_ready(&self) -> bool;

    /// True when the backend (probably) has a packet for the guest.
    fn has_pending_rx(&self) -> bool;

    /// Produces the next packet for the guest, its payload written to `buf[..hdr.len]`
    /// (`buf.len()` is what the guest's RX buffer can take, at most 64 KiB). `None` when
    /// nothing was ready after all.
    fn recv_pkt(&mut self, buf: &mut [u8]) -> Option<Header>;

    /// The fd the outer loop watches for readability.
    fn epoll_fd(&self) -> RawFd;

    /// Handles whatever is ready on the backend's fds (never blocks).
    fn process_events(&mut self);

    /// Forgets every connection (device reset or transport reset), closing host streams.
    fn reset(&mut self);
}
