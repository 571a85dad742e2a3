//! The cgroup v2 manager: one directory under the guest's cgroup2 mount per container.
//!
//! Data flow: the container code calls [`Cgroup::create`] with the container's
//! `linux.cgroupsPath` (or a default such as `moat/<id>`), which makes the directory and
//! enables every controller the parents offer on the way down. [`Cgroup::apply`] turns the
//! spec's `linux.resources` into writes of the interface files (`cpu.max`, `memory.max`,
//! ...) and serves `UpdateResources` as well, since absent fields are left untouched. The
//! init process is moved in with [`Cgroup::add_process`]; pause/resume, kill, statistics
//! ([`Cgroup::stats`]) and OOM events ([`OomWatcher`]) read and write the same directory;
//! [`Cgroup::remove`] deletes it at the end.
//!
//! Everything is plain file I/O relative to a root directory, so the tests run against a fake
//! cgroupfs (a temporary directory pre-populated with the interface files) without root. The
//! files are opened with `O_WRONLY|O_TRUNC` and never created, as on the real cgroupfs.
//!
//! Errors from [`Cgroup::apply`] name the OCI field at fault, e.g.
//! `linux.resources.memory.limit: writing 1 to memory.max: Device or resource busy`.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

mod oom;
mod resources;
mod stats;

#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
mod resources_tests;

pub use oom::{OomStopper, OomWatchThread, OomWatcher};
pub use resources::{blkio_weight_to_io_weight, cpu_shares_to_weight, memory_swap_to_v2};

/// Where the guest mounts cgroup2.
pub const DEFAULT_ROOT: &str = "/sys/fs/cgroup";

/// How long [`Cgroup::freeze`] waits for `cgroup.events` to confirm the new state.
pub const FREEZE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long [`Cgroup::remove`] retries while the cgroup is still busy.
pub const REMOVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Result of this module.
pub type Result<T, E = CgroupError> = std::result::Result<T, E>;

/// A failure of the cgroup manager. Errors caused by the spec name the OCI field at fault.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// `linux.cgroupsPath` cannot be used.
    #[error("linux.cgroupsPath {path:?}: {reason}")]
    InvalidPath {
        /// The path as given.
        path: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A directory of the cgroup path could not be created.
    #[error("linux.cgroupsPath: creating {path}: {}", describe(.error))]
    Create {
        /// The directory.
        path: PathBuf,
        /// What went wrong.
        error: io::Error,
    },
    /// [`Cgroup::open`] found no cgroup there.
    #[error("linux.cgroupsPath: {path} is not a cgroup directory")]
    NotFound {
        /// The directory looked for.
        path: PathBuf,
    },
    /// A resource value is out of range or inconsistent with another.
    #[error("{field}: {reason}")]
    Invalid {
        /// The OCI field.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The interface file a field needs does not exist: its controller is not enabled in
    /// this cgroup or the guest kernel lacks the feature.
    #[error("{field}: {file} does not exist in this cgroup (controller not enabled or not supported by the guest kernel)")]
    Missing {
        /// The OCI field.
        field: String,
        /// The interface file (or files) looked for.
        file: String,
    },
    /// Writing a resource value failed; usually the kernel refused the value.
    #[error("{field}: writing {value} to {file}: {}", describe(.error))]
    Write {
        /// The OCI field.
        field: String,
        /// The interface file.
        file: String,
        /// What was written.
        value: String,
        /// What went wrong.
        error: io::Error,
    },
    /// Reading an interface file that applying a field depends on failed.
    #[error("{field}: reading {file}: {}", describe(.error))]
    Read {
        /// The OCI field.
        field: String,
        /// The interface file.
        file: String,
        /// What went wrong.
        error: io::Error,
    },
    /// An operation on the cgroup itself (not on a resource) failed.
    #[error("{op} {path}: {}", describe(.error))]
    Io {
        /// What was being done: "reading", "writing", "removing".
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// What went wrong.
        error: io::Error,
    },
    /// The freezer did not reach the requested state in time.
    #[error("{path}: cgroup.events did not report frozen {want} within {timeout:?}")]
    FreezeTimeout {
        /// The cgroup.
        path: PathBuf,
        /// The state waited for: 1 frozen, 0 thawed.
        want: u8,
        /// How long it waited.
        timeout: Duration,
    },
    /// Setting up or reading the inotify watch on `memory.events` failed.
    #[error("watching {path} for OOM kills: {}", .error.desc())]
    Watch {
        /// `memory.events` of the cgroup.
        path: PathBuf,
        /// The errno.
        error: nix::Error,
    },
}

/// An I/O error as the C library words it ("Device or resource busy"), without Rust's
/// "(os error 16)" suffix.
fn describe(error: &io::Error) -> String {
    match error.raw_os_error() {
        Some(code) => nix::errno::Errno::from_raw(code).desc().to_string(),
        None => error.to_string(),
    }
}

/// One container's cgroup: a directory of the cgroup2 hierarchy.
#[derive(Debug, Clone)]
pub struct Cgroup {
    path: PathBuf,
    /// The directories [`Cgroup::create`] made, outermost first (the leaf last, when it
    /// made it); [`Cgroup::remove`] deletes the parents among them once they are empty.
    created: Vec<PathBuf>,
}

/// Splits `linux.cgroupsPath` into directory names under the root. A leading `/` means the
/// root of the hierarchy, as in the OCI spec; `..` is refused so that no path leaves it.
fn components(rel: &str) -> Result<Vec<&str>> {
    let invalid = |reason| CgroupError::InvalidPath {
        path: rel.to_string(),
        reason,
    };
    if rel.contains('\0') {
        return Err(invalid("contains a NUL byte"));
    }
    let mut out = Vec::new();
    for comp in rel.split('/') {
        match comp {
            "" | "." => {}
            ".." => return Err(invalid("`..` would leave the cgroup hierarchy")),
            c => out.push(c),
        }
    }
    if out.is_empty() {
        return Err(invalid("names the root cgroup, not a container's"));
    }
    Ok(out)
}

/// Enables in `dir`'s `cgroup.subtree_control` every controller that `dir` has (its
/// `cgroup.controllers`, which is what its parent offers) and that is not enabled yet.
///
/// A controller that cannot be enabled is only logged: the cgroup still works, and a limit
/// that needs the controller fails later in [`Cgroup::apply`] with the field's name.
fn enable_controllers(dir: &Path) {
    let Ok(offered) = fs::read_to_string(dir.join("cgroup.controllers")) else {
        return;
    };
    let enabled = fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    let enabled: Vec<&str> = enabled.split_ascii_whitespace().collect();
    let missing: Vec<String> = offered
        .split_ascii_whitespace()
        .filter(|c| !enabled.contains(c))
        .map(|c| format!("+{c}"))
        .collect();
    if missing.is_empty() {
        return;
    }
    let control = dir.join("cgroup.subtree_control");
    if write_file(&control, &missing.join(" ")).is_ok() {
        return;
    }
    // One at a time, so that one refusal does not keep the others off.
    for c in &missing {
        if let Err(e) = write_file(&control, c) {
            crate::warn!(
                "cgroups: enabling {c} in {}: {}",
                control.display(),
                describe(&e)
            );
        }
    }
}

/// Writes `value` to an existing file: `O_WRONLY|O_TRUNC`, never `O_CREAT`.
fn write_file(path: &Path, value: &str) -> io::Result<()> {
    let mut f = OpenOptions::new().write(true).truncate(true).open(path)?;
    f.write_all(value.as_bytes())
}

/// Reads a file as text; invalid UTF-8 is replaced rather than refused.
fn read_file(path: &Path) -> io::Result<String> {
    fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// Runs `op` until it stops failing with `EBUSY` or `timeout` passes.
fn retry_busy(timeout: Duration, mut op: impl FnMut() -> io::Result<()>) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        match op() {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

impl Cgroup {
    /// Creates (or joins, when it exists) the cgroup `rel` under `root`, normally
    /// [`DEFAULT_ROOT`]. `rel` is `linux.cgroupsPath` or a default like `moat/<id>`; a
    /// leading `/` is the root of the hierarchy and `..` is refused. Missing parents are
    /// created, and each cgroup from `root` down to the leaf's parent gets every controller
    /// it is offered enabled for its children.
    pub fn create(root: &Path, rel: &str) -> Result<Cgroup> {
        let comps = components(rel)?;
        let mut created = Vec::new();
        let mut dir = root.to_path_buf();
        for comp in comps {
            enable_controllers(&dir);
            dir.push(comp);
            match fs::create_dir(&dir) {
                Ok(()) => created.push(dir.clone()),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {}
                Err(error) => {
                    // Undo what this call made, innermost first.
                    for d in created.iter().rev() {
                        let _ = fs::remove_dir(d);
                    }
                    return Err(CgroupError::Create { path: dir, error });
                }
            }
        }
        Ok(Cgroup { path: dir, created })
    }

    /// Opens the existing cgroup `rel` under `root` (same path rules as [`Cgroup::create`]).
    /// [`Cgroup::remove`] on it removes only the leaf.
    pub fn open(root: &Path, rel: &str) -> Result<Cgroup> {
        let mut path = root.to_path_buf();
        path.extend(components(rel)?);
        if !path.is_dir() {
            return Err(CgroupError::NotFound { path });
        }
        Ok(Cgroup {
            path,
            created: Vec::new(),
        })
    }

    /// The cgroup's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of one of its interface files.
    fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Writes an interface file outside of [`Cgroup::apply`].
    fn write(&self, name: &str, value: &str) -> Result<()> {
        let path = self.file(name);
        write_file(&path, value).map_err(|error| CgroupError::Io {
            op: "writing",
            path,
            error,
        })
    }

    /// Reads an interface file outside of [`Cgroup::apply`].
    fn read(&self, name: &str) -> Result<String> {
        let path = self.file(name);
        read_file(&path).map_err(|error| CgroupError::Io {
            op: "reading",
            path,
            error,
        })
    }

    /// Moves the process `pid` (with all its threads) into the cgroup.
    pub fn add_process(&self, pid: i32) -> Result<()> {
        self.write("cgroup.procs", &pid.to_string())
    }

    /// The pids in the cgroup (`cgroup.procs`); lines that are not pids are skipped.
    pub fn procs(&self) -> Result<Vec<u32>> {
        Ok(self
            .read("cgroup.procs")?
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect())
    }

    /// Freezes (`true`) or thaws (`false`) every process in the cgroup and waits up to
    /// [`FREEZE_TIMEOUT`] for `cgroup.events` to confirm it. A freeze that does not complete
    /// in time (a task stuck in uninterruptible sleep, say) is undone, so the container is
    /// not left half frozen.
    pub fn freeze(&self, frozen: bool) -> Result<()> {
        self.freeze_with_timeout(frozen, FREEZE_TIMEOUT)
    }

    /// [`Cgroup::freeze`] with a chosen wait.
    pub fn freeze_with_timeout(&self, frozen: bool, timeout: Duration) -> Result<()> {
        self.write("cgroup.freeze", if frozen { "1" } else { "0" })?;
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(1);
        loop {
            if self.events_frozen()? == Some(frozen) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                if frozen {
                    let _ = self.write("cgroup.freeze", "0");
                }
                return Err(CgroupError::FreezeTimeout {
                    path: self.path.clone(),
                    want: u8::from(frozen),
                    timeout,
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// The `frozen` entry of `cgroup.events`, if it has one.
    fn events_frozen(&self) -> Result<Option<bool>> {
        let events = self.read("cgroup.events")?;
        let frozen = stats::flat_keyed(&events)
            .find(|(k, _)| *k == "frozen")
            .map(|(_, v)| v == "1");
        Ok(frozen)
    }

    /// Whether the cgroup is frozen, as `cgroup.events` reports it (which also covers a
    /// frozen ancestor); `cgroup.freeze` when `cgroup.events` has no `frozen` entry.
    pub fn is_frozen(&self) -> Result<bool> {
        match self.events_frozen()? {
            Some(frozen) => Ok(frozen),
            None => Ok(self.read("cgroup.freeze")?.trim() == "1"),
        }
    }

    /// Sends SIGKILL to every process in the cgroup and its descendants, through
    /// `cgroup.kill` (Linux 5.14). Without it, each pid in `cgroup.procs` is killed, with
    /// the cgroup frozen meanwhile (where it can be) so that nothing forks past the kill.
    /// It does not wait for the processes to die.
    pub fn kill_all(&self) -> Result<()> {
        match write_file(&self.file("cgroup.kill"), "1") {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(CgroupError::Io {
                    op: "writing",
                    path: self.file("cgroup.kill"),
                    error,
                })
            }
        }
        let froze = self.file("cgroup.freeze").exists()
            && self
                .freeze_with_timeout(true, Duration::from_secs(1))
                .is_ok();
        let own = std::process::id();
        let result = self.procs().map(|pids| {
            for pid in pids {
                // Never signal pid 0 (our own process group), init, or ourselves.
                if pid <= 1 || pid == own {
                    continue;
                }
                let Ok(raw) = i32::try_from(pid) else {
                    continue;
                };
                // ESRCH: it exited meanwhile.
                let _ = kill(Pid::from_raw(raw), Signal::SIGKILL);
            }
        });
        if froze {
            let _ = self.write("cgroup.freeze", "0");
        }
        result
    }

    /// Removes the cgroup, retrying for up to [`REMOVE_TIMEOUT`] while it is busy (its
    /// killed processes still draining), then the parents [`Cgroup::create`] made, as far
    /// as they are empty. A cgroup that is already gone is not an error.
    pub fn remove(&self) -> Result<()> {
        match retry_busy(REMOVE_TIMEOUT, || fs::remove_dir(&self.path)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(CgroupError::Io {
                    op: "removing",
                    path: self.path.clone(),
                    error,
                })
            }
        }
        for dir in self.created.iter().rev().filter(|d| **d != self.path) {
            match fs::remove_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                // Still used by another container: it and its parents stay.
                Err(_) => break,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeCgroupFs;
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn components_reject_escapes() {
        assert_eq!(components("moat/c1").unwrap(), ["moat", "c1"]);
        assert_eq!(components("/moat//c1/./").unwrap(), ["moat", "c1"]);
        for bad in [
            "",
            "/",
            ".",
            "./",
            "..",
            "../x",
            "moat/../../etc",
            "/a/..",
            "a\0b",
        ] {
            let err = components(bad).unwrap_err();
            assert!(
                err.to_string().starts_with("linux.cgroupsPath "),
                "{bad:?}: {err}"
            );
        }
        assert!(components("a/../b")
            .unwrap_err()
            .to_string()
            .contains("`..`"));
    }

    #[test]
    fn create_makes_parents_and_absolute_paths_stay_under_root() {
        let fs = FakeCgroupFs::new();
        let cg = Cgroup::create(fs.root(), "/moat/pod/c1").unwrap();
        assert_eq!(cg.path(), fs.root().join("moat/pod/c1"));
        assert!(cg.path().is_dir());
        assert_eq!(cg.created.len(), 3);
        // Joining an existing cgroup creates nothing.
        let again = Cgroup::create(fs.root(), "moat/pod/c1").unwrap();
        assert!(again.created.is_empty());
        assert!(Cgroup::create(fs.root(), "moat/../../x").is_err());
    }

    #[test]
    fn create_enables_offered_controllers_in_intermediates() {
        let fs = FakeCgroupFs::new();
        // The root already has everything enabled: it must not be written.
        let before = fs.read("", "cgroup.subtree_control");
        fs.mkdir("moat");
        fs.write("moat", "cgroup.controllers", "cpu io memory pids\n");
        fs.write("moat", "cgroup.subtree_control", "cpu\n");
        Cgroup::create(fs.root(), "moat/c1").unwrap();
        assert_eq!(fs.read("", "cgroup.subtree_control"), before);
        assert_eq!(
            fs.read("moat", "cgroup.subtree_control"),
            "+io +memory +pids"
        );
    }

    #[test]
    fn create_error_names_the_path_and_rolls_back() {
        let fs = FakeCgroupFs::new();
        fs.mkdir("moat");
        // A file where a directory should be.
        fs.write("moat", "blocker", "");
        let err = Cgroup::create(fs.root(), "moat/blocker/c1").unwrap_err();
        assert!(
            err.to_string().starts_with("linux.cgroupsPath: creating "),
            "{err}"
        );
        assert!(
            err.to_string().ends_with("moat/blocker: File exists"),
            "{err}"
        );
        // "new" is made, the over-long name fails, and "new" is removed again.
        let long = "x".repeat(300);
        let err = Cgroup::create(fs.root(), &format!("new/{long}")).unwrap_err();
        assert!(err.to_string().ends_with("File name too long"), "{err}");
        assert!(!fs.root().join("new").exists());
        assert!(fs.root().join("moat").is_dir());
    }

    #[test]
    fn open_requires_an_existing_directory() {
        let fs = FakeCgroupFs::new();
        let err = Cgroup::open(fs.root(), "moat/none").unwrap_err();
        assert!(matches!(err, CgroupError::NotFound { .. }), "{err}");
        Cgroup::create(fs.root(), "moat/c1").unwrap();
        let cg = Cgroup::open(fs.root(), "moat/c1").unwrap();
        assert_eq!(cg.path(), fs.root().join("moat/c1"));
        assert!(Cgroup::open(fs.root(), "..").is_err());
    }

    #[test]
    fn add_process_and_procs() {
        let fs = FakeCgroupFs::new();
        let cg = fs.cgroup("moat/c1");
        cg.add_process(1234).unwrap();
        assert_eq!(fs.read("moat/c1", "cgroup.procs"), "1234");
        fs.write("moat/c1", "cgroup.procs", "12\n\nbogus\n-3\n34\n");
        assert_eq!(cg.procs().unwrap(), [12, 34]);
        let gone = Cgroup {
            path: fs.root().join("gone"),
            created: Vec::new(),
        };
        let err = gone.add_process(1).unwrap_err();
        assert!(err.to_string().starts_with("writing "), "{err}");
        assert!(
            err.to_string().ends_with("No such file or directory"),
            "{err}"
        );
    }

    #[test]
    fn freeze_waits_for_cgroup_events() {
        let fs = FakeCgroupFs::new();
        let cg = fs.cgroup("moat/c1");
        assert!(!cg.is_frozen().unwrap());
        // The "kernel" confirms after a while.
        let events = cg.file("cgroup.events");
        let confirm = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            fs::write(events, "populated 1\nfrozen 1\n").unwrap();
        });
        cg.freeze(true).unwrap();
        confirm.join().unwrap();
        assert_eq!(fs.read("moat/c1", "cgroup.freeze"), "1");
        assert!(cg.is_frozen().unwrap());
    }

    #[test]
    fn freeze_timeout_thaws_again() {
        let fs = FakeCgroupFs::new();
        let cg = fs.cgroup("moat/c1");
        let err = cg
            .freeze_with_timeout(true, Duration::from_millis(20))
            .unwrap_err();
        assert!(
            err.to_string()
                .ends_with("cgroup.events did not report frozen 1 within 20ms"),
            "{err}"
        );
        assert_eq!(fs.read("moat/c1", "cgroup.freeze"), "0");
        // Thawing an unfrozen cgroup returns at once.
        cg.freeze(false).unwrap();
    }

    #[test]
    fn is_frozen_falls_back_to_cgroup_freeze() {
        let fs = FakeCgroupFs::new();
        let cg = fs.cgroup("moat/c1");
        fs.write("moat/c1", "cgroup.events", "populated 1\n");
        fs.write("moat/c1", "cgroup.freeze", "1\n");
        assert!(cg.is_frozen().unwrap());
    }

    #[test]
    fn kill_all_uses_cgroup_kill() {
        let fs = FakeCgroupFs::new();
        let cg = fs.cgroup("moat/c1");
        cg.kill_all().unwrap();
        assert_eq!(fs.read("moat/c1", "cgroup.kill"), "1");
    }

    #[test]
    fn kill_all_falls_back_to_sigkill_per_pid() {
        let fs = FakeCgroupFs::new();
        let cg = fs.cgroup("moat/c1");
        fs.remove("moat/c1", "cgroup.kill");
        fs.remove("moat/c1", "cgroup.freeze");
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        // 0, 1 and our own pid are in the list too: they must be skipped.
        let procs = format!("0\n1\n{}\n{}\n", std::process::id(), child.id());
        fs.write("moat/c1", "cgroup.procs", &procs);
        cg.kill_all().unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }

    #[test]
    fn remove_deletes_created_parents_when_empty() {
        let fs = FakeCgroupFs::new();
        let c1 = Cgroup::create(fs.root(), "moat/pod/c1").unwrap();
        let c2 = Cgroup::create(fs.root(), "moat/pod/c2").unwrap();
        // c1's parents are still used by c2.
        c1.remove().unwrap();
        assert!(!fs.root().join("moat/pod/c1").exists());
        assert!(fs.root().join("moat/pod/c2").is_dir());
        // c2 made no parents, so they stay.
        c2.remove().unwrap();
        assert!(fs.root().join("moat/pod").is_dir());
        // Removing twice is fine.
        c2.remove().unwrap();

        let c3 = Cgroup::create(fs.root(), "other/c3").unwrap();
        c3.remove().unwrap();
        assert!(!fs.root().join("other").exists());
        assert!(fs.root().join("cgroup.procs").exists());
    }

    #[test]
    fn remove_reports_a_cgroup_that_stays() {
        let fs = FakeCgroupFs::new();
        let cg = fs.cgroup("moat/c1");
        let err = cg.remove().unwrap_err();
        assert!(err.to_string().starts_with("removing "), "{err}");
        assert!(err.to_string().ends_with("Directory not empty"), "{err}");
    }

    #[test]
    fn retry_busy_retries_only_ebusy_and_is_bounded() {
        let mut n = 0;
        retry_busy(Duration::from_secs(5), || {
            n += 1;
            if n < 3 {
                Err(io::Error::from_raw_os_error(libc::EBUSY))
            } else {
                Ok(())
            }
        })
        .unwrap();
        assert_eq!(n, 3);

        let mut n = 0;
        let err = retry_busy(Duration::from_secs(5), || {
            n += 1;
            Err(io::Error::from_raw_os_error(libc::ENOTEMPTY))
        })
        .unwrap_err();
        assert_eq!(n, 1);
        assert_eq!(err.raw_os_error(), Some(libc::ENOTEMPTY));

        let start = Instant::now();
        let err = retry_busy(Duration::from_millis(30), || {
            Err(io::Error::from_raw_os_error(libc::EBUSY))
        })
        .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBUSY));
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn describe_uses_the_c_library_wording() {
        assert_eq!(
            describe(&io::Error::from_raw_os_error(libc::EBUSY)),
            "Device or resource busy"
        );
        assert_eq!(describe(&io::Error::other("odd")), "odd");
    }
}
