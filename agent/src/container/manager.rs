//! The containers of one guest: their lifecycle (create, start, exec, signal, wait, pause,
//! resume, update, delete), their exit statuses, and the events the host subscribes to.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Condvar, Mutex};

use moat_protocol::{
    ContainerState, ContainerStats, ContainerStatus, CreateContainer, ErrorKind, ErrorReply, Event,
    ExecProcess, LinuxResources, ProcessRef, ProcessStarted, Spec,
};
use oci_spec::runtime::LinuxNamespaceType;
use seccompiler::BpfProgram;

use super::cgroups::Cgroup;
use super::process::{self, InitSetup, Launch, Launched, Namespaces};
use super::stdio::ProcessIo;
use super::syscall::Syscall;
use crate::reaper::Reaper;

type Reply<T> = Result<T, ErrorReply>;

fn invalid(msg: impl Into<String>) -> ErrorReply {
    ErrorReply::new(ErrorKind::InvalidArgument, msg)
}
fn not_found(id: &str) -> ErrorReply {
    ErrorReply::new(
        ErrorKind::NotFound,
        format!("container {id:?} does not exist"),
    )
}
fn precondition(msg: impl Into<String>) -> ErrorReply {
    ErrorReply::new(ErrorKind::FailedPrecondition, msg)
}
fn internal(msg: impl Into<String>) -> ErrorReply {
    ErrorReply::new(ErrorKind::Internal, msg)
}

/// Where a process's exit status lands; waiters block on it.
#[derive(Debug, Default)]
struct ExitCell {
    status: Mutex<Option<i32>>,
    cond: Condvar,
}

impl ExitCell {
    fn set(&self, code: i32) {
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = Some(code);
        self.cond.notify_all();
    }
    fn get(&self) -> Option<i32> {
        *self.status.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn wait(&self) -> i32 {
        let mut g = self.status.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(c) = *g {
                return c;
            }
            g = self.cond.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// One process of a container (its init, or an exec).
#[derive(Debug)]
struct Proc {
    pid: u32,
    io: ProcessIo,
    exit: Arc<ExitCell>,
}

/// One container.
#[derive(Debug)]
struct Container {
    spec: Spec,
    status: ContainerStatus,
    init: Proc,
    pending: Option<Launched>,
    cgroup: Option<Cgroup>,
    execs: HashMap<String, Proc>,
    oom: Option<super::cgroups::OomWatchThread>,
    seccomp: (Vec<BpfProgram>, u32),
}

/// Exited execs a container keeps for a host that never deletes them (`DeleteProcess`):
/// past this, the exited ones are forgotten before a new exec is added.
const MAX_EXECS: usize = 1024;

/// Bounds the exec table: once it holds [`MAX_EXECS`] entries, drops every exited one.
fn forget_exited_execs(execs: &mut HashMap<String, Proc>) {
    if execs.len() >= MAX_EXECS {
        execs.retain(|_, p| p.exit.get().is_none());
    }
}

/// Settings that differ between the guest and the host-integration tests.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// The cgroup v2 root, or `None` where cgroup v2 is not available (host tests on v1).
    pub cgroup_root: Option<PathBuf>,
    /// Give container processes the agent's own stdio instead of vsock streams (host mode).
    pub inherit_stdio: bool,
}

/// All containers of the guest.
pub struct Manager {
    sys: Arc<dyn Syscall>,
    reaper: Arc<Reaper>,
    config: ManagerConfig,
    containers: Mutex<HashMap<String, Arc<Mutex<Container>>>>,
    subscribers: Mutex<Vec<mpsc::SyncSender<Event>>>,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The container-side setup of an init process: rootfs, hostname, sysctl, guest hooks.
struct SpecSetup<'a> {
    id: &'a str,
    spec: &'a Spec,
    rootfs: &'a Path,
}

impl SpecSetup<'_> {
    fn hooks(&self, phase: &'static str) -> Result<(), String> {
        let hooks = self.spec.hooks().as_ref();
        let list = match phase {
            "createContainer" => hooks.and_then(|h| h.create_container().as_ref()),
            _ => hooks.and_then(|h| h.start_container().as_ref()),
        };
        let Some(list) = list.filter(|l| !l.is_empty()) else {
            return Ok(());
        };
        let status = if phase == "createContainer" {
            "creating"
        } else {
            "created"
        };
        let state = super::hooks::state_json(self.id, status, std::process::id(), self.spec);
        super::hooks::run(phase, list, &state).map_err(|e| e.to_string())
    }
}

impl InitSetup for SpecSetup<'_> {
    fn setup(
        &self,
        sys: &dyn Syscall,
        on_root: &mut dyn FnMut() -> Result<(), String>,
    ) -> Result<(), String> {
        use super::rootfs;
        // Relative bind-mount sources are resolved from the bundle, the rootfs's parent.
        if let Some(bundle) = self.rootfs.parent() {
            nix::unistd::chdir(bundle)
                .map_err(|e| format!("root.path: chdir to the bundle: {e}"))?;
        }
        rootfs::prepare_rootfs(sys, self.spec, self.rootfs).map_err(|e| e.to_string())?;
        self.hooks("createContainer")?;
        rootfs::pivot_root(sys, self.rootfs).map_err(|e| e.to_string())?;
        on_root()?;
        // runc creates a missing cwd (0755) before the root may become read-only.
        if let Some(cwd) = self.spec.process().as_ref().map(|p| p.cwd()) {
            if !cwd.exists() {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(cwd)
                    .map_err(|e| format!("process.cwd: creating {}: {e}", cwd.display()))?;
            }
        }
        if let Some(h) = self.spec.hostname().as_deref().filter(|h| !h.is_empty()) {
            sys.sethostname(h).map_err(|e| format!("hostname: {e}"))?;
        }
        if let Some(d) = self.spec.domainname().as_deref().filter(|d| !d.is_empty()) {
            sys.setdomainname(d)
                .map_err(|e| format!("domainname: {e}"))?;
        }
        for (k, v) in self
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.sysctl().as_ref())
            .into_iter()
            .flatten()
        {
            let path = PathBuf::from("/proc/sys").join(k.replace('.', "/"));
            sys.write_file(&path, v)
                .map_err(|e| format!("linux.sysctl[{k:?}]: {e}"))?;
        }
        rootfs::finalize_rootfs(sys, self.spec).map_err(|e| e.to_string())?;
        Ok(())
    }

    fn after_start(&self) -> Result<(), String> {
        self.hooks("startContainer")
    }
}

impl Manager {
    /// A manager using `sys` for container setup and `reaper` for exit statuses.
    pub fn new(sys: Arc<dyn Syscall>, reaper: Arc<Reaper>, config: ManagerConfig) -> Arc<Self> {
        Arc::new(Self {
            sys,
            reaper,
            config,
            containers: Mutex::default(),
            subscribers: Mutex::default(),
        })
    }

    fn get(&self, id: &str) -> Reply<Arc<Mutex<Container>>> {
        self.containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| not_found(id))
    }

    /// Subscribes to events; the receiver gets every event from now on.
    pub fn subscribe(&self) -> mpsc::Receiver<Event> {
        let (tx, rx) = mpsc::sync_channel(1024);
        self.subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(tx);
        rx
    }

    fn publish(&self, ev: Event) {
        // A subscriber that is gone or too slow to keep 1024 events is dropped.
        self.subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|s| s.try_send(ev.clone()).is_ok());
    }

    /// Creates a container; its init waits for `start`.
    pub fn create(self: &Arc<Self>, req: CreateContainer) -> Reply<ProcessStarted> {
        super::spec_check::validate_id(&req.id).map_err(|e| invalid(e.0))?;
        let known = super::rootfs::kernel_filesystems();
        super::spec_check::validate(&req.spec, &|t| known.contains(t)).map_err(|e| invalid(e.0))?;
        let rootfs = PathBuf::from(&req.rootfs);
        if !rootfs.is_dir() {
            return Err(invalid(format!(
                "root.path: the rootfs {} is not a directory",
                rootfs.display()
            )));
        }
        let seccomp = match req.spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
            Some(s) => {
                let c = super::seccomp::compile(s).map_err(|e| invalid(e.to_string()))?;
                if !c.skipped_syscalls.is_empty() {
                    crate::debug!("seccomp: skipped unknown syscalls {:?}", c.skipped_syscalls);
                }
                (c.filters, c.filter_flags)
            }
            None => (Vec::new(), 0),
        };
        // Reserve the id before creating anything.
        {
            let map = self.containers.lock().unwrap_or_else(|e| e.into_inner());
            if map.contains_key(&req.id) {
                return Err(ErrorReply::new(
                    ErrorKind::FailedPrecondition,
                    format!("container {:?} already exists", req.id),
                ));
            }
        }
        let cgroup = self.make_cgroup(&req.id, &req.spec)?;
        let cleanup = |cg: &Option<Cgroup>| {
            if let Some(cg) = cg {
                let _ = cg.kill_all();
                let _ = cg.remove();
            }
        };
        let process = req.spec.process().as_ref().expect("validated");
        let terminal = process.terminal().unwrap_or(false);
        let size = process
            .console_size()
            .map(|b| (b.height() as u16, b.width() as u16));
        let mut io = match self.new_io(req.stdio, terminal, size) {
            Ok(io) => io,
            Err(e) => {
                cleanup(&cgroup);
                return Err(internal(e.to_string()));
            }
        };
        let linux = req.spec.linux().as_ref();
        let id_maps = linux.map(|l| {
            (
                l.uid_mappings().as_deref().unwrap_or(&[]),
                l.gid_mappings().as_deref().unwrap_or(&[]),
            )
        });
        let setup = SpecSetup {
            id: &req.id,
            spec: &req.spec,
            rootfs: &rootfs,
        };
        let join = |pid: u32| -> Result<(), String> {
            match &cgroup {
                Some(cg) => cg.add_process(pid as i32).map_err(|e| e.to_string()),
                None => Ok(()),
            }
        };
        let launch = Launch {
            process,
            namespaces: Namespaces::from_spec(&req.spec),
            id_maps,
            init: Some(&setup),
            seccomp: (&seccomp.0, seccomp.1),
            stdio: io.child_raw(),
            terminal: terminal.then_some(size),
            join_cgroup: &join,
        };
        let mut launched = match process::launch(self.sys.as_ref(), &launch) {
            Ok(l) => l,
            Err(e) => {
                cleanup(&cgroup);
                return Err(invalid(e.to_string()));
            }
        };
        drop(launch);
        io.close_child_ends();
        if let Some(m) = launched.pty.take() {
            io.set_master(m);
        }
        let pid = launched.pid;
        self.reaper.watch(pid as i32);
        let started = ProcessStarted {
            pid,
            stdio: io.ports,
        };
        let exit = Arc::new(ExitCell::default());
        let oom = cgroup.as_ref().and_then(|cg| self.watch_oom(&req.id, cg));
        let container = Container {
            spec: (*req.spec).clone(),
            status: ContainerStatus::Created,
            init: Proc {
                pid,
                io,
                exit: Arc::clone(&exit),
            },
            pending: Some(launched),
            cgroup,
            execs: HashMap::new(),
            oom,
            seccomp,
        };
        let c = Arc::new(Mutex::new(container));
        self.containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(req.id.clone(), Arc::clone(&c));
        self.watch_exit(
            ProcessRef {
                id: req.id,
                exec_id: None,
            },
            pid,
            exit,
        );
        Ok(started)
    }

    fn new_io(
        &self,
        req: moat_protocol::StdioRequest,
        terminal: bool,
        size: Option<(u16, u16)>,
    ) -> Result<ProcessIo, super::stdio::StdioError> {
        if self.config.inherit_stdio {
            ProcessIo::inherit()
        } else {
            ProcessIo::new(req, terminal, size)
        }
    }

    fn make_cgroup(&self, id: &str, spec: &Spec) -> Reply<Option<Cgroup>> {
        let Some(root) = &self.config.cgroup_root else {
            return Ok(None);
        };
        let rel = spec
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().clone())
            .map(|p| p.to_string_lossy().trim_start_matches('/').to_string())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| format!("moat/{id}"));
        let cg = Cgroup::create(root, &rel).map_err(|e| invalid(e.to_string()))?;
        if let Some(res) = spec.linux().as_ref().and_then(|l| l.resources().as_ref()) {
            if let Err(e) = cg.apply(res) {
                let _ = cg.remove();
                return Err(invalid(e.to_string()));
            }
        }
        Ok(Some(cg))
    }

    /// Publishes an `Oom` event each time the kernel's OOM killer acts in the cgroup.
    fn watch_oom(
        self: &Arc<Self>,
        id: &str,
        cg: &Cgroup,
    ) -> Option<super::cgroups::OomWatchThread> {
        let watcher = match super::cgroups::OomWatcher::new(cg) {
            Ok(w) => w,
            Err(e) => {
                crate::warn!("no OOM events for container {id}: {e}");
                return None;
            }
        };
        let me = Arc::downgrade(self);
        let id = id.to_string();
        watcher
            .spawn(move |_new_kills| {
                if let Some(m) = me.upgrade() {
                    m.publish(Event::Oom { id: id.clone() });
                }
            })
            .map_err(|e| crate::warn!("cannot start an OOM watcher: {e}"))
            .ok()
    }

    /// Waits (on a thread) for a process's exit and records it.
    fn watch_exit(self: &Arc<Self>, process: ProcessRef, pid: u32, cell: Arc<ExitCell>) {
        let me = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("exit-watch".into())
            .spawn(move || {
                let status = me.reaper.wait(pid as i32).unwrap_or(255);
                if process.exec_id.is_none() {
                    if let Ok(c) = me.get(&process.id) {
                        let mut c = c.lock().unwrap_or_else(|e| e.into_inner());
                        c.status = ContainerStatus::Stopped;
                        c.pending = None;
                        // The pid namespace is gone with its init; make sure no stray process of
                        // a container without one stays behind in the cgroup.
                        if let Some(cg) = &c.cgroup {
                            let _ = cg.kill_all();
                        }
                    }
                }
                cell.set(status);
                me.publish(Event::Exited {
                    process,
                    pid,
                    status,
                });
            });
        if let Err(e) = spawned {
            crate::error!("cannot start an exit watcher: {e}");
        }
    }

    /// Lets a created container's init exec its program.
    pub fn start(&self, id: &str) -> Reply<()> {
        let c = self.get(id)?;
        let launched = {
            let mut c = c.lock().unwrap_or_else(|e| e.into_inner());
            if c.status != ContainerStatus::Created {
                return Err(precondition(format!(
                    "container {id:?} is {:?}, not created",
                    c.status
                )));
            }
            c.status = ContainerStatus::Running;
            c.pending
                .take()
                .ok_or_else(|| precondition("container already started"))?
        };
        launched.start().map_err(|e| invalid(e.to_string()))
    }

    /// Starts a new process in a running container.
    pub fn exec(self: &Arc<Self>, req: ExecProcess) -> Reply<ProcessStarted> {
        let c = self.get(&req.id)?;
        let mut guard = c.lock().unwrap_or_else(|e| e.into_inner());
        if guard.status != ContainerStatus::Running {
            return Err(precondition(format!(
                "container {:?} is {:?}, not running",
                req.id, guard.status
            )));
        }
        if req.exec_id.is_empty() || guard.execs.contains_key(&req.exec_id) {
            return Err(invalid(format!(
                "exec_id: {:?} is empty or already used",
                req.exec_id
            )));
        }
        let terminal = req.process.terminal().unwrap_or(false);
        let size = req
            .process
            .console_size()
            .map(|b| (b.height() as u16, b.width() as u16));
        let mut io = self
            .new_io(req.stdio, terminal, size)
            .map_err(|e| internal(e.to_string()))?;
        let types: Vec<LinuxNamespaceType> = guard
            .spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().clone())
            .into_iter()
            .flatten()
            .map(|n| n.typ())
            .collect();
        let init_pid = guard.init.pid;
        let cgroup = guard.cgroup.as_ref();
        let join = |pid: u32| -> Result<(), String> {
            match cgroup {
                Some(cg) => cg.add_process(pid as i32).map_err(|e| e.to_string()),
                None => Ok(()),
            }
        };
        let launch = Launch {
            process: &req.process,
            namespaces: Namespaces::of_pid(init_pid, &types),
            id_maps: None,
            init: None,
            seccomp: (&guard.seccomp.0, guard.seccomp.1),
            stdio: io.child_raw(),
            terminal: terminal.then_some(size),
            join_cgroup: &join,
        };
        let mut launched =
            process::launch(self.sys.as_ref(), &launch).map_err(|e| invalid(e.to_string()))?;
        drop(launch);
        io.close_child_ends();
        if let Some(m) = launched.pty.take() {
            io.set_master(m);
        }
        let pid = launched.pid;
        self.reaper.watch(pid as i32);
        launched.start().map_err(|e| invalid(e.to_string()))?;
        let exit = Arc::new(ExitCell::default());
        let ports = io.ports;
        forget_exited_execs(&mut guard.execs);
        guard.execs.insert(
            req.exec_id.clone(),
            Proc {
                pid,
                io,
                exit: Arc::clone(&exit),
            },
        );
        drop(guard);
        self.watch_exit(
            ProcessRef {
                id: req.id,
                exec_id: Some(req.exec_id),
            },
            pid,
            exit,
        );
        Ok(ProcessStarted { pid, stdio: ports })
    }

    fn with_proc<T>(&self, p: &ProcessRef, f: impl FnOnce(&Proc) -> T) -> Reply<T> {
        let c = self.get(&p.id)?;
        let c = c.lock().unwrap_or_else(|e| e.into_inner());
        match &p.exec_id {
            None => Ok(f(&c.init)),
            Some(e) => c.execs.get(e).map(f).ok_or_else(|| {
                ErrorReply::new(
                    ErrorKind::NotFound,
                    format!("exec {e:?} of container {:?} does not exist", p.id),
                )
            }),
        }
    }

    /// Sends a signal to one process, or to all of the container's.
    pub fn signal(&self, p: &ProcessRef, signal: i32, all: bool) -> Reply<()> {
        let sig = nix::sys::signal::Signal::try_from(signal)
            .map_err(|_| invalid(format!("signal: {signal} is not a signal")))?;
        if all {
            let pids = self.pids(&p.id)?;
            for pid in pids {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
            }
            return Ok(());
        }
        let (pid, exited) = self.with_proc(p, |pr| (pr.pid, pr.exit.get().is_some()))?;
        if exited {
            return Err(precondition(format!("process {pid} has already exited")));
        }
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig)
            .map_err(|e| internal(format!("kill {pid}: {e}")))
    }

    /// Blocks until the process exits; its status (128+n for signal n).
    pub fn wait(&self, p: &ProcessRef) -> Reply<i32> {
        let cell = self.with_proc(p, |pr| Arc::clone(&pr.exit))?;
        Ok(cell.wait())
    }

    /// A container's state.
    pub fn state(&self, id: &str) -> Reply<ContainerState> {
        let c = self.get(id)?;
        let c = c.lock().unwrap_or_else(|e| e.into_inner());
        let exit = c.init.exit.get();
        Ok(ContainerState {
            id: id.to_string(),
            status: c.status,
            pid: if exit.is_some() { 0 } else { c.init.pid },
            exit_status: exit,
        })
    }

    /// The guest pids of a container's processes.
    pub fn pids(&self, id: &str) -> Reply<Vec<u32>> {
        let c = self.get(id)?;
        let c = c.lock().unwrap_or_else(|e| e.into_inner());
        match &c.cgroup {
            Some(cg) => cg.procs().map_err(|e| internal(e.to_string())),
            None => {
                let mut v = vec![c.init.pid];
                v.extend(
                    c.execs
                        .values()
                        .filter(|p| p.exit.get().is_none())
                        .map(|p| p.pid),
                );
                Ok(v)
            }
        }
    }

    fn cgroup_op<T>(
        &self,
        id: &str,
        f: impl FnOnce(&Cgroup) -> Result<T, super::cgroups::CgroupError>,
    ) -> Reply<T> {
        let c = self.get(id)?;
        let c = c.lock().unwrap_or_else(|e| e.into_inner());
        let cg = c.cgroup.as_ref().ok_or_else(|| {
            ErrorReply::new(ErrorKind::Unsupported, "this agent runs without cgroup v2")
        })?;
        f(cg).map_err(|e| invalid(e.to_string()))
    }

    /// cgroup statistics.
    pub fn stats(&self, id: &str) -> Reply<ContainerStats> {
        self.cgroup_op(id, |cg| cg.stats())
    }

    /// Applies new resources.
    pub fn update(&self, id: &str, res: &LinuxResources) -> Reply<()> {
        self.cgroup_op(id, |cg| cg.apply(res))
    }

    /// Freezes or thaws.
    pub fn set_paused(&self, id: &str, paused: bool) -> Reply<()> {
        let c = self.get(id)?;
        let mut c = c.lock().unwrap_or_else(|e| e.into_inner());
        let want_from = if paused {
            ContainerStatus::Running
        } else {
            ContainerStatus::Paused
        };
        if c.status != want_from {
            return Err(precondition(format!(
                "container {id:?} is {:?}, not {want_from:?}",
                c.status
            )));
        }
        let cg = c.cgroup.as_ref().ok_or_else(|| {
            ErrorReply::new(ErrorKind::Unsupported, "this agent runs without cgroup v2")
        })?;
        cg.freeze(paused).map_err(|e| internal(e.to_string()))?;
        c.status = if paused {
            ContainerStatus::Paused
        } else {
            ContainerStatus::Running
        };
        Ok(())
    }

    /// Resizes a process's pty.
    pub fn resize(&self, p: &ProcessRef, rows: u16, cols: u16) -> Reply<()> {
        self.with_proc(p, |pr| pr.io.resize(rows, cols))?
            .map_err(|e| precondition(e.to_string()))
    }

    /// Closes a process's stdin.
    pub fn close_stdin(&self, p: &ProcessRef) -> Reply<()> {
        self.with_proc(p, |pr| pr.io.close_stdin())
    }

    /// Forgets an exec that has exited: its status, and its stdio ports if the host never
    /// connected them.
    pub fn delete_exec(&self, p: &ProcessRef) -> Reply<()> {
        let Some(exec_id) = &p.exec_id else {
            return Err(invalid(
                "DeleteProcess: exec_id is missing (a container's init goes with DeleteContainer)",
            ));
        };
        let (pid, exited) = self.with_proc(p, |pr| (pr.pid, pr.exit.get().is_some()))?;
        if !exited {
            return Err(precondition(format!(
                "exec {exec_id:?} (pid {pid}) is still running: kill it first"
            )));
        }
        let c = self.get(&p.id)?;
        c.lock()
            .unwrap_or_else(|e| e.into_inner())
            .execs
            .remove(exec_id);
        Ok(())
    }

    /// Removes a container; with `force` a running one is killed first.
    pub fn delete(&self, id: &str, force: bool) -> Reply<()> {
        let c = self.get(id)?;
        let exit = {
            let g = c.lock().unwrap_or_else(|e| e.into_inner());
            let running = g.init.exit.get().is_none();
            if running && !force && g.status != ContainerStatus::Created {
                return Err(precondition(format!(
                    "container {id:?} is {:?}; stop it or delete with force",
                    g.status
                )));
            }
            if running {
                if let Some(cg) = &g.cgroup {
                    let _ = cg.freeze(false);
                    let _ = cg.kill_all();
                }
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(g.init.pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            Arc::clone(&g.init.exit)
        };
        exit.wait();
        let mut g = c.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(oom) = g.oom.take() {
            oom.stop();
        }
        if let Some(cg) = &g.cgroup {
            cg.remove().map_err(|e| internal(e.to_string()))?;
        }
        drop(g);
        self.containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        Ok(())
    }

    /// Ids of every container.
    pub fn ids(&self) -> Vec<String> {
        self.containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }
}
