//! virtio-net driven by a mock guest driver over a fake tap, with no VM.

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::devices::virtio::test_utils::CountingInterrupt;
use crate::devices::virtio::vsock::test_utils::{guest_mem, GuestMem, TestQueue};
use crate::devices::virtio::{ActivateContext, VirtioDevice};

#[derive(Debug)]
struct FakeTap {
    incoming: VecDeque<Vec<u8>>,
    sent: Vec<Vec<u8>>,
    evt: EventFd,
    fail_writes: bool,
}

impl FakeTap {
    fn new() -> Self {
        Self {
            incoming: VecDeque::new(),
            sent: Vec::new(),
            evt: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            fail_writes: false,
        }
    }
}

impl NetBackend for FakeTap {
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let f = self
            .incoming
            .pop_front()
            .ok_or_else(|| std::io::Error::from(ErrorKind::WouldBlock))?;
        buf[..f.len()].copy_from_slice(&f);
        Ok(f.len())
    }
    fn write_frame(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if self.fail_writes {
            return Err(std::io::Error::other("down"));
        }
        self.sent.push(buf.to_vec());
        Ok(())
    }
    fn raw_fd(&self) -> RawFd {
        self.evt.as_raw_fd()
    }
}

const MAC: [u8; 6] = [2, 0, 0, 0, 0, 7];
const BUF: u64 = 40 << 20;

struct Rig<'a> {
    mem: &'a GuestMem,
    rx: TestQueue<'a>,
    tx: TestQueue<'a>,
    dev: Net<FakeTap>,
    irq: Arc<CountingInterrupt>,
    next: u64,
}

impl<'a> Rig<'a> {
    fn new(mem: &'a GuestMem) -> Self {
        let rx = TestQueue::create(mem, 0, 16 << 20, 4 << 20);
        let tx = TestQueue::create(mem, 0x10_0000, 24 << 20, 4 << 20);
        let irq = Arc::new(CountingInterrupt::default());
        let mut dev = Net::new(FakeTap::new(), MAC);
        dev.activate(ActivateContext {
            mem: mem.clone(),
            interrupt: irq.clone(),
            queues: vec![rx.queue(), tx.queue()],
            acked_features: 0,
            queue_evts: Arc::new(Vec::new()),
        })
        .unwrap();
        Self {
            mem,
            rx,
            tx,
            dev,
            irq,
            next: BUF,
        }
    }

    fn put(&mut self, bytes: &[u8]) -> u64 {
        let a = self.next;
        self.next += (bytes.len() as u64).div_ceil(64) * 64 + 64;
        self.mem.write_slice(bytes, GuestAddress(a)).unwrap();
        a
    }

    fn frame(n: usize, fill: u8) -> Vec<u8> {
        let mut f = vec![0u8; VNET_HDR_LEN];
        f.extend(std::iter::repeat_n(fill, n));
        f
    }
}

#[test]
fn tx_gathers_the_chain_and_clears_offload_fields() {
    let mem = guest_mem();
    let mut r = Rig::new(&mem);
    let mut hdr = [0xeeu8; VNET_HDR_LEN];
    hdr[10..12].copy_from_slice(&0u16.to_le_bytes());
    let h = r.put(&hdr);
    let a = r.put(&[1u8; 60]);
    let b = r.put(&[2u8; 40]);
    r.tx.add_descs(&[(h, 12, false), (a, 60, false), (b, 40, false)]);
    r.dev.queue_event(TXQ);
    assert_eq!(
        r.tx.take_used().iter().map(|u| u.1).collect::<Vec<_>>(),
        vec![0]
    );
    let sent = &r.dev.backend().sent;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].len(), 112);
    assert_eq!(&sent[0][..VNET_HDR_LEN], &[0u8; VNET_HDR_LEN]);
    assert_eq!(&sent[0][12..72], &[1u8; 60][..]);
    assert_eq!(&sent[0][72..], &[2u8; 40][..]);
    assert_eq!(r.dev.metrics().tx_frames, 1);
    assert!(r.irq.vrings() >= 1);
}

#[test]
fn malformed_tx_chains_are_dropped_and_returned() {
    let mem = guest_mem();
    let mut r = Rig::new(&mem);
    let a = r.put(&[0u8; 64]);
    r.tx.add_descs(&[(a, 64, true)]);
    r.tx.add_descs(&[(a, 4, false)]);
    r.tx.add_descs(&[(1 << 40, 64, false)]);
    r.dev.queue_event(TXQ);
    assert_eq!(r.tx.take_used().len(), 3);
    assert!(r.dev.backend().sent.is_empty());
    assert_eq!(r.dev.metrics().tx_dropped, 3);
    // A backend failure is a drop too, not a stall.
    r.dev.backend_mut().fail_writes = true;
    let h = r.put(&[0u8; 76]);
    r.tx.add_descs(&[(h, 76, false)]);
    r.dev.queue_event(TXQ);
    assert_eq!(r.tx.take_used().len(), 1);
    assert_eq!(r.dev.metrics().tx_dropped, 4);
}

#[test]
fn rx_waits_for_buffers_then_delivers_in_order() {
    let mem = guest_mem();
    let mut r = Rig::new(&mem);
    r.dev
        .backend_mut()
        .incoming
        .push_back(Rig::frame(100, 0xa1));
    r.dev.backend_mut().incoming.push_back(Rig::frame(50, 0xa2));
    // The tap is readable but the guest has no buffer: nothing is lost.
    r.dev.device_event(0, EventSet::IN);
    assert_eq!(r.rx.take_used().len(), 0);
    let h1 = r.rx.add_rx(&[12, 2000]);
    r.dev.queue_event(RXQ);
    let used = r.rx.take_used();
    assert_eq!(used, vec![(h1, 112)]);
    let got = r.rx.read_mem(r.rx.desc_addr(h1), 12);
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1, "num_buffers");
    let body = r.rx.read_mem(r.rx.desc_addr(h1 + 1), 100);
    assert_eq!(body, vec![0xa1; 100]);
    let h2 = r.rx.add_rx(&[1600]);
    r.dev.queue_event(RXQ);
    assert_eq!(r.rx.take_used(), vec![(h2, 62)]);
    assert_eq!(r.dev.metrics().rx_frames, 2);
}

#[test]
fn rx_frames_larger_than_the_buffer_are_dropped() {
    let mem = guest_mem();
    let mut r = Rig::new(&mem);
    r.dev.backend_mut().incoming.push_back(Rig::frame(1000, 1));
    r.dev.backend_mut().incoming.push_back(Rig::frame(10, 2));
    let small = r.rx.add_rx(&[100]);
    let big = r.rx.add_rx(&[2000]);
    r.dev.device_event(0, EventSet::IN);
    assert_eq!(r.rx.take_used(), vec![(small, 0), (big, 22)]);
    assert_eq!(r.dev.metrics().rx_dropped, 1);
    // Read-only RX buffers are malformed.
    r.dev.backend_mut().incoming.push_back(Rig::frame(10, 3));
    let ro = r.put(&[0u8; 64]);
    r.rx.add_descs(&[(ro, 64, false)]);
    r.dev.queue_event(RXQ);
    assert_eq!(r.rx.take_used().len(), 1);
    assert_eq!(r.dev.metrics().rx_dropped, 2);
}

#[test]
fn inactive_device_drains_the_tap_and_reports_its_mac() {
    let mut dev = Net::new(FakeTap::new(), MAC);
    dev.backend_mut().incoming.push_back(vec![0; 40]);
    dev.device_event(0, EventSet::IN);
    assert!(dev.backend().incoming.is_empty());
    let mut m = [0u8; 6];
    dev.read_config(0, &mut m);
    assert_eq!(m, MAC);
    assert_ne!(dev.features() & VIRTIO_NET_F_MAC, 0);
    let fds = dev.device_fds();
    assert!(fds[0].events.contains(EventSet::EDGE_TRIGGERED));
}
