//! The message types. One [`Request`] enum and one [`Response`] enum; later capabilities add
//! variants to them.

use serde::{Deserialize, Serialize};

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
