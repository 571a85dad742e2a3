//! The shim's view of one process (a container's init or an exec): its fifos and pumps, its
//! guest pid, and its exit, which waiters block on and which is reported once.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use moat_protocol::{Process, ProcessRef};

use super::io::{Pumps, Stdio};

/// The exit status reported when the guest went away under a process.
pub const GUEST_GONE_STATUS: u32 = 255;

/// How long an exit waits for the process's output to drain.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// One process.
#[derive(Debug)]
pub struct Proc {
    /// Container id.
    pub id: String,
    /// Exec id (`None` for the init).
    pub exec_id: Option<String>,
    /// containerd's fifos.
    pub stdio: Stdio,
    /// An exec's process, until it starts.
    pub spec: Mutex<Option<Process>>,
    guest_pid: AtomicU32,
    started: AtomicBool,
    announced: AtomicBool,
    exit: Mutex<Option<(u32, Timestamp)>>,
    exited: Condvar,
    pumps: Mutex<Option<Pumps>>,
}

/// Every flag of a process's state that `State` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Created, not started.
    Created,
    /// Started, not exited.
    Running,
    /// Exited.
    Stopped,
}

impl Proc {
    /// A process that is not running yet.
    pub fn new(id: &str, exec_id: Option<&str>, stdio: Stdio, spec: Option<Process>) -> Self {
        Self {
            id: id.into(),
            exec_id: exec_id.map(Into::into),
            stdio,
            spec: Mutex::new(spec),
            guest_pid: AtomicU32::new(0),
            started: AtomicBool::new(false),
            announced: AtomicBool::new(false),
            exit: Mutex::new(None),
            exited: Condvar::new(),
            pumps: Mutex::new(None),
        }
    }

    /// The agent's name for it.
    pub fn process_ref(&self) -> ProcessRef {
        ProcessRef {
            id: self.id.clone(),
            exec_id: self.exec_id.clone(),
        }
    }

    /// The id containerd uses in events: the exec id, or the container id for the init.
    pub fn event_id(&self) -> &str {
        self.exec_id.as_deref().unwrap_or(&self.id)
    }

    /// Its pid in the guest (0 before the agent created it).
    pub fn guest_pid(&self) -> u32 {
        self.guest_pid.load(Ordering::SeqCst)
    }

    /// Records the agent's answer: the guest pid and the running pumps.
    pub fn attach(&self, guest_pid: u32, pumps: Pumps) {
        self.guest_pid.store(guest_pid, Ordering::SeqCst);
        *self.pumps.lock().unwrap_or_else(|e| e.into_inner()) = Some(pumps);
    }

    /// Marks that a start is under way (an exit waits for it to be announced).
    pub fn set_started(&self) {
        self.started.store(true, Ordering::SeqCst);
    }

    /// Marks that the start was reported to containerd (or failed): an exit may follow.
    pub fn set_announced(&self) {
        self.announced.store(true, Ordering::SeqCst);
    }

    /// Whether `Start` reached it.
    pub fn is_started(&self) -> bool {
        self.started.load(Ordering::SeqCst)
    }

    /// Its phase.
    pub fn phase(&self) -> Phase {
        if self.exit_status().is_some() {
            Phase::Stopped
        } else if self.is_started() {
            Phase::Running
        } else {
            Phase::Created
        }
    }

    /// Its exit status and time, once exited.
    pub fn exit_status(&self) -> Option<(u32, Timestamp)> {
        self.exit.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Blocks until it exits.
    pub fn wait(&self) -> (u32, Timestamp) {
        let mut g = self.exit.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(e) = g.as_ref() {
                return e.clone();
            }
            g = self.exited.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Records the exit; false if it was already recorded (it is reported once).
    pub fn set_exit(&self, status: u32) -> bool {
        let mut g = self.exit.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_some() {
            return false;
        }
        *g = Some((status, super::convert::now()));
        self.exited.notify_all();
        true
    }

    /// After the guest reported the exit: lets a start in progress be announced first,
    /// delivers the last output (bounded), closes the fifos, records the status. True if this
    /// call recorded it (the caller then publishes `TaskExit`).
    pub fn exited(&self, status: u32) -> bool {
        if self.is_started() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !self.announced.load(Ordering::SeqCst) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        let pumps = self.pumps.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(p) = pumps {
            p.finish(DRAIN_TIMEOUT);
        }
        self.set_exit(status)
    }

    /// The guest is gone: ends the pumps at once and records [`GUEST_GONE_STATUS`].
    pub fn lost(&self) -> bool {
        let pumps = self.pumps.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(pumps);
        self.set_exit(GUEST_GONE_STATUS)
    }

    /// `CloseIO`: the process's stdin reaches end of file.
    pub fn close_stdin(&self) {
        if let Some(p) = self
            .pumps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            p.close_stdin();
        }
    }

    /// Drops the pumps and settles the exit (the process is deleted, or never started).
    pub fn release(&self) {
        drop(self.pumps.lock().unwrap_or_else(|e| e.into_inner()).take());
        if self.exit_status().is_none() {
            self.set_exit(GUEST_GONE_STATUS);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn an_exit_is_recorded_once_and_wakes_waiters() {
        let p = Arc::new(Proc::new("c", Some("e"), Stdio::default(), None));
        assert_eq!(p.phase(), Phase::Created);
        assert_eq!(p.event_id(), "e");
        p.set_started();
        assert_eq!(p.phase(), Phase::Running);
        let w = {
            let p = Arc::clone(&p);
            std::thread::spawn(move || p.wait().0)
        };
        p.set_announced();
        assert!(p.exited(3));
        assert!(!p.exited(4));
        assert!(!p.lost());
        assert_eq!(w.join().unwrap(), 3);
        assert_eq!(p.phase(), Phase::Stopped);
        let init = Proc::new("c", None, Stdio::default(), None);
        assert_eq!(init.event_id(), "c");
        assert!(init.lost());
        assert_eq!(init.exit_status().unwrap().0, GUEST_GONE_STATUS);
    }
}
