//! `moat boot`: start the guest with moat's vsock backend, wait until its agent answers
//! `Hello` over vsock, ask it to shut down, and say how long each step took. The README's
//! first command and the boot smoke test both use it.
//!
//! Steps: the vhost-user vsock backend starts on a thread ([`VsockBackendThread`], both of
//! its sockets bound before QEMU starts); QEMU starts with `vhost-user-vsock-device`; the host
//! connects through the hybrid socket to the agent's port 1024, retrying while the guest is
//! not up yet (its vsock device not ready, or nothing listening yet), until `Hello` is
//! answered: that is "agent ready". Then `Shutdown`, QEMU must exit 0, and the backend must
//! stop by itself when QEMU disconnects.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use moat_protocol::{CONTROL_PORT, GUEST_CID};
use moat_vmm::devices::virtio::vsock::vhost_user::VhostUserVsockError;
use moat_vmm::devices::virtio::vsock::MetricsSnapshot;

use crate::config::Vmm;
use crate::guest::{GuestConfig, GuestVm};
use crate::host;
use crate::paths::GuestPaths;
use crate::qemu::{Accel, QemuError, QemuVm, QemuVmConfig};
use crate::vsock::{AgentClient, AgentError, BackendExitError, VsockBackendThread};

/// The line the agent prints on the console once it serves requests.
pub const READY_MARKER: &str = "moat-agent: ready";

/// One connection attempt waits at most this long for the guest to accept.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between attempts that the guest refused (it is still booting).
const RETRY_DELAY: Duration = Duration::from_millis(10);

/// What one boot measured.
#[derive(Debug, Clone)]
pub struct BootReport {
    /// The agent's ready line from the console.
    pub ready_line: String,
    /// The agent's version, from `Hello`.
    pub agent_version: String,
    /// VMM start to the agent answering `Hello` over vsock.
    pub to_ready: Duration,
    /// The `Hello` round trip on the connected stream.
    pub hello_rtt: Duration,
    /// Connection attempts until the agent accepted.
    pub attempts: u32,
    /// VMM start to the guest's end.
    pub to_exit: Duration,
}

/// A failed boot.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The VM failed.
    #[error(transparent)]
    Qemu(#[from] QemuError),
    /// QEMU ended with a failure status.
    #[error("QEMU exited with {0} after the agent was ready (expected 0)")]
    BadExit(std::process::ExitStatus),
    /// The vsock backend could not start.
    #[error("starting the vsock backend")]
    BackendStart(#[source] VhostUserVsockError),
    /// The vsock backend did not stop cleanly after QEMU exited.
    #[error("after QEMU exited")]
    BackendExit(#[source] BackendExitError),
    /// The vsock backend stopped while the guest was booting.
    #[error("the vsock backend stopped before the agent answered; console tail:\n{0}")]
    BackendGone(String),
    /// The agent could not be reached or failed a request.
    #[error("{step}; console tail:\n{console_tail}")]
    Agent {
        /// What was being done.
        step: &'static str,
        /// Why it failed.
        #[source]
        source: AgentError,
        /// The last lines of the serial console.
        console_tail: String,
    },
    /// The built-in VMM could not start or failed.
    #[error(transparent)]
    Builtin(#[from] crate::builtin::BuiltinError),
    /// The built-in VMM's guest ended while we waited for something, or ended badly.
    #[error("the guest ended ({exit}) {when}; console tail:\n{console_tail}")]
    BuiltinEnded {
        /// Why it ended, from the VMM's report.
        exit: String,
        /// While doing what.
        when: String,
        /// The last lines of the serial console.
        console_tail: String,
    },
    /// The agent did not answer in time.
    #[error("the agent did not answer Hello within {timeout:?} ({attempts} attempts; last: {last}); console tail:\n{console_tail}")]
    AgentTimeout {
        /// The timeout.
        timeout: Duration,
        /// Connection attempts made.
        attempts: u32,
        /// The last attempt's error.
        last: String,
        /// The last lines of the serial console.
        console_tail: String,
    },
}

/// A guest booted with moat's vsock backend, not yet known to be ready. The boot smoke test
/// and the vsock end-to-end tests drive it.
#[derive(Debug)]
pub struct VsockVm {
    /// The QEMU process (killed on drop).
    pub vm: QemuVm,
    /// The vsock backend (stopped on drop).
    pub backend: VsockBackendThread,
    /// The hybrid vsock socket: `CONNECT <port>` reaches the guest; guest connections to
    /// host port P go to `<uds>_<P>`.
    pub uds: PathBuf,
}

impl VsockVm {
    /// Starts the vsock backend, then QEMU, in `workdir` (sockets and console log there);
    /// `cmdline_extra` goes on the kernel command line (the agent's `moat.*` settings).
    pub fn start(
        paths: &GuestPaths,
        workdir: &Path,
        cmdline_extra: Vec<String>,
    ) -> Result<Self, BootError> {
        Self::start_with_fs(paths, workdir, cmdline_extra, None)
    }

    /// As [`Self::start`], with a vhost-user-fs device: a virtiofsd socket and its tag.
    pub fn start_with_fs(
        paths: &GuestPaths,
        workdir: &Path,
        cmdline_extra: Vec<String>,
        fs: Option<(PathBuf, String)>,
    ) -> Result<Self, BootError> {
        let accel = Accel::for_host(host::detect_kvm());
        Self::start_accel(paths, workdir, cmdline_extra, fs, 1, 256, accel)
    }

    /// As [`Self::start_with_fs`], with the VM's vCPUs and memory, and QEMU's accelerator
    /// chosen by the caller (`config::Backend::choose`).
    pub fn start_accel(
        paths: &GuestPaths,
        workdir: &Path,
        cmdline_extra: Vec<String>,
        fs: Option<(PathBuf, String)>,
        vcpus: u32,
        memory_mib: u32,
        accel: Accel,
    ) -> Result<Self, BootError> {
        let uds = workdir.join("vsock.sock");
        let vu = workdir.join("vhost-vsock.sock");
        let backend =
            VsockBackendThread::start(&vu, &uds, GUEST_CID).map_err(BootError::BackendStart)?;
        let cfg = QemuVmConfig {
            qemu: paths.qemu.clone(),
            kernel: paths.kernel.clone(),
            initramfs: paths.initramfs.clone(),
            accel,
            vcpus,
            memory_mib,
            console_log: workdir.join("console.log"),
            cmdline_extra,
            vhost_user_vsock: Some(vu),
            vhost_user_fs: fs,
        };
        let vm = QemuVm::spawn(&cfg)?;
        Ok(Self { vm, backend, uds })
    }

    /// Connects to the agent's control port, retrying while the guest is still coming up
    /// (device not ready, nothing listening yet) until `timeout` after QEMU started; returns
    /// the client past `Hello` and the number of attempts.
    pub fn wait_for_agent(&mut self, timeout: Duration) -> Result<(AgentClient, u32), BootError> {
        let uds = self.uds.clone();
        let started = self.vm.started();
        wait_for_agent(&uds, started, timeout, || {
            // QEMU gone: its own error (status, console tail, stderr) says why.
            if let Ok(status) = self.vm.wait_exit(Duration::ZERO) {
                return Some(BootError::Qemu(QemuError::Exited {
                    status,
                    waiting_for: format!("the agent to answer on vsock port {CONTROL_PORT}"),
                    console_tail: self.vm.console_tail(),
                }));
            }
            if self.backend.is_finished() {
                return Some(BootError::BackendGone(self.vm.console_tail()));
            }
            None
        })
        .map_err(|e| e.with_console(|| self.vm.console_tail()))
    }

    /// Wraps an agent error with the console tail.
    pub fn agent_error(&self, step: &'static str, source: AgentError) -> BootError {
        BootError::Agent {
            step,
            source,
            console_tail: self.vm.console_tail(),
        }
    }

    /// Asks the agent to power off, then checks that QEMU exits 0 and the backend stops;
    /// returns QEMU's run time and the backend's counters.
    pub fn shutdown(
        &mut self,
        client: &mut AgentClient,
        timeout: Duration,
    ) -> Result<(Duration, MetricsSnapshot), BootError> {
        client
            .shutdown()
            .map_err(|e| self.agent_error("asking the agent to shut down", e))?;
        let status = self.vm.wait_exit(timeout)?;
        let to_exit = self.vm.started().elapsed();
        if !status.success() {
            return Err(BootError::BadExit(status));
        }
        let vsock = self
            .backend
            .wait(Duration::from_secs(5))
            .map_err(BootError::BackendExit)?;
        Ok((to_exit, vsock))
    }
}

/// Why [`wait_for_agent`] gave up, before the console tail is added.
#[derive(Debug)]
pub enum WaitError {
    /// The VM said it is gone.
    Gone(BootError),
    /// No answer in time.
    Timeout {
        /// The timeout.
        timeout: Duration,
        /// Connection attempts made.
        attempts: u32,
        /// The last attempt's error.
        last: String,
    },
    /// The agent answered, but not as expected.
    Agent(AgentError),
}

impl WaitError {
    /// The [`BootError`], with the console's tail where it says something.
    pub fn with_console(self, tail: impl FnOnce() -> String) -> BootError {
        match self {
            WaitError::Gone(e) => e,
            WaitError::Timeout {
                timeout,
                attempts,
                last,
            } => BootError::AgentTimeout {
                timeout,
                attempts,
                last,
                console_tail: tail(),
            },
            WaitError::Agent(source) => BootError::Agent {
                step: "saying Hello to the agent",
                source,
                console_tail: tail(),
            },
        }
    }
}

/// Connects to the agent's control port through the hybrid socket `uds`, retrying while the
/// guest is still coming up (device not ready, nothing listening yet) until `timeout` after
/// `started`; `gone` says whether the VM has ended meanwhile. Returns the client past
/// `Hello` and the number of attempts.
pub fn wait_for_agent(
    uds: &Path,
    started: Instant,
    timeout: Duration,
    mut gone: impl FnMut() -> Option<BootError>,
) -> Result<(AgentClient, u32), WaitError> {
    let deadline = started + timeout;
    let mut attempts = 0;
    let mut last = String::from("no attempt");
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(WaitError::Timeout {
                timeout,
                attempts,
                last,
            });
        }
        attempts += 1;
        match AgentClient::connect(uds, CONTROL_PORT, left.min(ATTEMPT_TIMEOUT)) {
            Ok(c) => return Ok((c, attempts)),
            Err(AgentError::Connect(e)) if e.is_transient() => last = e.to_string(),
            Err(source) => return Err(WaitError::Agent(source)),
        }
        if let Some(e) = gone() {
            return Err(WaitError::Gone(e));
        }
        std::thread::sleep(RETRY_DELAY);
    }
}

/// Boots the guest once with `vmm` in `workdir` (sockets and console log there), waits until
/// the agent answers `Hello` over vsock, asks it to shut down, and checks that the guest ends
/// cleanly (QEMU exits 0 and its vsock backend stops; the built-in VMM reports the guest's
/// reset).
pub fn boot_once(
    paths: &GuestPaths,
    vmm: Vmm,
    workdir: &Path,
    timeout: Duration,
) -> Result<BootReport, BootError> {
    let cfg = GuestConfig {
        paths: paths.clone(),
        vmm,
        vcpus: 1,
        memory_mib: 256,
        cmdline_extra: Vec::new(),
        fs: None,
    };
    let mut vm = GuestVm::start(&cfg, workdir)?;
    let (mut client, attempts) = vm.wait_for_agent(timeout)?;
    let to_ready = vm.started().elapsed();
    // The agent prints its ready line before it serves, so it is on the console by now.
    let ready_line = vm.wait_for_console(READY_MARKER, Duration::from_secs(5))?;
    let to_exit = vm.shutdown(&mut client, timeout)?;
    Ok(BootReport {
        ready_line,
        agent_version: client.agent_version().to_string(),
        to_ready,
        hello_rtt: client.hello_rtt(),
        attempts,
        to_exit,
    })
}

/// The median of some durations (the lower middle for an even count).
pub fn median(mut v: Vec<Duration>) -> Option<Duration> {
    v.sort();
    v.get(v.len().saturating_sub(1) / 2).copied()
}

/// Seconds with millisecond precision, for printing.
pub fn secs(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

/// A throwaway directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    /// Creates `$TMPDIR/moat-<tag>-<pid>-<n>`.
    pub fn new(tag: &str) -> std::io::Result<Self> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("moat-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&p)?;
        Ok(Self(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        let ms = |v: &[u64]| {
            v.iter()
                .map(|m| Duration::from_millis(*m))
                .collect::<Vec<_>>()
        };
        assert_eq!(median(ms(&[5, 1, 3])), Some(Duration::from_millis(3)));
        assert_eq!(median(ms(&[4, 1, 3, 2])), Some(Duration::from_millis(2)));
        assert_eq!(median(vec![]), None);
    }
}
