//! One sandbox guest, whichever VMM runs it: QEMU (a child process, with moat's vsock device
//! as its vhost-user backend) or the built-in VMM (`moat-vmm`, a child process too, the vsock
//! device inline). The sandbox process, the shim and `moat boot` drive a guest only through this,
//! so both backends boot the same kernel, initramfs and command line, serve the same hybrid
//! vsock socket and share the same virtiofsd.
//!
//! Which one runs is `config::Backend::choose`'s answer ([`Vmm`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use moat_protocol::CONTROL_PORT;

use crate::backend::KernelVariant;
use crate::boot::{self, BootError, VsockVm};
use crate::builtin::process::VmmProcess;
use crate::builtin::{BuiltinError, BuiltinVmConfig};
use crate::config::Vmm;
use crate::paths::GuestPaths;
use crate::qemu::ConsoleReader;
use crate::vsock::AgentClient;

/// What to boot.
#[derive(Debug, Clone)]
pub struct GuestConfig {
    /// Kernel, initramfs, QEMU.
    pub paths: GuestPaths,
    /// Which VMM, from `config::Backend::choose`.
    pub vmm: Vmm,
    /// vCPUs.
    pub vcpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Extra kernel parameters (the agent's `moat.*` settings).
    pub cmdline_extra: Vec<String>,
    /// A virtiofsd socket and the tag the guest mounts.
    pub fs: Option<(PathBuf, String)>,
}

/// The VM a sandbox (the CLI's sandbox process, or the shim's pod) gets.
#[derive(Debug, Clone)]
pub struct SandboxVm {
    /// Kernel, initramfs, QEMU, moat-vmm.
    pub paths: GuestPaths,
    /// Which VMM, from `config::Backend::choose`.
    pub vmm: Vmm,
    /// vCPUs.
    pub vcpus: u32,
    /// Guest memory in MiB.
    pub memory_mib: u32,
}

impl SandboxVm {
    /// The guest: the agent mounts virtiofsd's share (`fs_socket`) at `/run/moat/share`
    /// under the tag `share_tag`.
    pub fn guest(&self, fs_socket: &Path, share_tag: &str) -> GuestConfig {
        GuestConfig {
            paths: self.paths.clone(),
            vmm: self.vmm,
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
            cmdline_extra: vec![format!("moat.share={share_tag}")],
            fs: Some((fs_socket.to_path_buf(), share_tag.to_string())),
        }
    }
}

/// A running guest.
#[derive(Debug)]
pub struct GuestVm(Inner);

#[derive(Debug)]
enum Inner {
    /// QEMU and the vhost-user vsock backend thread.
    Qemu(VsockVm),
    /// `moat-vmm`.
    Builtin {
        /// The process.
        vm: VmmProcess,
        /// Its console, read incrementally.
        console: ConsoleReader,
    },
}

impl GuestVm {
    /// Starts the guest in `workdir`: `vsock.sock` (the hybrid socket), `console.log`, and
    /// QEMU's vhost-user socket or `moat-vmm`'s stderr (`vmm.log`) there.
    pub fn start(cfg: &GuestConfig, workdir: &Path) -> Result<Self, BootError> {
        match cfg.vmm {
            Vmm::Qemu(accel) => Ok(Self(Inner::Qemu(VsockVm::start_accel(
                &cfg.paths,
                workdir,
                cfg.cmdline_extra.clone(),
                cfg.fs.clone(),
                cfg.vcpus,
                cfg.memory_mib,
                accel,
            )?))),
            Vmm::Builtin => {
                let vcpus = u8::try_from(cfg.vcpus).map_err(|_| {
                    BuiltinError::Build(format!(
                        "{} vCPUs: the built-in VMM runs at most 255",
                        cfg.vcpus
                    ))
                })?;
                let console_log = workdir.join("console.log");
                // Containers get the built-in VMM only on hardware KVM (backend.rs): the
                // default kernel. The pvm variant is for booting to init on PVM-only hosts.
                let variant = KernelVariant::for_host(crate::host::detect_kvm());
                let bcfg = BuiltinVmConfig {
                    kernel: variant.kernel_path(&cfg.paths.kernel),
                    initramfs: cfg.paths.initramfs.clone(),
                    variant,
                    vcpus,
                    memory_mib: cfg.memory_mib,
                    console_log: console_log.clone(),
                    cmdline_extra: cfg.cmdline_extra.clone(),
                    vsock_uds: workdir.join("vsock.sock"),
                    fs: cfg.fs.clone(),
                };
                let vm = VmmProcess::spawn(&cfg.paths.moat_vmm, &bcfg, &workdir.join("vmm.log"))?;
                Ok(Self(Inner::Builtin {
                    vm,
                    console: ConsoleReader::new(&console_log),
                }))
            }
        }
    }

    /// The hybrid vsock socket: `CONNECT <port>` reaches the guest.
    pub fn uds(&self) -> &Path {
        match &self.0 {
            Inner::Qemu(q) => &q.uds,
            Inner::Builtin { vm, .. } => vm.uds(),
        }
    }

    /// When the VMM was started.
    pub fn started(&self) -> Instant {
        match &self.0 {
            Inner::Qemu(q) => q.vm.started(),
            Inner::Builtin { vm, .. } => vm.started(),
        }
    }

    /// The pid of the VMM process (QEMU or `moat-vmm`).
    pub fn pid(&self) -> u32 {
        match &self.0 {
            Inner::Qemu(q) => q.vm.pid(),
            Inner::Builtin { vm, .. } => vm.pid(),
        }
    }

    /// The last lines of the serial console.
    pub fn console_tail(&self) -> String {
        match &self.0 {
            Inner::Qemu(q) => q.vm.console_tail(),
            Inner::Builtin { console, .. } => crate::qemu::file_tail(console.path()),
        }
    }

    /// Why `moat-vmm` ended, in words, once it has (after waiting up to `timeout`).
    fn builtin_ended(vm: &mut VmmProcess, timeout: Duration) -> Option<String> {
        let status = vm.wait_exit(timeout)?;
        Some(match vm.exit_reason() {
            Some(r) => format!("{r}; moat-vmm {status}"),
            None => format!("moat-vmm {status}: {}", vm.stderr_tail()),
        })
    }

    /// Connects to the agent, retrying while the guest boots; the client past `Hello` and
    /// the number of attempts.
    pub fn wait_for_agent(&mut self, timeout: Duration) -> Result<(AgentClient, u32), BootError> {
        match &mut self.0 {
            Inner::Qemu(q) => q.wait_for_agent(timeout),
            Inner::Builtin { vm, console } => {
                let (uds, started) = (vm.uds().to_path_buf(), vm.started());
                let log = console.path().to_path_buf();
                boot::wait_for_agent(&uds, started, timeout, || {
                    Self::builtin_ended(vm, Duration::ZERO).map(|exit| BootError::BuiltinEnded {
                        exit,
                        when: format!("before the agent answered on vsock port {CONTROL_PORT}"),
                        console_tail: crate::qemu::file_tail(&log),
                    })
                })
                .map_err(|e| e.with_console(|| crate::qemu::file_tail(&log)))
            }
        }
    }

    /// Waits until a console line contains `needle`; returns that line.
    pub fn wait_for_console(
        &mut self,
        needle: &str,
        timeout: Duration,
    ) -> Result<String, BootError> {
        match &mut self.0 {
            Inner::Qemu(q) => Ok(q.vm.wait_for_console(needle, timeout)?),
            Inner::Builtin { vm, console } => {
                let deadline = Instant::now() + timeout;
                loop {
                    if let Ok(Some(line)) = console.poll_for(needle) {
                        return Ok(line);
                    }
                    let wait = deadline
                        .saturating_duration_since(Instant::now())
                        .min(Duration::from_millis(5));
                    if let Some(exit) = Self::builtin_ended(vm, wait) {
                        if let Ok(Some(line)) = console.poll_for(needle) {
                            return Ok(line);
                        }
                        return Err(BootError::BuiltinEnded {
                            exit,
                            when: format!("before the console showed {needle:?}"),
                            console_tail: console.tail(),
                        });
                    }
                    if Instant::now() >= deadline {
                        return Err(BootError::Builtin(BuiltinError::Timeout(timeout)));
                    }
                }
            }
        }
    }

    /// Waits up to `timeout` for the guest to end by itself; whether it has.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        match &mut self.0 {
            Inner::Qemu(q) => q.vm.wait_exit(timeout).is_ok(),
            Inner::Builtin { vm, .. } => vm.wait_exit(timeout).is_some(),
        }
    }

    /// Ends the guest now.
    pub fn kill(&mut self) {
        match &mut self.0 {
            Inner::Qemu(q) => q.vm.kill(),
            Inner::Builtin { vm, .. } => vm.kill(),
        }
    }

    /// Asks the agent to power off and checks that the guest ends cleanly within `timeout`
    /// (QEMU exits 0 and its vsock backend stops; `moat-vmm` reports the guest's reset and
    /// exits 0); returns the VMM's run time.
    pub fn shutdown(
        &mut self,
        client: &mut AgentClient,
        timeout: Duration,
    ) -> Result<Duration, BootError> {
        match &mut self.0 {
            Inner::Qemu(q) => q.shutdown(client, timeout).map(|(t, _)| t),
            Inner::Builtin { vm, console } => {
                let log = console.path().to_path_buf();
                client.shutdown().map_err(|source| BootError::Agent {
                    step: "asking the agent to shut down",
                    source,
                    console_tail: crate::qemu::file_tail(&log),
                })?;
                let ended = Self::builtin_ended(vm, timeout);
                let to_exit = vm.started().elapsed();
                if !vm.ended_cleanly() {
                    return Err(BootError::BuiltinEnded {
                        exit: ended.unwrap_or_else(|| format!("still running after {timeout:?}")),
                        when: "after the agent was asked to power off".into(),
                        console_tail: crate::qemu::file_tail(&log),
                    });
                }
                Ok(to_exit)
            }
        }
    }
}
