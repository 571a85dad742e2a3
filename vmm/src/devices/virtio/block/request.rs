//! Parsing one virtio-blk request from a descriptor chain (virtio 1.2, 5.2.6): a 16-byte
//! device-readable header (`type`, reserved, `sector`), data descriptors, and a final
//! device-writable status byte. Everything here is guest input: every length and direction
//! is checked, and a request is rejected before any I/O if it is malformed.
//!
//! Layout accepted (Linux's): the header alone in the first descriptor (at least 16 bytes),
//! the status in the last byte of the last descriptor (write-only), data in between, all in
//! the direction the type requires (`IN`/`GET_ID`: write-only; `OUT`/`DISCARD`: read-only).

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, Permissions};

/// Sector size of the virtio-blk protocol.
pub const SECTOR_SIZE: u64 = 512;
/// `VIRTIO_BLK_ID_BYTES`.
pub const ID_BYTES: usize = 20;
/// One discard segment: sector (u64), num_sectors (u32), flags (u32).
pub const DISCARD_SEGMENT_SIZE: u32 = 16;
/// Largest data length of one request (128 MiB); more is malformed.
pub const MAX_DATA_LEN: u64 = 128 << 20;
/// Most descriptors in one request.
pub const MAX_DESCS: usize = 1024;

/// Request types.
pub mod kind {
    /// Read.
    pub const IN: u32 = 0;
    /// Write.
    pub const OUT: u32 = 1;
    /// Flush.
    pub const FLUSH: u32 = 4;
    /// Device ID string.
    pub const GET_ID: u32 = 8;
    /// Discard.
    pub const DISCARD: u32 = 11;
}

/// What the request asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestType {
    /// Read sectors into the data buffers.
    In,
    /// Write the data buffers to sectors.
    Out,
    /// Make written data durable.
    Flush,
    /// Write the device ID into the data buffer.
    GetId,
    /// Discard the ranges the data buffers list.
    Discard,
    /// Any other type: answered `UNSUPP`.
    Unsupported(u32),
}

impl From<u32> for RequestType {
    fn from(t: u32) -> Self {
        match t {
            kind::IN => Self::In,
            kind::OUT => Self::Out,
            kind::FLUSH => Self::Flush,
            kind::GET_ID => Self::GetId,
            kind::DISCARD => Self::Discard,
            other => Self::Unsupported(other),
        }
    }
}

/// A malformed request: no I/O is done; if the status byte is usable it gets `IOERR`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The chain has no descriptor, or only one.
    #[error("chain of {0} descriptors (header and status at least)")]
    TooShort(usize),
    /// More than [`MAX_DESCS`] descriptors.
    #[error("chain longer than {MAX_DESCS} descriptors")]
    TooLong,
    /// The header descriptor is write-only or shorter than 16 bytes.
    #[error("bad header descriptor")]
    BadHeader,
    /// The header could not be read from guest memory.
    #[error("header outside guest memory")]
    HeaderRead,
    /// The status descriptor is not write-only, empty, or outside guest memory.
    #[error("bad status descriptor")]
    BadStatus,
    /// A data descriptor has the wrong direction for the request type.
    #[error("data descriptor {0} has the wrong direction")]
    BadDirection(usize),
    /// A data descriptor is outside guest memory.
    #[error("data descriptor {0} outside guest memory")]
    DataOutside(usize),
    /// The data length does not suit the request type.
    #[error("data length {0} is not valid for this request")]
    BadLength(u64),
}

/// One data buffer in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataBuf {
    /// Address.
    pub addr: GuestAddress,
    /// Length.
    pub len: u32,
}

/// A well-formed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Its type.
    pub kind: RequestType,
    /// The header's sector.
    pub sector: u64,
    /// The data buffers, in order.
    pub data: Vec<DataBuf>,
    /// Their total length.
    pub data_len: u64,
    /// Where the status byte goes.
    pub status_addr: GuestAddress,
}

/// The chain's status byte address, if the last descriptor is a usable one (used to answer
/// `IOERR` to a request that is otherwise malformed).
pub fn status_addr_of<M>(chain: &DescriptorChain<M>) -> Option<GuestAddress>
where
    M: Deref + Clone,
    M::Target: GuestMemory,
{
    let last = chain.clone().take(MAX_DESCS).last()?;
    if !last.is_write_only() || last.len() == 0 {
        return None;
    }
    let at = last.addr().checked_add(u64::from(last.len()) - 1)?;
    chain
        .memory()
        .check_range(at, 1, Permissions::Write)
        .then_some(at)
}

impl Request {
    /// Parses `chain`.
    pub fn parse<M>(chain: DescriptorChain<M>) -> Result<Self, RequestError>
    where
        M: Deref + Clone,
        M::Target: GuestMemory,
    {
        let mem = chain.memory();
        let descs: Vec<_> = chain.clone().take(MAX_DESCS + 1).collect();
        if descs.len() > MAX_DESCS {
            return Err(RequestError::TooLong);
        }
        if descs.len() < 2 {
            return Err(RequestError::TooShort(descs.len()));
        }
        let head = descs[0];
        if head.is_write_only() || head.len() < 16 {
            return Err(RequestError::BadHeader);
        }
        let mut raw = [0u8; 16];
        mem.read_slice(&mut raw, head.addr())
            .map_err(|_| RequestError::HeaderRead)?;
        let kind = RequestType::from(u32::from_le_bytes(raw[0..4].try_into().expect("4 bytes")));
        let sector = u64::from_le_bytes(raw[8..16].try_into().expect("8 bytes"));

        let last = descs[descs.len() - 1];
        if !last.is_write_only() || last.len() == 0 {
            return Err(RequestError::BadStatus);
        }
        let status_addr = last
            .addr()
            .checked_add(u64::from(last.len()) - 1)
            .filter(|a| mem.check_range(*a, 1, Permissions::Write))
            .ok_or(RequestError::BadStatus)?;

        let want_write_only = match kind {
            RequestType::In | RequestType::GetId => Some(true),
            RequestType::Out | RequestType::Discard => Some(false),
            RequestType::Flush | RequestType::Unsupported(_) => None,
        };
        let mut data = Vec::with_capacity(descs.len() - 2);
        let mut data_len = 0u64;
        for (i, d) in descs[1..descs.len() - 1].iter().enumerate() {
            if let Some(w) = want_write_only {
                if d.is_write_only() != w {
                    return Err(RequestError::BadDirection(i + 1));
                }
            }
            let perm = if d.is_write_only() {
                Permissions::Write
            } else {
                Permissions::Read
            };
            if d.len() > 0 && !mem.check_range(d.addr(), d.len() as usize, perm) {
                return Err(RequestError::DataOutside(i + 1));
            }
            data_len += u64::from(d.len());
            data.push(DataBuf {
                addr: d.addr(),
                len: d.len(),
            });
        }
        let ok = match kind {
            RequestType::In | RequestType::Out => {
                data_len.is_multiple_of(SECTOR_SIZE) && data_len <= MAX_DATA_LEN
            }
            RequestType::GetId => data_len >= ID_BYTES as u64,
            RequestType::Discard => {
                data_len > 0
                    && data_len.is_multiple_of(u64::from(DISCARD_SEGMENT_SIZE))
                    && data_len <= MAX_DATA_LEN
            }
            RequestType::Flush | RequestType::Unsupported(_) => true,
        };
        if !ok {
            return Err(RequestError::BadLength(data_len));
        }
        Ok(Self {
            kind,
            sector,
            data,
            data_len,
            status_addr,
        })
    }
}
