//! VM tier benchmark (printed, not asserted): vsock round-trip latency over 1,000 small
//! messages and one-way throughput of 256 MiB host→guest, through moat's own vhost-user
//! backend and, in the same run, through rust-vmm's `vhost-device-vsock` as the peer
//! (`cargo install vhost-device-vsock`; found on `PATH` or at `$MOAT_VHOST_DEVICE_VSOCK`).
//! Both serve the same guest, the same agent test services and the same hybrid protocol, so
//! the host side of the measurement is identical.
//!
//! The only assertions are about correctness (echoes match; through moat, the sink counted
//! every byte); without the peer the comparison is reported as not run, in the output.
//! Guest writes stay at 64 bytes, under the ~32 KiB above which `vhost-device-vsock` 0.3.0
//! loses multi-descriptor packets (QEMU-TCG.md).

use std::io::{Read, Write};
use std::net::Shutdown;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use moat::boot::{TempDir, VsockVm};
use moat::host;
use moat::qemu::{Accel, QemuVm, QemuVmConfig};
use moat::vsock::{connect, AgentClient};

const TEST_PORT: u32 = 5000;
const MESSAGES: usize = 1000;
const MSG_LEN: usize = 64;
const BULK: usize = 256 << 20;

#[derive(Debug, Clone, Copy)]
struct Figures {
    rtt_median: Duration,
    rtt_mean: Duration,
    mib_per_s: f64,
}

/// Runs both measurements against the guest behind `uds`. `half_close`: the backend
/// carries a host `shutdown(SHUT_WR)` to the guest as end of stream and keeps the other
/// direction open (moat does; `vhost-device-vsock` 0.3.0 closes the connection instead, so
/// the sink's count cannot come back through it).
fn measure(uds: &Path, half_close: bool) -> Figures {
    // Round trips: 1,000 small messages on one echo connection.
    let (mut s, _) = connect(uds, TEST_PORT, Duration::from_secs(20)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"E").unwrap();
    let msg = [0x5au8; MSG_LEN];
    let mut back = [0u8; MSG_LEN];
    let mut rtts = Vec::with_capacity(MESSAGES);
    for _ in 0..MESSAGES {
        let t = Instant::now();
        s.write_all(&msg).unwrap();
        s.read_exact(&mut back).unwrap();
        rtts.push(t.elapsed());
        assert_eq!(back, msg);
    }
    s.shutdown(Shutdown::Write).unwrap();
    drop(s);
    rtts.sort();
    let rtt_mean = rtts.iter().sum::<Duration>() / MESSAGES as u32;
    // Throughput: 256 MiB into the guest's sink. Timed until the last byte is written: by
    // then the guest has all but what the device and the socket buffer hold (under 1 MiB).
    let (mut s, _) = connect(uds, TEST_PORT, Duration::from_secs(20)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
    s.write_all(b"S").unwrap();
    let chunk = vec![0xa5u8; 1 << 20];
    let t = Instant::now();
    for _ in 0..BULK / chunk.len() {
        s.write_all(&chunk).unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    if half_close {
        // The sink answers the count it read once it sees the end of the stream.
        s.shutdown(Shutdown::Write).unwrap();
        let mut count = [0u8; 8];
        s.read_exact(&mut count).unwrap();
        assert_eq!(
            u64::from_be_bytes(count),
            BULK as u64,
            "the sink counted every byte"
        );
    }
    Figures {
        rtt_median: rtts[MESSAGES / 2],
        rtt_mean,
        mib_per_s: (BULK >> 20) as f64 / secs,
    }
}

/// Says Hello until the agent answers (the guest is booting meanwhile).
fn wait_for_agent(uds: &Path, qemu: &mut QemuVm) -> AgentClient {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        match AgentClient::connect(uds, moat_protocol::CONTROL_PORT, Duration::from_secs(2)) {
            Ok(c) => return c,
            Err(e) if Instant::now() < deadline => {
                if let Ok(status) = qemu.wait_exit(Duration::ZERO) {
                    panic!("QEMU exited ({status}): {e}\n{}", qemu.console_tail());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("the agent did not answer: {e}\n{}", qemu.console_tail()),
        }
    }
}

fn moat_figures() -> Figures {
    let paths = moat_tests::guest_paths();
    let dir = TempDir::new("vsock-bench").unwrap();
    let mut vm = VsockVm::start(&paths, &dir.0, vec![format!("moat.test_port={TEST_PORT}")])
        .unwrap_or_else(|e| panic!("{e}"));
    let (mut client, _) = vm
        .wait_for_agent(Duration::from_secs(90))
        .unwrap_or_else(|e| panic!("{e}"));
    let f = measure(&vm.uds, true);
    vm.shutdown(&mut client, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}"));
    f
}

/// `vhost-device-vsock`, from `$MOAT_VHOST_DEVICE_VSOCK` or `PATH`.
fn peer_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MOAT_VHOST_DEVICE_VSOCK") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join("vhost-device-vsock"))
        .find(|p| p.is_file())
}

/// The peer, killed on drop.
struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn peer_figures(bin: &Path) -> Figures {
    let paths = moat_tests::guest_paths();
    let dir = TempDir::new("vsock-bench-peer").unwrap();
    let vu = dir.0.join("vhost-vsock.sock");
    let uds = dir.0.join("vsock.sock");
    let child = Command::new(bin)
        .arg("--guest-cid=3")
        .arg(format!("--socket={}", vu.display()))
        .arg(format!("--uds-path={}", uds.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
    let _peer = Peer(child);
    let t = Instant::now();
    while !vu.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{} did not create its socket",
            bin.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // It binds, then listens: give it a moment before QEMU connects.
    std::thread::sleep(Duration::from_millis(50));
    let cfg = QemuVmConfig {
        qemu: paths.qemu.clone(),
        kernel: paths.kernel.clone(),
        initramfs: paths.initramfs.clone(),
        accel: Accel::for_host(host::detect_kvm()),
        vcpus: 1,
        memory_mib: 256,
        console_log: dir.0.join("console.log"),
        cmdline_extra: vec![format!("moat.test_port={TEST_PORT}")],
        vhost_user_vsock: Some(vu),
        vhost_user_fs: None,
    };
    let mut qemu = QemuVm::spawn(&cfg).unwrap();
    let mut client = wait_for_agent(&uds, &mut qemu);
    let f = measure(&uds, false);
    client.shutdown().unwrap();
    let status = qemu.wait_exit(Duration::from_secs(30)).unwrap();
    assert!(status.success(), "QEMU exited with {status}");
    f
}

fn row(name: &str, f: &Figures) -> String {
    format!(
        "| {name} | {:.0} µs | {:.0} µs | {:.1} MiB/s |",
        f.rtt_median.as_secs_f64() * 1e6,
        f.rtt_mean.as_secs_f64() * 1e6,
        f.mib_per_s
    )
}

#[test]
#[ignore = "VM tier benchmark: needs QEMU and the built guest; run by scripts/test.sh"]
fn vsock_latency_and_throughput_next_to_vhost_device_vsock() {
    let ours = moat_figures();
    println!(
        "\nvsock under {:?}: {MESSAGES} round trips of {MSG_LEN} B, {} MiB host→guest",
        Accel::for_host(host::detect_kvm()),
        BULK >> 20
    );
    println!("| backend | RTT median | RTT mean | host→guest |\n|---|---|---|---|");
    println!("{}", row("moat", &ours));
    match peer_binary() {
        Some(bin) => {
            let peer = peer_figures(&bin);
            println!("{}", row("vhost-device-vsock", &peer));
            println!(
                "moat / peer: RTT median {:.2}x, throughput {:.2}x",
                ours.rtt_median.as_secs_f64() / peer.rtt_median.as_secs_f64(),
                ours.mib_per_s / peer.mib_per_s
            );
        }
        None => println!(
            "| vhost-device-vsock | comparison not run: not installed (cargo install vhost-device-vsock, or set MOAT_VHOST_DEVICE_VSOCK) | | |"
        ),
    }
}
