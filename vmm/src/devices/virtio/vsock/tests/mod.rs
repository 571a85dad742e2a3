//! Device-level tests: the whole device (queues, device, muxer, connections, hybrid sockets)
//! with `MockSplitQueue` playing the guest driver and real Unix sockets playing the host.
//! No VM, no root.

mod connection;
mod flow;
mod hostile;
mod ops;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use virtio_queue::Queue;

use super::metrics::{MetricsSnapshot, VsockMetrics};
use super::muxer::{MuxerConfig, VsockMuxer};
use super::packet::{Header, PKT_HEADER_SIZE};
use super::test_utils::{GuestMem, TestQueue};
use super::{VsockBackend, VsockDevice, HOST_CID, OP_REQUEST, TYPE_STREAM};

/// The guest CID in these tests.
pub(crate) const CID: u64 = 3;
/// The guest's receive buffer in these tests.
pub(crate) const GUEST_BUF: u32 = 256 * 1024;

/// A scratch directory, removed on drop.
pub(crate) struct Scratch(pub PathBuf);

impl Scratch {
    pub(crate) fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "moat-vsock-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A guest packet header from guest port `src` to host port `dst`.
pub(crate) fn gh(op: u16, src: u32, dst: u32) -> Header {
    Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port: src,
        dst_port: dst,
        len: 0,
        type_: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: GUEST_BUF,
        fwd_cnt: 0,
    }
}

/// The device with its three queues and a hybrid socket in a scratch directory.
pub(crate) struct Harness<'a> {
    pub rx: TestQueue<'a>,
    pub tx: TestQueue<'a>,
    pub ev: TestQueue<'a>,
    pub rxq: Queue,
    pub txq: Queue,
    pub evq: Queue,
    pub dev: VsockDevice<VsockMuxer>,
    pub mem: &'a GuestMem,
    pub _scratch: Scratch,
    pub uds: PathBuf,
    /// RX buffer shape the harness keeps posted.
    pub rx_shape: Vec<u32>,
    rx_posted: usize,
    tx_seen: u16,
    /// Packets `wait_for` passed over, handed out by the next `pump`.
    backlog: Vec<(Header, Vec<u8>)>,
}

impl<'a> Harness<'a> {
    pub(crate) fn new(mem: &'a GuestMem) -> Self {
        Self::with_config(mem, |_| {})
    }

    pub(crate) fn with_config(mem: &'a GuestMem, tweak: impl FnOnce(&mut MuxerConfig)) -> Self {
        let scratch = Scratch::new();
        let uds = scratch.0.join("v.sock");
        let mut cfg = MuxerConfig::new(CID, &uds);
        tweak(&mut cfg);
        let metrics = Arc::new(VsockMetrics::default());
        let muxer = VsockMuxer::new(cfg, metrics.clone()).unwrap();
        let rx = TestQueue::create(mem, 0, 16 << 20, 8 << 20);
        let tx = TestQueue::create(mem, 0x10_0000, 24 << 20, 16 << 20);
        let ev = TestQueue::create(mem, 0x20_0000, 40 << 20, 1 << 20);
        Self {
            rxq: rx.queue(),
            txq: tx.queue(),
            evq: ev.queue(),
            rx,
            tx,
            ev,
            dev: VsockDevice::new(CID, muxer, metrics),
            mem,
            _scratch: scratch,
            uds,
            rx_shape: vec![(PKT_HEADER_SIZE + 4096) as u32],
            rx_posted: 0,
            tx_seen: 0,
            backlog: Vec::new(),
        }
    }

    pub(crate) fn metrics(&self) -> MetricsSnapshot {
        self.dev.metrics().snapshot()
    }

    /// Runs the TX queue and checks that every chain the device took came back.
    pub(crate) fn run_tx(&mut self) {
        let out = self.dev.process_tx(&mut self.txq, self.mem).unwrap();
        let used = self.tx.take_used();
        assert_eq!(used.len() as u32, out.used);
        for (_, len) in &used {
            assert_eq!(*len, 0, "TX chains are returned with length 0");
        }
        self.tx_seen = self.tx_seen.wrapping_add(used.len() as u16);
    }

    /// The guest sends one packet (header + data in two descriptors, as Linux does).
    pub(crate) fn send(&mut self, mut hdr: Header, data: &[u8]) {
        hdr.len = data.len() as u32;
        self.tx.add_tx(&hdr, data);
        self.run_tx();
    }

    /// TX chains the guest added that the device has not returned yet.
    pub(crate) fn tx_outstanding(&self) -> u16 {
        self.tx.used_idx().wrapping_sub(self.tx_seen)
    }

    /// Keeps `n` RX buffers posted.
    pub(crate) fn post_rx(&mut self, n: usize) {
        while self.rx_posted < n {
            let shape = self.rx_shape.clone();
            self.rx.add_rx(&shape);
            self.rx_posted += 1;
        }
    }

    /// Lets the backend handle host events, then runs RX (and a stalled TX); returns the
    /// packets the guest received.
    pub(crate) fn pump(&mut self) -> Vec<(Header, Vec<u8>)> {
        self.post_rx(64);
        self.dev.backend_mut().process_events();
        let mut got = std::mem::take(&mut self.backlog);
        got.extend(self.drain_rx());
        got
    }

    /// Runs RX without handling host events first.
    pub(crate) fn drain_rx(&mut self) -> Vec<(Header, Vec<u8>)> {
        let mut got = Vec::new();
        for _ in 0..64 {
            self.dev.process_rx(&mut self.rxq, self.mem).unwrap();
            let used = self.rx.take_used();
            self.rx_posted -= used.len();
            for (head, len) in used {
                if len == 0 {
                    got.push((Header::default(), Vec::new()));
                    continue;
                }
                let (h, mut d) = self.rx.read_rx(head, len);
                d.truncate(h.len as usize);
                got.push((h, d));
            }
            if self.dev.tx_stalled() {
                self.run_tx();
            }
            if !self.dev.backend().has_pending_rx() {
                break;
            }
            self.post_rx(64);
        }
        got
    }

    /// Pumps until a packet satisfying `want` arrives (or panics after a while).
    pub(crate) fn wait_for(
        &mut self,
        what: &str,
        want: impl Fn(&Header) -> bool,
    ) -> (Header, Vec<u8>) {
        for _ in 0..500 {
            let mut got = self.pump();
            if let Some(i) = got.iter().position(|(h, _)| want(h)) {
                let found = got.remove(i);
                self.backlog = got;
                return found;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        panic!("no {what} arrived; metrics {:?}", self.metrics());
    }

    /// A host process connects through the hybrid socket and asks for guest port `port`.
    pub(crate) fn host_connect(&mut self, port: u32) -> UnixStream {
        let mut s = UnixStream::connect(&self.uds).unwrap();
        s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    }

    /// A host connection to guest port `port`, accepted by the guest: returns the stream
    /// (after its `OK` line) and the host-side port.
    pub(crate) fn open_host_conn(&mut self, port: u32, guest_buf: u32) -> (UnixStream, u32) {
        let mut s = self.host_connect(port);
        let (req, _) = self.wait_for("REQUEST", |h| h.op == OP_REQUEST && h.dst_port == port);
        assert_eq!(
            (req.src_cid, req.dst_cid, req.type_),
            (HOST_CID, CID, TYPE_STREAM)
        );
        let mut resp = gh(super::OP_RESPONSE, port, req.src_port);
        resp.buf_alloc = guest_buf;
        self.send(resp, &[]);
        let line = read_line(&mut s);
        assert_eq!(line, format!("OK {}", req.src_port));
        (s, req.src_port)
    }

    /// Listens where guest connections to host port `port` go.
    pub(crate) fn host_listen(&self, port: u32) -> UnixListener {
        UnixListener::bind(super::hybrid::peer_path(&self.uds, port)).unwrap()
    }
}

/// Reads one `\n`-terminated line, byte by byte.
pub(crate) fn read_line(s: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b) {
            Ok(0) => break,
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) => line.push(b[0]),
            Err(e) => panic!("reading the OK line: {e}"),
        }
    }
    String::from_utf8(line).unwrap()
}

/// The test data pattern.
pub(crate) fn pattern(seed: u32, len: usize) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(31).wrapping_add(seed) % 251) as u8)
        .collect()
}
