//! Starting a process inside a container: the fork dance, namespaces, user namespace maps,
//! the create/start split, and the final `execve`.
//!
//! ```text
//! agent ──fork──► intermediate ──fork──► container process ──execve──► program
//!   │  puts it in the cgroup, sends Go      │
//!   │             joins namespaces by path  │  (PID 1 of a new pid namespace, if any)
//!   │             unshares user ns ─MapMe─► agent writes uid_map/gid_map ─Mapped─►
//!   │             unshares the other namespaces, forks, sends Pid, exits
//!   │                                        rootfs, hostname, sysctl, rlimits, user,
//!   │                                        capabilities, seccomp (before exec, or after
//!   │                                        start when noNewPrivileges), sends Ready,
//!   │◄─ Ready ──────────────────────────────── waits for Start (runc's exec fifo)
//!   └── Start ─────────────────────────────► execve; the close-on-exec channel closes
//! ```
//! The intermediate exists because a new or joined pid namespace applies to children
//! only. Each child reports failures on the channel and exits; the agent turns them into
//! errors that name the spec field.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::Duration;

use nix::sched::CloneFlags;
use nix::unistd::{fork, ForkResult, Pid};
use oci_spec::runtime::{LinuxIdMapping, LinuxNamespaceType, Process, Spec};
use seccompiler::BpfProgram;

use super::creds;
use super::sync::{Msg, SyncChannel};
use super::syscall::Syscall;

/// How a failed `execve` (after Start, with the process's own stdio) is reported.
const EXEC_ERROR_PREFIX: &str = "process.args[0]: exec ";

/// How long a child may take to get through its setup before the agent gives up on it.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(60);

/// A failure starting a container process.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The child reported a setup failure (the message names the spec field).
    #[error("{0}")]
    Setup(String),
    /// fork or a channel operation failed in the agent.
    #[error("starting the container process: {0}")]
    Agent(String),
}

/// The namespaces a process gets: new ones by clone flag, and joined ones by path.
#[derive(Debug, Clone)]
pub struct Namespaces {
    /// Namespaces to create.
    pub new: CloneFlags,
    /// Namespaces to join: `(type, path)`, user first if present.
    pub join: Vec<(LinuxNamespaceType, PathBuf)>,
}

impl Namespaces {
    /// From `linux.namespaces` of a spec.
    pub fn from_spec(spec: &Spec) -> Self {
        let mut ns = Namespaces {
            new: CloneFlags::empty(),
            join: Vec::new(),
        };
        for n in spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_ref())
            .into_iter()
            .flatten()
        {
            match n.path() {
                Some(p) => ns.join.push((n.typ(), p.clone())),
                None => ns.new |= CloneFlags::from_bits_truncate(n.typ() as i32),
            }
        }
        // Join the user namespace first: it decides what we may do in the others. Join the
        // mount namespace last: paths of the other namespace files are resolved before it.
        ns.join.sort_by_key(|(t, _)| match t {
            LinuxNamespaceType::User => 0,
            LinuxNamespaceType::Mount => 2,
            _ => 1,
        });
        ns
    }

    /// Joining every namespace of a running process (for exec).
    pub fn of_pid(pid: u32, types: &[LinuxNamespaceType]) -> Self {
        let mut join: Vec<_> = types
            .iter()
            .map(|t| (*t, PathBuf::from(format!("/proc/{pid}/ns/{}", ns_file(*t)))))
            .collect();
        join.sort_by_key(|(t, _)| match t {
            LinuxNamespaceType::User => 0,
            LinuxNamespaceType::Mount => 2,
            _ => 1,
        });
        Namespaces {
            new: CloneFlags::empty(),
            join,
        }
    }
}

/// The file name under `/proc/<pid>/ns/` of a namespace type.
pub fn ns_file(t: LinuxNamespaceType) -> &'static str {
    match t {
        LinuxNamespaceType::Mount => "mnt",
        LinuxNamespaceType::Cgroup => "cgroup",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Pid => "pid_for_children",
        LinuxNamespaceType::Network => "net",
        LinuxNamespaceType::Time => "time_for_children",
    }
}

/// The container-side setup for an init process (not for exec).
pub trait InitSetup: Sync {
    /// Runs in the container process after namespaces exist and before user, capabilities
    /// and seccomp: rootfs, pivot_root, hostname, sysctl. `on_root` runs right after
    /// pivot_root, before `/dev` may become read-only (the console is set up there).
    /// Returns a message naming the field.
    fn setup(
        &self,
        sys: &dyn Syscall,
        on_root: &mut dyn FnMut() -> Result<(), String>,
    ) -> Result<(), String>;
    /// Runs in the container process after `Start`, just before `execve`
    /// (`startContainer` hooks).
    fn after_start(&self) -> Result<(), String>;
}

/// Everything needed to start one process.
pub struct Launch<'a> {
    /// The process spec.
    pub process: &'a Process,
    /// Namespaces.
    pub namespaces: Namespaces,
    /// uid/gid maps written for a new user namespace.
    pub id_maps: Option<(&'a [LinuxIdMapping], &'a [LinuxIdMapping])>,
    /// Container-side setup (init only).
    pub init: Option<&'a dyn InitSetup>,
    /// Seccomp filters to install, and the `SECCOMP_FILTER_FLAG_*` bits to install them with.
    pub seccomp: (&'a [BpfProgram], u32),
    /// The fds that become 0, 1 and 2.
    pub stdio: [RawFd; 3],
    /// `process.terminal`: the container process opens a pty from its own `/dev/ptmx`,
    /// makes the slave its stdio and controlling terminal (and, for an init, `/dev/console`),
    /// and sends the master to the agent. The size is `process.consoleSize`.
    pub terminal: Option<Option<(u16, u16)>>,
    /// Puts a pid into the container's cgroup (called with the intermediate's pid).
    pub join_cgroup: &'a dyn Fn(u32) -> Result<(), String>,
}

impl std::fmt::Debug for Launch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Launch")
            .field("namespaces", &self.namespaces)
            .finish_non_exhaustive()
    }
}

/// A process that is set up and waiting for [`Launched::start`].
#[derive(Debug)]
pub struct Launched {
    /// Its pid in the agent's pid namespace.
    pub pid: u32,
    /// The pty master, when the process has a terminal.
    pub pty: Option<OwnedFd>,
    chan: SyncChannel,
}

impl Launched {
    /// Lets the process exec its program. Returns once `execve` succeeded (the channel
    /// closes) or failed (the process reports why and exits 127).
    pub fn start(mut self) -> Result<(), LaunchError> {
        self.chan
            .send(&Msg::Start)
            .map_err(|e| LaunchError::Agent(e.to_string()))?;
        match self.chan.recv() {
            Err(super::sync::SyncError::Closed) => Ok(()),
            Ok(Msg::Error(e)) => Err(LaunchError::Setup(e)),
            Ok(m) => Err(LaunchError::Agent(format!("unexpected {m:?} after Start"))),
            Err(e) => Err(LaunchError::Agent(e.to_string())),
        }
    }
}

/// Starts the process up to the point where only [`Launched::start`] remains.
pub fn launch(sys: &dyn Syscall, l: &Launch<'_>) -> Result<Launched, LaunchError> {
    let (mut parent, child) = SyncChannel::pair().map_err(|e| LaunchError::Agent(e.to_string()))?;
    parent
        .set_timeout(Some(SETUP_TIMEOUT))
        .map_err(|e| LaunchError::Agent(e.to_string()))?;
    // SAFETY: the agent is multithreaded. The child only uses memory it owns, the libc's
    // malloc (musl and glibc make it usable after fork by taking its locks around fork),
    // and system calls; it never takes a lock another thread may hold (no logging, no
    // stdio locks) and it ends in execve or _exit.
    match unsafe { fork() }.map_err(|e| LaunchError::Agent(format!("fork: {e}")))? {
        ForkResult::Child => {
            drop(parent);
            intermediate(sys, l, child)
        }
        ForkResult::Parent { child: mid } => {
            drop(child);
            let result = supervise(l, &mut parent, mid);
            // The intermediate exits once it has forked; the reaper collects it. On failure
            // make sure nothing is left running.
            if result.is_err() {
                let _ = nix::sys::signal::kill(mid, nix::sys::signal::Signal::SIGKILL);
            }
            result.map(|(pid, pty)| Launched {
                pid,
                pty,
                chan: parent,
            })
        }
    }
}

/// The agent's side of the setup conversation.
fn supervise(
    l: &Launch<'_>,
    chan: &mut SyncChannel,
    mid: Pid,
) -> Result<(u32, Option<OwnedFd>), LaunchError> {
    (l.join_cgroup)(mid.as_raw() as u32).map_err(LaunchError::Setup)?;
    chan.send(&Msg::Go)
        .map_err(|e| LaunchError::Agent(e.to_string()))?;
    let mut pid = None;
    let mut pty = None;
    // The intermediate sends Pid after its fork returns, the container process sends Ready
    // once set up: two processes on one channel, so either may come first.
    let mut ready = false;
    loop {
        if let (true, Some(pid)) = (ready, pid) {
            return Ok((pid, pty));
        }
        let msg = chan.recv().map_err(|e| match e {
            super::sync::SyncError::Closed => LaunchError::Setup(
                "the container process exited during setup without saying why".into(),
            ),
            e => LaunchError::Agent(e.to_string()),
        })?;
        match msg {
            Msg::MapMe(p) => {
                let (uids, gids) = l.id_maps.unwrap_or((&[], &[]));
                write_id_maps(p, uids, gids).map_err(LaunchError::Setup)?;
                chan.send(&Msg::Mapped)
                    .map_err(|e| LaunchError::Agent(e.to_string()))?;
            }
            Msg::Pid(p) => pid = Some(p),
            Msg::Pty => pty = chan.take_fd(),
            Msg::Ready => ready = true,
            Msg::Error(e) => {
                if let Some(p) = pid {
                    let _ = nix::sys::signal::kill(
                        Pid::from_raw(p as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                return Err(LaunchError::Setup(e));
            }
            other => {
                return Err(LaunchError::Agent(format!(
                    "unexpected {other:?} during setup"
                )))
            }
        }
    }
}

/// Writes `/proc/<pid>/uid_map` and `gid_map`.
fn write_id_maps(pid: u32, uids: &[LinuxIdMapping], gids: &[LinuxIdMapping]) -> Result<(), String> {
    let fmt = |m: &[LinuxIdMapping]| {
        m.iter()
            .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
            .collect::<String>()
    };
    for (file, field, maps) in [
        ("uid_map", "linux.uidMappings", uids),
        ("gid_map", "linux.gidMappings", gids),
    ] {
        if maps.is_empty() {
            continue;
        }
        std::fs::write(format!("/proc/{pid}/{file}"), fmt(maps))
            .map_err(|e| format!("{field}: writing {file}: {e}"))?;
    }
    Ok(())
}

/// The intermediate process: namespaces, then the fork into the container process.
fn intermediate(sys: &dyn Syscall, l: &Launch<'_>, mut chan: SyncChannel) -> ! {
    let fail = |chan: &mut SyncChannel, msg: String| -> ! {
        let _ = chan.send(&Msg::Error(msg));
        // SAFETY: _exit never returns and is async-signal-safe.
        unsafe { libc::_exit(1) }
    };
    if let Err(e) = chan.expect(&Msg::Go) {
        fail(&mut chan, e)
    }
    if let Err(e) = enter_namespaces(l, &mut chan) {
        fail(&mut chan, e)
    }
    // SAFETY: this process is single-threaded (a fork child); see `launch`.
    match unsafe { fork() } {
        Err(e) => fail(&mut chan, format!("fork of the container process: {e}")),
        Ok(ForkResult::Parent { child }) => {
            let _ = chan.send(&Msg::Pid(child.as_raw() as u32));
            // SAFETY: as above.
            unsafe { libc::_exit(0) }
        }
        Ok(ForkResult::Child) => match container_process(sys, l, &mut chan) {
            Ok(never) => match never {},
            Err(e) => {
                let _ = chan.send(&Msg::Error(e.clone()));
                // After Start (stdio is the process's own by then), say it there too, like
                // runc; before, the agent reports it and stderr is still the agent's.
                if e.starts_with(EXEC_ERROR_PREFIX) {
                    let _ =
                        nix::unistd::write(std::io::stderr(), format!("moat: {e}\n").as_bytes());
                }
                // SAFETY: as above.
                unsafe { libc::_exit(127) }
            }
        },
    }
}

fn enter_namespaces(l: &Launch<'_>, chan: &mut SyncChannel) -> Result<(), String> {
    // Open every namespace file before joining any (the mount namespace changes paths).
    let mut files = Vec::new();
    for (t, path) in &l.namespaces.join {
        let f = std::fs::File::open(path).map_err(|e| {
            format!(
                "linux.namespaces[{t}].path: opening {}: {e}",
                path.display()
            )
        })?;
        files.push((*t, path, f));
    }
    for (t, path, f) in &files {
        nix::sched::setns(f, CloneFlags::from_bits_truncate(*t as i32)).map_err(|e| {
            format!(
                "linux.namespaces[{t}].path: joining {}: {e}",
                path.display()
            )
        })?;
    }
    let new = l.namespaces.new;
    if new.contains(CloneFlags::CLONE_NEWUSER) {
        nix::sched::unshare(CloneFlags::CLONE_NEWUSER)
            .map_err(|e| format!("linux.namespaces[user]: unshare: {e}"))?;
        chan.send(&Msg::MapMe(std::process::id()))
            .map_err(|e| e.to_string())?;
        chan.expect(&Msg::Mapped)?;
        let root_u = nix::unistd::Uid::from_raw(0);
        let root_g = nix::unistd::Gid::from_raw(0);
        nix::unistd::setresgid(root_g, root_g, root_g)
            .map_err(|e| format!("linux.gidMappings: becoming gid 0 in the user namespace: {e}"))?;
        nix::unistd::setresuid(root_u, root_u, root_u)
            .map_err(|e| format!("linux.uidMappings: becoming uid 0 in the user namespace: {e}"))?;
    }
    let rest = new - CloneFlags::CLONE_NEWUSER;
    if !rest.is_empty() {
        nix::sched::unshare(rest)
            .map_err(|e| format!("linux.namespaces: unshare {rest:?}: {e}"))?;
    }
    Ok(())
}

/// The container process: everything up to `execve`. Only returns on failure.
fn container_process(
    sys: &dyn Syscall,
    l: &Launch<'_>,
    chan: &mut SyncChannel,
) -> Result<std::convert::Infallible, String> {
    reset_signals();
    nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
    if let Some(oom) = l.process.oom_score_adj() {
        std::fs::write("/proc/self/oom_score_adj", oom.to_string())
            .map_err(|e| format!("process.oomScoreAdj: {e}"))?;
    }
    let mut slave: Option<OwnedFd> = None;
    let mut open_console = |console: bool| -> Result<(), String> {
        if let Some(size) = l.terminal {
            let (master, s) = open_pty(size, console)?;
            chan.send_fd(&master).map_err(|e| e.to_string())?;
            drop(master);
            // SAFETY: TIOCSCTTY takes an int argument (0: do not steal); `s` is open.
            let rc = unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCSCTTY as _, 0) };
            nix::errno::Errno::result(rc)
                .map_err(|e| format!("process.terminal: TIOCSCTTY: {e}"))?;
            slave = Some(s);
        }
        Ok(())
    };
    match l.init {
        Some(init) => init.setup(sys, &mut || open_console(true))?,
        // An exec joined the container's mount namespace: its root is the container's.
        None => open_console(false)?,
    }
    creds::apply_rlimits(l.process.rlimits().as_deref().unwrap_or(&[]))
        .map_err(|e| e.to_string())?;
    let cwd = l.process.cwd();
    let exe = creds::find_executable(l.process).map_err(|e| e.to_string())?;
    let args = creds::cstrings(l.process.args().iter().flatten(), "process.args")
        .map_err(|e| e.to_string())?;
    let env = creds::cstrings(l.process.env().iter().flatten(), "process.env")
        .map_err(|e| e.to_string())?;
    let exe_c = CString::new(exe.as_os_str().as_encoded_bytes())
        .map_err(|_| "process.args[0]: NUL byte".to_string())?;
    let nnp = l.process.no_new_privileges().unwrap_or(false);
    if !nnp {
        // Without no_new_privs, installing a filter needs CAP_SYS_ADMIN: do it while we are
        // still root (as runc does). The profile must allow the calls that follow.
        super::seccomp::install_with_flags(l.seccomp.0, l.seccomp.1).map_err(|e| e.to_string())?;
    }
    creds::apply_user_and_caps(l.process).map_err(|e| e.to_string())?;
    nix::unistd::chdir(cwd).map_err(|e| format!("process.cwd: chdir {}: {e}", cwd.display()))?;
    chan.send(&Msg::Ready).map_err(|e| e.to_string())?;
    chan.set_timeout(None).map_err(|e| e.to_string())?;
    chan.expect(&Msg::Start)?;
    if let Some(init) = l.init {
        init.after_start()?;
    }
    if nnp {
        super::seccomp::install_with_flags(l.seccomp.0, l.seccomp.1).map_err(|e| e.to_string())?;
    }
    match &slave {
        Some(s) => dup_stdio([s.as_raw_fd(); 3])?,
        None => dup_stdio(l.stdio)?,
    }
    let e = nix::unistd::execve(&exe_c, &args, &env).unwrap_err();
    Err(format!("{EXEC_ERROR_PREFIX}{}: {e}", exe.display()))
}

/// Opens a pty from `/dev/ptmx` of the current mount namespace (the container's own
/// devpts), sizes it, and for an init bind-mounts the slave onto `/dev/console`, as runc does.
fn open_pty(size: Option<(u16, u16)>, console: bool) -> Result<(OwnedFd, OwnedFd), String> {
    use nix::fcntl::OFlag;
    let err = |what: &str, e: nix::Error| format!("process.terminal: {what}: {e}");
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(|e| err("opening /dev/ptmx", e))?;
    nix::pty::grantpt(&master).map_err(|e| err("grantpt", e))?;
    nix::pty::unlockpt(&master).map_err(|e| err("unlockpt", e))?;
    let name = nix::pty::ptsname_r(&master).map_err(|e| err("ptsname", e))?;
    if let Some((rows, cols)) = size {
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize from the pointer, valid for the call.
        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ as _, &ws) };
    }
    let slave: OwnedFd = nix::fcntl::open(
        name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| err(&format!("opening {name}"), e))?;
    if console {
        let c = std::path::Path::new("/dev/console");
        if std::fs::symlink_metadata(c).is_err() {
            std::fs::File::create(c)
                .map_err(|e| format!("process.terminal: creating /dev/console: {e}"))?;
        }
        nix::mount::mount(
            Some(name.as_str()),
            c,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| err("bind-mounting the pty onto /dev/console", e))?;
    }
    Ok((master.into(), slave))
}

/// Signal dispositions and mask as a fresh process expects: the agent blocks SIGCHLD and
/// Rust ignores SIGPIPE, and both would otherwise survive `execve`.
fn reset_signals() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let dfl = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for sig in Signal::iterator() {
        if sig != Signal::SIGKILL && sig != Signal::SIGSTOP {
            // SAFETY: installing SIG_DFL involves no handler code.
            let _ = unsafe { sigaction(sig, &dfl) };
        }
    }
    let _ = SigSet::all().thread_unblock();
}

/// Makes `fds` the process's 0, 1 and 2 (even when they are already among 0-2).
fn dup_stdio(fds: [RawFd; 3]) -> Result<(), String> {
    // First move every source above 2 so that dup2 into 0-2 cannot clobber a later source.
    let mut high = [0; 3];
    for (i, fd) in fds.iter().enumerate() {
        // SAFETY: F_DUPFD_CLOEXEC duplicates an open fd; an invalid one gives EBADF.
        high[i] = unsafe { libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 3) };
        if high[i] < 0 {
            return Err(format!(
                "stdio: duplicating fd {fd}: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    for (target, fd) in high.iter().enumerate() {
        // SAFETY: dup2 onto 0-2 of this process; `fd` is open (checked above).
        if unsafe { libc::dup2(*fd, target as RawFd) } < 0 {
            return Err(format!("stdio: dup2: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// Opens `/dev/null` for streams the host did not ask for.
pub fn dev_null() -> std::io::Result<OwnedFd> {
    Ok(std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?
        .into())
}

/// The raw fd of an optional owned fd, or of `fallback`.
pub fn raw_or(fd: Option<&OwnedFd>, fallback: &OwnedFd) -> RawFd {
    fd.map_or(fallback.as_raw_fd(), AsRawFd::as_raw_fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxBuilder, LinuxNamespaceBuilder, SpecBuilder};

    #[test]
    fn namespaces_split_into_new_and_joined_in_a_safe_order() {
        let ns = |t, p: Option<&str>| {
            let mut b = LinuxNamespaceBuilder::default().typ(t);
            if let Some(p) = p {
                b = b.path(p);
            }
            b.build().unwrap()
        };
        let spec = SpecBuilder::default()
            .linux(
                LinuxBuilder::default()
                    .namespaces(vec![
                        ns(LinuxNamespaceType::Mount, Some("/proc/9/ns/mnt")),
                        ns(LinuxNamespaceType::Pid, None),
                        ns(LinuxNamespaceType::Network, Some("/proc/9/ns/net")),
                        ns(LinuxNamespaceType::User, Some("/proc/9/ns/user")),
                        ns(LinuxNamespaceType::Uts, None),
                    ])
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        let n = Namespaces::from_spec(&spec);
        assert_eq!(n.new, CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWUTS);
        let order: Vec<_> = n.join.iter().map(|(t, _)| *t).collect();
        assert_eq!(
            order,
            [
                LinuxNamespaceType::User,
                LinuxNamespaceType::Network,
                LinuxNamespaceType::Mount
            ]
        );
    }

    /// The intermediate's Pid and the container process's Ready race on one channel.
    #[test]
    fn setup_completes_whichever_of_pid_and_ready_comes_first() {
        for ready_first in [true, false] {
            let process = Process::default();
            let join = |_: u32| Ok(());
            let l = Launch {
                process: &process,
                namespaces: Namespaces::from_spec(&Spec::default()),
                id_maps: None,
                init: None,
                seccomp: (&[], 0),
                stdio: [0, 1, 2],
                terminal: None,
                join_cgroup: &join,
            };
            let (mut agent, mut child) = SyncChannel::pair().unwrap();
            let peer = std::thread::spawn(move || {
                child.expect(&Msg::Go).unwrap();
                let (a, b) = (Msg::Ready, Msg::Pid(77));
                let (first, second) = if ready_first { (a, b) } else { (b, a) };
                child.send(&first).unwrap();
                child.send(&second).unwrap();
                child
            });
            let r = supervise(&l, &mut agent, Pid::from_raw(1));
            assert!(
                matches!(r, Ok((77, None))),
                "ready first: {ready_first}: {r:?}"
            );
            drop(peer.join().unwrap());
        }
    }

    #[test]
    fn exec_joins_pid_namespace_for_children() {
        let n = Namespaces::of_pid(42, &[LinuxNamespaceType::Mount, LinuxNamespaceType::Pid]);
        assert_eq!(n.join[0].1, PathBuf::from("/proc/42/ns/pid_for_children"));
        assert_eq!(n.join[1].1, PathBuf::from("/proc/42/ns/mnt"));
    }
}
