//! The `builtin` backend: moat's own VMM.
//!
//! The guest is the same as the QEMU backend's (kernel, initramfs, base command line, the
//! agent's `moat.*` parameters); the differences are the plumbing: the vsock device runs
//! inline in the VMM (its hybrid socket is the one the agent client connects to, no
//! vhost-user backend thread), and virtio-fs is a vhost-user frontend to the same virtiofsd.
//!
//! Two ways to run it, from one [`BuiltinVmConfig`]:
//! - [`process::VmmProcess`]: the `moat-vmm` binary as a child process. The sandbox
//!   process and the shim use this (docs/adr/0007-builtin-vmm-process.md).
//! - [`BuiltinVm`]: the VMM on threads of this process (the event loop on the thread
//!   [`BuiltinVm::spawn`] starts, which installs the VMM's seccomp filter on itself only;
//!   the vCPUs on their own), with in-process pause and resume; the VMM's own tests use it.

pub mod process;

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use moat_vmm::boot::BootSource;
use moat_vmm::builder::{self, VmConfig, VsockConfig};
use moat_vmm::devices::legacy::SerialOutput;
use moat_vmm::devices::virtio::fs::FsConfig;
use moat_vmm::seccomp::SeccompMode;
use moat_vmm::vmm::{RunReport, VmmController};

use crate::backend::KernelVariant;
use crate::qemu::BASE_CMDLINE;

/// Starting or running the built-in VMM failed.
#[derive(Debug, thiserror::Error)]
pub enum BuiltinError {
    /// A log file (the console's, or moat-vmm's stderr) could not be created.
    #[error("creating {what} {path}")]
    Log {
        /// Which log.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The VM could not be built (the message carries the whole error chain).
    #[error("building the VM: {0}")]
    Build(String),
    /// The VMM failed while running.
    #[error("running the VM: {0}")]
    Run(String),
    /// The `moat-vmm` binary could not be started.
    #[error("starting {bin}: {source} (run scripts/build-guest.sh, or set MOAT_VMM)")]
    Spawn {
        /// The binary.
        bin: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The VMM thread could not be started, or panicked.
    #[error("the VMM thread: {0}")]
    Thread(String),
    /// The VM did not end in time.
    #[error("the VM did not end within {0:?}")]
    Timeout(Duration),
}

/// Everything needed to start one guest.
#[derive(Debug, Clone)]
pub struct BuiltinVmConfig {
    /// Guest `vmlinux`.
    pub kernel: PathBuf,
    /// Guest initramfs.
    pub initramfs: PathBuf,
    /// Which kernel build `kernel` is (adds its command-line parameters).
    pub variant: KernelVariant,
    /// vCPUs.
    pub vcpus: u8,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Where the serial console is written.
    pub console_log: PathBuf,
    /// Extra kernel parameters (the agent's `moat.*` settings).
    pub cmdline_extra: Vec<String>,
    /// The hybrid vsock socket the VMM serves (`CONNECT <port>`).
    pub vsock_uds: PathBuf,
    /// A virtiofsd socket and the tag the guest mounts.
    pub fs: Option<(PathBuf, String)>,
}

impl BuiltinVmConfig {
    /// The kernel command line, devices excepted (the VMM appends those).
    pub fn cmdline(&self) -> String {
        let mut c = BASE_CMDLINE.to_string();
        for e in self
            .variant
            .cmdline()
            .iter()
            .copied()
            .chain(self.cmdline_extra.iter().map(String::as_str))
        {
            c.push(' ');
            c.push_str(e);
        }
        c
    }

    /// `moat-vmm`'s arguments for this guest.
    pub fn args(&self) -> Vec<std::ffi::OsString> {
        let mut a: Vec<std::ffi::OsString> = Vec::new();
        let mut push = |k: &str, v: std::ffi::OsString| {
            a.push(k.into());
            a.push(v);
        };
        push("--kernel", self.kernel.clone().into());
        push("--initrd", self.initramfs.clone().into());
        push("--cmdline", self.cmdline().into());
        push("--vcpus", self.vcpus.to_string().into());
        push("--mem", self.memory_mib.to_string().into());
        push("--console", self.console_log.clone().into());
        let mut vsock = std::ffi::OsString::from(format!("{},", moat_protocol::GUEST_CID));
        vsock.push(&self.vsock_uds);
        push("--vsock", vsock);
        if let Some((socket, tag)) = &self.fs {
            let mut fs = socket.clone().into_os_string();
            fs.push(",");
            fs.push(tag);
            push("--fs", fs);
        }
        a
    }

    fn vm_config(&self) -> Result<VmConfig, BuiltinError> {
        let console =
            std::fs::File::create(&self.console_log).map_err(|source| BuiltinError::Log {
                what: "the console log",
                path: self.console_log.clone(),
                source,
            })?;
        Ok(VmConfig {
            vcpus: self.vcpus,
            mem_mib: self.memory_mib,
            boot: BootSource {
                kernel: self.kernel.clone(),
                initramfs: Some(self.initramfs.clone()),
                cmdline: self.cmdline(),
                force_linux_boot: false,
            },
            console: SerialOutput::File(console),
            blocks: Vec::new(),
            nets: Vec::new(),
            vsock: Some(VsockConfig {
                cid: moat_protocol::GUEST_CID,
                uds: self.vsock_uds.clone(),
            }),
            fs: self
                .fs
                .iter()
                .map(|(socket, tag)| FsConfig {
                    socket: socket.clone(),
                    tag: tag.clone(),
                })
                .collect(),
            seccomp: SeccompMode::Enforce,
            huge_pages: true,
        })
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// A guest of the built-in VMM. Stopped when dropped.
#[derive(Debug)]
pub struct BuiltinVm {
    thread: Option<JoinHandle<Result<RunReport, String>>>,
    done: Receiver<()>,
    controller: VmmController,
    started: Instant,
    console_log: PathBuf,
    uds: PathBuf,
}

impl BuiltinVm {
    /// Builds the VM on a new thread and starts the guest there; returns once it runs (or
    /// with the build error).
    pub fn spawn(cfg: &BuiltinVmConfig) -> Result<Self, BuiltinError> {
        let vm_cfg = cfg.vm_config()?;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (done_tx, done) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("moat-vmm".into())
            .spawn(move || {
                let vmm = match builder::build(vm_cfg) {
                    Ok(v) => v,
                    Err(e) => {
                        let msg = chain(&e);
                        let _ = ready_tx.send(Err(msg.clone()));
                        return Err(msg);
                    }
                };
                let _ = ready_tx.send(Ok(vmm.controller()));
                let r = vmm.run().map_err(|e| chain(&e));
                let _ = done_tx.send(());
                r
            })
            .map_err(|e| BuiltinError::Thread(e.to_string()))?;
        let started = Instant::now();
        let controller = match ready_rx.recv() {
            Ok(Ok(c)) => c,
            Ok(Err(msg)) => {
                let _ = thread.join();
                return Err(BuiltinError::Build(msg));
            }
            Err(_) => return Err(BuiltinError::Thread("ended before building".into())),
        };
        Ok(Self {
            thread: Some(thread),
            done,
            controller,
            started,
            console_log: cfg.console_log.clone(),
            uds: cfg.vsock_uds.clone(),
        })
    }

    /// When the guest started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The hybrid vsock socket.
    pub fn uds(&self) -> &Path {
        &self.uds
    }

    /// Pauses every vCPU.
    pub fn pause(&self) -> Result<(), BuiltinError> {
        self.controller.pause().map_err(BuiltinError::Run)
    }

    /// Resumes every vCPU.
    pub fn resume(&self) -> Result<(), BuiltinError> {
        self.controller.resume().map_err(BuiltinError::Run)
    }

    /// Waits up to `timeout` for the guest to end by itself; the run's report.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<RunReport, BuiltinError> {
        match self.done.recv_timeout(timeout) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => self.join(),
            Err(RecvTimeoutError::Timeout) => Err(BuiltinError::Timeout(timeout)),
        }
    }

    /// Ends the guest now; the run's report.
    pub fn stop(&mut self) -> Result<RunReport, BuiltinError> {
        if self.thread.is_none() {
            return Err(BuiltinError::Thread("already stopped".into()));
        }
        // An error here means the VMM already ended; join says how.
        let _ = self.controller.stop();
        self.join()
    }

    fn join(&mut self) -> Result<RunReport, BuiltinError> {
        let t = self
            .thread
            .take()
            .ok_or_else(|| BuiltinError::Thread("already stopped".into()))?;
        match t.join() {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(msg)) => Err(BuiltinError::Run(msg)),
            Err(_) => Err(BuiltinError::Thread("panicked".into())),
        }
    }

    /// The last lines of the serial console.
    pub fn console_tail(&self) -> String {
        crate::qemu::file_tail(&self.console_log)
    }

    /// The serial console log.
    pub fn console_log(&self) -> &Path {
        &self.console_log
    }
}

impl Drop for BuiltinVm {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(variant: KernelVariant) -> BuiltinVmConfig {
        BuiltinVmConfig {
            kernel: "/k".into(),
            initramfs: "/i".into(),
            variant,
            vcpus: 1,
            memory_mib: 256,
            console_log: "/tmp/c".into(),
            cmdline_extra: vec!["moat.share=moatfs".into()],
            vsock_uds: "/tmp/v.sock".into(),
            fs: None,
        }
    }

    #[test]
    fn moat_vmm_arguments() {
        let mut c = cfg(KernelVariant::Default);
        c.fs = Some(("/run/fs.sock".into(), "moatshare".into()));
        let a: Vec<String> = c
            .args()
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        let after = |k: &str| {
            let i = a
                .iter()
                .position(|x| x == k)
                .unwrap_or_else(|| panic!("{k} in {a:?}"));
            a[i + 1].clone()
        };
        assert_eq!(after("--kernel"), "/k");
        assert_eq!(after("--vsock"), "3,/tmp/v.sock");
        assert_eq!(after("--fs"), "/run/fs.sock,moatshare");
        assert_eq!(after("--console"), "/tmp/c");
        assert!(after("--cmdline").ends_with(" moat.share=moatfs"));
        assert_eq!(after("--mem"), "256");
    }

    #[test]
    fn command_line_is_the_qemu_one_plus_the_variant() {
        let c = cfg(KernelVariant::Default).cmdline();
        assert!(c.starts_with(BASE_CMDLINE), "{c}");
        assert!(c.ends_with(" moat.share=moatfs"), "{c}");
        assert!(!c.contains("nopv"));
        let p = cfg(KernelVariant::Pvm).cmdline();
        assert!(p.contains(" nopv noxsave clearcpuid="), "{p}");
    }

    #[test]
    fn a_missing_kernel_is_a_build_error_not_a_panic() {
        let dir = std::env::temp_dir().join(format!("moat-builtin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut c = cfg(KernelVariant::Default);
        c.console_log = dir.join("console.log");
        c.vsock_uds = dir.join("v.sock");
        c.kernel = dir.join("no-such-vmlinux");
        let r = BuiltinVm::spawn(&c);
        std::fs::remove_dir_all(&dir).unwrap();
        match r {
            Err(BuiltinError::Build(msg)) => {
                // Without /dev/kvm the build stops earlier, at KVM; either way it says why.
                assert!(msg.contains("vmlinux") || msg.contains("kvm"), "{msg}");
            }
            other => panic!("{other:?}"),
        }
    }
}
