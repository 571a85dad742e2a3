//! VM tier: host↔guest vsock end to end, through moat's own device served to QEMU over
//! vhost-user and the hybrid Unix socket. The guest side is the agent: its control server
//! (port 1024) and its test services (`moat.test_port`, see `agent/src/testsvc.rs`: `E`
//! echo, `S` sink, `C` connect out to a host port).

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moat::boot::{TempDir, VsockVm};
use moat::vsock::{connect, AgentClient, MetricsSnapshot};

/// Where the agent serves its test services in these tests.
const TEST_PORT: u32 = 5000;
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);

/// The agent's test pattern (`agent/src/testsvc.rs`).
fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(31) % 251) as u8
}

/// Boots a guest with the test services on, and connects to its agent.
fn boot(tag: &str) -> (TempDir, VsockVm, AgentClient) {
    let paths = moat_tests::guest_paths();
    let dir = TempDir::new(tag).unwrap();
    let mut vm = VsockVm::start(&paths, &dir.0, vec![format!("moat.test_port={TEST_PORT}")])
        .unwrap_or_else(|e| panic!("starting the VM: {e}"));
    let (client, _) = vm
        .wait_for_agent(BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("waiting for the agent: {e}"));
    (dir, vm, client)
}

/// Opens a test-service connection in `mode`.
fn open(uds: &Path, mode: u8) -> UnixStream {
    let (mut s, _) = connect(uds, TEST_PORT, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("connecting to the test services: {e}"));
    s.write_all(&[mode]).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    s
}

/// Shuts the guest down and checks that the device saw nothing malformed.
fn finish(mut vm: VsockVm, mut client: AgentClient) -> MetricsSnapshot {
    let (_, m) = vm
        .shutdown(&mut client, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("shutting down: {e}"));
    assert_eq!(m.tx_malformed, 0, "{m:?}");
    assert_eq!(m.tx_bad_len, 0, "{m:?}");
    assert_eq!(m.tx_bad_op, 0, "{m:?}");
    assert_eq!(m.tx_credit_overflow, 0, "{m:?}");
    assert_eq!(m.rx_malformed, 0, "{m:?}");
    m
}

#[test]
#[ignore = "VM tier: needs QEMU and the built guest; run by scripts/test.sh"]
fn hello_through_the_hybrid_socket() {
    let (_dir, vm, mut client) = boot("vsock-hello");
    assert_eq!(client.agent_version(), env!("CARGO_PKG_VERSION"));
    let mut rtts: Vec<Duration> = (0..200).map(|_| client.ping().unwrap()).collect();
    rtts.sort();
    println!(
        "Hello round trip over vsock (200 on one connection): median {:.0} µs, p90 {:.0} µs",
        rtts[100].as_secs_f64() * 1e6,
        rtts[180].as_secs_f64() * 1e6
    );
    // A second control connection works alongside the first.
    let mut second = AgentClient::connect(
        &vm.uds,
        moat_protocol::CONTROL_PORT,
        Duration::from_secs(10),
    )
    .unwrap();
    second.ping().unwrap();
    drop(second);
    // A port nobody listens on is refused by the guest, and says so.
    let e = connect(&vm.uds, 4999, Duration::from_secs(10)).unwrap_err();
    assert!(
        matches!(e, moat::vsock::ConnectError::Refused { port: 4999 }),
        "{e}"
    );
    let m = finish(vm, client);
    assert!(m.conn_opened >= 3, "{m:?}");
}

/// A host server on `<uds>_<port>`: reads each connection to its end, then echoes it all.
fn host_echo_server(uds: &Path, port: u32) -> std::thread::JoinHandle<u64> {
    let mut path = uds.as_os_str().to_owned();
    path.push(format!("_{port}"));
    let l = UnixListener::bind(PathBuf::from(path)).unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        s.write_all(&all).unwrap();
        all.len() as u64
    })
}

/// Asks the agent to connect out to host port `port` with `len` bytes; returns
/// (echo matched, bytes it got back), or `None` when the agent closed without answering.
fn connect_out(uds: &Path, port: u32, len: u32) -> Option<(bool, u64)> {
    let mut s = open(uds, b'C');
    s.write_all(&port.to_be_bytes()).unwrap();
    s.write_all(&len.to_be_bytes()).unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).unwrap();
    match answer.len() {
        0 => None,
        9 => Some((
            answer[0] == 1,
            u64::from_be_bytes(answer[1..9].try_into().unwrap()),
        )),
        n => panic!("{n}-byte answer from the connect-out service"),
    }
}

#[test]
#[ignore = "VM tier: needs QEMU and the built guest; run by scripts/test.sh"]
fn guest_initiated_connections_to_host_ports() {
    let (_dir, vm, client) = boot("vsock-out");
    // 1 MiB out and back: the guest writes 32 KiB at a time, the host answers in one go.
    let server = host_echo_server(&vm.uds, 6000);
    let t = Instant::now();
    let got = connect_out(&vm.uds, 6000, 1 << 20);
    assert_eq!(got, Some((true, 1 << 20)), "guest-initiated echo");
    assert_eq!(server.join().unwrap(), 1 << 20);
    println!(
        "guest-initiated 1 MiB echo: {:.0} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    // Nothing listens on host port 6001: the guest's connect is reset, and the agent's
    // service closes without an answer.
    assert_eq!(connect_out(&vm.uds, 6001, 10), None);
    let m = finish(vm, client);
    assert!(m.conn_refused >= 1, "{m:?}");
}

#[test]
#[ignore = "VM tier: needs QEMU and the built guest; run by scripts/test.sh"]
fn echo_64_connections_of_1_mib_each() {
    const CONNS: usize = 64;
    const LEN: usize = 1 << 20;
    let (_dir, vm, client) = boot("vsock-echo");
    let uds = Arc::new(vm.uds.clone());
    let t = Instant::now();
    let workers: Vec<_> = (0..CONNS)
        .map(|i| {
            let uds = uds.clone();
            std::thread::spawn(move || {
                let s = open(&uds, b'E');
                let mut w = s.try_clone().unwrap();
                let seed = i as u64 * 7919;
                let writer = std::thread::spawn(move || {
                    let data: Vec<u8> = (0..LEN as u64).map(|j| pattern(seed + j)).collect();
                    for chunk in data.chunks(96 * 1024) {
                        w.write_all(chunk).unwrap();
                    }
                    w.shutdown(Shutdown::Write).unwrap();
                });
                let mut got = Vec::with_capacity(LEN);
                let mut r = s;
                r.read_to_end(&mut got).unwrap();
                writer.join().unwrap();
                assert_eq!(got.len(), LEN, "connection {i}: length");
                let bad = got
                    .iter()
                    .enumerate()
                    .position(|(j, b)| *b != pattern(seed + j as u64));
                assert_eq!(bad, None, "connection {i}: first differing byte");
            })
        })
        .collect();
    for (i, w) in workers.into_iter().enumerate() {
        w.join().unwrap_or_else(|_| panic!("connection {i} failed"));
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{CONNS} connections echoed 1 MiB each in {secs:.2} s ({:.1} MiB/s each way)",
        CONNS as f64 / secs
    );
    let m = finish(vm, client);
    // The guest echoes in writes of up to 64 KiB: the 6.12 kernel sends those as packets
    // whose data spans several descriptors, which the device must gather.
    assert!(
        m.tx_multi_desc > 0,
        "no multi-descriptor TX packet seen: {m:?}"
    );
    assert!(m.tx_bytes >= (CONNS * LEN) as u64, "{m:?}");
    println!("device counters: {m:?}");
}
