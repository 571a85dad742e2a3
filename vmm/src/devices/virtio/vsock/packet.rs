//! vsock packets on the wire: the 44-byte header, gathering TX chains and scattering RX chains.
//!
//! Data flow: [`gather_tx`] walks a device-readable TX chain descriptor by descriptor and
//! copies the header and then exactly `len` payload bytes into a caller-owned buffer of
//! `PKT_HEADER_SIZE + MAX_PKT_DATA` bytes, however the guest split them (Linux 6.12 sends
//! packets over about 32 KiB as a header descriptor plus several data descriptors; the
//! `virtio-vsock` crate's `from_tx_virtq_chain` accepts only one data descriptor). The header
//! bytes are decoded by the `virtio-vsock` crate's [`VsockPacket`] accessors into a plain
//! [`Header`]. [`write_rx`] does the reverse into a device-writable RX chain.
//!
//! Nothing here trusts the guest: descriptor directions are checked, lengths are summed with
//! overflow checks, the header's `len` is bounded before anything is copied, and guest memory
//! is only touched through `vm-memory`'s checked accessors.

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use virtio_vsock::packet::VsockPacket;
use vm_memory::{Address, Bytes, GuestMemory};

pub use virtio_vsock::packet::PKT_HEADER_SIZE;

use super::MAX_PKT_DATA;

/// The size of the buffer [`gather_tx`] needs.
pub const TX_BUF_SIZE: usize = PKT_HEADER_SIZE + MAX_PKT_DATA;

/// What can be wrong with a descriptor chain or the packet in it.
#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    /// A TX descriptor the device should read is marked device-writable.
    #[error("TX chain holds a device-writable descriptor")]
    WriteOnlyInTx,
    /// An RX descriptor the device should write is read-only.
    #[error("RX chain holds a device-readable descriptor")]
    ReadOnlyInRx,
    /// The chain ends before the header does.
    #[error("chain too short for the {PKT_HEADER_SIZE}-byte header ({0} bytes)")]
    ShortHeader(usize),
    /// The header announces more payload than a packet may carry.
    #[error("header len {} exceeds {MAX_PKT_DATA}", .0.len)]
    TooLong(Header),
    /// The chain ends before the payload the header announces.
    #[error("chain holds {got} of the {} payload bytes the header announces", .hdr.len)]
    ShortData {
        /// The (valid) header.
        hdr: Header,
        /// Payload bytes found.
        got: usize,
    },
    /// A descriptor points outside guest memory.
    #[error("descriptor points outside guest memory")]
    Memory(#[source] vm_memory::GuestMemoryError),
    /// The buffer given to [`gather_tx`] is smaller than [`TX_BUF_SIZE`].
    #[error("gather buffer of {0} bytes is smaller than {TX_BUF_SIZE}")]
    SmallBuffer(usize),
    /// The packet does not fit the RX chain.
    #[error("RX chain of {cap} bytes cannot hold a {need}-byte packet")]
    RxTooSmall {
        /// Bytes available.
        cap: usize,
        /// Bytes needed.
        need: usize,
    },
}

impl PacketError {
    /// The header, when it was read intact (so that the connection it names can be reset).
    pub fn header(&self) -> Option<&Header> {
        match self {
            PacketError::TooLong(hdr) | PacketError::ShortData { hdr, .. } => Some(hdr),
            _ => None,
        }
    }
}

/// A decoded vsock header (`struct virtio_vsock_hdr`), in host byte order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    /// Source CID.
    pub src_cid: u64,
    /// Destination CID.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length.
    pub len: u32,
    /// Socket type (`TYPE_STREAM`).
    pub type_: u16,
    /// Operation (`OP_*`).
    pub op: u16,
    /// Op-specific flags (`SHUTDOWN_*`).
    pub flags: u32,
    /// The sender's receive buffer size.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer, ever (wrapping).
    pub fwd_cnt: u32,
}

impl Header {
    /// Decodes the little-endian wire form with the `virtio-vsock` crate's accessors.
    pub fn decode(raw: &[u8; PKT_HEADER_SIZE]) -> Header {
        let mut storage = [0u8; PKT_HEADER_SIZE];
        // SAFETY: `storage` outlives `pkt` (both are locals and `pkt` is dropped at the end of
        // this block), is exactly PKT_HEADER_SIZE bytes, and nothing else accesses it while
        // `pkt` exists.
        let mut pkt = unsafe { VsockPacket::new(&mut storage, None) }
            .expect("the header buffer is exactly PKT_HEADER_SIZE bytes");
        pkt.set_header_from_raw(raw)
            .expect("the raw header is exactly PKT_HEADER_SIZE bytes");
        Header {
            src_cid: pkt.src_cid(),
            dst_cid: pkt.dst_cid(),
            src_port: pkt.src_port(),
            dst_port: pkt.dst_port(),
            len: pkt.len(),
            type_: pkt.type_(),
            op: pkt.op(),
            flags: pkt.flags(),
            buf_alloc: pkt.buf_alloc(),
            fwd_cnt: pkt.fwd_cnt(),
        }
    }

    /// Encodes to the little-endian wire form with the `virtio-vsock` crate's setters.
    pub fn encode(&self) -> [u8; PKT_HEADER_SIZE] {
        let mut storage = [0u8; PKT_HEADER_SIZE];
        {
            // SAFETY: as in `decode`: `storage` outlives `pkt`, which this block drops before
            // `storage` is read, and has exactly the header's size.
            let mut pkt = unsafe { VsockPacket::new(&mut storage, None) }
                .expect("the header buffer is exactly PKT_HEADER_SIZE bytes");
            pkt.set_src_cid(self.src_cid)
                .set_dst_cid(self.dst_cid)
                .set_src_port(self.src_port)
                .set_dst_port(self.dst_port)
                .set_len(self.len)
                .set_type(self.type_)
                .set_op(self.op)
                .set_flags(self.flags)
                .set_buf_alloc(self.buf_alloc)
                .set_fwd_cnt(self.fwd_cnt);
        }
        storage
    }
}

/// A TX packet gathered by [`gather_tx`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gathered {
    /// The header.
    pub hdr: Header,
    /// How many descriptors held payload bytes (more than one: the 6.12 nonlinear case).
    pub data_descs: usize,
}

/// Gathers the packet in a TX chain into `buf` (at least [`TX_BUF_SIZE`] bytes).
///
/// Returns the header; the payload is `buf[PKT_HEADER_SIZE..PKT_HEADER_SIZE + len]`.
/// Descriptors after the payload's last byte are ignored. The chain iterator of
/// `virtio-queue` already ends looping and out-of-table chains after at most the queue size
/// descriptors.
pub fn gather_tx<M>(chain: DescriptorChain<M>, buf: &mut [u8]) -> Result<Gathered, PacketError>
where
    M: Deref + Clone,
    M::Target: GuestMemory,
{
    if buf.len() < TX_BUF_SIZE {
        return Err(PacketError::SmallBuffer(buf.len()));
    }
    let mem = chain.memory();
    let mut need = PKT_HEADER_SIZE;
    let mut have = 0usize;
    let mut hdr: Option<Header> = None;
    let mut data_descs = 0;
    for desc in chain.clone() {
        if desc.is_write_only() {
            return Err(PacketError::WriteOnlyInTx);
        }
        let mut offset = 0u64;
        let mut left = desc.len() as usize;
        let mut holds_data = false;
        while left > 0 && have < need {
            let n = left.min(need - have);
            let addr = desc.addr().checked_add(offset).ok_or(PacketError::Memory(
                vm_memory::GuestMemoryError::InvalidGuestAddress(desc.addr()),
            ))?;
            mem.read_slice(&mut buf[have..have + n], addr)
                .map_err(PacketError::Memory)?;
            holds_data |= have + n > PKT_HEADER_SIZE;
            have += n;
            left -= n;
            offset += n as u64;
            if hdr.is_none() && have == PKT_HEADER_SIZE {
                let mut raw = [0u8; PKT_HEADER_SIZE];
                raw.copy_from_slice(&buf[..PKT_HEADER_SIZE]);
                let h = Header::decode(&raw);
                if h.len as usize > MAX_PKT_DATA {
                    return Err(PacketError::TooLong(h));
                }
                need = PKT_HEADER_SIZE + h.len as usize;
                hdr = Some(h);
            }
        }
        data_descs += usize::from(holds_data);
        if hdr.is_some() && have == need {
            break;
        }
    }
    match hdr {
        None => Err(PacketError::ShortHeader(have)),
        Some(h) if have < need => Err(PacketError::ShortData {
            hdr: h,
            got: have - PKT_HEADER_SIZE,
        }),
        Some(hdr) => Ok(Gathered { hdr, data_descs }),
    }
}

/// The bytes an RX chain can hold, capped at `PKT_HEADER_SIZE + MAX_PKT_DATA`; every
/// descriptor must be device-writable.
pub fn rx_capacity<M>(chain: &DescriptorChain<M>) -> Result<usize, PacketError>
where
    M: Deref + Clone,
    M::Target: GuestMemory,
{
    let mut cap = 0usize;
    for desc in chain.clone() {
        if !desc.is_write_only() {
            return Err(PacketError::ReadOnlyInRx);
        }
        cap = cap.saturating_add(desc.len() as usize);
        if cap >= TX_BUF_SIZE {
            return Ok(TX_BUF_SIZE);
        }
    }
    Ok(cap)
}

/// Writes `hdr` (whose `len` must equal `data.len()`) and `data` into an RX chain; returns the
/// bytes written, for the used ring.
pub fn write_rx<M>(chain: DescriptorChain<M>, hdr: &Header, data: &[u8]) -> Result<u32, PacketError>
where
    M: Deref + Clone,
    M::Target: GuestMemory,
{
    debug_assert_eq!(hdr.len as usize, data.len());
    let raw = hdr.encode();
    let total = PKT_HEADER_SIZE + data.len();
    let byte_at = |i: usize| -> &[u8] {
        if i < PKT_HEADER_SIZE {
            &raw[i..]
        } else {
            &data[i - PKT_HEADER_SIZE..]
        }
    };
    let mem = chain.memory();
    let mut done = 0usize;
    for desc in chain.clone() {
        if !desc.is_write_only() {
            return Err(PacketError::ReadOnlyInRx);
        }
        let mut offset = 0u64;
        let mut room = desc.len() as usize;
        while room > 0 && done < total {
            // Header bytes and data bytes are copied separately, so a descriptor boundary
            // anywhere (inside the header included) works.
            let src = byte_at(done);
            let n = room.min(src.len()).min(total - done);
            let addr = desc.addr().checked_add(offset).ok_or(PacketError::Memory(
                vm_memory::GuestMemoryError::InvalidGuestAddress(desc.addr()),
            ))?;
            mem.write_slice(&src[..n], addr)
                .map_err(PacketError::Memory)?;
            done += n;
            room -= n;
            offset += n as u64;
        }
        if done == total {
            // `total` is at most 44 + 64 KiB, so it fits in u32.
            return Ok(total as u32);
        }
    }
    Err(PacketError::RxTooSmall {
        cap: done,
        need: total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::vsock::test_utils::{guest_mem, TestQueue};
    use crate::devices::virtio::vsock::{OP_RW, TYPE_STREAM};
    use virtio_queue::QueueT;

    fn hdr(len: u32) -> Header {
        Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 1000,
            dst_port: 1024,
            len,
            type_: TYPE_STREAM,
            op: OP_RW,
            flags: 0,
            buf_alloc: 1 << 18,
            fwd_cnt: 7,
        }
    }

    #[test]
    fn header_round_trips_through_the_crate_types() {
        let h = hdr(12345);
        let raw = h.encode();
        assert_eq!(&raw[0..8], &3u64.to_le_bytes());
        assert_eq!(&raw[24..28], &12345u32.to_le_bytes());
        assert_eq!(&raw[30..32], &OP_RW.to_le_bytes());
        assert_eq!(Header::decode(&raw), h);
    }

    #[test]
    fn gathers_a_64k_packet_split_over_three_descriptors() {
        let mem = guest_mem();
        let mut tq = TestQueue::new(&mem);
        let data: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
        let h = hdr(data.len() as u32);
        // Header alone, then the data in 3 uneven pieces (as Linux 6.12 does it).
        tq.add_tx_split(
            &h.encode(),
            &[&data[..20000], &data[20000..50000], &data[50000..]],
        );
        let mut q = tq.queue();
        let chain = q.pop_descriptor_chain(&mem).unwrap();
        let mut buf = vec![0u8; TX_BUF_SIZE];
        let got = gather_tx(chain, &mut buf).unwrap();
        assert_eq!(
            got,
            Gathered {
                hdr: h,
                data_descs: 3
            }
        );
        assert_eq!(
            &buf[PKT_HEADER_SIZE..PKT_HEADER_SIZE + data.len()],
            &data[..]
        );
    }

    #[test]
    fn gathers_a_header_split_inside_itself() {
        let mem = guest_mem();
        let mut tq = TestQueue::new(&mem);
        let h = hdr(5);
        let mut all = h.encode().to_vec();
        all.extend_from_slice(b"hello");
        tq.add_tx_split(&all[..10], &[&all[10..30], &all[30..]]);
        let mut q = tq.queue();
        let chain = q.pop_descriptor_chain(&mem).unwrap();
        let mut buf = vec![0u8; TX_BUF_SIZE];
        assert_eq!(
            gather_tx(chain, &mut buf).unwrap(),
            Gathered {
                hdr: h,
                data_descs: 1
            }
        );
        assert_eq!(&buf[PKT_HEADER_SIZE..PKT_HEADER_SIZE + 5], b"hello");
    }

    #[test]
    fn refuses_bad_tx_chains() {
        let mem = guest_mem();
        let mut buf = vec![0u8; TX_BUF_SIZE];
        type Build = Box<dyn Fn(&mut TestQueue<'_>) -> u16>;
        let cases: Vec<(Build, &str)> = vec![
            (
                Box::new(|tq| tq.add_tx_split(&[0u8; 20], &[])),
                "short header",
            ),
            (
                Box::new(|tq| tq.add_tx_split(&hdr(100).encode(), &[&[1u8; 50]])),
                "short data",
            ),
            (
                Box::new(|tq| {
                    tq.add_tx_split(&hdr(MAX_PKT_DATA as u32 + 1).encode(), &[&[1u8; 8]])
                }),
                "too long",
            ),
            (
                Box::new(|tq| tq.add_chain_raw(&[(PKT_HEADER_SIZE as u32, true)])),
                "write-only",
            ),
        ];
        for (build, what) in cases {
            let mut tq = TestQueue::new(&mem);
            build(&mut tq);
            let mut q = tq.queue();
            let chain = q.pop_descriptor_chain(&mem).unwrap();
            let r = gather_tx(chain, &mut buf);
            match (what, &r) {
                ("short header", Err(PacketError::ShortHeader(20))) => {}
                ("short data", Err(PacketError::ShortData { got: 50, hdr })) => {
                    assert_eq!(hdr.len, 100)
                }
                ("too long", Err(PacketError::TooLong(h))) => {
                    assert!(r.as_ref().unwrap_err().header() == Some(h))
                }
                ("write-only", Err(PacketError::WriteOnlyInTx)) => {}
                _ => panic!("{what}: unexpected {r:?}"),
            }
        }
        assert!(matches!(
            gather_tx(
                {
                    let mut tq = TestQueue::new(&mem);
                    tq.add_tx_split(&hdr(0).encode(), &[]);
                    let mut q = tq.queue();
                    q.pop_descriptor_chain(&mem).unwrap()
                },
                &mut buf[..10]
            ),
            Err(PacketError::SmallBuffer(10))
        ));
    }

    #[test]
    fn scatters_rx_over_several_descriptors() {
        let mem = guest_mem();
        let mut tq = TestQueue::new(&mem);
        let head = tq.add_rx(&[30, 30, 100]);
        let mut q = tq.queue();
        let chain = q.pop_descriptor_chain(&mem).unwrap();
        assert_eq!(rx_capacity(&chain).unwrap(), 160);
        let data = [9u8; 80];
        let h = hdr(80);
        assert_eq!(write_rx(chain, &h, &data).unwrap(), 124);
        let (got_h, got_d) = tq.read_rx(head, 124);
        assert_eq!(got_h, h);
        assert_eq!(got_d[..80], data);
    }

    #[test]
    fn refuses_bad_rx_chains() {
        let mem = guest_mem();
        let mut tq = TestQueue::new(&mem);
        tq.add_chain_raw(&[(64, true), (64, false)]);
        tq.add_rx(&[20, 20]);
        let mut q = tq.queue();
        let chain = q.pop_descriptor_chain(&mem).unwrap();
        assert!(matches!(
            rx_capacity(&chain),
            Err(PacketError::ReadOnlyInRx)
        ));
        let chain = q.pop_descriptor_chain(&mem).unwrap();
        assert_eq!(rx_capacity(&chain).unwrap(), 40);
        assert!(matches!(
            write_rx(chain, &hdr(0), &[]),
            Err(PacketError::RxTooSmall { cap: 40, need: 44 })
        ));
    }
}
