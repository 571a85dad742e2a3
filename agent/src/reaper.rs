//! Zombie reaping. As PID 1 the agent inherits every orphan in the guest and must wait for
//! each; it also records the exit status of the processes it cares about (containers, later)
//! so that the one reaper does not steal a status another thread waits for.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// How a process ended, as a shell reports it: the exit code, or 128 + the signal number.
pub fn exit_code(status: WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, sig, _) => Some(128 + sig as i32),
        _ => None,
    }
}

/// Exit statuses of watched processes, filled in by the reaper thread.
#[derive(Debug, Default)]
pub struct Reaper {
    state: Mutex<ReaperState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct ReaperState {
    /// Pids someone will ask about; their status is kept until taken.
    watched: HashMap<i32, Option<i32>>,
    /// Statuses of pids nobody watched yet (a process may die before its creator registers
    /// interest); bounded to [`MAX_UNCLAIMED`], oldest dropped first.
    unclaimed: std::collections::VecDeque<(i32, i32)>,
    reaped_total: u64,
}

/// How many unclaimed exit statuses are kept.
pub const MAX_UNCLAIMED: usize = 1024;

impl Reaper {
    /// Blocks SIGCHLD in the calling thread (call this in `main` before any other thread
    /// exists, so every thread inherits the mask) and starts the reaper thread.
    pub fn start() -> std::io::Result<Arc<Self>> {
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGCHLD);
        mask.thread_block().map_err(std::io::Error::from)?;
        let reaper = Arc::new(Self::default());
        let r = Arc::clone(&reaper);
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || r.run(mask))?;
        Ok(reaper)
    }

    /// Registers interest in `pid`'s exit status. Call before the process can exit.
    pub fn watch(&self, pid: i32) {
        let mut st = self.lock();
        let early = st.unclaimed.iter().position(|(p, _)| *p == pid);
        let status = early
            .and_then(|i| st.unclaimed.remove(i))
            .map(|(_, code)| code);
        st.watched.insert(pid, status);
    }

    /// The exit code of a watched `pid` if it has exited, without waiting.
    pub fn try_wait(&self, pid: i32) -> Option<i32> {
        let mut st = self.lock();
        let code = (*st.watched.get(&pid)?)?;
        st.watched.remove(&pid);
        Some(code)
    }

    /// Waits for a watched `pid` to exit and returns its exit code (128+n for signal n).
    pub fn wait(&self, pid: i32) -> Option<i32> {
        let mut st = self.lock();
        loop {
            match st.watched.get(&pid) {
                None => return None,
                Some(Some(code)) => {
                    let code = *code;
                    st.watched.remove(&pid);
                    return Some(code);
                }
                Some(None) => {
                    st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
                }
            }
        }
    }

    /// How many processes have been reaped since boot.
    pub fn reaped_total(&self) -> u64 {
        self.lock().reaped_total
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReaperState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run(&self, mask: SigSet) {
        loop {
            // Reap everything that has exited, then sleep until the next SIGCHLD.
            loop {
                match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) | Err(_) => break,
                    Ok(status) => self.record(status),
                }
            }
            let _ = mask.wait();
        }
    }

    fn record(&self, status: WaitStatus) {
        let (Some(pid), Some(code)) = (status.pid(), exit_code(status)) else {
            return;
        };
        let mut st = self.lock();
        st.reaped_total += 1;
        if let Some(slot) = st.watched.get_mut(&pid.as_raw()) {
            *slot = Some(code);
            self.changed.notify_all();
        } else {
            if st.unclaimed.len() == MAX_UNCLAIMED {
                st.unclaimed.pop_front();
            }
            st.unclaimed.push_back((pid.as_raw(), code));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        let p = Pid::from_raw(10);
        assert_eq!(exit_code(WaitStatus::Exited(p, 3)), Some(3));
        assert_eq!(
            exit_code(WaitStatus::Signaled(p, Signal::SIGKILL, false)),
            Some(137)
        );
        assert_eq!(
            exit_code(WaitStatus::Signaled(p, Signal::SIGTERM, true)),
            Some(143)
        );
        assert_eq!(exit_code(WaitStatus::StillAlive), None);
    }

    #[test]
    fn records_watched_status_and_ignores_others() {
        let r = Reaper::default();
        r.watch(42);
        r.record(WaitStatus::Exited(Pid::from_raw(7), 1));
        r.record(WaitStatus::Signaled(
            Pid::from_raw(42),
            Signal::SIGKILL,
            false,
        ));
        assert_eq!(r.wait(42), Some(137));
        assert_eq!(r.wait(42), None, "a status is handed out once");
        assert_eq!(r.reaped_total(), 2);
    }

    #[test]
    fn a_status_reaped_before_watch_is_not_lost() {
        let r = Reaper::default();
        r.record(WaitStatus::Exited(Pid::from_raw(5), 3));
        r.watch(5);
        assert_eq!(r.try_wait(5), Some(3));
        for pid in 0..(MAX_UNCLAIMED as i32 + 10) {
            r.record(WaitStatus::Exited(Pid::from_raw(1000 + pid), 0));
        }
        assert_eq!(r.lock().unclaimed.len(), MAX_UNCLAIMED);
    }
}
