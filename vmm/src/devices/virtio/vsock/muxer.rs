//! The connection multiplexer: the [`VsockBackend`] that routes the guest's packets to host
//! Unix streams with Firecracker's hybrid protocol.
//!
//! # Data flow
//!
//! The muxer owns one epoll fd holding the hybrid listener `<uds>`, host streams still
//! sending their `CONNECT` line, every connection's host stream, and a sweep timer for
//! connect deadlines. The outer loop (vhost-user daemon, or built-in VMM) watches that
//! one fd and calls [`VsockBackend::process_events`]; nothing here blocks.
//!
//! - Guest → muxer ([`VsockBackend::send_pkt`]): the packet is checked (CIDs, type), then
//!   goes to its [`Connection`]; a `REQUEST` for no connection connects to `<uds>_<port>`;
//!   anything else for no connection is answered with `RST` from a bounded queue.
//! - Muxer → guest ([`VsockBackend::recv_pkt`]): those queued resets first, then connections
//!   round-robin from `rxq`, the queue of connections that have something to say.
//! - After every change a connection is "synced": its epoll interest is updated, it is
//!   queued for RX if it has something, and it is dropped once dead.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::timerfd::TimerFd;

use super::backend::{TxPacket, VsockBackend};
use super::connection::{ConnKey, Connection};
use super::hybrid::{connect_peer, PendingHost};
use super::metrics::VsockMetrics;
use super::packet::Header;
use super::{HOST_CID, OP_REQUEST, OP_RST, TYPE_STREAM};

/// How often connect deadlines are checked while any are pending.
const SWEEP_INTERVAL: Duration = Duration::from_millis(100);

/// The muxer's limits and names.
#[derive(Debug, Clone)]
pub struct MuxerConfig {
    /// The guest's CID (3 for moat).
    pub guest_cid: u64,
    /// The hybrid socket `<uds>`; guest connections to port P go to `<uds>_<P>`.
    pub uds_path: PathBuf,
    /// Receive buffer advertised to the guest per connection (`buf_alloc`), and so the most
    /// bytes buffered per connection for a slow host reader.
    pub conn_buf_size: u32,
    /// Most connections at once (host- and guest-initiated).
    pub max_connections: usize,
    /// Most host streams still sending their `CONNECT` line.
    pub max_pending_host: usize,
    /// How long a host stream may take to send `CONNECT`, and the guest to answer it.
    pub connect_timeout: Duration,
    /// Most resets queued for packets that match no connection; when full, the device
    /// stops taking TX packets until RX drains.
    pub max_orphan_rst: usize,
}

impl MuxerConfig {
    /// Defaults: 256 KiB per connection, 256 connections (so at most 64 MiB buffered for
    /// slow host readers), 128 pending host streams, 5 s to connect.
    pub fn new(guest_cid: u64, uds_path: impl Into<PathBuf>) -> Self {
        Self {
            guest_cid,
            uds_path: uds_path.into(),
            conn_buf_size: 256 * 1024,
            max_connections: 256,
            max_pending_host: 128,
            connect_timeout: Duration::from_secs(5),
            max_orphan_rst: 128,
        }
    }
}

/// Setting up the muxer failed.
#[derive(Debug, thiserror::Error)]
pub enum MuxerError {
    /// epoll or timerfd could not be created or set up.
    #[error("setting up the muxer's {what}")]
    Setup {
        /// Which part.
        what: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Another process serves this hybrid socket.
    #[error("{0} is already served by a live process")]
    InUse(PathBuf),
    /// The hybrid socket could not be bound.
    #[error("binding the hybrid vsock socket {path}")]
    Bind {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// The hybrid-vsock backend. See the module documentation.
#[derive(Debug)]
pub struct VsockMuxer {
    cfg: MuxerConfig,
    epoll: Epoll,
    listener: UnixListener,
    timer: TimerFd,
    timer_armed: bool,
    conns: HashMap<ConnKey, Connection>,
    conn_fds: HashMap<RawFd, ConnKey>,
    pending: HashMap<RawFd, PendingHost>,
    rxq: VecDeque<ConnKey>,
    orphan_rst: VecDeque<Header>,
    next_local_port: u32,
    metrics: Arc<VsockMetrics>,
}

/// Host-initiated connections get host-side ports from here up (Firecracker's choice),
/// away from the ports guests listen on.
const FIRST_LOCAL_PORT: u32 = 1 << 30;

impl VsockMuxer {
    /// Binds `cfg.uds_path` (replacing a stale socket file nobody serves) and sets up the
    /// epoll set.
    pub fn new(cfg: MuxerConfig, metrics: Arc<VsockMetrics>) -> Result<Self, MuxerError> {
        let setup = |what| move |source| MuxerError::Setup { what, source };
        let listener = bind_hybrid(&cfg.uds_path)?;
        listener.set_nonblocking(true).map_err(setup("listener"))?;
        let epoll = Epoll::new().map_err(setup("epoll fd"))?;
        let timer = TimerFd::new()
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
            .map_err(setup("timer"))?;
        for fd in [listener.as_raw_fd(), timer.as_raw_fd()] {
            epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, fd as u64),
                )
                .map_err(setup("epoll set"))?;
        }
        Ok(Self {
            cfg,
            epoll,
            listener,
            timer,
            timer_armed: false,
            conns: HashMap::new(),
            conn_fds: HashMap::new(),
            pending: HashMap::new(),
            rxq: VecDeque::new(),
            orphan_rst: VecDeque::new(),
            next_local_port: FIRST_LOCAL_PORT,
            metrics,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &MuxerConfig {
        &self.cfg
    }

    /// The shared counters.
    pub fn metrics(&self) -> &Arc<VsockMetrics> {
        &self.metrics
    }

    /// Live connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Bytes buffered for slow host readers, over all connections.
    pub fn buffered_bytes(&self) -> usize {
        self.conns.values().map(Connection::buffered).sum()
    }

    fn handle_event(&mut self, fd: RawFd, ev: EventSet) {
        if fd == self.listener.as_raw_fd() {
            self.accept_host();
        } else if fd == self.timer.as_raw_fd() {
            // Readable, so this does not block; it clears the expiration count.
            let _ = self.timer.wait();
            self.sweep(Instant::now());
        } else if self.pending.contains_key(&fd) {
            self.poll_pending(fd);
        } else if let Some(&key) = self.conn_fds.get(&fd) {
            if let Some(conn) = self.conns.get_mut(&key) {
                if ev.intersects(EventSet::HANG_UP | EventSet::ERROR) {
                    conn.on_host_hup();
                } else {
                    if ev.contains(EventSet::IN) {
                        conn.on_host_readable();
                    }
                    if ev.contains(EventSet::OUT) {
                        if let Err(e) = conn.on_host_writable() {
                            tracing::debug!(?key, "host stream: {e}");
                            conn.reset();
                        }
                    }
                }
            }
            self.sync(key);
        }
    }

    fn accept_host(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.pending.len() >= self.cfg.max_pending_host
                        || self.conns.len() + self.pending.len() >= self.cfg.max_connections
                    {
                        VsockMetrics::inc(&self.metrics.host_conn_dropped);
                        tracing::debug!("too many host connections; dropping a new one");
                        continue;
                    }
                    if let Err(e) = self.add_pending(stream) {
                        tracing::warn!("accepting a host vsock connection: {e}");
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!("accepting on the hybrid vsock socket: {e}");
                    break;
                }
            }
        }
    }

    fn add_pending(&mut self, stream: UnixStream) -> io::Result<()> {
        stream.set_nonblocking(true)?;
        let fd = stream.as_raw_fd();
        self.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, fd as u64),
        )?;
        let deadline = Instant::now() + self.cfg.connect_timeout;
        self.pending.insert(fd, PendingHost::new(stream, deadline));
        self.update_timer();
        // The line is often there already.
        self.poll_pending(fd);
        Ok(())
    }

    fn drop_pending(&mut self, fd: RawFd) -> Option<PendingHost> {
        let p = self.pending.remove(&fd)?;
        let _ = self.epoll.ctl(
            ControlOperation::Delete,
            fd,
            EpollEvent::new(EventSet::empty(), 0),
        );
        Some(p)
    }

    fn poll_pending(&mut self, fd: RawFd) {
        let Some(p) = self.pending.get_mut(&fd) else {
            return;
        };
        match p.poll_line() {
            Ok(None) => {}
            Ok(Some(port)) => {
                if let Some(p) = self.drop_pending(fd) {
                    self.open_local(p.stream, port);
                }
            }
            Err(e) => {
                tracing::debug!("host vsock connection: {e}");
                VsockMetrics::inc(&self.metrics.host_conn_dropped);
                self.drop_pending(fd);
            }
        }
    }

    fn alloc_local_port(&mut self) -> u32 {
        loop {
            let port = self.next_local_port;
            self.next_local_port = match port.checked_add(1) {
                Some(p) if p != u32::MAX => p,
                _ => FIRST_LOCAL_PORT,
            };
            // At most `max_connections` ports are taken, far fewer than the range.
            if !self.conns.keys().any(|k| k.local_port == port) {
                return port;
            }
        }
    }

    fn open_local(&mut self, stream: UnixStream, peer_port: u32) {
        if self.conns.len() >= self.cfg.max_connections {
            VsockMetrics::inc(&self.metrics.host_conn_dropped);
            return;
        }
        let key = ConnKey {
            local_port: self.alloc_local_port(),
            peer_port,
        };
        let deadline = Instant::now() + self.cfg.connect_timeout;
        let conn = Connection::new_local(
            key,
            self.cfg.guest_cid,
            stream,
            self.cfg.conn_buf_size,
            deadline,
        );
        tracing::debug!(?key, "host connects to guest port {peer_port}");
        self.insert(conn);
        self.update_timer();
    }

    fn insert(&mut self, conn: Connection) {
        let key = conn.key();
        self.conn_fds.insert(conn.fd(), key);
        self.conns.insert(key, conn);
        VsockMetrics::inc(&self.metrics.conn_opened);
        self.sync(key);
    }

    fn accept_guest(&mut self, hdr: &Header) {
        if self.conns.len() >= self.cfg.max_connections {
            VsockMetrics::inc(&self.metrics.conn_refused);
            tracing::debug!("too many connections; refusing guest port {}", hdr.src_port);
            self.queue_orphan_rst(hdr);
            return;
        }
        match connect_peer(&self.cfg.uds_path, hdr.dst_port) {
            Ok(stream) => {
                let key = ConnKey {
                    local_port: hdr.dst_port,
                    peer_port: hdr.src_port,
                };
                tracing::debug!(?key, "guest connects to host port {}", hdr.dst_port);
                let conn = Connection::new_peer(
                    key,
                    self.cfg.guest_cid,
                    stream,
                    self.cfg.conn_buf_size,
                    hdr,
                );
                self.insert(conn);
            }
            Err(e) => {
                VsockMetrics::inc(&self.metrics.conn_refused);
                tracing::debug!("guest connection to host port {}: {e}", hdr.dst_port);
                self.queue_orphan_rst(hdr);
            }
        }
    }

    fn queue_orphan_rst(&mut self, to: &Header) {
        if to.op == OP_RST {
            return;
        }
        if self.orphan_rst.len() >= self.cfg.max_orphan_rst {
            // Only reachable if the device ignores `tx_ready`.
            tracing::debug!("reset queue full; dropping a reset");
            return;
        }
        self.orphan_rst.push_back(Header {
            src_cid: HOST_CID,
            dst_cid: self.cfg.guest_cid,
            src_port: to.dst_port,
            dst_port: to.src_port,
            len: 0,
            type_: TYPE_STREAM,
            op: OP_RST,
            flags: 0,
            buf_alloc: 0,
            fwd_cnt: 0,
        });
    }

    fn reset_conn_or_reply(&mut self, hdr: &Header) {
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        if let Some(conn) = self.conns.get_mut(&key) {
            conn.reset();
            self.sync(key);
        } else {
            self.queue_orphan_rst(hdr);
        }
    }

    /// Brings a connection's epoll registration and RX queueing up to date, or drops it.
    fn sync(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if conn.is_dead() {
            self.remove(key);
            return;
        }
        let want = conn.interest();
        if want != conn.registered {
            let fd = conn.fd();
            let ev = |set| EpollEvent::new(set, fd as u64);
            let r = match (conn.registered, want) {
                (None, Some(set)) => self.epoll.ctl(ControlOperation::Add, fd, ev(set)),
                (Some(_), Some(set)) => self.epoll.ctl(ControlOperation::Modify, fd, ev(set)),
                (Some(_), None) => {
                    self.epoll
                        .ctl(ControlOperation::Delete, fd, ev(EventSet::empty()))
                }
                (None, None) => Ok(()),
            };
            match r {
                Ok(()) => conn.registered = want,
                Err(e) => {
                    tracing::warn!(?key, "updating the epoll set: {e}");
                    conn.reset();
                }
            }
        }
        if conn.has_rx() && !conn.in_rxq {
            conn.in_rxq = true;
            self.rxq.push_back(key);
        }
    }

    fn remove(&mut self, key: ConnKey) {
        if let Some(conn) = self.conns.remove(&key) {
            if conn.registered.is_some() {
                let _ = self.epoll.ctl(
                    ControlOperation::Delete,
                    conn.fd(),
                    EpollEvent::new(EventSet::empty(), 0),
                );
            }
            self.conn_fds.remove(&conn.fd());
            VsockMetrics::inc(&self.metrics.conn_closed);
            tracing::debug!(?key, "connection closed");
        }
    }

    /// Drops host streams and connections whose connect deadline has passed.
    fn sweep(&mut self, now: Instant) {
        let late: Vec<RawFd> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(fd, _)| *fd)
            .collect();
        for fd in late {
            VsockMetrics::inc(&self.metrics.host_conn_dropped);
            self.drop_pending(fd);
        }
        let late: Vec<ConnKey> = self
            .conns
            .values()
            .filter(|c| c.connect_expired(now))
            .map(Connection::key)
            .collect();
        for key in late {
            tracing::debug!(?key, "guest did not answer the connection request in time");
            VsockMetrics::inc(&self.metrics.host_conn_dropped);
            if let Some(c) = self.conns.get_mut(&key) {
                c.reset();
            }
            self.sync(key);
        }
        self.update_timer();
    }

    fn update_timer(&mut self) {
        let need = !self.pending.is_empty() || self.conns.values().any(Connection::is_connecting);
        let r = if need && !self.timer_armed {
            self.timer.reset(SWEEP_INTERVAL, Some(SWEEP_INTERVAL))
        } else if !need && self.timer_armed {
            self.timer.clear()
        } else {
            return;
        };
        match r {
            Ok(()) => self.timer_armed = need,
            Err(e) => tracing::warn!("arming the vsock sweep timer: {e}"),
        }
    }

    #[cfg(test)]
    pub(crate) fn sweep_at(&mut self, now: Instant) {
        self.sweep(now);
    }
}

impl VsockBackend for VsockMuxer {
    fn send_pkt(&mut self, pkt: &TxPacket<'_>) {
        let h = &pkt.hdr;
        VsockMetrics::inc(&self.metrics.tx_packets);
        VsockMetrics::add(&self.metrics.tx_bytes, pkt.data.len() as u64);
        if h.src_cid != self.cfg.guest_cid || h.dst_cid != HOST_CID {
            VsockMetrics::inc(&self.metrics.tx_bad_cid);
            tracing::debug!(
                src = h.src_cid,
                dst = h.dst_cid,
                "dropping a packet: bad CID"
            );
            return;
        }
        if h.type_ != TYPE_STREAM {
            VsockMetrics::inc(&self.metrics.tx_bad_type);
            tracing::debug!(type_ = h.type_, "resetting: unsupported socket type");
            self.reset_conn_or_reply(h);
            return;
        }
        let key = ConnKey {
            local_port: h.dst_port,
            peer_port: h.src_port,
        };
        if let Some(conn) = self.conns.get_mut(&key) {
            if let Err(e) = conn.on_packet(h, pkt.data) {
                if let Some(c) = e.counter(&self.metrics) {
                    VsockMetrics::inc(c);
                }
                tracing::debug!(?key, "resetting: {e}");
                conn.reset();
            }
            self.sync(key);
            return;
        }
        match h.op {
            OP_REQUEST => self.accept_guest(h),
            OP_RST => {}
            _ => {
                VsockMetrics::inc(&self.metrics.tx_unknown_conn);
                self.queue_orphan_rst(h);
            }
        }
    }

    fn reject_pkt(&mut self, hdr: &Header) {
        VsockMetrics::inc(&self.metrics.tx_bad_len);
        if hdr.src_cid != self.cfg.guest_cid || hdr.dst_cid != HOST_CID {
            VsockMetrics::inc(&self.metrics.tx_bad_cid);
            return;
        }
        self.reset_conn_or_reply(hdr);
    }

    fn tx_ready(&self) -> bool {
        self.orphan_rst.len() < self.cfg.max_orphan_rst
    }

    fn has_pending_rx(&self) -> bool {
        !self.orphan_rst.is_empty() || !self.rxq.is_empty()
    }

    fn recv_pkt(&mut self, buf: &mut [u8]) -> Option<Header> {
        let pkt = self.orphan_rst.pop_front().or_else(|| {
            for _ in 0..self.rxq.len() {
                let key = self.rxq.pop_front()?;
                let Some(conn) = self.conns.get_mut(&key) else {
                    continue;
                };
                conn.in_rxq = false;
                let pkt = conn.next_rx(buf);
                self.sync(key);
                if pkt.is_some() {
                    return pkt;
                }
            }
            None
        })?;
        VsockMetrics::inc(&self.metrics.rx_packets);
        VsockMetrics::add(&self.metrics.rx_bytes, u64::from(pkt.len));
        if pkt.op == OP_RST {
            VsockMetrics::inc(&self.metrics.rst_sent);
        }
        Some(pkt)
    }

    fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    fn process_events(&mut self) {
        let mut events = [EpollEvent::new(EventSet::empty(), 0); 64];
        // Bounded: everything ready is handled in a few rounds; a fd that stayed ready would
        // otherwise keep this loop from returning.
        for _ in 0..16 {
            let n = match self.epoll.wait(0, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!("waiting on the vsock epoll set: {e}");
                    return;
                }
            };
            for ev in &events[..n] {
                self.handle_event(ev.fd(), ev.event_set());
            }
            if n < events.len() {
                break;
            }
        }
    }

    fn reset(&mut self) {
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for key in keys {
            self.remove(key);
        }
        self.rxq.clear();
        self.orphan_rst.clear();
        self.update_timer();
    }
}

impl Drop for VsockMuxer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.cfg.uds_path);
    }
}

/// Binds the hybrid socket, replacing a stale socket file that nobody serves.
fn bind_hybrid(path: &Path) -> Result<UnixListener, MuxerError> {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() && UnixStream::connect(path).is_err() {
            let _ = std::fs::remove_file(path);
        } else if meta.file_type().is_socket() {
            return Err(MuxerError::InUse(path.to_path_buf()));
        }
        // Anything else at that path makes bind fail with a clear error below.
    }
    UnixListener::bind(path).map_err(|source| MuxerError::Bind {
        path: path.to_path_buf(),
        source,
    })
}
