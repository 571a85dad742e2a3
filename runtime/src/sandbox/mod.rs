//! The sandbox process: forked by `moat create` (not double-forked, so a subreaper such as
//! conmon or a shim sees it exit), it owns the VM for one container:
//!
//! 1. enters a private mount namespace and binds the rootfs and host volumes into the share;
//! 2. starts virtiofsd (it dies with this process) and the guest: QEMU with the vsock
//!    backend on a thread (QEMU dies with it too), or the built-in VMM on threads of this
//!    process, whichever `config::Backend::choose` picked;
//! 3. waits for the agent, runs `createRuntime` and `prestart` hooks, creates the container;
//! 4. connects the container's stdio to the fds `create` received, writes `state.json`,
//!    and tells `create` it may return;
//! 5. waits for the container's init to exit, delivers its last output, records the exit
//!    status, powers the VM off, and exits with that status.
//!
//! `start`, `kill`, `exec`, `pause`, `ps`, `events` and `update` reach the agent through the
//! sandbox's hybrid vsock socket in the state directory (`vsock.sock`), which this process
//! serves; see docs/adr/0005-cli-process-model.md.

pub mod share;
pub mod stdio;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use moat_protocol::{CreateContainer, ProcessRef, Request, Response, Spec, StdioRequest};

use crate::guest::{GuestVm, SandboxVm};
use crate::state::{ContainerState, Status, Store};
use crate::virtiofsd::Virtiofsd;
use crate::vsock::AgentClient;

/// The virtio-fs tag of every sandbox's share.
pub const SHARE_TAG: &str = "moatshare";

/// How long the guest may take to answer.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// What the sandbox process needs to know.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// The state store.
    pub store: Store,
    /// Container id.
    pub id: String,
    /// Absolute bundle path.
    pub bundle: PathBuf,
    /// The parsed `config.json`.
    pub spec: Spec,
    /// The VM: guest files, VMM, size.
    pub vm: SandboxVm,
    /// `--console-socket`, for `process.terminal`.
    pub console_socket: Option<PathBuf>,
    /// `--no-pivot`.
    pub no_pivot: bool,
}

/// A failure of the sandbox before the container runs (reported to `create`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SandboxError(pub String);

fn err(e: impl std::fmt::Display) -> SandboxError {
    SandboxError(e.to_string())
}

/// The running sandbox, up to the container's exit.
struct Running {
    vm: GuestVm,
    fs: Virtiofsd,
    agent: AgentClient,
    pumps: stdio::Pumps,
}

/// The sandbox process's body. `ready` is the write end of the pipe `create` reads: one
/// line, `ok <guest pid>` or `error <message>`, then it is closed. Returns the exit code.
pub fn run(cfg: SandboxConfig, ready: OwnedFd) -> i32 {
    let mut ready = std::fs::File::from(ready);
    let started = match setup(&cfg) {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(ready, "error {}", e.0.replace('\n', " "));
            return 1;
        }
    };
    let (mut running, guest_pid) = started;
    let _ = writeln!(ready, "ok {guest_pid}");
    drop(ready);
    let status = wait_for_exit(&cfg, &mut running);
    let mut st = cfg.store.load(&cfg.id).ok();
    if let Some(st) = st.as_mut() {
        st.status = Status::Stopped;
        st.exit_status = Some(status);
        let _ = cfg.store.save(st);
    }
    let Running {
        mut vm,
        mut fs,
        mut agent,
        pumps,
    } = running;
    pumps.finish(Duration::from_secs(10));
    let _ = vm.shutdown(&mut agent, Duration::from_secs(10));
    let _ = fs.wait(Duration::from_secs(5));
    status
}

fn setup(cfg: &SandboxConfig) -> Result<(Running, u32), SandboxError> {
    let dir = cfg.store.dir(&cfg.id);
    share::private_mount_namespace()
        .map_err(|e| err(format!("entering a private mount namespace: {e}")))?;
    let share_dir = dir.join("share");
    let (guest_spec, rootfs) =
        share::prepare(&share_dir, &cfg.id, &cfg.bundle, &cfg.spec).map_err(err)?;
    let fs = Virtiofsd::start(&share_dir, &dir.join("fs.sock"), &dir.join("virtiofsd.log"))
        .map_err(err)?;
    let mut vm = GuestVm::start(&cfg.vm.guest(fs.socket(), SHARE_TAG), &dir).map_err(err)?;
    let (mut agent, _) = vm.wait_for_agent(BOOT_TIMEOUT).map_err(err)?;
    let state = ContainerState {
        owner: nix::unistd::getuid().as_raw(),
        ..ContainerState::new(
            &cfg.id,
            &cfg.bundle,
            &cfg.spec,
            Status::Creating,
            std::process::id(),
        )
    };
    cfg.store.save(&state).map_err(err)?;
    crate::hooks::run_host(&cfg.spec, "createRuntime", &state, &cfg.bundle).map_err(err)?;
    crate::hooks::run_host(&cfg.spec, "prestart", &state, &cfg.bundle).map_err(err)?;
    let terminal = cfg
        .spec
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false);
    let stdio_req = StdioRequest {
        stdin: true,
        stdout: true,
        stderr: true,
    };
    let req = CreateContainer {
        id: cfg.id.clone(),
        spec: Box::new(guest_spec),
        rootfs,
        stdio: stdio_req,
    };
    let started = match agent.call("CreateContainer", Request::CreateContainer(req)) {
        Ok(Response::Started(s)) => s,
        Ok(other) => {
            return Err(err(format!(
                "unexpected answer to CreateContainer: {other:?}"
            )))
        }
        Err(crate::vsock::AgentError::Refused { reply, .. }) => {
            return Err(SandboxError(reply.message))
        }
        Err(e) => return Err(err(e)),
    };
    let tty = terminal.then(|| match &cfg.console_socket {
        Some(p) => stdio::TtyHost::ConsoleSocket(p.clone()),
        None => stdio::TtyHost::Inherit,
    });
    let pumps = stdio::start(vm.uds(), started.stdio, [0, 1, 2], tty).map_err(err)?;
    if let Some(fd) = pumps.tty_size_fd.clone() {
        watch_resizes(vm.uds(), &cfg.id, fd, pumps.stopped());
    }
    let state = ContainerState {
        status: Status::Created,
        guest_pid: started.pid,
        ..state
    };
    cfg.store.save(&state).map_err(err)?;
    Ok((
        Running {
            vm,
            fs,
            agent,
            pumps,
        },
        started.pid,
    ))
}

/// Forwards the host terminal's size to the guest pty whenever it changes.
fn watch_resizes(
    uds: &Path,
    id: &str,
    fd: std::sync::Arc<OwnedFd>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    let uds = uds.to_path_buf();
    let id = id.to_string();
    let _ = std::thread::Builder::new()
        .name("resize".into())
        .spawn(move || {
            let Ok(mut agent) =
                AgentClient::connect(&uds, moat_protocol::CONTROL_PORT, Duration::from_secs(10))
            else {
                return;
            };
            let mut last = None;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let size = stdio::window_size(fd.as_raw_fd());
                if size.is_some() && size != last {
                    let (rows, cols) = size.unwrap_or_default();
                    let p = ProcessRef {
                        id: id.clone(),
                        exec_id: None,
                    };
                    let _ = agent.call(
                        "ResizeTty",
                        Request::ResizeTty {
                            process: p,
                            rows,
                            cols,
                        },
                    );
                    last = size;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
}

/// Blocks until the container's init exits; its status, or 255 if the guest went away.
fn wait_for_exit(cfg: &SandboxConfig, r: &mut Running) -> i32 {
    let p = ProcessRef {
        id: cfg.id.clone(),
        exec_id: None,
    };
    let Ok(mut waiter) = AgentClient::connect(
        r.vm.uds(),
        moat_protocol::CONTROL_PORT,
        Duration::from_secs(30),
    ) else {
        return 255;
    };
    let _ = waiter.set_timeout(None);
    match waiter.call("WaitProcess", Request::WaitProcess(p)) {
        Ok(Response::Exited { status }) => status,
        _ => 255,
    }
}

/// Forks the sandbox process. In the parent, returns its pid and the read end of the
/// readiness pipe; the child never returns.
pub fn fork_sandbox(cfg: SandboxConfig) -> Result<(nix::unistd::Pid, std::fs::File), SandboxError> {
    let (r, w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| err(format!("pipe: {e}")))?;
    // SAFETY: `moat` is single-threaded at this point (the CLI forks before starting any
    // thread), so the child may do anything.
    match unsafe { nix::unistd::fork() }.map_err(|e| err(format!("fork: {e}")))? {
        nix::unistd::ForkResult::Child => {
            drop(r);
            let _ = nix::unistd::setsid();
            let code = run(cfg, w);
            std::process::exit(code);
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(w);
            Ok((child, std::fs::File::from(r)))
        }
    }
}

/// Reads the sandbox's readiness line: `Ok(guest pid)` or the error it reported.
pub fn read_ready(mut pipe: std::fs::File) -> Result<u32, SandboxError> {
    let mut line = String::new();
    let _ = Read::by_ref(&mut pipe)
        .take(64 * 1024)
        .read_to_string(&mut line);
    let line = line.trim();
    if let Some(pid) = line.strip_prefix("ok ") {
        return pid
            .parse()
            .map_err(|_| err(format!("bad readiness line {line:?}")));
    }
    Err(SandboxError(
        line.strip_prefix("error ")
            .unwrap_or("the sandbox process exited before the container was created")
            .to_string(),
    ))
}

/// The raw fd numbers of stdio, for the pumps.
pub const STDIO: [RawFd; 3] = [0, 1, 2];
