//! The CPUID a vCPU sees: what KVM supports (`KVM_GET_SUPPORTED_CPUID`), with the leaves that
//! describe this vCPU filled in: APIC ID and logical CPU count (leaf 1), the hypervisor bit,
//! the core count in the cache leaves (leaf 4), the x2APIC topology (leaf 0xb) and AMD's
//! extended APIC ID (0x8000_001e). The KVM leaves (0x4000_0000, 0x4000_0001) come from KVM.
//!
//! Every vCPU is a core of one socket, with one thread per core.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

/// CPUID leaf 1 ECX: running under a hypervisor.
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID leaf 1 EDX: HTT (the logical processor count in EBX is valid).
const LEAF1_EDX_HTT: u32 = 1 << 28;

/// Adjusts `cpuid` (as KVM supports it) for vCPU `index` of `count`.
pub fn filter_cpuid(cpuid: &mut CpuId, index: u8, count: u8) {
    let shift = u32::from(count.max(1)).next_power_of_two().trailing_zeros();
    for e in cpuid.as_mut_slice() {
        patch_entry(e, index, count, shift);
    }
}

fn patch_entry(e: &mut kvm_cpuid_entry2, index: u8, count: u8, shift: u32) {
    let apic = u32::from(index);
    let count = u32::from(count.max(1));
    match e.function {
        0x1 => {
            e.ebx = (e.ebx & 0x0000_ffff) | (apic << 24) | (count << 16);
            e.ecx |= LEAF1_ECX_HYPERVISOR;
            if count > 1 {
                e.edx |= LEAF1_EDX_HTT;
            } else {
                e.edx &= !LEAF1_EDX_HTT;
            }
        }
        0x4 => {
            // EAX[31:26]: cores per package - 1; EAX[25:14]: threads sharing this cache - 1.
            let cache_level = (e.eax >> 5) & 0x7;
            let sharing = if cache_level >= 3 { count - 1 } else { 0 };
            e.eax = (e.eax & 0x3fff) | ((count - 1) << 26) | (sharing << 14);
        }
        0xb => {
            e.edx = apic;
            match e.index {
                0 => {
                    // SMT level: one thread per core.
                    e.eax = 0;
                    e.ebx = 1;
                    e.ecx = (1 << 8) | e.index;
                }
                1 => {
                    // Core level: every vCPU.
                    e.eax = shift;
                    e.ebx = count;
                    e.ecx = (2 << 8) | e.index;
                }
                _ => {
                    e.eax = 0;
                    e.ebx = 0;
                    e.ecx = e.index;
                }
            }
        }
        0x8000_001e => {
            e.eax = apic;
            e.ebx &= !0xff;
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ebx: 0xffff_ffff,
            ..Default::default()
        }
    }

    #[test]
    fn leaves_describe_the_vcpu() {
        let mut c =
            CpuId::from_entries(&[entry(1, 0), entry(0xb, 0), entry(0xb, 1), entry(4, 0)]).unwrap();
        filter_cpuid(&mut c, 2, 3);
        let s = c.as_slice();
        assert_eq!(s[0].ebx >> 24, 2);
        assert_eq!((s[0].ebx >> 16) & 0xff, 3);
        assert_ne!(s[0].ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_ne!(s[0].edx & LEAF1_EDX_HTT, 0);
        assert_eq!((s[1].ebx, s[1].edx), (1, 2));
        assert_eq!((s[2].eax, s[2].ebx, s[2].ecx >> 8), (2, 3, 2));
        assert_eq!(s[3].eax >> 26, 2);
    }

    #[test]
    fn one_vcpu_has_no_htt() {
        let mut c = CpuId::from_entries(&[kvm_cpuid_entry2 {
            function: 1,
            edx: LEAF1_EDX_HTT,
            ..Default::default()
        }])
        .unwrap();
        filter_cpuid(&mut c, 0, 1);
        assert_eq!(c.as_slice()[0].edx & LEAF1_EDX_HTT, 0);
    }
}
