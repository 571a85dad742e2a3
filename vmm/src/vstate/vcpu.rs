//! vCPUs: their boot state, and one thread each running `KVM_RUN` under an explicit run-state
//! machine driven by typed messages.
//!
//! ```text
//!            Resume                       guest exit (shutdown, reset, error)
//!   Paused ─────────▶ Running ──────────────────────────────────────▶ Exited
//!     ▲  ◀───────────   │ │                                             ▲
//!     │    Pause        │ └─ PIO/MMIO exit: dispatched to the buses ──┐ │
//!     └── (threads start here; Finish from any state) ─────────────────┴─┘
//! ```
//!
//! A thread starts `Paused` (its seccomp filter already installed) and runs guest code only
//! after the first `Resume`. A request reaches a thread inside `KVM_RUN` through a kick: a
//! real-time signal whose handler sets `kvm_run.immediate_exit`, so that `KVM_RUN` returns
//! `EINTR` whether the signal lands inside or just before the ioctl. Every state change and
//! exit is answered on one channel shared by all vCPUs, tagged with the vCPU index; a
//! guest-driven exit also writes the VM's exit eventfd so that the event loop wakes up.

use std::cell::Cell;
use std::os::unix::thread::JoinHandleExt;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_bindings::{
    kvm_run, CpuId, Msrs, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use seccompiler::BpfProgram;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::vm::Vm;
use crate::arch::{cpuid, regs};
use crate::boot::KernelEntry;
use crate::devices::bus::Bus;
use crate::stats::CpuTime;

/// Creating, configuring or starting a vCPU failed.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// `KVM_CREATE_VCPU`.
    #[error("creating vCPU {0}")]
    Create(u8, #[source] kvm_ioctls::Error),
    /// A KVM ioctl setting up the vCPU's state.
    #[error("vCPU {0}: {1}")]
    Setup(u8, &'static str, #[source] kvm_ioctls::Error),
    /// The GDT, IDT or page tables.
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
    /// The boot MSRs did not fit KVM's MSR list.
    #[error("vCPU {0}: building the MSR list")]
    Msrs(u8),
    /// Not every boot MSR was accepted.
    #[error("vCPU {vcpu}: KVM took {set} of {want} boot MSRs")]
    MsrsPartial {
        /// The vCPU.
        vcpu: u8,
        /// How many were set.
        set: usize,
        /// How many were asked.
        want: usize,
    },
    /// Installing the kick signal handler.
    #[error("installing the vCPU kick signal handler")]
    Signal(#[source] std::io::Error),
    /// Spawning the thread.
    #[error("spawning the thread of vCPU {0}")]
    Spawn(u8, #[source] std::io::Error),
}

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// `KVM_EXIT_SHUTDOWN`: the guest triple-faulted, which is how Linux reboots with
    /// `reboot=t` (moat's agent powering off, or `panic=-1` after a panic).
    TripleFault,
    /// The guest reset the i8042 controller (Linux `reboot=k`).
    I8042Reset,
    /// `KVM_SYSTEM_EVENT_SHUTDOWN`.
    PowerOff,
    /// `KVM_SYSTEM_EVENT_RESET`.
    Reset,
    /// `KVM_SYSTEM_EVENT_CRASH`.
    Crash,
    /// The host stopped the VM.
    Stopped,
    /// A vCPU hit something it cannot handle (emulation failure, failed entry, ioctl error).
    VcpuError {
        /// The vCPU.
        vcpu: u8,
        /// What happened.
        detail: String,
    },
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitReason::TripleFault => write!(f, "guest reset by triple fault (reboot=t)"),
            ExitReason::I8042Reset => write!(f, "guest reset through the i8042 controller"),
            ExitReason::PowerOff => write!(f, "guest powered off"),
            ExitReason::Reset => write!(f, "guest reset"),
            ExitReason::Crash => write!(f, "guest crashed"),
            ExitReason::Stopped => write!(f, "stopped by the host"),
            ExitReason::VcpuError { vcpu, detail } => write!(f, "vCPU {vcpu}: {detail}"),
        }
    }
}

/// A request to a vCPU thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuRequest {
    /// Stop running guest code until `Resume`.
    Pause,
    /// Run guest code.
    Resume,
    /// End the thread.
    Finish,
}

/// What a vCPU thread reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuResponse {
    /// Now paused.
    Paused,
    /// Now running.
    Resumed,
    /// The thread ended, and why.
    Exited(ExitReason),
}

/// A vCPU thread's run state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuRunState {
    /// In or around `KVM_RUN`.
    Running,
    /// Waiting for a request.
    Paused,
    /// Done.
    Exited,
}

/// The buses a vCPU dispatches its I/O exits to.
#[derive(Debug, Default)]
pub struct VcpuIo {
    /// Port I/O.
    pub pio: Bus,
    /// MMIO.
    pub mmio: Bus,
}

/// The signal that kicks a vCPU out of `KVM_RUN`.
pub fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN()
}

thread_local! {
    static KVM_RUN_PTR: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let p = KVM_RUN_PTR.with(Cell::get);
    if !p.is_null() {
        // SAFETY: the pointer is this thread's own `kvm_run` mapping, set by the vCPU thread
        // before any kick can reach it and valid for the thread's life; a single byte
        // store is async-signal-safe.
        unsafe { std::ptr::write_volatile(&mut (*p).immediate_exit, 1) };
    }
}

/// Installs the kick handler (once per process; no `SA_RESTART`).
pub fn install_kick_handler() -> Result<(), VcpuError> {
    static DONE: OnceLock<Result<(), i32>> = OnceLock::new();
    let r = DONE.get_or_init(|| {
        // SAFETY: a zeroed sigaction is a valid starting value.
        let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
        sa.sa_sigaction = handle_kick as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        // SAFETY: `sa.sa_mask` is a valid sigset to initialise.
        unsafe { libc::sigemptyset(&mut sa.sa_mask) };
        // SAFETY: `sa` is fully initialised and the handler is async-signal-safe.
        let rc = unsafe { libc::sigaction(kick_signal(), &sa, std::ptr::null_mut()) };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
        }
    });
    r.map_err(|e| VcpuError::Signal(std::io::Error::from_raw_os_error(e)))
}

/// One vCPU, configured, not yet running.
#[derive(Debug)]
pub struct Vcpu {
    index: u8,
    fd: VcpuFd,
}

impl Vcpu {
    /// Creates vCPU `index`.
    pub fn new(vm: &Vm, index: u8) -> Result<Self, VcpuError> {
        let fd = vm
            .fd()
            .create_vcpu(u64::from(index))
            .map_err(|e| VcpuError::Create(index, e))?;
        Ok(Self { index, fd })
    }

    /// Sets CPUID, MSRs, FPU, registers and LAPIC for booting `entry` (the registers matter
    /// only on the BSP; the APs wait for INIT/SIPI).
    pub fn configure(
        &self,
        supported: &CpuId,
        mem: &GuestMemoryMmap,
        entry: KernelEntry,
        count: u8,
    ) -> Result<(), VcpuError> {
        let i = self.index;
        let setup = |what| move |e| VcpuError::Setup(i, what, e);
        let mut cpuid = supported.clone();
        cpuid::filter_cpuid(&mut cpuid, i, count);
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(setup("KVM_SET_CPUID2"))?;

        let entries = regs::boot_msrs();
        let msrs = Msrs::from_entries(&entries).map_err(|_| VcpuError::Msrs(i))?;
        let set = self.fd.set_msrs(&msrs).map_err(setup("KVM_SET_MSRS"))?;
        if set != entries.len() {
            return Err(VcpuError::MsrsPartial {
                vcpu: i,
                set,
                want: entries.len(),
            });
        }
        self.fd
            .set_fpu(&regs::boot_fpu())
            .map_err(setup("KVM_SET_FPU"))?;
        let mut sregs = self.fd.get_sregs().map_err(setup("KVM_GET_SREGS"))?;
        regs::setup_sregs(mem, entry.protocol, &mut sregs)?;
        self.fd.set_sregs(&sregs).map_err(setup("KVM_SET_SREGS"))?;
        self.fd
            .set_regs(&regs::boot_regs(entry.protocol, entry.entry.0))
            .map_err(setup("KVM_SET_REGS"))?;
        let mut lapic = self.fd.get_lapic().map_err(setup("KVM_GET_LAPIC"))?;
        regs::set_lint(&mut lapic);
        self.fd.set_lapic(&lapic).map_err(setup("KVM_SET_LAPIC"))?;
        Ok(())
    }

    /// Starts the thread, `Paused`: it installs `seccomp` (if any), then waits for `Resume`.
    pub fn spawn(
        self,
        io: Arc<VcpuIo>,
        seccomp: Option<Arc<BpfProgram>>,
        events: Sender<(u8, VcpuResponse)>,
        exit_evt: EventFd,
        first_run: Arc<OnceLock<CpuTime>>,
    ) -> Result<VcpuHandle, VcpuError> {
        let index = self.index;
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{index}"))
            .spawn(move || {
                let mut t = VcpuThread {
                    vcpu: self,
                    io,
                    requests: rx,
                    events,
                    exit_evt,
                    first_run,
                    state: VcpuRunState::Paused,
                };
                t.main(seccomp)
            })
            .map_err(|e| VcpuError::Spawn(index, e))?;
        Ok(VcpuHandle {
            index,
            requests: tx,
            thread: Some(thread),
        })
    }
}

/// The VMM's side of a vCPU thread.
#[derive(Debug)]
pub struct VcpuHandle {
    index: u8,
    requests: Sender<VcpuRequest>,
    thread: Option<JoinHandle<()>>,
}

impl VcpuHandle {
    /// The vCPU's index.
    pub fn index(&self) -> u8 {
        self.index
    }

    /// Sends `req` and kicks the thread out of `KVM_RUN`. False if the thread is gone.
    pub fn send(&self, req: VcpuRequest) -> bool {
        if self.requests.send(req).is_err() {
            return false;
        }
        self.kick();
        true
    }

    fn kick(&self) {
        if let Some(t) = &self.thread {
            if !t.is_finished() {
                // SAFETY: the thread is alive (not finished, and its handle not yet joined),
                // and the kick signal has a handler installed before any vCPU thread exists.
                unsafe { libc::pthread_kill(t.as_pthread_t() as _, kick_signal()) };
            }
        }
    }

    /// Waits for the thread to end (after `Finish` or a guest exit).
    pub fn join(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Responses from vCPU threads, tagged with the vCPU index.
pub type Responses = Vec<(u8, VcpuResponse)>;

/// Waits for `n` responses matching `want` from the shared channel, within `timeout`;
/// other responses (exits) are returned for the caller to handle.
pub fn collect_responses(
    rx: &Receiver<(u8, VcpuResponse)>,
    want: &VcpuResponse,
    n: usize,
    timeout: Duration,
) -> Result<Responses, Responses> {
    let deadline = std::time::Instant::now() + timeout;
    let mut got = 0;
    let mut others = Vec::new();
    while got < n {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok((_, r)) if &r == want => got += 1,
            Ok(other) => {
                if matches!(other.1, VcpuResponse::Exited(_)) {
                    // An exited vCPU will never answer.
                    got += 1;
                }
                others.push(other);
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return Err(others),
        }
    }
    Ok(others)
}

struct VcpuThread {
    vcpu: Vcpu,
    io: Arc<VcpuIo>,
    requests: Receiver<VcpuRequest>,
    events: Sender<(u8, VcpuResponse)>,
    exit_evt: EventFd,
    first_run: Arc<OnceLock<CpuTime>>,
    state: VcpuRunState,
}

impl VcpuThread {
    fn main(&mut self, seccomp: Option<Arc<BpfProgram>>) {
        KVM_RUN_PTR.with(|p| p.set(self.vcpu.fd.get_kvm_run() as *mut kvm_run));
        if let Some(filter) = seccomp {
            if let Err(e) = seccompiler::apply_filter(&filter) {
                self.exit(ExitReason::VcpuError {
                    vcpu: self.vcpu.index,
                    detail: format!("installing the seccomp filter: {e}"),
                });
                return;
            }
        }
        loop {
            match self.state {
                VcpuRunState::Paused => match self.requests.recv() {
                    Ok(VcpuRequest::Resume) => {
                        self.state = VcpuRunState::Running;
                        self.respond(VcpuResponse::Resumed);
                    }
                    Ok(VcpuRequest::Pause) => self.respond(VcpuResponse::Paused),
                    Ok(VcpuRequest::Finish) | Err(_) => self.exit(ExitReason::Stopped),
                },
                VcpuRunState::Running => match self.requests.try_recv() {
                    Ok(VcpuRequest::Pause) => {
                        self.state = VcpuRunState::Paused;
                        self.respond(VcpuResponse::Paused);
                    }
                    Ok(VcpuRequest::Resume) => self.respond(VcpuResponse::Resumed),
                    Ok(VcpuRequest::Finish) | Err(TryRecvError::Disconnected) => {
                        self.exit(ExitReason::Stopped)
                    }
                    Err(TryRecvError::Empty) => {
                        if let Some(reason) = self.run_once() {
                            self.exit(reason);
                        }
                    }
                },
                VcpuRunState::Exited => return,
            }
        }
    }

    fn respond(&self, r: VcpuResponse) {
        let _ = self.events.send((self.vcpu.index, r));
    }

    fn exit(&mut self, reason: ExitReason) {
        self.state = VcpuRunState::Exited;
        let host_asked = reason == ExitReason::Stopped;
        self.respond(VcpuResponse::Exited(reason));
        if !host_asked {
            let _ = self.exit_evt.write(1);
        }
    }

    /// One `KVM_RUN`; `Some` when the vCPU must stop.
    fn run_once(&mut self) -> Option<ExitReason> {
        if self.vcpu.index == 0 && self.first_run.get().is_none() {
            let _ = self.first_run.set(CpuTime::now());
        }
        let index = self.vcpu.index;
        let err = |detail: String| {
            Some(ExitReason::VcpuError {
                vcpu: index,
                detail,
            })
        };
        let mut internal_error = false;
        let reason = match self.vcpu.fd.run() {
            Ok(exit) => match exit {
                VcpuExit::IoIn(port, data) => {
                    if !self.io.pio.read(u64::from(port), data) {
                        data.fill(0xff);
                    }
                    None
                }
                VcpuExit::IoOut(port, data) => {
                    self.io.pio.write(u64::from(port), data);
                    None
                }
                VcpuExit::MmioRead(addr, data) => {
                    if !self.io.mmio.read(addr, data) {
                        data.fill(0xff);
                    }
                    None
                }
                VcpuExit::MmioWrite(addr, data) => {
                    self.io.mmio.write(addr, data);
                    None
                }
                VcpuExit::Shutdown => Some(ExitReason::TripleFault),
                VcpuExit::SystemEvent(t, _) => Some(match t {
                    KVM_SYSTEM_EVENT_SHUTDOWN => ExitReason::PowerOff,
                    KVM_SYSTEM_EVENT_RESET => ExitReason::Reset,
                    KVM_SYSTEM_EVENT_CRASH => ExitReason::Crash,
                    other => ExitReason::VcpuError {
                        vcpu: index,
                        detail: format!("system event {other}"),
                    },
                }),
                VcpuExit::Hlt => err("HLT exit with an in-kernel irqchip".into()),
                VcpuExit::FailEntry(reason, cpu) => err(format!(
                    "KVM_EXIT_FAIL_ENTRY: hardware reason {reason:#x} on host CPU {cpu}"
                )),
                VcpuExit::InternalError => {
                    internal_error = true;
                    None
                }
                VcpuExit::Intr | VcpuExit::IrqWindowOpen => None,
                other => err(format!("unexpected exit {other:?}")),
            },
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                self.vcpu.fd.set_kvm_immediate_exit(0);
                None
            }
            Err(e) => err(format!("KVM_RUN: {e}")),
        };
        if internal_error {
            return err(self.describe_internal_error());
        }
        reason
    }

    fn describe_internal_error(&mut self) -> String {
        let run = self.vcpu.fd.get_kvm_run();
        // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the active
        // member of the union.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let n = (internal.ndata as usize).min(internal.data.len());
        let what = match internal.suberror {
            1 => "emulation failure (KVM could not emulate an instruction)",
            2 => "exception while delivering an event",
            3 => "unexpected exit while delivering an event",
            _ => "internal error",
        };
        format!(
            "KVM_EXIT_INTERNAL_ERROR: {what}, suberror {}, data {:x?}",
            internal.suberror,
            &internal.data[..n]
        )
    }
}
