//! The end-to-end tier's driver for the `moat` binary: a private `--root` per test, commands
//! with stdout and stderr captured apart, the state JSON, a console-socket receiver (runc's
//! `SCM_RIGHTS` protocol), and what a test left behind (state entries, processes, mounts,
//! this process's fds).
//!
//! ```text
//! $TMPDIR/moat-e2e-<tag>-<pid>-<n>/     the work directory, removed on drop
//!   root/                               --root
//!   <name>.out, <name>.err              stdio of commands whose sandbox outlives them
//! ```

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::bundle::Bundle;
use crate::host::{code_of, processes_mentioning, RunOutput, Running};

/// How long one `moat` command may take before the test fails (TCG boots are slow on a
/// loaded machine).
pub const TIMEOUT: Duration = Duration::from_secs(180);

/// The `moat` binary: `$MOAT_BIN`, else `/usr/local/bin/moat` (where scripts/build-guest.sh
/// installs the build of this tree).
pub fn moat_bin() -> PathBuf {
    let p = std::env::var_os("MOAT_BIN")
        .map_or_else(|| PathBuf::from("/usr/local/bin/moat"), PathBuf::from);
    assert!(
        p.is_file(),
        "{} is missing: run scripts/build-guest.sh, which installs it (or set MOAT_BIN)",
        p.display()
    );
    p
}

/// Applets linked in e2e bundles besides [`crate::bundle::APPLETS`].
pub const EXTRA_APPLETS: &[&str] = &["tail", "head", "wc", "tty", "nproc", "sed", "dd", "tr"];

/// A busybox bundle (see [`Bundle`]) whose process runs `args`, with a writable rootfs, no
/// terminal and a cgroup namespace; `config.json` is written. Change `spec` and call
/// [`Bundle::write`] again for more.
pub fn busybox_bundle(tag: &str, args: &[&str]) -> Bundle {
    let mut b = Bundle::new(tag).expect("creating the bundle");
    for a in EXTRA_APPLETS {
        let link = b.rootfs().join("bin").join(a);
        if link.symlink_metadata().is_err() {
            std::os::unix::fs::symlink("busybox", link).expect("linking an applet");
        }
    }
    b.args(args);
    let mut root = b.spec.root().clone().unwrap_or_default();
    root.set_readonly(Some(false));
    b.spec.set_root(Some(root));
    let mut p = b.spec.process().clone().unwrap_or_default();
    p.set_terminal(Some(false));
    b.spec.set_process(Some(p));
    let mut linux = b.spec.linux().clone().unwrap_or_default();
    let mut ns = linux.namespaces().clone().unwrap_or_default();
    if !ns
        .iter()
        .any(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Cgroup)
    {
        let mut cg = oci_spec::runtime::LinuxNamespace::default();
        cg.set_typ(oci_spec::runtime::LinuxNamespaceType::Cgroup);
        ns.push(cg);
    }
    linux.set_namespaces(Some(ns));
    b.spec.set_linux(Some(linux));
    b.write().expect("writing config.json");
    b
}

/// A bundle path as a command-line argument.
pub fn arg(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

/// One test's `moat`: its own `--root`, extra environment, and a work directory for logs.
#[derive(Debug)]
pub struct Moat {
    work: PathBuf,
    root: PathBuf,
    env: Vec<(String, String)>,
}

impl Moat {
    /// A fresh work directory and root (the root is left for `moat` to create).
    pub fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let work = std::env::temp_dir().join(format!("moat-e2e-{tag}-{}-{n}", std::process::id()));
        if work.exists() {
            std::fs::remove_dir_all(&work).expect("removing an old work directory");
        }
        std::fs::create_dir_all(&work).expect("creating the work directory");
        let root = work.join("root");
        Moat {
            work,
            root,
            env: Vec::new(),
        }
    }

    /// Sets an environment variable for every command.
    pub fn with_env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// `--root`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The work directory (holds the root and the logs).
    pub fn work(&self) -> &Path {
        &self.work
    }

    /// `moat --root ROOT args...`, with the extra environment.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(moat_bin());
        c.arg("--root").arg(&self.root).args(args);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    /// Runs a command to the end, stdio piped. Not for commands whose sandbox outlives them
    /// (`create`, `run -d`, `exec -d`): see [`Moat::run_logged`].
    pub fn run(&self, args: &[&str]) -> RunOutput {
        Running::spawn(self.command(args)).wait(TIMEOUT)
    }

    /// As [`Moat::run`], writing `input` to stdin first (then closing it).
    pub fn run_with_input(&self, args: &[&str], input: &[u8]) -> RunOutput {
        let mut r = Running::spawn(self.command(args));
        r.write_stdin(input);
        r.wait(TIMEOUT)
    }

    /// Runs a command with stdin from `/dev/null` and stdout and stderr to `<name>.out` and
    /// `<name>.err` in the work directory, which a sandbox it forks keeps writing to (the
    /// container's output); waits for the command only.
    pub fn run_logged(&self, args: &[&str], name: &str) -> RunOutput {
        let (out, err) = (self.log_path(name, "out"), self.log_path(name, "err"));
        let mut child = self
            .command(args)
            .stdin(Stdio::null())
            .stdout(File::create(&out).expect("creating the stdout log"))
            .stderr(File::create(&err).expect("creating the stderr log"))
            .spawn()
            .unwrap_or_else(|e| panic!("spawning moat {args:?}: {e}"));
        let start = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().expect("waiting for moat") {
                break s;
            }
            if start.elapsed() > TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "moat {args:?} did not exit within {TIMEOUT:?}; stderr:\n{}",
                    self.log(name, "err")
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        RunOutput {
            code: code_of(status),
            stdout: self.log(name, "out"),
            stderr: self.log(name, "err"),
        }
    }

    fn log_path(&self, name: &str, stream: &str) -> PathBuf {
        self.work.join(format!("{name}.{stream}"))
    }

    /// What a [`Moat::run_logged`] command (and the container behind it) wrote so far to
    /// `stream` (`out` or `err`).
    pub fn log(&self, name: &str, stream: &str) -> String {
        std::fs::read_to_string(self.log_path(name, stream)).unwrap_or_default()
    }

    /// Waits until `<name>.<stream>` contains `needle`; its content.
    pub fn wait_log(&self, name: &str, stream: &str, needle: &str) -> String {
        let start = Instant::now();
        loop {
            let s = self.log(name, stream);
            if s.contains(needle) {
                return s;
            }
            assert!(
                start.elapsed() < TIMEOUT,
                "{needle:?} never appeared in {name}.{stream}:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs a command that must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert_eq!(o.code, 0, "moat {args:?} failed: {o}");
        o.stdout
    }

    /// `moat create --bundle B ID`, which must succeed; stdio logged under the id.
    pub fn create(&self, bundle: &Bundle, id: &str) -> RunOutput {
        let o = self.run_logged(&["create", "--bundle", arg(bundle.path()), id], id);
        assert_eq!(o.code, 0, "moat create {id} failed: {o}");
        o
    }

    /// `moat run -d --bundle B ID`, which must succeed; stdio logged under the id.
    pub fn run_detached(&self, bundle: &Bundle, id: &str) -> RunOutput {
        let o = self.run_logged(&["run", "-d", "--bundle", arg(bundle.path()), id], id);
        assert_eq!(o.code, 0, "moat run -d {id} failed: {o}");
        o
    }

    /// `moat state ID` as JSON.
    pub fn state(&self, id: &str) -> Value {
        let out = self.ok(&["state", id]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("state is not JSON ({e}):\n{out}"))
    }

    /// The container's status.
    pub fn status(&self, id: &str) -> String {
        self.state(id)["status"]
            .as_str()
            .expect("status is a string")
            .to_string()
    }

    /// Waits until the container's status is `want`; the state.
    pub fn wait_status(&self, id: &str, want: &str) -> Value {
        let start = Instant::now();
        loop {
            let st = self.state(id);
            if st["status"] == want {
                return st;
            }
            assert!(
                start.elapsed() < TIMEOUT,
                "{id} never became {want}; state:\n{st:#}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the container is stopped and its exit status recorded; that status.
    /// (`state` may say `stopped`, which the agent reports, a moment before the sandbox
    /// process has written `exitStatus`.)
    pub fn wait_exit(&self, id: &str) -> i64 {
        let start = Instant::now();
        loop {
            let st = self.state(id);
            if st["status"] == "stopped" {
                if let Some(code) = st["exitStatus"].as_i64() {
                    return code;
                }
            }
            assert!(
                start.elapsed() < TIMEOUT,
                "{id} never stopped with an exit status; state:\n{st:#}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The names in the root directory (a state entry per container).
    pub fn entries(&self) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut v: Vec<String> = rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// What is left behind now: entries in the root, processes whose command line mentions
    /// the work directory or one of `also` (bundles), and mounts of this process's mount
    /// namespace under them.
    pub fn leftovers(&self, also: &[&Path]) -> Vec<String> {
        let mut left: Vec<String> = self
            .entries()
            .into_iter()
            .map(|e| format!("state entry {}", self.root.join(e).display()))
            .collect();
        let mut needles = vec![self.work.to_string_lossy().into_owned()];
        needles.extend(also.iter().map(|p| p.to_string_lossy().into_owned()));
        for n in &needles {
            for (pid, cmd) in processes_mentioning(n) {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                left.push(format!("process {pid} ({}): {cmd}", comm.trim()));
            }
            let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
            left.extend(
                mountinfo
                    .lines()
                    .filter(|l| l.contains(n.as_str()))
                    .map(|l| format!("mount {l}")),
            );
        }
        left
    }

    /// Fails the test if something is still left behind after a few seconds (processes
    /// exit shortly after the command that ended them).
    pub fn assert_clean(&self, also: &[&Path]) {
        let start = Instant::now();
        loop {
            let left = self.leftovers(also);
            if left.is_empty() {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "left behind:\n{}",
                left.join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `moat delete --force` of every container in the root.
    pub fn delete_all(&self) {
        for id in self.entries() {
            let _ = self
                .command(&["delete", "--force", &id])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Moat {
    fn drop(&mut self) {
        self.delete_all();
        // Whatever still runs from this work directory was started by this test.
        for (pid, _) in processes_mentioning(&self.work.to_string_lossy()) {
            // SAFETY: kill(2) with a pid found under /proc; no memory is involved.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

/// The number of open fds of this process.
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// Waits up to a few seconds for this process's fd count to come back to `before` (reader
/// threads close their pipes as they finish); the count then.
pub fn settled_fd_count(before: usize) -> usize {
    let start = Instant::now();
    loop {
        let n = fd_count();
        if n <= before || start.elapsed() > Duration::from_secs(5) {
            return n;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The error line of a failed command: its stderr must be one line (clap's usage errors may
/// add their `For more information, try '--help'.` hint).
pub fn one_line_error(o: &RunOutput) -> String {
    assert_ne!(o.code, 0, "expected a failure: {o}");
    let lines: Vec<&str> = o
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("For more information, try"))
        .collect();
    assert_eq!(lines.len(), 1, "expected a one-line error: {o}");
    lines[0].to_string()
}

/// A `--console-socket` receiver: accepts one connection and takes the pty master it
/// carries (`SCM_RIGHTS`), as a container engine does with runc.
#[derive(Debug)]
pub struct ConsoleSocket {
    path: PathBuf,
    rx: mpsc::Receiver<io::Result<File>>,
}

impl ConsoleSocket {
    /// Binds `path` and waits for the runtime in a thread (giving up after [`TIMEOUT`]).
    pub fn bind(path: PathBuf) -> Self {
        let l =
            UnixListener::bind(&path).unwrap_or_else(|e| panic!("binding {}: {e}", path.display()));
        l.set_nonblocking(true).expect("a non-blocking listener");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let start = Instant::now();
            let r = loop {
                match l.accept() {
                    Ok((s, _)) => break recv_fd(&s),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if start.elapsed() > TIMEOUT {
                            break Err(io::Error::other("nobody connected"));
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => break Err(e),
                }
            };
            let _ = tx.send(r);
        });
        ConsoleSocket { path, rx }
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The pty master the runtime sent.
    pub fn master(&self) -> File {
        match self.rx.recv_timeout(TIMEOUT) {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => panic!("receiving the pty master on {}: {e}", self.path.display()),
            Err(e) => panic!("no pty master on {}: {e}", self.path.display()),
        }
    }
}

/// Receives one message and the first fd it carries.
fn recv_fd(s: &UnixStream) -> io::Result<File> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    let mut buf = [0u8; 4096];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; 32];
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: the header points at `iov` and `control`, which outlive the call.
    let n = unsafe { libc::recvmsg(s.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `msg` was filled by recvmsg; the CMSG macros walk its control buffer.
    let mut c = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !c.is_null() {
        // SAFETY: `c` is a non-null header inside the control buffer.
        let h = unsafe { &*c };
        if h.cmsg_level == libc::SOL_SOCKET && h.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: an SCM_RIGHTS payload holds at least one int; the fd is now ours.
            let fd = unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>()) };
            // SAFETY: the kernel just installed `fd` in this process; nothing else owns it.
            return Ok(unsafe { File::from_raw_fd(fd) });
        }
        // SAFETY: as above.
        c = unsafe { libc::CMSG_NXTHDR(&msg, c) };
    }
    Err(io::Error::other(format!(
        "a {n}-byte message without SCM_RIGHTS"
    )))
}

/// Reads a pty master until `needle` shows up (or the other side closes); what was read.
pub fn read_until(master: &mut File, needle: &str, timeout: Duration) -> String {
    let start = Instant::now();
    let mut got = Vec::new();
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if text.contains(needle) {
            return text;
        }
        let left = timeout.saturating_sub(start.elapsed());
        assert!(
            !left.is_zero(),
            "{needle:?} never came on the terminal; got {text:?}"
        );
        let mut pfd = libc::pollfd {
            fd: master.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(1000) as i32) };
        if r <= 0 {
            continue;
        }
        let mut buf = [0u8; 4096];
        match master.read(&mut buf) {
            Ok(0) => return text,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            // EIO: the slave side is closed.
            Err(e) if e.raw_os_error() == Some(libc::EIO) => return text,
            Err(e) => panic!("reading the pty master: {e}"),
        }
    }
}

/// `MemTotal` of a `/proc/meminfo` text, in KiB.
pub fn mem_total_kib(meminfo: &str) -> u64 {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal in {meminfo:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_total_is_parsed() {
        assert_eq!(
            mem_total_kib("MemTotal:         243732 kB\nMemFree: 1 kB\n"),
            243732
        );
    }

    #[test]
    fn console_socket_receives_an_fd() {
        let dir = std::env::temp_dir().join(format!("moat-cs-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let cs = ConsoleSocket::bind(dir.join("cs.sock"));
        // Send one end of a pipe the way runc sends a pty master.
        let (r, w) = std::io::pipe().unwrap();
        let s = UnixStream::connect(cs.path()).unwrap();
        let fds = [w.as_raw_fd()];
        let mut data = *b"/dev/ptmx";
        let mut iov = libc::iovec {
            iov_base: data.as_mut_ptr().cast(),
            iov_len: data.len(),
        };
        let mut control = [0u64; 8];
        // SAFETY: plain data.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE is a pure computation.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(4) } as usize;
        // SAFETY: the control buffer is large enough for one int's header and payload.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(4) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>(), fds[0]);
        }
        // SAFETY: the header points at live buffers.
        assert!(unsafe { libc::sendmsg(s.as_raw_fd(), &msg, 0) } > 0);
        drop(w);
        let mut got = cs.master();
        std::io::Write::write_all(&mut got, b"hi").unwrap();
        drop(got);
        let mut text = String::new();
        std::io::Read::read_to_string(&mut { r }, &mut text).unwrap();
        assert_eq!(text, "hi");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
