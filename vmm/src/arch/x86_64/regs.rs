//! Initial vCPU state for a direct kernel boot: general registers, segments and control
//! registers (32-bit protected mode for PVH, 64-bit long mode for the Linux boot protocol),
//! FPU, boot MSRs and the local APIC's LINT pins. Firecracker's `arch/x86_64/regs.rs`.
//!
//! The functions here compute KVM structures and write the GDT/IDT/page tables into guest
//! memory; [`crate::vstate::vcpu`] applies them with the KVM ioctls.

use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{
    BOOT_GDT_OFFSET, BOOT_IDT_OFFSET, BOOT_STACK_POINTER, PDE_START, PDPTE_START, PML4_START,
    PVH_INFO_START, ZERO_PAGE_START,
};

/// Writing the boot tables into guest memory failed.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// The GDT, IDT or page tables did not fit in guest memory.
    #[error("writing the {0} into guest memory")]
    Write(&'static str, #[source] vm_memory::GuestMemoryError),
}

/// How the kernel is entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootProtocol {
    /// PVH: 32-bit protected mode, paging off, `%ebx` = `hvm_start_info`.
    Pvh,
    /// Linux 64-bit boot protocol: long mode, identity-mapped first GiB, `%rsi` =
    /// `boot_params`.
    Linux,
}

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// One GDT entry from its flags, base and limit (the kernel's `GDT_ENTRY`).
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

fn get_base(entry: u64) -> u64 {
    ((entry & 0xff00_0000_0000_0000) >> 32)
        | ((entry & 0x0000_00ff_0000_0000) >> 16)
        | ((entry & 0x0000_0000_ffff_0000) >> 16)
}

fn get_limit(entry: u64) -> u32 {
    let limit = (((entry >> 32) & 0x000f_0000) | (entry & 0x0000_ffff)) as u32;
    if (entry >> 55) & 1 == 1 {
        (limit << 12) | 0xfff
    } else {
        limit
    }
}

fn bit(entry: u64, n: u32) -> u8 {
    ((entry >> n) & 1) as u8
}

/// The `kvm_segment` for GDT entry `entry` at index `index`.
pub fn segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let present = bit(entry, 47);
    kvm_segment {
        base: get_base(entry),
        limit: get_limit(entry),
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: bit(entry, 54),
        s: bit(entry, 44),
        l: bit(entry, 53),
        g: bit(entry, 55),
        avl: bit(entry, 52),
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// The GDT for `proto`: null, code, data, TSS.
pub fn gdt(proto: BootProtocol) -> [u64; 4] {
    match proto {
        BootProtocol::Pvh => [
            gdt_entry(0, 0, 0),
            gdt_entry(0xc09b, 0, 0xffff_ffff),
            gdt_entry(0xc093, 0, 0xffff_ffff),
            gdt_entry(0x008b, 0, 0x67),
        ],
        BootProtocol::Linux => [
            gdt_entry(0, 0, 0),
            gdt_entry(0xa09b, 0, 0xfffff),
            gdt_entry(0xc093, 0, 0xfffff),
            gdt_entry(0x808b, 0, 0xfffff),
        ],
    }
}

/// Writes the GDT, an empty IDT and (Linux protocol) the page tables, and fills `sregs` with
/// the matching segments and control registers.
pub fn setup_sregs(
    mem: &GuestMemoryMmap,
    proto: BootProtocol,
    sregs: &mut kvm_sregs,
) -> Result<(), RegsError> {
    let table = gdt(proto);
    for (i, e) in table.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(BOOT_GDT_OFFSET + 8 * i as u64))
            .map_err(|e| RegsError::Write("GDT", e))?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_OFFSET))
        .map_err(|e| RegsError::Write("IDT", e))?;
    sregs.gdt.base = BOOT_GDT_OFFSET;
    sregs.gdt.limit = (std::mem::size_of_val(&table) - 1) as u16;
    sregs.idt.base = BOOT_IDT_OFFSET;
    sregs.idt.limit = 7;

    let code = segment_from_gdt(table[1], 1);
    let data = segment_from_gdt(table[2], 2);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_gdt(table[3], 3);

    match proto {
        BootProtocol::Pvh => {
            sregs.cr0 = X86_CR0_PE;
            sregs.cr4 = 0;
        }
        BootProtocol::Linux => {
            sregs.cr0 |= X86_CR0_PE;
            sregs.efer |= EFER_LME | EFER_LMA;
            setup_page_tables(mem, sregs)?;
        }
    }
    Ok(())
}

/// Identity-maps the first GiB with 2 MiB pages for the long-mode entry.
fn setup_page_tables(mem: &GuestMemoryMmap, sregs: &mut kvm_sregs) -> Result<(), RegsError> {
    let w = |v: u64, at: u64| {
        mem.write_obj(v, GuestAddress(at))
            .map_err(|e| RegsError::Write("page tables", e))
    };
    w(PDPTE_START | 0x03, PML4_START)?;
    w(PDE_START | 0x03, PDPTE_START)?;
    for i in 0..512u64 {
        w((i << 21) | 0x83, PDE_START + i * 8)?;
    }
    sregs.cr3 = PML4_START;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.cr0 |= X86_CR0_PG;
    Ok(())
}

/// The general registers at the kernel entry `entry`.
pub fn boot_regs(proto: BootProtocol, entry: u64) -> kvm_regs {
    match proto {
        BootProtocol::Pvh => kvm_regs {
            rflags: 0x2,
            rip: entry,
            rbx: PVH_INFO_START,
            ..Default::default()
        },
        BootProtocol::Linux => kvm_regs {
            rflags: 0x2,
            rip: entry,
            rsp: BOOT_STACK_POINTER,
            rbp: BOOT_STACK_POINTER,
            rsi: ZERO_PAGE_START,
            ..Default::default()
        },
    }
}

/// The FPU at reset: x87 control word 0x37f, SSE MXCSR 0x1f80.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_IA32_MISC_ENABLE_FAST_STRING: u64 = 0x1;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
/// MTRRs enabled, default type write-back.
const MTRR_ENABLE_WB: u64 = (1 << 11) | 0x6;

/// The MSRs every vCPU starts with.
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    let e = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        e(MSR_IA32_SYSENTER_CS, 0),
        e(MSR_IA32_SYSENTER_ESP, 0),
        e(MSR_IA32_SYSENTER_EIP, 0),
        e(MSR_STAR, 0),
        e(MSR_CSTAR, 0),
        e(MSR_KERNEL_GS_BASE, 0),
        e(MSR_SYSCALL_MASK, 0),
        e(MSR_LSTAR, 0),
        e(MSR_IA32_TSC, 0),
        e(MSR_IA32_MISC_ENABLE, MSR_IA32_MISC_ENABLE_FAST_STRING),
        e(MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
    ]
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn lapic_reg(l: &kvm_lapic_state, off: usize) -> u32 {
    let b = &l.regs[off..off + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

fn set_lapic_reg(l: &mut kvm_lapic_state, off: usize, v: u32) {
    for (i, byte) in v.to_le_bytes().iter().enumerate() {
        l.regs[off + i] = *byte as _;
    }
}

/// LINT0 as ExtINT (the PIC), LINT1 as NMI, as a BIOS leaves them.
pub fn set_lint(l: &mut kvm_lapic_state) {
    let delivery = |reg: u32, mode: u32| (reg & !0x700) | (mode << 8);
    let lvt0 = lapic_reg(l, APIC_LVT0);
    set_lapic_reg(l, APIC_LVT0, delivery(lvt0, APIC_MODE_EXTINT));
    let lvt1 = lapic_reg(l, APIC_LVT1);
    set_lapic_reg(l, APIC_LVT1, delivery(lvt1, APIC_MODE_NMI));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    #[test]
    fn gdt_entries_round_trip_into_segments() {
        let code = segment_from_gdt(gdt_entry(0xa09b, 0, 0xfffff), 1);
        assert_eq!((code.selector, code.type_, code.l, code.g), (8, 0xb, 1, 1));
        assert_eq!(code.limit, 0xffff_ffff);
        assert_eq!(
            (code.present, code.unusable, code.s, code.dpl),
            (1, 0, 1, 0)
        );
        let flat = segment_from_gdt(gdt_entry(0xc093, 0x1234_5678, 0xfffff), 2);
        assert_eq!(flat.base, 0x1234_5678);
        assert_eq!((flat.db, flat.l), (1, 0));
        let null = segment_from_gdt(0, 0);
        assert_eq!(null.unusable, 1);
    }

    #[test]
    fn pvh_enters_protected_mode_without_paging() {
        let m = mem();
        let mut s = kvm_sregs::default();
        setup_sregs(&m, BootProtocol::Pvh, &mut s).unwrap();
        assert_eq!(s.cr0, X86_CR0_PE);
        assert_eq!(s.efer & EFER_LME, 0);
        assert_eq!(s.cs.selector, 8);
        assert_eq!(s.cs.db, 1);
        let r = boot_regs(BootProtocol::Pvh, 0x100_0000);
        assert_eq!((r.rip, r.rbx), (0x100_0000, PVH_INFO_START));
        let gdt1: u64 = m.read_obj(GuestAddress(BOOT_GDT_OFFSET + 8)).unwrap();
        assert_eq!(gdt1, gdt_entry(0xc09b, 0, 0xffff_ffff));
    }

    #[test]
    fn linux_enters_long_mode_with_identity_paging() {
        let m = mem();
        let mut s = kvm_sregs::default();
        setup_sregs(&m, BootProtocol::Linux, &mut s).unwrap();
        assert_eq!(s.cr0 & (X86_CR0_PE | X86_CR0_PG), X86_CR0_PE | X86_CR0_PG);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(s.cr3, PML4_START);
        assert_eq!(s.cs.l, 1);
        let pde511: u64 = m.read_obj(GuestAddress(PDE_START + 511 * 8)).unwrap();
        assert_eq!(pde511, (511 << 21) | 0x83);
        assert_eq!(boot_regs(BootProtocol::Linux, 1).rsi, ZERO_PAGE_START);
    }

    #[test]
    fn lint_pins_are_extint_and_nmi() {
        let mut l = kvm_lapic_state::default();
        set_lapic_reg(&mut l, APIC_LVT0, 0x0001_0700);
        set_lint(&mut l);
        assert_eq!(lapic_reg(&l, APIC_LVT0), 0x0001_0700);
        assert_eq!((lapic_reg(&l, APIC_LVT1) >> 8) & 7, APIC_MODE_NMI);
    }
}
