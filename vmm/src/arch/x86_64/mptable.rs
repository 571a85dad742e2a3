//! The Intel MultiProcessor table (MP spec 1.4): without ACPI it is how the guest learns its
//! CPUs, the IOAPIC and how ISA IRQs reach it. Written at the EBDA, where Linux looks for the
//! floating pointer.
//!
//! Layout: the 16-byte floating pointer (`_MP_`), then the configuration table (`PCMP`)
//! header and its entries: one processor per vCPU, the ISA bus, the IOAPIC, an I/O interrupt
//! entry per IOAPIC pin (ISA IRQ n → pin n, bus-default polarity and trigger), and the two
//! local interrupt entries (LINT0 ExtINT, LINT1 NMI). Built as bytes, checksummed.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{APIC_ADDR, EBDA_START, IOAPIC_ADDR, IRQ_MAX};

/// Writing the MP table failed.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    /// No vCPU, or more than fit in the 1 KiB EBDA.
    #[error("{0} vCPUs: the MP table describes 1 to {MAX_CPUS}")]
    TooManyCpus(u8),
    /// The table did not fit in guest memory.
    #[error("writing the MP table into guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// The most vCPUs whose MP table fits in the EBDA's 1 KiB.
pub const MAX_CPUS: u8 = 32;

const APIC_VERSION: u8 = 0x14;
const CPU_STEPPING: u32 = 0x600;
const CPU_FEATURE_APIC: u32 = 0x200;
const CPU_FEATURE_FPU: u32 = 0x001;
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
const MPC_APIC_USABLE: u8 = 1;
const MP_PROCESSOR: u8 = 0;
const MP_BUS: u8 = 1;
const MP_IOAPIC: u8 = 2;
const MP_INTSRC: u8 = 3;
const MP_LINTSRC: u8 = 4;
const MP_IRQ_INT: u8 = 0;
const MP_IRQ_NMI: u8 = 1;
const MP_IRQ_EXTINT: u8 = 3;

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// The table's bytes for `num_cpus` vCPUs, to be placed at `base`.
pub fn build(num_cpus: u8, base: u64) -> Result<Vec<u8>, MptableError> {
    if num_cpus == 0 || num_cpus > MAX_CPUS {
        return Err(MptableError::TooManyCpus(num_cpus));
    }
    let ioapic_id = num_cpus + 1;
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..num_cpus {
        entries.extend_from_slice(&[
            MP_PROCESSOR,
            cpu,
            APIC_VERSION,
            CPU_ENABLED | if cpu == 0 { CPU_BSP } else { 0 },
        ]);
        entries.extend_from_slice(&CPU_STEPPING.to_le_bytes());
        entries.extend_from_slice(&(CPU_FEATURE_APIC | CPU_FEATURE_FPU).to_le_bytes());
        entries.extend_from_slice(&[0u8; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[MP_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[MP_IOAPIC, ioapic_id, APIC_VERSION, MPC_APIC_USABLE]);
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    count += 1;
    for irq in 0..=IRQ_MAX as u8 {
        entries.extend_from_slice(&[MP_INTSRC, MP_IRQ_INT, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    entries.extend_from_slice(&[MP_LINTSRC, MP_IRQ_EXTINT, 0, 0, 0, 0, 0, 0]);
    entries.extend_from_slice(&[MP_LINTSRC, MP_IRQ_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    const FLOATING_LEN: usize = 16;
    const HEADER_LEN: usize = 44;
    let table_addr = base + FLOATING_LEN as u64;
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(b"PCMP");
    header.extend_from_slice(&((HEADER_LEN + entries.len()) as u16).to_le_bytes());
    header.push(4); // spec 1.4
    header.push(0); // checksum, below
    header.extend_from_slice(b"MOATVMM ");
    header.extend_from_slice(b"000000000000");
    header.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    header.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    header.extend_from_slice(&count.to_le_bytes());
    header.extend_from_slice(&APIC_ADDR.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes()); // extended table length, checksum, reserved
    debug_assert_eq!(header.len(), HEADER_LEN);
    let mut table = header;
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut floating = Vec::with_capacity(FLOATING_LEN);
    floating.extend_from_slice(b"_MP_");
    floating.extend_from_slice(&(table_addr as u32).to_le_bytes());
    floating.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]);
    floating[10] = checksum(&floating);

    let mut out = floating;
    out.extend_from_slice(&table);
    Ok(out)
}

/// Writes the table for `num_cpus` vCPUs at the EBDA.
pub fn setup_mptable(mem: &GuestMemoryMmap, num_cpus: u8) -> Result<(), MptableError> {
    let bytes = build(num_cpus, EBDA_START)?;
    mem.write_slice(&bytes, GuestAddress(EBDA_START))
        .map_err(MptableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn checksums_and_counts_hold() {
        for cpus in [1u8, 2, 31, MAX_CPUS] {
            let b = build(cpus, EBDA_START).unwrap();
            assert_eq!(&b[..4], b"_MP_");
            assert_eq!(sum(&b[..16]), 0);
            let ptr = u32::from_le_bytes(b[4..8].try_into().unwrap()) as u64;
            assert_eq!(ptr, EBDA_START + 16);
            let t = &b[16..];
            assert_eq!(&t[..4], b"PCMP");
            let len = u16::from_le_bytes([t[4], t[5]]) as usize;
            assert_eq!(len, t.len());
            assert_eq!(sum(t), 0);
            let count = u16::from_le_bytes([t[34], t[35]]);
            assert_eq!(count, u16::from(cpus) + 1 + 1 + 24 + 2);
            // Fits in the EBDA, below the end of base memory.
            assert!(EBDA_START + b.len() as u64 <= 0xa0000);
        }
    }

    #[test]
    fn rejects_impossible_counts() {
        assert!(build(0, EBDA_START).is_err());
        assert!(build(MAX_CPUS + 1, EBDA_START).is_err());
    }
}
