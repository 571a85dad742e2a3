//! A container process's stdio: pipes (or a pty when `terminal` is true) on the guest side,
//! and vsock streams the host connects to on ports the agent announces.
//!
//! Each pump copies through a fixed 64 KiB buffer, so a slow reader on the host stops the
//! pump, which stops reading the pipe, which blocks the process: back-pressure instead of
//! memory growth. Output written just before a process exits stays in the pipe until the
//! host connects and reads it, so nothing is lost.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use moat_protocol::{StdioPorts, StdioRequest};
use nix::sys::socket::{shutdown, Shutdown};

/// How long the agent waits for the host to connect an announced stream.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// The first port handed out for stdio streams.
const FIRST_STDIO_PORT: u32 = 0x1_0000;
static NEXT_PORT: AtomicU32 = AtomicU32::new(FIRST_STDIO_PORT);

/// A failure setting up stdio.
#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    /// A pipe, pty or listening socket could not be made.
    #[error("stdio: {what}: {source}")]
    Setup {
        /// What was being made.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
}

fn setup(what: &'static str) -> impl FnOnce(nix::Error) -> StdioError {
    move |e| StdioError::Setup {
        what,
        source: e.into(),
    }
}

/// The guest side of a process's stdio.
#[derive(Debug)]
pub struct ProcessIo {
    /// What the child gets as 0, 1, 2. The agent must close them ([`Self::close_child_ends`])
    /// once the child holds its copies: a pipe reaches end of file, and a pty master reads
    /// EIO, only when no writer or slave is left open anywhere.
    child: Vec<OwnedFd>,
    /// The announced ports.
    pub ports: StdioPorts,
    /// The pty master, for resizes (set once the container process has sent it).
    master: Mutex<Option<Arc<File>>>,
    /// Hands the master to the tty pump.
    master_tx: Mutex<Option<std::sync::mpsc::Sender<Arc<File>>>>,
    /// The agent's end of the stdin pipe, taken by `close_stdin`.
    stdin: Arc<Mutex<Option<File>>>,
    /// Held while the process is known: dropping it (a launch that failed, a deleted exec or
    /// container) wakes pumps still waiting for the host, which then close their listener
    /// and pipe at once rather than after [`CONNECT_TIMEOUT`].
    _abandon: Option<OwnedFd>,
}

/// The pumps' side of [`ProcessIo`]'s abandon pipe: readable (end of file) once it is dropped.
type Abandoned = Arc<OwnedFd>;

fn abandon_pipe() -> Result<(Abandoned, OwnedFd), StdioError> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(setup("pipe"))?;
    Ok((Arc::new(r), w))
}

impl ProcessIo {
    /// Makes the pipes or pty, listens on fresh ports and starts the pumps, which wait for
    /// the host to connect.
    pub fn new(
        req: StdioRequest,
        terminal: bool,
        size: Option<(u16, u16)>,
    ) -> Result<Self, StdioError> {
        let null = || -> Result<OwnedFd, StdioError> {
            super::process::dev_null().map_err(|source| StdioError::Setup {
                what: "opening /dev/null",
                source,
            })
        };
        let stdin_slot = Arc::new(Mutex::new(None));
        let (abandoned, abandon) = abandon_pipe()?;
        if terminal {
            // The pty is opened by the container process from the container's own
            // /dev/ptmx (so that it is /dev/pts/N and /dev/console there, as with runc); its
            // master arrives later through `set_master`.
            let _ = size;
            let (tx, rx) = std::sync::mpsc::channel();
            let port = listen_and_pump_tty(rx, abandoned)?;
            return Ok(Self {
                child: Vec::new(),
                ports: StdioPorts {
                    tty: Some(port),
                    ..Default::default()
                },
                master: Mutex::new(None),
                master_tx: Mutex::new(Some(tx)),
                stdin: stdin_slot,
                _abandon: Some(abandon),
            });
        }
        let mut ports = StdioPorts::default();
        let stdin_fd = if req.stdin {
            let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(setup("pipe"))?;
            *stdin_slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(File::from(w));
            ports.stdin = Some(listen_and_pump_in(
                Arc::clone(&stdin_slot),
                Arc::clone(&abandoned),
            )?);
            r
        } else {
            null()?
        };
        let out = |want: bool, port: &mut Option<u32>| -> Result<OwnedFd, StdioError> {
            if !want {
                return null();
            }
            let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(setup("pipe"))?;
            *port = Some(listen_and_pump_out(File::from(r), Arc::clone(&abandoned))?);
            Ok(w)
        };
        let stdout_fd = out(req.stdout, &mut ports.stdout)?;
        let stderr_fd = out(req.stderr, &mut ports.stderr)?;
        Ok(Self {
            child: vec![stdin_fd, stdout_fd, stderr_fd],
            ports,
            master: Mutex::new(None),
            master_tx: Mutex::new(None),
            stdin: stdin_slot,
            _abandon: Some(abandon),
        })
    }

    /// Stdio that is the agent's own 0, 1 and 2, duplicated (host mode: tests and the
    /// benchmark run the container code on a host with the caller's terminal or pipes).
    pub fn inherit() -> Result<Self, StdioError> {
        let dup = |fd: RawFd| -> Result<OwnedFd, StdioError> {
            // SAFETY: 0-2 are open for the duration of the borrow.
            let b = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            b.try_clone_to_owned().map_err(|source| StdioError::Setup {
                what: "duplicating stdio",
                source,
            })
        };
        Ok(Self {
            child: vec![dup(0)?, dup(1)?, dup(2)?],
            ports: StdioPorts::default(),
            master: Mutex::new(None),
            master_tx: Mutex::new(None),
            stdin: Arc::new(Mutex::new(None)),
            _abandon: None,
        })
    }

    /// Closes the agent's copies of the child's ends (after the child has been forked).
    pub fn close_child_ends(&mut self) {
        self.child.clear();
    }

    /// The raw fds for the child (meaningless after [`Self::close_child_ends`]).
    /// A terminal process has none here (-1): it uses the pty it opens itself.
    pub fn child_raw(&self) -> [RawFd; 3] {
        let fd = |i: usize| self.child.get(i).map_or(-1, |f| f.as_raw_fd());
        [fd(0), fd(1), fd(2)]
    }

    /// Whether the process has a terminal (its pty is opened by the process itself).
    pub fn is_terminal(&self) -> bool {
        self.master_tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
            || self
                .master
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some()
    }

    /// Takes the pty master the container process opened, and starts pumping it.
    pub fn set_master(&self, master: OwnedFd) {
        let m = Arc::new(File::from(master));
        *self.master.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::clone(&m));
        if let Some(tx) = self
            .master_tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = tx.send(m);
        }
    }

    /// Closes the process's stdin (it reads end of file once the pipe drains).
    pub fn close_stdin(&self) {
        self.stdin.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// Sets the pty's window size.
    pub fn resize(&self, rows: u16, cols: u16) -> std::io::Result<()> {
        let guard = self.master.lock().unwrap_or_else(|e| e.into_inner());
        let Some(m) = guard.as_ref() else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the process has no terminal",
            ));
        };
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize from the pointer, which is valid for the call.
        let rc = unsafe { libc::ioctl(m.as_raw_fd(), libc::TIOCSWINSZ as _, &ws) };
        nix::errno::Errno::result(rc).map(drop).map_err(Into::into)
    }
}

/// Listens on a fresh port; returns the port and the listener.
fn listen() -> Result<(u32, OwnedFd), StdioError> {
    for _ in 0..64 {
        let port = NEXT_PORT.fetch_add(1, Ordering::Relaxed);
        match crate::server::listen_vsock(port) {
            Ok(l) => return Ok((port, l)),
            Err(crate::server::ServerError::Listen {
                source: nix::Error::EADDRINUSE,
                ..
            }) => continue,
            Err(crate::server::ServerError::Listen { source, .. }) => {
                return Err(StdioError::Setup {
                    what: "listening for a stdio stream",
                    source: source.into(),
                })
            }
        }
    }
    Err(StdioError::Setup {
        what: "finding a free stdio port",
        source: std::io::ErrorKind::AddrInUse.into(),
    })
}

/// Waits (bounded) for the host to connect to `listener`; `None` at the timeout or once
/// the process is abandoned.
fn accept_one(listener: OwnedFd, abandoned: &Abandoned) -> Option<File> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let deadline = std::time::Instant::now() + CONNECT_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            crate::warn!("the host did not connect a stdio stream in {CONNECT_TIMEOUT:?}");
            return None;
        }
        let mut fds = [
            PollFd::new(listener.as_fd(), PollFlags::POLLIN),
            PollFd::new(abandoned.as_fd(), PollFlags::POLLIN),
        ];
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        match poll(
            &mut fds,
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
        ) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return None,
            Ok(_) => {}
        }
        let ready = |f: &PollFd<'_>| f.revents().is_some_and(|r| !r.is_empty());
        if ready(&fds[1]) {
            return None;
        }
        if ready(&fds[0]) {
            return nix::sys::socket::accept(&listener).ok().map(File::from);
        }
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) {
    if let Err(e) = std::thread::Builder::new().name(name.into()).spawn(f) {
        crate::error!("cannot start a {name} thread: {e}");
    }
}

fn listen_and_pump_out(mut pipe: File, abandoned: Abandoned) -> Result<u32, StdioError> {
    let (port, listener) = listen()?;
    spawn("stdout-pump", move || {
        let Some(mut conn) = accept_one(listener, &abandoned) else {
            return;
        };
        copy(&mut pipe, &mut conn);
        let _ = shutdown(conn.as_raw_fd(), Shutdown::Write);
    });
    Ok(port)
}

fn listen_and_pump_in(
    slot: Arc<Mutex<Option<File>>>,
    abandoned: Abandoned,
) -> Result<u32, StdioError> {
    let (port, listener) = listen()?;
    spawn("stdin-pump", move || {
        let Some(mut conn) = accept_one(listener, &abandoned) else {
            slot.lock().unwrap_or_else(|e| e.into_inner()).take();
            return;
        };
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match conn.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut guard = slot.lock().unwrap_or_else(|e| e.into_inner());
            let Some(pipe) = guard.as_mut() else { break };
            if pipe.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        // End of the host's stream: the process sees end of file.
        slot.lock().unwrap_or_else(|e| e.into_inner()).take();
    });
    Ok(port)
}

fn listen_and_pump_tty(
    master: std::sync::mpsc::Receiver<Arc<File>>,
    abandoned: Abandoned,
) -> Result<u32, StdioError> {
    let (port, listener) = listen()?;
    spawn("tty-pump", move || {
        let Some(conn) = accept_one(listener, &abandoned) else {
            return;
        };
        let Ok(master) = master.recv_timeout(CONNECT_TIMEOUT) else {
            return;
        };
        let Ok(mut conn_in) = conn.try_clone() else {
            return;
        };
        let m_in = Arc::clone(&master);
        spawn("tty-in-pump", move || {
            let mut m = &*m_in;
            copy(&mut conn_in, &mut m);
        });
        let mut m = &*master;
        let mut conn = conn;
        copy(&mut m, &mut conn);
        let _ = shutdown(conn.as_raw_fd(), Shutdown::Write);
    });
    Ok(port)
}

fn copy(from: &mut impl Read, to: &mut impl Write) {
    moat_protocol::stream::pump(from, to);
}
