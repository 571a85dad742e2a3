//! The vsock device served over vhost-user, for QEMU's `vhost-user-vsock-device`.
//!
//! # Data flow
//!
//! QEMU connects to the vhost-user socket, shares guest memory (a memfd) and the RX/TX
//! vrings with their kick and call eventfds. `vhost-user-backend`'s worker thread waits on
//! the kicks and on the muxer's epoll fd (registered as [`BACKEND_EVENT`]) and calls
//! [`VhostUserBackendMut::handle_event`], which runs the very same [`VsockDevice`] the
//! built-in VMM will run inline: TX kick → `process_tx` then `process_rx`; RX kick (the guest
//! added buffers) → `process_rx`; backend event → `process_events` then `process_rx`.
//!
//! QEMU 7.2's `vhost-user-vsock-device` has three virtqueues but gives the backend only RX
//! and TX (it keeps the event queue, and sends transport resets itself on migration), so the
//! backend announces three queues and one worker thread serves the first two. The guest CID
//! lives in the config space, read through `VHOST_USER_GET_CONFIG` (protocol feature
//! `CONFIG`). One QEMU connection is served; when QEMU goes away, [`VhostUserVsockServer::run`]
//! returns, like virtiofsd.

use std::io;
use std::os::fd::RawFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Error as VhostUserError, Listener};
use vhost_user_backend::{VhostUserBackendMut, VhostUserDaemon, VringRwLock, VringT};
use virtio_bindings::bindings::virtio_config::{VIRTIO_F_NOTIFY_ON_EMPTY, VIRTIO_F_VERSION_1};
use virtio_bindings::bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use super::backend::VsockBackend;
use super::device::{DeviceError, VsockDevice};
use super::metrics::{MetricsSnapshot, VsockMetrics};
use super::muxer::{MuxerConfig, MuxerError, VsockMuxer};
use super::{MAX_QUEUE_SIZE, NUM_QUEUES, RXQ, TXQ};

/// The epoll token of the muxer's fd in the daemon's worker (tokens up to `NUM_QUEUES` are
/// the queues' and the exit event's).
pub const BACKEND_EVENT: u16 = NUM_QUEUES as u16 + 1;

/// Serving the device failed.
#[derive(Debug, thiserror::Error)]
pub enum VhostUserVsockError {
    /// The hybrid socket could not be set up.
    #[error(transparent)]
    Muxer(#[from] MuxerError),
    /// The vhost-user socket could not be bound.
    #[error("binding the vhost-user socket {path}")]
    Bind {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// An eventfd or epoll registration failed.
    #[error("setting up the vhost-user worker ({what})")]
    Setup {
        /// Which step.
        what: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The vhost-user daemon failed (its error type is not `std::error::Error`).
    #[error("vhost-user daemon: {0}")]
    Daemon(String),
}

/// The vhost-user face of the vsock device.
#[derive(Debug)]
pub struct VhostUserVsock {
    device: VsockDevice<VsockMuxer>,
    mem: Option<GuestMemoryAtomic<GuestMemoryMmap>>,
    exit: (EventConsumer, EventNotifier),
}

impl VhostUserVsock {
    /// Wraps a device.
    pub fn new(device: VsockDevice<VsockMuxer>) -> io::Result<Self> {
        let exit = new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC)?;
        Ok(Self {
            device,
            mem: None,
            exit,
        })
    }

    /// The device.
    pub fn device(&self) -> &VsockDevice<VsockMuxer> {
        &self.device
    }

    fn run_queues(&mut self, vrings: &[VringRwLock], tx_first: bool) -> io::Result<()> {
        let Some(atomic) = &self.mem else {
            return Ok(());
        };
        let mem = atomic.memory();
        let (Some(rx), Some(tx)) = (vrings.get(RXQ), vrings.get(TXQ)) else {
            return Ok(());
        };
        let err = |e: DeviceError| io::Error::other(e);
        if tx_first {
            run_one(tx, |q| self.device.process_tx(q, &*mem)).map_err(err)?;
        }
        run_one(rx, |q| self.device.process_rx(q, &*mem)).map_err(err)?;
        // Resets queued by TX may have stalled it; RX just made room.
        for _ in 0..4 {
            if !self.device.tx_stalled() {
                break;
            }
            run_one(tx, |q| self.device.process_tx(q, &*mem)).map_err(err)?;
            run_one(rx, |q| self.device.process_rx(q, &*mem)).map_err(err)?;
        }
        Ok(())
    }
}

/// Runs one queue pass if the vring is usable, and signals the guest if it should be.
fn run_one(
    vring: &VringRwLock,
    pass: impl FnOnce(&mut virtio_queue::Queue) -> Result<super::QueueOutcome, DeviceError>,
) -> Result<(), DeviceError> {
    let mut state = vring.get_mut();
    if !state.is_enabled() || !state.get_queue().ready() {
        return Ok(());
    }
    let outcome = pass(state.get_queue_mut())?;
    if outcome.notify {
        if let Err(e) = state.signal_used_queue() {
            tracing::warn!("signalling the guest: {e}");
        }
    }
    Ok(())
}

impl VhostUserBackendMut for VhostUserVsock {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE as usize
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_F_NOTIFY_ON_EMPTY)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::CONFIG
    }

    fn reset_device(&mut self) {
        self.device.reset();
    }

    fn set_event_idx(&mut self, _enabled: bool) {
        // The framework sets it on the queues themselves; the device's queue passes handle
        // both modes.
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let cfg = self.device.guest_cid().to_le_bytes();
        let (offset, size) = (offset as usize, size as usize);
        match offset.checked_add(size) {
            Some(end) if end <= cfg.len() => cfg[offset..end].to_vec(),
            _ => Vec::new(),
        }
    }

    fn update_memory(&mut self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        self.mem = Some(mem);
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        vec![(1 << RXQ) | (1 << TXQ)]
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        Some((self.exit.0.try_clone().ok()?, self.exit.1.try_clone().ok()?))
    }

    fn handle_event(
        &mut self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        match device_event {
            e if e as usize == RXQ => self.run_queues(vrings, false),
            e if e as usize == TXQ => self.run_queues(vrings, true),
            BACKEND_EVENT => {
                // Always drained, memory or not: the epoll fd is level-triggered.
                self.device.backend_mut().process_events();
                self.run_queues(vrings, false)
            }
            other => {
                tracing::debug!("ignoring vhost-user event {other}");
                Ok(())
            }
        }
    }
}

/// A bound vhost-user socket and hybrid socket, ready to serve one QEMU.
#[derive(Debug)]
pub struct VhostUserVsockServer {
    socket_path: Option<PathBuf>,
    listener: Option<UnixListener>,
    backend: Arc<RwLock<VhostUserVsock>>,
    backend_fd: RawFd,
    metrics: Arc<VsockMetrics>,
}

impl VhostUserVsockServer {
    /// Binds `socket` (vhost-user, replacing a stale file) and `uds` (hybrid vsock).
    pub fn bind(socket: &Path, uds: &Path, guest_cid: u64) -> Result<Self, VhostUserVsockError> {
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket).map_err(|source| VhostUserVsockError::Bind {
            path: socket.to_path_buf(),
            source,
        })?;
        let mut server = Self::from_listener(listener, uds, guest_cid)?;
        server.socket_path = Some(socket.to_path_buf());
        Ok(server)
    }

    /// Uses an already bound vhost-user listener (not removed afterwards).
    pub fn from_listener(
        listener: UnixListener,
        uds: &Path,
        guest_cid: u64,
    ) -> Result<Self, VhostUserVsockError> {
        let metrics = Arc::new(VsockMetrics::default());
        let muxer = VsockMuxer::new(MuxerConfig::new(guest_cid, uds), metrics.clone())?;
        let backend_fd = muxer.epoll_fd();
        let device = VsockDevice::new(guest_cid, muxer, metrics.clone());
        let backend = VhostUserVsock::new(device).map_err(|source| VhostUserVsockError::Setup {
            what: "exit eventfd",
            source,
        })?;
        Ok(Self {
            socket_path: None,
            listener: Some(listener),
            backend: Arc::new(RwLock::new(backend)),
            backend_fd,
            metrics,
        })
    }

    /// The live counters.
    pub fn metrics(&self) -> Arc<VsockMetrics> {
        self.metrics.clone()
    }

    /// Accepts one QEMU connection and serves it until QEMU disconnects.
    pub fn run(mut self) -> Result<MetricsSnapshot, VhostUserVsockError> {
        let daemon_err = |e: vhost_user_backend::Error| VhostUserVsockError::Daemon(e.to_string());
        let mut daemon = VhostUserDaemon::new(
            "moat-vsock".to_string(),
            self.backend.clone(),
            GuestMemoryAtomic::new(GuestMemoryMmap::new()),
        )
        .map_err(daemon_err)?;
        let handlers = daemon.get_epoll_handlers();
        let Some(worker) = handlers.first() else {
            return Err(VhostUserVsockError::Daemon("no worker thread".into()));
        };
        worker
            .register_listener(self.backend_fd, EventSet::IN, u64::from(BACKEND_EVENT))
            .map_err(|source| VhostUserVsockError::Setup {
                what: "registering the muxer's epoll fd",
                source,
            })?;
        let Some(listener) = self.listener.take() else {
            return Err(VhostUserVsockError::Daemon("already served".into()));
        };
        let mut listener = Listener::from(listener);
        daemon.start(&mut listener).map_err(daemon_err)?;
        let result = daemon.wait();
        for h in daemon.get_epoll_handlers() {
            h.send_exit_event();
        }
        match result {
            Ok(())
            | Err(vhost_user_backend::Error::HandleRequest(
                VhostUserError::Disconnected | VhostUserError::PartialMessage,
            )) => Ok(self.metrics.snapshot()),
            Err(e) => Err(daemon_err(e)),
        }
    }
}

impl Drop for VhostUserVsockServer {
    fn drop(&mut self) {
        if let Some(p) = &self.socket_path {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(dir: &Path) -> VhostUserVsockServer {
        VhostUserVsockServer::bind(&dir.join("vu.sock"), &dir.join("v.sock"), 3).unwrap()
    }

    #[test]
    fn announces_what_qemu_needs() {
        let dir = std::env::temp_dir().join(format!("moat-vu-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let s = server(&dir);
        let b = s.backend.read().unwrap();
        assert_eq!(b.num_queues(), 3);
        assert_eq!(b.queues_per_thread(), vec![0b11]);
        assert!(
            b.max_queue_size() >= 1024,
            "QEMU 7.2 asks for 1024-entry queues"
        );
        let f = b.features();
        for bit in [VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX] {
            assert_ne!(f & (1 << bit), 0, "feature bit {bit}");
        }
        assert_ne!(f & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits(), 0);
        assert!(b
            .protocol_features()
            .contains(VhostUserProtocolFeatures::CONFIG));
        assert_eq!(b.get_config(0, 8), 3u64.to_le_bytes());
        assert_eq!(b.get_config(4, 4), [0, 0, 0, 0]);
        assert!(b.get_config(4, 8).is_empty());
        assert!(b.get_config(u32::MAX, 2).is_empty());
        assert!(b.exit_event(0).is_some());
        assert!(dir.join("v.sock").exists() && dir.join("vu.sock").exists());
        drop(b);
        drop(s);
        assert!(!dir.join("v.sock").exists() && !dir.join("vu.sock").exists());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn events_before_memory_drain_the_backend_without_touching_queues() {
        let dir = std::env::temp_dir().join(format!("moat-vu2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let s = server(&dir);
        // A host connection arrives before the guest set anything up.
        let mut c = std::os::unix::net::UnixStream::connect(dir.join("v.sock")).unwrap();
        std::io::Write::write_all(&mut c, b"CONNECT 1024\n").unwrap();
        let mut b = s.backend.write().unwrap();
        b.handle_event(BACKEND_EVENT, EventSet::IN, &[], 0).unwrap();
        b.handle_event(BACKEND_EVENT, EventSet::IN, &[], 0).unwrap();
        // The request waits for the guest's RX queue.
        assert!(b.device().backend().has_pending_rx());
        assert_eq!(b.device().backend().connection_count(), 1);
        drop(b);
        drop(s);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
