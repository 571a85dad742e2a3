//! Which VMM runs a sandbox, and which guest kernel the built-in VMM boots.
//!
//! The rule (ARCHITECTURE.md, HOST-KVM.md): the built-in VMM where `/dev/kvm` is backed by
//! hardware virtualization (`kvm_intel`/`kvm_amd` with vmx/svm); QEMU everywhere else, with
//! TCG since no other KVM there can run a guest's user space.
//!
//! On a PVM-only host (`kvm_pvm`, no vmx/svm) the built-in VMM can still boot the guest
//! kernel as far as `Run /init` (PVM emulates an ordinary kernel instruction by
//! instruction): that needs the `pvm` kernel variant (`guest-kernel/build.sh --variant pvm`,
//! two patches in `guest-kernel/patches/pvm/`) and [`PVM_EMULATION_CMDLINE`]. It is what the
//! built-in VMM's boot test uses here; containers never take this path.
//!
//! `config::Backend::choose` returns [`auto_vmm`]'s answer for `Backend::Auto` and accepts
//! `Backend::Builtin` only where [`builtin_support`] is [`BuiltinSupport::Full`]; the
//! sandbox process, the shim and `moat boot` start what it chose through `guest::GuestVm`;
//! `moat check` prints [`builtin_support`]'s line.

use std::path::{Path, PathBuf};

use crate::config::Vmm;
use crate::host::KvmKind;
use crate::qemu::Accel;

/// What the built-in VMM can do on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuiltinSupport {
    /// Hardware KVM: everything, containers included.
    Full,
    /// PVM-only KVM: the guest kernel boots up to `Run /init` with the `pvm` kernel variant;
    /// user space cannot run.
    BootOnly,
    /// No usable KVM.
    None,
}

impl BuiltinSupport {
    /// For `moat check`.
    pub fn describe(self) -> &'static str {
        match self {
            BuiltinSupport::Full => "available (hardware KVM): runs the guests",
            BuiltinSupport::BootOnly => {
                "boots the guest kernel only as far as init here (PVM-only KVM emulates the \
                 guest; user space cannot run), so containers use QEMU"
            }
            BuiltinSupport::None => "unavailable (no usable /dev/kvm)",
        }
    }
}

/// What the built-in VMM can do with this host's KVM.
pub fn builtin_support(kvm: KvmKind) -> BuiltinSupport {
    match kvm {
        KvmKind::Hardware => BuiltinSupport::Full,
        KvmKind::PvmOnly => BuiltinSupport::BootOnly,
        KvmKind::Unknown | KvmKind::Absent => BuiltinSupport::None,
    }
}

/// The automatic choice and its reason: the built-in VMM on hardware KVM, QEMU with TCG
/// everywhere else.
pub fn auto_vmm(kvm: KvmKind) -> (Vmm, &'static str) {
    match kvm {
        KvmKind::Hardware => (Vmm::Builtin, "built-in VMM: /dev/kvm is hardware KVM"),
        KvmKind::PvmOnly => (
            Vmm::Qemu(Accel::Tcg),
            "qemu with TCG: /dev/kvm is PVM-only (kvm_pvm, no vmx/svm), \
             which cannot run this guest's user space",
        ),
        KvmKind::Unknown => (
            Vmm::Qemu(Accel::Tcg),
            "qemu with TCG: /dev/kvm has no known backend",
        ),
        KvmKind::Absent => (Vmm::Qemu(Accel::Tcg), "qemu with TCG: no /dev/kvm"),
    }
}

/// The guest kernel build the built-in VMM needs on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelVariant {
    /// The one kernel every QEMU guest and hardware-KVM guest boots.
    Default,
    /// With `guest-kernel/patches/pvm/`: for booting under PVM-only KVM's emulation.
    Pvm,
}

/// Kernel parameters that hide from the guest what PVM's instruction emulator lacks
/// (HOST-KVM.md: `lock cmpxchg16b`, `xrstor`, `clac`/`stac`, `popcnt`, ...), and `nopv`,
/// without which boot stalls for minutes in KVM paravirt hypercalls. Only with
/// [`KernelVariant::Pvm`].
pub const PVM_EMULATION_CMDLINE: &[&str] = &[
    "nopv",
    "noxsave",
    "clearcpuid=cx16,smap,smep,pku,ibt,popcnt,avx,avx2,avx512f,fma,f16c,aes,pclmulqdq,\
     sha_ni,bmi1,bmi2,movbe,rdrand,rdseed,adx,erms,fsrm,x2apic",
];

impl KernelVariant {
    /// The variant for this host's KVM.
    pub fn for_host(kvm: KvmKind) -> Self {
        match kvm {
            KvmKind::PvmOnly => KernelVariant::Pvm,
            _ => KernelVariant::Default,
        }
    }

    /// `guest-kernel/build.sh --variant <this>`.
    pub fn build_arg(self) -> &'static str {
        match self {
            KernelVariant::Default => "default",
            KernelVariant::Pvm => "pvm",
        }
    }

    /// The installed file name in the share directory (`scripts/build-guest.sh`).
    pub fn file_name(self) -> &'static str {
        match self {
            KernelVariant::Default => "vmlinux",
            KernelVariant::Pvm => "vmlinux-pvm",
        }
    }

    /// The kernel next to `default_kernel` (the default variant's path) for this variant.
    pub fn kernel_path(self, default_kernel: &Path) -> PathBuf {
        match self {
            KernelVariant::Default => default_kernel.to_path_buf(),
            KernelVariant::Pvm => default_kernel.with_file_name(self.file_name()),
        }
    }

    /// Extra kernel parameters this variant needs.
    pub fn cmdline(self) -> &'static [&'static str] {
        match self {
            KernelVariant::Default => &[],
            KernelVariant::Pvm => PVM_EMULATION_CMDLINE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_only_on_hardware_kvm() {
        assert_eq!(auto_vmm(KvmKind::Hardware).0, Vmm::Builtin);
        for k in [KvmKind::PvmOnly, KvmKind::Unknown, KvmKind::Absent] {
            assert_eq!(auto_vmm(k).0, Vmm::Qemu(Accel::Tcg), "{k:?}");
        }
        assert_eq!(builtin_support(KvmKind::Hardware), BuiltinSupport::Full);
        assert_eq!(builtin_support(KvmKind::PvmOnly), BuiltinSupport::BootOnly);
        assert_eq!(builtin_support(KvmKind::Absent), BuiltinSupport::None);
    }

    #[test]
    fn pvm_hosts_get_the_patched_kernel_and_its_parameters() {
        let v = KernelVariant::for_host(KvmKind::PvmOnly);
        assert_eq!(v, KernelVariant::Pvm);
        assert_eq!(
            v.kernel_path(Path::new("/usr/local/share/moat/vmlinux")),
            PathBuf::from("/usr/local/share/moat/vmlinux-pvm")
        );
        assert!(v.cmdline().contains(&"nopv"));
        let d = KernelVariant::for_host(KvmKind::Hardware);
        assert_eq!(
            d.kernel_path(Path::new("/k/vmlinux")),
            PathBuf::from("/k/vmlinux")
        );
        assert!(d.cmdline().is_empty());
        assert_eq!(
            KernelVariant::for_host(KvmKind::Absent),
            KernelVariant::Default
        );
    }
}
