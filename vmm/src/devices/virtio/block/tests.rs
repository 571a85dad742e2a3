//! virtio-blk driven by a mock guest driver (`MockSplitQueue` through the vsock tests'
//! `TestQueue`), against a real temporary image file, with no VM.

use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress};

use super::request::kind;
use super::*;
use crate::devices::virtio::test_utils::CountingInterrupt;
use crate::devices::virtio::vsock::test_utils::{guest_mem, GuestMem, TestQueue};
use crate::devices::virtio::{ActivateContext, VirtioDevice};

const SECTORS: u64 = 64;
/// Where the test puts request buffers (the queue's own area is below 16 MiB).
const BUF: u64 = 32 << 20;

struct Disk {
    path: std::path::PathBuf,
}

impl Disk {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("moat-blk-{name}-{}", std::process::id()));
        let mut f = std::fs::File::create(&path).unwrap();
        let data: Vec<u8> = (0..SECTORS * 512).map(|i| (i / 512) as u8).collect();
        f.write_all(&data).unwrap();
        Self { path }
    }
    fn open(&self, read_only: bool) -> Block {
        Block::new(&BlockConfig {
            path: self.path.clone(),
            read_only,
            id: "moat-test-disk".into(),
        })
        .unwrap()
    }
    fn bytes(&self, off: u64, len: usize) -> Vec<u8> {
        let mut f = std::fs::File::open(&self.path).unwrap();
        f.seek(SeekFrom::Start(off)).unwrap();
        let mut b = vec![0; len];
        f.read_exact(&mut b).unwrap();
        b
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

struct Rig<'a> {
    mem: &'a GuestMem,
    q: TestQueue<'a>,
    dev: Block,
    irq: Arc<CountingInterrupt>,
    next: u64,
}

impl<'a> Rig<'a> {
    fn new(mem: &'a GuestMem, dev: Block) -> Self {
        let q = TestQueue::new(mem);
        let irq = Arc::new(CountingInterrupt::default());
        let mut dev = dev;
        dev.activate(ActivateContext {
            mem: mem.clone(),
            interrupt: irq.clone(),
            queues: vec![q.queue()],
            acked_features: 0,
            queue_evts: Arc::new(Vec::new()),
        })
        .unwrap();
        Self {
            mem,
            q,
            dev,
            irq,
            next: BUF,
        }
    }

    fn alloc(&mut self, len: u32) -> u64 {
        let a = self.next;
        self.next += u64::from(len).div_ceil(64) * 64 + 64;
        a
    }

    fn header(&mut self, t: u32, sector: u64) -> (u64, u32, bool) {
        let a = self.alloc(16);
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&t.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&h, GuestAddress(a)).unwrap();
        (a, 16, false)
    }

    fn status(&mut self) -> (u64, u32, bool) {
        let a = self.alloc(1);
        self.mem.write_obj(0xffu8, GuestAddress(a)).unwrap();
        (a, 1, true)
    }

    fn data(&mut self, bytes: &[u8], write_only: bool) -> (u64, u32, bool) {
        let a = self.alloc(bytes.len() as u32);
        self.mem.write_slice(bytes, GuestAddress(a)).unwrap();
        (a, bytes.len() as u32, write_only)
    }

    /// Submits one chain, runs the device, returns (used len, status byte).
    fn submit(&mut self, descs: &[(u64, u32, bool)]) -> (u32, u8) {
        self.q.add_descs(descs);
        assert_eq!(self.dev.process_queue(), 1);
        let used = self.q.take_used();
        assert_eq!(used.len(), 1);
        let last = descs.last().unwrap();
        let st: u8 = self
            .mem
            .read_obj(GuestAddress(last.0 + u64::from(last.1) - 1))
            .unwrap();
        (used[0].1, st)
    }

    fn read(&self, d: (u64, u32, bool)) -> Vec<u8> {
        let mut b = vec![0; d.1 as usize];
        self.mem.read_slice(&mut b, GuestAddress(d.0)).unwrap();
        b
    }
}

#[test]
fn writes_then_reads_back_across_descriptors() {
    let disk = Disk::new("rw");
    let mem = guest_mem();
    let mut r = Rig::new(&mem, disk.open(false));
    let h = r.header(kind::OUT, 3);
    let a = r.data(&[0xaa; 512], false);
    let b = r.data(&[0xbb; 1024], false);
    let s = r.status();
    assert_eq!(r.submit(&[h, a, b, s]), (1, VIRTIO_BLK_S_OK));
    assert_eq!(disk.bytes(3 * 512, 512), vec![0xaa; 512]);
    assert_eq!(disk.bytes(4 * 512, 1024), vec![0xbb; 1024]);
    assert_eq!(
        disk.bytes(6 * 512, 1),
        vec![6],
        "the next sector is untouched"
    );

    let h = r.header(kind::IN, 2);
    let x = r.data(&[0; 1024], true);
    let y = r.data(&[0; 512], true);
    let s = r.status();
    assert_eq!(r.submit(&[h, x, y, s]), (1537, VIRTIO_BLK_S_OK));
    let got = [r.read(x), r.read(y)].concat();
    assert_eq!(&got[..512], &[2u8; 512][..]);
    assert_eq!(&got[512..1024], &[0xaa; 512][..]);
    assert_eq!(&got[1024..], &[0xbb; 512][..]);
    let m = r.dev.metrics();
    assert_eq!((m.read_bytes, m.write_bytes, m.requests), (1536, 1536, 2));
    assert!(r.irq.vrings() >= 1);
}

#[test]
fn flush_get_id_and_unsupported_types() {
    let disk = Disk::new("misc");
    let mem = guest_mem();
    let mut r = Rig::new(&mem, disk.open(false));
    let h = r.header(kind::FLUSH, 0);
    let s = r.status();
    assert_eq!(r.submit(&[h, s]), (1, VIRTIO_BLK_S_OK));
    let h = r.header(kind::GET_ID, 0);
    let id = r.data(&[0xff; 20], true);
    let s = r.status();
    assert_eq!(r.submit(&[h, id, s]), (21, VIRTIO_BLK_S_OK));
    assert_eq!(&r.read(id)[..15], b"moat-test-disk\0");
    let h = r.header(99, 0);
    let s = r.status();
    assert_eq!(r.submit(&[h, s]), (1, VIRTIO_BLK_S_UNSUPP));
    let m = r.dev.metrics();
    assert_eq!((m.flushes, m.unsupported), (1, 1));
}

#[test]
fn out_of_range_and_read_only_writes_fail() {
    let disk = Disk::new("ro");
    let mem = guest_mem();
    let mut r = Rig::new(&mem, disk.open(true));
    assert_ne!(r.dev.features() & features::RO, 0);
    assert_eq!(r.dev.features() & features::DISCARD, 0);
    let h = r.header(kind::OUT, 0);
    let a = r.data(&[1; 512], false);
    let s = r.status();
    assert_eq!(r.submit(&[h, a, s]), (1, VIRTIO_BLK_S_IOERR));
    assert_eq!(disk.bytes(0, 1), vec![0]);
    let h = r.header(kind::IN, SECTORS - 1);
    let a = r.data(&[0; 1024], true);
    let s = r.status();
    assert_eq!(
        r.submit(&[h, a, s]),
        (1, VIRTIO_BLK_S_IOERR),
        "one sector past the end"
    );
    let h = r.header(kind::IN, u64::MAX);
    let a = r.data(&[0; 512], true);
    let s = r.status();
    assert_eq!(
        r.submit(&[h, a, s]),
        (1, VIRTIO_BLK_S_IOERR),
        "sector overflow"
    );
    assert_eq!(r.dev.metrics().io_errors, 3);
}

#[test]
fn discard_punches_a_hole() {
    let disk = Disk::new("discard");
    let mem = guest_mem();
    let mut r = Rig::new(&mem, disk.open(false));
    let mut seg = [0u8; 16];
    seg[0..8].copy_from_slice(&8u64.to_le_bytes());
    seg[8..12].copy_from_slice(&8u32.to_le_bytes());
    let h = r.header(kind::DISCARD, 0);
    let d = r.data(&seg, false);
    let s = r.status();
    assert_eq!(r.submit(&[h, d, s]), (1, VIRTIO_BLK_S_OK));
    assert_eq!(disk.bytes(8 * 512, 4096), vec![0; 4096]);
    assert_eq!(disk.bytes(16 * 512, 1), vec![16]);
    // A flag on a discard is not supported.
    seg[12] = 1;
    let h = r.header(kind::DISCARD, 0);
    let d = r.data(&seg, false);
    let s = r.status();
    assert_eq!(r.submit(&[h, d, s]), (1, VIRTIO_BLK_S_UNSUPP));
}

#[test]
fn malformed_chains_get_ioerr_or_nothing_and_are_always_returned() {
    let disk = Disk::new("bad");
    let mem = guest_mem();
    let mut r = Rig::new(&mem, disk.open(false));
    // Data in the wrong direction for a read.
    let h = r.header(kind::IN, 0);
    let a = r.data(&[0; 512], false);
    let s = r.status();
    assert_eq!(r.submit(&[h, a, s]), (1, VIRTIO_BLK_S_IOERR));
    // Not a whole sector.
    let h = r.header(kind::OUT, 0);
    let a = r.data(&[0; 100], false);
    let s = r.status();
    assert_eq!(r.submit(&[h, a, s]), (1, VIRTIO_BLK_S_IOERR));
    // Header shorter than 16 bytes.
    let (ha, _, _) = r.header(kind::IN, 0);
    let s = r.status();
    assert_eq!(r.submit(&[(ha, 8, false), s]), (1, VIRTIO_BLK_S_IOERR));
    // Write-only header.
    let (ha, hl, _) = r.header(kind::FLUSH, 0);
    let s = r.status();
    assert_eq!(r.submit(&[(ha, hl, true), s]), (1, VIRTIO_BLK_S_IOERR));
    // Status read-only: nothing can be written back, the chain still comes back, with 0.
    let h = r.header(kind::FLUSH, 0);
    let (sa, _, _) = r.status();
    r.q.add_descs(&[h, (sa, 1, false)]);
    r.dev.process_queue();
    let used = r.q.take_used();
    assert_eq!(used.len(), 1);
    assert_eq!(used[0].1, 0);
    // Data outside guest memory.
    let h = r.header(kind::IN, 0);
    let s = r.status();
    assert_eq!(
        r.submit(&[h, (1 << 40, 512, true), s]),
        (1, VIRTIO_BLK_S_IOERR)
    );
    // A lone descriptor.
    let h = r.header(kind::FLUSH, 0);
    r.q.add_descs(&[h]);
    r.dev.process_queue();
    assert_eq!(r.q.take_used().len(), 1);
    assert_eq!(r.dev.metrics().invalid, 7);
    assert_eq!(r.dev.metrics().requests, 0);
}

#[test]
fn config_space_reports_capacity_and_limits() {
    let disk = Disk::new("cfg");
    let dev = disk.open(false);
    let mut b = [0u8; 8];
    dev.read_config(0, &mut b);
    assert_eq!(u64::from_le_bytes(b), SECTORS);
    let mut w = [0u8; 4];
    dev.read_config(20, &mut w);
    assert_eq!(u32::from_le_bytes(w), 512);
    dev.read_config(12, &mut w);
    assert_eq!(u32::from_le_bytes(w), u32::from(QUEUE_SIZE) - 2);
    dev.read_config(200, &mut w);
    assert_eq!(w, [0; 4]);
}

#[test]
fn nothing_happens_before_activation() {
    let disk = Disk::new("idle");
    let mut dev = disk.open(false);
    assert_eq!(dev.process_queue(), 0);
    dev.reset();
    assert_eq!(dev.process_queue(), 0);
}
