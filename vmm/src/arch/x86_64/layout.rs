//! The guest-physical memory map of a moat microVM (x86_64), Firecracker's layout.
//!
//! ```text
//! 0x0000_0500  GDT (4 entries), then the IDT
//! 0x0000_6000  PVH hvm_start_info, then the module list (the initramfs)
//! 0x0000_7000  Linux boot protocol: boot_params (the "zero page"); PVH: the e820 table
//! 0x0000_8ff0  boot stack (Linux boot protocol)
//! 0x0000_9000  PML4, PDPTE, PDE (Linux boot protocol: identity map of the first GiB)
//! 0x0002_0000  kernel command line (2 KiB)
//! 0x0009_fc00  EBDA: the MP table
//! 0x0010_0000  kernel (ELF p_paddr, 16 MiB for moat's vmlinux), then free RAM
//!   ...        initramfs, page aligned, at the top of RAM below the MMIO gap
//! 0xc000_0000  MMIO gap (1 GiB): virtio-mmio devices from 0xd000_0000, IOAPIC, LAPIC
//! 0x1_0000_0000 RAM above 4 GiB when the guest has more than 3 GiB
//! ```

/// GDT location.
pub const BOOT_GDT_OFFSET: u64 = 0x500;
/// IDT location.
pub const BOOT_IDT_OFFSET: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (one entry: the initramfs).
pub const MODLIST_START: u64 = 0x6040;
/// PVH e820 table.
pub const MEMMAP_START: u64 = 0x7000;
/// Linux boot protocol `boot_params`.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Linux boot protocol initial stack.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page tables for the Linux boot protocol's long mode entry.
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// Page directory (512 x 2 MiB).
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Linux's x86 `COMMAND_LINE_SIZE`.
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the EBDA, where the MP table goes; RAM below it is usable.
pub const EBDA_START: u64 = 0x9fc00;
/// Start of high memory: the kernel must load above it.
pub const HIMEM_START: u64 = 0x10_0000;
/// The 32-bit MMIO gap.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// Its size.
pub const MMIO_GAP_SIZE: u64 = 0x4000_0000;
/// First address above 4 GiB.
pub const FIRST_ADDR_PAST_32BITS: u64 = 1 << 32;
/// virtio-mmio devices, one 4 KiB window each, from here.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
/// Size of one virtio-mmio window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// The IOAPIC's MMIO base.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// The local APICs' MMIO base.
pub const APIC_ADDR: u32 = 0xfee0_0000;
/// KVM's TSS (three pages, must sit in the MMIO gap below 4 GiB).
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// KVM's identity-map page for real mode on Intel (one page below the TSS).
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;
/// The serial port's IRQ (COM1).
pub const SERIAL_IRQ: u32 = 4;
/// First IRQ handed to virtio-mmio devices.
pub const IRQ_BASE: u32 = 5;
/// Last IRQ an IOAPIC pin can carry.
pub const IRQ_MAX: u32 = 23;

/// The RAM ranges `(start, size)` for a guest of `mem_size` bytes: everything below the MMIO
/// gap first, the rest above 4 GiB.
pub fn ram_ranges(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_GAP_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (FIRST_ADDR_PAST_32BITS, mem_size - MMIO_GAP_START),
        ]
    }
}

// The Linux boot stack grows down from just below the page tables, above the zero page.
const _: () =
    assert!(BOOT_STACK_POINTER < PML4_START && BOOT_STACK_POINTER > ZERO_PAGE_START + 4096);
// Devices live in the gap, below the IOAPIC.
const _: () =
    assert!(VIRTIO_MMIO_START >= MMIO_GAP_START && VIRTIO_MMIO_START < IOAPIC_ADDR as u64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_skips_the_mmio_gap() {
        assert_eq!(ram_ranges(256 << 20), vec![(0, 256 << 20)]);
        assert_eq!(ram_ranges(4 << 30), vec![(0, 3 << 30), (1 << 32, 1 << 30)]);
    }

    #[test]
    fn fixed_areas_do_not_overlap() {
        let areas = [
            (BOOT_GDT_OFFSET, 4 * 8),
            (BOOT_IDT_OFFSET, 8),
            (PVH_INFO_START, 56),
            (MODLIST_START, 32),
            (ZERO_PAGE_START, 4096),
            (PML4_START, 4096),
            (PDPTE_START, 4096),
            (PDE_START, 4096),
            (CMDLINE_START, CMDLINE_MAX_SIZE as u64),
            (EBDA_START, 1024),
        ];
        for (i, a) in areas.iter().enumerate() {
            for b in &areas[i + 1..] {
                assert!(a.0 + a.1 <= b.0 || b.0 + b.1 <= a.0, "{a:x?} {b:x?}");
            }
        }
    }
}
