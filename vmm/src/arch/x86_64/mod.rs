//! x86_64: the guest memory layout, the boot-time vCPU state, CPUID and the MP table.

pub mod cpuid;
pub mod layout;
pub mod mptable;
pub mod regs;
