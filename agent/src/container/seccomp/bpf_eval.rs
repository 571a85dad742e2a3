//! A classic BPF interpreter for the instructions seccompiler and the guard emit, and (for
//! tests) the kernel's rule for combining several filters.
//!
//! [`compile`](super::compile) uses it to find the filter that would refuse the `seccomp(2)`
//! call installing the next one, so that it can go last; tests use it to check what a compiled
//! profile returns for a call without installing it, and the behaviour tests check this model
//! against the kernel.

use seccompiler::sock_filter;

/// `SECCOMP_RET_ACTION_FULL`: the action part of a filter's return value.
const RET_ACTION_FULL: u32 = 0xffff_0000;
/// `SECCOMP_RET_LOG`: the most restrictive action that still runs the call.
const RET_LOG: u32 = 0x7ffc_0000;
/// `AUDIT_ARCH_X86_64`.
pub(super) const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
/// `AUDIT_ARCH_I386`.
#[cfg(test)]
pub(super) const AUDIT_ARCH_I386: u32 = 0x4000_0003;

/// The fields of the kernel's `struct seccomp_data` that filters read.
#[derive(Debug, Clone, Copy)]
pub(super) struct Call {
    /// System call number.
    pub nr: i32,
    /// `AUDIT_ARCH_*` of the calling ABI.
    pub arch: u32,
    /// The six arguments.
    pub args: [u64; 6],
}

impl Call {
    /// An x86_64 call of `nr` (x86_64 numbers fit in 32 bits) with `args`; missing ones are 0.
    pub fn x86_64(nr: i64, args: &[u64]) -> Self {
        let mut all = [0; 6];
        for (slot, arg) in all.iter_mut().zip(args) {
            *slot = *arg;
        }
        Call {
            nr: nr as i32,
            arch: AUDIT_ARCH_X86_64,
            args: all,
        }
    }

    fn load(&self, offset: u32) -> Option<u32> {
        match offset {
            0 => Some(self.nr as u32),
            4 => Some(self.arch),
            // instruction_pointer (8..16) is not modelled: no filter here reads it.
            16..=60 if offset.is_multiple_of(4) => {
                let arg = self.args[((offset - 16) / 8) as usize];
                Some(if (offset - 16).is_multiple_of(8) {
                    arg as u32
                } else {
                    (arg >> 32) as u32
                })
            }
            _ => None,
        }
    }
}

/// Runs one filter on `call` and returns its `SECCOMP_RET_*` value, or `None` for a program
/// outside the model (an unknown instruction, a jump or load out of range).
pub(super) fn run(filter: &[sock_filter], call: &Call) -> Option<u32> {
    let mut a: u32 = 0;
    let mut pc = 0usize;
    loop {
        let ins = filter.get(pc)?;
        pc += 1;
        match ins.code {
            // BPF_LD | BPF_W | BPF_ABS
            0x20 => a = call.load(ins.k)?,
            // BPF_ALU | BPF_AND | BPF_K
            0x54 => a &= ins.k,
            // BPF_JMP | BPF_JA
            0x05 => pc = pc.checked_add(ins.k as usize)?,
            // BPF_JMP | BPF_{JEQ,JGT,JGE,JSET} | BPF_K
            code @ (0x15 | 0x25 | 0x35 | 0x45) => {
                let taken = match code {
                    0x15 => a == ins.k,
                    0x25 => a > ins.k,
                    0x35 => a >= ins.k,
                    _ => a & ins.k != 0,
                };
                pc += usize::from(if taken { ins.jt } else { ins.jf });
            }
            // BPF_RET | BPF_K
            0x06 => return Some(ins.k),
            _ => return None,
        }
    }
}

/// The action part of a return value, ordered as the kernel orders restrictiveness (smaller is
/// more restrictive).
pub(super) fn action_rank(ret: u32) -> i32 {
    (ret & RET_ACTION_FULL) as i32
}

/// Whether `filter` keeps `call` from running (anything more restrictive than LOG), or might:
/// a program the model cannot run counts as refusing.
pub(super) fn refuses(filter: &[sock_filter], call: &Call) -> bool {
    run(filter, call).is_none_or(|ret| action_rank(ret) < action_rank(RET_LOG))
}

/// What the kernel returns for `call` with `filters` installed in order: every filter runs,
/// newest first, and a result replaces the one so far only when its action is strictly more
/// restrictive (`seccomp_run_filters`: `ACTION_ONLY(cur) < ACTION_ONLY(ret)`, as `s32`).
#[cfg(test)]
pub(super) fn run_all(filters: &[seccompiler::BpfProgram], call: &Call) -> u32 {
    let mut ret = 0x7fff_0000; // SECCOMP_RET_ALLOW
    for filter in filters.iter().rev() {
        assert!(filter.len() <= 4096, "filter length {}", filter.len());
        let cur = run(filter, call).expect("filter runs in the model");
        if action_rank(cur) < action_rank(ret) {
            ret = cur;
        }
    }
    ret
}
