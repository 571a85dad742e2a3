//! Data paths and flow control: multi-descriptor TX and RX, credit both ways, back-pressure
//! from a slow host reader, and many connections moving data at once.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;

use super::*;
use crate::devices::virtio::vsock::test_utils::guest_mem;
use crate::devices::virtio::vsock::{
    MAX_PKT_DATA, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_RST, OP_RW,
};

#[test]
fn tx_64k_split_over_three_descriptors_reaches_the_host_intact() {
    let mem = guest_mem();
    let mut h = Harness::new(&mem);
    let (mut s, hp) = h.open_host_conn(1024, GUEST_BUF);
    let data = pattern(1, 64 * 1024);
    let mut p = gh(OP_RW, 1024, hp);
    p.len = data.len() as u32;
    // What Linux 6.12 does above ~32 KiB: header descriptor, then the data in pieces.
    h.tx.add_tx_split(
        &p.encode(),
        &[&data[..4096], &data[4096..36864], &data[36864..]],
    );
    h.run_tx();
    let mut got = vec![0u8; data.len()];
    s.read_exact(&mut got).unwrap();
    assert!(got == data, "64 KiB arrived intact");
    assert_eq!(h.tx_outstanding(), 0);
    let m = h.metrics();
    assert_eq!((m.tx_bytes, m.tx_malformed, m.tx_bad_len), (65536, 0, 0));
    assert_eq!(m.tx_multi_desc, 1);
}

#[test]
fn rx_packets_span_split_buffers() {
    let mem = guest_mem();
    let mut h = Harness::new(&mem);
    // Buffers split inside the header and across the data.
    h.rx_shape = vec![20, 24 + 100, 1000, 2000];
    let (mut s, _) = h.open_host_conn(1024, GUEST_BUF);
    let data = pattern(2, 10_000);
    s.write_all(&data).unwrap();
    let mut got = Vec::new();
    for _ in 0..100 {
        for (p, d) in h.pump() {
            assert_eq!(p.op, OP_RW);
            assert!(d.len() <= 3100, "a packet fits one RX chain: {}", d.len());
            got.extend(d);
        }
        if got.len() == data.len() {
            break;
        }
    }
    assert!(got == data);
}

#[test]
fn host_to_guest_respects_the_guests_credit() {
    let mem = guest_mem();
    let mut h = Harness::new(&mem);
    let (mut s, hp) = h.open_host_conn(1024, 1000);
    s.write_all(&pattern(3, 5000)).unwrap();
    let mut got = 0usize;
    let mut requests = 0;
    for _ in 0..50 {
        for (p, d) in h.pump() {
            match p.op {
                OP_RW => got += d.len(),
                OP_CREDIT_REQUEST => requests += 1,
                op => panic!("unexpected op {op}"),
            }
        }
        assert!(got <= 1000, "never more than the credit: {got}");
        if requests > 0 {
            break;
        }
    }
    assert_eq!((got, requests), (1000, 1));
    // The guest reads it all and says so: the next 1000 bytes come.
    let mut upd = gh(OP_CREDIT_UPDATE, 1024, hp);
    upd.buf_alloc = 1000;
    upd.fwd_cnt = 1000;
    h.send(upd, &[]);
    let mut more = 0;
    for _ in 0..50 {
        more += h
            .pump()
            .iter()
            .filter(|(p, _)| p.op == OP_RW)
            .map(|(_, d)| d.len())
            .sum::<usize>();
        if more == 1000 {
            break;
        }
    }
    assert_eq!(more, 1000);
}

#[test]
fn slow_host_reader_stops_the_guest_without_growing_memory() {
    let mem = guest_mem();
    let buf = 512 * 1024;
    let mut h = Harness::with_config(&mem, |c| c.conn_buf_size = buf);
    let (mut s, hp) = h.open_host_conn(1024, GUEST_BUF);
    // The guest sends what its credit allows, tracking our fwd_cnt as a Linux guest does.
    let chunk = pattern(4, MAX_PKT_DATA);
    let mut sent = 0u32;
    let mut host_fwd = 0u32;
    let mut host_buf = buf;
    loop {
        let credit = host_buf - (sent - host_fwd);
        if credit == 0 {
            break;
        }
        let n = credit.min(chunk.len() as u32) as usize;
        h.send(gh(OP_RW, 1024, hp), &chunk[..n]);
        sent += n as u32;
        for (p, _) in h.pump() {
            host_fwd = p.fwd_cnt;
            host_buf = p.buf_alloc;
        }
        assert!(h.dev.backend().buffered_bytes() <= buf as usize);
    }
    // Out of credit: the rest waits in the guest, and the muxer holds at most `buf` bytes.
    assert!(h.dev.backend().buffered_bytes() > 0);
    assert!(h.dev.backend().buffered_bytes() <= buf as usize);
    assert_eq!(h.metrics().tx_credit_overflow, 0);
    // The host reads: the buffer drains and credit comes back.
    s.set_nonblocking(true).unwrap();
    let mut drained = 0u32;
    let mut sink = vec![0u8; 1 << 20];
    let mut updated = false;
    for _ in 0..1000 {
        match s.read(&mut sink) {
            Ok(n) => drained += n as u32,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => panic!("{e}"),
        }
        for (p, _) in h.pump() {
            if p.op == OP_CREDIT_UPDATE {
                host_fwd = p.fwd_cnt;
                updated = true;
            }
        }
        if drained == sent {
            break;
        }
    }
    assert_eq!(drained, sent);
    assert!(updated);
    assert_eq!(host_fwd, sent, "the guest learns everything was consumed");
    assert_eq!(h.dev.backend().buffered_bytes(), 0);
}

/// One connection as the simulated guest sees it: it echoes what it receives.
struct GuestEcho {
    port: u32,
    host_port: u32,
    pending: Vec<u8>,
    sent: u32,
    peer_buf: u32,
    peer_fwd: u32,
    fwd: u32,
    last_update: u32,
}

#[test]
fn many_connections_echo_through_the_device() {
    const CONNS: usize = 16;
    const LEN: usize = 256 * 1024;
    let mem = guest_mem();
    let mut h = Harness::new(&mem);
    let mut hosts: Vec<(UnixStream, Vec<u8>, usize, Vec<u8>)> = Vec::new();
    let mut guests: HashMap<u32, GuestEcho> = HashMap::new();
    for i in 0..CONNS {
        let port = 5000 + i as u32;
        let (s, hp) = h.open_host_conn(port, GUEST_BUF);
        s.set_nonblocking(true).unwrap();
        hosts.push((s, pattern(i as u32, LEN), 0, Vec::new()));
        guests.insert(
            hp,
            GuestEcho {
                port,
                host_port: hp,
                pending: Vec::new(),
                sent: 0,
                peer_buf: 256 * 1024,
                peer_fwd: 0,
                fwd: 0,
                last_update: 0,
            },
        );
    }
    let mut rounds = 0;
    while hosts.iter().any(|(_, want, _, got)| got.len() < want.len()) {
        rounds += 1;
        assert!(rounds < 20_000, "stuck; metrics {:?}", h.metrics());
        // Host side: write what the socket takes, read what came back.
        for (s, want, off, got) in hosts.iter_mut() {
            if *off < want.len() {
                match s.write(&want[*off..(*off + 32 * 1024).min(want.len())]) {
                    Ok(n) => *off += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => panic!("{e}"),
                }
            }
            let mut buf = [0u8; 65536];
            match s.read(&mut buf) {
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
        // Device to guest.
        for (p, d) in h.pump() {
            assert_ne!(p.op, OP_RST, "reset: {:?}", h.metrics());
            let g = guests.get_mut(&p.src_port).expect("known connection");
            g.peer_buf = p.buf_alloc;
            g.peer_fwd = p.fwd_cnt;
            if p.op == OP_RW {
                g.pending.extend_from_slice(&d);
                g.fwd += d.len() as u32;
            }
        }
        // Guest to device: echo within the host's credit, 3-way split to exercise gather;
        // tell the host about consumed bytes like Linux does.
        for g in guests.values_mut() {
            let credit = g.peer_buf - (g.sent - g.peer_fwd);
            let n = (credit as usize).min(g.pending.len()).min(MAX_PKT_DATA);
            if n > 0 {
                let mut p = gh(OP_RW, g.port, g.host_port);
                p.len = n as u32;
                p.fwd_cnt = g.fwd;
                let (a, rest) = g.pending[..n].split_at(n / 3);
                let (b, c) = rest.split_at(rest.len() / 2);
                h.tx.add_tx_split(&p.encode(), &[a, b, c]);
                g.pending.drain(..n);
                g.sent += n as u32;
                g.last_update = g.fwd;
            } else if g.fwd - g.last_update >= 64 * 1024 {
                let mut p = gh(OP_CREDIT_UPDATE, g.port, g.host_port);
                p.fwd_cnt = g.fwd;
                h.tx.add_tx(&p, &[]);
                g.last_update = g.fwd;
            }
        }
        h.run_tx();
    }
    for (i, (_, want, _, got)) in hosts.iter().enumerate() {
        assert!(got == want, "connection {i}: bytes differ");
    }
    let m = h.metrics();
    assert_eq!(m.tx_bytes, (CONNS * LEN) as u64);
    assert_eq!(m.rx_bytes, (CONNS * LEN) as u64);
    assert_eq!(
        m.tx_malformed + m.tx_bad_len + m.tx_bad_op + m.tx_credit_overflow + m.rst_sent,
        0
    );
}
