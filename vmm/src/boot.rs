//! Direct kernel boot: the uncompressed `vmlinux` (ELF) loaded with `linux-loader`, entered
//! through PVH when the kernel has a `XEN_ELFNOTE_PHYS32_ENTRY` note (moat's guest kernel
//! does), through the Linux 64-bit boot protocol otherwise.
//!
//! What lands in guest memory (addresses in [`crate::arch::layout`]):
//! - the kernel at its ELF physical addresses (above 1 MiB);
//! - the initramfs, page aligned, at the top of RAM below the MMIO gap;
//! - the command line at `CMDLINE_START`, NUL terminated, at most 2 KiB;
//! - the MP table at the EBDA (CPUs, IOAPIC, IRQ routing: there is no ACPI);
//! - PVH: `hvm_start_info` (magic, command line, e820 table, the initramfs as module 0);
//!   Linux: `boot_params` (setup header, command line, initramfs, e820 table).

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::boot_params;
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::KernelLoader;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::arch::layout::{
    CMDLINE_MAX_SIZE, CMDLINE_START, EBDA_START, FIRST_ADDR_PAST_32BITS, HIMEM_START, MEMMAP_START,
    MMIO_GAP_SIZE, MMIO_GAP_START, MODLIST_START, PVH_INFO_START, ZERO_PAGE_START,
};
use crate::arch::mptable::{self, MptableError};
use crate::arch::regs::BootProtocol;

/// Loading the guest failed.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// A file could not be opened or read.
    #[error("reading {what} {path}")]
    Open {
        /// Kernel or initramfs.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel is not a loadable ELF `vmlinux`.
    #[error("loading the kernel (an uncompressed ELF vmlinux is expected)")]
    Kernel(#[source] linux_loader::loader::Error),
    /// The initramfs does not fit between the kernel and the end of low RAM.
    #[error("the initramfs ({size} bytes) does not fit in guest RAM above the kernel")]
    InitrdTooBig {
        /// Its size.
        size: u64,
    },
    /// The initramfs could not be copied into guest memory.
    #[error("copying the initramfs into guest memory")]
    InitrdCopy(#[source] vm_memory::GuestMemoryError),
    /// The command line is too long or has a NUL.
    #[error("the kernel command line is {len} bytes (at most {max}) or contains a NUL")]
    Cmdline {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Writing the command line failed.
    #[error("writing the command line into guest memory")]
    CmdlineWrite(#[source] vm_memory::GuestMemoryError),
    /// The MP table.
    #[error(transparent)]
    Mptable(#[from] MptableError),
    /// Writing `hvm_start_info` or `boot_params` failed.
    #[error("writing the boot parameters")]
    BootParams(#[source] linux_loader::configurator::Error),
}

/// Where and how the BSP enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelEntry {
    /// PVH or the Linux boot protocol.
    pub protocol: BootProtocol,
    /// The entry point.
    pub entry: GuestAddress,
}

/// What to boot.
#[derive(Debug, Clone)]
pub struct BootSource {
    /// The uncompressed `vmlinux`.
    pub kernel: PathBuf,
    /// An initramfs (uncompressed cpio for moat's guest).
    pub initramfs: Option<PathBuf>,
    /// The complete kernel command line.
    pub cmdline: String,
    /// Ignore a PVH note and use the Linux boot protocol (for tests of the fallback).
    pub force_linux_boot: bool,
}

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;
const PAGE_SIZE: u64 = 4096;

fn open(what: &'static str, path: &Path) -> Result<File, BootError> {
    File::open(path).map_err(|source| BootError::Open {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// The end of RAM below the MMIO gap.
fn low_ram_end(mem: &GuestMemoryMmap) -> u64 {
    (mem.last_addr().raw_value() + 1).min(MMIO_GAP_START)
}

/// The guest's e820 map: base memory below the EBDA, RAM from 1 MiB, the MMIO gap reserved,
/// RAM above 4 GiB.
pub fn e820_map(mem: &GuestMemoryMmap) -> Vec<(u64, u64, u32)> {
    let end = mem.last_addr().raw_value() + 1;
    let mut map = vec![
        (0, EBDA_START, E820_RAM),
        (HIMEM_START, low_ram_end(mem) - HIMEM_START, E820_RAM),
    ];
    if end > FIRST_ADDR_PAST_32BITS {
        map.push((MMIO_GAP_START, MMIO_GAP_SIZE, E820_RESERVED));
        map.push((
            FIRST_ADDR_PAST_32BITS,
            end - FIRST_ADDR_PAST_32BITS,
            E820_RAM,
        ));
    }
    map
}

/// Loads kernel, initramfs, command line and boot tables into `mem` for `num_cpus` vCPUs.
pub fn load(
    mem: &GuestMemoryMmap,
    src: &BootSource,
    num_cpus: u8,
) -> Result<KernelEntry, BootError> {
    let mut kernel = open("the kernel", &src.kernel)?;
    let loaded = Elf::load(mem, None, &mut kernel, Some(GuestAddress(HIMEM_START)))
        .map_err(BootError::Kernel)?;
    let initrd = match &src.initramfs {
        Some(p) => Some(load_initrd(mem, p, loaded.kernel_end)?),
        None => None,
    };
    let cmdline = src.cmdline.as_bytes();
    if cmdline.len() >= CMDLINE_MAX_SIZE || cmdline.contains(&0) {
        return Err(BootError::Cmdline {
            len: cmdline.len(),
            max: CMDLINE_MAX_SIZE - 1,
        });
    }
    let mut with_nul = cmdline.to_vec();
    with_nul.push(0);
    mem.write_slice(&with_nul, GuestAddress(CMDLINE_START))
        .map_err(BootError::CmdlineWrite)?;
    mptable::setup_mptable(mem, num_cpus)?;

    match (loaded.pvh_boot_cap, src.force_linux_boot) {
        (PvhBootCapability::PvhEntryPresent(entry), false) => {
            write_pvh_info(mem, initrd)?;
            Ok(KernelEntry {
                protocol: BootProtocol::Pvh,
                entry,
            })
        }
        _ => {
            write_boot_params(mem, initrd, cmdline.len())?;
            Ok(KernelEntry {
                protocol: BootProtocol::Linux,
                entry: loaded.kernel_load,
            })
        }
    }
}

/// Copies the initramfs to the top of low RAM; returns `(address, size)`.
fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
) -> Result<(u64, u64), BootError> {
    let mut f = open("the initramfs", path)?;
    let err = |source| BootError::Open {
        what: "the initramfs",
        path: path.to_path_buf(),
        source,
    };
    let size = f.seek(SeekFrom::End(0)).map_err(err)?;
    f.seek(SeekFrom::Start(0)).map_err(err)?;
    let top = low_ram_end(mem);
    let addr = top.checked_sub(size).map(|a| a & !(PAGE_SIZE - 1));
    let addr = match addr {
        Some(a) if a >= kernel_end && a >= HIMEM_START => a,
        _ => return Err(BootError::InitrdTooBig { size }),
    };
    mem.read_exact_volatile_from(GuestAddress(addr), &mut f, size as usize)
        .map_err(BootError::InitrdCopy)?;
    Ok((addr, size))
}

fn write_pvh_info(mem: &GuestMemoryMmap, initrd: Option<(u64, u64)>) -> Result<(), BootError> {
    let memmap: Vec<hvm_memmap_table_entry> = e820_map(mem)
        .into_iter()
        .map(|(addr, size, type_)| hvm_memmap_table_entry {
            addr,
            size,
            type_,
            reserved: 0,
        })
        .collect();
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: MEMMAP_START,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    let mut params = BootParams::new(&info, GuestAddress(PVH_INFO_START));
    if let Some((paddr, size)) = initrd {
        info.nr_modules = 1;
        info.modlist_paddr = MODLIST_START;
        params = BootParams::new(&info, GuestAddress(PVH_INFO_START));
        params.set_modules(
            &[hvm_modlist_entry {
                paddr,
                size,
                ..Default::default()
            }],
            GuestAddress(MODLIST_START),
        );
    }
    params.set_sections(&memmap, GuestAddress(MEMMAP_START));
    PvhBootConfigurator::write_bootparams::<GuestMemoryMmap>(&params, mem)
        .map_err(BootError::BootParams)
}

fn write_boot_params(
    mem: &GuestMemoryMmap,
    initrd: Option<(u64, u64)>,
    cmdline_len: usize,
) -> Result<(), BootError> {
    let mut p = boot_params::default();
    p.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    p.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    p.hdr.header = KERNEL_HDR_MAGIC;
    p.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    p.hdr.cmd_line_ptr = CMDLINE_START as u32;
    p.hdr.cmdline_size = cmdline_len as u32 + 1;
    if let Some((addr, size)) = initrd {
        p.hdr.ramdisk_image = addr as u32;
        p.hdr.ramdisk_size = size as u32;
    }
    let map = e820_map(mem);
    for (i, (addr, size, t)) in map.iter().enumerate().take(p.e820_table.len()) {
        p.e820_table[i].addr = *addr;
        p.e820_table[i].size = *size;
        p.e820_table[i].r#type = *t;
    }
    p.e820_entries = map.len().min(p.e820_table.len()) as u8;
    let params = BootParams::new(&p, GuestAddress(ZERO_PAGE_START));
    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(&params, mem)
        .map_err(BootError::BootParams)
}

#[cfg(test)]
mod tests;
