//! Test helpers: a guest driver over `virtio_queue::mock::MockSplitQueue` in plain memory.
//!
//! [`TestQueue`] plays the guest: it writes descriptor chains (TX packets split however a
//! test wants, RX buffers, raw hostile chains) into the descriptor table and available ring,
//! and reads back what the device put in the used ring. Descriptor indices and data buffers
//! are reused ring-style, so a test can push megabytes through one queue as long as it lets
//! the device consume what it adds.
//!
//! The used ring is placed by hand: `MockSplitQueue` (virtio-queue 0.18) computes the end of
//! its available ring as `start + len` bytes instead of `start + 2 * len`, so its own used
//! ring overlaps the upper half of the available ring and a device that has used more than
//! `len / 2` entries overwrites heads the driver published.

use std::collections::VecDeque;

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::packet::{Header, PKT_HEADER_SIZE};

/// Guest memory for tests: 64 MiB at address 0.
pub type GuestMem = GuestMemoryMmap<()>;

/// Makes the test guest memory.
pub fn guest_mem() -> GuestMem {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).expect("test memory")
}

/// Queue size used by the tests.
pub const TEST_QUEUE_SIZE: u16 = 256;

/// One virtqueue as the guest driver sees it.
#[allow(missing_debug_implementations)] // MockSplitQueue has no Debug.
pub struct TestQueue<'a> {
    mem: &'a GuestMem,
    mock: MockSplitQueue<'a, GuestMem>,
    size: u16,
    next_desc: u16,
    avail_idx: u16,
    data_start: u64,
    data_end: u64,
    data_next: u64,
    /// Heads added and not yet seen in the used ring, oldest first.
    outstanding: VecDeque<u16>,
    used_seen: u16,
    used_addr: u64,
}

impl<'a> TestQueue<'a> {
    /// A queue at address 0 with buffers at 16 MiB.
    pub fn new(mem: &'a GuestMem) -> Self {
        Self::create(mem, 0, 16 << 20, 8 << 20)
    }

    /// A queue whose rings start at `base` and whose buffers live in
    /// `[data_start, data_start + data_len)`.
    pub fn create(mem: &'a GuestMem, base: u64, data_start: u64, data_len: u64) -> Self {
        let mock = MockSplitQueue::create(mem, GuestAddress(base), TEST_QUEUE_SIZE);
        // flags, idx, ring, used_event; then the used ring, 4-aligned, with a margin.
        let avail_end = mock.avail_addr().0 + 4 + 2 * u64::from(TEST_QUEUE_SIZE) + 2;
        let used_addr = (avail_end + 64) & !3;
        mem.write_slice(&[0u8; 4], GuestAddress(used_addr))
            .expect("used ring header");
        Self {
            mem,
            mock,
            size: TEST_QUEUE_SIZE,
            next_desc: 0,
            avail_idx: 0,
            data_start,
            data_end: data_start + data_len,
            data_next: data_start,
            outstanding: VecDeque::new(),
            used_seen: 0,
            used_addr,
        }
    }

    /// The device's view of this queue (ready, addresses set).
    pub fn queue(&self) -> Queue {
        let mut q: Queue = self.mock.create_queue().expect("mock queue");
        q.try_set_used_ring_address(GuestAddress(self.used_addr))
            .expect("used ring address");
        q
    }

    fn alloc_data(&mut self, len: u32) -> u64 {
        let len = u64::from(len).max(1);
        if self.data_next + len > self.data_end {
            self.data_next = self.data_start;
        }
        let a = self.data_next;
        self.data_next += len.div_ceil(16) * 16;
        a
    }

    /// How many more descriptors can be added before the device must consume some.
    pub fn room(&self) -> usize {
        (self.size as usize).saturating_sub(self.outstanding.len())
    }

    /// Adds a chain of `(addr, len, write_only)` descriptors; returns the head index.
    pub fn add_descs(&mut self, descs: &[(u64, u32, bool)]) -> u16 {
        assert!(
            self.outstanding.len() + descs.len() <= self.size as usize,
            "test queue full: let the device consume first"
        );
        let head = self.next_desc;
        for (i, (addr, len, write)) in descs.iter().enumerate() {
            let idx = (head + i as u16) % self.size;
            let last = i + 1 == descs.len();
            let mut flags = if *write { VRING_DESC_F_WRITE as u16 } else { 0 };
            if !last {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let next = (idx + 1) % self.size;
            self.mock
                .desc_table()
                .store(
                    idx,
                    RawDescriptor::from(SplitDescriptor::new(*addr, *len, flags, next)),
                )
                .expect("store descriptor");
        }
        self.next_desc = (head + descs.len() as u16) % self.size;
        for _ in 1..descs.len() {
            // Count every descriptor the chain holds, so that indices are not reused early.
            self.outstanding.push_back(u16::MAX);
        }
        self.publish(head);
        head
    }

    /// Makes `head` available (also used for hand-made descriptor tables).
    pub fn publish(&mut self, head: u16) {
        self.mock
            .avail()
            .ring()
            .ref_at((self.avail_idx % self.size) as usize)
            .expect("avail slot")
            .store(head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mock.avail().idx().store(self.avail_idx);
        self.outstanding.push_back(head);
    }

    /// Writes one raw descriptor without publishing anything (for looping chains).
    pub fn store_desc(&mut self, idx: u16, addr: u64, len: u32, flags: u16, next: u16) {
        self.mock
            .desc_table()
            .store(
                idx,
                RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next)),
            )
            .expect("store descriptor");
    }

    /// Adds a chain of zero-filled descriptors `(len, write_only)`.
    pub fn add_chain_raw(&mut self, descs: &[(u32, bool)]) -> u16 {
        let d: Vec<(u64, u32, bool)> = descs
            .iter()
            .map(|(len, w)| (self.alloc_data(*len), *len, *w))
            .collect();
        self.add_descs(&d)
    }

    /// Adds a TX chain: one descriptor holding `first`, then one per piece.
    pub fn add_tx_split(&mut self, first: &[u8], pieces: &[&[u8]]) -> u16 {
        let mut d = Vec::new();
        for part in std::iter::once(first).chain(pieces.iter().copied()) {
            let addr = self.alloc_data(part.len() as u32);
            self.mem
                .write_slice(part, GuestAddress(addr))
                .expect("write TX buffer");
            d.push((addr, part.len() as u32, false));
        }
        self.add_descs(&d)
    }

    /// Adds a TX packet the way Linux does for small packets: header, then data if any.
    pub fn add_tx(&mut self, hdr: &Header, data: &[u8]) -> u16 {
        if data.is_empty() {
            self.add_tx_split(&hdr.encode(), &[])
        } else {
            self.add_tx_split(&hdr.encode(), &[data])
        }
    }

    /// Adds an RX buffer chain of write-only descriptors of the given lengths.
    pub fn add_rx(&mut self, lens: &[u32]) -> u16 {
        let d: Vec<(u32, bool)> = lens.iter().map(|l| (*l, true)).collect();
        self.add_chain_raw(&d)
    }

    /// How many entries the device has put in the used ring, ever (wrapping).
    pub fn used_idx(&self) -> u16 {
        self.mem
            .read_obj::<u16>(GuestAddress(self.used_addr + 2))
            .expect("used idx")
    }

    /// The used-ring entry `i` (0-based, wrapping): (head, len).
    pub fn used_elem(&self, i: u16) -> (u16, u32) {
        let at = self.used_addr + 4 + 8 * u64::from(i % self.size);
        let id: u32 = self.mem.read_obj(GuestAddress(at)).expect("used id");
        let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).expect("used len");
        (id as u16, len)
    }

    /// Returns the used entries not yet returned by this method, and frees their slots.
    pub fn take_used(&mut self) -> Vec<(u16, u32)> {
        let mut out = Vec::new();
        while self.used_seen != self.used_idx() {
            let e = self.used_elem(self.used_seen);
            self.used_seen = self.used_seen.wrapping_add(1);
            // Free the slots of the chain (heads come back in order in these tests).
            while let Some(h) = self.outstanding.pop_front() {
                if h == e.0 {
                    break;
                }
            }
            out.push(e);
        }
        out
    }

    /// Reads the packet the device wrote into the RX chain with head `head`, `len` bytes.
    pub fn read_rx(&self, head: u16, len: u32) -> (Header, Vec<u8>) {
        let mut bytes = Vec::new();
        let mut idx = head;
        loop {
            let d = SplitDescriptor::from(self.mock.desc_table().load(idx).expect("desc"));
            let want = (len as usize - bytes.len()).min(d.len() as usize);
            let mut buf = vec![0u8; want];
            self.mem
                .read_slice(&mut buf, d.addr())
                .expect("read RX buffer");
            bytes.extend_from_slice(&buf);
            if bytes.len() == len as usize || d.flags() & VRING_DESC_F_NEXT as u16 == 0 {
                break;
            }
            idx = d.next();
        }
        assert!(
            bytes.len() >= PKT_HEADER_SIZE,
            "RX packet shorter than a header"
        );
        let mut raw = [0u8; PKT_HEADER_SIZE];
        raw.copy_from_slice(&bytes[..PKT_HEADER_SIZE]);
        (Header::decode(&raw), bytes[PKT_HEADER_SIZE..].to_vec())
    }

    /// Reads `len` bytes at `addr` (for the event queue).
    pub fn read_mem(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        self.mem
            .read_slice(&mut buf, GuestAddress(addr))
            .expect("read memory");
        buf
    }

    /// The address of descriptor `idx`'s buffer.
    pub fn desc_addr(&self, idx: u16) -> u64 {
        SplitDescriptor::from(self.mock.desc_table().load(idx).expect("desc"))
            .addr()
            .0
    }
}
