//! A built VM at run time: the event loop on the calling thread, the vCPU threads, and the
//! VM-wide run state.
//!
//! # Control flow
//!
//! [`Vmm::run`] installs the event-loop thread's seccomp filter, resumes every vCPU (their
//! threads were created `Paused`), then runs the event manager. Besides the devices'
//! subscribers, one [`ControlSubscriber`] watches:
//! - the exit eventfd, written by a vCPU thread that stopped for a guest reason (triple
//!   fault, system event, error): the VM ends with that reason;
//! - the i8042 reset line: the VM ends (`I8042Reset`);
//! - the request eventfd, with typed [`VmmRequest`]s from a [`VmmController`] (another
//!   thread): pause, resume, stop;
//! - the stop eventfd, which a signal handler may write ([`Vmm::stop_fd`]).
//!
//! Ending stops every vCPU thread (`Finish`, kick, join) and flushes the console.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::boot::KernelEntry;
use crate::devices::bus::lock;
use crate::devices::legacy::SerialConsole;
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::subscriber::VirtioSubscriber;
use crate::seccomp::Filters;
use crate::stats::CpuTime;
use crate::vstate::memory::GuestRam;
use crate::vstate::vcpu::{collect_responses, ExitReason, VcpuHandle, VcpuRequest, VcpuResponse};
use crate::vstate::vm::Vm;

/// How long pause and resume wait for every vCPU to answer.
const VCPU_ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Running the VM failed (not the guest: that is an [`ExitReason`]).
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// The event manager.
    #[error("event loop: {0:?}")]
    EventLoop(event_manager::Error),
    /// An eventfd.
    #[error("creating an eventfd")]
    EventFd(#[source] std::io::Error),
    /// The event-loop thread's seccomp filter.
    #[error("installing the VMM thread's seccomp filter")]
    Seccomp(#[source] seccompiler::Error),
    /// vCPUs did not answer a pause or resume in time.
    #[error("vCPUs did not answer {0:?} within {VCPU_ANSWER_TIMEOUT:?}")]
    VcpuTimeout(VcpuRequest),
    /// A request in the wrong state.
    #[error("cannot {0:?} a VM that is {1:?}")]
    BadState(VmmRequest, VmState),
    /// The VMM is gone.
    #[error("the VMM has stopped")]
    Gone,
}

/// The VM's run state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmState {
    /// Built, no guest instruction run yet.
    NotStarted,
    /// vCPUs running.
    Running,
    /// vCPUs paused.
    Paused,
    /// Ended.
    Exited,
}

/// A request from another thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmmRequest {
    /// Pause every vCPU.
    Pause,
    /// Resume every vCPU.
    Resume,
    /// End the VM.
    Stop,
}

type Reply = Sender<Result<(), String>>;

/// A handle to a running [`Vmm`] for other threads.
#[derive(Debug, Clone)]
pub struct VmmController {
    tx: Sender<(VmmRequest, Reply)>,
    evt: Arc<EventFd>,
}

impl VmmController {
    /// Sends `req` and waits for the answer.
    pub fn request(&self, req: VmmRequest) -> Result<(), String> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.tx
            .send((req, tx))
            .map_err(|_| VmmError::Gone.to_string())?;
        self.evt.write(1).map_err(|e| e.to_string())?;
        rx.recv_timeout(VCPU_ANSWER_TIMEOUT * 2)
            .map_err(|_| VmmError::Gone.to_string())?
    }

    /// Pauses the VM.
    pub fn pause(&self) -> Result<(), String> {
        self.request(VmmRequest::Pause)
    }

    /// Resumes the VM.
    pub fn resume(&self) -> Result<(), String> {
        self.request(VmmRequest::Resume)
    }

    /// Ends the VM.
    pub fn stop(&self) -> Result<(), String> {
        self.request(VmmRequest::Stop)
    }
}

/// One virtio device as placed.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    /// Short name (`vsock`, `blk0`, ...).
    pub name: String,
    /// virtio device ID.
    pub kind: u32,
    /// MMIO base.
    pub base: u64,
    /// IRQ.
    pub irq: u32,
    /// The transport.
    pub transport: Arc<Mutex<MmioTransport>>,
}

/// A device's state at the end of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceReport {
    /// Short name.
    pub name: String,
    /// virtio device ID.
    pub kind: u32,
    /// MMIO base.
    pub base: u64,
    /// IRQ.
    pub irq: u32,
    /// The transport's status register.
    pub status: u32,
    /// Activated by the driver (`DRIVER_OK` accepted) and its backend serving (a vhost-user
    /// device's daemon set up).
    pub active: bool,
}

/// What a run ended with.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// Why the VM ended.
    pub exit: ExitReason,
    /// Process CPU time (user + system, ms) when vCPU 0 first entered `KVM_RUN`.
    pub cpu_ms_at_first_run: Option<f64>,
    /// Process CPU time when the build started.
    pub cpu_ms_at_build: f64,
    /// The devices.
    pub devices: Vec<DeviceReport>,
}

enum ControlEvent {
    VcpuExit,
    I8042Reset,
    Request,
    Stop,
}

/// The event-loop subscriber for VM-wide events.
struct ControlSubscriber {
    exit_evt: EventFd,
    reset_evt: EventFd,
    request_evt: Arc<EventFd>,
    stop_evt: EventFd,
    pending: Vec<ControlEvent>,
}

impl std::fmt::Debug for ControlSubscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlSubscriber").finish_non_exhaustive()
    }
}

const TOKEN_EXIT: u32 = 0;
const TOKEN_RESET: u32 = 1;
const TOKEN_REQUEST: u32 = 2;
const TOKEN_STOP: u32 = 3;

impl MutEventSubscriber for ControlSubscriber {
    fn init(&mut self, ops: &mut EventOps<'_>) {
        for (fd, token) in [
            (self.exit_evt.as_raw_fd(), TOKEN_EXIT),
            (self.reset_evt.as_raw_fd(), TOKEN_RESET),
            (self.request_evt.as_raw_fd(), TOKEN_REQUEST),
            (self.stop_evt.as_raw_fd(), TOKEN_STOP),
        ] {
            if let Err(e) = ops.add(Events::with_data_raw(fd, token, EventSet::IN)) {
                tracing::error!("watching control fd {token}: {e:?}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps<'_>) {
        let (evt, ev) = match events.data() {
            TOKEN_EXIT => (&self.exit_evt, ControlEvent::VcpuExit),
            TOKEN_RESET => (&self.reset_evt, ControlEvent::I8042Reset),
            TOKEN_REQUEST => (&*self.request_evt, ControlEvent::Request),
            _ => (&self.stop_evt, ControlEvent::Stop),
        };
        let _ = evt.read();
        self.pending.push(ev);
    }
}

/// What [`crate::builder::build`] hands over.
#[derive(Debug)]
pub struct VmmParts {
    /// Guest memory.
    pub ram: GuestRam,
    /// The VM.
    pub vm: Vm,
    /// The vCPU threads, paused.
    pub vcpus: Vec<VcpuHandle>,
    /// Their answers.
    pub vcpu_events: Receiver<(u8, VcpuResponse)>,
    /// Written by a vCPU that stopped for a guest reason.
    pub exit_evt: EventFd,
    /// The i8042 reset line.
    pub reset_evt: EventFd,
    /// The console.
    pub serial: Arc<Mutex<SerialConsole>>,
    /// The virtio devices.
    pub devices: Vec<DeviceInfo>,
    /// Seccomp filters.
    pub filters: Option<Filters>,
    /// CPU time when the build started.
    pub started: CpuTime,
    /// CPU time when vCPU 0 first entered KVM_RUN.
    pub first_run: Arc<OnceLock<CpuTime>>,
    /// The final kernel command line.
    pub cmdline: String,
    /// How the kernel is entered.
    pub entry: KernelEntry,
}

type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// A VM ready to run.
pub struct Vmm {
    // Field order is drop order: vCPU threads, then the event loop, then the VM, then memory.
    vcpus: Vec<VcpuHandle>,
    vcpu_events: Receiver<(u8, VcpuResponse)>,
    em: EventManager<Subscriber>,
    control: Arc<Mutex<ControlSubscriber>>,
    requests: Receiver<(VmmRequest, Reply)>,
    controller: VmmController,
    stop_fd: RawFd,
    serial: Arc<Mutex<SerialConsole>>,
    devices: Vec<DeviceInfo>,
    filters: Option<Filters>,
    started: CpuTime,
    first_run: Arc<OnceLock<CpuTime>>,
    cmdline: String,
    entry: KernelEntry,
    state: VmState,
    _vm: Vm,
    ram: GuestRam,
}

impl std::fmt::Debug for Vmm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vmm")
            .field("vcpus", &self.vcpus.len())
            .field("devices", &self.devices)
            .field("state", &self.state)
            .field("entry", &self.entry)
            .finish_non_exhaustive()
    }
}

impl Vmm {
    /// Wires the event loop.
    pub fn new(p: VmmParts) -> Result<Self, VmmError> {
        let mk = || EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(VmmError::EventFd);
        let request_evt = Arc::new(mk()?);
        let stop_evt = mk()?;
        let stop_fd = stop_evt.as_raw_fd();
        let control = Arc::new(Mutex::new(ControlSubscriber {
            exit_evt: p.exit_evt,
            reset_evt: p.reset_evt,
            request_evt: request_evt.clone(),
            stop_evt,
            pending: Vec::new(),
        }));
        let mut em: EventManager<Subscriber> = EventManager::new().map_err(VmmError::EventLoop)?;
        em.add_subscriber(control.clone());
        for d in &p.devices {
            let s: Subscriber = Arc::new(Mutex::new(VirtioSubscriber::new(d.transport.clone())));
            em.add_subscriber(s);
        }
        let (tx, requests) = std::sync::mpsc::channel();
        Ok(Self {
            vcpus: p.vcpus,
            vcpu_events: p.vcpu_events,
            em,
            control,
            requests,
            controller: VmmController {
                tx,
                evt: request_evt,
            },
            stop_fd,
            serial: p.serial,
            devices: p.devices,
            filters: p.filters,
            started: p.started,
            first_run: p.first_run,
            cmdline: p.cmdline,
            entry: p.entry,
            state: VmState::NotStarted,
            _vm: p.vm,
            ram: p.ram,
        })
    }

    /// A handle for other threads.
    pub fn controller(&self) -> VmmController {
        self.controller.clone()
    }

    /// An eventfd that ends the VM when written (for signal handlers: `write(fd, 1u64)`).
    pub fn stop_fd(&self) -> RawFd {
        self.stop_fd
    }

    /// The kernel command line, devices included.
    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }

    /// How the kernel is entered.
    pub fn entry(&self) -> KernelEntry {
        self.entry
    }

    /// The host address ranges of guest memory (for memory accounting).
    pub fn guest_ram_ranges(&self) -> Vec<(u64, u64)> {
        self.ram.host_ranges()
    }

    /// The virtio devices.
    pub fn devices(&self) -> &[DeviceInfo] {
        &self.devices
    }

    /// The run state.
    pub fn state(&self) -> VmState {
        self.state
    }

    /// Runs the guest until it ends or is stopped.
    pub fn run(mut self) -> Result<RunReport, VmmError> {
        if let Some(f) = &self.filters {
            seccompiler::apply_filter(&f.vmm).map_err(VmmError::Seccomp)?;
        }
        let exit = match self.set_all(VcpuRequest::Resume) {
            Ok(Some(reason)) => reason,
            Ok(None) => {
                self.state = VmState::Running;
                self.event_loop()?
            }
            Err(e) => {
                self.finish();
                return Err(e);
            }
        };
        self.finish();
        Ok(self.report(exit))
    }

    fn event_loop(&mut self) -> Result<ExitReason, VmmError> {
        loop {
            self.em.run().map_err(VmmError::EventLoop)?;
            let pending = std::mem::take(&mut lock(&self.control).pending);
            for ev in pending {
                let end = match ev {
                    ControlEvent::VcpuExit => self.vcpu_exit(),
                    ControlEvent::I8042Reset => Some(ExitReason::I8042Reset),
                    ControlEvent::Stop => Some(ExitReason::Stopped),
                    ControlEvent::Request => self.requests(),
                };
                if let Some(reason) = end {
                    return Ok(reason);
                }
            }
        }
    }

    /// The first guest-driven exit reported by a vCPU.
    fn vcpu_exit(&mut self) -> Option<ExitReason> {
        while let Ok((_, r)) = self.vcpu_events.try_recv() {
            if let VcpuResponse::Exited(reason) = r {
                if reason != ExitReason::Stopped {
                    return Some(reason);
                }
            }
        }
        None
    }

    fn requests(&mut self) -> Option<ExitReason> {
        while let Ok((req, reply)) = self.requests.try_recv() {
            let r = match (req, self.state) {
                (VmmRequest::Stop, _) => {
                    let _ = reply.send(Ok(()));
                    return Some(ExitReason::Stopped);
                }
                (VmmRequest::Pause, VmState::Running) => self.set_all(VcpuRequest::Pause),
                (VmmRequest::Resume, VmState::Paused) => self.set_all(VcpuRequest::Resume),
                (VmmRequest::Pause, VmState::Paused) | (VmmRequest::Resume, VmState::Running) => {
                    Ok(None)
                }
                (req, state) => Err(VmmError::BadState(req, state)),
            };
            match r {
                Ok(Some(reason)) => {
                    let _ = reply.send(Err(format!("the guest ended: {reason}")));
                    return Some(reason);
                }
                Ok(None) => {
                    self.state = match req {
                        VmmRequest::Pause => VmState::Paused,
                        _ => VmState::Running,
                    };
                    let _ = reply.send(Ok(()));
                }
                Err(e) => {
                    let _ = reply.send(Err(e.to_string()));
                }
            }
        }
        None
    }

    /// Sends `req` to every vCPU and waits for all to answer; `Some` if a vCPU exited for a
    /// guest reason meanwhile.
    fn set_all(&mut self, req: VcpuRequest) -> Result<Option<ExitReason>, VmmError> {
        let want = match req {
            VcpuRequest::Pause => VcpuResponse::Paused,
            _ => VcpuResponse::Resumed,
        };
        let mut sent = 0;
        for v in &self.vcpus {
            if v.send(req) {
                sent += 1;
            }
        }
        let others = collect_responses(&self.vcpu_events, &want, sent, VCPU_ANSWER_TIMEOUT)
            .map_err(|_| VmmError::VcpuTimeout(req))?;
        Ok(others.into_iter().find_map(|(_, r)| match r {
            VcpuResponse::Exited(reason) if reason != ExitReason::Stopped => Some(reason),
            _ => None,
        }))
    }

    fn finish(&mut self) {
        for v in &self.vcpus {
            v.send(VcpuRequest::Finish);
        }
        for v in &mut self.vcpus {
            v.join();
        }
        self.state = VmState::Exited;
        lock(&self.serial).flush();
    }

    fn report(&self, exit: ExitReason) -> RunReport {
        RunReport {
            exit,
            cpu_ms_at_first_run: self.first_run.get().map(CpuTime::total_ms),
            cpu_ms_at_build: self.started.total_ms(),
            devices: self
                .devices
                .iter()
                .map(|d| {
                    let t = lock(&d.transport);
                    DeviceReport {
                        name: d.name.clone(),
                        kind: d.kind,
                        base: d.base,
                        irq: d.irq,
                        status: t.status(),
                        active: t.is_active() && t.device().backend_ready(),
                    }
                })
                .collect(),
        }
    }
}
