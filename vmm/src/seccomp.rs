//! System call filters, one per kind of thread, installed before the first guest
//! instruction runs: each vCPU thread installs its own before it waits for its first
//! `Resume`, and the event-loop thread installs its own before it resumes the vCPUs.
//!
//! Allow lists, not deny lists. With [`SeccompMode::Enforce`] a call outside the list raises
//! `SIGSYS`; the handler writes the call's number to stderr and ends the process (exit
//! status 159), so a missing entry is found at once and named. [`SeccompMode::Log`] lets
//! such calls through and has the kernel log them (audit), for finding what is missing.
//!
//! - vCPU threads: `ioctl(KVM_RUN)` only among ioctls; writes (console output, irqfds,
//!   eventfds), futexes (bus locks, channels), memory management for the allocator, signal
//!   return (kicks), `getrusage` (the first-`KVM_RUN` figure), thread exit.
//! - The event-loop thread: epoll, eventfd/timerfd, file I/O on the disk images (positioned
//!   reads and writes, `fdatasync`, `fallocate`), Unix sockets for vsock and vhost-user
//!   (`accept4`, `socket`, `connect`, `sendmsg`, `recvmsg`), `ioctl(FIONBIO/FIOCLEX)`,
//!   `tgkill` or `tkill` (kicking vCPUs: glibc's and musl's `pthread_kill`), and the
//!   allocator.

use std::collections::BTreeMap;
use std::sync::Arc;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Building a filter failed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// seccompiler refused the rules.
    #[error("building the {0} seccomp filter")]
    Build(&'static str, #[source] seccompiler::BackendError),
    /// Installing the SIGSYS handler.
    #[error("installing the SIGSYS handler")]
    Signal(#[source] std::io::Error),
}

/// How filters are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SeccompMode {
    /// No filter.
    Off,
    /// Calls outside the list are allowed and logged by the kernel.
    Log,
    /// Calls outside the list end the process with a message naming the call.
    #[default]
    Enforce,
}

/// The compiled filters.
#[derive(Debug, Clone)]
pub struct Filters {
    /// For vCPU threads.
    pub vcpu: Arc<BpfProgram>,
    /// For the event-loop thread.
    pub vmm: Arc<BpfProgram>,
}

const KVM_RUN: u64 = 0xae80;

/// Calls every thread makes: the allocator, locks, signals, exit, logging.
const COMMON: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_futex,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_sched_yield,
    libc::SYS_getrandom,
    libc::SYS_getrusage,
    libc::SYS_restart_syscall,
    libc::SYS_rseq,
];

const VMM: &[i64] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_create1,
    libc::SYS_eventfd2,
    libc::SYS_timerfd_settime,
    libc::SYS_timerfd_gettime,
    libc::SYS_readv,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_lseek,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_fallocate,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_fcntl,
    libc::SYS_accept4,
    libc::SYS_socket,
    libc::SYS_connect,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_shutdown,
    libc::SYS_getsockopt,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_tgkill,
    // musl's pthread_kill.
    libc::SYS_tkill,
    libc::SYS_poll,
    libc::SYS_ppoll,
];

const FIONBIO: u64 = 0x5421;
const FIOCLEX: u64 = 0x5451;

/// A rule allowing a call whose argument `arg` equals `value`.
fn arg_rule(arg: u8, value: u64) -> SeccompRule {
    let cond = SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
        .expect("the argument index is below 6");
    SeccompRule::new(vec![cond]).expect("one condition")
}

fn compile(
    name: &'static str,
    calls: &[&[i64]],
    ioctls: &[u64],
    mode: SeccompMode,
) -> Result<BpfProgram, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for set in calls {
        for c in *set {
            rules.insert(*c, Vec::new());
        }
    }
    rules.insert(
        libc::SYS_ioctl,
        ioctls.iter().map(|r| arg_rule(1, *r)).collect(),
    );
    // The SIGSYS handler names the offending thread.
    rules.insert(libc::SYS_prctl, vec![arg_rule(0, libc::PR_GET_NAME as u64)]);
    // Debug builds of std check that a descriptor is open before closing it
    // (`fcntl(fd, F_GETFD)`); the VMM thread needs fcntl in full (dup).
    rules
        .entry(libc::SYS_fcntl)
        .or_insert_with(|| vec![arg_rule(1, libc::F_GETFD as u64)]);
    let mismatch = match mode {
        SeccompMode::Log => SeccompAction::Log,
        _ => SeccompAction::Trap,
    };
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, TargetArch::x86_64)
        .map_err(|e| SeccompError::Build(name, e))?;
    BpfProgram::try_from(filter).map_err(|e| SeccompError::Build(name, e))
}

/// The filters for `mode` (`None` when off); installs the SIGSYS handler when enforcing.
pub fn filters(mode: SeccompMode) -> Result<Option<Filters>, SeccompError> {
    if mode == SeccompMode::Off {
        return Ok(None);
    }
    if mode == SeccompMode::Enforce {
        install_sigsys_handler()?;
    }
    Ok(Some(Filters {
        vcpu: Arc::new(compile("vCPU", &[COMMON], &[KVM_RUN], mode)?),
        vmm: Arc::new(compile("VMM", &[COMMON, VMM], &[FIONBIO, FIOCLEX], mode)?),
    }))
}

/// Offset of `si_syscall` in `siginfo_t` for SIGSYS on x86_64 (after signo, errno, code,
/// padding and `si_call_addr`).
const SI_SYSCALL_OFFSET: usize = 24;

extern "C" fn handle_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for SIGSYS, whose `_sigsys` member holds
    // the system call number at this offset.
    let nr =
        unsafe { std::ptr::read_unaligned(info.cast::<u8>().add(SI_SYSCALL_OFFSET).cast::<i32>()) };
    let mut msg =
        *b"moat-vmm: seccomp: system call 0000000000 is not allowed in thread                 \n";
    let mut n = nr.unsigned_abs();
    for i in (31..41).rev() {
        msg[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    let mut name = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes into `name`; prctl is async-signal-safe.
    unsafe { libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr()) };
    let at = msg.len() - 17;
    for (i, b) in name.iter().take_while(|b| **b != 0).enumerate() {
        msg[at + i] = *b;
    }
    // SAFETY: write(2) and _exit(2) are async-signal-safe; `msg` is a valid buffer.
    unsafe {
        libc::write(2, msg.as_ptr().cast(), msg.len());
        libc::_exit(159);
    }
}

fn install_sigsys_handler() -> Result<(), SeccompError> {
    // SAFETY: a zeroed sigaction is a valid starting value.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = handle_sigsys as *const () as usize;
    sa.sa_flags = libc::SA_SIGINFO;
    // SAFETY: `sa` is initialised; the handler only makes async-signal-safe calls.
    if unsafe { libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut()) } != 0 {
        return Err(SeccompError::Signal(std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_compile() {
        let f = filters(SeccompMode::Log).unwrap().unwrap();
        assert!(!f.vcpu.is_empty());
        assert!(f.vmm.len() > f.vcpu.len());
        assert!(filters(SeccompMode::Off).unwrap().is_none());
    }

    #[test]
    fn a_filtered_thread_is_confined() {
        // Errno instead of Trap so that the test process survives.
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
        for c in COMMON {
            rules.insert(*c, Vec::new());
        }
        let f = SeccompFilter::new(
            rules,
            SeccompAction::Errno(libc::EPERM as u32),
            SeccompAction::Allow,
            TargetArch::x86_64,
        )
        .unwrap();
        let prog = BpfProgram::try_from(f).unwrap();
        let r = std::thread::spawn(move || {
            seccompiler::apply_filter(&prog).unwrap();
            // SAFETY: getppid has no arguments and no preconditions.
            let ppid = unsafe { libc::syscall(libc::SYS_getppid) };
            (ppid, std::io::Error::last_os_error().raw_os_error())
        })
        .join()
        .unwrap();
        assert_eq!(r, (-1, Some(libc::EPERM)));
    }
}
