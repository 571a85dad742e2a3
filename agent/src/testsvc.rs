//! Test services on a vsock port of their own, enabled only by `moat.test_port=P` on the
//! kernel command line (never by the runtime in production). They let the host exercise the
//! vsock device end to end from both directions without anything but the agent in the guest.
//!
//! Each connection starts with one mode byte:
//! - `E`: echo every byte back until the host shuts down its write side.
//! - `S`: sink: read to end of stream, then answer the byte count as a big-endian `u64`.
//! - `C`: connect out: then `port: u32 BE` and `len: u32 BE`; the agent opens a connection
//!   to the host (CID 2) on `port`, writes `len` bytes of [`pattern`], shuts down its write
//!   side, reads the reply to end of stream, and answers `u8` (1 when the reply was exactly
//!   the bytes it sent) followed by the reply's length as `u64` BE.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{
    connect, shutdown, socket, AddressFamily, Shutdown, SockFlag, SockType, VsockAddr,
};

/// The host's vsock CID.
const HOST_CID: u32 = 2;

/// The byte at offset `i` of the connect-out payload.
pub fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(31) % 251) as u8
}

/// Starts the test server on its own thread.
pub fn start(port: u32) -> Result<(), crate::server::ServerError> {
    let listener = crate::server::listen_vsock(port)?;
    std::thread::Builder::new()
        .name("testsvc".into())
        .spawn(move || loop {
            match nix::sys::socket::accept(&listener) {
                Ok(conn) => {
                    let _ = std::thread::Builder::new()
                        .name("testsvc-conn".into())
                        .spawn(move || {
                            if let Err(e) = handle(conn) {
                                crate::debug!("test service connection: {e}");
                            }
                        });
                }
                Err(e) => {
                    crate::warn!("test service accept: {e}");
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
            }
        })
        .map(|_| ())
        .map_err(|e| crate::server::ServerError::Listen {
            port,
            source: nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EAGAIN)),
        })
}

fn handle(conn: OwnedFd) -> io::Result<()> {
    let mut mode = [0u8; 1];
    let mut stream = File::from(conn);
    stream.read_exact(&mut mode)?;
    match mode[0] {
        b'E' => {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = stream.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                stream.write_all(&buf[..n])?;
            }
            shutdown(stream.as_raw_fd(), Shutdown::Write)?;
        }
        b'S' => {
            let n = io::copy(&mut stream, &mut io::sink())?;
            stream.write_all(&n.to_be_bytes())?;
        }
        b'C' => {
            let mut args = [0u8; 8];
            stream.read_exact(&mut args)?;
            let port = u32::from_be_bytes([args[0], args[1], args[2], args[3]]);
            let len = u32::from_be_bytes([args[4], args[5], args[6], args[7]]) as u64;
            let (matched, got) = connect_out(port, len)?;
            stream.write_all(&[matched as u8])?;
            stream.write_all(&got.to_be_bytes())?;
        }
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unknown mode byte {other:#x}"),
            ));
        }
    }
    Ok(())
}

/// Connects to the host on `port`, sends `len` pattern bytes, and checks the echo.
fn connect_out(port: u32, len: u64) -> io::Result<(bool, u64)> {
    let fd = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    connect(fd.as_raw_fd(), &VsockAddr::new(HOST_CID, port))?;
    let out = File::from(fd);
    let mut reader = out.try_clone()?;
    // Write on one thread and read on this one, so a host that echoes as it reads never
    // deadlocks against full buffers.
    let writer = std::thread::spawn(move || -> io::Result<()> {
        let mut out = out;
        let mut sent = 0u64;
        let mut buf = vec![0u8; 32 * 1024];
        while sent < len {
            let n = (len - sent).min(buf.len() as u64) as usize;
            for (i, b) in buf[..n].iter_mut().enumerate() {
                *b = pattern(sent + i as u64);
            }
            out.write_all(&buf[..n])?;
            sent += n as u64;
        }
        shutdown(out.as_raw_fd(), Shutdown::Write)?;
        Ok(())
    });
    let mut got = 0u64;
    let mut matched = true;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        for (i, b) in buf[..n].iter().enumerate() {
            matched &= *b == pattern(got + i as u64);
        }
        got += n as u64;
    }
    writer
        .join()
        .map_err(|_| io::Error::other("writer thread panicked"))??;
    Ok((matched && got == len, got))
}

#[cfg(test)]
mod tests {
    use super::pattern;

    #[test]
    fn pattern_is_not_constant() {
        let v: Vec<u8> = (0..300).map(pattern).collect();
        assert!(v.windows(2).all(|w| w[0] != w[1]));
        assert_eq!(pattern(251), pattern(0));
    }
}
