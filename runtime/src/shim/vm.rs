//! The pod's VM: virtiofsd serving the pod's share, the guest (QEMU with the vsock backend,
//! or the built-in VMM in this process), the agent's connections, and the end of it all.
//!
//! QEMU and virtiofsd die with the thread that started them (`PR_SET_PDEATHSIG`), and the
//! ttrpc server's worker threads come and go, so one thread per VM starts them, stays to
//! wait for the guest's end, and then calls back: a guest that dies is noticed at once.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use moat_protocol::{Request, Response, CONTROL_PORT};
use nix::mount::{mount, MsFlags};

use crate::boot::BootError;
use crate::guest::GuestVm;
use crate::sandbox::SHARE_TAG;
use crate::virtiofsd::{Virtiofsd, VirtiofsdError};
use crate::vsock::{AgentClient, AgentError};

/// How long the guest may take to boot (TCG is slow).
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long one agent request may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle agent connections kept for reuse.
const POOL: usize = 4;

/// A failure of the pod's VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The state directory or share could not be made.
    #[error("preparing {path}: {why}")]
    Setup {
        /// The path.
        path: PathBuf,
        /// What failed.
        why: String,
    },
    /// virtiofsd did not start.
    #[error(transparent)]
    Fs(#[from] VirtiofsdError),
    /// QEMU or the agent did not come up.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// A request to the agent failed.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// The VM is no longer running.
    #[error("the pod's VM is not running (the guest exited or was shut down)")]
    Gone,
}

/// What VM to boot: guest files, VMM, size.
pub type VmConfig = crate::guest::SandboxVm;

/// A running pod VM.
#[derive(Debug)]
pub struct PodVm {
    /// The pod's state directory (sockets, console log, share).
    pub dir: PathBuf,
    /// The virtio-fs share: `<share>/<container>/rootfs` is each container's root.
    pub share: PathBuf,
    /// The hybrid vsock socket.
    pub uds: PathBuf,
    /// The pid of the process running the guest: QEMU's, or the shim's own for the built-in
    /// VMM.
    pub vmm_pid: u32,
    /// virtiofsd's pid.
    pub virtiofsd_pid: u32,
    /// When the VMM was started.
    pub started: Instant,
    alive: Arc<AtomicBool>,
    kill: Arc<AtomicBool>,
    pool: Mutex<Vec<AgentClient>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

fn setup_err(path: &Path, why: impl std::fmt::Display) -> VmError {
    VmError::Setup {
        path: path.to_path_buf(),
        why: why.to_string(),
    }
}

/// Makes `share` a mount point with shared propagation, so that rootfs binds added after
/// virtiofsd started (later containers of the pod) propagate into virtiofsd's namespace.
fn shared_mount(share: &Path) -> Result<(), VmError> {
    std::fs::create_dir_all(share).map_err(|e| setup_err(share, e))?;
    mount(
        Some(share),
        share,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| setup_err(share, format!("bind-mounting the share on itself: {e}")))?;
    mount(
        None::<&str>,
        share,
        None::<&str>,
        MsFlags::MS_SHARED,
        None::<&str>,
    )
    .map_err(|e| setup_err(share, format!("making the share shared: {e}")))
}

impl PodVm {
    /// Boots the pod's VM in `dir` and waits for its agent. `on_exit` runs on the VM's thread
    /// once QEMU has exited, for whatever reason.
    pub fn boot(
        dir: &Path,
        cfg: VmConfig,
        on_exit: Box<dyn FnOnce() + Send>,
    ) -> Result<Arc<Self>, VmError> {
        if dir.exists() {
            let _ = containerd_shim::mount::umount_recursive(dir.to_str(), libc::MNT_DETACH);
            let _ = std::fs::remove_dir_all(dir);
        }
        std::fs::create_dir_all(dir).map_err(|e| setup_err(dir, e))?;
        let share = dir.join("share");
        shared_mount(&share)?;
        let alive = Arc::new(AtomicBool::new(true));
        let kill = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let thread = {
            let (d, share) = (dir.to_path_buf(), share.clone());
            let (alive, kill) = (Arc::clone(&alive), Arc::clone(&kill));
            std::thread::Builder::new()
                .name("pod-vm".into())
                .spawn(move || vm_thread(&d, &share, &cfg, &alive, &kill, &tx, on_exit))
                .map_err(|e| setup_err(dir, format!("spawning the VM thread: {e}")))?
        };
        let booted = rx.recv().unwrap_or(Err(VmError::Gone));
        let (agent, vmm_pid, virtiofsd_pid, uds, started) = match booted {
            Ok(b) => b,
            Err(e) => {
                let _ = thread.join();
                cleanup_dir(dir);
                return Err(e);
            }
        };
        Ok(Arc::new(Self {
            dir: dir.to_path_buf(),
            share,
            uds,
            vmm_pid,
            virtiofsd_pid,
            started,
            alive,
            kill,
            pool: Mutex::new(vec![agent]),
            thread: Mutex::new(Some(thread)),
        }))
    }

    /// Whether the guest is still running.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    /// One request to the agent, on a pooled connection.
    pub fn call(&self, name: &'static str, req: Request) -> Result<Response, VmError> {
        if !self.is_alive() {
            return Err(VmError::Gone);
        }
        let pooled = self.pool.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut c = match pooled {
            Some(c) => c,
            None => AgentClient::connect(&self.uds, CONTROL_PORT, CALL_TIMEOUT).map_err(|e| {
                if self.is_alive() {
                    VmError::Agent(e)
                } else {
                    VmError::Gone
                }
            })?,
        };
        let r = c.call(name, req);
        if matches!(r, Ok(_) | Err(AgentError::Refused { .. })) {
            let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
            if pool.len() < POOL {
                pool.push(c);
            }
        }
        r.map_err(|e| match e {
            AgentError::Frame(_) | AgentError::Connect(_) if !self.is_alive() => VmError::Gone,
            e => VmError::Agent(e),
        })
    }

    /// Ends the guest now (the VM thread notices and reports it gone).
    pub fn kill(&self) {
        self.kill.store(true, Ordering::SeqCst);
    }

    /// A connection that receives the agent's events (exits, OOM kills).
    pub fn subscribe(&self) -> Result<AgentClient, VmError> {
        let mut c = AgentClient::connect(&self.uds, CONTROL_PORT, CALL_TIMEOUT)?;
        c.call("SubscribeEvents", Request::SubscribeEvents)?;
        c.set_timeout(None)?;
        Ok(c)
    }

    /// Powers the guest off (the agent syncs and reboots; the VMM ends), or ends it if it
    /// does not go within `timeout`; waits for the VM thread, removes the state directory.
    pub fn shutdown(&self, timeout: Duration) {
        if self.is_alive() {
            if let Ok(mut c) = AgentClient::connect(&self.uds, CONTROL_PORT, Duration::from_secs(5))
            {
                let _ = c.shutdown();
            }
        }
        let deadline = Instant::now() + timeout;
        while self.is_alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill.store(true, Ordering::SeqCst);
        self.pool.lock().unwrap_or_else(|e| e.into_inner()).clear();
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
        cleanup_dir(&self.dir);
    }
}

type Booted = (AgentClient, u32, u32, PathBuf, Instant);

fn vm_thread(
    dir: &Path,
    share: &Path,
    cfg: &VmConfig,
    alive: &AtomicBool,
    kill: &AtomicBool,
    tx: &mpsc::Sender<Result<Booted, VmError>>,
    on_exit: Box<dyn FnOnce() + Send>,
) {
    let fs = match Virtiofsd::start(share, &dir.join("fs.sock"), &dir.join("virtiofsd.log")) {
        Ok(fs) => fs,
        Err(e) => {
            alive.store(false, Ordering::SeqCst);
            let _ = tx.send(Err(e.into()));
            return;
        }
    };
    let vm = GuestVm::start(&cfg.guest(fs.socket(), SHARE_TAG), dir);
    let mut vm = match vm {
        Ok(vm) => vm,
        Err(e) => {
            alive.store(false, Ordering::SeqCst);
            let _ = tx.send(Err(e.into()));
            return;
        }
    };
    match vm.wait_for_agent(BOOT_TIMEOUT) {
        Ok((agent, _)) => {
            let booted = (
                agent,
                vm.pid(),
                fs.pid(),
                vm.uds().to_path_buf(),
                vm.started(),
            );
            if tx.send(Ok(booted)).is_err() {
                kill.store(true, Ordering::SeqCst);
            }
        }
        Err(e) => {
            alive.store(false, Ordering::SeqCst);
            vm.kill();
            let _ = tx.send(Err(e.into()));
            return;
        }
    }
    loop {
        if vm.wait_exit(Duration::from_millis(200)) {
            break;
        }
        if kill.load(Ordering::SeqCst) {
            vm.kill();
            break;
        }
    }
    alive.store(false, Ordering::SeqCst);
    drop(vm);
    drop(fs);
    on_exit();
}

/// Unmounts whatever is left under a pod's directory and removes it.
pub fn cleanup_dir(dir: &Path) {
    let _ = containerd_shim::mount::umount_recursive(dir.to_str(), libc::MNT_DETACH);
    if !has_mounts_under(dir) {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Whether any mount point in this mount namespace lies under `dir` (then removing it
/// would delete a container's files).
pub fn has_mounts_under(dir: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return true;
    };
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| Path::new(m).starts_with(dir))
}

/// Unmounts a container's rootfs and volume binds in the share and removes its directory.
pub fn unshare_container(share: &Path, id: &str) {
    let dir = share.join(id);
    let _ = containerd_shim::mount::umount_recursive(dir.to_str(), libc::MNT_DETACH);
    if !has_mounts_under(&dir) {
        let _ = std::fs::remove_dir_all(&dir);
    }
}
