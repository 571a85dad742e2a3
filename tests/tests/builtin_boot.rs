//! VM tier for the built-in VMM (`moat-vmm`): the real guest kernel booted under this host's
//! KVM, and (on hardware KVM) a container run through the agent; plus a benchmark against
//! QEMU.
//!
//! On a PVM-only host (HOST-KVM.md) the guest is the `pvm` kernel variant with the emulation
//! command line ([`moat::backend::KernelVariant`]); it boots to `Run /init as init process`
//! (about a minute of instruction emulation), and no further: user space cannot run there.
//!
//! What the tests need (scripts/test.sh builds it): `moat-vmm` (`cargo build --release -p
//! moat-vmm --target x86_64-unknown-linux-musl`, or `$MOAT_VMM_BIN`), the guest from
//! `scripts/build-guest.sh` (which also installs `vmlinux-pvm` on PVM hosts), virtiofsd, and
//! root for the tap device.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use moat::backend::KernelVariant;
use moat::boot::TempDir;
use moat::builtin::{BuiltinVm, BuiltinVmConfig};
use moat::host::{detect_kvm, KvmKind};
use moat::virtiofsd::Virtiofsd;
use moat_vmm::stats::MemorySplit;
use moat_vmm::vstate::vcpu::ExitReason;

/// What the kernel prints when it hands over to user space.
const RUN_INIT: &str = "Run /init as init process";
/// Generous for PVM emulation (about 70 s measured to `Run /init`), but bounded.
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

fn vmm_bin() -> PathBuf {
    let p = std::env::var_os("MOAT_VMM_BIN").map_or_else(
        || moat_tests::bundle::target_dir().join("x86_64-unknown-linux-musl/release/moat-vmm"),
        PathBuf::from,
    );
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build --release -p moat-vmm --target \
         x86_64-unknown-linux-musl` (or set MOAT_VMM_BIN); scripts/test.sh does",
        p.display()
    );
    p
}

/// The kernel for the built-in VMM on this host, and the command-line additions it needs.
fn kernel_for_host(kvm: KvmKind) -> (PathBuf, &'static [&'static str]) {
    let paths = moat_tests::guest_paths();
    let variant = KernelVariant::for_host(kvm);
    let var = match variant {
        KernelVariant::Pvm => "MOAT_KERNEL_PVM",
        KernelVariant::Default => "MOAT_KERNEL",
    };
    let k = std::env::var_os(var).map_or_else(|| variant.kernel_path(&paths.kernel), PathBuf::from);
    assert!(
        k.is_file(),
        "{} is missing: run scripts/build-guest.sh (it builds `guest-kernel/build.sh --variant \
         {}` on this host), or set {var}",
        k.display(),
        variant.build_arg()
    );
    (k, variant.cmdline())
}

fn cmdline(extra: &[&str]) -> String {
    let mut c = String::from("console=ttyS0 panic=-1 reboot=t");
    for e in extra {
        c.push(' ');
        c.push_str(e);
    }
    c
}

/// A running VMM process (moat-vmm or QEMU) with its console in a file.
struct VmProcess {
    child: Child,
    console: PathBuf,
    stderr: PathBuf,
    started: Instant,
}

impl VmProcess {
    fn spawn(mut cmd: Command, console: PathBuf, stderr: PathBuf) -> Self {
        let err = std::fs::File::create(&stderr).unwrap();
        let started = Instant::now();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
        Self {
            child,
            console,
            stderr,
            started,
        }
    }

    fn console(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.console) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn tail(&self) -> String {
        let c = self.console();
        let lines: Vec<&str> = c.lines().collect();
        let from = lines.len().saturating_sub(30);
        format!(
            "console tail:\n{}\nstderr:\n{}",
            lines[from..].join("\n"),
            self.stderr()
        )
    }

    /// Waits until the console holds `needle`; the time from spawn.
    fn wait_console(&mut self, needle: &str, timeout: Duration) -> Duration {
        loop {
            if self.console().contains(needle) {
                return self.started.elapsed();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the VM ended ({status}) before {needle:?}\n{}", self.tail());
            }
            assert!(
                self.started.elapsed() < timeout,
                "no {needle:?} within {timeout:?}\n{}",
                self.tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// moat-vmm's RSS split, guest memory being the ranges it printed (`guest_ram:`).
    fn vmm_memory(&self) -> MemorySplit {
        let ranges: Vec<(u64, u64)> = self
            .stderr()
            .lines()
            .filter_map(|l| l.strip_prefix("guest_ram: "))
            .filter_map(|r| {
                let (a, b) = r.split_once('-')?;
                let hex = |v: &str| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok();
                Some((hex(a)?, hex(b)?))
            })
            .collect();
        assert!(
            !ranges.is_empty(),
            "moat-vmm printed no guest_ram line\n{}",
            self.stderr()
        );
        MemorySplit::of_pid_ranges(self.child.id(), &ranges).expect("reading smaps")
    }

    /// SIGTERM, then up to 10 s for a clean exit, then SIGKILL; returns stderr.
    fn stop(&mut self) -> String {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return self.stderr();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stderr()
    }
}

impl Drop for VmProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One `key: value` line of moat-vmm's exit report.
fn report_value<'a>(stderr: &'a str, key: &str) -> Option<&'a str> {
    stderr
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(": "))
}

/// The `virtio_mmio.device=` entries moat-vmm put on the command line: (base, irq).
fn announced(stderr: &str) -> Vec<(String, String)> {
    let cmd = report_value(stderr, "cmdline").unwrap_or("");
    cmd.split_whitespace()
        .filter_map(|w| w.strip_prefix("virtio_mmio.device="))
        .filter_map(|d| {
            let (_, at) = d.split_once('@')?;
            let (base, irq) = at.split_once(':')?;
            Some((base.to_string(), irq.to_string()))
        })
        .collect()
}

fn kvm_or_fail() -> KvmKind {
    let kvm = detect_kvm();
    assert!(
        matches!(kvm, KvmKind::Hardware | KvmKind::PvmOnly),
        "the built-in VMM needs /dev/kvm backed by kvm_intel/kvm_amd or kvm_pvm; this host has: {}",
        kvm.describe()
    );
    kvm
}

#[test]
#[ignore = "VM tier: needs /dev/kvm, root, virtiofsd, moat-vmm and the built guest kernel; run by scripts/test.sh"]
fn builtin_vmm_boots_the_guest_kernel_to_init_and_every_device_is_probed() {
    let kvm = kvm_or_fail();
    let (kernel, extra) = kernel_for_host(kvm);
    let paths = moat_tests::guest_paths();
    let dir = TempDir::new("builtin-boot").unwrap();
    let disk = dir.0.join("disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let share = dir.0.join("share");
    std::fs::create_dir_all(&share).unwrap();
    let fs = Virtiofsd::start(&share, &dir.0.join("fs.sock"), &dir.0.join("virtiofsd.log"))
        .expect("virtiofsd starts");
    let tap = format!("moatb{}", std::process::id() % 100_000);
    let mut cmd = Command::new(vmm_bin());
    cmd.arg("--kernel")
        .arg(&kernel)
        .arg("--initrd")
        .arg(&paths.initramfs)
        .args(["--cmdline", &cmdline(extra)])
        .args(["--mem", "256"])
        .arg("--console")
        .arg(dir.0.join("console.log"))
        .arg("--vsock")
        .arg(format!("3,{}", dir.0.join("vsock.sock").display()))
        .arg("--blk")
        .arg(&disk)
        .args(["--net", &tap])
        .arg("--fs")
        .arg(format!("{},moatfs", fs.socket().display()));
    let mut vm = VmProcess::spawn(cmd, dir.0.join("console.log"), dir.0.join("vmm.err"));
    let to_init = vm.wait_console(RUN_INIT, BOOT_TIMEOUT);
    let mem = vm.vmm_memory();
    let console = vm.console();
    let stderr = vm.stop();

    let devices = announced(&stderr);
    assert_eq!(devices.len(), 4, "four devices announced\n{stderr}");
    for (i, (base, irq)) in devices.iter().enumerate() {
        let line = format!("virtio-mmio: Registering device virtio-mmio.{i} at {base}-");
        assert!(
            console.contains(&line) && console.contains(&format!(", IRQ {irq}.")),
            "the kernel did not register {base}:{irq}\n{console}"
        );
    }
    // Every driver took its device up to DRIVER_OK (activation), which the kernel does
    // during probe, before init.
    for kind in ["virtio-vsock", "virtio-blk", "virtio-net", "virtio-fs"] {
        let line = stderr
            .lines()
            .find(|l| l.starts_with("device: ") && l.contains(kind))
            .unwrap_or_else(|| panic!("no report for {kind}\n{stderr}"));
        assert!(
            line.ends_with("active true"),
            "{kind} not probed: {line}\n{console}"
        );
    }
    assert!(
        console.contains("virtio_blk virtio1: [vda] 16384 512-byte logical blocks"),
        "virtio_blk's probe line\n{console}"
    );
    let cpu_ms = report_value(&stderr, "cpu_ms_first_kvm_run").unwrap_or("?");
    println!(
        "built-in VMM on {}: `{RUN_INIT}` after {:.1} s; {cpu_ms} CPU-ms from exec to the first \
         KVM_RUN; RSS {} KiB = guest {} KiB + VMM {} KiB",
        kvm.describe(),
        to_init.as_secs_f64(),
        mem.rss_kib,
        mem.guest_kib,
        mem.overhead_kib()
    );
}

#[test]
#[ignore = "VM tier: needs /dev/kvm and the built guest kernel; run by scripts/test.sh"]
fn builtin_vmm_pauses_and_resumes_the_guest_in_process() {
    let kvm = kvm_or_fail();
    let (kernel, _) = kernel_for_host(kvm);
    let paths = moat_tests::guest_paths();
    let dir = TempDir::new("builtin-pause").unwrap();
    let console = dir.0.join("console.log");
    let mut vm = BuiltinVm::spawn(&BuiltinVmConfig {
        kernel,
        initramfs: paths.initramfs.clone(),
        variant: KernelVariant::for_host(kvm),
        vcpus: 1,
        memory_mib: 256,
        console_log: console.clone(),
        // Undo `quiet`: the test watches the console move.
        cmdline_extra: vec!["loglevel=7".into()],
        vsock_uds: dir.0.join("vsock.sock"),
        fs: None,
    })
    .unwrap();
    let size = || std::fs::metadata(&console).map_or(0, |m| m.len());
    let wait_growth = |from: u64, what: &str| {
        let t = Instant::now();
        while size() <= from {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "the console did not move {what}\n{}",
                std::fs::read_to_string(&console).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_growth(0, "after start");
    vm.pause().unwrap();
    let paused_at = size();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        size(),
        paused_at,
        "the guest wrote to its console while paused"
    );
    vm.pause().unwrap();
    vm.resume().unwrap();
    wait_growth(paused_at, "after resume");
    let report = vm.stop().unwrap();
    assert_eq!(report.exit, ExitReason::Stopped);
    assert!(report.cpu_ms_at_first_run.is_some());
}

#[test]
#[ignore = "needs hardware KVM (kvm_intel/kvm_amd): PVM-only KVM cannot run the guest's user space"]
fn hw_kvm_builtin_vmm_runs_a_container_through_the_agent() {
    let kvm = detect_kvm();
    assert_eq!(kvm, KvmKind::Hardware, "{}", kvm.describe());
    container::run_one();
}

/// The runtime's way of running the built-in VMM: `moat-vmm` as a child process
/// ([`moat::builtin::process::VmmProcess`]). It is ready once built (its vsock socket
/// listening), says why when it cannot start, and stops with its report.
#[test]
#[ignore = "VM tier: needs /dev/kvm and the built guest; run by scripts/test.sh"]
fn builtin_vmm_process_starts_reports_and_stops() {
    use moat::builtin::process::VmmProcess;
    let kvm = kvm_or_fail();
    let (kernel, _) = kernel_for_host(kvm);
    let paths = moat_tests::guest_paths();
    let dir = TempDir::new("builtin-process").unwrap();
    let cfg = BuiltinVmConfig {
        kernel: dir.0.join("no-such-vmlinux"),
        initramfs: paths.initramfs.clone(),
        variant: KernelVariant::for_host(kvm),
        vcpus: 1,
        memory_mib: 256,
        console_log: dir.0.join("console.log"),
        cmdline_extra: Vec::new(),
        vsock_uds: dir.0.join("vsock.sock"),
        fs: None,
    };
    let log = dir.0.join("vmm.log");
    let e = VmmProcess::spawn(&vmm_bin(), &cfg, &log).unwrap_err();
    assert!(e.to_string().contains("no-such-vmlinux"), "{e}");
    // A kernel moat-vmm cannot load: its own error comes back.
    let bogus = dir.0.join("bogus-vmlinux");
    std::fs::write(&bogus, b"not an ELF file").unwrap();
    let e = VmmProcess::spawn(
        &vmm_bin(),
        &BuiltinVmConfig {
            kernel: bogus,
            ..cfg.clone()
        },
        &log,
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("moat-vmm exited (exit status: 1): moat-vmm:"),
        "{e}"
    );
    let real = BuiltinVmConfig {
        kernel,
        ..cfg.clone()
    };
    let e = VmmProcess::spawn(&dir.0.join("no-moat-vmm"), &real, &log).unwrap_err();
    assert!(e.to_string().contains("MOAT_VMM"), "{e}");

    let t = Instant::now();
    let mut vm = VmmProcess::spawn(&vmm_bin(), &real, &log).unwrap();
    let ready = t.elapsed();
    assert!(vm.uds().exists());
    assert_eq!(
        vm.wait_exit(Duration::from_millis(200)),
        None,
        "{}",
        vm.stderr_tail()
    );
    assert!(!vm.ended_cleanly());
    vm.kill();
    assert_eq!(
        vm.exit_reason().as_deref(),
        Some("stopped by the host"),
        "{}",
        vm.stderr_tail()
    );
    assert!(
        !vm.ended_cleanly(),
        "a stop by the host is not the guest's own end"
    );
    println!("moat-vmm as a process: ready (built, vsock listening) {ready:?} after spawn");
}

/// The runtime's path to a sandbox guest on the built-in VMM (`GuestVm`, as the sandbox
/// process and the shim start it): moat-vmm with the sandbox's vsock socket and virtio-fs
/// share boots the guest, its devices are taken up by the guest's drivers, and it ends when
/// the guest powers off (hardware KVM) or when stopped (PVM: init cannot run).
#[test]
#[ignore = "VM tier: needs /dev/kvm, virtiofsd, moat-vmm and the built guest; run by scripts/test.sh"]
fn the_runtime_boots_a_sandbox_guest_on_moat_vmm() {
    use moat::guest::{GuestVm, SandboxVm};
    let kvm = kvm_or_fail();
    let dir = TempDir::new("builtin-guestvm").unwrap();
    let share = dir.0.join("share");
    std::fs::create_dir_all(&share).unwrap();
    let fs = Virtiofsd::start(&share, &dir.0.join("fs.sock"), &dir.0.join("virtiofsd.log"))
        .expect("virtiofsd starts");
    let mut paths = moat_tests::guest_paths();
    paths.moat_vmm = vmm_bin();
    let sandbox = SandboxVm {
        paths,
        vmm: moat::config::Vmm::Builtin,
        vcpus: 1,
        memory_mib: 256,
    };
    let mut guest = sandbox.guest(fs.socket(), "moatshare");
    // Undo `quiet` so that the kernel prints `Run /init` (PVM: init then dies at once).
    guest.cmdline_extra.push("loglevel=7".into());
    let mut vm = GuestVm::start(&guest, &dir.0).unwrap();
    let t = Instant::now();
    let reached = if kvm == KvmKind::Hardware {
        let (mut agent, _) = vm.wait_for_agent(Duration::from_secs(60)).unwrap();
        vm.shutdown(&mut agent, Duration::from_secs(30)).unwrap();
        "the agent answered and the guest powered off"
    } else {
        vm.wait_for_console(RUN_INIT, BOOT_TIMEOUT).unwrap();
        vm.kill();
        RUN_INIT
    };
    assert!(vm.wait_exit(Duration::ZERO));
    let report = std::fs::read_to_string(dir.0.join("vmm.log")).unwrap();
    let console = std::fs::read_to_string(dir.0.join("console.log")).unwrap();
    assert!(report.contains(" moat.share=moatshare"), "{report}");
    for kind in ["virtio-vsock", "virtio-fs"] {
        let line = report
            .lines()
            .find(|l| l.starts_with("device: ") && l.contains(kind))
            .unwrap_or_else(|| panic!("no report for {kind}\n{report}"));
        assert!(line.ends_with("active true"), "{kind}: {line}\n{console}");
    }
    println!(
        "GuestVm on moat-vmm ({}): {reached} after {:.1} s",
        kvm.describe(),
        t.elapsed().as_secs_f64()
    );
}

/// `moat boot`'s path with the backend `auto` picks on hardware KVM: the agent answers over
/// the built-in VMM's inline vsock device and the guest's power-off ends the VMM cleanly.
#[test]
#[ignore = "needs hardware KVM (kvm_intel/kvm_amd); on PVM-only hosts user space cannot run"]
fn hw_kvm_boot_once_with_the_automatic_backend_is_the_builtin_vmm() {
    let kvm = detect_kvm();
    assert_eq!(kvm, KvmKind::Hardware, "{}", kvm.describe());
    let vmm = moat_tests::vmm();
    assert_eq!(vmm, moat::config::Vmm::Builtin);
    let dir = TempDir::new("builtin-boot-once").unwrap();
    let r = moat::boot::boot_once(
        &moat_tests::guest_paths(),
        vmm,
        &dir.0,
        Duration::from_secs(30),
    )
    .unwrap();
    println!(
        "built-in VMM: agent ready after {:.3} s, guest ended after {:.3} s",
        r.to_ready.as_secs_f64(),
        r.to_exit.as_secs_f64()
    );
}

mod container {
    //! A container through the agent, in a guest of the built-in VMM run in this process,
    //! as the sandbox process runs it ([`moat::builtin::BuiltinVm`]).

    use std::io::Read;
    use std::os::unix::net::UnixStream;
    use std::time::{Duration, Instant};

    use moat::backend::KernelVariant;
    use moat::boot::TempDir;
    use moat::builtin::{BuiltinVm, BuiltinVmConfig};
    use moat::host::KvmKind;
    use moat::virtiofsd::Virtiofsd;
    use moat::vsock::{connect, AgentClient};
    use moat_protocol::{
        CreateContainer, ProcessRef, Request, Response, Spec, StdioRequest, CONTROL_PORT,
    };

    use super::kernel_for_host;

    const T: Duration = Duration::from_secs(60);

    pub fn run_one() {
        let (kernel, _) = kernel_for_host(KvmKind::Hardware);
        let paths = moat_tests::guest_paths();
        let dir = TempDir::new("builtin-ctr").unwrap();
        let share = dir.0.join("share");
        let root = share.join("c1/rootfs");
        for d in ["bin", "proc", "sys", "dev", "tmp", "etc"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static");
        for a in ["sh", "echo"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).unwrap();
        }
        let fs = Virtiofsd::start(&share, &dir.0.join("fs.sock"), &dir.0.join("virtiofsd.log"))
            .expect("virtiofsd starts");
        let uds = dir.0.join("vsock.sock");
        let mut vm = BuiltinVm::spawn(&BuiltinVmConfig {
            kernel,
            initramfs: paths.initramfs.clone(),
            variant: KernelVariant::Default,
            vcpus: 1,
            memory_mib: 256,
            console_log: dir.0.join("console.log"),
            cmdline_extra: vec!["moat.share=moatfs".into()],
            vsock_uds: uds.clone(),
            fs: Some((fs.socket().to_path_buf(), "moatfs".into())),
        })
        .unwrap();
        let mut agent = loop {
            match AgentClient::connect(&uds, CONTROL_PORT, Duration::from_secs(2)) {
                Ok(a) => break a,
                Err(e) => {
                    assert!(
                        vm.started().elapsed() < T,
                        "agent: {e}\n{}",
                        vm.console_tail()
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        };
        let ready = vm.started().elapsed();
        let mut spec = Spec::default();
        let mut p = spec.process().clone().unwrap();
        p.set_terminal(Some(false));
        p.set_args(Some(vec![
            "sh".into(),
            "-c".into(),
            "echo hello from builtin".into(),
        ]));
        spec.set_process(Some(p));
        let started = match agent.call(
            "test",
            Request::CreateContainer(CreateContainer {
                id: "c1".into(),
                spec: Box::new(spec),
                rootfs: "/run/moat/share/c1/rootfs".into(),
                stdio: StdioRequest {
                    stdin: false,
                    stdout: true,
                    stderr: false,
                },
            }),
        ) {
            Ok(Response::Started(s)) => s,
            other => panic!("create: {other:?}\n{}", vm.console_tail()),
        };
        let (mut out, _): (UnixStream, _) =
            connect(&uds, started.stdio.stdout.unwrap(), T).expect("stdout stream");
        let ok = agent.call("test", Request::StartContainer { id: "c1".into() });
        assert!(matches!(ok, Ok(Response::Ok)), "start: {ok:?}");
        let mut text = String::new();
        out.read_to_string(&mut text).unwrap();
        assert_eq!(text, "hello from builtin\n");
        let waited = agent.call(
            "test",
            Request::WaitProcess(ProcessRef {
                id: "c1".into(),
                exec_id: None,
            }),
        );
        assert!(
            matches!(waited, Ok(Response::Exited { status: 0 })),
            "{waited:?}"
        );
        // Pause and resume the whole VM; the agent still answers.
        vm.pause().unwrap();
        vm.resume().unwrap();
        let t = Instant::now();
        let state = agent.call("test", Request::State { id: "c1".into() });
        assert!(matches!(state, Ok(Response::State(_))), "{state:?}");
        println!(
            "built-in VMM: agent answering after {:.2} s; a request after resume in {:?}",
            ready.as_secs_f64(),
            t.elapsed()
        );
        let report = vm.stop().unwrap();
        assert!(report.devices.iter().all(|d| d.active), "{report:?}");
    }
}

/// Side by side, one boot each, same kernel, initramfs and command line, no virtio devices:
/// moat-vmm and `qemu-system-x86_64 -M microvm -enable-kvm`.
#[test]
#[ignore = "benchmark: needs /dev/kvm, QEMU, moat-vmm and the built guest; run with --ignored --nocapture"]
fn bench_builtin_vs_qemu_microvm() {
    let kvm = kvm_or_fail();
    let (kernel, extra) = kernel_for_host(kvm);
    let paths = moat_tests::guest_paths();
    let dir = TempDir::new("builtin-bench").unwrap();
    let line = cmdline(extra);

    let mut cmd = Command::new(vmm_bin());
    cmd.arg("--kernel")
        .arg(&kernel)
        .arg("--initrd")
        .arg(&paths.initramfs)
        .args(["--cmdline", &line, "--mem", "256", "--console"])
        .arg(dir.0.join("builtin.log"));
    let mut b = VmProcess::spawn(cmd, dir.0.join("builtin.log"), dir.0.join("builtin.err"));
    let b_init = b.wait_console(RUN_INIT, BOOT_TIMEOUT);
    let b_mem = b.vmm_memory();
    let b_err = b.stop();
    let b_cpu = report_value(&b_err, "cpu_ms_first_kvm_run")
        .and_then(|v| v.parse::<f64>().ok())
        .expect("moat-vmm reports its CPU time at the first KVM_RUN");

    let mut q = Command::new(&paths.qemu);
    q.args(["-M", "microvm,accel=kvm,acpi=off,memory-backend=mem"])
        // PVM rejects `-cpu host`'s MSRs; qemu64 is what HOST-KVM.md measured.
        .args([
            "-cpu",
            if kvm == KvmKind::Hardware {
                "host"
            } else {
                "qemu64"
            },
        ])
        .args(["-m", "256M", "-smp", "1"])
        .args(["-object", "memory-backend-memfd,id=mem,size=256M,share=on"])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        .arg("-serial")
        .arg(format!("file:{}", dir.0.join("qemu.log").display()))
        .arg("-kernel")
        .arg(&kernel)
        .arg("-initrd")
        .arg(&paths.initramfs)
        .args(["-append", &line]);
    let mut qv = VmProcess::spawn(q, dir.0.join("qemu.log"), dir.0.join("qemu.err"));
    let q_init = qv.wait_console(RUN_INIT, BOOT_TIMEOUT);
    let q_mem = MemorySplit::of_pid_tagged(qv.child.id(), "/memfd:mem").expect("QEMU's smaps");
    qv.stop();

    let starts = start_cpu_ms(&kernel, &paths.initramfs, &[]);
    let starts_4k = start_cpu_ms(&kernel, &paths.initramfs, &["--no-huge-pages"]);

    println!("\n{:<44} {:>12} {:>12}", "", "moat-vmm", "qemu microvm");
    println!(
        "{:<44} {:>12.1} {:>12.1}",
        "time to `Run /init`, s",
        b_init.as_secs_f64(),
        q_init.as_secs_f64()
    );
    println!(
        "{:<44} {:>12.2} {:>12}",
        "CPU-ms from exec to the first KVM_RUN", b_cpu, "-"
    );
    println!(
        "{:<44} {:>12} {:>12}",
        "  same, 20 starts, median / max",
        format!("{:.1} / {:.1}", starts.0, starts.1),
        "-"
    );
    println!(
        "{:<44} {:>12} {:>12}",
        "  same, 4 KiB pages (--no-huge-pages)",
        format!("{:.1} / {:.1}", starts_4k.0, starts_4k.1),
        "-"
    );
    println!(
        "{:<44} {:>12} {:>12}",
        "VMM RSS overhead at init (RSS - guest), KiB",
        b_mem.overhead_kib(),
        q_mem.overhead_kib()
    );
    println!(
        "{:<44} {:>12} {:>12}",
        "guest pages touched at init, KiB", b_mem.guest_kib, q_mem.guest_kib
    );
    println!(
        "ratio built-in/QEMU time to init: {:.2} (target <= 0.8; under PVM emulation both are \
         dominated by emulating the guest)",
        b_init.as_secs_f64() / q_init.as_secs_f64()
    );
}

/// CPU-ms from exec to the first KVM_RUN over 20 starts of moat-vmm (each stopped right
/// after): (median, max).
fn start_cpu_ms(
    kernel: &std::path::Path,
    initramfs: &std::path::Path,
    extra: &[&str],
) -> (f64, f64) {
    let mut v: Vec<f64> = (0..20)
        .map(|_| {
            let mut c = Command::new(vmm_bin());
            c.arg("--kernel")
                .arg(kernel)
                .arg("--initrd")
                .arg(initramfs)
                .args(["--console", "none"])
                .args(extra)
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            let child = c.spawn().expect("moat-vmm starts");
            std::thread::sleep(Duration::from_millis(300));
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let out = child.wait_with_output().expect("moat-vmm ends");
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            report_value(&err, "cpu_ms_first_kvm_run")
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no cpu_ms_first_kvm_run in\n{err}"))
        })
        .collect();
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[v.len() - 1])
}
