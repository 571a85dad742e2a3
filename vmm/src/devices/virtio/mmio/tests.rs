//! The transport's register state machine, driven the way Linux's virtio_mmio driver does,
//! and the ways a driver can get it wrong.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use virtio_queue::QueueT;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::*;
use crate::devices::virtio::test_utils::CountingInterrupt;
use crate::devices::virtio::{ActivateError, DeviceFd};

/// size, desc, avail, used, event_idx
type QueueSeen = (u16, u64, u64, u64, bool);

#[derive(Debug, Default)]
struct Seen {
    activations: Vec<(u64, Vec<QueueSeen>)>,
    resets: u32,
    kicks: Vec<usize>,
    config_writes: Vec<(u64, Vec<u8>)>,
}

#[derive(Debug)]
struct FakeDevice {
    seen: Arc<Mutex<Seen>>,
    fail: bool,
}

impl VirtioDevice for FakeDevice {
    fn device_type(&self) -> u32 {
        42
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[256, 64]
    }
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | 0b101
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::devices::virtio::read_config_bytes(&[1, 2, 3, 4, 5, 6, 7, 8], offset, data);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.seen
            .lock()
            .unwrap()
            .config_writes
            .push((offset, data.to_vec()));
    }
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if self.fail {
            return Err(ActivateError::Backend("no".into()));
        }
        let qs = ctx
            .queues
            .iter()
            .map(|q| {
                (
                    q.size(),
                    q.desc_table(),
                    q.avail_ring(),
                    q.used_ring(),
                    q.event_idx_enabled(),
                )
            })
            .collect();
        self.seen
            .lock()
            .unwrap()
            .activations
            .push((ctx.acked_features, qs));
        Ok(())
    }
    fn reset(&mut self) {
        self.seen.lock().unwrap().resets += 1;
    }
    fn queue_event(&mut self, index: usize) {
        self.seen.lock().unwrap().kicks.push(index);
    }
    fn device_fds(&self) -> Vec<DeviceFd> {
        Vec::new()
    }
}

struct Harness {
    t: MmioTransport,
    seen: Arc<Mutex<Seen>>,
    irq: Arc<CountingInterrupt>,
    isr: Arc<AtomicU32>,
}

fn harness(fail: bool) -> Harness {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let irq = Arc::new(CountingInterrupt::default());
    let isr = Arc::new(AtomicU32::new(0));
    let dev = FakeDevice {
        seen: seen.clone(),
        fail,
    };
    let t = MmioTransport::new(Box::new(dev), mem, irq.clone(), isr.clone()).unwrap();
    Harness { t, seen, irq, isr }
}

impl Harness {
    fn r(&mut self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.t.read(off, &mut b);
        u32::from_le_bytes(b)
    }
    fn w(&mut self, off: u64, v: u32) {
        self.t.write(off, &v.to_le_bytes());
    }
    fn status(&mut self) -> u32 {
        self.r(reg::STATUS)
    }
    /// Reset, ACK, DRIVER, features, FEATURES_OK as Linux does.
    fn negotiate(&mut self, features: u64) {
        self.w(reg::STATUS, 0);
        self.w(reg::STATUS, status::ACKNOWLEDGE);
        self.w(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        self.w(reg::DRIVER_FEATURES_SEL, 1);
        self.w(reg::DRIVER_FEATURES, (features >> 32) as u32);
        self.w(reg::DRIVER_FEATURES_SEL, 0);
        self.w(reg::DRIVER_FEATURES, features as u32);
        self.w(
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
    }
    fn setup_queue(&mut self, q: u32, size: u32, base: u64) {
        self.w(reg::QUEUE_SEL, q);
        assert_eq!(self.r(reg::QUEUE_READY), 0);
        self.w(reg::QUEUE_NUM, size);
        self.w(reg::QUEUE_DESC_LOW, base as u32);
        self.w(reg::QUEUE_DESC_HIGH, (base >> 32) as u32);
        self.w(reg::QUEUE_DRIVER_LOW, (base + 0x1000) as u32);
        self.w(reg::QUEUE_DRIVER_HIGH, 0);
        self.w(reg::QUEUE_DEVICE_LOW, (base + 0x2000) as u32);
        self.w(reg::QUEUE_DEVICE_HIGH, 0);
        self.w(reg::QUEUE_READY, 1);
    }
    fn driver_ok(&mut self) {
        let s = self.status();
        self.w(reg::STATUS, s | status::DRIVER_OK);
    }
}

const OK_FEATURES: u64 = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | 0b1;

#[test]
fn identifies_as_a_modern_device() {
    let mut h = harness(false);
    assert_eq!(h.r(reg::MAGIC), MMIO_MAGIC);
    assert_eq!(h.r(reg::VERSION), 2);
    assert_eq!(h.r(reg::DEVICE_ID), 42);
    assert_eq!(h.r(reg::VENDOR_ID), VENDOR_ID);
    h.w(reg::DEVICE_FEATURES_SEL, 0);
    assert_eq!(h.r(reg::DEVICE_FEATURES), (1 << 29) | 0b101);
    h.w(reg::DEVICE_FEATURES_SEL, 1);
    assert_eq!(h.r(reg::DEVICE_FEATURES), 1);
    h.w(reg::DEVICE_FEATURES_SEL, 7);
    assert_eq!(h.r(reg::DEVICE_FEATURES), 0);
    // No shared memory regions.
    h.w(reg::SHM_SEL, 0);
    assert_eq!(h.r(reg::SHM_LEN_LOW), u32::MAX);
    assert_eq!(h.r(reg::SHM_LEN_HIGH), u32::MAX);
}

#[test]
fn linux_style_setup_activates_with_the_configured_queues() {
    let mut h = harness(false);
    h.negotiate(OK_FEATURES);
    assert_eq!(h.status() & status::FEATURES_OK, status::FEATURES_OK);
    h.w(reg::QUEUE_SEL, 0);
    assert_eq!(h.r(reg::QUEUE_NUM_MAX), 256);
    h.w(reg::QUEUE_SEL, 1);
    assert_eq!(h.r(reg::QUEUE_NUM_MAX), 64);
    h.w(reg::QUEUE_SEL, 2);
    assert_eq!(h.r(reg::QUEUE_NUM_MAX), 0, "no third queue");
    h.setup_queue(0, 128, 0x10000);
    h.setup_queue(1, 64, 0x20000);
    assert_eq!(h.r(reg::QUEUE_READY), 1);
    h.driver_ok();
    assert!(h.t.is_active());
    assert_eq!(h.status() & status::DRIVER_OK, status::DRIVER_OK);
    let seen = h.seen.lock().unwrap();
    assert_eq!(seen.activations.len(), 1);
    let (acked, qs) = &seen.activations[0];
    assert_eq!(*acked, OK_FEATURES);
    assert_eq!(qs[0], (128, 0x10000, 0x11000, 0x12000, true));
    assert_eq!(qs[1], (64, 0x20000, 0x21000, 0x22000, true));
}

#[test]
fn features_are_refused_without_version_1_or_with_unoffered_bits() {
    let mut h = harness(false);
    h.negotiate(0b1);
    assert_eq!(h.status() & status::FEATURES_OK, 0, "legacy driver refused");
    h.negotiate(VIRTIO_F_VERSION_1 | 0b10);
    assert_eq!(h.status() & status::FEATURES_OK, 0, "bit 1 was not offered");
    h.negotiate(VIRTIO_F_VERSION_1);
    assert_ne!(h.status() & status::FEATURES_OK, 0);
    // After FEATURES_OK the features are frozen.
    h.w(reg::DRIVER_FEATURES_SEL, 0);
    h.w(reg::DRIVER_FEATURES, 0xffff_ffff);
    h.setup_queue(0, 16, 0x10000);
    h.setup_queue(1, 16, 0x20000);
    h.driver_ok();
    assert_eq!(h.seen.lock().unwrap().activations[0].0, VIRTIO_F_VERSION_1);
}

#[test]
fn out_of_order_status_and_early_writes_are_ignored() {
    let mut h = harness(false);
    h.w(reg::STATUS, status::DRIVER);
    assert_eq!(h.status(), 0);
    h.w(reg::STATUS, status::ACKNOWLEDGE);
    // Features before DRIVER: ignored.
    h.w(reg::DRIVER_FEATURES, 0xffff_ffff);
    // DRIVER_OK straight away: ignored.
    h.w(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER_OK);
    assert_eq!(h.status(), status::ACKNOWLEDGE);
    h.w(reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    // Queue setup before FEATURES_OK: ignored.
    h.w(reg::QUEUE_SEL, 0);
    h.w(reg::QUEUE_READY, 1);
    assert_eq!(h.r(reg::QUEUE_READY), 0);
    let before = h.t.ignored_accesses();
    assert!(before >= 4);
    // Wrong sizes and alignments.
    h.t.write(reg::STATUS, &[1, 0]);
    h.t.write(reg::STATUS + 1, &[0, 0, 0, 0]);
    let mut b = [0xffu8; 2];
    h.t.read(reg::MAGIC, &mut b);
    assert_eq!(b, [0, 0]);
    let mut b4 = [0xffu8; 4];
    h.t.read(0x0f0, &mut b4);
    assert_eq!(b4, [0; 4], "unknown register");
    assert_eq!(h.t.ignored_accesses(), before + 4);
    assert!(!h.t.is_active());
    assert!(h.seen.lock().unwrap().activations.is_empty());
}

#[test]
fn failed_is_sticky_until_reset() {
    let mut h = harness(false);
    h.negotiate(OK_FEATURES);
    let s = h.status();
    h.w(reg::STATUS, s | status::FAILED);
    assert_ne!(h.status() & status::FAILED, 0);
    h.driver_ok();
    assert!(!h.t.is_active());
    h.w(reg::STATUS, 0);
    assert_eq!(h.status(), 0);
}

#[test]
fn queue_config_is_frozen_after_driver_ok_and_reset_clears_everything() {
    let mut h = harness(false);
    h.negotiate(OK_FEATURES);
    h.setup_queue(0, 128, 0x10000);
    h.setup_queue(1, 64, 0x20000);
    h.driver_ok();
    h.w(reg::QUEUE_SEL, 0);
    h.w(reg::QUEUE_NUM, 2);
    h.w(reg::QUEUE_READY, 0);
    assert_eq!(h.r(reg::QUEUE_READY), 1);
    h.isr.store(3, Ordering::SeqCst);
    h.w(reg::STATUS, 0);
    assert!(!h.t.is_active());
    assert_eq!(h.seen.lock().unwrap().resets, 1);
    assert_eq!(h.r(reg::INTERRUPT_STATUS), 0);
    h.w(reg::QUEUE_SEL, 0);
    assert_eq!(h.r(reg::QUEUE_READY), 0);
    // And the device can be brought up again.
    h.negotiate(OK_FEATURES);
    h.setup_queue(0, 32, 0x30000);
    h.setup_queue(1, 32, 0x40000);
    h.driver_ok();
    assert!(h.t.is_active());
    assert_eq!(h.seen.lock().unwrap().activations.len(), 2);
}

#[test]
fn failed_activation_asks_for_a_reset() {
    let mut h = harness(true);
    h.negotiate(OK_FEATURES);
    h.setup_queue(0, 16, 0x10000);
    h.setup_queue(1, 16, 0x20000);
    h.driver_ok();
    assert!(!h.t.is_active());
    assert_ne!(h.status() & status::DEVICE_NEEDS_RESET, 0);
    assert_eq!(h.irq.config.load(Ordering::SeqCst), 1);
}

#[test]
fn interrupt_status_is_acknowledged_bit_by_bit() {
    let mut h = harness(false);
    h.isr.store(
        IrqKind::Vring as u32 | IrqKind::Config as u32,
        Ordering::SeqCst,
    );
    assert_eq!(h.r(reg::INTERRUPT_STATUS), 3);
    h.w(reg::INTERRUPT_ACK, IrqKind::Vring as u32);
    assert_eq!(h.r(reg::INTERRUPT_STATUS), 2);
}

#[test]
fn notify_reaches_the_queue_eventfd_only_without_ioeventfd() {
    let mut h = harness(false);
    h.w(reg::QUEUE_NOTIFY, 1);
    assert_eq!(h.t.queue_evts()[1].read().unwrap(), 1);
    h.w(reg::QUEUE_NOTIFY, 5);
    assert!(h.t.queue_evts()[0].read().is_err());
    h.t.set_notify_on_exit(false);
    h.w(reg::QUEUE_NOTIFY, 0);
    assert!(
        h.t.queue_evts()[0].read().is_err(),
        "KVM signals it instead"
    );
    // Kicks reach the device only while it is active.
    h.t.queue_event(0);
    assert!(h.seen.lock().unwrap().kicks.is_empty());
    h.negotiate(OK_FEATURES);
    h.setup_queue(0, 16, 0x10000);
    h.setup_queue(1, 16, 0x20000);
    h.driver_ok();
    h.t.queue_event(1);
    assert_eq!(h.seen.lock().unwrap().kicks, vec![1]);
}

#[test]
fn config_space_goes_to_the_device() {
    let mut h = harness(false);
    let mut b = [0u8; 4];
    h.t.read(reg::CONFIG + 2, &mut b);
    assert_eq!(b, [3, 4, 5, 6]);
    h.t.read(reg::CONFIG + 6, &mut b);
    assert_eq!(b, [7, 8, 0, 0], "past the end reads zero");
    h.t.write(reg::CONFIG + 1, &[9]);
    assert_eq!(h.seen.lock().unwrap().config_writes, vec![(1, vec![9])]);
}
