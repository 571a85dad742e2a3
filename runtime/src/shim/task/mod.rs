//! The Task service containerd calls: one pod VM, its containers, their processes.
//!
//! The first container (a pod's sandbox, or a container outside any pod) boots the VM; later
//! containers with the same `io.kubernetes.cri.sandbox-id` join it. Every task reports the
//! shim's own pid to containerd, as Kata does: guest pids mean nothing on the host, and the
//! CRI plugin builds `/proc/<pid>/ns/*` paths from the sandbox's pid, which the shim then
//! rewrites to the sandbox's guest namespaces.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use containerd_shim::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse,
    DeleteRequest, Empty, ExecProcessRequest, KillRequest, PauseRequest, PidsRequest, PidsResponse,
    ResizePtyRequest, ResumeRequest, ShutdownRequest, StartRequest, StartResponse, StateRequest,
    StateResponse, StatsRequest, StatsResponse, Status, UpdateTaskRequest, WaitRequest,
    WaitResponse,
};
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::shim::shim::{CheckpointTaskRequest, DeleteResponse};
use containerd_shim::protos::ttrpc;
use containerd_shim::protos::types::task::ProcessInfo;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Context, ExitSignal, TtrpcContext, TtrpcResult};
use moat_protocol::{CreateContainer, ErrorKind, Event, ProcessRef, Request, Response, Spec};

use super::io::{self, Stdio};
use super::process::{Phase, Proc};
use super::spec::{self, Role, ShimConfig};
use super::vm::{self, PodVm, VmConfig, VmError};

mod create;
mod rpc;

/// A request the service refuses; the variant picks the ttrpc code containerd maps.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// No such container or process (or it already finished).
    #[error("{0}")]
    NotFound(String),
    /// The id is taken.
    #[error("{0}")]
    AlreadyExists(String),
    /// Not in a state that allows it.
    #[error("{0}")]
    Precondition(String),
    /// Bad input.
    #[error("{0}")]
    Invalid(String),
    /// Not something moat does.
    #[error("{0}")]
    Unsupported(String),
    /// Anything else.
    #[error("{0}")]
    Internal(String),
}

impl From<TaskError> for ttrpc::Error {
    fn from(e: TaskError) -> Self {
        let code = match &e {
            TaskError::NotFound(_) => ttrpc::Code::NOT_FOUND,
            TaskError::AlreadyExists(_) => ttrpc::Code::ALREADY_EXISTS,
            TaskError::Precondition(_) => ttrpc::Code::FAILED_PRECONDITION,
            TaskError::Invalid(_) => ttrpc::Code::INVALID_ARGUMENT,
            TaskError::Unsupported(_) => ttrpc::Code::UNIMPLEMENTED,
            TaskError::Internal(_) => ttrpc::Code::INTERNAL,
        };
        ttrpc::Error::RpcStatus(ttrpc::get_status(code, e.to_string()))
    }
}

impl From<VmError> for TaskError {
    fn from(e: VmError) -> Self {
        match e {
            VmError::Agent(crate::vsock::AgentError::Refused { reply, .. }) => match reply.kind {
                ErrorKind::NotFound => TaskError::NotFound(reply.message),
                ErrorKind::FailedPrecondition => TaskError::Precondition(reply.message),
                ErrorKind::InvalidArgument => TaskError::Invalid(reply.message),
                ErrorKind::Unsupported => TaskError::Unsupported(reply.message),
                _ => TaskError::Internal(reply.message),
            },
            VmError::Gone => TaskError::NotFound(e.to_string()),
            e => TaskError::Internal(e.to_string()),
        }
    }
}

type Result<T> = std::result::Result<T, TaskError>;

fn invalid(e: impl std::fmt::Display) -> TaskError {
    TaskError::Invalid(e.to_string())
}

/// One container of the pod.
#[derive(Debug)]
struct Container {
    bundle: String,
    spec: Spec,
    rootfs: Option<PathBuf>,
    init: Arc<Proc>,
    execs: HashMap<String, Arc<Proc>>,
    paused: bool,
    owner: bool,
}

#[derive(Debug, Default)]
struct State {
    vm: Option<Arc<PodVm>>,
    owner_pid: Option<u32>,
    containers: HashMap<String, Container>,
}

/// What the service and its event threads share.
pub struct Inner {
    namespace: String,
    pid: u32,
    publisher: Mutex<RemotePublisher>,
    exit: Arc<ExitSignal>,
    setup: std::result::Result<crate::config::Config, String>,
    state: Mutex<State>,
    create: Mutex<()>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

/// The ttrpc Task service.
#[derive(Debug, Clone)]
pub struct Service(Arc<Inner>);

impl Service {
    /// A service for containerd namespace `namespace`; `setup` is moat's configuration, or
    /// why containers cannot be created (no private mount namespace, a bad config file).
    pub fn new(
        namespace: &str,
        publisher: RemotePublisher,
        exit: Arc<ExitSignal>,
        setup: std::result::Result<crate::config::Config, String>,
    ) -> Self {
        Self(Arc::new(Inner {
            namespace: namespace.into(),
            pid: std::process::id(),
            publisher: Mutex::new(publisher),
            exit,
            setup,
            state: Mutex::default(),
            create: Mutex::new(()),
        }))
    }
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish<E: containerd_shim::event::Event + 'static>(&self, e: E) {
        let topic = e.topic();
        let p = self.publisher.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(err) = p.publish(Context::default(), &topic, &self.namespace, Box::new(e)) {
            containerd_shim::warn!("publishing {topic}: {err}");
        }
    }

    fn vm(&self) -> Result<Arc<PodVm>> {
        self.state()
            .vm
            .clone()
            .ok_or_else(|| TaskError::NotFound("the pod's VM is not running".into()))
    }

    fn proc(&self, id: &str, exec_id: &str) -> Result<Arc<Proc>> {
        let st = self.state();
        let c = st
            .containers
            .get(id)
            .ok_or_else(|| TaskError::NotFound(format!("container {id} does not exist")))?;
        if exec_id.is_empty() {
            return Ok(Arc::clone(&c.init));
        }
        c.execs.get(exec_id).cloned().ok_or_else(|| {
            TaskError::NotFound(format!("exec {exec_id} of container {id} does not exist"))
        })
    }

    fn call(&self, name: &'static str, req: Request) -> Result<Response> {
        Ok(self.vm()?.call(name, req)?)
    }

    /// A process exited in the guest.
    fn on_exit(self: &Arc<Self>, p: ProcessRef, status: i32) {
        let found = self.proc(&p.id, p.exec_id.as_deref().unwrap_or_default());
        let Ok(proc) = found else { return };
        let me = Arc::clone(self);
        let _ = std::thread::Builder::new()
            .name("exit".into())
            .spawn(move || {
                if proc.exited(status as u32) {
                    me.publish_exit(&proc);
                }
            });
    }

    fn publish_exit(&self, proc: &Proc) {
        let (status, at) = proc.exit_status().unwrap_or_default();
        self.publish(TaskExit {
            container_id: proc.id.clone(),
            id: proc.event_id().into(),
            pid: self.pid,
            exit_status: status,
            exited_at: MessageField::some(at),
            ..Default::default()
        });
    }

    /// The guest went away: every process still running exits with a failure status.
    fn on_guest_gone(self: &Arc<Self>) {
        let procs: Vec<Arc<Proc>> = {
            let st = self.state();
            st.containers
                .values()
                .flat_map(|c| std::iter::once(&c.init).chain(c.execs.values()))
                .cloned()
                .collect()
        };
        for p in procs {
            if p.guest_pid() != 0 && p.lost() {
                containerd_shim::warn!("{}: the guest went away under it", p.event_id());
                self.publish_exit(&p);
            }
        }
    }

    fn watch_events(self: &Arc<Self>, vm: &PodVm) -> Result<()> {
        let mut sub = vm.subscribe()?;
        let me = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("agent-events".into())
            .spawn(move || {
                while let Ok(ev) = sub.read_event() {
                    let Some(me) = me.upgrade() else { return };
                    match ev {
                        Event::Exited {
                            process, status, ..
                        } => me.on_exit(process, status),
                        Event::Oom { id } => me.publish(TaskOOM {
                            container_id: id,
                            ..Default::default()
                        }),
                    }
                }
                // Without its event stream the shim would never see another exit: a VM
                // still running then is stopped, and every process reported gone.
                let vm = me.upgrade().and_then(|me| me.state().vm.clone());
                if let Some(vm) = vm.filter(|vm| vm.is_alive()) {
                    containerd_shim::error!("the agent's event stream ended; stopping the VM");
                    vm.kill();
                }
            })
            .map_err(|e| TaskError::Internal(format!("spawning the event thread: {e}")))?;
        Ok(())
    }

    fn oci_state(
        &self,
        id: &str,
        c: &Container,
        status: crate::state::Status,
    ) -> crate::state::ContainerState {
        crate::state::ContainerState {
            guest_pid: c.init.guest_pid(),
            exit_status: c.init.exit_status().map(|(s, _)| s as i32),
            ..crate::state::ContainerState::new(id, Path::new(&c.bundle), &c.spec, status, self.pid)
        }
    }

    fn start(&self, req: &StartRequest) -> Result<StartResponse> {
        let p = self.proc(&req.id, &req.exec_id)?;
        if p.is_started() {
            return Err(TaskError::Precondition(format!(
                "{} was already started",
                p.event_id()
            )));
        }
        p.set_started();
        let r = self.start_proc(&p);
        if r.is_err() {
            // It will never run: whoever waits for it (ctr waits before it starts) is
            // answered, and it can be deleted.
            p.release();
        }
        p.set_announced();
        r?;
        Ok(StartResponse {
            pid: self.pid,
            ..Default::default()
        })
    }

    fn start_proc(&self, p: &Proc) -> Result<()> {
        let Some(exec_id) = &p.exec_id else {
            self.call(
                "StartContainer",
                Request::StartContainer { id: p.id.clone() },
            )?;
            self.publish(TaskStart {
                container_id: p.id.clone(),
                pid: self.pid,
                ..Default::default()
            });
            let st = self.state();
            if let Some(c) = st.containers.get(&p.id) {
                let oci = self.oci_state(&p.id, c, crate::state::Status::Running);
                if let Err(e) =
                    crate::hooks::run_host(&c.spec, "poststart", &oci, Path::new(&c.bundle))
                {
                    containerd_shim::warn!("{}: {e}", p.id);
                }
            }
            return Ok(());
        };
        let process = p
            .spec
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| TaskError::Precondition(format!("exec {exec_id} has no process")))?;
        let vm = self.vm()?;
        let req = moat_protocol::ExecProcess {
            id: p.id.clone(),
            exec_id: exec_id.clone(),
            process: Box::new(process),
            stdio: p.stdio.request(),
        };
        let started = match vm.call("ExecProcess", Request::ExecProcess(req))? {
            Response::Started(s) => s,
            other => {
                return Err(TaskError::Internal(format!(
                    "unexpected answer to ExecProcess: {other:?}"
                )))
            }
        };
        let pumps = io::start(&vm.uds, started.stdio, &p.stdio).map_err(invalid)?;
        p.attach(started.pid, pumps);
        self.publish(TaskExecStarted {
            container_id: p.id.clone(),
            exec_id: exec_id.clone(),
            pid: self.pid,
            ..Default::default()
        });
        Ok(())
    }

    fn delete(&self, req: &DeleteRequest) -> Result<DeleteResponse> {
        let p = self.proc(&req.id, &req.exec_id)?;
        if p.phase() == Phase::Running {
            return Err(TaskError::Precondition(format!(
                "{} is running: kill it first",
                p.event_id()
            )));
        }
        p.release();
        let (status, at) = p.exit_status().unwrap_or_default();
        let resp = DeleteResponse {
            pid: self.pid,
            exit_status: status,
            exited_at: MessageField::some(at.clone()),
            ..Default::default()
        };
        if !req.exec_id.is_empty() {
            if let Some(c) = self.state().containers.get_mut(&req.id) {
                c.execs.remove(&req.exec_id);
            }
            let vm = self.state().vm.clone();
            if let Some(vm) = vm.filter(|vm| vm.is_alive()) {
                let p = moat_protocol::ProcessRef {
                    id: req.id.clone(),
                    exec_id: Some(req.exec_id.clone()),
                };
                if let Err(e) = vm.call("DeleteProcess", Request::DeleteProcess(p)) {
                    containerd_shim::warn!("forgetting exec {} in the guest: {e}", req.exec_id);
                }
            }
            return Ok(resp);
        }
        let vm = self.state().vm.clone();
        if let Some(vm) = &vm {
            let r = vm.call(
                "DeleteContainer",
                Request::DeleteContainer {
                    id: req.id.clone(),
                    force: true,
                },
            );
            if let Err(e) = r {
                if vm.is_alive() {
                    containerd_shim::warn!("deleting {} in the guest: {e}", req.id);
                }
            }
            vm::unshare_container(&vm.share, &req.id);
        }
        let c = self.state().containers.remove(&req.id);
        let Some(c) = c else { return Ok(resp) };
        for e in c.execs.values() {
            e.release();
        }
        if let Some(r) = &c.rootfs {
            let _ = nix::mount::umount2(r, nix::mount::MntFlags::MNT_DETACH);
        }
        let oci = self.oci_state(&req.id, &c, crate::state::Status::Stopped);
        if let Err(e) = crate::hooks::run_host(&c.spec, "poststop", &oci, Path::new(&c.bundle)) {
            containerd_shim::warn!("{}: {e}", req.id);
        }
        if c.owner {
            let vm = {
                let mut st = self.state();
                st.owner_pid = None;
                st.vm.take()
            };
            if let Some(vm) = vm {
                vm.shutdown(Duration::from_secs(10));
            }
        }
        self.publish(TaskDelete {
            container_id: req.id.clone(),
            pid: self.pid,
            exit_status: status,
            exited_at: MessageField::some(at),
            id: req.id.clone(),
            ..Default::default()
        });
        Ok(resp)
    }

    fn kill(&self, req: &KillRequest) -> Result<()> {
        let p = self.proc(&req.id, &req.exec_id)?;
        if p.exit_status().is_some() || (p.exec_id.is_some() && !p.is_started()) {
            return Err(TaskError::NotFound(format!(
                "process {} already finished or never started",
                p.event_id()
            )));
        }
        let r = self.call(
            "SignalProcess",
            Request::SignalProcess {
                process: p.process_ref(),
                signal: req.signal as i32,
                all: req.all,
            },
        );
        match r {
            Err(TaskError::Precondition(m)) => Err(TaskError::NotFound(m)),
            r => r.map(drop),
        }
    }

    fn exec(&self, req: &ExecProcessRequest) -> Result<()> {
        let process = crate::shim::convert::exec_process(req.spec.as_ref()).map_err(invalid)?;
        let stdio = Stdio {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let mut process = process;
        process.set_terminal(Some(req.terminal));
        {
            let mut st = self.state();
            let c = st.containers.get_mut(&req.id).ok_or_else(|| {
                TaskError::NotFound(format!("container {} does not exist", req.id))
            })?;
            if c.init.phase() != Phase::Running {
                return Err(TaskError::Precondition(format!(
                    "container {} is not running",
                    req.id
                )));
            }
            if req.exec_id.is_empty() || c.execs.contains_key(&req.exec_id) {
                return Err(TaskError::AlreadyExists(format!(
                    "exec id {:?} is empty or already used",
                    req.exec_id
                )));
            }
            let p = Proc::new(&req.id, Some(&req.exec_id), stdio, Some(process));
            c.execs.insert(req.exec_id.clone(), Arc::new(p));
        }
        self.publish(TaskExecAdded {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        });
        Ok(())
    }

    fn state_of(&self, req: &StateRequest) -> Result<StateResponse> {
        let p = self.proc(&req.id, &req.exec_id)?;
        let (bundle, paused) = {
            let st = self.state();
            let c = st.containers.get(&req.id);
            (
                c.map(|c| c.bundle.clone()).unwrap_or_default(),
                c.is_some_and(|c| c.paused),
            )
        };
        let status = match p.phase() {
            Phase::Stopped => Status::STOPPED,
            Phase::Running if paused => Status::PAUSED,
            Phase::Running => Status::RUNNING,
            Phase::Created => Status::CREATED,
        };
        let exit = p.exit_status();
        Ok(StateResponse {
            id: req.id.clone(),
            bundle,
            pid: self.pid,
            status: status.into(),
            stdin: p.stdio.stdin.clone(),
            stdout: p.stdio.stdout.clone(),
            stderr: p.stdio.stderr.clone(),
            terminal: p.stdio.terminal,
            exit_status: exit.as_ref().map(|e| e.0).unwrap_or_default(),
            exited_at: exit.map(|e| e.1).into(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
    }

    fn pids(&self, req: &PidsRequest) -> Result<PidsResponse> {
        let pids = match self.call(
            "ListProcesses",
            Request::ListProcesses { id: req.id.clone() },
        )? {
            Response::Processes(p) => p,
            other => return Err(TaskError::Internal(format!("unexpected answer: {other:?}"))),
        };
        let execs: HashMap<u32, String> = self
            .state()
            .containers
            .get(&req.id)
            .map(|c| {
                c.execs
                    .iter()
                    .map(|(k, p)| (p.guest_pid(), k.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let processes = pids
            .into_iter()
            .map(|pid| {
                let mut info = ProcessInfo::new();
                info.pid = pid;
                if let Some(exec_id) = execs.get(&pid) {
                    let mut d = containerd_shim::protos::shim::oci::ProcessDetails::new();
                    d.exec_id = exec_id.clone();
                    if let Ok(any) =
                        containerd_shim::protos::protobuf::well_known_types::any::Any::pack(&d)
                    {
                        let mut any = any;
                        any.type_url = "containerd.runc.v1.ProcessDetails".into();
                        info.info = MessageField::some(any);
                    }
                }
                info
            })
            .collect();
        Ok(PidsResponse {
            processes,
            ..Default::default()
        })
    }

    fn set_paused(&self, id: &str, paused: bool) -> Result<()> {
        let req = if paused {
            Request::PauseContainer { id: id.into() }
        } else {
            Request::ResumeContainer { id: id.into() }
        };
        self.call(
            if paused {
                "PauseContainer"
            } else {
                "ResumeContainer"
            },
            req,
        )?;
        if let Some(c) = self.state().containers.get_mut(id) {
            c.paused = paused;
        }
        if paused {
            self.publish(TaskPaused {
                container_id: id.into(),
                ..Default::default()
            });
        } else {
            self.publish(TaskResumed {
                container_id: id.into(),
                ..Default::default()
            });
        }
        Ok(())
    }

    fn shutdown(&self) {
        let vm = {
            let mut st = self.state();
            if !st.containers.is_empty() {
                return;
            }
            st.vm.take()
        };
        if let Some(vm) = vm {
            vm.shutdown(Duration::from_secs(10));
        }
        self.exit.signal();
    }
}
