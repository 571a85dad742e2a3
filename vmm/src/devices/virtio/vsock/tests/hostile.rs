//! A hostile guest: bad CIDs, types, ops, lengths, descriptor chains, and floods. Every
//! case is answered (reset or drop), counted, and leaves memory bounded and every chain
//! returned.

use std::io::Read;

use super::*;
use crate::devices::virtio::vsock::test_utils::guest_mem;
use crate::devices::virtio::vsock::{MAX_PKT_DATA, OP_RST, OP_RW};
use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_NEXT;
use vm_memory::Bytes;

#[test]
fn wrong_cids_are_dropped_without_answer() {
    let mem = guest_mem();
    let mut h = Harness::new(&mem);
    let mut a = gh(OP_REQUEST, 1, 2);
    a.src_cid = 7;
    let mut b = gh(OP_REQUEST, 1, 2);
    b.dst_cid = 99;
    let mut c = gh(OP_RW, 1, 2);
    c.src_cid = u64::MAX;
    for p in [a, b, c] {
        h.send(p, &[]);
    }
    assert!(h.pump().is_empty());
    assert_eq!(h.metrics().tx_bad_cid, 3);
}

#[test]
fn unknown_type_and_unknown_connection_get_resets() {
    let mem = guest_mem();
    let mut h = Harness::new(&mem);
    let mut p = gh(OP_REQUEST, 5, 6);
    p.type_ = 2; // SEQPACKET, not offered
    h.send(p, &[]);
    h.send(gh(OP_RW, 8, 9), b"to nowhere");
    h.send(gh(OP_RST, 8, 9), &[]); // never answered
    let got = h.pump();
    let rsts: Vec<(u32, u32)> = got
        .iter()
        .map(|(p, _)| {
            assert_eq!(p.op, OP_RST);
            (p.src_port, p.dst_port)
        })
        .collect();
    assert_eq!(rsts, [(6, 5), (9, 8)]);
    let m = h.metrics();
    assert_eq!((m.tx_bad_type, m.tx_unknown_conn, m.rst_sent), (1, 1, 2));
}

#[test]
fn bad_ops_and_data_on_control_ops_reset_the_connection() {
    let mem = guest_mem();
    for (op, data) in [
        (42u16, &b""[..]),
        (super::super::OP_CREDIT_UPDATE, b"x"),
        (OP_REQUEST, b""),
    ] {
        let mut h = Harness::new(&mem);
        let (mut s, hp) = h.open_host_conn(1024, GUEST_BUF);
        h.send(gh(op, 1024, hp), data);
        let (rst, _) = h.wait_for("RST", |p| p.op == OP_RST);
        assert_eq!(rst.src_port, hp);
        let mut b = [0u8; 1];
        assert_eq!(
            s.read(&mut b).unwrap(),
            0,
            "host stream closed after op {op}"
        );
        assert_eq!(h.metrics().tx_bad_op, 1, "op {op}");
    }
}

#[test]
fn bad_lengths_reset_the_connection_and_return_the_chain() {
    let mem = guest_mem();
    let mut h = Harness::new(&mem);
    let (_s, hp) = h.open_host_conn(1024, GUEST_BUF);
    // Announces more than a packet may carry.
    let mut p = gh(OP_RW, 1024, hp);
    p.len = MAX_PKT_DATA as u32 + 1;
    h.tx.add_tx_split(&p.encode(), &[&[0u8; 16]]);
    h.run_tx();
    h.wait_for("RST", |p| p.op == OP_RST);
    // Announces more than the chain holds (unknown connection by now: reset reply).
    let mut p = gh(OP_RW, 1024, hp);
    p.len = 1000;
    h.tx.add_tx_split(&p.encode(), &[&[0u8; 10]]);
    h.run_tx();
    h.wait_for("RST", |p| p.op == OP_RST);
    assert_eq!(h.metrics().tx_bad_len, 2);
    assert_eq!(h.tx_outstanding(), 0);
}

#[test]
fn malformed_chains_are_dropped_and_returned() {
    let mem = guest_mem();
    let mut h = Harness::new(&mem);
    // Header shorter than 44 bytes.
    h.tx.add_tx_split(&[1u8; 20], &[]);
    // A device-writable descriptor in TX.
    h.tx.add_chain_raw(&[(PKT_HEADER_SIZE as u32, true)]);
    // A descriptor pointing outside guest memory.
    h.tx.add_descs(&[(u64::MAX - 10, 64, false)]);
    h.run_tx();
    assert_eq!(h.metrics().tx_malformed, 3);
    assert!(h.pump().is_empty());
}

#[test]
fn looping_and_overlong_chains_end_and_are_returned() {
    let mem = guest_mem();
    let mut h = Harness::new(&mem);
    // A zero-length descriptor pointing at itself: virtio-queue ends the chain after
    // queue-size steps, with no header read.
    h.tx.store_desc(200, 30 << 20, 0, VRING_DESC_F_NEXT as u16, 200);
    h.tx.publish(200);
    // A 4-byte descriptor pointing at itself: the same 4 bytes over and over make a garbage
    // header, which is refused for its CIDs; the loop still ends.
    let hdr = gh(OP_RW, 1, 2).encode();
    mem.write_slice(&hdr, vm_memory::GuestAddress(30 << 20))
        .unwrap();
    h.tx.store_desc(201, 30 << 20, 4, VRING_DESC_F_NEXT as u16, 201);
    h.tx.publish(201);
    // A chain of 100 one-byte descriptors holding a valid request, then junk.
    let base = 31 << 20;
    let descs: Vec<(u64, u32, bool)> = (0..100u64).map(|i| (base + i, 1, false)).collect();
    mem.write_slice(
        &gh(OP_REQUEST, 1, 555).encode(),
        vm_memory::GuestAddress(base),
    )
    .unwrap();
    h.tx.add_descs(&descs);
    h.run_tx();
    let m = h.metrics();
    assert_eq!(m.tx_malformed, 1);
    assert_eq!(m.tx_bad_cid, 1);
    // The 100-descriptor chain was gathered: a request to a port nobody serves.
    assert_eq!(m.conn_refused, 1);
    assert_eq!(h.tx_outstanding(), 0);
}

#[test]
fn bad_rx_chains_are_returned_empty() {
    let mem = guest_mem();
    let mut h = Harness::new(&mem);
    h.send(gh(OP_RW, 8, 9), b"x"); // queue one reset
    h.rx.add_chain_raw(&[(64, false)]); // read-only RX buffer
    h.rx.add_rx(&[10]); // too small for a header
    h.rx.add_rx(&[4096]);
    let out = h.dev.process_rx(&mut h.rxq, h.mem).unwrap();
    assert_eq!(out.used, 3);
    let used = h.rx.take_used();
    assert_eq!(
        (used[0].1, used[1].1, used[2].1),
        (0, 0, PKT_HEADER_SIZE as u32)
    );
    assert_eq!(h.metrics().rx_malformed, 2);
}

#[test]
fn credit_overflow_resets() {
    let mem = guest_mem();
    let mut h = Harness::with_config(&mem, |c| c.conn_buf_size = 1000);
    let (_s, hp) = h.open_host_conn(1024, GUEST_BUF);
    h.send(gh(OP_RW, 1024, hp), &[1u8; 1001]);
    h.wait_for("RST", |p| p.op == OP_RST);
    assert_eq!(h.metrics().tx_credit_overflow, 1);
}

#[test]
fn flood_of_resets_stalls_tx_instead_of_growing() {
    let mem = guest_mem();
    let mut h = Harness::with_config(&mem, |c| c.max_orphan_rst = 16);
    // 200 packets for unknown connections, no RX buffers posted.
    for i in 0..200 {
        h.tx.add_tx(&gh(OP_RW, 1000 + i, 1), &[]);
    }
    h.run_tx();
    assert!(h.dev.tx_stalled());
    assert_eq!(
        h.metrics().tx_unknown_conn,
        16,
        "TX stops once 16 replies wait"
    );
    assert_eq!(h.tx_outstanding(), 0, "every chain taken was returned");
    // RX buffers arrive: the replies drain and TX resumes, until all 200 are answered.
    let mut rsts = 0;
    for _ in 0..100 {
        rsts += h.pump().iter().filter(|(p, _)| p.op == OP_RST).count();
        if rsts == 200 {
            break;
        }
    }
    assert_eq!(rsts, 200);
    assert!(!h.dev.tx_stalled());
}

#[test]
fn connection_flood_is_capped() {
    let mem = guest_mem();
    let mut h = Harness::with_config(&mem, |c| c.max_connections = 8);
    let _l = h.host_listen(52);
    for i in 0..20 {
        h.send(gh(OP_REQUEST, 2000 + i, 52), &[]);
    }
    assert_eq!(h.dev.backend().connection_count(), 8);
    assert_eq!(h.metrics().conn_refused, 12);
    let got = h.pump();
    assert_eq!(got.iter().filter(|(p, _)| p.op == OP_RST).count(), 12);
}

#[test]
fn host_connection_flood_is_capped() {
    let mem = guest_mem();
    let mut h = Harness::with_config(&mem, |c| c.max_pending_host = 4);
    let streams: Vec<_> = (0..10)
        .map(|_| std::os::unix::net::UnixStream::connect(&h.uds).unwrap())
        .collect();
    h.pump();
    assert_eq!(h.metrics().host_conn_dropped, 6);
    drop(streams);
}

#[test]
fn writable_flag_checks_are_per_descriptor() {
    // A TX chain whose data descriptor is writable is malformed even after a good header.
    let mem = guest_mem();
    let mut h = Harness::new(&mem);
    let mut p = gh(OP_RW, 1, 2);
    p.len = 8;
    let a = 32 << 20;
    mem.write_slice(&p.encode(), vm_memory::GuestAddress(a))
        .unwrap();
    h.tx.add_descs(&[(a, PKT_HEADER_SIZE as u32, false), (a + 64, 8, true)]);
    h.run_tx();
    assert_eq!(h.metrics().tx_malformed, 1);
}

#[test]
fn heads_outside_the_table_are_dropped_not_fatal() {
    let mem = guest_mem();
    let mut h = Harness::new(&mem);
    h.tx.publish(300);
    h.tx.add_tx(&gh(OP_RW, 8, 9), &[]);
    h.dev.process_tx(&mut h.txq, h.mem).unwrap();
    assert_eq!(h.metrics().tx_malformed, 1);
    assert_eq!(
        h.metrics().tx_unknown_conn,
        1,
        "the next chain is still served"
    );
    h.rx.publish(999);
    let got = h.pump();
    assert_eq!(got.len(), 1, "the reset went into the next good buffer");
    assert_eq!(h.metrics().rx_malformed, 1);
}
