//! Putting a VM together: KVM, memory, the VM and its irqchip, the legacy devices, the
//! virtio-mmio devices (each with an IRQ, an irqfd, ioeventfds and a command-line entry),
//! the kernel, and the vCPUs (configured, their threads started `Paused`).
//!
//! Device placement: device `n` gets the 4 KiB window at `0xd000_0000 + n * 4 KiB` and IRQ
//! `5 + n`, announced as `virtio_mmio.device=4K@<base>:<irq>`; order: vsock, blk..., net...,
//! fs... (so `/dev/vda` is the first disk).

use std::path::PathBuf;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex, OnceLock};

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::arch::layout::{IRQ_BASE, IRQ_MAX, SERIAL_IRQ, VIRTIO_MMIO_SIZE, VIRTIO_MMIO_START};
use crate::arch::mptable::MAX_CPUS;
use crate::boot::{self, BootError, BootSource};
use crate::devices::bus::{BusError, SharedDevice};
use crate::devices::legacy::i8042::{I8042_LEN, I8042_PORT};
use crate::devices::legacy::serial::{COM1_LEN, COM1_PORT};
use crate::devices::legacy::{EventFdTrigger, SerialConsole, SerialOutput, I8042};
use crate::devices::virtio::block::{Block, BlockConfig, BlockError};
use crate::devices::virtio::fs::{FsConfig, FsError, VirtioFs};
use crate::devices::virtio::mmio::{reg, MmioTransport};
use crate::devices::virtio::net::{Net, Tap, TapError};
use crate::devices::virtio::vsock::inline::InlineVsock;
use crate::devices::virtio::vsock::{
    MuxerConfig, MuxerError, VsockDevice, VsockMetrics, VsockMuxer,
};
use crate::devices::virtio::{device_type, IrqLine, VirtioDevice};
use crate::seccomp::{self, SeccompError, SeccompMode};
use crate::stats::CpuTime;
use crate::vmm::{DeviceInfo, Vmm, VmmError};
use crate::vstate::kvm::{KvmContext, KvmError};
use crate::vstate::memory::{create_guest_memory, Backing, MemoryError};
use crate::vstate::vcpu::{install_kick_handler, Vcpu, VcpuError, VcpuIo};
use crate::vstate::vm::{Vm, VmError};

/// A virtio-net device on a tap.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// The tap's name (created if missing; needs CAP_NET_ADMIN).
    pub tap: String,
    /// The guest's MAC address.
    pub mac: [u8; 6],
}

/// The vsock device.
#[derive(Debug, Clone)]
pub struct VsockConfig {
    /// The guest's CID.
    pub cid: u64,
    /// The hybrid socket (`CONNECT <port>`); guest connections to port P go to `<uds>_P`.
    pub uds: PathBuf,
}

/// Everything a VM is made of.
#[derive(Debug)]
pub struct VmConfig {
    /// vCPUs (1 to 32).
    pub vcpus: u8,
    /// Guest RAM in MiB.
    pub mem_mib: u32,
    /// Kernel, initramfs, base command line (the devices are appended).
    pub boot: BootSource,
    /// Where the serial console goes.
    pub console: SerialOutput,
    /// Disks.
    pub blocks: Vec<BlockConfig>,
    /// NICs.
    pub nets: Vec<NetConfig>,
    /// vsock.
    pub vsock: Option<VsockConfig>,
    /// virtio-fs shares served by vhost-user daemons.
    pub fs: Vec<FsConfig>,
    /// System call filters.
    pub seccomp: SeccompMode,
    /// Back private guest memory with transparent huge pages (`MADV_HUGEPAGE`): loading the
    /// kernel takes a few 2 MiB faults instead of thousands of 4 KiB ones, at the risk of a
    /// compaction stall when host memory is fragmented.
    pub huge_pages: bool,
}

/// Building the VM failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Bad vCPU count.
    #[error("{0} vCPUs: 1 to {MAX_CPUS} are supported")]
    VcpuCount(u8),
    /// More devices than IRQs.
    #[error("{0} virtio devices: at most {1} fit the IRQ lines")]
    TooManyDevices(usize, u32),
    /// KVM.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// Memory.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The VM.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// Kernel loading.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// A vCPU.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// Bus layout.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// An eventfd.
    #[error("creating an eventfd")]
    EventFd(#[source] std::io::Error),
    /// A disk.
    #[error(transparent)]
    Block(#[from] BlockError),
    /// A tap.
    #[error(transparent)]
    Tap(#[from] TapError),
    /// The vsock backend.
    #[error(transparent)]
    Vsock(#[from] MuxerError),
    /// A virtio-fs daemon.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// Seccomp filters.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    /// The event loop.
    #[error(transparent)]
    Vmm(#[from] VmmError),
}

fn eventfd() -> Result<EventFd, BuildError> {
    EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(BuildError::EventFd)
}

/// A device with its short name.
type NamedDevice = (String, Box<dyn VirtioDevice>);

/// The virtio devices of `cfg`, in placement order, with a short name each.
fn make_devices(
    vsock: Option<&VsockConfig>,
    blocks: &[BlockConfig],
    nets: &[NetConfig],
    fs: &[FsConfig],
) -> Result<Vec<NamedDevice>, BuildError> {
    let mut devs: Vec<NamedDevice> = Vec::new();
    if let Some(v) = vsock {
        let metrics = Arc::new(VsockMetrics::default());
        let muxer = VsockMuxer::new(MuxerConfig::new(v.cid, &v.uds), metrics.clone())?;
        let dev = VsockDevice::new(v.cid, muxer, metrics);
        devs.push(("vsock".into(), Box::new(InlineVsock::new(dev))));
    }
    for (i, b) in blocks.iter().enumerate() {
        devs.push((format!("blk{i}"), Box::new(Block::new(b)?)));
    }
    for (i, n) in nets.iter().enumerate() {
        let tap = Tap::open(&n.tap)?;
        devs.push((format!("net{i}"), Box::new(Net::new(tap, n.mac))));
    }
    for (i, f) in fs.iter().enumerate() {
        devs.push((format!("fs{i}"), Box::new(VirtioFs::new(f)?)));
    }
    Ok(devs)
}

/// Builds the VM of `cfg`. The vCPU threads exist, paused, with their seccomp filters
/// installed; [`Vmm::run`] starts the guest.
pub fn build(cfg: VmConfig) -> Result<Vmm, BuildError> {
    let started = CpuTime::now();
    let VmConfig {
        vcpus: num_vcpus,
        mem_mib,
        boot: boot_src,
        console,
        blocks,
        nets,
        vsock,
        fs,
        seccomp: seccomp_mode,
        huge_pages,
    } = cfg;
    if num_vcpus == 0 || num_vcpus > MAX_CPUS {
        return Err(BuildError::VcpuCount(num_vcpus));
    }
    let filters = seccomp::filters(seccomp_mode)?;
    install_kick_handler()?;
    let kvm = KvmContext::new()?;
    // vhost-user daemons map guest memory: only then does it have to be a shared memfd.
    let backing = if fs.is_empty() {
        Backing::Private { huge_pages }
    } else {
        Backing::Shared
    };
    let ram = create_guest_memory(u64::from(mem_mib) << 20, backing)?;
    let vm = Vm::new(&kvm, &ram.mem)?;
    let mut io = VcpuIo::default();

    // Legacy devices.
    let serial_irq = eventfd()?;
    vm.register_irqfd(&serial_irq, SERIAL_IRQ)?;
    let serial = Arc::new(Mutex::new(SerialConsole::new(
        EventFdTrigger(serial_irq),
        console,
    )));
    io.pio.insert(serial.clone(), COM1_PORT, COM1_LEN)?;
    let reset_evt = eventfd()?;
    let i8042 = I8042::new(EventFdTrigger(
        reset_evt.try_clone().map_err(BuildError::EventFd)?,
    ));
    io.pio
        .insert(Arc::new(Mutex::new(i8042)), I8042_PORT, I8042_LEN)?;

    // virtio-mmio devices.
    let devs = make_devices(vsock.as_ref(), &blocks, &nets, &fs)?;
    let max_devices = IRQ_MAX - IRQ_BASE + 1;
    if devs.len() > max_devices as usize {
        return Err(BuildError::TooManyDevices(devs.len(), max_devices));
    }
    let mut cmdline = boot_src.cmdline.clone();
    let mut devices = Vec::new();
    for (n, (name, dev)) in devs.into_iter().enumerate() {
        let base = VIRTIO_MMIO_START + n as u64 * VIRTIO_MMIO_SIZE;
        let irq = IRQ_BASE + n as u32;
        devices.push(attach(&vm, &mut io, &ram.mem, name, dev, base, irq)?);
        cmdline.push_str(&format!(
            " virtio_mmio.device={}K@{base:#x}:{irq}",
            VIRTIO_MMIO_SIZE >> 10
        ));
    }

    // Kernel and vCPUs.
    let src = BootSource {
        cmdline,
        ..boot_src
    };
    let entry = boot::load(&ram.mem, &src, num_vcpus)?;
    let cpuid = kvm.supported_cpuid()?;
    let io = Arc::new(io);
    let exit_evt = eventfd()?;
    let (events_tx, events_rx) = std::sync::mpsc::channel();
    let first_run = Arc::new(OnceLock::new());
    let mut vcpus = Vec::with_capacity(num_vcpus as usize);
    for i in 0..num_vcpus {
        let vcpu = Vcpu::new(&vm, i)?;
        vcpu.configure(&cpuid, &ram.mem, entry, num_vcpus)?;
        vcpus.push(vcpu.spawn(
            io.clone(),
            filters.as_ref().map(|f| f.vcpu.clone()),
            events_tx.clone(),
            exit_evt.try_clone().map_err(BuildError::EventFd)?,
            first_run.clone(),
        )?);
    }
    Ok(Vmm::new(crate::vmm::VmmParts {
        ram,
        vm,
        vcpus,
        vcpu_events: events_rx,
        exit_evt,
        reset_evt,
        serial,
        devices,
        filters,
        started,
        first_run,
        cmdline: src.cmdline,
        entry,
    })?)
}

fn attach(
    vm: &Vm,
    io: &mut VcpuIo,
    mem: &GuestMemoryMmap,
    name: String,
    dev: Box<dyn VirtioDevice>,
    base: u64,
    irq: u32,
) -> Result<DeviceInfo, BuildError> {
    let kind = dev.device_type();
    let irq_evt = eventfd()?;
    vm.register_irqfd(&irq_evt, irq)?;
    let status = Arc::new(AtomicU32::new(0));
    let line = Arc::new(IrqLine::new(status.clone(), irq_evt));
    let mut t = MmioTransport::new(dev, mem.clone(), line, status).map_err(BuildError::EventFd)?;
    let mut in_kernel = true;
    for (q, evt) in t.queue_evts().iter().enumerate() {
        in_kernel &= vm.register_ioeventfd(evt, base + reg::QUEUE_NOTIFY, Some(q as u32))?;
    }
    t.set_notify_on_exit(!in_kernel);
    let transport = Arc::new(Mutex::new(t));
    let shared: SharedDevice = transport.clone();
    io.mmio.insert(shared, base, VIRTIO_MMIO_SIZE)?;
    Ok(DeviceInfo {
        name,
        kind,
        base,
        irq,
        transport,
    })
}

/// A readable name for a device type.
pub fn type_name(kind: u32) -> &'static str {
    match kind {
        device_type::NET => "virtio-net",
        device_type::BLOCK => "virtio-blk",
        device_type::VSOCK => "virtio-vsock",
        device_type::FS => "virtio-fs",
        _ => "virtio",
    }
}
