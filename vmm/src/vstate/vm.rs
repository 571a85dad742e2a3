//! The VM: its file descriptor with guest memory registered, the in-kernel interrupt
//! controllers (PIC, IOAPIC, LAPICs) and PIT, the TSS and identity-map pages, and the
//! eventfd plumbing (irqfd: an eventfd write raises a GSI; ioeventfd: a guest MMIO write
//! signals an eventfd without leaving the kernel).

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::kvm::KvmContext;
use crate::arch::layout::{KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS};

/// Setting up the VM failed.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// `KVM_CREATE_VM`.
    #[error("creating the VM")]
    Create(#[source] kvm_ioctls::Error),
    /// A KVM ioctl during setup.
    #[error("{0}")]
    Setup(&'static str, #[source] kvm_ioctls::Error),
    /// More memory regions than KVM has slots.
    #[error("{0} memory regions, KVM has {1} slots")]
    TooManyRegions(usize, usize),
    /// Registering an irqfd or ioeventfd.
    #[error("registering an {what} for {at:#x}")]
    EventFd {
        /// irqfd or ioeventfd.
        what: &'static str,
        /// The GSI or address.
        at: u64,
        /// The error.
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// A KVM VM with memory, irqchip and PIT.
#[derive(Debug)]
pub struct Vm {
    fd: VmFd,
    ioeventfd: bool,
}

impl Vm {
    /// Creates the VM, registers `mem`, and creates the TSS, identity map, irqchip and PIT.
    pub fn new(kvm: &KvmContext, mem: &GuestMemoryMmap) -> Result<Self, VmError> {
        let fd = kvm.fd().create_vm().map_err(VmError::Create)?;
        if mem.num_regions() > kvm.max_memslots() {
            return Err(VmError::TooManyRegions(
                mem.num_regions(),
                kvm.max_memslots(),
            ));
        }
        for (slot, region) in mem.iter().enumerate() {
            let host = mem
                .get_host_address(region.start_addr())
                .map_err(|_| VmError::TooManyRegions(slot, 0))?;
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: host as u64,
                flags: 0,
            };
            // SAFETY: the region is a live mapping of `region.len()` bytes owned by `mem`,
            // which outlives the VM (the VMM drops the VM before the memory).
            unsafe { fd.set_user_memory_region(r) }
                .map_err(|e| VmError::Setup("KVM_SET_USER_MEMORY_REGION", e))?;
        }
        fd.set_tss_address(KVM_TSS_ADDRESS as usize)
            .map_err(|e| VmError::Setup("KVM_SET_TSS_ADDR", e))?;
        fd.set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
            .map_err(|e| VmError::Setup("KVM_SET_IDENTITY_MAP_ADDR", e))?;
        fd.create_irq_chip()
            .map_err(|e| VmError::Setup("KVM_CREATE_IRQCHIP", e))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit)
            .map_err(|e| VmError::Setup("KVM_CREATE_PIT2", e))?;
        Ok(Self {
            fd,
            ioeventfd: kvm.has_ioeventfd(),
        })
    }

    /// The VM file descriptor.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// Makes a write to `evt` raise `gsi`.
    pub fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.fd
            .register_irqfd(evt, gsi)
            .map_err(|source| VmError::EventFd {
                what: "irqfd",
                at: u64::from(gsi),
                source,
            })
    }

    /// Makes a guest write to the 4-byte MMIO register at `addr` signal `evt` inside KVM.
    /// Returns false (and registers nothing) when KVM has no ioeventfd; the transport then
    /// signals the eventfd itself on the MMIO exit.
    pub fn register_ioeventfd(
        &self,
        evt: &EventFd,
        addr: u64,
        datamatch: Option<u32>,
    ) -> Result<bool, VmError> {
        if !self.ioeventfd {
            return Ok(false);
        }
        let at = IoEventAddress::Mmio(addr);
        let r = match datamatch {
            Some(v) => self.fd.register_ioevent(evt, &at, v),
            None => self.fd.register_ioevent(evt, &at, NoDatamatch),
        };
        r.map_err(|source| VmError::EventFd {
            what: "ioeventfd",
            at: addr,
            source,
        })?;
        Ok(true)
    }
}
