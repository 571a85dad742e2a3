//! Guest memory, one region per RAM range of the layout, in one of two kinds:
//! - anonymous memory with transparent huge pages asked for (`MADV_HUGEPAGE`): the kernel
//!   and initramfs are copied into a few 2 MiB pages instead of thousands of 4 KiB faults,
//!   and the guest runs on huge pages; the default when no vhost-user device needs it;
//! - a memfd mapped shared, when a vhost-user daemon (virtiofsd) must map guest memory too
//!   (the host's shmem may not use huge pages).
//!
//! Either way the mappings are named `moat-guest-mem` (`/memfd:moat-guest-mem` or
//! `[anon:moat-guest-mem]` in `/proc/<pid>/smaps`), so that guest pages can be told apart
//! from the VMM's own memory ([`crate::stats::MemorySplit`]).

use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd};

use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::arch::layout::ram_ranges;

/// The memfd's name, as it appears in `/proc/<pid>/maps` (`/memfd:moat-guest-mem`).
pub const MEMFD_NAME: &str = "moat-guest-mem";

/// Creating guest memory failed.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The size is zero, not a multiple of 4 KiB, or too large.
    #[error("guest memory of {0} bytes: it must be a non-zero multiple of 4 KiB below 1 TiB")]
    BadSize(u64),
    /// memfd_create or ftruncate failed.
    #[error("creating the guest memory memfd")]
    Memfd(#[source] std::io::Error),
    /// Mapping a region failed.
    #[error("mapping guest memory")]
    Mmap(#[source] vm_memory::mmap::FromRangesError),
}

/// Guest memory and the file that backs it, if shared.
#[derive(Debug)]
pub struct GuestRam {
    /// The mapped memory.
    pub mem: GuestMemoryMmap,
    /// The memfd, when shared (vhost-user `SET_MEM_TABLE` maps it).
    pub file: Option<File>,
    /// Total bytes.
    pub size: u64,
}

impl GuestRam {
    /// The host virtual address ranges `[start, end)` of the guest memory mappings.
    pub fn host_ranges(&self) -> Vec<(u64, u64)> {
        self.mem
            .iter()
            .map(|r| (r.as_ptr() as u64, r.as_ptr() as u64 + r.len()))
            .collect()
    }
}

/// How guest memory is backed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    /// A memfd mapped shared (vhost-user daemons map it too).
    Shared,
    /// Anonymous, private; `huge_pages` asks for transparent huge pages (`MADV_HUGEPAGE`).
    Private {
        /// Ask for transparent huge pages.
        huge_pages: bool,
    },
}

/// Creates `size` bytes of guest RAM laid out around the MMIO gap.
pub fn create_guest_memory(size: u64, backing: Backing) -> Result<GuestRam, MemoryError> {
    if size == 0 || !size.is_multiple_of(4096) || size >= 1 << 40 {
        return Err(MemoryError::BadSize(size));
    }
    if let Backing::Private { huge_pages } = backing {
        let ranges: Vec<(GuestAddress, usize)> = ram_ranges(size)
            .into_iter()
            .map(|(start, len)| (GuestAddress(start), len as usize))
            .collect();
        let mem = GuestMemoryMmap::from_ranges(&ranges).map_err(MemoryError::Mmap)?;
        for region in mem.iter() {
            let ptr = region.as_ptr();
            let len = region.len() as usize;
            if huge_pages {
                // SAFETY: `ptr..ptr+len` is a live anonymous mapping owned by `mem`;
                // MADV_HUGEPAGE only changes how the kernel backs it.
                unsafe { libc::madvise(ptr.cast(), len, libc::MADV_HUGEPAGE) };
            }
            name_anon(ptr, len);
        }
        return Ok(GuestRam {
            mem,
            file: None,
            size,
        });
    }
    let file = memfd(size)?;
    let mut ranges = Vec::new();
    let mut offset = 0u64;
    for (start, len) in ram_ranges(size) {
        let fd = file.try_clone().map_err(MemoryError::Memfd)?;
        ranges.push((
            GuestAddress(start),
            len as usize,
            Some(FileOffset::new(fd, offset)),
        ));
        offset += len;
    }
    let mem = GuestMemoryMmap::from_ranges_with_files(ranges).map_err(MemoryError::Mmap)?;
    Ok(GuestRam {
        mem,
        file: Some(file),
        size,
    })
}

/// Names an anonymous mapping `moat-guest-mem` in smaps (Linux 5.17+ with
/// `CONFIG_ANON_VMA_NAME`; elsewhere the mapping stays unnamed).
fn name_anon(ptr: *mut u8, len: usize) {
    const PR_SET_VMA: libc::c_int = 0x5356_4d41;
    const PR_SET_VMA_ANON_NAME: libc::c_ulong = 0;
    let name = std::ffi::CString::new(MEMFD_NAME).expect("no NUL in the name");
    // SAFETY: the range is a live anonymous mapping and `name` a NUL-terminated string the
    // kernel copies.
    unsafe {
        libc::prctl(
            PR_SET_VMA,
            PR_SET_VMA_ANON_NAME,
            ptr as libc::c_ulong,
            len as libc::c_ulong,
            name.as_ptr() as libc::c_ulong,
        )
    };
}

fn memfd(size: u64) -> Result<File, MemoryError> {
    let name = std::ffi::CString::new(MEMFD_NAME).expect("no NUL in the name");
    // SAFETY: `name` is a valid NUL-terminated string; the flags are valid.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.set_len(size).map_err(MemoryError::Memfd)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use vm_memory::Bytes;

    use super::*;

    #[test]
    fn shared_memory_is_the_memfd() {
        use std::os::unix::fs::FileExt;
        let ram = create_guest_memory(8 << 20, Backing::Shared).unwrap();
        ram.mem.write_obj(0xabcd_u16, GuestAddress(0x1000)).unwrap();
        let mut b = [0u8; 2];
        ram.file
            .as_ref()
            .unwrap()
            .read_exact_at(&mut b, 0x1000)
            .unwrap();
        assert_eq!(u16::from_le_bytes(b), 0xabcd);
        assert_eq!(ram.mem.num_regions(), 1);
    }

    #[test]
    fn private_memory_is_named_in_smaps() {
        let ram = create_guest_memory(4 << 20, Backing::Private { huge_pages: true }).unwrap();
        assert!(ram.file.is_none());
        ram.mem.write_obj(1u8, GuestAddress(0)).unwrap();
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        // Hosts without CONFIG_ANON_VMA_NAME leave it unnamed; the memory still works.
        if smaps.contains("[anon:moat-guest-mem]") {
            let m = crate::stats::MemorySplit::parse(&smaps, |_, _, h| {
                h.contains("[anon:moat-guest-mem]")
            });
            assert!(m.guest_kib >= 4);
        }
        let ranges = ram.host_ranges();
        let m = crate::stats::MemorySplit::parse(&smaps, |a, b, _| {
            ranges.iter().any(|(s, e)| a >= *s && b <= *e)
        });
        assert!(m.guest_kib >= 4, "{ranges:x?}");
    }

    #[test]
    fn bad_sizes_are_refused() {
        assert!(matches!(
            create_guest_memory(0, Backing::Shared),
            Err(MemoryError::BadSize(0))
        ));
        let private = Backing::Private { huge_pages: false };
        assert!(create_guest_memory(4097, private).is_err());
    }
}
