//! The virtio-net device proper, over any [`NetBackend`].

use std::io::ErrorKind;
use std::os::fd::RawFd;
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use super::{MAX_BUFFER, QUEUE_SIZE, RXQ, TXQ, VIRTIO_NET_F_MAC, VNET_HDR_LEN};
use crate::devices::virtio::{
    device_type, read_config_bytes, ActivateContext, ActivateError, DeviceFd, Interrupt, IrqKind,
    VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};

/// Where frames go: a tap, or a fake in tests. Frames carry the 12-byte header both ways.
pub trait NetBackend: Send + std::fmt::Debug {
    /// Reads one frame (non-blocking: `WouldBlock` when none is waiting).
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize>;
    /// Writes one frame.
    fn write_frame(&mut self, buf: &[u8]) -> std::io::Result<()>;
    /// The fd to watch for readability.
    fn raw_fd(&self) -> RawFd;
}

/// Counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetMetrics {
    /// Frames to the guest.
    pub rx_frames: u64,
    /// Frames from the guest.
    pub tx_frames: u64,
    /// RX frames dropped: the guest's buffer was too small or malformed.
    pub rx_dropped: u64,
    /// TX chains dropped: malformed, too long, or the backend failed.
    pub tx_dropped: u64,
}

struct Active {
    mem: GuestMemoryMmap,
    interrupt: Arc<dyn Interrupt>,
    rxq: Queue,
    txq: Queue,
}

/// The device.
pub struct Net<B: NetBackend> {
    backend: B,
    config: [u8; 6],
    active: Option<Active>,
    rx_buf: Vec<u8>,
    /// Length of a frame in `rx_buf` that waits for an RX buffer.
    rx_pending: Option<usize>,
    tx_buf: Vec<u8>,
    metrics: NetMetrics,
}

impl<B: NetBackend> std::fmt::Debug for Net<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("backend", &self.backend)
            .field("mac", &self.config)
            .field("active", &self.active.is_some())
            .field("metrics", &self.metrics)
            .finish()
    }
}

/// The token of the backend fd.
const BACKEND_TOKEN: u32 = 0;

impl<B: NetBackend> Net<B> {
    /// A device with MAC `mac` over `backend`.
    pub fn new(backend: B, mac: [u8; 6]) -> Self {
        Self {
            backend,
            config: mac,
            active: None,
            rx_buf: vec![0; MAX_BUFFER],
            rx_pending: None,
            tx_buf: vec![0; MAX_BUFFER],
            metrics: NetMetrics::default(),
        }
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend, mutably.
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// The counters.
    pub fn metrics(&self) -> NetMetrics {
        self.metrics
    }

    /// Sends every TX chain the guest made available.
    pub fn process_tx(&mut self) {
        let Some(mut a) = self.active.take() else {
            return;
        };
        if let Err(e) = self.tx(&mut a) {
            tracing::warn!("virtio-net TX queue: {e}");
        }
        self.active = Some(a);
    }

    /// Moves frames from the backend into RX chains while both have some.
    pub fn process_rx(&mut self) {
        let Some(mut a) = self.active.take() else {
            return;
        };
        if let Err(e) = self.rx(&mut a) {
            tracing::warn!("virtio-net RX queue: {e}");
        }
        self.active = Some(a);
    }

    fn tx(&mut self, a: &mut Active) -> Result<(), virtio_queue::Error> {
        let mut used = 0;
        loop {
            a.txq.disable_notification(&a.mem)?;
            while let Some(chain) = a.txq.pop_descriptor_chain(&a.mem) {
                let head = chain.head_index();
                let mut len = 0usize;
                let mut ok = true;
                for d in chain {
                    let n = d.len() as usize;
                    if d.is_write_only() || len + n > self.tx_buf.len() {
                        ok = false;
                        break;
                    }
                    if a.mem
                        .read_slice(&mut self.tx_buf[len..len + n], d.addr())
                        .is_err()
                    {
                        ok = false;
                        break;
                    }
                    len += n;
                }
                if ok && len >= VNET_HDR_LEN {
                    // No offload was negotiated: whatever the guest put in flags, gso_type,
                    // hdr_len, gso_size, csum_* is not honoured.
                    self.tx_buf[..VNET_HDR_LEN - 2].fill(0);
                    match self.backend.write_frame(&self.tx_buf[..len]) {
                        Ok(()) => self.metrics.tx_frames += 1,
                        Err(e) => {
                            self.metrics.tx_dropped += 1;
                            tracing::debug!("virtio-net: writing a frame: {e}");
                        }
                    }
                } else {
                    self.metrics.tx_dropped += 1;
                }
                if head < a.txq.size() {
                    a.txq.add_used(&a.mem, head, 0)?;
                    used += 1;
                }
            }
            if !a.txq.enable_notification(&a.mem)? {
                break;
            }
        }
        if used > 0 && a.txq.needs_notification(&a.mem)? {
            let _ = a.interrupt.trigger(IrqKind::Vring);
        }
        Ok(())
    }

    fn rx(&mut self, a: &mut Active) -> Result<(), virtio_queue::Error> {
        let mut used = 0;
        loop {
            let len = match self.rx_pending {
                Some(n) => n,
                None => match self.backend.read_frame(&mut self.rx_buf) {
                    Ok(n) if n >= VNET_HDR_LEN => n,
                    Ok(_) => continue,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::warn!("virtio-net: reading from the backend: {e}");
                        break;
                    }
                },
            };
            self.rx_pending = Some(len);
            // Without VIRTIO_NET_F_MRG_RXBUF every frame takes exactly one buffer.
            self.rx_buf[VNET_HDR_LEN - 2..VNET_HDR_LEN].copy_from_slice(&1u16.to_le_bytes());
            let Some(chain) = a.rxq.pop_descriptor_chain(&a.mem) else {
                // No buffer: the frame waits; the next RX kick resumes.
                break;
            };
            self.rx_pending = None;
            let head = chain.head_index();
            let mut written = 0usize;
            let mut ok = true;
            for d in chain {
                if written == len {
                    break;
                }
                let n = (d.len() as usize).min(len - written);
                if !d.is_write_only()
                    || a.mem
                        .write_slice(&self.rx_buf[written..written + n], d.addr())
                        .is_err()
                {
                    ok = false;
                    break;
                }
                written += n;
            }
            if !ok || written < len {
                self.metrics.rx_dropped += 1;
                written = 0;
            } else {
                self.metrics.rx_frames += 1;
            }
            if head < a.rxq.size() {
                a.rxq.add_used(&a.mem, head, written as u32)?;
                used += 1;
            }
        }
        if used > 0 && a.rxq.needs_notification(&a.mem)? {
            let _ = a.interrupt.trigger(IrqKind::Vring);
        }
        Ok(())
    }
}

impl<B: NetBackend + 'static> VirtioDevice for Net<B> {
    fn device_type(&self) -> u32 {
        device_type::NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | VIRTIO_NET_F_MAC
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let mut it = ctx.queues.into_iter();
        let (Some(rxq), Some(txq), None) = (it.next(), it.next(), it.next()) else {
            return Err(ActivateError::BadQueue(2));
        };
        for (i, q) in [(RXQ, &rxq), (TXQ, &txq)] {
            if !q.is_valid(&ctx.mem) {
                return Err(ActivateError::BadQueue(i));
            }
        }
        self.active = Some(Active {
            mem: ctx.mem,
            interrupt: ctx.interrupt,
            rxq,
            txq,
        });
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.rx_pending = None;
    }

    fn queue_event(&mut self, index: usize) {
        match index {
            RXQ => self.process_rx(),
            TXQ => self.process_tx(),
            _ => {}
        }
    }

    fn device_fds(&self) -> Vec<DeviceFd> {
        vec![DeviceFd {
            fd: self.backend.raw_fd(),
            token: BACKEND_TOKEN,
            events: EventSet::IN | EventSet::EDGE_TRIGGERED,
        }]
    }

    fn device_event(&mut self, _token: u32, _events: EventSet) {
        if self.active.is_some() {
            self.process_rx();
        } else {
            // Not active: drop whatever arrives so the edge-triggered fd is re-armed.
            while self.backend.read_frame(&mut self.rx_buf).is_ok() {}
        }
    }
}
