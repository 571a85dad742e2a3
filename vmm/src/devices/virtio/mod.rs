//! virtio devices, built on `virtio-queue`, behind the virtio-mmio transport.
//!
//! # How the pieces fit
//!
//! ```text
//!  vCPU thread                        event loop (main thread)
//!  MMIO exit ─▶ MmioTransport         queue eventfd ──▶ VirtioSubscriber ──▶ device.queue_event(i)
//!              (registers, status,        ▲ (KVM ioeventfd on QueueNotify, or the
//!               features, queue setup)    │  transport writes it on the exit)
//!              DRIVER_OK ─▶ device.activate(memory, interrupt, queues)
//!                                     device fds (tap, vsock muxer, vhost-user calls)
//!                                          ──▶ device.device_event(token)
//!  device ─▶ Interrupt::trigger ─▶ ISR bit + irqfd ─▶ KVM raises the device's GSI
//! ```
//!
//! A device receives guest memory, its interrupt and its queues only at
//! [`VirtioDevice::activate`] and drops them at [`VirtioDevice::reset`] (Cloud Hypervisor's
//! rule), so that nothing touches guest memory before the driver has set the device up.

pub mod block;
pub mod fs;
pub mod mmio;
pub mod net;
pub mod subscriber;
pub mod vsock;

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

/// `VIRTIO_F_VERSION_1`: every moat device is modern.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// `VIRTIO_RING_F_EVENT_IDX`.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

/// Device type IDs.
pub mod device_type {
    /// virtio-net.
    pub const NET: u32 = 1;
    /// virtio-blk.
    pub const BLOCK: u32 = 2;
    /// virtio-vsock.
    pub const VSOCK: u32 = 19;
    /// virtio-fs.
    pub const FS: u32 = 26;
}

/// Interrupt status bits (the transport's `InterruptStatus` register).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqKind {
    /// A used buffer notification.
    Vring = 1,
    /// The configuration changed.
    Config = 2,
}

/// How a device interrupts the guest.
pub trait Interrupt: Send + Sync + std::fmt::Debug {
    /// Sets the status bit for `kind` and raises the line.
    fn trigger(&self, kind: IrqKind) -> std::io::Result<()>;
}

/// An interrupt line: the transport's status word plus an eventfd registered as an irqfd.
#[derive(Debug)]
pub struct IrqLine {
    status: Arc<AtomicU32>,
    evt: EventFd,
}

impl IrqLine {
    /// A line writing `evt` and sharing `status` with the transport.
    pub fn new(status: Arc<AtomicU32>, evt: EventFd) -> Self {
        Self { status, evt }
    }
}

impl Interrupt for IrqLine {
    fn trigger(&self, kind: IrqKind) -> std::io::Result<()> {
        self.status.fetch_or(kind as u32, Ordering::SeqCst);
        self.evt.write(1)
    }
}

/// Activating a device failed; the transport then sets `DEVICE_NEEDS_RESET`.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver set up fewer queues than the device needs, or a queue is invalid.
    #[error("queue {0} is not usable")]
    BadQueue(usize),
    /// The device's backend failed to start.
    #[error("backend: {0}")]
    Backend(String),
}

/// What the transport hands a device at activation.
#[derive(Debug)]
pub struct ActivateContext {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// The device's interrupt.
    pub interrupt: Arc<dyn Interrupt>,
    /// One queue per `queue_max_sizes()` entry, configured by the driver.
    pub queues: Vec<Queue>,
    /// The features the driver acknowledged.
    pub acked_features: u64,
    /// The eventfds the guest kicks, one per queue (vhost-user passes them to the daemon).
    pub queue_evts: Arc<Vec<EventFd>>,
}

/// An extra fd a device wants the event loop to watch.
#[derive(Debug, Clone, Copy)]
pub struct DeviceFd {
    /// The fd.
    pub fd: RawFd,
    /// The device's token for it.
    pub token: u32,
    /// What to watch for.
    pub events: EventSet,
}

/// A virtio device (the device half; the transport is [`mmio::MmioTransport`]).
pub trait VirtioDevice: Send + std::fmt::Debug {
    /// The virtio device ID.
    fn device_type(&self) -> u32;
    /// The maximum size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// The features offered.
    fn features(&self) -> u64;
    /// Reads the device-specific configuration space (offsets past its end read as zero).
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the configuration space (most devices ignore writes).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Takes memory, interrupt and queues and starts serving. Called on a vCPU thread (the
    /// driver's `DRIVER_OK` write), whose seccomp filter allows no I/O: take ownership and
    /// check, nothing more. The transport then kicks every queue once, so that work waiting
    /// from before activation is done in the event loop.
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError>;
    /// Gives memory, interrupt and queues back and stops serving.
    fn reset(&mut self);
    /// The guest kicked queue `index` (only called while active).
    fn queue_event(&mut self, index: usize);
    /// False when something other than the event loop consumes the queue eventfds (a
    /// vhost-user daemon); the event loop then does not watch them.
    fn handles_queue_events(&self) -> bool {
        true
    }
    /// False while an activated device's backend is not (or no longer) serving: a
    /// vhost-user setup that failed. Reported next to the transport's state.
    fn backend_ready(&self) -> bool {
        true
    }
    /// Extra fds for the event loop (registered once, before the guest runs).
    fn device_fds(&self) -> Vec<DeviceFd> {
        Vec::new()
    }
    /// One of [`Self::device_fds`] is ready (called whether active or not; an inactive device
    /// drains or ignores it).
    fn device_event(&mut self, _token: u32, _events: EventSet) {}
}

/// Reads `data.len()` bytes of `config` at `offset`, zero past its end.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(off) = usize::try_from(offset) else {
        return;
    };
    if off < config.len() {
        let n = data.len().min(config.len() - off);
        data[..n].copy_from_slice(&config[off..off + n]);
    }
}

/// A fresh `Queue` with the same driver-visible setup as `q` (size, ready, ring addresses).
pub fn clone_queue(q: &Queue) -> Queue {
    let mut n = Queue::new(q.max_size()).expect("max size was valid for the original");
    n.set_size(q.size());
    let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
    let (l, h) = split(q.desc_table());
    n.set_desc_table_address(l, h);
    let (l, h) = split(q.avail_ring());
    n.set_avail_ring_address(l, h);
    let (l, h) = split(q.used_ring());
    n.set_used_ring_address(l, h);
    n.set_ready(q.ready());
    n
}

/// Test doubles shared by the device tests.
#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::{Interrupt, IrqKind};

    /// An interrupt that counts.
    #[derive(Debug, Default)]
    pub struct CountingInterrupt {
        /// Vring interrupts.
        pub vring: AtomicU32,
        /// Config interrupts.
        pub config: AtomicU32,
    }

    impl Interrupt for CountingInterrupt {
        fn trigger(&self, kind: IrqKind) -> std::io::Result<()> {
            match kind {
                IrqKind::Vring => self.vring.fetch_add(1, Ordering::SeqCst),
                IrqKind::Config => self.config.fetch_add(1, Ordering::SeqCst),
            };
            Ok(())
        }
    }

    impl CountingInterrupt {
        /// Vring interrupts so far.
        pub fn vrings(&self) -> u32 {
            self.vring.load(Ordering::SeqCst)
        }
    }
}
