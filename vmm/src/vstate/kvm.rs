//! `/dev/kvm`: opened once per VMM, checked for what moat needs, and asked for the CPUID it
//! supports.

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, Kvm};

/// Opening or querying KVM failed.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// `/dev/kvm` could not be opened.
    #[error("opening /dev/kvm (is KVM available, and may this user open it?)")]
    Open(#[source] kvm_ioctls::Error),
    /// The KVM API version is not 12.
    #[error("KVM API version {0}, expected 12")]
    ApiVersion(i32),
    /// A capability moat needs is missing.
    #[error("KVM lacks a capability moat needs: {0}")]
    MissingCap(&'static str),
    /// `KVM_GET_SUPPORTED_CPUID` failed.
    #[error("reading the supported CPUID")]
    Cpuid(#[source] kvm_ioctls::Error),
}

/// The capabilities checked at start, with the name each error gives.
const REQUIRED: &[(Cap, &str)] = &[
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::Pit2, "KVM_CAP_PIT2"),
    (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
];

/// An open `/dev/kvm`.
#[derive(Debug)]
pub struct KvmContext {
    kvm: Kvm,
    ioeventfd: bool,
    max_memslots: usize,
}

impl KvmContext {
    /// Opens `/dev/kvm` and checks its version and capabilities.
    pub fn new() -> Result<Self, KvmError> {
        let kvm = Kvm::new().map_err(KvmError::Open)?;
        let v = kvm.get_api_version();
        if v != kvm_bindings::KVM_API_VERSION as i32 {
            return Err(KvmError::ApiVersion(v));
        }
        for (cap, name) in REQUIRED {
            if !kvm.check_extension(*cap) {
                return Err(KvmError::MissingCap(name));
            }
        }
        let ioeventfd = kvm.check_extension(Cap::Ioeventfd);
        let max_memslots = kvm.get_nr_memslots();
        Ok(Self {
            kvm,
            ioeventfd,
            max_memslots,
        })
    }

    /// The KVM handle.
    pub fn fd(&self) -> &Kvm {
        &self.kvm
    }

    /// Whether KVM can signal an eventfd on an MMIO write itself (`KVM_CAP_IOEVENTFD`).
    pub fn has_ioeventfd(&self) -> bool {
        self.ioeventfd
    }

    /// Memory slots per VM.
    pub fn max_memslots(&self) -> usize {
        self.max_memslots
    }

    /// What KVM can offer a vCPU.
    pub fn supported_cpuid(&self) -> Result<CpuId, KvmError> {
        self.kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(KvmError::Cpuid)
    }
}
