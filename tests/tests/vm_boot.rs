//! VM tier: the real guest kernel and agent under QEMU (TCG here, KVM on hardware hosts).

use std::time::Duration;

use moat::boot::{boot_once, secs, TempDir, READY_MARKER};

#[test]
#[ignore = "VM tier: needs QEMU and the built guest; run by scripts/test.sh"]
fn guest_boots_to_agent_ready_and_powers_off() {
    let paths = moat_tests::guest_paths();
    let dir = TempDir::new("boot-test").unwrap();
    let report = boot_once(&paths, moat_tests::vmm(), &dir.0, Duration::from_secs(90)).unwrap();
    assert!(report.ready_line.contains(READY_MARKER));
    assert!(
        report
            .ready_line
            .contains(&format!("protocol={}", moat_protocol::PROTOCOL_VERSION)),
        "{}",
        report.ready_line
    );
    // Every cgroup v2 controller the containers need was enabled by the agent.
    for c in ["cpu", "memory", "pids", "io", "cpuset"] {
        let listed = report.ready_line.split("cgroup2=[").nth(1).unwrap_or("");
        assert!(
            listed
                .split(|ch: char| !ch.is_alphanumeric())
                .any(|w| w == c),
            "cgroup2 controller {c} missing: {}",
            report.ready_line
        );
    }
    println!(
        "QEMU start to agent ready: {}; to QEMU exit: {}",
        secs(report.to_ready),
        secs(report.to_exit)
    );
}
