//! virtio-blk on a raw image file: read, write, flush, discard, device ID; read-only on
//! request.
//!
//! # Data flow
//!
//! Guest kick on the request queue → [`Block::process_queue`]: pop each chain, parse it
//! ([`request::Request::parse`]; a malformed chain gets `IOERR` if its status byte is usable,
//! and is returned to the used ring either way), run it synchronously against the file
//! (`pread`/`pwrite`-style positioned I/O straight between the file and guest memory,
//! `fdatasync`, `fallocate(PUNCH_HOLE)`), write the status byte, add the chain to the used
//! ring with the bytes written, and interrupt the guest once per pass if the ring says so.
//! The I/O runs on the event loop thread, as Firecracker's synchronous engine does.

pub mod device;
pub mod request;

pub use device::{Block, BlockConfig, BlockError, BlockMetrics};
pub use request::{Request, RequestError, RequestType};

/// Status: success.
pub const VIRTIO_BLK_S_OK: u8 = 0;
/// Status: I/O error (also a malformed request, or a write to a read-only disk).
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
/// Status: unsupported request type.
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// Feature bits.
pub mod features {
    /// `seg_max` is valid.
    pub const SEG_MAX: u64 = 1 << 2;
    /// Read-only disk.
    pub const RO: u64 = 1 << 5;
    /// `blk_size` is valid.
    pub const BLK_SIZE: u64 = 1 << 6;
    /// Flush.
    pub const FLUSH: u64 = 1 << 9;
    /// Discard.
    pub const DISCARD: u64 = 1 << 13;
}

/// The one request queue's size.
pub const QUEUE_SIZE: u16 = 256;

#[cfg(test)]
mod tests;
