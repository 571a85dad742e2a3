//! The control server: vsock port 1024 (or `moat.port`), one thread per connection, one
//! request at a time per connection, answered in order.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use crate::container::manager::Manager;

use moat_protocol::{
    read_frame, write_frame, ErrorKind, ErrorReply, FrameError, Request, RequestEnvelope, Response,
    ResponseEnvelope, PROTOCOL_VERSION,
};
use nix::sys::socket::{
    accept, bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, VsockAddr,
};

/// What the server loop can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The listening socket could not be set up.
    #[error("listening on vsock port {port}: {source}")]
    Listen {
        /// The port.
        port: u32,
        /// The errno.
        source: nix::Error,
    },
}

/// What the connection handler wants the agent to do after replying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Keep serving.
    Continue,
    /// Close this connection.
    Close,
    /// End the VM.
    PowerOff,
}

/// Binds and listens on `port` on any CID.
pub fn listen_vsock(port: u32) -> Result<OwnedFd, ServerError> {
    let err = |source| ServerError::Listen { port, source };
    let fd = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(err)?;
    bind(fd.as_raw_fd(), &VsockAddr::new(libc::VMADDR_CID_ANY, port)).map_err(err)?;
    listen(&fd, Backlog::new(64).unwrap_or(Backlog::MAXCONN)).map_err(err)?;
    Ok(fd)
}

/// Accepts connections forever, serving each on its own thread.
pub fn serve(listener: OwnedFd, manager: Arc<Manager>) -> ! {
    loop {
        match accept(&listener) {
            Ok(conn) => {
                let m = Arc::clone(&manager);
                let spawned = std::thread::Builder::new()
                    .name("conn".into())
                    .spawn(move || {
                        let mut stream = std::fs::File::from(conn);
                        if handle_connection(&mut stream, &m) == After::PowerOff {
                            crate::info!("shutdown requested; powering off");
                            wait_sent(&stream, std::time::Duration::from_millis(500));
                            crate::init::power_off();
                        }
                    });
                if let Err(e) = spawned {
                    crate::error!("cannot start a connection thread: {e}");
                }
            }
            Err(nix::Error::EINTR) => {}
            Err(e) => {
                crate::error!("accept on the control socket: {e}");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }
}

/// Waits (bounded) until the socket's send queue is empty, so that the reply to `Shutdown`
/// reaches the host before the machine goes away.
fn wait_sent(stream: &std::fs::File, limit: std::time::Duration) {
    let start = std::time::Instant::now();
    loop {
        let mut queued: libc::c_int = 0;
        // SAFETY: SIOCOUTQ writes one int through the pointer, which is valid for the call.
        let rc = unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ as _, &mut queued) };
        if rc != 0 {
            // Not supported by this transport: give the reply a moment instead.
            std::thread::sleep(std::time::Duration::from_millis(20));
            return;
        }
        if queued == 0 || start.elapsed() >= limit {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// Serves one connection until the peer closes it, sends garbage, or asks to shut down.
pub fn handle_connection<S: Read + Write>(stream: &mut S, manager: &Arc<Manager>) -> After {
    let mut greeted = false;
    loop {
        let env: RequestEnvelope = match read_frame(stream) {
            Ok(env) => env,
            Err(FrameError::Closed) => return After::Close,
            Err(e) => {
                // The framing is lost: say why (best effort) and drop the connection.
                crate::warn!("dropping control connection: {e}");
                let reply = ResponseEnvelope {
                    id: 0,
                    response: Response::Error(ErrorReply::new(
                        ErrorKind::InvalidArgument,
                        format!("bad frame: {e}"),
                    )),
                };
                let _ = write_frame(stream, &reply);
                return After::Close;
            }
        };
        crate::debug!("request {}: {}", env.id, request_name(&env.request));
        if greeted && env.request == Request::SubscribeEvents {
            return stream_events(stream, env.id, manager);
        }
        let (response, after) = dispatch(env.request, &mut greeted, manager);
        let reply = ResponseEnvelope {
            id: env.id,
            response,
        };
        if let Err(e) = write_frame(stream, &reply) {
            crate::warn!("writing a reply: {e}");
            return After::Close;
        }
        if after != After::Continue {
            return after;
        }
    }
}

/// Answers one request. `Hello` must come first on every connection.
fn dispatch(request: Request, greeted: &mut bool, manager: &Arc<Manager>) -> (Response, After) {
    match request {
        Request::Hello { version } if version == PROTOCOL_VERSION => {
            *greeted = true;
            (
                Response::Hello {
                    version: PROTOCOL_VERSION,
                    agent_version: env!("CARGO_PKG_VERSION").to_string(),
                },
                After::Continue,
            )
        }
        Request::Hello { version } => (
            Response::Error(ErrorReply::new(
                ErrorKind::VersionMismatch,
                format!("host speaks protocol {version}, agent speaks {PROTOCOL_VERSION}"),
            )),
            After::Close,
        ),
        _ if !*greeted => (
            Response::Error(ErrorReply::new(
                ErrorKind::FailedPrecondition,
                "the first request on a connection must be Hello",
            )),
            After::Close,
        ),
        Request::Shutdown => (Response::Ok, After::PowerOff),
        other => (crate::rpc::dispatch(manager, other), After::Continue),
    }
}

/// Sends `Ok`, then every event as it happens, until the host goes away.
fn stream_events<S: Read + Write>(stream: &mut S, id: u64, manager: &Arc<Manager>) -> After {
    let events = manager.subscribe();
    if write_frame(
        stream,
        &ResponseEnvelope {
            id,
            response: Response::Ok,
        },
    )
    .is_err()
    {
        return After::Close;
    }
    while let Ok(ev) = events.recv() {
        if write_frame(
            stream,
            &ResponseEnvelope {
                id,
                response: Response::Event(ev),
            },
        )
        .is_err()
        {
            break;
        }
    }
    After::Close
}

/// The variant name of a request, for messages.
fn request_name(r: &Request) -> &'static str {
    match r {
        Request::Hello { .. } => "Hello",
        Request::Shutdown => "Shutdown",
        Request::CreateContainer(_) => "CreateContainer",
        Request::StartContainer { .. } => "StartContainer",
        Request::ExecProcess(_) => "ExecProcess",
        Request::SignalProcess { .. } => "SignalProcess",
        Request::WaitProcess(_) => "WaitProcess",
        Request::State { .. } => "State",
        Request::ListProcesses { .. } => "ListProcesses",
        Request::Stats { .. } => "Stats",
        Request::UpdateResources { .. } => "UpdateResources",
        Request::PauseContainer { .. } => "PauseContainer",
        Request::ResumeContainer { .. } => "ResumeContainer",
        Request::ResizeTty { .. } => "ResizeTty",
        Request::CloseStdin(_) => "CloseStdin",
        Request::DeleteProcess(_) => "DeleteProcess",
        Request::DeleteContainer { .. } => "DeleteContainer",
        Request::SubscribeEvents => "SubscribeEvents",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use moat_protocol::encode_frame;
    use std::io::Cursor;

    /// A duplex stream over byte buffers: reads from `input`, writes to `output`.
    struct Duplex {
        input: Cursor<Vec<u8>>,
        output: Vec<u8>,
    }

    impl Read for Duplex {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.input.read(buf)
        }
    }
    impl Write for Duplex {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.output.write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn run(reqs: &[Request]) -> (After, Vec<ResponseEnvelope>) {
        let mut input = Vec::new();
        for (i, r) in reqs.iter().enumerate() {
            input.extend(
                encode_frame(&RequestEnvelope {
                    id: i as u64 + 1,
                    request: r.clone(),
                })
                .unwrap(),
            );
        }
        run_bytes(input)
    }

    fn run_bytes(input: Vec<u8>) -> (After, Vec<ResponseEnvelope>) {
        let mut d = Duplex {
            input: Cursor::new(input),
            output: Vec::new(),
        };
        let manager = Manager::new(
            Arc::new(crate::container::syscall::RecordingSyscall::default()),
            Arc::new(crate::reaper::Reaper::default()),
            crate::container::manager::ManagerConfig {
                cgroup_root: None,
                inherit_stdio: false,
            },
        );
        let after = handle_connection(&mut d, &manager);
        let mut out = d.output.as_slice();
        let mut replies = Vec::new();
        while !out.is_empty() {
            replies.push(read_frame(&mut out).unwrap());
        }
        (after, replies)
    }

    #[test]
    fn hello_then_shutdown() {
        let (after, replies) = run(&[
            Request::Hello {
                version: PROTOCOL_VERSION,
            },
            Request::Shutdown,
        ]);
        assert_eq!(after, After::PowerOff);
        assert_eq!(replies.len(), 2);
        assert!(
            matches!(&replies[0].response, Response::Hello { version, .. } if *version == PROTOCOL_VERSION)
        );
        assert_eq!(replies[0].id, 1);
        assert_eq!(
            replies[1],
            ResponseEnvelope {
                id: 2,
                response: Response::Ok
            }
        );
    }

    #[test]
    fn version_mismatch_is_an_error_and_closes() {
        let (after, replies) = run(&[Request::Hello { version: 999 }, Request::Shutdown]);
        assert_eq!(after, After::Close);
        assert_eq!(replies.len(), 1);
        assert!(
            matches!(&replies[0].response, Response::Error(e) if e.kind == ErrorKind::VersionMismatch)
        );
    }

    #[test]
    fn requests_before_hello_are_refused() {
        let (after, replies) = run(&[Request::Shutdown]);
        assert_eq!(after, After::Close);
        assert!(
            matches!(&replies[0].response, Response::Error(e) if e.kind == ErrorKind::FailedPrecondition)
        );
    }

    #[test]
    fn garbage_closes_the_connection_with_an_error() {
        let mut input = 5u32.to_be_bytes().to_vec();
        input.extend_from_slice(b"{{{{{");
        let (after, replies) = run_bytes(input);
        assert_eq!(after, After::Close);
        assert!(
            matches!(&replies[0].response, Response::Error(e) if e.kind == ErrorKind::InvalidArgument)
        );
        let (after, _) = run_bytes(u32::MAX.to_be_bytes().to_vec());
        assert_eq!(after, After::Close);
    }

    #[test]
    fn container_requests_reach_the_manager() {
        let (after, replies) = run(&[
            Request::Hello {
                version: PROTOCOL_VERSION,
            },
            Request::State { id: "nope".into() },
            Request::StartContainer { id: "../x".into() },
        ]);
        assert_eq!(after, After::Close);
        assert!(
            matches!(&replies[1].response, Response::Error(e) if e.kind == ErrorKind::NotFound),
            "{replies:?}"
        );
        assert!(
            matches!(&replies[2].response, Response::Error(e) if e.kind == ErrorKind::NotFound)
        );
    }

    #[test]
    fn clean_close_is_not_an_error() {
        let (after, replies) = run(&[]);
        assert_eq!(after, After::Close);
        assert!(replies.is_empty());
    }
}
