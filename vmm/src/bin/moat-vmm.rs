//! `moat-vmm`: boots a guest with moat's built-in VMM.
//!
//! ```text
//! moat-vmm --version
//! moat-vmm --kernel vmlinux [--initrd init.cpio] [--cmdline "console=ttyS0 ..."]
//!          [--vcpus 1] [--mem 256] [--console PATH|-|none]
//!          [--blk PATH[,ro]]... [--net TAP[,mac=02:00:00:00:00:01]]...
//!          [--vsock CID,UDS] [--fs SOCKET,TAG]... [--seccomp enforce|log|off]
//!          [--linux-boot] [--no-huge-pages]
//! ```
//!
//! The devices are appended to the command line as `virtio_mmio.device=` entries. At start
//! it prints `cmdline:`, `entry:` and one `guest_ram: <start>-<end>` line per guest memory
//! mapping (host addresses, for memory accounting) on stderr; when the guest ends (or on
//! SIGTERM/SIGINT) a report, one `key: value` line each (`exit`, `cpu_ms_first_kvm_run`,
//! `device`). Exit status: 0 for a guest-initiated end or a stop, 1 for a setup error, 2 for
//! a vCPU error or a guest crash.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicI32, Ordering};

use moat_vmm::boot::BootSource;
use moat_vmm::builder::{self, type_name, NetConfig, VmConfig, VsockConfig};
use moat_vmm::devices::legacy::SerialOutput;
use moat_vmm::devices::virtio::block::BlockConfig;
use moat_vmm::devices::virtio::fs::FsConfig;
use moat_vmm::seccomp::SeccompMode;
use moat_vmm::vstate::vcpu::ExitReason;

static STOP_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(_: libc::c_int) {
    let fd = STOP_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        let one = 1u64.to_ne_bytes();
        // SAFETY: write(2) is async-signal-safe; `one` is a valid 8-byte buffer.
        unsafe { libc::write(fd, one.as_ptr().cast(), one.len()) };
    }
}

fn usage() -> &'static str {
    "usage: moat-vmm --kernel VMLINUX [--initrd CPIO] [--cmdline STR] [--vcpus N] [--mem MIB] \
     [--console PATH|-|none] [--blk PATH[,ro]]... [--net TAP[,mac=MAC]]... [--vsock CID,UDS] \
     [--fs SOCKET,TAG]... [--seccomp enforce|log|off] [--linux-boot] [--no-huge-pages]"
}

fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<_> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(format!("bad MAC {s}"));
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(parts) {
        *m = u8::from_str_radix(p, 16).map_err(|_| format!("bad MAC {s}"))?;
    }
    Ok(mac)
}

fn parse(args: &[String]) -> Result<VmConfig, String> {
    let mut kernel = None;
    let mut cfg = VmConfig {
        vcpus: 1,
        mem_mib: 256,
        boot: BootSource {
            kernel: PathBuf::new(),
            initramfs: None,
            cmdline: "console=ttyS0 panic=-1 reboot=t".into(),
            force_linux_boot: false,
        },
        console: SerialOutput::File(
            std::fs::File::options()
                .write(true)
                .open("/dev/stdout")
                .map_err(|e| format!("opening stdout: {e}"))?,
        ),
        blocks: Vec::new(),
        nets: Vec::new(),
        vsock: None,
        fs: Vec::new(),
        seccomp: SeccompMode::Enforce,
        huge_pages: true,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--kernel" => kernel = Some(PathBuf::from(val()?)),
            "--initrd" => cfg.boot.initramfs = Some(PathBuf::from(val()?)),
            "--cmdline" => cfg.boot.cmdline = val()?,
            "--vcpus" => cfg.vcpus = val()?.parse().map_err(|_| "bad --vcpus")?,
            "--mem" => cfg.mem_mib = val()?.parse().map_err(|_| "bad --mem")?,
            "--linux-boot" => cfg.boot.force_linux_boot = true,
            "--no-huge-pages" => cfg.huge_pages = false,
            "--console" => {
                cfg.console = match val()?.as_str() {
                    "-" => cfg.console,
                    "none" => SerialOutput::Sink,
                    p => SerialOutput::File(
                        std::fs::File::create(p).map_err(|e| format!("console {p}: {e}"))?,
                    ),
                }
            }
            "--blk" => {
                let v = val()?;
                let (path, ro) = match v.strip_suffix(",ro") {
                    Some(p) => (p.to_string(), true),
                    None => (v, false),
                };
                cfg.blocks.push(BlockConfig {
                    id: format!("moat-blk{}", cfg.blocks.len()),
                    path: path.into(),
                    read_only: ro,
                });
            }
            "--net" => {
                let v = val()?;
                let (tap, mac) = match v.split_once(",mac=") {
                    Some((t, m)) => (t.to_string(), parse_mac(m)?),
                    None => (v, [0x02, 0, 0, 0, 0, 1 + cfg.nets.len() as u8]),
                };
                cfg.nets.push(NetConfig { tap, mac });
            }
            "--vsock" => {
                let v = val()?;
                let (cid, uds) = v.split_once(',').ok_or("--vsock CID,UDS")?;
                cfg.vsock = Some(VsockConfig {
                    cid: cid.parse().map_err(|_| "bad vsock CID")?,
                    uds: uds.into(),
                });
            }
            "--fs" => {
                let v = val()?;
                let (socket, tag) = v.rsplit_once(',').ok_or("--fs SOCKET,TAG")?;
                cfg.fs.push(FsConfig {
                    socket: socket.into(),
                    tag: tag.into(),
                });
            }
            "--seccomp" => {
                cfg.seccomp = match val()?.as_str() {
                    "enforce" => SeccompMode::Enforce,
                    "log" => SeccompMode::Log,
                    "off" => SeccompMode::Off,
                    other => return Err(format!("bad --seccomp {other}")),
                }
            }
            "-h" | "--help" => return Err(usage().into()),
            other => return Err(format!("unknown argument {other}\n{}", usage())),
        }
    }
    cfg.boot.kernel = kernel.ok_or_else(|| format!("--kernel is required\n{}", usage()))?;
    Ok(cfg)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--version") {
        println!("moat-vmm {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let cfg = match parse(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("moat-vmm: {e}");
            return ExitCode::from(1);
        }
    };
    let vmm = match builder::build(cfg) {
        Ok(v) => v,
        Err(e) => {
            let mut msg = format!("moat-vmm: {e}");
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            eprintln!("{msg}");
            return ExitCode::from(1);
        }
    };
    STOP_FD.store(vmm.stop_fd(), Ordering::Relaxed);
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: the handler only makes an async-signal-safe write.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
    eprintln!("cmdline: {}", vmm.cmdline());
    eprintln!(
        "entry: {:?} at {:#x}",
        vmm.entry().protocol,
        vmm.entry().entry.0
    );
    for (start, end) in vmm.guest_ram_ranges() {
        eprintln!("guest_ram: {start:#x}-{end:#x}");
    }
    let report = match vmm.run() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("moat-vmm: {e}");
            return ExitCode::from(1);
        }
    };
    eprintln!("exit: {}", report.exit);
    eprintln!("cpu_ms_build_start: {:.3}", report.cpu_ms_at_build);
    if let Some(ms) = report.cpu_ms_at_first_run {
        eprintln!("cpu_ms_first_kvm_run: {ms:.3}");
    }
    for d in &report.devices {
        eprintln!(
            "device: {} {} {:#x} irq {} status {:#x} active {}",
            d.name,
            type_name(d.kind),
            d.base,
            d.irq,
            d.status,
            d.active
        );
    }
    match report.exit {
        ExitReason::Crash | ExitReason::VcpuError { .. } => ExitCode::from(2),
        _ => ExitCode::SUCCESS,
    }
}
