//! The contract between the moat runtime on the host and `moat-agent` inside the guest.
//!
//! Both sides exchange *frames*: a `u32` big-endian length followed by that many bytes of
//! one serde_json message. A frame whose length exceeds [`MAX_FRAME_LEN`] is refused before
//! any of its body is read, so a hostile peer cannot make the reader allocate more than that.
//!
//! The host sends [`RequestEnvelope`]s (a request id and a [`Request`]); the agent answers
//! each with a [`ResponseEnvelope`] carrying the same id. The first exchange on a control
//! connection is [`Request::Hello`], and a version mismatch is an error on both sides.
//!
//! ```
//! use moat_protocol::{read_frame, write_frame, Request, RequestEnvelope};
//! let mut wire = Vec::new();
//! let req = RequestEnvelope { id: 7, request: Request::Hello { version: moat_protocol::PROTOCOL_VERSION } };
//! write_frame(&mut wire, &req).unwrap();
//! let back: RequestEnvelope = read_frame(&mut wire.as_slice()).unwrap();
//! assert_eq!(back, req);
//! ```

pub mod container;
mod frame;
mod messages;
pub mod spec;
pub mod stream;

pub use container::*;
pub use frame::{decode_frame, encode_frame, read_frame, write_frame, FrameError, MAX_FRAME_LEN};
pub use messages::*;

/// The protocol version both sides must agree on in `Hello`. Bump it on any incompatible
/// change to the message types.
pub const PROTOCOL_VERSION: u32 = 1;

/// The vsock port the agent's control server listens on.
pub const CONTROL_PORT: u32 = 1024;

/// The context id of the guest on its virtio-vsock device.
pub const GUEST_CID: u64 = 3;
