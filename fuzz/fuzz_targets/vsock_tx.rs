//! The vsock device's TX path under a hostile guest driver: descriptor chains built from the
//! fuzz input (well-formed packets split at arbitrary points, and raw descriptors with
//! arbitrary addresses, lengths, flags and next indices, loops included, plus arbitrary
//! heads) go through the device, the muxer and its connections; RX buffers of arbitrary
//! shapes take the replies. The device must never panic, must return every in-range chain
//! it consumes, and must keep its buffers bounded.
#![no_main]

use std::cell::RefCell;
use std::os::unix::net::UnixListener;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use moat_fuzz::Input;
use moat_vmm::devices::virtio::vsock::test_utils::TestQueue;
use moat_vmm::devices::virtio::vsock::{
    Header, MuxerConfig, VsockBackend, VsockDevice, VsockMetrics, VsockMuxer, HOST_CID,
};
use vm_memory::{GuestAddress, GuestMemoryMmap};

const CID: u64 = 3;
/// The host port that has a listener (so that guest connections get established).
const OPEN_PORT: u32 = 1024;

struct World {
    dev: VsockDevice<VsockMuxer>,
    peer: UnixListener,
    _dir: std::path::PathBuf,
}

thread_local! {
    static WORLD: RefCell<Option<World>> = const { RefCell::new(None) };
}

fn world() -> World {
    let dir = std::env::temp_dir().join(format!("moat-fuzz-vsock-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let uds = dir.join("v.sock");
    let mut cfg = MuxerConfig::new(CID, &uds);
    cfg.max_connections = 16;
    cfg.conn_buf_size = 64 * 1024;
    let metrics = Arc::new(VsockMetrics::default());
    let muxer = VsockMuxer::new(cfg, metrics.clone()).unwrap();
    let mut peer_path = uds.into_os_string();
    peer_path.push(format!("_{OPEN_PORT}"));
    let peer = UnixListener::bind(peer_path).unwrap();
    peer.set_nonblocking(true).unwrap();
    World {
        dev: VsockDevice::new(CID, muxer, metrics),
        peer,
        _dir: dir,
    }
}

fuzz_target!(|data: &[u8]| {
    WORLD.with(|w| {
        let mut w = w.borrow_mut();
        let w = w.get_or_insert_with(world);
        run(w, data);
    });
});

fn run(w: &mut World, data: &[u8]) {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
    let mut tx = TestQueue::create(&mem, 0, 1 << 20, 2 << 20);
    let mut rx = TestQueue::create(&mem, 0x8000, 3 << 20, 1 << 20);
    let mut txq = tx.queue();
    let mut rxq = rx.queue();
    let mut input = Input(data);
    let mut steps = 0;
    while !input.0.is_empty() && steps < 64 {
        steps += 1;
        match input.u8() % 5 {
            0 => {
                // A packet with a mostly valid header, split at fuzzer-chosen points.
                let mut raw = [0u8; 44];
                raw.copy_from_slice(&{
                    let mut b = input.bytes(44).to_vec();
                    b.resize(44, 0);
                    b
                });
                let mut h = Header::decode(&raw);
                let fix = input.u8();
                if fix & 1 != 0 {
                    h.src_cid = CID;
                    h.dst_cid = HOST_CID;
                    h.type_ = 1;
                }
                if fix & 2 != 0 {
                    h.dst_port = OPEN_PORT;
                    h.op = 1 + (h.op % 7);
                }
                let len = (input.u16() as usize).min(70_000);
                let payload = vec![input.u8(); len];
                if fix & 4 != 0 {
                    h.len = len as u32;
                }
                let cuts = (input.u8() % 4) as usize;
                let mut pieces: Vec<&[u8]> = Vec::new();
                let mut rest = &payload[..];
                for _ in 0..cuts {
                    let at = (input.u16() as usize).min(rest.len());
                    let (a, b) = rest.split_at(at);
                    pieces.push(a);
                    rest = b;
                }
                pieces.push(rest);
                if tx.room() > pieces.len() + 1 {
                    tx.add_tx_split(&h.encode(), &pieces);
                }
            }
            1 => {
                // Raw descriptors: any address, length, flags, next.
                let n = 1 + (input.u8() % 8) as u16;
                let head = input.u8() as u16;
                for i in 0..n {
                    let addr = u64::from(input.u32() % (5 << 20));
                    let len = u32::from(input.u16());
                    let flags = u16::from(input.u8() & 0x7);
                    let next = input.u8() as u16;
                    tx.store_desc((head + i) % 256, addr, len, flags, next);
                }
                if tx.room() > 0 {
                    tx.publish(head);
                }
            }
            2 => {
                let shape: Vec<u32> = (0..1 + input.u8() % 4)
                    .map(|_| u32::from(input.u16() % 8192))
                    .collect();
                if rx.room() > shape.len() {
                    rx.add_rx(&shape);
                }
            }
            3 => {
                if tx.room() > 0 {
                    tx.publish(input.u16());
                }
            }
            _ => {
                let _ = w.dev.process_tx(&mut txq, &mem);
                tx.take_used();
                w.dev.backend_mut().process_events();
                let _ = w.dev.process_rx(&mut rxq, &mem);
                rx.take_used();
                while let Ok((s, _)) = w.peer.accept() {
                    drop(s);
                }
            }
        }
    }
    let _ = w.dev.process_tx(&mut txq, &mem);
    w.dev.backend_mut().process_events();
    let _ = w.dev.process_rx(&mut rxq, &mem);
    assert!(w.dev.backend().buffered_bytes() <= 16 * 64 * 1024);
    assert!(w.dev.backend().connection_count() <= 16);
    w.dev.reset();
    while let Ok((s, _)) = w.peer.accept() {
        drop(s);
    }
}
