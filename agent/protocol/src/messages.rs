//! The message types. One [`Request`] enum and one [`Response`] enum; later capabilities add
//! variants to them.

use serde::{Deserialize, Serialize};

use crate::container::*;

/// A request from the host, tagged with an id the reply repeats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestEnvelope {
    /// Chosen by the host; unique among the requests in flight on one connection.
    pub id: u64,
    /// What the host asks.
    pub request: Request,
}

/// The agent's reply to the request with the same id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseEnvelope {
    /// The id of the request this answers.
    pub id: u64,
    /// The answer.
    pub response: Response,
}

/// Everything the host can ask of the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// The first request on a connection: the host's protocol version.
    Hello {
        /// The host's [`crate::PROTOCOL_VERSION`].
        version: u32,
    },
    /// Sync the guest's filesystems and power the VM off. The agent replies `Ok` first.
    Shutdown,
    /// Create a container; replied with `Started` (its init's pid and stdio ports).
    CreateContainer(CreateContainer),
    /// Let a created container's init exec its program.
    StartContainer {
        /// Container id.
        id: String,
    },
    /// Start a new process in a running container; replied with `Started`.
    ExecProcess(ExecProcess),
    /// Send a signal to a process, or with `all` to every process of the container.
    SignalProcess {
        /// Which process (`all` ignores `exec_id`).
        process: ProcessRef,
        /// Signal number.
        signal: i32,
        /// Every process in the container's cgroup.
        all: bool,
    },
    /// Wait for a process to exit; replied with `Exited`.
    WaitProcess(ProcessRef),
    /// A container's state; replied with `State`.
    State {
        /// Container id.
        id: String,
    },
    /// The pids in a container; replied with `Processes`.
    ListProcesses {
        /// Container id.
        id: String,
    },
    /// cgroup statistics; replied with `Stats`.
    Stats {
        /// Container id.
        id: String,
    },
    /// Change a container's cgroup limits.
    UpdateResources {
        /// Container id.
        id: String,
        /// The new resources; absent fields are left as they are.
        resources: Box<LinuxResources>,
    },
    /// Freeze a container (cgroup freezer).
    PauseContainer {
        /// Container id.
        id: String,
    },
    /// Thaw a paused container.
    ResumeContainer {
        /// Container id.
        id: String,
    },
    /// Resize a process's pty.
    ResizeTty {
        /// Which process.
        process: ProcessRef,
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// Close a process's stdin (the process sees end of file).
    CloseStdin(ProcessRef),
    /// Forget an exec that has exited (its status, its stdio); the agent keeps each exec until
    /// this, or until too many exited ones pile up.
    DeleteProcess(ProcessRef),
    /// Remove a stopped container (or, with `force`, kill it first) and everything it made.
    DeleteContainer {
        /// Container id.
        id: String,
        /// Kill a running container first.
        force: bool,
    },
    /// Turn this connection into an event stream: after `Ok`, the agent sends
    /// `ResponseEnvelope { id, response: Response::Event(..) }` frames as things happen.
    SubscribeEvents,
}

/// Everything the agent can answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// Answer to `Hello` when the versions match.
    Hello {
        /// The agent's [`crate::PROTOCOL_VERSION`].
        version: u32,
        /// The agent's crate version, for logs and `moat version`.
        agent_version: String,
    },
    /// The request was carried out and has nothing to return.
    Ok,
    /// A process was created (`CreateContainer`, `ExecProcess`).
    Started(ProcessStarted),
    /// A process exited (`WaitProcess`).
    Exited {
        /// Exit status; 128+n for a death by signal n.
        status: i32,
    },
    /// A container's state.
    State(ContainerState),
    /// The guest pids of a container's processes.
    Processes(Vec<u32>),
    /// A container's cgroup statistics.
    Stats(Box<ContainerStats>),
    /// Something happened (event subscriptions only).
    Event(Event),
    /// The request failed.
    Error(ErrorReply),
}

/// A failed request: what kind of failure, and a message for a person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// The class of failure, for callers that branch on it.
    pub kind: ErrorKind,
    /// What went wrong, naming the field or object at fault.
    pub message: String,
}

impl ErrorReply {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)
    }
}

/// Classes of failure the agent reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The two sides speak different protocol versions.
    VersionMismatch,
    /// A request was malformed or named something invalid.
    InvalidArgument,
    /// The object named does not exist.
    NotFound,
    /// The object is in a state that does not allow the request.
    FailedPrecondition,
    /// The request is not known to or not supported by this agent.
    Unsupported,
    /// Anything else; the message says what.
    Internal,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{read_frame, write_frame};

    fn round_trip(request: Request) {
        let env = RequestEnvelope { id: 3, request };
        let mut wire = Vec::new();
        write_frame(&mut wire, &env).unwrap();
        let back: RequestEnvelope = read_frame(&mut wire.as_slice()).unwrap();
        assert_eq!(back, env);
    }

    #[test]
    fn container_requests_round_trip() {
        let spec = Spec::default();
        round_trip(Request::CreateContainer(CreateContainer {
            id: "c1".into(),
            spec: Box::new(spec.clone()),
            rootfs: "/run/moat/share/c1/rootfs".into(),
            stdio: StdioRequest {
                stdin: true,
                stdout: true,
                stderr: false,
            },
        }));
        round_trip(Request::ExecProcess(ExecProcess {
            id: "c1".into(),
            exec_id: "e1".into(),
            process: Box::new(spec.process().clone().unwrap()),
            stdio: StdioRequest::default(),
        }));
        let p = ProcessRef {
            id: "c1".into(),
            exec_id: Some("e1".into()),
        };
        round_trip(Request::SignalProcess {
            process: p.clone(),
            signal: 15,
            all: false,
        });
        round_trip(Request::WaitProcess(p.clone()));
        round_trip(Request::DeleteProcess(p.clone()));
        round_trip(Request::ResizeTty {
            process: p.clone(),
            rows: 24,
            cols: 80,
        });
        round_trip(Request::UpdateResources {
            id: "c1".into(),
            resources: Box::default(),
        });
        round_trip(Request::DeleteContainer {
            id: "c1".into(),
            force: true,
        });
    }

    #[test]
    fn container_responses_round_trip() {
        for response in [
            Response::Started(ProcessStarted {
                pid: 7,
                stdio: StdioPorts {
                    stdout: Some(2000),
                    ..Default::default()
                },
            }),
            Response::Exited { status: 137 },
            Response::State(ContainerState {
                id: "c".into(),
                status: ContainerStatus::Paused,
                pid: 9,
                exit_status: None,
            }),
            Response::Processes(vec![1, 2]),
            Response::Stats(Box::default()),
            Response::Event(Event::Oom { id: "c".into() }),
        ] {
            let env = ResponseEnvelope { id: 1, response };
            let mut wire = Vec::new();
            write_frame(&mut wire, &env).unwrap();
            let back: ResponseEnvelope = read_frame(&mut wire.as_slice()).unwrap();
            assert_eq!(back, env);
        }
    }
}
