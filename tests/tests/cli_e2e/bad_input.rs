//! Bad input: each a one-line error, a non-zero exit, and nothing left behind (no state
//! entry, no process mentioning the root or the bundle, QEMU and virtiofsd included, no
//! mount under them).

use std::path::Path;
use std::time::{Duration, Instant};

use moat_tests::bundle::Bundle;
use moat_tests::cli::{arg, busybox_bundle, fd_count, one_line_error, settled_fd_count, Moat};

/// Runs `moat args` (its sandbox, if any, logged); expects a one-line error containing every
/// one of `words` and a clean root. The error line.
fn rejected(m: &Moat, args: &[&str], words: &[&str], also: &[&Path]) -> String {
    let fds = fd_count();
    let o = m.run_logged(args, "rejected");
    let line = one_line_error(&o);
    let shown: String = line.chars().take(240).collect();
    println!("moat {}: {shown}", args.first().unwrap_or(&""));
    for w in words {
        assert!(line.contains(w), "the error does not mention {w:?}: {o}");
    }
    m.assert_clean(also);
    let after = settled_fd_count(fds);
    assert!(
        after <= fds,
        "this process's fds: {fds} before, {after} after"
    );
    line
}

fn create_args<'a>(b: &'a Bundle, id: &'a str) -> [&'a str; 4] {
    ["create", "--bundle", arg(b.path()), id]
}

#[test]
#[ignore = "VM tier: needs QEMU, virtiofsd and the built guest; run by scripts/test.sh"]
fn missing_or_malformed_config_json() {
    let m = Moat::new("badcfg");
    let b = busybox_bundle("badcfg", &["true"]);
    let config = b.path().join("config.json");
    let good = std::fs::read_to_string(&config).unwrap();

    std::fs::remove_file(&config).unwrap();
    rejected(&m, &create_args(&b, "b1"), &["config.json"], &[b.path()]);
    rejected(
        &m,
        &["run", "--bundle", arg(b.path()), "b1"],
        &["config.json"],
        &[b.path()],
    );

    std::fs::write(&config, "{\"ociVersion\": \"1.0.2\", ").unwrap();
    rejected(&m, &create_args(&b, "b1"), &["config.json"], &[b.path()]);

    let mut v: serde_json::Value = serde_json::from_str(&good).unwrap();
    v["process"]["args"] = serde_json::json!(5);
    std::fs::write(&config, v.to_string()).unwrap();
    rejected(&m, &create_args(&b, "b1"), &["process.args"], &[b.path()]);

    let mut v: serde_json::Value = serde_json::from_str(&good).unwrap();
    v["linux"]["resources"] = serde_json::json!({"memory": {"limit": "lots"}});
    std::fs::write(&config, v.to_string()).unwrap();
    rejected(
        &m,
        &create_args(&b, "b1"),
        &["linux.resources.memory.limit"],
        &[b.path()],
    );

    let mut v: serde_json::Value = serde_json::from_str(&good).unwrap();
    v["mounts"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"destination": "/mnt", "type": "nosuchfs", "source": "x"}));
    std::fs::write(&config, v.to_string()).unwrap();
    rejected(
        &m,
        &create_args(&b, "b1"),
        &["mounts[", "type"],
        &[b.path()],
    );

    std::fs::write(&config, &good).unwrap();
    let o = m.run(&["run", "--bundle", arg(b.path()), "b1"]);
    assert_eq!(o.code, 0, "the good config runs: {o}");
    m.assert_clean(&[b.path()]);
}

#[test]
#[ignore = "VM tier: needs QEMU, virtiofsd and the built guest; run by scripts/test.sh"]
fn missing_rootfs_and_bundle() {
    let m = Moat::new("norootfs");
    let b = busybox_bundle("norootfs", &["true"]);
    std::fs::remove_dir_all(b.rootfs()).unwrap();
    rejected(&m, &create_args(&b, "r1"), &["rootfs"], &[b.path()]);
    let gone = m.work().join("no-such-bundle");
    rejected(
        &m,
        &["create", "--bundle", arg(&gone), "r1"],
        &["no-such-bundle"],
        &[],
    );
}

#[test]
#[ignore = "VM tier: needs QEMU, virtiofsd and the built guest; run by scripts/test.sh"]
fn bad_container_ids() {
    let m = Moat::new("badid");
    let b = busybox_bundle("badid", &["true"]);
    let too_long = "a".repeat(1025);
    let name_max = "b".repeat(300);
    for id in [
        "",
        "a/b",
        "..",
        ".",
        "../escape",
        "x/../y",
        &too_long,
        &name_max,
    ] {
        let line = rejected(&m, &create_args(&b, id), &[], &[b.path()]);
        assert!(line.len() < 1500, "a short line: {line}");
        rejected(
            &m,
            &["run", "--bundle", arg(b.path()), id],
            &[],
            &[b.path()],
        );
    }
    assert!(
        !m.work().join("escape").exists() && !m.work().join("y").exists(),
        "nothing made outside the root"
    );
}

/// An id the store accepts but whose sockets (`<root>/<id>/vhost-vsock.sock`) would not fit
/// in a Unix socket address (107 bytes): refused at once, not after a failed boot.
#[test]
#[ignore = "VM tier: needs QEMU, virtiofsd and the built guest; run by scripts/test.sh"]
fn id_too_long_for_socket_paths() {
    let m = Moat::new("longid");
    let b = busybox_bundle("longid", &["true"]);
    let id = "c".repeat(200);
    let start = Instant::now();
    rejected(&m, &create_args(&b, &id), &["too long"], &[b.path()]);
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "refused before booting, took {:?}",
        start.elapsed()
    );
}

#[test]
#[ignore = "VM tier: needs QEMU, virtiofsd and the built guest; run by scripts/test.sh"]
fn commands_in_the_wrong_state() {
    let m = Moat::new("state");
    let b = busybox_bundle("state", &["sleep", "1000"]);
    m.create(&b, "w1");

    // A duplicate id: refused, the first container untouched.
    let o = m.run_logged(&create_args(&b, "w1"), "dup");
    assert!(one_line_error(&o).contains("already exists"), "{o}");
    assert_eq!(m.status("w1"), "created");
    let o = m.run_logged(&["run", "-d", "--bundle", arg(b.path()), "w1"], "dup");
    assert!(one_line_error(&o).contains("already exists"), "{o}");

    for sig in ["FOO", "SIGFOO", "999", "0"] {
        let o = m.run(&["kill", "w1", sig]);
        assert!(one_line_error(&o).contains("signal"), "{o}");
    }
    assert_eq!(m.status("w1"), "created");
    let o = m.run(&["exec", "w1", "true"]);
    one_line_error(&o);
    let o = m.run(&["resume", "w1"]);
    one_line_error(&o);

    m.ok(&["start", "w1"]);
    let o = m.run(&["start", "w1"]);
    assert!(one_line_error(&o).contains("running"), "{o}");
    let o = m.run(&["delete", "w1"]);
    assert!(one_line_error(&o).contains("--force"), "{o}");
    assert_eq!(m.status("w1"), "running", "still running");
    let o = m.run(&["resume", "w1"]);
    one_line_error(&o);
    m.ok(&["pause", "w1"]);
    let o = m.run(&["pause", "w1"]);
    one_line_error(&o);
    let o = m.run(&["delete", "w1"]);
    assert!(one_line_error(&o).contains("--force"), "paused: {o}");
    m.ok(&["delete", "--force", "w1"]);

    // Every command on a container that does not exist.
    for args in [
        &["state", "nope"][..],
        &["start", "nope"],
        &["kill", "nope", "KILL"],
        &["delete", "nope"],
        &["exec", "nope", "true"],
        &["pause", "nope"],
        &["resume", "nope"],
        &["ps", "nope"],
        &["events", "--stats", "nope"],
        &["update", "--memory", "1000000", "nope"],
    ] {
        let o = m.run(args);
        assert!(one_line_error(&o).contains("nope"), "{args:?}: {o}");
    }

    // A console socket without a terminal.
    let o = m.run_logged(
        &[
            "create",
            "--console-socket",
            "/nonexistent.sock",
            "--bundle",
            arg(b.path()),
            "w2",
        ],
        "cs",
    );
    one_line_error(&o);
    m.assert_clean(&[b.path()]);
}

#[test]
#[ignore = "VM tier: needs QEMU, virtiofsd and the built guest; run by scripts/test.sh"]
fn missing_guest_qemu_or_virtiofsd() {
    let b = busybox_bundle("nohelpers", &["true"]);
    for (var, words) in [
        ("MOAT_KERNEL", &["kernel", "/nonexistent"][..]),
        ("MOAT_INITRAMFS", &["initramfs", "/nonexistent"]),
        ("MOAT_QEMU", &["/nonexistent", "MOAT_QEMU"]),
        ("MOAT_VIRTIOFSD", &["/nonexistent", "MOAT_VIRTIOFSD"]),
    ] {
        // The built-in VMM (hardware KVM) needs no QEMU: ask for QEMU explicitly.
        let m = Moat::new("nohelpers")
            .with_env(var, "/nonexistent")
            .with_env("MOAT_BACKEND", "qemu");
        rejected(&m, &create_args(&b, "h1"), words, &[b.path()]);
        rejected(
            &m,
            &["run", "--bundle", arg(b.path()), "h1"],
            words,
            &[b.path()],
        );
    }
}

#[test]
#[ignore = "VM tier: needs QEMU, virtiofsd and the built guest; run by scripts/test.sh"]
fn the_builtin_backend_only_where_it_can_run_containers() {
    let b = busybox_bundle("builtin", &["echo", "hello from the built-in VMM"]);
    let m = Moat::new("builtin").with_env("MOAT_BACKEND", "builtin");
    let run = ["run", "--bundle", arg(b.path()), "v1"];
    match moat::host::detect_kvm() {
        moat::host::KvmKind::Hardware => {
            let o = m.run(&run);
            assert_eq!(o.code, 0, "{o}");
            assert_eq!(o.stdout, "hello from the built-in VMM\n", "{o}");
            m.assert_clean(&[b.path()]);
        }
        other => {
            let line = rejected(
                &m,
                &create_args(&b, "v1"),
                &["builtin", "cannot run containers"],
                &[b.path()],
            );
            assert!(line.contains(other.describe()), "{line}");
            rejected(&m, &run, &["builtin"], &[b.path()]);
        }
    }
}
