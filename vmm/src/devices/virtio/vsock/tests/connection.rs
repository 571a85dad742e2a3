//! The connection state machine on its own, over a socket pair.

use std::io::Read;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use vmm_sys_util::epoll::EventSet;

use crate::devices::virtio::vsock::connection::{ConnError, ConnKey, Connection};
use crate::devices::virtio::vsock::packet::Header;
use crate::devices::virtio::vsock::{
    HOST_CID, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW,
    OP_SHUTDOWN, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};

fn key() -> ConnKey {
    ConnKey {
        local_port: 1 << 30,
        peer_port: 1024,
    }
}

fn guest(op: u16, len: u32) -> Header {
    Header {
        src_cid: 3,
        dst_cid: HOST_CID,
        src_port: 1024,
        dst_port: 1 << 30,
        len,
        type_: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: 256 * 1024,
        fwd_cnt: 0,
    }
}

fn established(buf_alloc: u32) -> (Connection, UnixStream) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    let mut c = Connection::new_peer(key(), 3, ours, buf_alloc, &guest(OP_REQUEST, 0));
    let mut buf = [0u8; 16];
    assert_eq!(c.next_rx(&mut buf).unwrap().op, OP_RESPONSE);
    (c, theirs)
}

#[test]
fn local_init_sends_request_then_ok_line_on_response() {
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + std::time::Duration::from_secs(5);
    let mut c = Connection::new_local(key(), 3, ours, 4096, deadline);
    assert!(c.has_rx());
    let mut buf = [0u8; 16];
    let h = c.next_rx(&mut buf).unwrap();
    assert_eq!(
        (h.op, h.src_cid, h.dst_cid, h.buf_alloc),
        (OP_REQUEST, 2, 3, 4096)
    );
    assert!(!c.has_rx());
    // RW before the response is a protocol error.
    assert!(matches!(
        c.on_packet(&guest(OP_RW, 1), b"x"),
        Err(ConnError::UnexpectedOp { .. })
    ));
    c.on_packet(&guest(OP_RESPONSE, 0), &[]).unwrap();
    let mut line = [0u8; 14];
    theirs.read_exact(&mut line).unwrap();
    assert_eq!(&line, b"OK 1073741824\n");
    assert!(!c.is_connecting());
}

#[test]
fn credit_overflow_is_refused_and_buffer_is_bounded() {
    let (mut c, _theirs) = established(8);
    assert!(matches!(
        c.on_packet(&guest(OP_RW, 9), &[1u8; 9]),
        Err(ConnError::CreditOverflow { len: 9, free: 8 })
    ));
    c.on_packet(&guest(OP_RW, 8), &[1u8; 8]).unwrap();
}

#[test]
fn slow_host_reader_buffers_at_most_buf_alloc_then_credit_flows_again() {
    let buf_alloc = 4 << 20;
    let (mut c, mut theirs) = established(buf_alloc);
    let chunk = vec![7u8; 64 * 1024];
    let mut sent = 0u32;
    // The host does not read: the socket buffer fills, then `to_host`, up to the credit.
    loop {
        match c.on_packet(&guest(OP_RW, chunk.len() as u32), &chunk) {
            Ok(()) => sent += chunk.len() as u32,
            Err(ConnError::CreditOverflow { .. }) => break,
            Err(e) => panic!("{e}"),
        }
        assert!(c.buffered() <= buf_alloc as usize);
    }
    assert!(sent >= buf_alloc - chunk.len() as u32, "sent {sent}");
    assert!(c.buffered() > 0);
    let mut hdrbuf = [0u8; 16];
    // The host reads some; flushing frees space and a credit update becomes due.
    let mut sink = vec![0u8; 1 << 20];
    theirs.set_nonblocking(true).unwrap();
    let mut drained = 0;
    while drained < 2 << 20 {
        match theirs.read(&mut sink) {
            Ok(n) => drained += n,
            Err(_) => {
                c.on_host_writable().unwrap();
            }
        }
    }
    c.on_host_writable().unwrap();
    let h = c.next_rx(&mut hdrbuf).unwrap();
    assert_eq!(h.op, OP_CREDIT_UPDATE);
    assert!(h.fwd_cnt >= 1 << 20, "fwd_cnt {}", h.fwd_cnt);
}

#[test]
fn host_to_guest_respects_peer_credit_and_requests_more() {
    let (mut c, mut theirs) = established(4096);
    let mut upd = guest(OP_CREDIT_UPDATE, 0);
    upd.buf_alloc = 100;
    c.on_packet(&upd, &[]).unwrap();
    std::io::Write::write_all(&mut theirs, &[5u8; 300]).unwrap();
    c.on_host_readable();
    let mut buf = vec![0u8; 4096];
    let h = c.next_rx(&mut buf).unwrap();
    assert_eq!((h.op, h.len), (OP_RW, 100));
    assert_eq!(c.peer_credit(), 0);
    assert_eq!(
        c.interest(),
        Some(EventSet::empty()),
        "no EPOLLIN without credit"
    );
    let h = c.next_rx(&mut buf).unwrap();
    assert_eq!(h.op, OP_CREDIT_REQUEST);
    assert!(!c.has_rx(), "one credit request only");
    upd.fwd_cnt = 100;
    c.on_packet(&upd, &[]).unwrap();
    assert!(c.has_rx());
    let h = c.next_rx(&mut buf).unwrap();
    assert_eq!((h.op, h.len), (OP_RW, 100));
}

#[test]
fn half_close_both_ways_then_rst() {
    let (mut c, mut theirs) = established(4096);
    // The guest shuts its send side after some data: the host reads it, then EOF.
    c.on_packet(&guest(OP_RW, 3), b"abc").unwrap();
    let mut sh = guest(OP_SHUTDOWN, 0);
    sh.flags = SHUTDOWN_SEND;
    c.on_packet(&sh, &[]).unwrap();
    let mut got = Vec::new();
    theirs.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"abc");
    // The host still writes, then shuts down.
    std::io::Write::write_all(&mut theirs, b"reply").unwrap();
    theirs.shutdown(Shutdown::Write).unwrap();
    c.on_host_readable();
    let mut buf = vec![0u8; 64];
    let h = c.next_rx(&mut buf).unwrap();
    assert_eq!((h.op, &buf[..5]), (OP_RW, &b"reply"[..]));
    let h = c.next_rx(&mut buf).unwrap();
    assert_eq!((h.op, h.flags), (OP_SHUTDOWN, SHUTDOWN_SEND));
    let h = c.next_rx(&mut buf).unwrap();
    assert_eq!(h.op, OP_RST);
    assert!(c.is_dead());
}

#[test]
fn guest_close_waits_for_flush_then_rst() {
    let (mut c, theirs) = established(4096);
    let mut sh = guest(OP_SHUTDOWN, 0);
    sh.flags = SHUTDOWN_SEND | SHUTDOWN_RCV;
    c.on_packet(&sh, &[]).unwrap();
    let mut buf = vec![0u8; 64];
    assert_eq!(c.next_rx(&mut buf).unwrap().op, OP_RST);
    drop(theirs);
}

#[test]
fn protocol_errors() {
    let (mut c, _t) = established(4096);
    assert!(matches!(
        c.on_packet(&guest(OP_REQUEST, 0), &[]),
        Err(ConnError::UnexpectedOp { op: OP_REQUEST, .. })
    ));
    assert!(matches!(
        c.on_packet(&guest(99, 0), &[]),
        Err(ConnError::UnknownOp(99))
    ));
    assert!(matches!(
        c.on_packet(&guest(OP_CREDIT_UPDATE, 2), b"xy"),
        Err(ConnError::DataOnControl { .. })
    ));
    let mut sh = guest(OP_SHUTDOWN, 0);
    sh.flags = SHUTDOWN_SEND;
    c.on_packet(&sh, &[]).unwrap();
    assert!(matches!(
        c.on_packet(&guest(OP_RW, 1), b"z"),
        Err(ConnError::UnexpectedOp { op: OP_RW, .. })
    ));
    c.on_packet(&guest(OP_RST, 0), &[]).unwrap();
    assert!(c.is_dead());
}

#[test]
fn host_hangup_drains_then_shuts_down_and_resets() {
    let (mut c, mut theirs) = established(4096);
    std::io::Write::write_all(&mut theirs, b"last words").unwrap();
    drop(theirs);
    c.on_host_hup();
    assert_eq!(c.interest(), None);
    let mut buf = vec![0u8; 64];
    let h = c.next_rx(&mut buf).unwrap();
    assert_eq!((h.op, h.len), (OP_RW, 10));
    let h = c.next_rx(&mut buf).unwrap();
    assert_eq!((h.op, h.flags), (OP_SHUTDOWN, SHUTDOWN_SEND | SHUTDOWN_RCV));
    assert_eq!(c.next_rx(&mut buf).unwrap().op, OP_RST);
    assert!(c.next_rx(&mut buf).is_none());
}

#[test]
fn credit_request_gets_an_update() {
    let (mut c, _t) = established(4096);
    c.on_packet(&guest(OP_CREDIT_REQUEST, 0), &[]).unwrap();
    let mut buf = [0u8; 8];
    let h = c.next_rx(&mut buf).unwrap();
    assert_eq!((h.op, h.buf_alloc), (OP_CREDIT_UPDATE, 4096));
}
