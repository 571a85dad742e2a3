//! The virtio-vsock device proper: moves packets between the guest's queues and a
//! [`VsockBackend`], for any transport that hands it a `virtio_queue::Queue` and guest memory
//! (the vhost-user daemon for QEMU, virtio-mmio in the built-in VMM: [`super::inline`]).
//!
//! # Data flow
//!
//! - [`VsockDevice::process_tx`]: pop each TX chain, gather it ([`gather_tx`]), give the
//!   packet to the backend, and return the chain to the used ring with length 0, malformed
//!   or not: a chain the device consumed is never lost to the guest. While the backend is
//!   not [`VsockBackend::tx_ready`], chains stay in the available ring and TX is marked
//!   stalled; the next RX pass retries it.
//! - [`VsockDevice::process_rx`]: while the backend has packets and the guest has RX chains,
//!   check the chain ([`rx_capacity`]), let the backend fill at most that much, write header
//!   and payload into the chain ([`write_rx`]), and return it with the bytes written.
//! - [`VsockDevice::send_transport_reset`]: one event on the event queue, after the
//!   backend lost its connections (a restart); the guest then resets all its sockets.
//!
//! Both queue paths run with notifications suppressed and re-enable them before returning
//! (the `EVENT_IDX` dance), and report whether the guest needs an interrupt.

use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestMemory};

use super::backend::{TxPacket, VsockBackend};
use super::metrics::VsockMetrics;
use super::packet::{gather_tx, rx_capacity, write_rx, Gathered, PKT_HEADER_SIZE, TX_BUF_SIZE};
use super::{EVENT_TRANSPORT_RESET, MAX_PKT_DATA};

/// A queue failed in a way the device cannot work around (the guest broke the ring itself).
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// Updating the used ring or the notification fields failed.
    #[error("virtqueue access")]
    Queue(#[source] virtio_queue::Error),
    /// The event queue had no buffer for the transport-reset event.
    #[error("no event queue buffer for the transport reset event")]
    NoEventBuffer,
    /// The event buffer could not be written.
    #[error("writing the transport reset event")]
    EventWrite(#[source] vm_memory::GuestMemoryError),
}

/// What one pass over a queue did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct QueueOutcome {
    /// Chains returned to the used ring.
    pub used: u32,
    /// The guest should be interrupted.
    pub notify: bool,
}

/// The most chains one pass handles before it returns, so that one busy queue cannot
/// starve the other or the event loop (the caller runs again on the next event).
const MAX_CHAINS_PER_PASS: u32 = 1024;

/// The device: a backend plus the buffers the queue paths reuse.
#[derive(Debug)]
pub struct VsockDevice<B> {
    guest_cid: u64,
    backend: B,
    metrics: Arc<VsockMetrics>,
    tx_buf: Vec<u8>,
    rx_buf: Vec<u8>,
    tx_stalled: bool,
}

impl<B: VsockBackend> VsockDevice<B> {
    /// A device for guest `guest_cid` over `backend`.
    pub fn new(guest_cid: u64, backend: B, metrics: Arc<VsockMetrics>) -> Self {
        Self {
            guest_cid,
            backend,
            metrics,
            tx_buf: vec![0u8; TX_BUF_SIZE],
            rx_buf: vec![0u8; MAX_PKT_DATA],
            tx_stalled: false,
        }
    }

    /// The guest's CID, for the config space.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend, mutably (the outer loop calls `process_events` through this).
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// The counters.
    pub fn metrics(&self) -> &Arc<VsockMetrics> {
        &self.metrics
    }

    /// True when TX chains were left in the ring because the backend was not ready; the
    /// caller should run [`Self::process_tx`] again after RX.
    pub fn tx_stalled(&self) -> bool {
        self.tx_stalled
    }

    /// Device reset: the backend forgets every connection.
    pub fn reset(&mut self) {
        self.backend.reset();
        self.tx_stalled = false;
    }

    /// Handles the TX queue. See the module documentation.
    pub fn process_tx<M: GuestMemory>(
        &mut self,
        queue: &mut Queue,
        mem: &M,
    ) -> Result<QueueOutcome, DeviceError> {
        let mut out = QueueOutcome::default();
        self.tx_stalled = false;
        'outer: loop {
            queue
                .disable_notification(mem)
                .map_err(DeviceError::Queue)?;
            while let Some(chain) = queue.pop_descriptor_chain(mem) {
                if !self.backend.tx_ready() || out.used >= MAX_CHAINS_PER_PASS {
                    queue.go_to_previous_position();
                    self.tx_stalled = true;
                    break 'outer;
                }
                let head = chain.head_index();
                if head >= queue.size() {
                    // A head outside the table cannot be returned to the used ring.
                    VsockMetrics::inc(&self.metrics.tx_malformed);
                    tracing::debug!("dropping TX head {head} outside the descriptor table");
                    continue;
                }
                match gather_tx(chain, &mut self.tx_buf) {
                    Ok(Gathered { hdr, data_descs }) => {
                        if data_descs > 1 {
                            VsockMetrics::inc(&self.metrics.tx_multi_desc);
                        }
                        let data =
                            &self.tx_buf[PKT_HEADER_SIZE..PKT_HEADER_SIZE + hdr.len as usize];
                        self.backend.send_pkt(&TxPacket { hdr, data });
                    }
                    Err(e) => match e.header() {
                        Some(hdr) => {
                            tracing::debug!("bad TX packet: {e}");
                            self.backend.reject_pkt(hdr);
                        }
                        None => {
                            VsockMetrics::inc(&self.metrics.tx_malformed);
                            tracing::debug!("dropping a malformed TX chain: {e}");
                        }
                    },
                }
                queue.add_used(mem, head, 0).map_err(DeviceError::Queue)?;
                out.used += 1;
            }
            if !queue.enable_notification(mem).map_err(DeviceError::Queue)? {
                break;
            }
        }
        if out.used > 0 {
            out.notify = queue.needs_notification(mem).map_err(DeviceError::Queue)?;
        }
        Ok(out)
    }

    /// Handles the RX queue. See the module documentation.
    pub fn process_rx<M: GuestMemory>(
        &mut self,
        queue: &mut Queue,
        mem: &M,
    ) -> Result<QueueOutcome, DeviceError> {
        let mut out = QueueOutcome::default();
        loop {
            queue
                .disable_notification(mem)
                .map_err(DeviceError::Queue)?;
            self.fill_rx(queue, mem, &mut out)?;
            // Re-enable before deciding, so that buffers added meanwhile are not missed.
            let more_buffers = queue.enable_notification(mem).map_err(DeviceError::Queue)?;
            if !more_buffers || !self.backend.has_pending_rx() || out.used >= MAX_CHAINS_PER_PASS {
                break;
            }
        }
        if out.used > 0 {
            out.notify = queue.needs_notification(mem).map_err(DeviceError::Queue)?;
        }
        Ok(out)
    }

    fn fill_rx<M: GuestMemory>(
        &mut self,
        queue: &mut Queue,
        mem: &M,
        out: &mut QueueOutcome,
    ) -> Result<(), DeviceError> {
        while self.backend.has_pending_rx() && out.used < MAX_CHAINS_PER_PASS {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                return Ok(());
            };
            let head = chain.head_index();
            if head >= queue.size() {
                VsockMetrics::inc(&self.metrics.rx_malformed);
                tracing::debug!("dropping RX head {head} outside the descriptor table");
                continue;
            }
            let cap = match rx_capacity(&chain) {
                Ok(cap) if cap >= PKT_HEADER_SIZE => cap,
                Ok(cap) => {
                    VsockMetrics::inc(&self.metrics.rx_malformed);
                    tracing::debug!("dropping an RX chain of {cap} bytes");
                    queue.add_used(mem, head, 0).map_err(DeviceError::Queue)?;
                    out.used += 1;
                    continue;
                }
                Err(e) => {
                    VsockMetrics::inc(&self.metrics.rx_malformed);
                    tracing::debug!("dropping an RX chain: {e}");
                    queue.add_used(mem, head, 0).map_err(DeviceError::Queue)?;
                    out.used += 1;
                    continue;
                }
            };
            let room = (cap - PKT_HEADER_SIZE).min(MAX_PKT_DATA);
            let Some(hdr) = self.backend.recv_pkt(&mut self.rx_buf[..room]) else {
                // Nothing after all: the chain goes back for the next packet.
                queue.go_to_previous_position();
                return Ok(());
            };
            let data = &self.rx_buf[..hdr.len as usize];
            let written = match write_rx(chain, &hdr, data) {
                Ok(n) => n,
                Err(e) => {
                    // Only reachable if guest memory changed under us; the packet is lost,
                    // which a stream cannot survive, so the connection is reset.
                    VsockMetrics::inc(&self.metrics.rx_malformed);
                    tracing::debug!("writing an RX chain: {e}");
                    let mut back = hdr;
                    std::mem::swap(&mut back.src_port, &mut back.dst_port);
                    std::mem::swap(&mut back.src_cid, &mut back.dst_cid);
                    self.backend.reject_pkt(&back);
                    0
                }
            };
            queue
                .add_used(mem, head, written)
                .map_err(DeviceError::Queue)?;
            out.used += 1;
        }
        Ok(())
    }

    /// Puts a transport-reset event on the event queue and drops the backend's connections.
    pub fn send_transport_reset<M: GuestMemory>(
        &mut self,
        evq: &mut Queue,
        mem: &M,
    ) -> Result<QueueOutcome, DeviceError> {
        self.backend.reset();
        let chain = evq
            .pop_descriptor_chain(mem)
            .ok_or(DeviceError::NoEventBuffer)?;
        let head = chain.head_index();
        let event = EVENT_TRANSPORT_RESET.to_le_bytes();
        let desc = chain.clone().find(|d| d.is_write_only() && d.len() >= 4);
        let written = match desc {
            Some(d) => {
                mem.write_slice(&event, d.addr())
                    .map_err(DeviceError::EventWrite)?;
                4
            }
            None => 0,
        };
        evq.add_used(mem, head, written)
            .map_err(DeviceError::Queue)?;
        if written == 0 {
            return Err(DeviceError::NoEventBuffer);
        }
        VsockMetrics::inc(&self.metrics.transport_resets);
        Ok(QueueOutcome {
            used: 1,
            notify: evq.needs_notification(mem).map_err(DeviceError::Queue)?,
        })
    }
}
