//! The host side of a process's stdio: the caller's fds (pipes from conmon or a shim, or a
//! terminal) pumped to and from the guest streams the agent announced, or a host pty whose
//! master goes to `--console-socket` as runc sends it.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use moat_protocol::StdioPorts;

use crate::vsock;

/// A failure wiring stdio.
#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    /// Connecting a guest stream failed.
    #[error("connecting the {stream} stream: {source}")]
    Connect {
        /// Which stream.
        stream: &'static str,
        /// The error.
        source: vsock::ConnectError,
    },
    /// The console socket or pty failed.
    #[error("console: {0}")]
    Console(String),
}

/// How long a stream connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the host end of a terminal lives.
#[derive(Debug)]
pub enum TtyHost {
    /// A new pty whose master is sent to this `--console-socket`.
    ConsoleSocket(std::path::PathBuf),
    /// The caller's own terminal (fd 0 and 1), put in raw mode while the process runs.
    Inherit,
}

/// Running pumps; output pumps are joined by [`Pumps::finish`].
#[derive(Debug, Default)]
pub struct Pumps {
    outputs: Vec<JoinHandle<()>>,
    /// The pty (or own terminal) whose size is forwarded, when there is one.
    pub tty_size_fd: Option<Arc<OwnedFd>>,
    stop: Arc<AtomicBool>,
    restore: Option<(RawFd, nix::sys::termios::Termios)>,
}

fn dup_fd(fd: RawFd) -> std::io::Result<File> {
    // SAFETY: `fd` is one of the process's open stdio fds for the duration of the borrow.
    let b = unsafe { BorrowedFd::borrow_raw(fd) };
    Ok(File::from(b.try_clone_to_owned()?))
}

fn spawn_copy(
    name: &str,
    mut from: impl Read + Send + 'static,
    mut to: impl Write + Send + 'static,
    on_eof: impl FnOnce() + Send + 'static,
) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            moat_protocol::stream::pump(&mut from, &mut to);
            on_eof();
        })
        .expect("spawning a stdio pump thread")
}

fn connect(uds: &Path, port: u32, stream: &'static str) -> Result<UnixStream, StdioError> {
    vsock::connect(uds, port, CONNECT_TIMEOUT)
        .map(|(s, _)| s)
        .map_err(|source| StdioError::Connect { stream, source })
}

/// Connects the announced streams and starts pumping between them and `fds` (the caller's
/// stdin, stdout and stderr) or a terminal.
pub fn start(
    uds: &Path,
    ports: StdioPorts,
    fds: [RawFd; 3],
    tty: Option<TtyHost>,
) -> Result<Pumps, StdioError> {
    let mut pumps = Pumps::default();
    if let Some(port) = ports.tty {
        let stream = connect(uds, port, "tty")?;
        let (input, output): (File, File) = match tty {
            Some(TtyHost::ConsoleSocket(path)) => {
                let pty = nix::pty::openpty(None, None)
                    .map_err(|e| StdioError::Console(format!("openpty: {e}")))?;
                send_console(&path, &pty.master)?;
                let slave = Arc::new(pty.slave);
                pumps.tty_size_fd = Some(Arc::clone(&slave));
                let f = File::from(
                    slave
                        .try_clone()
                        .map_err(|e| StdioError::Console(e.to_string()))?,
                );
                (
                    f.try_clone()
                        .map_err(|e| StdioError::Console(e.to_string()))?,
                    f,
                )
            }
            _ => {
                // The caller's terminal: raw, so that keys reach the guest's line discipline.
                let fd0 = dup_fd(fds[0]).map_err(|e| StdioError::Console(e.to_string()))?;
                if let Ok(orig) = nix::sys::termios::tcgetattr(&fd0) {
                    let mut raw = orig.clone();
                    nix::sys::termios::cfmakeraw(&mut raw);
                    let _ = nix::sys::termios::tcsetattr(
                        &fd0,
                        nix::sys::termios::SetArg::TCSANOW,
                        &raw,
                    );
                    pumps.restore = Some((fds[0], orig));
                    pumps.tty_size_fd = Some(Arc::new(OwnedFd::from(
                        fd0.try_clone()
                            .map_err(|e| StdioError::Console(e.to_string()))?,
                    )));
                }
                (
                    fd0,
                    dup_fd(fds[1]).map_err(|e| StdioError::Console(e.to_string()))?,
                )
            }
        };
        let s_in = stream
            .try_clone()
            .map_err(|e| StdioError::Console(e.to_string()))?;
        // Input goes on until the process ends; it is not joined.
        spawn_copy("tty-in", input, s_in, || {});
        pumps
            .outputs
            .push(spawn_copy("tty-out", stream, output, || {}));
        return Ok(pumps);
    }
    if let Some(port) = ports.stdin {
        let stream = connect(uds, port, "stdin")?;
        let input = dup_fd(fds[0]).map_err(|e| StdioError::Console(e.to_string()))?;
        let s2 = stream
            .try_clone()
            .map_err(|e| StdioError::Console(e.to_string()))?;
        spawn_copy("stdin", input, stream, move || {
            let _ = s2.shutdown(std::net::Shutdown::Write);
        });
    }
    for (port, fd, name) in [
        (ports.stdout, fds[1], "stdout"),
        (ports.stderr, fds[2], "stderr"),
    ] {
        if let Some(port) = port {
            let stream = connect(uds, port, name)?;
            let out = dup_fd(fd).map_err(|e| StdioError::Console(e.to_string()))?;
            pumps.outputs.push(spawn_copy(name, stream, out, || {}));
        }
    }
    Ok(pumps)
}

impl Pumps {
    /// Waits (up to `timeout`) for the output streams to reach end of file, so that every
    /// byte the process wrote is delivered before its exit is reported; restores a raw
    /// terminal.
    pub fn finish(mut self, timeout: Duration) {
        self.stop.store(true, Ordering::Relaxed);
        let deadline = std::time::Instant::now() + timeout;
        for h in self.outputs.drain(..) {
            while !h.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        if let Some((fd, orig)) = self.restore.take() {
            // SAFETY: `fd` is still the process's stdin.
            let b = unsafe { BorrowedFd::borrow_raw(fd) };
            let _ = nix::sys::termios::tcsetattr(b, nix::sys::termios::SetArg::TCSANOW, &orig);
        }
    }

    /// A flag that is set once [`Pumps::finish`] starts (for resize watchers).
    pub fn stopped(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.stop)
    }
}

/// The window size of a terminal fd.
pub fn window_size(fd: RawFd) -> Option<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes a winsize into the pointer, which is valid for the call.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ as _, &mut ws) };
    (rc == 0 && ws.ws_row > 0).then_some((ws.ws_row, ws.ws_col))
}

/// Sends a pty master over `--console-socket` with SCM_RIGHTS, as runc does.
fn send_console(path: &Path, master: &OwnedFd) -> Result<(), StdioError> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let sock = UnixStream::connect(path).map_err(|e| {
        StdioError::Console(format!(
            "connecting to --console-socket {}: {e}",
            path.display()
        ))
    })?;
    let fds = [master.as_raw_fd()];
    let name = b"/dev/ptmx";
    let iov = [std::io::IoSlice::new(name)];
    sendmsg::<()>(
        sock.as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .map_err(|e| {
        StdioError::Console(format!("sending the pty master to {}: {e}", path.display()))
    })?;
    Ok(())
}
