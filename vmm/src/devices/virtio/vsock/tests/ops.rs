//! Every op, through the device: handshakes both ways, data, shutdowns, resets, credit
//! packets, the event queue.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

use super::*;
use crate::devices::virtio::vsock::test_utils::guest_mem;
use crate::devices::virtio::vsock::{
    OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_RESPONSE, OP_RST, OP_RW, OP_SHUTDOWN, SHUTDOWN_RCV,
    SHUTDOWN_SEND,
};

#[test]
fn host_connect_handshake_and_data_both_ways() {
    let mem = guest_mem();
    let mut h = Harness::new(&mem);
    let (mut s, hp) = h.open_host_conn(1024, GUEST_BUF);
    assert!(hp >= 1 << 30, "host ports start at 2^30: {hp}");
    s.write_all(b"ping").unwrap();
    let (rw, data) = h.wait_for("RW", |p| p.op == OP_RW);
    assert_eq!(
        (rw.src_port, rw.dst_port, data.as_slice()),
        (hp, 1024, &b"ping"[..])
    );
    assert_eq!(rw.buf_alloc, 256 * 1024, "we advertise our buffer");
    let mut pong = gh(OP_RW, 1024, hp);
    pong.fwd_cnt = 4;
    h.send(pong, b"pong");
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong");
    let m = h.metrics();
    assert_eq!((m.conn_opened, m.rx_bytes, m.tx_bytes), (1, 4, 4));
}

#[test]
fn guest_not_listening_closes_the_host_stream_without_ok() {
    let mem = guest_mem();
    let mut h = Harness::new(&mem);
    let mut s = h.host_connect(4000);
    let (req, _) = h.wait_for("REQUEST", |p| p.op == OP_REQUEST);
    h.send(gh(OP_RST, 4000, req.src_port), &[]);
    h.pump();
    let mut buf = [0u8; 8];
    assert_eq!(s.read(&mut buf).unwrap(), 0, "EOF, no OK line");
    assert_eq!(h.dev.backend().connection_count(), 0);
    assert_eq!(h.metrics().rst_sent, 0, "no reset answers a reset");
}

#[test]
fn unanswered_request_times_out() {
    let mem = guest_mem();
    let mut h = Harness::new(&mem);
    let mut s = h.host_connect(1024);
    h.wait_for("REQUEST", |p| p.op == OP_REQUEST);
    h.dev
        .backend_mut()
        .sweep_at(Instant::now() + Duration::from_secs(6));
    let (rst, _) = h.wait_for("RST", |p| p.op == OP_RST);
    assert_eq!(rst.dst_port, 1024);
    let mut buf = [0u8; 8];
    assert_eq!(s.read(&mut buf).unwrap(), 0);
    assert_eq!(h.metrics().host_conn_dropped, 1);
    assert_eq!(h.dev.backend().connection_count(), 0);
}

#[test]
fn bad_connect_lines_are_dropped() {
    let mem = guest_mem();
    let mut h = Harness::new(&mem);
    for line in [&b"HELLO 5\n"[..], b"CONNECT\n", &[b'7'; 40]] {
        let mut s = std::os::unix::net::UnixStream::connect(&h.uds).unwrap();
        s.write_all(line).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert!(h.pump().is_empty());
        let mut buf = [0u8; 8];
        // Closed with unread bytes in it, the stream may report a reset instead of EOF.
        match s.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("{line:?}: {other:?}"),
        }
    }
    assert_eq!(h.metrics().host_conn_dropped, 3);
    // A host that never finishes its line is dropped at the deadline.
    let _slow = std::os::unix::net::UnixStream::connect(&h.uds).unwrap();
    h.pump();
    h.dev
        .backend_mut()
        .sweep_at(Instant::now() + Duration::from_secs(6));
    assert_eq!(h.metrics().host_conn_dropped, 4);
}

#[test]
fn guest_initiated_connection_to_a_host_port() {
    let mem = guest_mem();
    let mut h = Harness::new(&mem);
    let l = h.host_listen(52);
    h.send(gh(OP_REQUEST, 3000, 52), &[]);
    let (mut hs, _) = l.accept().unwrap();
    let (resp, _) = h.wait_for("RESPONSE", |p| p.op == OP_RESPONSE);
    assert_eq!(
        (resp.src_port, resp.dst_port, resp.dst_cid),
        (52, 3000, CID)
    );
    h.send(gh(OP_RW, 3000, 52), b"from the guest");
    let mut buf = [0u8; 14];
    hs.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"from the guest");
    hs.write_all(b"from the host").unwrap();
    let (_, d) = h.wait_for("RW", |p| p.op == OP_RW);
    assert_eq!(d, b"from the host");
}

#[test]
fn guest_connection_to_a_port_nobody_serves_is_reset() {
    let mem = guest_mem();
    let mut h = Harness::new(&mem);
    h.send(gh(OP_REQUEST, 3000, 77), &[]);
    let got = h.pump();
    assert_eq!(got.len(), 1);
    let (rst, _) = &got[0];
    assert_eq!((rst.op, rst.src_port, rst.dst_port), (OP_RST, 77, 3000));
    assert_eq!(h.metrics().conn_refused, 1);
}

#[test]
fn half_closes_then_reset_finishes_the_connection() {
    let mem = guest_mem();
    let mut h = Harness::new(&mem);
    let (mut s, hp) = h.open_host_conn(1024, GUEST_BUF);
    // The host sends, then shuts its write side: the guest sees the data, then SHUTDOWN(SEND).
    s.write_all(b"request").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let (_, d) = h.wait_for("RW", |p| p.op == OP_RW);
    assert_eq!(d, b"request");
    let (sh, _) = h.wait_for("SHUTDOWN", |p| p.op == OP_SHUTDOWN);
    assert_eq!(sh.flags, SHUTDOWN_SEND);
    // The guest can still answer; then it closes: the host gets everything, then EOF.
    h.send(gh(OP_RW, 1024, hp), b"answer");
    let mut sh = gh(OP_SHUTDOWN, 1024, hp);
    sh.flags = SHUTDOWN_SEND | SHUTDOWN_RCV;
    h.send(sh, &[]);
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"answer");
    let (rst, _) = h.wait_for("RST", |p| p.op == OP_RST);
    assert_eq!(rst.dst_port, 1024);
    assert_eq!(h.dev.backend().connection_count(), 0);
    assert_eq!(h.metrics().conn_closed, 1);
}

#[test]
fn guest_shutdown_rcv_stops_host_reads() {
    let mem = guest_mem();
    let mut h = Harness::new(&mem);
    let (mut s, hp) = h.open_host_conn(1024, GUEST_BUF);
    let mut sh = gh(OP_SHUTDOWN, 1024, hp);
    sh.flags = SHUTDOWN_RCV;
    h.send(sh, &[]);
    s.write_all(b"nobody reads this").unwrap();
    assert!(h.pump().iter().all(|(p, _)| p.op != OP_RW));
    // The guest can still send.
    h.send(gh(OP_RW, 1024, hp), b"still");
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"still");
}

#[test]
fn host_close_is_drained_then_shutdown_then_reset() {
    let mem = guest_mem();
    let mut h = Harness::new(&mem);
    let (mut s, _) = h.open_host_conn(1024, GUEST_BUF);
    s.write_all(b"bye").unwrap();
    drop(s);
    let mut seen = Vec::new();
    for _ in 0..50 {
        seen.extend(h.pump().into_iter().map(|(p, d)| (p.op, p.flags, d)));
        if seen.iter().any(|(op, ..)| *op == OP_RST) {
            break;
        }
    }
    let ops: Vec<u16> = seen.iter().map(|(op, ..)| *op).collect();
    assert_eq!(ops, [OP_RW, OP_SHUTDOWN, OP_RST], "{seen:?}");
    assert_eq!(seen[0].2, b"bye");
    assert_eq!(seen[1].1, SHUTDOWN_SEND | SHUTDOWN_RCV);
}

#[test]
fn guest_reset_closes_the_host_stream() {
    let mem = guest_mem();
    let mut h = Harness::new(&mem);
    let (mut s, hp) = h.open_host_conn(1024, GUEST_BUF);
    h.send(gh(OP_RST, 1024, hp), &[]);
    let mut buf = [0u8; 1];
    assert_eq!(s.read(&mut buf).unwrap(), 0);
    assert_eq!(h.dev.backend().connection_count(), 0);
}

#[test]
fn credit_request_and_update() {
    let mem = guest_mem();
    let mut h = Harness::new(&mem);
    let (_s, hp) = h.open_host_conn(1024, GUEST_BUF);
    h.send(gh(OP_CREDIT_REQUEST, 1024, hp), &[]);
    let (u, _) = h.wait_for("CREDIT_UPDATE", |p| p.op == OP_CREDIT_UPDATE);
    assert_eq!((u.buf_alloc, u.fwd_cnt), (256 * 1024, 0));
    // A credit update from the guest is accepted silently.
    h.send(gh(OP_CREDIT_UPDATE, 1024, hp), &[]);
    assert!(h.pump().is_empty());
}

#[test]
fn transport_reset_event_drops_every_connection() {
    let mem = guest_mem();
    let mut h = Harness::new(&mem);
    let (mut s, _) = h.open_host_conn(1024, GUEST_BUF);
    let head = h.ev.add_rx(&[4]);
    let out = h.dev.send_transport_reset(&mut h.evq, h.mem).unwrap();
    assert_eq!(out.used, 1);
    assert_eq!(h.ev.used_elem(0), (head, 4));
    let addr = h.ev.desc_addr(head);
    assert_eq!(h.ev.read_mem(addr, 4), 0u32.to_le_bytes());
    let mut buf = [0u8; 1];
    assert_eq!(s.read(&mut buf).unwrap(), 0);
    assert_eq!(h.dev.backend().connection_count(), 0);
    assert_eq!(h.metrics().transport_resets, 1);
    // Without an event buffer it says so.
    assert!(h.dev.send_transport_reset(&mut h.evq, h.mem).is_err());
}
