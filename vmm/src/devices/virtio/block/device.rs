//! The virtio-blk device: configuration space, activation, and request execution.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::request::{
    status_addr_of, DataBuf, Request, RequestType, DISCARD_SEGMENT_SIZE, ID_BYTES, SECTOR_SIZE,
};
use super::{features, QUEUE_SIZE, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP};
use crate::devices::virtio::{
    device_type, read_config_bytes, ActivateContext, ActivateError, Interrupt, IrqKind,
    VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};

/// Most sectors one discard may cover (the config's `max_discard_sectors`).
const MAX_DISCARD_SECTORS: u32 = 0x3f_ffff;
/// Most segments one discard may list.
const MAX_DISCARD_SEG: u32 = 32;

/// One disk.
#[derive(Debug, Clone)]
pub struct BlockConfig {
    /// The raw image.
    pub path: PathBuf,
    /// Offer it read-only (and open it so).
    pub read_only: bool,
    /// The device ID the guest reads (`/sys/block/vdX/serial`), at most 20 bytes.
    pub id: String,
}

/// Opening the disk failed.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The image could not be opened or measured.
    #[error("opening the disk image {path}")]
    Open {
        /// Its path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BlockMetrics {
    /// Requests completed (any status).
    pub requests: u64,
    /// Bytes read from the image.
    pub read_bytes: u64,
    /// Bytes written to the image.
    pub write_bytes: u64,
    /// Flushes.
    pub flushes: u64,
    /// Discard segments.
    pub discards: u64,
    /// Malformed chains.
    pub invalid: u64,
    /// Requests answered `IOERR`.
    pub io_errors: u64,
    /// Requests answered `UNSUPP`.
    pub unsupported: u64,
}

struct Active {
    mem: GuestMemoryMmap,
    interrupt: Arc<dyn Interrupt>,
    queue: Queue,
}

/// The device.
pub struct Block {
    file: File,
    read_only: bool,
    capacity: u64,
    id: [u8; ID_BYTES],
    config: Vec<u8>,
    active: Option<Active>,
    metrics: BlockMetrics,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("capacity", &self.capacity)
            .field("read_only", &self.read_only)
            .field("active", &self.active.is_some())
            .field("metrics", &self.metrics)
            .finish()
    }
}

impl Block {
    /// Opens the image.
    pub fn new(cfg: &BlockConfig) -> Result<Self, BlockError> {
        let err = |source| BlockError::Open {
            path: cfg.path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(!cfg.read_only)
            .open(&cfg.path)
            .map_err(err)?;
        let len = file.seek(SeekFrom::End(0)).map_err(err)?;
        Ok(Self::from_file(
            file,
            len / SECTOR_SIZE,
            cfg.read_only,
            &cfg.id,
        ))
    }

    /// A device over an open file of `capacity` sectors.
    pub fn from_file(file: File, capacity: u64, read_only: bool, id: &str) -> Self {
        let mut id_bytes = [0u8; ID_BYTES];
        let n = id.len().min(ID_BYTES);
        id_bytes[..n].copy_from_slice(&id.as_bytes()[..n]);
        Self {
            file,
            read_only,
            capacity,
            id: id_bytes,
            config: config_space(capacity),
            active: None,
            metrics: BlockMetrics::default(),
        }
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The counters.
    pub fn metrics(&self) -> BlockMetrics {
        self.metrics
    }

    /// Serves every available request; returns how many chains were used.
    pub fn process_queue(&mut self) -> u32 {
        let Some(mut a) = self.active.take() else {
            return 0;
        };
        let used = match self.drain(&mut a) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!("virtio-blk queue: {e}");
                0
            }
        };
        self.active = Some(a);
        used
    }

    fn drain(&mut self, a: &mut Active) -> Result<u32, virtio_queue::Error> {
        let mut used = 0u32;
        loop {
            a.queue.disable_notification(&a.mem)?;
            while let Some(chain) = a.queue.pop_descriptor_chain(&a.mem) {
                let head = chain.head_index();
                let written = match Request::parse(chain.clone()) {
                    Ok(req) => self.execute(&a.mem, &req),
                    Err(e) => {
                        self.metrics.invalid += 1;
                        tracing::debug!("virtio-blk: malformed request: {e}");
                        match status_addr_of(&chain) {
                            Some(at) => {
                                let _ = a.mem.write_obj(VIRTIO_BLK_S_IOERR, at);
                                1
                            }
                            None => 0,
                        }
                    }
                };
                if head < a.queue.size() {
                    a.queue.add_used(&a.mem, head, written)?;
                    used += 1;
                }
            }
            if !a.queue.enable_notification(&a.mem)? {
                break;
            }
        }
        if used > 0 && a.queue.needs_notification(&a.mem)? {
            if let Err(e) = a.interrupt.trigger(IrqKind::Vring) {
                tracing::warn!("virtio-blk interrupt: {e}");
            }
        }
        Ok(used)
    }

    /// Runs a parsed request; returns the bytes written into guest memory (status included).
    fn execute(&mut self, mem: &GuestMemoryMmap, req: &Request) -> u32 {
        self.metrics.requests += 1;
        let (status, data_written) = match self.run(mem, req) {
            Ok(n) => (VIRTIO_BLK_S_OK, n),
            Err(status) => {
                match status {
                    VIRTIO_BLK_S_UNSUPP => self.metrics.unsupported += 1,
                    _ => self.metrics.io_errors += 1,
                }
                (status, 0)
            }
        };
        if mem.write_obj(status, req.status_addr).is_err() {
            return data_written;
        }
        data_written + 1
    }

    fn run(&mut self, mem: &GuestMemoryMmap, req: &Request) -> Result<u32, u8> {
        match req.kind {
            RequestType::In => {
                let off = self.check_range(req.sector, req.data_len)?;
                self.seek(off)?;
                for d in &req.data {
                    mem.read_exact_volatile_from(d.addr, &mut self.file, d.len as usize)
                        .map_err(|_| VIRTIO_BLK_S_IOERR)?;
                }
                self.metrics.read_bytes += req.data_len;
                Ok(req.data_len as u32)
            }
            RequestType::Out => {
                if self.read_only {
                    return Err(VIRTIO_BLK_S_IOERR);
                }
                let off = self.check_range(req.sector, req.data_len)?;
                self.seek(off)?;
                for d in &req.data {
                    mem.write_all_volatile_to(d.addr, &mut self.file, d.len as usize)
                        .map_err(|_| VIRTIO_BLK_S_IOERR)?;
                }
                self.metrics.write_bytes += req.data_len;
                Ok(0)
            }
            RequestType::Flush => {
                self.metrics.flushes += 1;
                if !self.read_only {
                    self.file.sync_data().map_err(|_| VIRTIO_BLK_S_IOERR)?;
                }
                Ok(0)
            }
            RequestType::GetId => {
                let d = req.data[0];
                let n = (d.len as usize).min(ID_BYTES);
                if req.data.len() != 1 {
                    return Err(VIRTIO_BLK_S_IOERR);
                }
                mem.write_slice(&self.id[..n], d.addr)
                    .map_err(|_| VIRTIO_BLK_S_IOERR)?;
                Ok(n as u32)
            }
            RequestType::Discard => {
                if self.read_only {
                    return Err(VIRTIO_BLK_S_IOERR);
                }
                self.discard(mem, &req.data)?;
                Ok(0)
            }
            RequestType::Unsupported(_) => Err(VIRTIO_BLK_S_UNSUPP),
        }
    }

    fn check_range(&self, sector: u64, len: u64) -> Result<u64, u8> {
        let end = sector
            .checked_add(len / SECTOR_SIZE)
            .ok_or(VIRTIO_BLK_S_IOERR)?;
        if end > self.capacity {
            return Err(VIRTIO_BLK_S_IOERR);
        }
        Ok(sector * SECTOR_SIZE)
    }

    fn seek(&mut self, off: u64) -> Result<(), u8> {
        self.file
            .seek(SeekFrom::Start(off))
            .map(|_| ())
            .map_err(|_| VIRTIO_BLK_S_IOERR)
    }

    fn discard(&mut self, mem: &GuestMemoryMmap, data: &[DataBuf]) -> Result<(), u8> {
        let mut segments = 0u32;
        for d in data {
            for i in 0..d.len / DISCARD_SEGMENT_SIZE {
                let at = GuestAddress(d.addr.0 + u64::from(i * DISCARD_SEGMENT_SIZE));
                let seg: [u8; 16] = mem.read_obj(at).map_err(|_| VIRTIO_BLK_S_IOERR)?;
                let sector = u64::from_le_bytes(seg[0..8].try_into().expect("8 bytes"));
                let count = u32::from_le_bytes(seg[8..12].try_into().expect("4 bytes"));
                let flags = u32::from_le_bytes(seg[12..16].try_into().expect("4 bytes"));
                segments += 1;
                if flags != 0 {
                    return Err(VIRTIO_BLK_S_UNSUPP);
                }
                if segments > MAX_DISCARD_SEG || count > MAX_DISCARD_SECTORS {
                    return Err(VIRTIO_BLK_S_IOERR);
                }
                let off = self.check_range(sector, u64::from(count) * SECTOR_SIZE)?;
                punch_hole(&self.file, off, u64::from(count) * SECTOR_SIZE)?;
                self.metrics.discards += 1;
            }
        }
        Ok(())
    }
}

fn punch_hole(file: &File, off: u64, len: u64) -> Result<(), u8> {
    if len == 0 {
        return Ok(());
    }
    // SAFETY: fallocate on an fd we own, with in-range values; it touches no memory of ours.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off as libc::off_t,
            len as libc::off_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(VIRTIO_BLK_S_IOERR)
    }
}

/// The configuration space: capacity, seg_max, blk_size, discard limits (virtio 1.2,
/// `struct virtio_blk_config`, 60 bytes).
fn config_space(capacity: u64) -> Vec<u8> {
    let mut c = vec![0u8; 60];
    c[0..8].copy_from_slice(&capacity.to_le_bytes());
    c[12..16].copy_from_slice(&u32::from(QUEUE_SIZE - 2).to_le_bytes()); // seg_max
    c[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes()); // blk_size
    c[34..36].copy_from_slice(&1u16.to_le_bytes()); // num_queues
    c[36..40].copy_from_slice(&MAX_DISCARD_SECTORS.to_le_bytes());
    c[40..44].copy_from_slice(&MAX_DISCARD_SEG.to_le_bytes());
    c[44..48].copy_from_slice(&8u32.to_le_bytes()); // discard_sector_alignment: 4 KiB
    c
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        let mut f = VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_EVENT_IDX
            | features::SEG_MAX
            | features::BLK_SIZE
            | features::FLUSH;
        if self.read_only {
            f |= features::RO;
        } else {
            f |= features::DISCARD;
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, mut ctx: ActivateContext) -> Result<(), ActivateError> {
        let queue = ctx.queues.pop().ok_or(ActivateError::BadQueue(0))?;
        if !ctx.queues.is_empty() || !queue.is_valid(&ctx.mem) {
            return Err(ActivateError::BadQueue(0));
        }
        self.active = Some(Active {
            mem: ctx.mem,
            interrupt: ctx.interrupt,
            queue,
        });
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
    }

    fn queue_event(&mut self, _index: usize) {
        self.process_queue();
    }
}
