//! A process's stdio between containerd's fifos and the guest's vsock streams.
//!
//! containerd hands the shim fifo paths. Output fifos are opened read-write, so the open never
//! blocks and a client that goes away does not make writes fail; they are closed once the
//! guest stream ends, which is how containerd's readers see end of file. The stdin fifo is
//! opened for reading on the pump's own thread (the open waits for containerd's writer) and
//! read with `poll` next to a stop pipe, so that `CloseIO`, an exit or a guest that dies ends
//! the pump: no thread outlives its process, and the shim does not grow with each exec.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use moat_protocol::{StdioPorts, StdioRequest};

use crate::vsock;

/// A failure wiring stdio.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// A fifo could not be opened.
    #[error("opening the {stream} fifo {path}: {source}")]
    Fifo {
        /// Which stream.
        stream: &'static str,
        /// Its path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A guest stream could not be connected.
    #[error("connecting the guest's {stream} stream: {source}")]
    Connect {
        /// Which stream.
        stream: &'static str,
        /// The error.
        source: vsock::ConnectError,
    },
    /// A pipe, clone or thread could not be made.
    #[error("setting up the {0} pump: {1}")]
    Setup(&'static str, std::io::Error),
}

/// The fifo paths containerd gave for a process (empty: not connected).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stdio {
    /// stdin fifo.
    pub stdin: String,
    /// stdout fifo.
    pub stdout: String,
    /// stderr fifo.
    pub stderr: String,
    /// A pty instead of pipes.
    pub terminal: bool,
}

impl Stdio {
    /// The streams to ask the agent for.
    pub fn request(&self) -> StdioRequest {
        StdioRequest {
            stdin: !self.stdin.is_empty(),
            stdout: !self.stdout.is_empty(),
            stderr: !self.stderr.is_empty() && !self.terminal,
        }
    }
}

/// The pumps of one process.
#[derive(Debug, Default)]
pub struct Pumps {
    outputs: Vec<JoinHandle<()>>,
    /// Clones of the guest streams, to end blocked reads.
    streams: Vec<UnixStream>,
    stdin: Option<StdinPump>,
}

#[derive(Debug)]
struct StdinPump {
    stop: Option<OwnedFd>,
    path: PathBuf,
    thread: JoinHandle<()>,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

fn open_output(stream: &'static str, path: &str) -> Result<File, IoError> {
    std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .open(path)
        .map_err(|source| IoError::Fifo {
            stream,
            path: path.into(),
            source,
        })
}

fn connect(uds: &Path, port: u32, stream: &'static str) -> Result<UnixStream, IoError> {
    vsock::connect(uds, port, CONNECT_TIMEOUT)
        .map(|(s, _)| s)
        .map_err(|source| IoError::Connect { stream, source })
}

fn copy_out(
    name: &'static str,
    mut from: UnixStream,
    mut to: File,
) -> Result<JoinHandle<()>, IoError> {
    std::thread::Builder::new()
        .name(format!("io-{name}"))
        .spawn(move || {
            moat_protocol::stream::pump(&mut from, &mut to);
        })
        .map_err(|e| IoError::Setup(name, e))
}

/// Connects the announced guest streams to the fifos and starts the pumps.
pub fn start(uds: &Path, ports: StdioPorts, stdio: &Stdio) -> Result<Pumps, IoError> {
    let mut pumps = Pumps::default();
    let setup = |what| move |e| IoError::Setup(what, e);
    if let Some(port) = ports.tty {
        let stream = connect(uds, port, "tty")?;
        if !stdio.stdout.is_empty() {
            let out = open_output("stdout", &stdio.stdout)?;
            let from = stream.try_clone().map_err(setup("tty"))?;
            pumps.outputs.push(copy_out("tty", from, out)?);
        }
        if !stdio.stdin.is_empty() {
            let to = stream.try_clone().map_err(setup("tty"))?;
            pumps.stdin = Some(start_stdin(&stdio.stdin, to, false)?);
        }
        pumps.streams.push(stream);
        return Ok(pumps);
    }
    for (port, path, name) in [
        (ports.stdout, &stdio.stdout, "stdout"),
        (ports.stderr, &stdio.stderr, "stderr"),
    ] {
        if let Some(port) = port {
            let out = open_output(name, path)?;
            let stream = connect(uds, port, name)?;
            pumps.streams.push(stream.try_clone().map_err(setup(name))?);
            pumps.outputs.push(copy_out(name, stream, out)?);
        }
    }
    if let Some(port) = ports.stdin {
        let stream = connect(uds, port, "stdin")?;
        pumps
            .streams
            .push(stream.try_clone().map_err(setup("stdin"))?);
        pumps.stdin = Some(start_stdin(&stdio.stdin, stream, true)?);
    }
    Ok(pumps)
}

fn start_stdin(path: &str, to: UnixStream, eof_closes: bool) -> Result<StdinPump, IoError> {
    let (stop_r, stop_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| IoError::Setup("stdin", e.into()))?;
    let path = PathBuf::from(path);
    let p = path.clone();
    let thread = std::thread::Builder::new()
        .name("io-stdin".into())
        .spawn(move || {
            pump_stdin(&p, &stop_r, &to);
            if eof_closes {
                let _ = to.shutdown(std::net::Shutdown::Write);
            }
        })
        .map_err(|e| IoError::Setup("stdin", e))?;
    Ok(StdinPump {
        stop: Some(stop_w),
        path,
        thread,
    })
}

/// Copies the stdin fifo to the guest until end of file or a byte on `stop`.
fn pump_stdin(path: &Path, stop: &OwnedFd, mut to: &UnixStream) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    // Blocks until containerd opens its end; `StdinPump::stop` unblocks it.
    let Ok(mut fifo) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
    else {
        return;
    };
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let mut fds = [
            PollFd::new(fifo.as_fd(), PollFlags::POLLIN),
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
        }
        if fds[1].any().unwrap_or(true) {
            return;
        }
        match fifo.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

impl StdinPump {
    /// Ends the pump: a byte on the stop pipe, and a writer that comes and goes in case the
    /// thread still waits in `open` for containerd's writer.
    fn stop(mut self) {
        drop(self.stop.take());
        let deadline = Instant::now() + Duration::from_secs(2);
        while !self.thread.is_finished() && Instant::now() < deadline {
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open(&self.path);
            std::thread::sleep(Duration::from_millis(5));
        }
        if self.thread.is_finished() {
            let _ = self.thread.join();
        }
    }
}

impl Pumps {
    /// Stops copying stdin (`CloseIO`): the process sees end of file.
    pub fn close_stdin(&mut self) {
        if let Some(s) = self.stdin.take() {
            s.stop();
        }
    }

    /// Waits up to `timeout` for the guest's output streams to end, so that every byte the
    /// process wrote reaches the fifos before its exit is reported; then ends everything.
    pub fn finish(mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for h in &self.outputs {
            while !h.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        self.abort();
    }

    /// Ends every pump now (the guest is gone or the process deleted).
    pub fn abort(&mut self) {
        for s in self.streams.drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        self.close_stdin();
        for h in self.outputs.drain(..) {
            let deadline = Instant::now() + Duration::from_secs(1);
            while !h.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            if h.is_finished() {
                let _ = h.join();
            }
        }
    }
}

impl Drop for Pumps {
    fn drop(&mut self) {
        self.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fifo(dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::S_IRWXU).unwrap();
        p
    }

    #[test]
    fn stdin_pump_copies_until_eof_and_stops_on_request() {
        let d = crate::boot::TempDir::new("shimio").unwrap();
        let p = fifo(&d.0, "in");
        let (host, mut guest) = UnixStream::pair().unwrap();
        let pump = start_stdin(p.to_str().unwrap(), host, true).unwrap();
        let mut w = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        w.write_all(b"hello").unwrap();
        drop(w);
        let mut got = String::new();
        guest.read_to_string(&mut got).unwrap();
        assert_eq!(got, "hello");
        pump.stop();
        // Never opened by a writer: stop still ends the thread (it waits in open).
        let p2 = fifo(&d.0, "in2");
        let (host, _guest) = UnixStream::pair().unwrap();
        let pump = start_stdin(p2.to_str().unwrap(), host, true).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let t = Instant::now();
        pump.stop();
        assert!(t.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn a_writer_that_stays_open_does_not_keep_the_pump() {
        let d = crate::boot::TempDir::new("shimio").unwrap();
        let p = fifo(&d.0, "in");
        let (host, _guest) = UnixStream::pair().unwrap();
        let pump = start_stdin(p.to_str().unwrap(), host, true).unwrap();
        let _w = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let t = Instant::now();
        pump.stop();
        assert!(t.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn output_reaches_the_fifo_and_ends_with_the_stream() {
        let d = crate::boot::TempDir::new("shimio").unwrap();
        let p = fifo(&d.0, "out");
        let mut reader = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&p)
            .unwrap();
        let out = open_output("stdout", p.to_str().unwrap()).unwrap();
        let (guest, host) = UnixStream::pair().unwrap();
        let h = copy_out("stdout", host, out).unwrap();
        (&guest).write_all(b"bytes").unwrap();
        drop(guest);
        h.join().unwrap();
        let mut got = Vec::new();
        let _ = reader.read_to_end(&mut got);
        assert_eq!(got, b"bytes");
        assert_eq!(
            Stdio {
                stdin: String::new(),
                stdout: "o".into(),
                stderr: "e".into(),
                terminal: true
            }
            .request(),
            StdioRequest {
                stdin: false,
                stdout: true,
                stderr: false
            }
        );
    }
}
