//! The built-in VMM as its own process: `moat-vmm`, started by the sandbox process or the
//! shim as QEMU is (docs/adr/0007-builtin-vmm-process.md). All of its threads carry a
//! seccomp filter, a panic or a guest-triggered bug ends only it, and its memory is its own.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::{BuiltinError, BuiltinVmConfig};

/// How long `moat-vmm` may take to build the VM and serve its vsock socket.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of `moat-vmm`'s stderr kept for messages.
const STDERR_TAIL: u64 = 4096;

/// A running `moat-vmm` process. Killed when dropped.
#[derive(Debug)]
pub struct VmmProcess {
    child: Child,
    started: Instant,
    stderr_log: PathBuf,
    uds: PathBuf,
    status: Option<ExitStatus>,
}

impl VmmProcess {
    /// Starts `bin` for `cfg` (its report and errors go to `stderr_log`); returns once the
    /// VM is built and its hybrid vsock socket is there, or with why it is not.
    pub fn spawn(
        bin: &Path,
        cfg: &BuiltinVmConfig,
        stderr_log: &Path,
    ) -> Result<Self, BuiltinError> {
        for (what, path) in [
            ("guest kernel", &cfg.kernel),
            ("guest initramfs", &cfg.initramfs),
        ] {
            if !path.is_file() {
                return Err(BuiltinError::Build(format!(
                    "{what} {} is missing: run scripts/build-guest.sh",
                    path.display()
                )));
            }
        }
        let stderr = File::create(stderr_log).map_err(|source| BuiltinError::Log {
            what: "moat-vmm's log",
            path: stderr_log.to_path_buf(),
            source,
        })?;
        let mut cmd = Command::new(bin);
        cmd.args(cfg.args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        crate::host::die_with_parent(&mut cmd);
        let started = Instant::now();
        let child = cmd.spawn().map_err(|e| BuiltinError::Spawn {
            bin: bin.to_path_buf(),
            source: e,
        })?;
        let mut p = Self {
            child,
            started,
            stderr_log: stderr_log.to_path_buf(),
            uds: cfg.vsock_uds.clone(),
            status: None,
        };
        // moat-vmm prints its command line once the VM is built: its vsock socket listens.
        while !p.built() {
            if let Some(status) = p.try_wait() {
                return Err(BuiltinError::Build(format!(
                    "moat-vmm exited ({status}): {}",
                    p.stderr_tail()
                )));
            }
            if started.elapsed() > READY_TIMEOUT {
                p.kill();
                return Err(BuiltinError::Build(format!(
                    "moat-vmm did not serve {} within {READY_TIMEOUT:?}: {}",
                    p.uds.display(),
                    p.stderr_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(p)
    }

    /// When it was started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The hybrid vsock socket it serves.
    pub fn uds(&self) -> &Path {
        &self.uds
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Waits up to `timeout` for it to exit; its status, once it has.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops it: SIGTERM (it stops the VM and writes its report), SIGKILL if it is still
    /// there after a second; reaps it.
    pub fn kill(&mut self) {
        if self.try_wait().is_some() {
            return;
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        if self.wait_exit(Duration::from_secs(1)).is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
    }

    /// Why the guest ended, from the report's `exit:` line (`guest reset by triple fault
    /// (reboot=t)`, ...), once it has.
    pub fn exit_reason(&self) -> Option<String> {
        let text = self.stderr_text();
        text.lines()
            .rev()
            .find_map(|l| l.strip_prefix("exit: "))
            .map(str::to_string)
    }

    /// Whether it ended because the guest reset or powered itself off, with status 0.
    pub fn ended_cleanly(&self) -> bool {
        self.status.is_some_and(|s| s.success())
            && self
                .exit_reason()
                .is_some_and(|r| r.starts_with("guest ") && !r.contains("crash"))
    }

    /// The end of what it wrote to stderr (errors, the report).
    pub fn stderr_tail(&self) -> String {
        let t = self.stderr_text();
        t.trim_end().to_string()
    }

    /// Whether the `cmdline:` line is there (near the start of stderr).
    fn built(&self) -> bool {
        use std::io::Read;
        let mut head = Vec::new();
        if let Ok(f) = File::open(&self.stderr_log) {
            let _ = f.take(64 * 1024).read_to_end(&mut head);
        }
        String::from_utf8_lossy(&head).contains("cmdline: ")
    }

    fn stderr_text(&self) -> String {
        use std::io::{Read, Seek, SeekFrom};
        let Ok(mut f) = File::open(&self.stderr_log) else {
            return String::new();
        };
        let len = f.metadata().map_or(0, |m| m.len());
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(STDERR_TAIL)));
        let mut buf = Vec::new();
        let _ = f.take(STDERR_TAIL).read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
}

impl Drop for VmmProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
