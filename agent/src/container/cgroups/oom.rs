//! OOM events: an inotify watch on a cgroup's `memory.events`, which the kernel marks
//! modified whenever one of its counters changes, and a comparison of `oom_kill` with the
//! last value seen.
//!
//! [`OomWatcher::wait`] blocks until the count grows or an [`OomStopper`] stops it (an
//! eventfd in the same `poll`). On cgroupfs removing the cgroup does not reliably end the
//! watch, so stop the watcher when the container goes away.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use super::{Cgroup, CgroupError, Result};

/// Stops an [`OomWatcher`]: its current and every later [`OomWatcher::wait`] returns
/// `None`. Cloneable and usable from any thread.
#[derive(Debug, Clone)]
pub struct OomStopper(Arc<EventFd>);

impl OomStopper {
    /// Stops the watcher.
    pub fn stop(&self) {
        // Never read, so it stays readable; the counter cannot overflow with a few writes.
        let _ = self.0.write(1);
    }
}

/// Watches one cgroup for OOM kills.
#[derive(Debug)]
pub struct OomWatcher {
    cgroup: Cgroup,
    events: PathBuf,
    inotify: Inotify,
    stop: Arc<EventFd>,
    /// The `oom_kill` count already reported.
    seen: u64,
    /// The watch is gone (file deleted): no more events will come.
    ended: bool,
}

impl OomWatcher {
    /// Starts watching `cgroup`'s `memory.events`; kills that happened before are not
    /// reported. Fails if the file does not exist (no memory controller).
    pub fn new(cgroup: &Cgroup) -> Result<OomWatcher> {
        let events = cgroup.file("memory.events");
        let watch_err = |error| CgroupError::Watch {
            path: events.clone(),
            error,
        };
        let inotify =
            Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK).map_err(watch_err)?;
        // Watch first, then read the baseline, so that no kill falls in between.
        inotify
            .add_watch(&events, AddWatchFlags::IN_MODIFY)
            .map_err(watch_err)?;
        let stop = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map_err(watch_err)?;
        Ok(OomWatcher {
            seen: cgroup.oom_kills(),
            cgroup: cgroup.clone(),
            events,
            inotify,
            stop: Arc::new(stop),
            ended: false,
        })
    }

    /// A handle that stops this watcher.
    pub fn stopper(&self) -> OomStopper {
        OomStopper(Arc::clone(&self.stop))
    }

    /// The `oom_kill` count reported so far (including the kills before the watch).
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// Blocks until the OOM killer has killed more processes in the cgroup, and returns how
    /// many more; `None` once stopped or once `memory.events` is gone.
    pub fn wait(&mut self) -> Result<Option<u64>> {
        loop {
            let now = self.cgroup.oom_kills();
            if now > self.seen {
                let new = now - self.seen;
                self.seen = now;
                return Ok(Some(new));
            }
            // A smaller count (an unreadable or half-written file) is not taken as the new
            // baseline, or the kills before it would be reported again.
            if self.ended {
                return Ok(None);
            }
            let mut fds = [
                PollFd::new(self.inotify.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.stop.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(error) => return Err(self.watch_err(error)),
            }
            if fds[1].any().unwrap_or(false) {
                return Ok(None);
            }
            match self.inotify.read_events() {
                Ok(events) => {
                    if events
                        .iter()
                        .any(|e| e.mask.contains(AddWatchFlags::IN_IGNORED))
                    {
                        // One last look at the count before giving up.
                        self.ended = true;
                    }
                }
                Err(Errno::EAGAIN | Errno::EINTR) => {}
                Err(error) => return Err(self.watch_err(error)),
            }
        }
    }

    fn watch_err(&self, error: nix::Error) -> CgroupError {
        CgroupError::Watch {
            path: self.events.clone(),
            error,
        }
    }

    /// Runs the watcher on a thread of its own that calls `on_oom` with each increment,
    /// until stopped. An error ends the thread after it is logged.
    pub fn spawn(
        mut self,
        mut on_oom: impl FnMut(u64) + Send + 'static,
    ) -> std::io::Result<OomWatchThread> {
        let stopper = self.stopper();
        let thread = std::thread::Builder::new()
            .name("oom-watch".to_string())
            .spawn(move || loop {
                match self.wait() {
                    Ok(Some(n)) => on_oom(n),
                    Ok(None) => return,
                    Err(e) => {
                        crate::warn!("cgroups: {e}");
                        return;
                    }
                }
            })?;
        Ok(OomWatchThread { stopper, thread })
    }
}

/// An [`OomWatcher`] running on its own thread.
#[derive(Debug)]
pub struct OomWatchThread {
    stopper: OomStopper,
    thread: JoinHandle<()>,
}

impl OomWatchThread {
    /// A handle that stops the thread without waiting for it.
    pub fn stopper(&self) -> OomStopper {
        self.stopper.clone()
    }

    /// Stops the thread and waits for it to end.
    pub fn stop(self) {
        self.stopper.stop();
        let _ = self.thread.join();
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::FakeCgroupFs;
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    fn events(oom_kill: u64) -> String {
        format!("low 0\nhigh 0\nmax 9\noom 1\noom_kill {oom_kill}\noom_group_kill 0\n")
    }

    #[test]
    fn reports_new_kills_only() {
        let fs = FakeCgroupFs::new();
        let cg = fs.cgroup("moat/c1");
        fs.write("moat/c1", "memory.events", &events(2));
        let mut w = OomWatcher::new(&cg).unwrap();
        assert_eq!(w.seen(), 2);
        let path = cg.file("memory.events");
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            // Another counter changing is not an OOM kill.
            std::fs::write(&path, "low 1\nhigh 0\nmax 9\noom 1\noom_kill 2\n").unwrap();
            std::thread::sleep(Duration::from_millis(20));
            std::fs::write(&path, events(5)).unwrap();
        });
        assert_eq!(w.wait().unwrap(), Some(3));
        writer.join().unwrap();
        assert_eq!(w.seen(), 5);
    }

    #[test]
    fn stop_ends_a_blocked_wait() {
        let fs = FakeCgroupFs::new();
        let cg = fs.cgroup("moat/c1");
        let mut w = OomWatcher::new(&cg).unwrap();
        let stopper = w.stopper();
        let stop = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            stopper.stop();
        });
        assert_eq!(w.wait().unwrap(), None);
        stop.join().unwrap();
        // Stopped for good.
        assert_eq!(w.wait().unwrap(), None);
    }

    #[test]
    fn deleted_file_ends_the_watch() {
        let fs = FakeCgroupFs::new();
        let cg = fs.cgroup("moat/c1");
        let mut w = OomWatcher::new(&cg).unwrap();
        fs.remove("moat/c1", "memory.events");
        assert_eq!(w.wait().unwrap(), None);
    }

    #[test]
    fn thread_calls_back_and_stops() {
        let fs = FakeCgroupFs::new();
        let cg = fs.cgroup("moat/c1");
        let (tx, rx) = mpsc::channel();
        let thread = OomWatcher::new(&cg)
            .unwrap()
            .spawn(move |n| tx.send(n).unwrap())
            .unwrap();
        fs.write("moat/c1", "memory.events", &events(1));
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), 1);
        thread.stop();
    }

    #[test]
    fn no_memory_controller_is_an_error() {
        let fs = FakeCgroupFs::new();
        let cg = Cgroup::create(fs.root(), "moat/bare").unwrap();
        let err = OomWatcher::new(&cg).unwrap_err();
        assert!(err.to_string().starts_with("watching "), "{err}");
        assert!(
            err.to_string()
                .ends_with("memory.events for OOM kills: No such file or directory"),
            "{err}"
        );
    }
}
