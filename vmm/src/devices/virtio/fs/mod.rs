//! virtio-fs as a vhost-user frontend: the device model is here (config space with the tag,
//! feature negotiation, the transport), the queues are served by a vhost-user backend
//! (virtiofsd) that maps guest memory from the guest memory memfd.
//!
//! # Data flow
//!
//! - Setup (at [`VirtioFs::new`]): connect to the daemon's socket, `SET_OWNER`, read its
//!   virtio and protocol features.
//! - [`VirtioDevice::activate`] (on a vCPU thread) only keeps what it is given and signals
//!   the setup eventfd; the event loop then does the vhost-user setup (so that the vCPU
//!   threads' seccomp filters need no socket calls): `SET_FEATURES` (what the driver acked, plus
//!   `VHOST_USER_F_PROTOCOL_FEATURES`), `SET_MEM_TABLE` (the memfd regions), then per queue
//!   `SET_VRING_NUM/ADDR/BASE` (ring addresses translated to this process's addresses, as the
//!   protocol wants), `SET_VRING_CALL` (an eventfd this device watches), `SET_VRING_KICK` (the
//!   transport's queue eventfd, which KVM signals on `QueueNotify` through an ioeventfd, so
//!   kicks go from the guest to the daemon without this process), `SET_VRING_ENABLE`.
//! - The daemon signals a call eventfd → the event loop → the transport's interrupt (status
//!   bit + irqfd): virtio-mmio needs the status bit set, so calls cannot go to KVM directly.
//! - [`VirtioDevice::reset`]: `GET_VRING_BASE` on each queue, which stops it in the daemon.
//!
//! The queue eventfds belong to the daemon, so this device tells the event loop not to watch
//! them ([`VirtioDevice::handles_queue_events`]).

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;

use vhost::vhost_user::message::{
    VhostUserHeaderFlag, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::QueueT;
use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::{
    device_type, read_config_bytes, ActivateContext, ActivateError, DeviceFd, Interrupt, IrqKind,
    VirtioDevice, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};

/// The tag field's size in the config space.
pub const TAG_LEN: usize = 36;
/// Queue size (hiprio and request queues).
pub const QUEUE_SIZE: u16 = 1024;
/// The hiprio queue plus one request queue.
pub const NUM_QUEUES: usize = 2;

/// One virtio-fs device.
#[derive(Debug, Clone)]
pub struct FsConfig {
    /// virtiofsd's vhost-user socket.
    pub socket: PathBuf,
    /// The tag the guest mounts (`mount -t virtiofs <tag> /mnt`).
    pub tag: String,
}

/// Setting up the device failed.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The tag is empty or longer than 36 bytes.
    #[error("virtio-fs tag {0:?} must be 1 to 36 bytes")]
    BadTag(String),
    /// The vhost-user handshake failed.
    #[error("vhost-user {step} with {socket}")]
    VhostUser {
        /// The step.
        step: &'static str,
        /// The socket.
        socket: PathBuf,
        /// The error.
        #[source]
        source: vhost::Error,
    },
    /// A call eventfd.
    #[error("creating an eventfd")]
    EventFd(#[source] std::io::Error),
}

/// The device.
pub struct VirtioFs {
    frontend: Frontend,
    socket: PathBuf,
    config: Vec<u8>,
    daemon_features: u64,
    calls: Vec<EventFd>,
    setup_evt: EventFd,
    pending: Option<ActivateContext>,
    interrupt: Option<Arc<dyn Interrupt>>,
    started: usize,
}

impl std::fmt::Debug for VirtioFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioFs")
            .field("socket", &self.socket)
            .field(
                "daemon_features",
                &format_args!("{:#x}", self.daemon_features),
            )
            .field("started", &self.started)
            .finish()
    }
}

/// The token of the setup eventfd (the call eventfds use their queue index).
const SETUP_TOKEN: u32 = 0x100;

const PROTOCOL_FEATURES_BIT: u64 = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();

impl VirtioFs {
    /// Connects to the daemon and reads what it offers.
    pub fn new(cfg: &FsConfig) -> Result<Self, FsError> {
        if cfg.tag.is_empty() || cfg.tag.len() > TAG_LEN {
            return Err(FsError::BadTag(cfg.tag.clone()));
        }
        let err = |step| {
            let socket = cfg.socket.clone();
            move |source| FsError::VhostUser {
                step,
                socket,
                source,
            }
        };
        let mut frontend =
            Frontend::connect(&cfg.socket, NUM_QUEUES as u64).map_err(err("connect"))?;
        frontend.set_owner().map_err(err("SET_OWNER"))?;
        let daemon_features = frontend.get_features().map_err(err("GET_FEATURES"))?;
        if daemon_features & PROTOCOL_FEATURES_BIT != 0 {
            let offered = frontend
                .get_protocol_features()
                .map_err(err("GET_PROTOCOL_FEATURES"))?;
            // Only what this frontend drives; REPLY_ACK makes each request acknowledged.
            let want = offered & VhostUserProtocolFeatures::REPLY_ACK;
            frontend
                .set_protocol_features(want)
                .map_err(err("SET_PROTOCOL_FEATURES"))?;
            if want.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                // Every later request waits for the daemon's answer, so that a failed
                // SET_MEM_TABLE or vring setup is an error here, not a silent hang.
                frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            }
        }
        let mut config = vec![0u8; TAG_LEN + 4];
        config[..cfg.tag.len()].copy_from_slice(cfg.tag.as_bytes());
        config[TAG_LEN..].copy_from_slice(&1u32.to_le_bytes()); // num_request_queues
        let calls = (0..NUM_QUEUES)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC))
            .collect::<Result<Vec<_>, _>>()
            .map_err(FsError::EventFd)?;
        let setup_evt =
            EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(FsError::EventFd)?;
        Ok(Self {
            frontend,
            socket: cfg.socket.clone(),
            config,
            daemon_features,
            calls,
            setup_evt,
            pending: None,
            interrupt: None,
            started: 0,
        })
    }

    fn setup(&mut self, ctx: &ActivateContext) -> Result<(), vhost::Error> {
        let driver = ctx.acked_features & self.features();
        self.frontend
            .set_features(driver | (self.daemon_features & PROTOCOL_FEATURES_BIT))?;
        let regions = ctx
            .mem
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<Result<Vec<_>, _>>()?;
        self.frontend.set_mem_table(&regions)?;
        for (i, q) in ctx.queues.iter().enumerate() {
            let host = |gpa: u64| -> Result<u64, vhost::Error> {
                ctx.mem
                    .get_host_address(GuestAddress(gpa))
                    .map(|p| p as u64)
                    .map_err(|_| vhost::Error::InvalidGuestMemory)
            };
            let data = VringConfigData {
                queue_max_size: q.max_size(),
                queue_size: q.size(),
                flags: 0,
                desc_table_addr: host(q.desc_table())?,
                used_ring_addr: host(q.used_ring())?,
                avail_ring_addr: host(q.avail_ring())?,
                log_addr: None,
            };
            self.frontend.set_vring_num(i, q.size())?;
            self.frontend.set_vring_addr(i, &data)?;
            self.frontend.set_vring_base(i, 0)?;
            self.frontend.set_vring_call(i, &self.calls[i])?;
            self.frontend.set_vring_kick(i, &ctx.queue_evts[i])?;
            if self.daemon_features & PROTOCOL_FEATURES_BIT != 0 {
                self.frontend.set_vring_enable(i, true)?;
            }
            self.started = i + 1;
        }
        Ok(())
    }
}

impl VirtioDevice for VirtioFs {
    fn device_type(&self) -> u32 {
        device_type::FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; NUM_QUEUES]
    }

    fn features(&self) -> u64 {
        self.daemon_features & (VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        if ctx.queues.len() != NUM_QUEUES || ctx.queue_evts.len() != NUM_QUEUES {
            return Err(ActivateError::BadQueue(ctx.queues.len()));
        }
        for (i, q) in ctx.queues.iter().enumerate() {
            if !q.is_valid(&ctx.mem) {
                return Err(ActivateError::BadQueue(i));
            }
        }
        self.pending = Some(ctx);
        self.setup_evt
            .write(1)
            .map_err(|e| ActivateError::Backend(format!("signalling setup: {e}")))?;
        Ok(())
    }

    fn reset(&mut self) {
        self.pending = None;
        for i in 0..self.started {
            if let Err(e) = self.frontend.get_vring_base(i) {
                tracing::warn!("virtio-fs: stopping queue {i}: {e}");
            }
        }
        self.started = 0;
        self.interrupt = None;
    }

    fn queue_event(&mut self, _index: usize) {}

    fn handles_queue_events(&self) -> bool {
        false
    }

    fn backend_ready(&self) -> bool {
        self.interrupt.is_some() && self.started == NUM_QUEUES
    }

    fn device_fds(&self) -> Vec<DeviceFd> {
        let mut fds: Vec<DeviceFd> = self
            .calls
            .iter()
            .enumerate()
            .map(|(i, e)| DeviceFd {
                fd: e.as_raw_fd(),
                token: i as u32,
                events: EventSet::IN,
            })
            .collect();
        fds.push(DeviceFd {
            fd: self.setup_evt.as_raw_fd(),
            token: SETUP_TOKEN,
            events: EventSet::IN,
        });
        fds
    }

    fn device_event(&mut self, token: u32, _events: EventSet) {
        if token == SETUP_TOKEN {
            let _ = self.setup_evt.read();
            if let Some(ctx) = self.pending.take() {
                match self.setup(&ctx) {
                    Ok(()) => self.interrupt = Some(ctx.interrupt),
                    Err(e) => tracing::error!(
                        "virtio-fs: vhost-user setup with {}: {e}",
                        self.socket.display()
                    ),
                }
            }
            return;
        }
        if let Some(call) = self.calls.get(token as usize) {
            let _ = call.read();
        }
        if let Some(irq) = &self.interrupt {
            if let Err(e) = irq.trigger(IrqKind::Vring) {
                tracing::warn!("virtio-fs interrupt: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests;
