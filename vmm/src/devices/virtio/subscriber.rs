//! The event-loop side of a virtio-mmio device: its queue eventfds (kicked by KVM through
//! ioeventfds, or by the transport) and the device's own fds, dispatched to the device under
//! the transport's lock.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::mmio::MmioTransport;
use super::DeviceFd;
use crate::devices::bus::lock;

/// Tokens at or above this are the device's own fds (token minus this).
const DEVICE_TOKEN_BASE: u32 = 1 << 16;

/// One device's subscriber.
#[derive(Debug)]
pub struct VirtioSubscriber {
    transport: Arc<Mutex<MmioTransport>>,
    queue_fds: Vec<RawFd>,
    device_fds: Vec<DeviceFd>,
}

impl VirtioSubscriber {
    /// A subscriber for `transport`'s queues and device fds.
    pub fn new(transport: Arc<Mutex<MmioTransport>>) -> Self {
        let (queue_fds, device_fds) = {
            let t = lock(&transport);
            let queue_fds = if t.device().handles_queue_events() {
                t.queue_evts().iter().map(AsRawFd::as_raw_fd).collect()
            } else {
                Vec::new()
            };
            (queue_fds, t.device().device_fds())
        };
        Self {
            transport,
            queue_fds,
            device_fds,
        }
    }
}

impl MutEventSubscriber for VirtioSubscriber {
    fn init(&mut self, ops: &mut EventOps<'_>) {
        for (i, fd) in self.queue_fds.iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data_raw(*fd, i as u32, EventSet::IN)) {
                tracing::error!("watching queue {i}'s eventfd: {e:?}");
            }
        }
        for d in &self.device_fds {
            if let Err(e) = ops.add(Events::with_data_raw(
                d.fd,
                DEVICE_TOKEN_BASE + d.token,
                d.events,
            )) {
                tracing::error!("watching device fd {}: {e:?}", d.fd);
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps<'_>) {
        let token = events.data();
        let mut t = lock(&self.transport);
        if token < DEVICE_TOKEN_BASE {
            let index = token as usize;
            if let Some(evt) = t.queue_evts().get(index) {
                // Non-blocking; clears the count so that the fd stops being readable.
                let _ = evt.read();
            }
            t.queue_event(index);
        } else {
            t.device_mut()
                .device_event(token - DEVICE_TOKEN_BASE, events.event_set());
        }
    }
}
