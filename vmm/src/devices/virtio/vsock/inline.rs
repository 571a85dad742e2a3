//! The vsock device run inline by the built-in VMM: [`VsockDevice`] over the hybrid
//! [`VsockMuxer`], behind the virtio-mmio transport, in the VMM's event loop.
//!
//! # Data flow
//!
//! The same passes as the vhost-user daemon ([`super::vhost_user`]): TX kick → `process_tx`
//! then `process_rx`; RX kick (the guest added buffers) → `process_rx`; the muxer's epoll fd
//! readable (a host stream has data, a host connected, a timer fired) → `process_events`
//! then `process_rx`; then, while TX stalled on a full reply queue, TX and RX again. The event
//! queue stays with the device, ready for a transport reset. Config space: the guest CID.

use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;

use super::backend::VsockBackend;
use super::device::{DeviceError, VsockDevice};
use super::muxer::VsockMuxer;
use super::{QueueOutcome, MAX_QUEUE_SIZE, NUM_QUEUES, RXQ, TXQ};
use crate::devices::virtio::{
    device_type, read_config_bytes, ActivateContext, ActivateError, DeviceFd, Interrupt, IrqKind,
    VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};

/// The token of the muxer's epoll fd.
const MUXER_TOKEN: u32 = 0;

struct Active {
    mem: GuestMemoryMmap,
    interrupt: Arc<dyn Interrupt>,
    queues: Vec<Queue>,
}

/// The vsock device as a [`VirtioDevice`].
pub struct InlineVsock {
    device: VsockDevice<VsockMuxer>,
    config: [u8; 8],
    active: Option<Active>,
}

impl std::fmt::Debug for InlineVsock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InlineVsock")
            .field("guest_cid", &self.device.guest_cid())
            .field("active", &self.active.is_some())
            .finish()
    }
}

impl InlineVsock {
    /// Wraps a device.
    pub fn new(device: VsockDevice<VsockMuxer>) -> Self {
        let config = device.guest_cid().to_le_bytes();
        Self {
            device,
            config,
            active: None,
        }
    }

    /// The device (its metrics, its muxer).
    pub fn device(&self) -> &VsockDevice<VsockMuxer> {
        &self.device
    }

    fn run(&mut self, tx_first: bool) {
        let Some(a) = &mut self.active else {
            return;
        };
        let r = Self::passes(&mut self.device, a, tx_first);
        if let Err(e) = r {
            tracing::warn!("vsock queues: {e}");
        }
    }

    fn passes(
        dev: &mut VsockDevice<VsockMuxer>,
        a: &mut Active,
        tx_first: bool,
    ) -> Result<(), DeviceError> {
        let mut notify = false;
        let mut note = |o: QueueOutcome| notify |= o.notify;
        let (rx, rest) = a.queues.split_at_mut(TXQ);
        let (rxq, txq) = (&mut rx[RXQ], &mut rest[0]);
        if tx_first {
            note(dev.process_tx(txq, &a.mem)?);
        }
        note(dev.process_rx(rxq, &a.mem)?);
        for _ in 0..4 {
            if !dev.tx_stalled() {
                break;
            }
            note(dev.process_tx(txq, &a.mem)?);
            note(dev.process_rx(rxq, &a.mem)?);
        }
        if notify {
            if let Err(e) = a.interrupt.trigger(IrqKind::Vring) {
                tracing::warn!("vsock interrupt: {e}");
            }
        }
        Ok(())
    }
}

impl VirtioDevice for InlineVsock {
    fn device_type(&self) -> u32 {
        device_type::VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[MAX_QUEUE_SIZE; NUM_QUEUES]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if ctx.queues.len() != NUM_QUEUES {
            return Err(ActivateError::BadQueue(ctx.queues.len()));
        }
        for (i, q) in ctx.queues.iter().enumerate() {
            if !virtio_queue::QueueT::is_valid(q, &ctx.mem) {
                return Err(ActivateError::BadQueue(i));
            }
        }
        // Host connections made before the driver came up are answered on the kick the
        // transport sends after activation.
        self.active = Some(Active {
            mem: ctx.mem,
            interrupt: ctx.interrupt,
            queues: ctx.queues,
        });
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.device.reset();
    }

    fn queue_event(&mut self, index: usize) {
        match index {
            TXQ => self.run(true),
            RXQ => self.run(false),
            _ => {}
        }
    }

    fn device_fds(&self) -> Vec<DeviceFd> {
        vec![DeviceFd {
            fd: self.device.backend().epoll_fd(),
            token: MUXER_TOKEN,
            events: EventSet::IN,
        }]
    }

    fn device_event(&mut self, _token: u32, _events: EventSet) {
        // Host-side work happens even before activation (connections wait for the guest).
        self.device.backend_mut().process_events();
        self.run(false);
    }
}
