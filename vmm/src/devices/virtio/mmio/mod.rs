//! The virtio-mmio transport, version 2 (modern), as the virtio 1.2 spec's section 4.2.2
//! lays out its registers. The guest learns of each device from the kernel command line
//! (`virtio_mmio.device=4K@<base>:<irq>`).
//!
//! # The register state machine
//!
//! Status moves forward one step at a time: `0 → ACKNOWLEDGE → +DRIVER → +FEATURES_OK →
//! +DRIVER_OK`; `FAILED` may be added at any point; writing 0 resets. Anything else is
//! ignored (and counted). Feature words may be written only between `DRIVER` and
//! `FEATURES_OK`; `FEATURES_OK` sticks only if the driver acknowledged a subset of what was
//! offered including `VIRTIO_F_VERSION_1`. Queues may be configured only after `FEATURES_OK`
//! and before `DRIVER_OK`. `DRIVER_OK` activates the device with clones of the configured
//! queues; if that fails the transport sets `DEVICE_NEEDS_RESET` and raises a config
//! interrupt. Every access of the wrong size, at an unknown offset or in the wrong state is
//! ignored: a read returns 0, a write does nothing.
//!
//! `QueueNotify` is normally caught by KVM (an ioeventfd per queue, matching the queue
//! index) and never reaches this code; when it does (no ioeventfd support), the transport
//! writes the queue's eventfd itself, so the event loop handles kicks the same way.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::{
    clone_queue, ActivateContext, Interrupt, IrqKind, VirtioDevice, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
};
use crate::devices::bus::BusDevice;

/// "virt", little endian.
pub const MMIO_MAGIC: u32 = 0x7472_6976;
/// Modern virtio-mmio.
pub const MMIO_VERSION: u32 = 2;
/// "MOAT".
pub const VENDOR_ID: u32 = 0x5441_4f4d;

/// Register offsets.
#[allow(missing_docs)]
pub mod reg {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const SHM_SEL: u64 = 0x0ac;
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    pub const SHM_BASE_LOW: u64 = 0x0b8;
    pub const SHM_BASE_HIGH: u64 = 0x0bc;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// Device status bits.
#[allow(missing_docs)]
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    pub const FAILED: u32 = 128;
}

/// The transport of one device.
#[derive(Debug)]
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    interrupt: Arc<dyn Interrupt>,
    interrupt_status: Arc<AtomicU32>,
    queues: Vec<Queue>,
    queue_evts: Arc<Vec<EventFd>>,
    notify_on_exit: bool,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    acked_features: u64,
    queue_sel: u32,
    shm_sel: u32,
    config_generation: u32,
    active: bool,
    ignored_accesses: u64,
}

impl MmioTransport {
    /// A transport for `device`. `interrupt_status` is the word `interrupt` sets bits in.
    /// Queue eventfds are created here; [`Self::set_notify_on_exit`] says whether KVM
    /// (ioeventfd) or this transport signals them.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn Interrupt>,
        interrupt_status: Arc<AtomicU32>,
    ) -> std::io::Result<Self> {
        let sizes = device.queue_max_sizes().to_vec();
        let mut queues = Vec::with_capacity(sizes.len());
        let mut queue_evts = Vec::with_capacity(sizes.len());
        for max in sizes {
            queues.push(Queue::new(max).map_err(|e| std::io::Error::other(e.to_string()))?);
            queue_evts.push(EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?);
        }
        Ok(Self {
            device,
            mem,
            interrupt,
            interrupt_status,
            queues,
            queue_evts: Arc::new(queue_evts),
            notify_on_exit: true,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            acked_features: 0,
            queue_sel: 0,
            shm_sel: 0,
            config_generation: 0,
            active: false,
            ignored_accesses: 0,
        })
    }

    /// `false` once KVM delivers `QueueNotify` through ioeventfds.
    pub fn set_notify_on_exit(&mut self, on: bool) {
        self.notify_on_exit = on;
    }

    /// The queue eventfds, by queue index.
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts[..]
    }

    /// The device.
    pub fn device(&self) -> &dyn VirtioDevice {
        self.device.as_ref()
    }

    /// The device, mutably (the event loop dispatches through this).
    pub fn device_mut(&mut self) -> &mut dyn VirtioDevice {
        self.device.as_mut()
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// True between a successful `DRIVER_OK` and the next reset.
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// Accesses ignored as invalid (wrong size, offset or state).
    pub fn ignored_accesses(&self) -> u64 {
        self.ignored_accesses
    }

    /// The event loop saw queue `index` kicked.
    pub fn queue_event(&mut self, index: usize) {
        if self.active {
            self.device.queue_event(index);
        }
    }

    fn ignore(&mut self, what: &str, offset: u64) {
        self.ignored_accesses += 1;
        tracing::debug!(
            "virtio-mmio {}: ignored {what} at {offset:#x} (status {:#x})",
            self.device.device_type(),
            self.status
        );
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn can_configure_queues(&self) -> bool {
        self.status & status::FEATURES_OK != 0
            && self.status & (status::DRIVER_OK | status::FAILED) == 0
    }

    fn read_reg(&mut self, offset: u64) -> Option<u32> {
        let q = self.queues.get(self.queue_sel as usize);
        Some(match offset {
            reg::MAGIC => MMIO_MAGIC,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => q.map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_READY => q.map_or(0, |q| u32::from(q.ready())),
            reg::INTERRUPT_STATUS => self.interrupt_status.load(Ordering::SeqCst),
            reg::STATUS => self.status,
            // No shared memory regions: length ~0 means "absent".
            reg::SHM_LEN_LOW | reg::SHM_LEN_HIGH => u32::MAX,
            reg::SHM_BASE_LOW | reg::SHM_BASE_HIGH => u32::MAX,
            reg::CONFIG_GENERATION => self.config_generation,
            _ => return None,
        })
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        let ok = match offset {
            reg::DEVICE_FEATURES_SEL => {
                self.device_features_sel = v;
                true
            }
            reg::DRIVER_FEATURES_SEL => {
                self.driver_features_sel = v;
                true
            }
            reg::DRIVER_FEATURES => self.write_driver_features(v),
            reg::QUEUE_SEL => {
                self.queue_sel = v;
                true
            }
            reg::QUEUE_NUM
            | reg::QUEUE_READY
            | reg::QUEUE_DESC_LOW
            | reg::QUEUE_DESC_HIGH
            | reg::QUEUE_DRIVER_LOW
            | reg::QUEUE_DRIVER_HIGH
            | reg::QUEUE_DEVICE_LOW
            | reg::QUEUE_DEVICE_HIGH => self.write_queue_reg(offset, v),
            reg::QUEUE_NOTIFY => {
                match self.queue_evts.get(v as usize) {
                    Some(evt) if self.notify_on_exit => {
                        let _ = evt.write(1);
                    }
                    Some(_) => {}
                    None => return self.ignore("notify of a missing queue", offset),
                }
                true
            }
            reg::INTERRUPT_ACK => {
                self.interrupt_status.fetch_and(!v, Ordering::SeqCst);
                true
            }
            reg::STATUS => self.write_status(v),
            reg::SHM_SEL => {
                self.shm_sel = v;
                true
            }
            _ => false,
        };
        if !ok {
            self.ignore("write", offset);
        }
    }

    fn write_driver_features(&mut self, v: u32) -> bool {
        if self.status & (status::DRIVER | status::FEATURES_OK | status::FAILED) != status::DRIVER {
            return false;
        }
        match self.driver_features_sel {
            0 => self.acked_features = (self.acked_features & !0xffff_ffff) | u64::from(v),
            1 => self.acked_features = (self.acked_features & 0xffff_ffff) | (u64::from(v) << 32),
            _ => {}
        }
        true
    }

    fn write_queue_reg(&mut self, offset: u64, v: u32) -> bool {
        if !self.can_configure_queues() {
            return false;
        }
        let Some(q) = self.selected_queue() else {
            return false;
        };
        match offset {
            reg::QUEUE_NUM => q.set_size(v as u16),
            reg::QUEUE_READY => q.set_ready(v == 1),
            reg::QUEUE_DESC_LOW => q.set_desc_table_address(Some(v), None),
            reg::QUEUE_DESC_HIGH => q.set_desc_table_address(None, Some(v)),
            reg::QUEUE_DRIVER_LOW => q.set_avail_ring_address(Some(v), None),
            reg::QUEUE_DRIVER_HIGH => q.set_avail_ring_address(None, Some(v)),
            reg::QUEUE_DEVICE_LOW => q.set_used_ring_address(Some(v), None),
            reg::QUEUE_DEVICE_HIGH => q.set_used_ring_address(None, Some(v)),
            _ => return false,
        }
        true
    }

    fn write_status(&mut self, v: u32) -> bool {
        use status::*;
        if v == 0 {
            self.reset();
            return true;
        }
        let cur = self.status;
        if v & FAILED != 0 && v & !FAILED == cur & !FAILED {
            self.status = v;
            return true;
        }
        if cur & FAILED != 0 {
            return false;
        }
        match (cur, v) {
            (0, ACKNOWLEDGE) => self.status = v,
            (ACKNOWLEDGE, x) if x == ACKNOWLEDGE | DRIVER => self.status = v,
            (x, y) if x == ACKNOWLEDGE | DRIVER && y == x | FEATURES_OK => {
                let offered = self.device.features();
                let acked = self.acked_features;
                if acked & !offered != 0 || acked & VIRTIO_F_VERSION_1 == 0 {
                    tracing::debug!(
                        "virtio-mmio {}: refusing features {acked:#x} (offered {offered:#x})",
                        self.device.device_type()
                    );
                    // FEATURES_OK is not set; the driver reads it back and gives up.
                    return true;
                }
                self.status = v;
            }
            (x, y) if x == ACKNOWLEDGE | DRIVER | FEATURES_OK && y == x | DRIVER_OK => {
                self.status = v;
                self.activate();
            }
            _ => return false,
        }
        true
    }

    fn activate(&mut self) {
        let event_idx = self.acked_features & VIRTIO_RING_F_EVENT_IDX != 0;
        let mut queues = Vec::with_capacity(self.queues.len());
        for q in &self.queues {
            let mut c = clone_queue(q);
            c.set_event_idx(event_idx);
            queues.push(c);
        }
        let ctx = ActivateContext {
            mem: self.mem.clone(),
            interrupt: self.interrupt.clone(),
            queues,
            acked_features: self.acked_features,
            queue_evts: self.queue_evts.clone(),
        };
        match self.device.activate(ctx) {
            Ok(()) => {
                self.active = true;
                if self.device.handles_queue_events() {
                    for evt in self.queue_evts.iter() {
                        let _ = evt.write(1);
                    }
                }
                tracing::debug!(
                    "virtio-mmio {}: activated, features {:#x}",
                    self.device.device_type(),
                    self.acked_features
                );
            }
            Err(e) => self.needs_reset(&e.to_string()),
        }
    }

    fn needs_reset(&mut self, why: &str) {
        tracing::warn!(
            "virtio-mmio {}: activation failed: {why}",
            self.device.device_type()
        );
        self.status |= status::DEVICE_NEEDS_RESET;
        let _ = self.interrupt.trigger(IrqKind::Config);
    }

    fn reset(&mut self) {
        if self.active {
            self.device.reset();
            self.active = false;
        }
        for q in &mut self.queues {
            q.reset();
        }
        self.status = 0;
        self.acked_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.interrupt_status.store(0, Ordering::SeqCst);
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            self.device.read_config(offset - reg::CONFIG, data);
            return;
        }
        let v = match (data.len(), offset % 4) {
            (4, 0) => self.read_reg(offset),
            _ => None,
        };
        match v {
            Some(v) => data.copy_from_slice(&v.to_le_bytes()),
            None => {
                data.fill(0);
                self.ignore("read", offset);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            if self.status & status::FAILED == 0 {
                self.device.write_config(offset - reg::CONFIG, data);
            }
            return;
        }
        match (<[u8; 4]>::try_from(data), offset % 4) {
            (Ok(b), 0) => self.write_reg(offset, u32::from_le_bytes(b)),
            _ => self.ignore("write", offset),
        }
    }
}

#[cfg(test)]
mod tests;
