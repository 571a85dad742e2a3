//! Firecracker's hybrid vsock protocol over Unix sockets: the host side of every guest
//! connection is a Unix stream.
//!
//! - Host-initiated: a host process connects to the VM's socket `<uds>` and writes
//!   `CONNECT <port>\n`; once the guest accepts, the device answers `OK <hostport>\n` and the
//!   stream carries the connection's bytes. A refused or unanswered request closes the stream
//!   without an answer.
//! - Guest-initiated: a guest connection to host port `P` is forwarded by connecting to
//!   `<uds>_<P>`; nothing listening there means a reset to the guest.
//!
//! Data flow here: [`PendingHost`] reads the `CONNECT` line from a freshly accepted stream one
//! byte at a time (so that no byte of the connection's data is consumed), bounded to
//! [`MAX_CONNECT_LINE`] bytes; [`connect_peer`] opens `<uds>_<P>` without blocking.

use std::ffi::OsString;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Instant;

use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};

/// The longest `CONNECT` line accepted, newline included.
pub const MAX_CONNECT_LINE: usize = 32;

/// What can go wrong with a host connection before it becomes a guest connection.
#[derive(Debug, thiserror::Error)]
pub enum HybridError {
    /// The line is not `CONNECT <port>`.
    #[error("expected \"CONNECT <port>\\n\", got {0:?}")]
    BadLine(String),
    /// No newline within [`MAX_CONNECT_LINE`] bytes.
    #[error("CONNECT line longer than {MAX_CONNECT_LINE} bytes")]
    LineTooLong,
    /// The host closed the stream before finishing the line.
    #[error("host closed the stream before a CONNECT line")]
    Closed,
    /// Reading the stream failed.
    #[error("reading the CONNECT line")]
    Io(#[source] io::Error),
    /// Connecting to `<uds>_<port>` failed.
    #[error("connecting to {path}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// Parses `CONNECT <port>` (the keyword in any case, surrounding blanks allowed).
pub fn parse_connect_line(line: &[u8]) -> Result<u32, HybridError> {
    let bad = || HybridError::BadLine(String::from_utf8_lossy(line).into_owned());
    let text = std::str::from_utf8(line).map_err(|_| bad())?;
    let mut words = text.split_ascii_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some(kw), Some(port), None) if kw.eq_ignore_ascii_case("connect") => {
            port.parse::<u32>().map_err(|_| bad())
        }
        _ => Err(bad()),
    }
}

/// A host stream that has not finished its `CONNECT` line yet.
#[derive(Debug)]
pub struct PendingHost {
    /// The stream (non-blocking).
    pub stream: UnixStream,
    /// When to give up on the line.
    pub deadline: Instant,
    line: Vec<u8>,
}

impl PendingHost {
    /// Wraps a freshly accepted, non-blocking stream.
    pub fn new(stream: UnixStream, deadline: Instant) -> Self {
        Self {
            stream,
            deadline,
            line: Vec::with_capacity(MAX_CONNECT_LINE),
        }
    }

    /// Reads what is available of the line: `Ok(Some(port))` when complete, `Ok(None)` when
    /// more is to come.
    pub fn poll_line(&mut self) -> Result<Option<u32>, HybridError> {
        let mut byte = [0u8; 1];
        loop {
            match self.stream.read(&mut byte) {
                Ok(0) => return Err(HybridError::Closed),
                Ok(_) if byte[0] == b'\n' => return parse_connect_line(&self.line).map(Some),
                Ok(_) => {
                    if self.line.len() + 1 >= MAX_CONNECT_LINE {
                        return Err(HybridError::LineTooLong);
                    }
                    self.line.push(byte[0]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(HybridError::Io(e)),
            }
        }
    }
}

/// `<uds>_<port>`, where guest connections to host port `port` go.
pub fn peer_path(uds: &Path, port: u32) -> PathBuf {
    let mut s = OsString::from(uds.as_os_str());
    s.push(format!("_{port}"));
    PathBuf::from(s)
}

/// Connects to `<uds>_<port>` without blocking: a listener whose backlog is full fails with
/// `EAGAIN` instead of stalling the device. Returns a non-blocking stream.
pub fn connect_peer(uds: &Path, port: u32) -> Result<UnixStream, HybridError> {
    let path = peer_path(uds, port);
    let err = |source: io::Error| HybridError::Connect {
        path: path.clone(),
        source,
    };
    let addr = UnixAddr::new(&path).map_err(|e| err(e.into()))?;
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| err(e.into()))?;
    match connect(fd.as_raw_fd(), &addr) {
        // A Unix stream connect completes at once or fails; EINPROGRESS is not expected, but
        // a stream that is still connecting reports errors on its first use anyway.
        Ok(()) | Err(nix::Error::EINPROGRESS) => {}
        Err(e) => return Err(err(e.into())),
    }
    Ok(UnixStream::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixListener;

    #[test]
    fn parses_connect_lines() {
        assert_eq!(parse_connect_line(b"CONNECT 1024").unwrap(), 1024);
        assert_eq!(parse_connect_line(b"connect  52\r").unwrap(), 52);
        for bad in [
            &b"CONNECT"[..],
            b"CONNECT x",
            b"CONNECT 1 2",
            b"LISTEN 5",
            b"CONNECT -1",
            b"CONNECT 4294967296",
            b"\xff\xfe",
            b"",
        ] {
            assert!(
                matches!(parse_connect_line(bad), Err(HybridError::BadLine(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn reads_the_line_in_pieces_and_no_further() {
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut p = PendingHost::new(a, Instant::now());
        b.write_all(b"CONN").unwrap();
        assert_eq!(p.poll_line().unwrap(), None);
        b.write_all(b"ECT 7\nDATA").unwrap();
        assert_eq!(p.poll_line().unwrap(), Some(7));
        let mut rest = [0u8; 4];
        p.stream.read_exact(&mut rest).unwrap();
        assert_eq!(&rest, b"DATA");
    }

    #[test]
    fn bounds_the_line() {
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut p = PendingHost::new(a, Instant::now());
        b.write_all(&[b'A'; 100]).unwrap();
        assert!(matches!(p.poll_line(), Err(HybridError::LineTooLong)));
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut p = PendingHost::new(a, Instant::now());
        drop(b);
        assert!(matches!(p.poll_line(), Err(HybridError::Closed)));
    }

    #[test]
    fn connects_to_the_port_socket_or_says_why_not() {
        let dir = std::env::temp_dir().join(format!("moat-hybrid-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let uds = dir.join("v.sock");
        assert_eq!(peer_path(&uds, 52), dir.join("v.sock_52"));
        let l = UnixListener::bind(peer_path(&uds, 52)).unwrap();
        let s = connect_peer(&uds, 52).unwrap();
        let (mut acc, _) = l.accept().unwrap();
        (&s).write_all(b"hi").unwrap();
        let mut got = [0u8; 2];
        acc.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hi");
        match connect_peer(&uds, 53) {
            Err(HybridError::Connect { path, source }) => {
                assert_eq!(path, dir.join("v.sock_53"));
                assert_eq!(source.kind(), io::ErrorKind::NotFound);
            }
            other => panic!("{other:?}"),
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
