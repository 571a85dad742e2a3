//! Framing: a `u32` big-endian length, then one serde_json message of that many bytes.

use std::io::{self, Read, Write};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The largest frame body either side accepts: 4 MiB.
pub const MAX_FRAME_LEN: usize = 4 * 1024 * 1024;

/// Everything that can go wrong reading or writing a frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer closed the stream cleanly between frames.
    #[error("connection closed by peer")]
    Closed,
    /// The stream ended inside a frame's length prefix or body.
    #[error("connection closed in the middle of a frame ({got} of {want} bytes)")]
    Truncated {
        /// Bytes received.
        got: usize,
        /// Bytes expected.
        want: usize,
    },
    /// The length prefix announces more than [`MAX_FRAME_LEN`] bytes.
    #[error("frame of {0} bytes exceeds the {MAX_FRAME_LEN}-byte limit")]
    TooLarge(usize),
    /// The body is not the JSON of an expected message.
    #[error("malformed message")]
    Json(#[source] serde_json::Error),
    /// The underlying stream failed.
    #[error("i/o error on the protocol stream")]
    Io(#[source] io::Error),
}

impl FrameError {
    /// True when the stream timed out (a read or write timeout set on the socket).
    pub fn is_timeout(&self) -> bool {
        matches!(self, FrameError::Io(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut))
    }
}

/// Serialises `msg` into one frame (length prefix included).
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut out = vec![0u8; 4];
    serde_json::to_writer(&mut out, msg).map_err(FrameError::Json)?;
    let len = out.len() - 4;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge(len));
    }
    // The check above bounds `len` to 4 MiB, which fits a u32.
    out[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(out)
}

/// Parses one complete frame from the front of `buf`.
///
/// Returns `Ok(None)` when `buf` does not yet hold a whole frame, otherwise the message and
/// the number of bytes consumed. Errors on an oversize length or a malformed body.
pub fn decode_frame<T: DeserializeOwned>(buf: &[u8]) -> Result<Option<(T, usize)>, FrameError> {
    let Some(prefix) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge(len));
    }
    let Some(body) = buf.get(4..4 + len) else {
        return Ok(None);
    };
    let msg = serde_json::from_slice(body).map_err(FrameError::Json)?;
    Ok(Some((msg, 4 + len)))
}

/// Writes `msg` as one frame and flushes.
pub fn write_frame<W: Write, T: Serialize>(w: &mut W, msg: &T) -> Result<(), FrameError> {
    let frame = encode_frame(msg)?;
    w.write_all(&frame).map_err(FrameError::Io)?;
    w.flush().map_err(FrameError::Io)
}

/// Reads exactly one frame and decodes it. Never allocates more than [`MAX_FRAME_LEN`].
pub fn read_frame<R: Read, T: DeserializeOwned>(r: &mut R) -> Result<T, FrameError> {
    let mut prefix = [0u8; 4];
    match read_full(r, &mut prefix)? {
        0 => return Err(FrameError::Closed),
        4 => {}
        got => return Err(FrameError::Truncated { got, want: 4 }),
    }
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    let got = read_full(r, &mut body)?;
    if got != len {
        return Err(FrameError::Truncated { got, want: len });
    }
    serde_json::from_slice(&body).map_err(FrameError::Json)
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<usize, FrameError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Request, RequestEnvelope, Response, ResponseEnvelope, PROTOCOL_VERSION};

    fn frame_of(body: &[u8]) -> Vec<u8> {
        let mut v = (body.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn request_round_trip() {
        let reqs = [
            Request::Hello {
                version: PROTOCOL_VERSION,
            },
            Request::Shutdown,
        ];
        for (id, request) in reqs.into_iter().enumerate() {
            let env = RequestEnvelope {
                id: id as u64,
                request,
            };
            let bytes = encode_frame(&env).unwrap();
            let (back, used): (RequestEnvelope, usize) = decode_frame(&bytes).unwrap().unwrap();
            assert_eq!(back, env);
            assert_eq!(used, bytes.len());
            let back2: RequestEnvelope = read_frame(&mut bytes.as_slice()).unwrap();
            assert_eq!(back2, env);
        }
    }

    #[test]
    fn response_round_trip() {
        let resps = [
            Response::Hello {
                version: PROTOCOL_VERSION,
                agent_version: "0.1.0".into(),
            },
            Response::Ok,
            Response::Error(crate::ErrorReply::new(
                crate::ErrorKind::InvalidArgument,
                "x",
            )),
        ];
        for response in resps {
            let env = ResponseEnvelope { id: 9, response };
            let mut wire = Vec::new();
            write_frame(&mut wire, &env).unwrap();
            let back: ResponseEnvelope = read_frame(&mut wire.as_slice()).unwrap();
            assert_eq!(back, env);
        }
    }

    #[test]
    fn several_frames_in_one_buffer() {
        let mut wire = Vec::new();
        for id in 0..3 {
            write_frame(
                &mut wire,
                &RequestEnvelope {
                    id,
                    request: Request::Shutdown,
                },
            )
            .unwrap();
        }
        let mut rest = wire.as_slice();
        for id in 0..3 {
            let (env, used): (RequestEnvelope, usize) = decode_frame(rest).unwrap().unwrap();
            assert_eq!(env.id, id);
            rest = &rest[used..];
        }
        assert!(rest.is_empty());
        assert!(decode_frame::<RequestEnvelope>(rest).unwrap().is_none());
    }

    #[test]
    fn empty_stream_is_closed() {
        let err = read_frame::<_, RequestEnvelope>(&mut [].as_slice()).unwrap_err();
        assert!(matches!(err, FrameError::Closed), "{err:?}");
    }

    #[test]
    fn short_length_prefix_is_truncated() {
        let err = read_frame::<_, RequestEnvelope>(&mut [0u8, 0].as_slice()).unwrap_err();
        assert!(
            matches!(err, FrameError::Truncated { got: 2, want: 4 }),
            "{err:?}"
        );
        assert!(decode_frame::<RequestEnvelope>(&[0, 0, 0])
            .unwrap()
            .is_none());
    }

    #[test]
    fn short_body_is_truncated() {
        let mut bytes = frame_of(br#"{"id":1,"request":"Shutdown"}"#);
        bytes.truncate(bytes.len() - 3);
        let err = read_frame::<_, RequestEnvelope>(&mut bytes.as_slice()).unwrap_err();
        assert!(matches!(err, FrameError::Truncated { .. }), "{err:?}");
        assert!(decode_frame::<RequestEnvelope>(&bytes).unwrap().is_none());
    }

    #[test]
    fn oversize_length_is_rejected_before_reading_body() {
        let len = (MAX_FRAME_LEN as u32 + 1).to_be_bytes();
        // No body follows: the reader must fail on the prefix alone, not wait or allocate.
        let err = read_frame::<_, RequestEnvelope>(&mut len.as_slice()).unwrap_err();
        assert!(
            matches!(err, FrameError::TooLarge(n) if n == MAX_FRAME_LEN + 1),
            "{err:?}"
        );
        let err = decode_frame::<RequestEnvelope>(&u32::MAX.to_be_bytes()).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge(_)), "{err:?}");
    }

    #[test]
    fn exactly_max_length_is_accepted_by_the_prefix_check() {
        // A max-length body of spaces then a message is valid JSON.
        let msg = br#"{"id":1,"request":"Shutdown"}"#;
        let mut body = vec![b' '; MAX_FRAME_LEN - msg.len()];
        body.extend_from_slice(msg);
        let bytes = frame_of(&body);
        let env: RequestEnvelope = read_frame(&mut bytes.as_slice()).unwrap();
        assert_eq!(env.request, Request::Shutdown);
    }

    #[test]
    fn oversize_message_is_refused_on_encode() {
        let env = ResponseEnvelope {
            id: 1,
            response: Response::Error(crate::ErrorReply::new(
                crate::ErrorKind::Internal,
                "x".repeat(MAX_FRAME_LEN),
            )),
        };
        assert!(matches!(encode_frame(&env), Err(FrameError::TooLarge(_))));
    }

    #[test]
    fn invalid_json_is_rejected() {
        for body in [&b"{not json"[..], b"", b"\xff\xfe", b"null", b"[1,2]"] {
            let bytes = frame_of(body);
            let err = read_frame::<_, RequestEnvelope>(&mut bytes.as_slice()).unwrap_err();
            assert!(matches!(err, FrameError::Json(_)), "{body:?}: {err:?}");
        }
    }

    #[test]
    fn unknown_variant_is_rejected() {
        let bytes = frame_of(br#"{"id":1,"request":"FormatTheHost"}"#);
        let err = read_frame::<_, RequestEnvelope>(&mut bytes.as_slice()).unwrap_err();
        assert!(matches!(err, FrameError::Json(_)), "{err:?}");
        let bytes = frame_of(br#"{"id":1,"request":{"Hello":{"version":"one"}}}"#);
        let err = read_frame::<_, RequestEnvelope>(&mut bytes.as_slice()).unwrap_err();
        assert!(matches!(err, FrameError::Json(_)), "{err:?}");
    }

    #[test]
    fn missing_request_id_is_rejected() {
        let bytes = frame_of(br#"{"request":"Shutdown"}"#);
        let err = read_frame::<_, RequestEnvelope>(&mut bytes.as_slice()).unwrap_err();
        assert!(matches!(err, FrameError::Json(_)), "{err:?}");
    }
}
