//! The channel between the agent and a container process it is setting up.
//!
//! A `SOCK_STREAM` socket pair, close-on-exec, so that a successful `execve` closes the
//! child's end and the agent sees end-of-stream. Messages are one tag byte, a `u32`
//! big-endian length, and that many bytes (at most [`MAX_MSG`]).

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// The largest message body.
pub const MAX_MSG: usize = 64 * 1024;

/// What travels between the agent and the child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// Agent → child: go ahead (the child is in its cgroup).
    Go,
    /// Child → agent: I unshared a user namespace; write my uid/gid maps (pid given).
    MapMe(u32),
    /// Agent → child: your maps are written.
    Mapped,
    /// Intermediate → agent: the container process's pid (in the agent's pid namespace).
    Pid(u32),
    /// Container process → agent: set up; waiting for `Start`.
    Ready,
    /// Agent → container process: exec now.
    Start,
    /// Child → agent: setup failed with this message.
    Error(String),
    /// Container process → agent: the pty master it opened (the fd travels with the
    /// message as SCM_RIGHTS; the agent gets it from [`SyncChannel::take_fd`]).
    Pty,
}

/// Failures on the channel.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The other end closed the channel.
    #[error("the other end closed the setup channel")]
    Closed,
    /// Reading or writing failed (including a timeout).
    #[error("setup channel: {0}")]
    Io(#[from] std::io::Error),
    /// The peer sent something that is not a message.
    #[error("setup channel: malformed message (tag {0:#x}, {1} bytes)")]
    Malformed(u8, usize),
}

/// One end of the channel.
#[derive(Debug)]
pub struct SyncChannel(UnixStream, Option<OwnedFd>);

impl SyncChannel {
    /// A connected pair (agent end, child end), both close-on-exec.
    pub fn pair() -> Result<(Self, Self), SyncError> {
        let (a, b) = UnixStream::pair()?;
        Ok((Self(a, None), Self(b, None)))
    }

    /// Sets a receive timeout (`None` blocks forever).
    pub fn set_timeout(&self, t: Option<Duration>) -> Result<(), SyncError> {
        self.0.set_read_timeout(t)?;
        Ok(())
    }

    /// Sends one message.
    pub fn send(&mut self, msg: &Msg) -> Result<(), SyncError> {
        let (tag, body): (u8, Vec<u8>) = match msg {
            Msg::Go => (b'g', vec![]),
            Msg::MapMe(pid) => (b'M', pid.to_be_bytes().to_vec()),
            Msg::Mapped => (b'm', vec![]),
            Msg::Pid(pid) => (b'P', pid.to_be_bytes().to_vec()),
            Msg::Ready => (b'R', vec![]),
            Msg::Start => (b's', vec![]),
            Msg::Error(e) => {
                let mut b = e.as_bytes().to_vec();
                b.truncate(MAX_MSG);
                (b'E', b)
            }
            Msg::Pty => return Err(SyncError::Malformed(b'T', 0)),
        };
        let mut frame = Vec::with_capacity(5 + body.len());
        frame.push(tag);
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(&body);
        self.0.write_all(&frame)?;
        Ok(())
    }

    /// Sends [`Msg::Pty`] with `fd` attached.
    pub fn send_fd(&mut self, fd: &OwnedFd) -> Result<(), SyncError> {
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
        let frame = [b'T', 0, 0, 0, 0];
        let fds = [fd.as_raw_fd()];
        let iov = [std::io::IoSlice::new(&frame)];
        let n = sendmsg::<()>(
            self.0.as_raw_fd(),
            &iov,
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .map_err(|e| SyncError::Io(e.into()))?;
        if n != frame.len() {
            self.0.write_all(&frame[n..])?;
        }
        Ok(())
    }

    /// The fd that came with the last [`Msg::Pty`].
    pub fn take_fd(&mut self) -> Option<OwnedFd> {
        self.1.take()
    }

    /// Reads the 5-byte header with recvmsg, keeping an fd that arrives with it.
    fn read_head(&mut self, head: &mut [u8; 5]) -> Result<(), SyncError> {
        use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
        let mut got = 0;
        while got < head.len() {
            let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
            let mut iov = [std::io::IoSliceMut::new(&mut head[got..])];
            let msg = match recvmsg::<()>(
                self.0.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(m) => m,
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(SyncError::Io(e.into())),
            };
            let n = msg.bytes;
            for c in msg.cmsgs().map_err(|e| SyncError::Io(e.into()))? {
                if let ControlMessageOwned::ScmRights(fds) = c {
                    for fd in fds {
                        // SAFETY: the kernel just installed `fd` in this process for us.
                        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                        self.1 = Some(owned);
                    }
                }
            }
            if n == 0 {
                return Err(if got == 0 {
                    SyncError::Closed
                } else {
                    SyncError::Io(std::io::ErrorKind::UnexpectedEof.into())
                });
            }
            got += n;
        }
        Ok(())
    }

    /// Receives one message.
    pub fn recv(&mut self) -> Result<Msg, SyncError> {
        let mut head = [0u8; 5];
        self.read_head(&mut head)?;
        let tag = head[0];
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if len > MAX_MSG {
            return Err(SyncError::Malformed(tag, len));
        }
        let mut body = vec![0u8; len];
        self.0.read_exact(&mut body)?;
        let u32_body = || -> Result<u32, SyncError> {
            body.as_slice()
                .try_into()
                .map(u32::from_be_bytes)
                .map_err(|_| SyncError::Malformed(tag, len))
        };
        Ok(match tag {
            b'g' => Msg::Go,
            b'M' => Msg::MapMe(u32_body()?),
            b'm' => Msg::Mapped,
            b'P' => Msg::Pid(u32_body()?),
            b'R' => Msg::Ready,
            b's' => Msg::Start,
            b'E' => Msg::Error(String::from_utf8_lossy(&body).into_owned()),
            b'T' if self.1.is_some() => Msg::Pty,
            _ => return Err(SyncError::Malformed(tag, len)),
        })
    }

    /// Receives and checks it is `want`; an `Error` from the child becomes `Err(message)`.
    pub fn expect(&mut self, want: &Msg) -> Result<(), String> {
        match self.recv() {
            Ok(m) if &m == want => Ok(()),
            Ok(Msg::Error(e)) => Err(e),
            Ok(other) => Err(format!(
                "expected {want:?} on the setup channel, got {other:?}"
            )),
            Err(e) => Err(e.to_string()),
        }
    }
}

impl From<SyncChannel> for OwnedFd {
    fn from(c: SyncChannel) -> OwnedFd {
        c.0.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_round_trips() {
        let (mut a, mut b) = SyncChannel::pair().unwrap();
        let msgs = [
            Msg::Go,
            Msg::MapMe(77),
            Msg::Mapped,
            Msg::Pid(1234),
            Msg::Ready,
            Msg::Start,
            Msg::Error("mounts[2].type: bad".into()),
        ];
        for m in &msgs {
            a.send(m).unwrap();
        }
        for m in &msgs {
            assert_eq!(&b.recv().unwrap(), m);
        }
        drop(a);
        assert!(matches!(b.recv(), Err(SyncError::Closed)));
    }

    #[test]
    fn a_pty_fd_travels_with_its_message() {
        let (mut a, mut b) = SyncChannel::pair().unwrap();
        let f: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        a.send(&Msg::Ready).unwrap();
        a.send_fd(&f).unwrap();
        a.send(&Msg::Go).unwrap();
        assert_eq!(b.recv().unwrap(), Msg::Ready);
        assert!(b.take_fd().is_none());
        assert_eq!(b.recv().unwrap(), Msg::Pty);
        let got = b.take_fd().expect("the fd came along");
        assert_ne!(got.as_raw_fd(), f.as_raw_fd());
        assert_eq!(b.recv().unwrap(), Msg::Go);
    }

    #[test]
    fn garbage_is_malformed() {
        let (a, mut b) = SyncChannel::pair().unwrap();
        let mut raw = a.0;
        raw.write_all(&[b'?', 0, 0, 0, 0]).unwrap();
        assert!(matches!(b.recv(), Err(SyncError::Malformed(b'?', 0))));
        raw.write_all(&[b'P', 0xff, 0xff, 0xff, 0xff]).unwrap();
        assert!(matches!(b.recv(), Err(SyncError::Malformed(b'P', _))));
    }

    #[test]
    fn expect_surfaces_child_errors() {
        let (mut a, mut b) = SyncChannel::pair().unwrap();
        a.send(&Msg::Error("boom".into())).unwrap();
        assert_eq!(b.expect(&Msg::Ready), Err("boom".into()));
        a.send(&Msg::Go).unwrap();
        assert!(b
            .expect(&Msg::Ready)
            .unwrap_err()
            .contains("expected Ready"));
    }
}
