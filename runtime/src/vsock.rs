//! The host side of host↔guest vsock: reaching a guest port through the VM's hybrid vsock
//! socket, the agent client on top of it, and the vhost-user vsock backend that QEMU uses.
//!
//! - [`connect`]: Firecracker's hybrid protocol: connect to the VM's Unix socket, write
//!   `CONNECT <port>\n`, wait for `OK <hostport>\n`; the stream is then the guest connection.
//!   Each failing step has its own [`ConnectError`] variant.
//! - [`AgentClient`]: moat-protocol frames over such a stream: `Hello` (version check) first,
//!   then requests with ids.
//! - [`VsockBackendThread`]: moat's own vsock device served over vhost-user to one QEMU, on
//!   a thread of the calling process (see `docs/vsock.md` for why a thread).

use std::io::{self, Read};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use moat_protocol::{
    read_frame, write_frame, ErrorReply, FrameError, Request, RequestEnvelope, Response,
    ResponseEnvelope, PROTOCOL_VERSION,
};
use moat_vmm::devices::virtio::vsock::vhost_user::{VhostUserVsockError, VhostUserVsockServer};
pub use moat_vmm::devices::virtio::vsock::MetricsSnapshot;

/// The longest answer to `CONNECT` accepted.
const MAX_ANSWER: usize = 32;

/// Reaching a guest port through the hybrid socket failed; the variant says at which step.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No socket file: the VM (or its vsock backend) is not running.
    #[error("vsock socket {0} does not exist (is the VM running?)")]
    SocketMissing(PathBuf),
    /// The socket exists but nobody serves it (a stale file), or connecting failed.
    #[error("connecting to the vsock socket {path}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The error (`ConnectionRefused` for a stale socket).
        #[source]
        source: io::Error,
    },
    /// The device closed the stream without `OK`: the guest reset the request (nothing
    /// listens on that port yet) or did not answer in the device's connect timeout.
    #[error("guest refused the connection to vsock port {port} (no listener there yet)")]
    Refused {
        /// The guest port.
        port: u32,
    },
    /// No answer within the caller's timeout.
    #[error("no answer from the guest for vsock port {port} within {timeout:?}")]
    Timeout {
        /// The guest port.
        port: u32,
        /// The timeout.
        timeout: Duration,
    },
    /// The device answered something other than `OK <port>`.
    #[error("unexpected answer to CONNECT {port}: {answer:?}")]
    BadAnswer {
        /// The guest port.
        port: u32,
        /// What came back.
        answer: String,
    },
    /// Reading or writing the stream failed.
    #[error("i/o on the vsock socket while connecting to port {port}")]
    Io {
        /// The guest port.
        port: u32,
        /// The error.
        #[source]
        source: io::Error,
    },
}

impl ConnectError {
    /// True for failures that go away once the guest is up: its device not ready yet or
    /// nothing listening yet. A boot loop retries these.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ConnectError::Refused { .. } | ConnectError::Timeout { .. }
        )
    }
}

/// Connects to guest port `port` through the hybrid vsock socket `uds`; returns the stream
/// (blocking, no timeouts set) once the guest has accepted, and the host-side port.
pub fn connect(
    uds: &Path,
    port: u32,
    timeout: Duration,
) -> Result<(UnixStream, u32), ConnectError> {
    let deadline = Instant::now() + timeout;
    let mut s = match UnixStream::connect(uds) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ConnectError::SocketMissing(uds.to_path_buf()))
        }
        Err(source) => {
            return Err(ConnectError::Connect {
                path: uds.to_path_buf(),
                source,
            })
        }
    };
    let io_err = |source| ConnectError::Io { port, source };
    io::Write::write_all(&mut s, format!("CONNECT {port}\n").as_bytes()).map_err(io_err)?;
    let mut answer = Vec::with_capacity(MAX_ANSWER);
    let mut byte = [0u8; 1];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ConnectError::Timeout { port, timeout });
        }
        s.set_read_timeout(Some(left)).map_err(io_err)?;
        match s.read(&mut byte) {
            Ok(0) => return Err(ConnectError::Refused { port }),
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) if answer.len() < MAX_ANSWER => answer.push(byte[0]),
            Ok(_) => {
                return Err(ConnectError::BadAnswer {
                    port,
                    answer: String::from_utf8_lossy(&answer).into_owned(),
                })
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(ConnectError::Timeout { port, timeout })
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // The device closed a stream it had not read to the end.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                return Err(ConnectError::Refused { port })
            }
            Err(e) => return Err(io_err(e)),
        }
    }
    let text = String::from_utf8_lossy(&answer).into_owned();
    let host_port = text
        .strip_prefix("OK ")
        .and_then(|p| p.trim().parse::<u32>().ok())
        .ok_or(ConnectError::BadAnswer { port, answer: text })?;
    s.set_read_timeout(None).map_err(io_err)?;
    Ok((s, host_port))
}

/// Talking to the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The connection could not be made.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// Framing or i/o on the connection failed (a timeout included).
    #[error("talking to the agent")]
    Frame(#[from] FrameError),
    /// The agent speaks another protocol version.
    #[error("protocol version mismatch: moat speaks {host}, the agent {agent}")]
    VersionMismatch {
        /// Ours.
        host: u32,
        /// The agent's.
        agent: u32,
    },
    /// The agent answered with an error.
    #[error("the agent refused {request}: {reply}")]
    Refused {
        /// Which request.
        request: &'static str,
        /// Its answer.
        reply: ErrorReply,
    },
    /// The agent answered with something that does not answer the request.
    #[error("unexpected answer to {request} (id {id}): {response:?}")]
    Unexpected {
        /// Which request.
        request: &'static str,
        /// The id the answer carried.
        id: u64,
        /// The answer.
        response: Box<Response>,
    },
    /// Setting socket timeouts failed.
    #[error("setting timeouts on the agent connection")]
    Io(#[source] io::Error),
}

/// A connection to the agent's control server, past the `Hello` exchange.
#[derive(Debug)]
pub struct AgentClient {
    stream: UnixStream,
    next_id: u64,
    agent_version: String,
    hello_rtt: Duration,
}

impl AgentClient {
    /// Connects to the agent on guest port `port` and says `Hello`; `timeout` bounds the
    /// connection and each request.
    pub fn connect(uds: &Path, port: u32, timeout: Duration) -> Result<Self, AgentError> {
        let (stream, _) = connect(uds, port, timeout)?;
        Self::hello(stream, timeout)
    }

    /// Says `Hello` on an open stream and checks the agent's protocol version.
    pub fn hello(stream: UnixStream, timeout: Duration) -> Result<Self, AgentError> {
        stream
            .set_read_timeout(Some(timeout))
            .and_then(|()| stream.set_write_timeout(Some(timeout)))
            .map_err(AgentError::Io)?;
        let mut c = Self {
            stream,
            next_id: 1,
            agent_version: String::new(),
            hello_rtt: Duration::ZERO,
        };
        let t = Instant::now();
        let r = c.call(
            "Hello",
            Request::Hello {
                version: PROTOCOL_VERSION,
            },
        )?;
        c.hello_rtt = t.elapsed();
        match r {
            Response::Hello {
                version,
                agent_version,
            } if version == PROTOCOL_VERSION => {
                c.agent_version = agent_version;
                Ok(c)
            }
            Response::Hello { version, .. } => Err(AgentError::VersionMismatch {
                host: PROTOCOL_VERSION,
                agent: version,
            }),
            other => Err(AgentError::Unexpected {
                request: "Hello",
                id: 1,
                response: Box::new(other),
            }),
        }
    }

    /// The agent's crate version, from `Hello`.
    pub fn agent_version(&self) -> &str {
        &self.agent_version
    }

    /// How long the `Hello` round trip took.
    pub fn hello_rtt(&self) -> Duration {
        self.hello_rtt
    }

    /// Says `Hello` again (allowed at any time) and returns the round trip: a latency probe.
    pub fn ping(&mut self) -> Result<Duration, AgentError> {
        let t = Instant::now();
        match self.call(
            "Hello",
            Request::Hello {
                version: PROTOCOL_VERSION,
            },
        )? {
            Response::Hello { .. } => Ok(t.elapsed()),
            other => Err(AgentError::Unexpected {
                request: "Hello",
                id: self.next_id - 1,
                response: Box::new(other),
            }),
        }
    }

    /// Asks the agent to power the VM off; returns once the agent has said `Ok`.
    pub fn shutdown(&mut self) -> Result<(), AgentError> {
        match self.call("Shutdown", Request::Shutdown)? {
            Response::Ok => Ok(()),
            other => Err(AgentError::Unexpected {
                request: "Shutdown",
                id: self.next_id - 1,
                response: Box::new(other),
            }),
        }
    }

    /// Sends one request and reads its answer; an `Error` answer becomes
    /// [`AgentError::Refused`] (or [`AgentError::VersionMismatch`]).
    pub fn call(&mut self, name: &'static str, request: Request) -> Result<Response, AgentError> {
        let id = self.next_id;
        self.next_id += 1;
        write_frame(&mut self.stream, &RequestEnvelope { id, request })?;
        let reply: ResponseEnvelope = read_frame(&mut self.stream)?;
        match reply.response {
            _ if reply.id != id => Err(AgentError::Unexpected {
                request: name,
                id: reply.id,
                response: Box::new(reply.response),
            }),
            Response::Error(reply) => Err(AgentError::Refused {
                request: name,
                reply,
            }),
            r => Ok(r),
        }
    }

    /// Changes the per-request timeout (`None`: wait forever, for `WaitProcess`).
    pub fn set_timeout(&mut self, t: Option<Duration>) -> Result<(), AgentError> {
        self.stream.set_read_timeout(t).map_err(AgentError::Io)
    }

    /// Reads the next pushed event on a connection that sent `SubscribeEvents`.
    pub fn read_event(&mut self) -> Result<moat_protocol::Event, AgentError> {
        let reply: ResponseEnvelope = read_frame(&mut self.stream)?;
        match reply.response {
            Response::Event(e) => Ok(e),
            other => Err(AgentError::Unexpected {
                request: "SubscribeEvents",
                id: reply.id,
                response: Box::new(other),
            }),
        }
    }
}

/// moat's vhost-user vsock backend for one QEMU, on its own thread.
#[derive(Debug)]
pub struct VsockBackendThread {
    socket: PathBuf,
    uds: PathBuf,
    handle: Option<JoinHandle<Result<MetricsSnapshot, VhostUserVsockError>>>,
}

impl VsockBackendThread {
    /// Binds the vhost-user socket `socket` and the hybrid socket `uds` (both ready when this
    /// returns, so QEMU can start at once) and serves one QEMU connection on a thread.
    pub fn start(socket: &Path, uds: &Path, guest_cid: u64) -> Result<Self, VhostUserVsockError> {
        let server = VhostUserVsockServer::bind(socket, uds, guest_cid)?;
        let handle = std::thread::Builder::new()
            .name("vsock-backend".into())
            .spawn(move || server.run())
            .map_err(|source| VhostUserVsockError::Setup {
                what: "spawning the backend thread",
                source,
            })?;
        Ok(Self {
            socket: socket.to_path_buf(),
            uds: uds.to_path_buf(),
            handle: Some(handle),
        })
    }

    /// The hybrid socket host processes connect to.
    pub fn uds(&self) -> &Path {
        &self.uds
    }

    /// True once the backend has stopped (QEMU disconnected, or it failed).
    pub fn is_finished(&self) -> bool {
        self.handle.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Waits for the backend to stop by itself (after QEMU exits); returns its counters.
    pub fn wait(&mut self, timeout: Duration) -> Result<MetricsSnapshot, BackendExitError> {
        let deadline = Instant::now() + timeout;
        while !self.is_finished() {
            if Instant::now() >= deadline {
                return Err(BackendExitError::Timeout(timeout));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        match self.handle.take().map(JoinHandle::join) {
            Some(Ok(Ok(m))) => Ok(m),
            Some(Ok(Err(e))) => Err(BackendExitError::Failed(e)),
            Some(Err(_)) => Err(BackendExitError::Panicked),
            None => Err(BackendExitError::AlreadyJoined),
        }
    }

    /// Stops a backend whose QEMU never connected or is gone: a throwaway connection ends
    /// its accept, and its hang-up ends the serving loop.
    pub fn stop(&mut self) {
        if !self.is_finished() {
            drop(UnixStream::connect(&self.socket));
        }
        let _ = self.wait(Duration::from_secs(2));
    }
}

impl Drop for VsockBackendThread {
    fn drop(&mut self) {
        if self.handle.is_some() {
            self.stop();
        }
    }
}

/// The backend thread did not end well.
#[derive(Debug, thiserror::Error)]
pub enum BackendExitError {
    /// It is still serving.
    #[error("the vsock backend did not stop within {0:?} after QEMU exited")]
    Timeout(Duration),
    /// It failed.
    #[error("the vsock backend failed")]
    Failed(#[source] VhostUserVsockError),
    /// It panicked.
    #[error("the vsock backend thread panicked")]
    Panicked,
    /// `wait` was called twice.
    #[error("the vsock backend was already waited for")]
    AlreadyJoined,
}

/// `moat vhost-user-vsock`: serves one QEMU on `socket` until it disconnects, like
/// virtiofsd. Prints one line on stdout once both sockets are bound (so a parent can start
/// QEMU), and the counters on stderr at the end.
pub fn serve_vhost_user_vsock(
    socket: &Path,
    uds: &Path,
    guest_cid: u64,
) -> Result<MetricsSnapshot, VhostUserVsockError> {
    let server = VhostUserVsockServer::bind(socket, uds, guest_cid)?;
    println!(
        "moat vhost-user-vsock: serving {} (guest CID {guest_cid}, hybrid socket {})",
        socket.display(),
        uds.display()
    );
    let m = server.run()?;
    eprintln!("moat vhost-user-vsock: QEMU disconnected; {m:?}");
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use moat_protocol::ErrorKind;
    use std::io::Write;
    use std::os::unix::net::UnixListener;

    fn dir(tag: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("moat-vsock-client-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A fake hybrid socket: answers each connection with `answer` (after reading the line).
    fn fake_device(uds: &Path, answer: &'static [u8]) -> std::thread::JoinHandle<String> {
        let l = UnixListener::bind(uds).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut line = Vec::new();
            let mut b = [0u8; 1];
            while s.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
                line.push(b[0]);
            }
            s.write_all(answer).unwrap();
            std::thread::sleep(Duration::from_millis(300));
            String::from_utf8(line).unwrap()
        })
    }

    #[test]
    fn each_failing_step_has_its_error() {
        let d = dir("errors");
        let uds = d.join("v.sock");
        let t = Duration::from_secs(2);
        assert!(matches!(
            connect(&uds, 1024, t),
            Err(ConnectError::SocketMissing(_))
        ));
        // A stale socket file nobody serves.
        drop(UnixListener::bind(&uds).unwrap());
        assert!(matches!(
            connect(&uds, 1024, t),
            Err(ConnectError::Connect { source, .. }) if source.kind() == io::ErrorKind::ConnectionRefused
        ));
        std::fs::remove_file(&uds).unwrap();
        // Closed without OK: refused (guest RST).
        let dev = fake_device(&uds, b"");
        let e = connect(&uds, 1024, t).unwrap_err();
        assert!(matches!(e, ConnectError::Refused { port: 1024 }), "{e}");
        assert!(e.is_transient());
        assert_eq!(dev.join().unwrap(), "CONNECT 1024");
        std::fs::remove_file(&uds).unwrap();
        // No answer in time.
        let dev = fake_device(&uds, b"OK");
        let e = connect(&uds, 5, Duration::from_millis(100)).unwrap_err();
        assert!(matches!(e, ConnectError::Timeout { port: 5, .. }), "{e}");
        dev.join().unwrap();
        std::fs::remove_file(&uds).unwrap();
        // Garbage.
        let dev = fake_device(&uds, b"NO WAY\n");
        let e = connect(&uds, 5, t).unwrap_err();
        assert!(matches!(e, ConnectError::BadAnswer { .. }), "{e}");
        assert!(!e.is_transient());
        dev.join().unwrap();
        std::fs::remove_file(&uds).unwrap();
        let dev = fake_device(&uds, b"OK 1073741824\n");
        let (_, hp) = connect(&uds, 5, t).unwrap();
        assert_eq!(hp, 1 << 30);
        dev.join().unwrap();
        std::fs::remove_dir_all(d).unwrap();
    }

    /// A fake agent on a socket pair: answers Hello with `version`, then Shutdown with Ok.
    fn fake_agent(version: u32) -> (UnixStream, std::thread::JoinHandle<()>) {
        let (host, mut guest) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            while let Ok(env) = read_frame::<_, RequestEnvelope>(&mut guest) {
                let response = match env.request {
                    Request::Hello { .. } => Response::Hello {
                        version,
                        agent_version: "9.9.9".into(),
                    },
                    Request::Shutdown => Response::Ok,
                    _ => Response::Error(ErrorReply::new(ErrorKind::Unsupported, "fake")),
                };
                write_frame(
                    &mut guest,
                    &ResponseEnvelope {
                        id: env.id,
                        response,
                    },
                )
                .unwrap();
            }
        });
        (host, t)
    }

    #[test]
    fn hello_checks_the_version_and_shutdown_needs_ok() {
        let (s, t) = fake_agent(PROTOCOL_VERSION);
        let mut c = AgentClient::hello(s, Duration::from_secs(2)).unwrap();
        assert_eq!(c.agent_version(), "9.9.9");
        assert!(c.ping().unwrap() < Duration::from_secs(2));
        c.shutdown().unwrap();
        drop(c);
        t.join().unwrap();
        let (s, t) = fake_agent(PROTOCOL_VERSION + 1);
        let e = AgentClient::hello(s, Duration::from_secs(2)).unwrap_err();
        assert!(matches!(e, AgentError::VersionMismatch { .. }), "{e}");
        t.join().unwrap();
    }

    #[test]
    fn agent_errors_and_silence_are_reported() {
        let (host, mut guest) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            let env: RequestEnvelope = read_frame(&mut guest).unwrap();
            let reply = ErrorReply::new(ErrorKind::VersionMismatch, "host speaks 1, agent 2");
            write_frame(
                &mut guest,
                &ResponseEnvelope {
                    id: env.id,
                    response: Response::Error(reply),
                },
            )
            .unwrap();
        });
        let e = AgentClient::hello(host, Duration::from_secs(2)).unwrap_err();
        assert!(
            matches!(&e, AgentError::Refused { request: "Hello", reply } if reply.kind == ErrorKind::VersionMismatch),
            "{e}"
        );
        t.join().unwrap();
        let (host, _guest) = UnixStream::pair().unwrap();
        let e = AgentClient::hello(host, Duration::from_millis(50)).unwrap_err();
        assert!(matches!(&e, AgentError::Frame(f) if f.is_timeout()), "{e}");
    }

    #[test]
    fn subcommand_serves_one_frontend_and_returns_when_it_leaves() {
        let d = dir("serve");
        let (vu, uds) = (d.join("vu.sock"), d.join("v.sock"));
        let t = {
            let (vu, uds) = (vu.clone(), uds.clone());
            std::thread::spawn(move || serve_vhost_user_vsock(&vu, &uds, 3))
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !(vu.exists() && uds.exists()) {
            assert!(Instant::now() < deadline, "sockets not bound");
            std::thread::sleep(Duration::from_millis(5));
        }
        // A frontend that connects and goes away, as QEMU does when it exits.
        drop(UnixStream::connect(&vu).unwrap());
        let m = t.join().unwrap().unwrap();
        assert_eq!(m.tx_packets, 0);
        assert!(!vu.exists() && !uds.exists(), "sockets removed at exit");
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn backend_thread_binds_before_returning_and_stops_without_qemu() {
        let d = dir("backend");
        let mut b = VsockBackendThread::start(&d.join("vu.sock"), &d.join("v.sock"), 3).unwrap();
        assert!(d.join("vu.sock").exists() && d.join("v.sock").exists());
        assert!(!b.is_finished());
        b.stop();
        assert!(b.is_finished());
        std::fs::remove_dir_all(d).unwrap();
    }
}
