//! One vsock stream connection between the guest and a host Unix stream: its state machine
//! and credit-based flow control in both directions.
//!
//! # Data flow
//!
//! - Guest → host: an `RW` packet's payload is written straight to the host stream; what the
//!   stream does not take now waits in `to_host` and goes out when the stream is writable
//!   (the muxer watches `EPOLLOUT` while anything waits). The guest may only have
//!   `buf_alloc` bytes in flight (its credit is `buf_alloc - (rx_cnt - fwd_cnt)`); more is a
//!   reset, so `to_host` never holds more than `buf_alloc` bytes. A slow host reader thus
//!   stops the guest: `fwd_cnt` stops moving and no credit update goes out.
//! - Host → guest: the muxer watches `EPOLLIN` only while the guest has credit for us
//!   (`peer_buf_alloc - (tx_cnt - peer_fwd_cnt)`) and nothing is already waiting to be read;
//!   [`Connection::next_rx`] reads at most that much, straight into the RX buffer. Out of
//!   credit, it asks once with `CREDIT_REQUEST` and waits for the guest's `CREDIT_UPDATE`.
//!
//! # States
//!
//! ```text
//!  host CONNECT ──▶ LocalInit ──RESPONSE──▶ Established ◀── guest REQUEST (RESPONSE sent)
//!                     │ RST/timeout/host gone     │ SHUTDOWN flags, host EOF/HUP
//!                     ▼                           ▼
//!                   dead  ◀───────── RST sent or received; any protocol error → RST
//! ```
//!
//! Half-closes are kept: a host `shutdown(SHUT_WR)` becomes `SHUTDOWN(SEND)` and the guest can
//! still send; a guest `SHUTDOWN(SEND)` becomes `shutdown(SHUT_WR)` on the host stream once
//! `to_host` is flushed. When both directions are finished the connection sends `RST`
//! (which a Linux guest's `close()` waits for) and is removed.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use nix::sys::socket::{send, MsgFlags};
use vmm_sys_util::epoll::EventSet;

use super::metrics::VsockMetrics;
use super::packet::Header;
use super::{
    HOST_CID, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW,
    OP_SHUTDOWN, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};

/// A connection's identity: the host-side port and the guest-side port (the CIDs are fixed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnKey {
    /// The host side's port (the guest's destination port).
    pub local_port: u32,
    /// The guest side's port.
    pub peer_port: u32,
}

/// Why a connection must be reset because of a guest packet.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// The guest sent more than the credit it was given.
    #[error("RW of {len} bytes exceeds the guest's credit ({free} bytes)")]
    CreditOverflow {
        /// Payload length.
        len: u32,
        /// Credit left.
        free: u32,
    },
    /// A known op in a state where it makes no sense.
    #[error("op {op} is not valid while {state}")]
    UnexpectedOp {
        /// The op.
        op: u16,
        /// The connection's state.
        state: &'static str,
    },
    /// An op the protocol does not have.
    #[error("unknown op {0}")]
    UnknownOp(u16),
    /// A control op carrying payload.
    #[error("{len} payload bytes on control op {op}")]
    DataOnControl {
        /// The op.
        op: u16,
        /// Payload length.
        len: u32,
    },
    /// Writing to the host stream failed (the host side went away).
    #[error("writing to the host stream")]
    HostWrite(#[source] io::Error),
}

impl ConnError {
    /// The counter this error is accounted under.
    pub fn counter<'m>(&self, m: &'m VsockMetrics) -> Option<&'m AtomicU64> {
        match self {
            ConnError::CreditOverflow { .. } => Some(&m.tx_credit_overflow),
            ConnError::UnexpectedOp { .. }
            | ConnError::UnknownOp(_)
            | ConnError::DataOnControl { .. } => Some(&m.tx_bad_op),
            ConnError::HostWrite(_) => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Host-initiated: `REQUEST` queued or sent, waiting for the guest's `RESPONSE`.
    LocalInit {
        deadline: Instant,
        request_sent: bool,
    },
    /// Data may flow.
    Established,
}

/// One connection. Owned by the muxer, which registers [`Connection::fd`] in its epoll with
/// [`Connection::interest`] and queues the connection for RX while [`Connection::has_rx`].
#[derive(Debug)]
pub struct Connection {
    key: ConnKey,
    guest_cid: u64,
    stream: UnixStream,
    state: State,
    // Control packets due to the guest.
    send_response: bool,
    send_rst: bool,
    send_credit_update: bool,
    credit_request_sent: bool,
    dead: bool,
    // Guest → host.
    prefix: Vec<u8>,
    to_host: VecDeque<u8>,
    buf_alloc: u32,
    rx_cnt: Wrapping<u32>,
    fwd_cnt: Wrapping<u32>,
    last_fwd_sent: Wrapping<u32>,
    peer_shut_send: bool,
    peer_shut_rcv: bool,
    host_write_shut: bool,
    // Host → guest.
    readable: bool,
    host_eof: bool,
    host_hup: bool,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    tx_cnt: Wrapping<u32>,
    /// The muxer's bookkeeping: queued for RX.
    pub(crate) in_rxq: bool,
    /// The muxer's bookkeeping: what the fd is registered for (`None`: not registered).
    pub(crate) registered: Option<EventSet>,
}

impl Connection {
    fn new(key: ConnKey, guest_cid: u64, stream: UnixStream, state: State, buf_alloc: u32) -> Self {
        Self {
            key,
            guest_cid,
            stream,
            state,
            send_response: false,
            send_rst: false,
            send_credit_update: false,
            credit_request_sent: false,
            dead: false,
            prefix: Vec::new(),
            to_host: VecDeque::new(),
            buf_alloc,
            rx_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            last_fwd_sent: Wrapping(0),
            peer_shut_send: false,
            peer_shut_rcv: false,
            host_write_shut: false,
            readable: false,
            host_eof: false,
            host_hup: false,
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            tx_cnt: Wrapping(0),
            in_rxq: false,
            registered: None,
        }
    }

    /// A host-initiated connection: a `REQUEST` is due to the guest; the guest must answer
    /// before `deadline`.
    pub fn new_local(
        key: ConnKey,
        guest_cid: u64,
        stream: UnixStream,
        buf_alloc: u32,
        deadline: Instant,
    ) -> Self {
        let state = State::LocalInit {
            deadline,
            request_sent: false,
        };
        Self::new(key, guest_cid, stream, state, buf_alloc)
    }

    /// A guest-initiated connection whose host side is connected: a `RESPONSE` is due.
    pub fn new_peer(
        key: ConnKey,
        guest_cid: u64,
        stream: UnixStream,
        buf_alloc: u32,
        request: &Header,
    ) -> Self {
        let mut c = Self::new(key, guest_cid, stream, State::Established, buf_alloc);
        c.peer_buf_alloc = request.buf_alloc;
        c.peer_fwd_cnt = Wrapping(request.fwd_cnt);
        c.send_response = true;
        c
    }

    /// The connection's key.
    pub fn key(&self) -> ConnKey {
        self.key
    }

    /// The host stream's fd.
    pub fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    /// True once the connection is over (RST sent or received) and can be dropped.
    pub fn is_dead(&self) -> bool {
        self.dead
    }

    /// True while the guest has not answered a host-initiated request.
    pub fn is_connecting(&self) -> bool {
        matches!(self.state, State::LocalInit { .. })
    }

    /// Bytes waiting for the host reader.
    pub fn buffered(&self) -> usize {
        self.to_host.len()
    }

    /// The guest's credit for us: how many bytes we may send it now.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.tx_cnt - self.peer_fwd_cnt).0;
        // A hostile fwd_cnt ahead of what we sent wraps `in_flight` high: no credit.
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    fn can_read_host(&self) -> bool {
        self.state == State::Established && !self.send_rst && !self.host_eof && !self.peer_shut_rcv
    }

    /// The events the host stream should be watched for; `None` when it must not be in the
    /// epoll set at all (after a hang-up, which would be reported forever).
    pub fn interest(&self) -> Option<EventSet> {
        if self.dead || self.send_rst || self.host_hup {
            return None;
        }
        let mut ev = EventSet::empty();
        if !self.readable && self.can_read_host() && self.peer_credit() > 0 {
            ev |= EventSet::IN;
        }
        if !self.prefix.is_empty() || !self.to_host.is_empty() {
            ev |= EventSet::OUT;
        }
        Some(ev)
    }

    /// True when [`Self::next_rx`] has something to produce.
    pub fn has_rx(&self) -> bool {
        if self.dead {
            return false;
        }
        self.send_rst
            || self.send_response
            || matches!(
                self.state,
                State::LocalInit {
                    request_sent: false,
                    ..
                }
            )
            || self.send_credit_update
            || (self.readable
                && self.can_read_host()
                && (self.peer_credit() > 0 || !self.credit_request_sent))
    }

    fn header(&mut self, op: u16, len: u32, flags: u32) -> Header {
        // Every packet carries our credit, so it doubles as a credit update.
        self.last_fwd_sent = self.fwd_cnt;
        self.send_credit_update = false;
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.key.local_port,
            dst_port: self.key.peer_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: self.buf_alloc,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    /// Schedules a reset: the next packet is `RST`, and then the connection is dead. Host
    /// streams of a reset connection are not read or written any more.
    pub fn reset(&mut self) {
        if self.dead {
            return;
        }
        if matches!(
            self.state,
            State::LocalInit {
                request_sent: false,
                ..
            }
        ) {
            // The guest never heard of it.
            self.dead = true;
            return;
        }
        self.send_rst = true;
        self.readable = false;
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    /// The connect deadline of a host-initiated connection has passed (checked by the muxer).
    pub fn connect_expired(&self, now: Instant) -> bool {
        matches!(self.state, State::LocalInit { deadline, .. } if now >= deadline)
    }

    /// Produces the next packet for the guest (payload into `buf`).
    pub fn next_rx(&mut self, buf: &mut [u8]) -> Option<Header> {
        if self.dead {
            return None;
        }
        if self.send_rst {
            self.send_rst = false;
            self.dead = true;
            return Some(self.header(OP_RST, 0, 0));
        }
        if let State::LocalInit {
            request_sent: ref mut sent @ false,
            ..
        } = self.state
        {
            *sent = true;
            return Some(self.header(OP_REQUEST, 0, 0));
        }
        if self.send_response {
            self.send_response = false;
            return Some(self.header(OP_RESPONSE, 0, 0));
        }
        if self.readable && self.can_read_host() {
            let credit = self.peer_credit() as usize;
            if credit == 0 {
                if !self.credit_request_sent {
                    self.credit_request_sent = true;
                    return Some(self.header(OP_CREDIT_REQUEST, 0, 0));
                }
            } else {
                let n = credit.min(buf.len());
                match self.stream.read(&mut buf[..n]) {
                    Ok(0) => {
                        self.host_eof = true;
                        self.readable = false;
                        let flags = if self.host_hup {
                            SHUTDOWN_SEND | SHUTDOWN_RCV
                        } else {
                            SHUTDOWN_SEND
                        };
                        let h = self.header(OP_SHUTDOWN, 0, flags);
                        self.check_finished();
                        return Some(h);
                    }
                    Ok(got) => {
                        self.tx_cnt += Wrapping(got as u32);
                        return Some(self.header(OP_RW, got as u32, 0));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.readable = false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        tracing::debug!(key = ?self.key, "reading the host stream: {e}");
                        self.reset();
                        return self.next_rx(buf);
                    }
                }
            }
        }
        if self.send_credit_update {
            return Some(self.header(OP_CREDIT_UPDATE, 0, 0));
        }
        None
    }

    /// Handles a packet from the guest for this connection. An error means the connection
    /// must be reset (the caller counts it and calls [`Self::reset`]).
    pub fn on_packet(&mut self, hdr: &Header, data: &[u8]) -> Result<(), ConnError> {
        if hdr.op != OP_RW && !data.is_empty() {
            return Err(ConnError::DataOnControl {
                op: hdr.op,
                len: hdr.len,
            });
        }
        if self.dead || self.send_rst {
            // Already being reset; whatever the guest says now changes nothing.
            return Ok(());
        }
        // Every packet carries the guest's receive buffer state.
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
        if self.peer_credit() > 0 {
            self.credit_request_sent = false;
        }
        match (hdr.op, self.state) {
            (OP_RST, _) => {
                self.dead = true;
                Ok(())
            }
            (
                OP_RESPONSE,
                State::LocalInit {
                    request_sent: true, ..
                },
            ) => {
                self.state = State::Established;
                self.prefix = format!("OK {}\n", self.key.local_port).into_bytes();
                self.flush().map_err(ConnError::HostWrite)
            }
            (OP_RW, State::Established) => self.on_rw(data),
            (OP_SHUTDOWN, State::Established) => {
                self.peer_shut_rcv |= hdr.flags & SHUTDOWN_RCV != 0;
                self.peer_shut_send |= hdr.flags & SHUTDOWN_SEND != 0;
                if self.peer_shut_rcv {
                    self.readable = false;
                }
                self.flush().map_err(ConnError::HostWrite)?;
                self.check_finished();
                Ok(())
            }
            (OP_CREDIT_UPDATE, State::Established) => Ok(()),
            (OP_CREDIT_REQUEST, State::Established) => {
                self.send_credit_update = true;
                Ok(())
            }
            (
                OP_REQUEST | OP_RESPONSE | OP_RW | OP_SHUTDOWN | OP_CREDIT_UPDATE
                | OP_CREDIT_REQUEST,
                s,
            ) => Err(ConnError::UnexpectedOp {
                op: hdr.op,
                state: match s {
                    State::LocalInit { .. } => "connecting",
                    State::Established => "established",
                },
            }),
            (op, _) => Err(ConnError::UnknownOp(op)),
        }
    }

    fn on_rw(&mut self, data: &[u8]) -> Result<(), ConnError> {
        if self.peer_shut_send {
            return Err(ConnError::UnexpectedOp {
                op: OP_RW,
                state: "shut down for sending by the guest",
            });
        }
        let in_flight = (self.rx_cnt - self.fwd_cnt).0;
        let free = self.buf_alloc.saturating_sub(in_flight);
        // `data.len()` is at most MAX_PKT_DATA, so it fits in u32.
        let len = data.len() as u32;
        if len > free {
            return Err(ConnError::CreditOverflow { len, free });
        }
        self.rx_cnt += Wrapping(len);
        if self.host_write_shut || self.host_hup {
            // The host side can take no more; the bytes count as consumed (dropped).
            self.fwd_cnt += Wrapping(len);
            return Ok(());
        }
        let mut rest = data;
        if self.prefix.is_empty() && self.to_host.is_empty() {
            let n = self.write_host(rest).map_err(ConnError::HostWrite)?;
            self.fwd_cnt += Wrapping(n as u32);
            rest = &rest[n..];
        }
        self.to_host.extend(rest);
        self.update_credit_due();
        Ok(())
    }

    /// Writes without blocking and without SIGPIPE; `Ok(0)` when the stream is full.
    fn write_host(&self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match send(
                self.stream.as_raw_fd(),
                buf,
                MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(n) => return Ok(n),
                Err(nix::Error::EAGAIN) => return Ok(0),
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(io::Error::from(e)),
            }
        }
    }

    /// Writes what waits for the host (the `OK` line first), then shuts the host's write
    /// side once the guest has shut its send side and nothing waits.
    fn flush(&mut self) -> io::Result<()> {
        while !self.prefix.is_empty() {
            let n = self.write_host(&self.prefix)?;
            if n == 0 {
                return Ok(());
            }
            self.prefix.drain(..n);
        }
        while !self.to_host.is_empty() {
            let (a, _) = self.to_host.as_slices();
            let n = self.write_host(a)?;
            if n == 0 {
                break;
            }
            self.to_host.drain(..n);
            self.fwd_cnt += Wrapping(n as u32);
        }
        if self.to_host.is_empty() {
            // Give the memory back: an idle connection holds no buffer.
            self.to_host = VecDeque::new();
            if self.peer_shut_send && !self.host_write_shut {
                self.host_write_shut = true;
                let _ = self.stream.shutdown(Shutdown::Write);
            }
        }
        self.update_credit_due();
        Ok(())
    }

    /// Decides whether the guest needs to hear about the space we freed: when a good chunk
    /// was freed since we last told it, or when it believes it is nearly out of credit.
    fn update_credit_due(&mut self) {
        let unreported = (self.fwd_cnt - self.last_fwd_sent).0;
        if unreported == 0 || self.state != State::Established {
            return;
        }
        let threshold = (self.buf_alloc / 2).min(64 * 1024);
        let guest_view_free = self
            .buf_alloc
            .saturating_sub((self.rx_cnt - self.last_fwd_sent).0);
        if unreported >= threshold || guest_view_free < threshold {
            self.send_credit_update = true;
        }
    }

    /// Ends the connection with a reset once both directions are finished.
    fn check_finished(&mut self) {
        if self.dead || self.send_rst || self.state != State::Established {
            return;
        }
        let to_host_done = self.host_hup || (self.host_write_shut && self.to_host.is_empty());
        let from_host_done = self.peer_shut_rcv || self.host_eof;
        if to_host_done && from_host_done {
            self.send_rst = true;
        }
    }

    /// The host stream is readable (or at end of stream).
    pub fn on_host_readable(&mut self) {
        if self.can_read_host() {
            self.readable = true;
        }
    }

    /// The host stream can take more bytes.
    pub fn on_host_writable(&mut self) -> Result<(), ConnError> {
        self.flush().map_err(ConnError::HostWrite)?;
        self.check_finished();
        Ok(())
    }

    /// The host side hung up (or errored): what it wrote is drained, and then the connection
    /// ends; nothing more can reach it.
    pub fn on_host_hup(&mut self) {
        if self.host_hup {
            return;
        }
        self.host_hup = true;
        if self.is_connecting() {
            // The host gave up before the guest answered.
            self.reset();
            return;
        }
        if self.can_read_host() {
            // Hang-up is reported forever, so the fd leaves the epoll set; reads from a
            // hung-up stream never block, so the rest is read without it.
            self.readable = true;
        }
        // Bytes for the host can no longer be delivered.
        let dropped = self.prefix.len() + self.to_host.len();
        if dropped > 0 {
            tracing::debug!(key = ?self.key, dropped, "host hung up with bytes pending");
        }
        self.prefix.clear();
        self.fwd_cnt += Wrapping(self.to_host.len() as u32);
        self.to_host = VecDeque::new();
        self.check_finished();
    }
}
