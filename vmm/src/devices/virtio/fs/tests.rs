//! The virtio-fs frontend against a real vhost-user backend (the `vhost-user-backend`
//! crate's daemon, with a stand-in for virtiofsd that answers every kick with a used-buffer
//! notification), with no VM: handshake, deferred setup, kicks going straight to the
//! daemon, calls coming back as guest interrupts, reset.

use std::os::fd::RawFd;
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::Listener;
use vhost_user_backend::{VhostUserBackendMut, VhostUserDaemon, VringRwLock, VringT};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::devices::virtio::test_utils::CountingInterrupt;
use crate::devices::virtio::vsock::test_utils::TestQueue;
use crate::vstate::memory::{create_guest_memory, Backing};

/// A stand-in for virtiofsd.
struct FakeDaemon {
    memory_updates: Arc<AtomicU32>,
    kicks: Arc<AtomicU32>,
    exit: (EventConsumer, EventNotifier),
}

impl FakeDaemon {
    fn new() -> Self {
        Self {
            memory_updates: Arc::default(),
            kicks: Arc::default(),
            exit: new_event_consumer_and_notifier(EventFlag::NONBLOCK).unwrap(),
        }
    }
}

impl VhostUserBackendMut for FakeDaemon {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }
    fn max_queue_size(&self) -> usize {
        QUEUE_SIZE as usize
    }
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_EVENT_IDX
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }
    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK
    }
    fn set_event_idx(&mut self, _enabled: bool) {}
    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        Some((self.exit.0.try_clone().ok()?, self.exit.1.try_clone().ok()?))
    }
    fn update_memory(&mut self, _mem: GuestMemoryAtomic<GuestMemoryMmap>) -> std::io::Result<()> {
        self.memory_updates.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn handle_event(
        &mut self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> std::io::Result<()> {
        self.kicks.fetch_add(1, Ordering::SeqCst);
        if let Some(v) = vrings.get(device_event as usize) {
            v.signal_used_queue()?;
        }
        Ok(())
    }
}

fn readable(fd: RawFd, timeout: Duration) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut p, 1, timeout.as_millis() as i32) == 1 }
}

#[test]
fn frontend_sets_up_the_daemon_and_relays_its_calls() {
    let dir = std::env::temp_dir().join(format!("moat-vufs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("fs.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let fake = FakeDaemon::new();
    let (updates, kicks) = (fake.memory_updates.clone(), fake.kicks.clone());
    let daemon = std::thread::spawn(move || {
        let mut d = VhostUserDaemon::new(
            "fake-virtiofsd".into(),
            Arc::new(RwLock::new(fake)),
            GuestMemoryAtomic::new(GuestMemoryMmap::new()),
        )
        .unwrap();
        d.start(&mut Listener::from(listener)).unwrap();
        let _ = d.wait();
        for h in d.get_epoll_handlers() {
            h.send_exit_event();
        }
    });

    let mut dev = VirtioFs::new(&FsConfig {
        socket: socket.clone(),
        tag: "moatfs".into(),
    })
    .unwrap();
    assert_eq!(dev.device_type(), device_type::FS);
    assert_eq!(
        dev.features(),
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX,
        "the vhost-user bit is not offered to the guest"
    );
    let mut tag = [0u8; 40];
    dev.read_config(0, &mut tag);
    assert_eq!(&tag[..7], b"moatfs\0");
    assert_eq!(u32::from_le_bytes(tag[36..40].try_into().unwrap()), 1);

    let ram = create_guest_memory(32 << 20, Backing::Shared).unwrap();
    let hiprio = TestQueue::create(&ram.mem, 0, 16 << 20, 1 << 20);
    let requests = TestQueue::create(&ram.mem, 0x10_0000, 18 << 20, 1 << 20);
    let kick_evts: Vec<EventFd> = (0..NUM_QUEUES)
        .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
        .collect();
    let kick = kick_evts[1].try_clone().unwrap();
    let irq = Arc::new(CountingInterrupt::default());
    dev.activate(ActivateContext {
        mem: ram.mem.clone(),
        interrupt: irq.clone(),
        queues: vec![hiprio.queue(), requests.queue()],
        acked_features: VIRTIO_F_VERSION_1,
        queue_evts: Arc::new(kick_evts),
    })
    .unwrap();
    // Activation only took ownership: the setup waits for the event loop.
    assert!(!dev.backend_ready());
    assert!(!dev.handles_queue_events());
    let fds = dev.device_fds();
    let setup = fds.iter().find(|f| f.token == SETUP_TOKEN).unwrap();
    assert!(readable(setup.fd, Duration::from_secs(1)));
    dev.device_event(SETUP_TOKEN, EventSet::IN);
    assert!(dev.backend_ready());
    assert_eq!(
        updates.load(Ordering::SeqCst),
        1,
        "SET_MEM_TABLE reached the daemon"
    );

    // The guest kicks the request queue (KVM would write this eventfd): the daemon serves it
    // and calls back; the call becomes a guest interrupt.
    kick.write(1).unwrap();
    let call = fds.iter().find(|f| f.token == 1).unwrap();
    assert!(
        readable(call.fd, Duration::from_secs(5)),
        "the daemon called"
    );
    assert!(kicks.load(Ordering::SeqCst) >= 1);
    dev.device_event(1, EventSet::IN);
    assert_eq!(irq.vrings(), 1);
    assert!(
        !readable(call.fd, Duration::ZERO),
        "the call eventfd was drained"
    );

    dev.reset();
    assert!(!dev.backend_ready());
    drop(dev);
    daemon.join().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_tags_and_missing_daemons_are_errors() {
    let cfg = |tag: &str, socket: &str| FsConfig {
        socket: socket.into(),
        tag: tag.into(),
    };
    assert!(matches!(
        VirtioFs::new(&cfg("", "/nonexistent")),
        Err(FsError::BadTag(_))
    ));
    assert!(matches!(
        VirtioFs::new(&cfg(&"x".repeat(37), "/nonexistent")),
        Err(FsError::BadTag(_))
    ));
    assert!(matches!(
        VirtioFs::new(&cfg("moatfs", "/nonexistent/fs.sock")),
        Err(FsError::VhostUser {
            step: "connect",
            ..
        })
    ));
}
