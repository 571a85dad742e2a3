//! The system calls container setup makes, behind a trait so that the setup logic can be
//! tested without root: [`LinuxSyscall`] makes them, [`RecordingSyscall`] records them.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::{Mode, SFlag};

/// Errors are plain errnos; callers add the context (which spec field, which path).
pub type SysResult<T> = Result<T, nix::Error>;

/// The calls rootfs and process setup need.
pub trait Syscall: Send + Sync {
    /// mount(2).
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> SysResult<()>;
    /// umount2(2).
    fn umount(&self, target: &Path, flags: MntFlags) -> SysResult<()>;
    /// pivot_root(2).
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> SysResult<()>;
    /// chdir(2).
    fn chdir(&self, path: &Path) -> SysResult<()>;
    /// chroot(2).
    fn chroot(&self, path: &Path) -> SysResult<()>;
    /// Opens a directory (`O_DIRECTORY|O_CLOEXEC`) to return to it with [`Syscall::fchdir`].
    fn open_dir(&self, path: &Path) -> SysResult<std::os::fd::OwnedFd>;
    /// fchdir(2).
    fn fchdir(&self, dir: &std::os::fd::OwnedFd) -> SysResult<()>;
    /// `mkdir -p` with `mode` for the directories it creates.
    fn mkdir_all(&self, path: &Path, mode: u32) -> SysResult<()>;
    /// Creates an empty file if nothing exists at `path` (a bind mount target).
    fn touch(&self, path: &Path, mode: u32) -> SysResult<()>;
    /// symlink(2).
    fn symlink(&self, target: &Path, link: &Path) -> SysResult<()>;
    /// mknod(2).
    fn mknod(&self, path: &Path, kind: SFlag, mode: Mode, dev: u64) -> SysResult<()>;
    /// chown(2) (no following of a final symlink).
    fn lchown(&self, path: &Path, uid: u32, gid: u32) -> SysResult<()>;
    /// sethostname(2).
    fn sethostname(&self, name: &str) -> SysResult<()>;
    /// setdomainname(2).
    fn setdomainname(&self, name: &str) -> SysResult<()>;
    /// Writes `data` to an existing file (sysctl under /proc/sys, uid maps, ...).
    fn write_file(&self, path: &Path, data: &str) -> SysResult<()>;
}

/// The real thing.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxSyscall;

fn errno_of(e: std::io::Error) -> nix::Error {
    nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

impl Syscall for LinuxSyscall {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> SysResult<()> {
        nix::mount::mount(source, target, fstype, flags, data)
    }
    fn umount(&self, target: &Path, flags: MntFlags) -> SysResult<()> {
        nix::mount::umount2(target, flags)
    }
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> SysResult<()> {
        nix::unistd::pivot_root(new_root, put_old)
    }
    fn chdir(&self, path: &Path) -> SysResult<()> {
        nix::unistd::chdir(path)
    }
    fn chroot(&self, path: &Path) -> SysResult<()> {
        nix::unistd::chroot(path)
    }
    fn open_dir(&self, path: &Path) -> SysResult<std::os::fd::OwnedFd> {
        use nix::fcntl::OFlag;
        nix::fcntl::open(
            path,
            OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
    }
    fn fchdir(&self, dir: &std::os::fd::OwnedFd) -> SysResult<()> {
        nix::unistd::fchdir(dir)
    }
    fn mkdir_all(&self, path: &Path, mode: u32) -> SysResult<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(path)
            .map_err(errno_of)
    }
    fn touch(&self, path: &Path, mode: u32) -> SysResult<()> {
        use std::os::unix::fs::OpenOptionsExt;
        if std::fs::symlink_metadata(path).is_ok() {
            return Ok(());
        }
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(mode)
            .open(path)
            .map(drop)
            .map_err(errno_of)
    }
    fn symlink(&self, target: &Path, link: &Path) -> SysResult<()> {
        std::os::unix::fs::symlink(target, link).map_err(errno_of)
    }
    fn mknod(&self, path: &Path, kind: SFlag, mode: Mode, dev: u64) -> SysResult<()> {
        nix::sys::stat::mknod(path, kind, mode, dev)
    }
    fn lchown(&self, path: &Path, uid: u32, gid: u32) -> SysResult<()> {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(errno_of)
    }
    fn sethostname(&self, name: &str) -> SysResult<()> {
        nix::unistd::sethostname(name)
    }
    fn setdomainname(&self, name: &str) -> SysResult<()> {
        // SAFETY: the pointer and length describe `name`'s bytes, which outlive the call;
        // setdomainname(2) only reads them.
        let rc = unsafe { libc::setdomainname(name.as_ptr().cast(), name.len()) };
        nix::errno::Errno::result(rc).map(drop)
    }
    fn write_file(&self, path: &Path, data: &str) -> SysResult<()> {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(errno_of)?;
        f.write_all(data.as_bytes()).map_err(errno_of)
    }
}

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// mount(source, target, fstype, flags, data).
    Mount(
        Option<PathBuf>,
        PathBuf,
        Option<String>,
        MsFlags,
        Option<String>,
    ),
    /// umount2.
    Umount(PathBuf, MntFlags),
    /// pivot_root.
    PivotRoot(PathBuf, PathBuf),
    /// chdir.
    Chdir(PathBuf),
    /// chroot.
    Chroot(PathBuf),
    /// open a directory.
    OpenDir(PathBuf),
    /// fchdir (to the directory opened by the n-th `OpenDir`, counted from 0).
    Fchdir(usize),
    /// mkdir -p.
    MkdirAll(PathBuf, u32),
    /// touch.
    Touch(PathBuf, u32),
    /// symlink(target, link).
    Symlink(PathBuf, PathBuf),
    /// mknod(path, kind, mode bits, dev).
    Mknod(PathBuf, SFlag, u32, u64),
    /// lchown.
    Lchown(PathBuf, u32, u32),
    /// sethostname.
    Sethostname(String),
    /// setdomainname.
    Setdomainname(String),
    /// write_file.
    WriteFile(PathBuf, String),
}

/// A call predicate and the errno the calls it matches fail with.
type FailRule = (fn(&Call) -> bool, nix::Error);

/// A fake that records every call and fails the ones it is told to.
#[derive(Debug, Default)]
pub struct RecordingSyscall {
    calls: Mutex<Vec<Call>>,
    /// Calls for which this returns true fail with the paired errno.
    fail: Mutex<Vec<FailRule>>,
    /// Raw fds handed out by `open_dir`, in order.
    opened: Mutex<Vec<std::os::fd::RawFd>>,
}

impl RecordingSyscall {
    /// The calls so far.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Makes calls matching `pred` fail with `errno`.
    pub fn fail_when(&self, pred: fn(&Call) -> bool, errno: nix::Error) {
        self.fail
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((pred, errno));
    }

    fn record(&self, call: Call) -> SysResult<()> {
        let failing = self
            .fail
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(p, _)| p(&call))
            .map(|(_, e)| *e);
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(call);
        failing.map_or(Ok(()), Err)
    }
}

impl Syscall for RecordingSyscall {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> SysResult<()> {
        self.record(Call::Mount(
            source.map(Path::to_path_buf),
            target.to_path_buf(),
            fstype.map(str::to_string),
            flags,
            data.map(str::to_string),
        ))
    }
    fn umount(&self, target: &Path, flags: MntFlags) -> SysResult<()> {
        self.record(Call::Umount(target.to_path_buf(), flags))
    }
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> SysResult<()> {
        self.record(Call::PivotRoot(
            new_root.to_path_buf(),
            put_old.to_path_buf(),
        ))
    }
    fn chdir(&self, path: &Path) -> SysResult<()> {
        self.record(Call::Chdir(path.to_path_buf()))
    }
    fn chroot(&self, path: &Path) -> SysResult<()> {
        self.record(Call::Chroot(path.to_path_buf()))
    }
    fn open_dir(&self, path: &Path) -> SysResult<std::os::fd::OwnedFd> {
        self.record(Call::OpenDir(path.to_path_buf()))?;
        // A real, harmless fd whose number identifies which open it was.
        let fd = std::fs::File::open("/dev/null").map_err(errno_of)?;
        self.opened
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(std::os::fd::AsRawFd::as_raw_fd(&fd));
        Ok(fd.into())
    }
    fn fchdir(&self, dir: &std::os::fd::OwnedFd) -> SysResult<()> {
        let raw = std::os::fd::AsRawFd::as_raw_fd(dir);
        let idx = self
            .opened
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .rposition(|f| *f == raw)
            .unwrap_or(usize::MAX);
        self.record(Call::Fchdir(idx))
    }
    fn mkdir_all(&self, path: &Path, mode: u32) -> SysResult<()> {
        self.record(Call::MkdirAll(path.to_path_buf(), mode))
    }
    fn touch(&self, path: &Path, mode: u32) -> SysResult<()> {
        self.record(Call::Touch(path.to_path_buf(), mode))
    }
    fn symlink(&self, target: &Path, link: &Path) -> SysResult<()> {
        self.record(Call::Symlink(target.to_path_buf(), link.to_path_buf()))
    }
    fn mknod(&self, path: &Path, kind: SFlag, mode: Mode, dev: u64) -> SysResult<()> {
        self.record(Call::Mknod(path.to_path_buf(), kind, mode.bits(), dev))
    }
    fn lchown(&self, path: &Path, uid: u32, gid: u32) -> SysResult<()> {
        self.record(Call::Lchown(path.to_path_buf(), uid, gid))
    }
    fn sethostname(&self, name: &str) -> SysResult<()> {
        self.record(Call::Sethostname(name.to_string()))
    }
    fn setdomainname(&self, name: &str) -> SysResult<()> {
        self.record(Call::Setdomainname(name.to_string()))
    }
    fn write_file(&self, path: &Path, data: &str) -> SysResult<()> {
        self.record(Call::WriteFile(path.to_path_buf(), data.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_calls_and_injects_failures() {
        let s = RecordingSyscall::default();
        s.fail_when(|c| matches!(c, Call::Chdir(_)), nix::Error::ENOENT);
        s.sethostname("box").unwrap();
        assert_eq!(s.chdir(Path::new("/nope")), Err(nix::Error::ENOENT));
        assert_eq!(
            s.calls(),
            [Call::Sethostname("box".into()), Call::Chdir("/nope".into())]
        );
    }
}
