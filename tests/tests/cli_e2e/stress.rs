//! Repetition and concurrency with nothing left behind, and the benchmark.

use std::process::Command;
use std::time::{Duration, Instant};

use moat_tests::cli::{arg, busybox_bundle, fd_count, moat_bin, settled_fd_count, Moat};
use moat_tests::host::timed;

#[test]
#[ignore = "VM tier: needs QEMU, virtiofsd and the built guest; run by scripts/test.sh"]
fn twenty_create_start_delete_cycles() {
    let m = Moat::new("cycles");
    let b = busybox_bundle("cycles", &["sh", "-c", "echo cycle-$0", "x"]);
    let fds = fd_count();
    let start = Instant::now();
    for i in 0..20 {
        let id = format!("cy{i}");
        m.create(&b, &id);
        assert_eq!(m.status(&id), "created");
        m.ok(&["start", &id]);
        assert_eq!(m.wait_exit(&id), 0);
        m.wait_log(&id, "out", "cycle-x");
        m.ok(&["delete", &id]);
        assert!(m.entries().is_empty(), "cycle {i}: {:?}", m.entries());
    }
    println!(
        "20 create/start/delete cycles in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    m.assert_clean(&[b.path()]);
    let after = settled_fd_count(fds);
    assert!(
        after <= fds,
        "this process's fds: {fds} before, {after} after"
    );
}

#[test]
#[ignore = "VM tier: needs QEMU, virtiofsd and the built guest; run by scripts/test.sh"]
fn four_sandboxes_at_once() {
    let m = Moat::new("four");
    let b = busybox_bundle("four", &["sh", "-c", "echo up; sleep 1000"]);
    let fds = fd_count();
    // In each phase, four threads act at once, one per container.
    let each = |f: &(dyn Fn(i32, String) + Sync)| {
        std::thread::scope(|s| {
            for i in 0..4 {
                s.spawn(move || f(i, format!("four{i}")));
            }
        })
    };
    each(&|_, id| {
        m.run_detached(&b, &id);
        m.wait_log(&id, "out", "up");
    });
    let listed: Vec<serde_json::Value> =
        serde_json::from_str(&m.ok(&["list", "--format", "json"])).unwrap();
    assert_eq!(listed.len(), 4);
    assert!(
        listed.iter().all(|c| c["status"] == "running"),
        "{listed:?}"
    );
    each(&|i, id| {
        let o = m.run(&["exec", &id, "sh", "-c", &format!("echo exec-{i}; exit {i}")]);
        assert_eq!(
            (o.code, o.stdout.as_str()),
            (i, format!("exec-{i}\n").as_str()),
            "{o}"
        );
    });
    each(&|_, id| {
        m.ok(&["delete", "--force", &id]);
    });
    assert_eq!(m.ok(&["list", "-q"]), "");
    m.assert_clean(&[b.path()]);
    let after = settled_fd_count(fds);
    assert!(
        after <= fds,
        "this process's fds: {fds} before, {after} after"
    );
}

fn median_ms(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[(v.len() - 1) / 2].as_secs_f64() * 1000.0
}

#[test]
#[ignore = "VM tier benchmark: needs QEMU, virtiofsd, the built guest and runc; prints figures"]
fn bench_run_true_vs_bare_boot_vs_runc() {
    const RUNS: usize = 10;
    let m = Moat::new("bench");
    let b = busybox_bundle("bench", &["/bin/busybox", "true"]);
    let moat: Vec<Duration> = (0..RUNS)
        .map(|i| {
            let mut c = m.command(&["run", "--bundle", arg(b.path()), &format!("bench{i}")]);
            c.env_remove("RUST_BACKTRACE");
            timed(c)
        })
        .collect();

    // The same binary's `moat boot`: QEMU start to agent ready, and to QEMU's exit after
    // the agent powered off, per boot. A failed boot is printed and retried (the agent's
    // reply to Shutdown can be lost when the VM powers off first).
    let mut boot = String::new();
    let mut failed = 0;
    while boot.lines().filter(|l| l.starts_with("boot ")).count() < RUNS {
        let o = m.run(&["boot"]);
        if o.code == 0 {
            boot.push_str(&o.stdout);
        } else {
            failed += 1;
            println!("a bare boot failed: {}", o.stderr.trim());
            assert!(failed <= 3, "too many failed boots");
        }
    }
    let secs_before = |line: &str, marker: &str| -> Duration {
        let head = &line[..line
            .find(marker)
            .unwrap_or_else(|| panic!("{marker:?} in {line}"))];
        let n = head.rsplit(' ').find(|w| !w.is_empty()).unwrap();
        Duration::from_secs_f64(n.trim_end_matches('s').parse().unwrap())
    };
    let secs_after = |line: &str, marker: &str| -> Duration {
        let at = line
            .find(marker)
            .unwrap_or_else(|| panic!("{marker:?} in {line}"));
        let n = line[at + marker.len()..].split([' ', ':']).next().unwrap();
        Duration::from_secs_f64(n.trim_end_matches('s').parse().unwrap())
    };
    let boots: Vec<&str> = boot.lines().filter(|l| l.starts_with("boot ")).collect();
    assert_eq!(boots.len(), RUNS, "{boot}");
    let ready: Vec<Duration> = boots
        .iter()
        .map(|l| secs_before(l, " after QEMU started"))
        .collect();
    let exit: Vec<Duration> = boots
        .iter()
        .map(|l| secs_after(l, "the guest ended cleanly after "))
        .collect();

    let runc_root = m.work().join("runc");
    let runc: Vec<Duration> = (0..RUNS)
        .map(|i| {
            let mut c = Command::new("runc");
            c.arg("--root").arg(&runc_root).args([
                "run",
                "--bundle",
                arg(b.path()),
                &format!("runc{i}"),
            ]);
            timed(c)
        })
        .collect();

    let (run_ms, boot_ms, ready_ms, runc_ms) = (
        median_ms(moat),
        median_ms(exit),
        median_ms(ready),
        median_ms(runc),
    );
    println!(
        "moat run: {run_ms:.0} ms, bare boot: {boot_ms:.0} ms, overhead: {:.0} %, runc run: {runc_ms:.0} ms",
        (run_ms / boot_ms - 1.0) * 100.0
    );
    println!(
        "(medians of {RUNS}; bare boot = QEMU start to exit of the same guest, booted, agent \
         Hello over vsock, powered off, by `moat boot`; of it, QEMU start to agent ready: \
         {ready_ms:.0} ms; moat binary {})",
        moat_bin().display()
    );
    m.assert_clean(&[b.path()]);
}
