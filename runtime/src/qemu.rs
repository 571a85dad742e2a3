//! The `qemu` backend: `qemu-system-x86_64 -M microvm` booting moat's guest directly.
//!
//! Facts this module depends on (QEMU-TCG.md): `acpi=off` so that QEMU announces the
//! virtio-mmio devices on the kernel command line; `reboot=t` plus `-no-reboot` so that the
//! agent's reset ends QEMU within milliseconds, with exit status 0; guest memory on a shared
//! memfd so that vhost-user backends (vsock, virtiofsd) can map it.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::host::KvmKind;

/// A failure starting or watching a QEMU guest.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// A file the VM needs is missing.
    #[error("{what} not found at {path} ({hint})")]
    Missing {
        /// Which file.
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
        /// What to do about it.
        hint: &'static str,
    },
    /// QEMU could not be started.
    #[error("starting {qemu}: {source} (install Debian's qemu-system-x86, or set MOAT_QEMU)")]
    Spawn {
        /// The binary.
        qemu: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// QEMU exited while we waited for something from the guest.
    #[error("QEMU exited ({status}) before {waiting_for}; console tail:\n{console_tail}")]
    Exited {
        /// Its status.
        status: ExitStatus,
        /// What we waited for.
        waiting_for: String,
        /// The last lines of the serial console.
        console_tail: String,
    },
    /// The guest did not get there in time.
    #[error("timed out after {0:?} waiting for {1}; console tail:\n{2}")]
    Timeout(Duration, String, String),
    /// Reading the console log or waiting on QEMU failed.
    #[error("watching the VM: {0}")]
    Io(#[from] std::io::Error),
}

/// How QEMU runs guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware KVM.
    Kvm,
    /// Software emulation.
    Tcg,
}

impl Accel {
    /// KVM only where it is hardware-backed; TCG everywhere else (including PVM hosts).
    pub fn for_host(kvm: KvmKind) -> Self {
        match kvm {
            KvmKind::Hardware => Accel::Kvm,
            _ => Accel::Tcg,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// Everything needed to start one guest.
#[derive(Debug, Clone)]
pub struct QemuVmConfig {
    /// `qemu-system-x86_64`.
    pub qemu: PathBuf,
    /// Guest `vmlinux`.
    pub kernel: PathBuf,
    /// Guest initramfs.
    pub initramfs: PathBuf,
    /// Accelerator.
    pub accel: Accel,
    /// vCPUs.
    pub vcpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Where the serial console is written.
    pub console_log: PathBuf,
    /// Extra kernel parameters (the agent's `moat.*` settings, say).
    pub cmdline_extra: Vec<String>,
    /// A vhost-user vsock backend's socket.
    pub vhost_user_vsock: Option<PathBuf>,
    /// A vhost-user-fs backend's socket and the tag the guest mounts.
    pub vhost_user_fs: Option<(PathBuf, String)>,
}

/// The base kernel command line of every moat guest.
pub const BASE_CMDLINE: &str = "console=ttyS0 quiet panic=-1 reboot=t";

impl QemuVmConfig {
    /// The QEMU command for this configuration (not started).
    pub fn command(&self) -> Command {
        let mut c = Command::new(&self.qemu);
        let mem = format!("{}M", self.memory_mib);
        c.args([
            "-M",
            &format!(
                "microvm,accel={},acpi=off,memory-backend=mem",
                self.accel.as_str()
            ),
        ])
        .args([
            "-cpu",
            if self.accel == Accel::Kvm {
                "host"
            } else {
                "max"
            },
        ])
        .args(["-smp", &self.vcpus.to_string(), "-m", &mem])
        .args([
            "-object",
            &format!("memory-backend-memfd,id=mem,size={mem},share=on"),
        ])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        // microvm's virtio-mmio devices default to legacy (v1); vhost-user backends
        // (libvhost-user, vhost-user-backend) refuse legacy devices.
        .args(["-global", "virtio-mmio.force-legacy=false"])
        .args(["-serial", &format!("file:{}", self.console_log.display())]);
        if let Some(sock) = &self.vhost_user_vsock {
            c.args([
                "-chardev",
                &format!("socket,id=vsock,path={}", sock.display()),
            ])
            .args(["-device", "vhost-user-vsock-device,chardev=vsock"]);
        }
        if let Some((sock, tag)) = &self.vhost_user_fs {
            c.args(["-chardev", &format!("socket,id=fs,path={}", sock.display())])
                .args([
                    "-device",
                    &format!("vhost-user-fs-device,chardev=fs,tag={tag}"),
                ]);
        }
        let mut cmdline = BASE_CMDLINE.to_string();
        if let (Accel::Tcg, Some(khz)) = (self.accel, crate::host::tsc_khz()) {
            // microvm has no HPET and, without ACPI, no PM timer, so the guest calibrates its
            // TSC against the PIT, which fails on a loaded host and leaves it on a 4 ms
            // jiffies clock. Under TCG the guest TSC runs at the host's rate: say so.
            cmdline.push_str(&format!(" tsc_early_khz={khz}"));
        }
        for extra in &self.cmdline_extra {
            cmdline.push(' ');
            cmdline.push_str(extra);
        }
        c.arg("-kernel")
            .arg(&self.kernel)
            .arg("-initrd")
            .arg(&self.initramfs);
        c.args(["-append", &cmdline]);
        c
    }
}

/// A running QEMU guest. Killed when dropped.
#[derive(Debug)]
pub struct QemuVm {
    child: Child,
    console: ConsoleReader,
    started: Instant,
}

impl QemuVm {
    /// Checks the files exist, then starts QEMU with stdio detached.
    pub fn spawn(cfg: &QemuVmConfig) -> Result<Self, QemuError> {
        for (what, path, hint) in [
            (
                "guest kernel",
                &cfg.kernel,
                "run scripts/build-guest.sh, or set MOAT_KERNEL",
            ),
            (
                "guest initramfs",
                &cfg.initramfs,
                "run scripts/build-guest.sh, or set MOAT_INITRAMFS",
            ),
        ] {
            if !path.is_file() {
                return Err(QemuError::Missing {
                    what,
                    path: path.clone(),
                    hint,
                });
            }
        }
        File::create(&cfg.console_log)?;
        let started = Instant::now();
        let mut cmd = cfg.command();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        crate::host::die_with_parent(&mut cmd);
        let child = cmd.spawn().map_err(|source| QemuError::Spawn {
            qemu: cfg.qemu.clone(),
            source,
        })?;
        Ok(Self {
            child,
            console: ConsoleReader::new(&cfg.console_log),
            started,
        })
    }

    /// When QEMU was started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// QEMU's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until a console line contains `needle`; returns that line.
    pub fn wait_for_console(
        &mut self,
        needle: &str,
        timeout: Duration,
    ) -> Result<String, QemuError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.console.poll_for(needle)? {
                return Ok(line);
            }
            if let Some(status) = self.child.try_wait()? {
                // One last look: the line may have landed just before exit.
                if let Some(line) = self.console.poll_for(needle)? {
                    return Ok(line);
                }
                return Err(QemuError::Exited {
                    status,
                    waiting_for: format!("console line {needle:?}"),
                    console_tail: self.console_tail_with_stderr(),
                });
            }
            if Instant::now() >= deadline {
                return Err(QemuError::Timeout(
                    timeout,
                    format!("console line {needle:?}"),
                    self.console.tail(),
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for QEMU to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, QemuError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(QemuError::Timeout(
                    timeout,
                    "QEMU to exit".into(),
                    self.console.tail(),
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The last lines of the console, for error messages.
    pub fn console_tail(&self) -> String {
        self.console.tail()
    }

    fn console_tail_with_stderr(&mut self) -> String {
        let mut tail = self.console.tail();
        if let Some(mut err) = self.child.stderr.take() {
            let mut buf = Vec::new();
            let _ = err.by_ref().take(4096).read_to_end(&mut buf);
            if !buf.is_empty() {
                tail.push_str("\nqemu stderr: ");
                tail.push_str(String::from_utf8_lossy(&buf).trim());
            }
        }
        tail
    }

    /// Kills QEMU (if still running) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for QemuVm {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        }
    }
}

/// The last lines of a console log the guest writes, read in bounded chunks.
pub fn file_tail(path: &Path) -> String {
    let mut r = ConsoleReader::new(path);
    let _ = r.poll_for("\0");
    r.tail()
}

/// Reads a console log file incrementally. The guest writes it, so everything is bounded:
/// a line longer than [`MAX_LINE`] is cut, and only the last [`TAIL_LINES`] are kept.
#[derive(Debug)]
pub(crate) struct ConsoleReader {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
    tail: std::collections::VecDeque<String>,
}

const MAX_LINE: usize = 4096;
const TAIL_LINES: usize = 40;

impl ConsoleReader {
    pub(crate) fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            offset: 0,
            partial: Vec::new(),
            tail: Default::default(),
        }
    }

    /// Reads what is new; returns the first new complete line containing `needle`.
    pub(crate) fn poll_for(&mut self, needle: &str) -> std::io::Result<Option<String>> {
        let mut f = File::open(&self.path)?;
        f.seek(SeekFrom::Start(self.offset))?;
        let mut chunk = [0u8; 16 * 1024];
        let mut found = None;
        loop {
            let n = f.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            self.offset += n as u64;
            for &b in &chunk[..n] {
                if b == b'\n' {
                    let line = String::from_utf8_lossy(&self.partial)
                        .trim_end_matches('\r')
                        .to_string();
                    self.partial.clear();
                    if found.is_none() && line.contains(needle) {
                        found = Some(line.clone());
                    }
                    if self.tail.len() == TAIL_LINES {
                        self.tail.pop_front();
                    }
                    self.tail.push_back(line);
                } else if self.partial.len() < MAX_LINE {
                    self.partial.push(b);
                }
            }
            if found.is_some() {
                break;
            }
        }
        Ok(found)
    }

    /// The log file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The last lines read, and the partial line after them.
    pub(crate) fn tail(&self) -> String {
        let mut s: Vec<&str> = self.tail.iter().map(String::as_str).collect();
        let partial = String::from_utf8_lossy(&self.partial);
        if !partial.is_empty() {
            s.push(&partial);
        }
        s.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> QemuVmConfig {
        QemuVmConfig {
            qemu: "qemu-system-x86_64".into(),
            kernel: "/k/vmlinux".into(),
            initramfs: "/k/initramfs.cpio".into(),
            accel: Accel::Tcg,
            vcpus: 1,
            memory_mib: 256,
            console_log: "/tmp/c.log".into(),
            cmdline_extra: vec!["moat.log=debug".into()],
            vhost_user_vsock: Some("/run/v.sock".into()),
            vhost_user_fs: None,
        }
    }

    fn args(c: &Command) -> Vec<String> {
        c.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn command_has_the_facts_that_matter() {
        let a = args(&cfg().command());
        let joined = a.join(" ");
        assert!(
            joined.contains("microvm,accel=tcg,acpi=off,memory-backend=mem"),
            "{joined}"
        );
        assert!(joined.contains("memory-backend-memfd,id=mem,size=256M,share=on"));
        assert!(a.contains(&"-no-reboot".to_string()));
        assert!(joined.contains("vhost-user-vsock-device,chardev=vsock"));
        let append = &a[a.iter().position(|x| x == "-append").unwrap() + 1];
        assert!(
            append.starts_with("console=ttyS0 quiet panic=-1 reboot=t"),
            "{append}"
        );
        assert!(append.ends_with(" moat.log=debug"), "{append}");
        assert!(joined.contains("virtio-mmio.force-legacy=false"));
    }

    #[test]
    fn kvm_only_on_hardware() {
        assert_eq!(Accel::for_host(KvmKind::Hardware), Accel::Kvm);
        assert_eq!(Accel::for_host(KvmKind::PvmOnly), Accel::Tcg);
        assert_eq!(Accel::for_host(KvmKind::Absent), Accel::Tcg);
    }

    #[test]
    fn console_reader_finds_lines_incrementally_and_bounds_them() {
        let dir = std::env::temp_dir().join(format!("moat-console-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.log");
        std::fs::write(&path, b"boot\r\nhalf").unwrap();
        let mut r = ConsoleReader::new(&path);
        assert_eq!(r.poll_for("ready").unwrap(), None);
        let mut long = vec![b'x'; 10 * MAX_LINE];
        long.extend_from_slice(b"\nmoat-agent: ready v=1\n");
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        let mut all = std::fs::read(&path).unwrap();
        all.extend_from_slice(b" line\n");
        all.extend_from_slice(&long);
        std::fs::write(&path, all).unwrap();
        assert_eq!(
            r.poll_for("ready").unwrap().as_deref(),
            Some("moat-agent: ready v=1")
        );
        assert!(r.tail().lines().all(|l| l.len() <= MAX_LINE));
        assert!(r.tail().contains("half line"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
