//! The ecosystem tier: a real containerd (Debian's 1.6) drives `containerd-shim-moat-v2`.
//!
//! Each test starts a containerd of its own (own root, state, socket, config; see
//! `containerd/harness.rs`), imports a busybox image built here (`containerd/image.rs`), and
//! kills containerd and anything it left at the end. `ctr` covers run, exec, kill, metrics,
//! pause, TTY, a dying guest and bad input; a small CRI client (`containerd/cri.rs`) runs a
//! pod of two containers in one VM, and prints the pod's start time and host memory.
//!
//! Needs root, containerd (scripts/setup-host.sh) and the installed shim and guest
//! (scripts/build-guest.sh): `scripts/test.sh` runs it with `--ignored`.

#[path = "containerd/cri.rs"]
mod cri;
#[path = "containerd/harness.rs"]
mod harness;
#[path = "containerd/image.rs"]
mod image;

use std::io::{Read, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use harness::{Containerd, RUNTIME};
use image::BUSYBOX;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The pid `ctr task ls` shows for a task (the shim's, for every moat task).
fn task_pid(c: &Containerd, id: &str) -> u32 {
    let ls = c.ctr_ok(&["tasks", "ls"]);
    ls.lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("task {id} not in:\n{ls}"))
}

fn task_status(c: &Containerd, id: &str) -> String {
    let ls = c.ctr_ok(&["tasks", "ls"]);
    ls.lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap_or("")
        .to_string()
}

fn wait_status(c: &Containerd, id: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while task_status(c, id) != want {
        assert!(Instant::now() < deadline, "task {id} never became {want}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
#[ignore = "ecosystem tier: needs containerd; run by scripts/test.sh"]
fn ctr_run_prints_the_output_and_returns_the_exit_code() {
    let c = Containerd::start("run", false);
    c.import_images();
    let t = Instant::now();
    let o = c.ctr(&[
        "run",
        "--runtime",
        RUNTIME,
        "--rm",
        BUSYBOX,
        "run1",
        "sh",
        "-c",
        "echo hi; echo oops >&2; exit 3",
    ]);
    let took = t.elapsed();
    assert_eq!(o.status.code(), Some(3), "{}\n{}", text(&o.stderr), c.log());
    assert_eq!(text(&o.stdout), "hi\n");
    assert!(text(&o.stderr).contains("oops"), "{}", text(&o.stderr));
    println!(
        "ctr run --rm (VM boot, container, exit, teardown): {:.2}s",
        took.as_secs_f64()
    );
    // stdin reaches the container, and its end of file ends `cat`.
    let mut child = c
        .ctr_cmd(&[
            "run",
            "--runtime",
            RUNTIME,
            "--rm",
            BUSYBOX,
            "run2",
            "sh",
            "-c",
            "cat; echo done",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"abc\n").unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "abc\ndone\n");
    assert_eq!(c.wait_no_shims(Duration::from_secs(10)), Vec::<u32>::new());
}

#[test]
#[ignore = "ecosystem tier: needs containerd; run by scripts/test.sh"]
fn ctr_task_exec_kill_metrics_pause() {
    let c = Containerd::start("task", false);
    c.import_images();
    c.ctr_ok(&[
        "run",
        "--runtime",
        RUNTIME,
        "-d",
        BUSYBOX,
        "svc",
        "sh",
        "-c",
        "while :; do sleep 1; done",
    ]);
    wait_status(&c, "svc", "RUNNING");
    let shim = task_pid(&c, "svc");
    let exec = |n: usize| {
        let id = format!("e{n}");
        let o = c.ctr(&[
            "tasks",
            "exec",
            "--exec-id",
            &id,
            "svc",
            "sh",
            "-c",
            "echo from-exec; exit 7",
        ]);
        assert_eq!(o.status.code(), Some(7), "{}", text(&o.stderr));
        assert_eq!(text(&o.stdout), "from-exec\n");
    };
    // Execs that cannot start are refused clearly, and leave nothing behind either.
    let bad = |n: usize| {
        let id = format!("bad{n}");
        let o = c.ctr(&["tasks", "exec", "--exec-id", &id, "svc", "/no/such/program"]);
        assert!(!o.status.success());
        assert!(
            text(&o.stderr).contains("/no/such/program"),
            "{}",
            text(&o.stderr)
        );
    };
    // A warm-up batch first: the allocator's arenas and the agent connection pool fill up
    // once; what must not grow is what the next batch adds.
    let batch = |round: usize| {
        for n in 0..20 {
            exec(100 * round + n);
        }
        for n in 0..10 {
            bad(100 * round + n);
        }
    };
    batch(0);
    let before = (
        harness::status_field(shim, "Threads"),
        harness::fd_count(shim),
        harness::status_field(shim, "RssAnon"),
    );
    let t = Instant::now();
    batch(1);
    let per_exec = t.elapsed() / 30;
    let after = (
        harness::status_field(shim, "Threads"),
        harness::fd_count(shim),
        harness::status_field(shim, "RssAnon"),
    );
    println!(
        "after a warm-up, 20 execs and 10 that failed to start ({:.0} ms each): shim threads {} -> {}, fds {} -> {}, anonymous RSS {} -> {} KiB",
        per_exec.as_secs_f64() * 1000.0,
        before.0,
        after.0,
        before.1,
        after.1,
        before.2,
        after.2
    );
    assert!(
        after.0 <= before.0 + 3,
        "threads grew: {before:?} -> {after:?}"
    );
    assert!(after.1 <= before.1 + 2, "fds grew: {before:?} -> {after:?}");
    assert!(
        after.2 <= before.2 + 1024,
        "RSS grew: {before:?} -> {after:?}"
    );

    let m = c.ctr_ok(&["tasks", "metrics", "svc"]);
    assert!(
        m.contains("pids.current") && m.contains("memory.usage"),
        "{m}"
    );
    let ps = c.ctr_ok(&["tasks", "ps", "svc"]);
    assert!(ps.lines().count() >= 2, "{ps}");

    c.ctr_ok(&["tasks", "pause", "svc"]);
    assert_eq!(task_status(&c, "svc"), "PAUSED");
    c.ctr_ok(&["tasks", "resume", "svc"]);
    assert_eq!(task_status(&c, "svc"), "RUNNING");

    c.ctr_ok(&["tasks", "kill", "--all", "-s", "SIGKILL", "svc"]);
    wait_status(&c, "svc", "STOPPED");
    let o = c.ctr(&["tasks", "rm", "svc"]);
    assert!(text(&o.stderr).contains("137"), "{}", text(&o.stderr));
    c.ctr_ok(&["containers", "rm", "svc"]);
    assert_eq!(c.wait_no_shims(Duration::from_secs(10)), Vec::<u32>::new());
}

#[test]
#[ignore = "ecosystem tier: needs containerd; run by scripts/test.sh"]
fn ctr_run_tty_gets_a_terminal_of_the_callers_size() {
    let c = Containerd::start("tty", false);
    c.import_images();
    let ws = nix::pty::Winsize {
        ws_row: 33,
        ws_col: 101,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&ws), None).unwrap();
    let slave = std::fs::File::from(pty.slave);
    let mut cmd = c.ctr_cmd(&[
        "run",
        "--runtime",
        RUNTIME,
        "-t",
        "--rm",
        BUSYBOX,
        "tty1",
        "sh",
        "-c",
        "sleep 1; stty size; tty >/dev/null && echo is-a-tty; exit 4",
    ]);
    cmd.stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave);
    let mut child = cmd.spawn().unwrap();
    drop(cmd);
    let mut master = std::fs::File::from(pty.master);
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        // Ends with EIO once ctr exits and the last slave fd closes.
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        text(&out)
    });
    let status = child.wait().unwrap();
    let out = reader.join().unwrap();
    assert_eq!(status.code(), Some(4), "{out}");
    assert!(
        out.contains("33 101"),
        "the guest pty has the caller's size: {out:?}"
    );
    assert!(out.contains("is-a-tty"), "stdin is a terminal: {out:?}");
    assert_eq!(c.wait_no_shims(Duration::from_secs(10)), Vec::<u32>::new());
}

#[test]
#[ignore = "ecosystem tier: needs containerd; run by scripts/test.sh"]
fn an_oom_kill_in_the_guest_is_a_task_oom_event() {
    let c = Containerd::start("oom", false);
    c.import_images();
    let mut events = c
        .ctr_cmd(&["events"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = events.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.push_str(&String::from_utf8_lossy(&buf[..n]));
            if all.contains("/tasks/oom") && all.contains("/tasks/exit") {
                break;
            }
        }
        all
    });
    // `tail` keeps every line of an endless line: it grows until the OOM killer ends it.
    let o = c.ctr(&[
        "run",
        "--runtime",
        RUNTIME,
        "--rm",
        "--memory-limit",
        "33554432",
        BUSYBOX,
        "oom",
        "tail",
        "/dev/zero",
    ]);
    assert_eq!(o.status.code(), Some(137), "{}", text(&o.stderr));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !reader.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = events.kill();
    let _ = events.wait();
    let seen = reader.join().unwrap();
    assert!(seen.contains("/tasks/oom"), "no TaskOOM event in:\n{seen}");
    assert_eq!(c.wait_no_shims(Duration::from_secs(10)), Vec::<u32>::new());
}

#[test]
#[ignore = "ecosystem tier: needs containerd; run by scripts/test.sh"]
fn a_guest_that_dies_ends_the_task_with_a_failure_status() {
    let c = Containerd::start("dies", false);
    c.import_images();
    let mut child = c
        .ctr_cmd(&[
            "run",
            "--runtime",
            RUNTIME,
            "--rm",
            BUSYBOX,
            "dies",
            "sh",
            "-c",
            "echo up; sleep 600",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = [0u8; 3];
    child
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut line)
        .unwrap();
    assert_eq!(&line, b"up\n");
    let shims = c.shims();
    assert_eq!(shims.len(), 1, "{shims:?}");
    let qemu = harness::tree(shims[0])
        .into_iter()
        .find(|p| harness::comm(*p).starts_with("qemu"))
        .expect("the shim's QEMU");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(qemu as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "ctr run hung after the guest died"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(255), "{}", c.log());
    assert_eq!(c.wait_no_shims(Duration::from_secs(10)), Vec::<u32>::new());
}

#[test]
#[ignore = "ecosystem tier: needs containerd; run by scripts/test.sh"]
fn bad_input_is_refused_clearly_and_leaves_no_shim() {
    let c = Containerd::start("bad", false);
    c.import_images();
    let bad_cfg = c.dir.join("typo.json");
    std::fs::write(&bad_cfg, r#"{"memroy_mib": 128}"#).unwrap();
    let rootfs_missing = c.dir.join("no-such-rootfs");
    let cases: [(&str, Vec<&str>, String); 3] = [
        (
            "bad1",
            vec!["--runtime-config-path", "/nonexistent/moat.json", BUSYBOX],
            "config_path /nonexistent/moat.json: No such file".into(),
        ),
        (
            "bad2",
            vec!["--runtime-config-path", bad_cfg.to_str().unwrap(), BUSYBOX],
            "unknown field `memroy_mib`".into(),
        ),
        (
            "bad3",
            vec!["--rootfs", rootfs_missing.to_str().unwrap()],
            format!("root.path: {} does not exist", rootfs_missing.display()),
        ),
    ];
    for (id, opts, want) in cases {
        let mut args = vec!["run", "--runtime", RUNTIME, "--rm"];
        args.extend(opts);
        args.extend([id, "true"]);
        let o = c.ctr(&args);
        assert!(!o.status.success(), "{id} ran");
        assert!(text(&o.stderr).contains(&want), "{id}: {}", text(&o.stderr));
        assert!(
            c.log().contains(&format!("create {id}: ")) && c.log().contains(&want),
            "{id}: the shim's error is not in containerd's log"
        );
        assert_eq!(c.wait_no_shims(Duration::from_secs(10)), Vec::<u32>::new());
        let _ = c.ctr(&["containers", "rm", id]);
    }
}

#[test]
#[ignore = "ecosystem tier: needs containerd; run by scripts/test.sh"]
fn a_pod_of_two_containers_shares_one_vm() {
    let c = Containerd::start("pod", true);
    c.import_images();
    let mut cri = cri::Cri::connect(&c.sock);
    let v = cri.version().expect("CRI Version");
    println!("CRI: {} {}", v.runtime_name, v.runtime_version);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cri.ready() {
        assert!(
            Instant::now() < deadline,
            "CRI not ready; log:\n{}",
            c.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let logs = c.dir.join("pod-logs");
    std::fs::create_dir_all(&logs).unwrap();
    let pod_cfg = cri::pod_config("moat-pod", &logs);
    let fail = |what: &str, e: tonic::Status| -> ! {
        panic!("{what}: {e}\ncontainerd log tail:\n{}", tail(&c.log(), 40))
    };
    let t0 = Instant::now();
    let pod = cri
        .run_pod(&pod_cfg, "moat")
        .unwrap_or_else(|e| fail("RunPodSandbox", e));
    let sleeper = ["sh", "-c", "sleep 3600"];
    let mut ids = Vec::new();
    let mut first_running = None;
    for name in ["one", "two"] {
        let cfg = cri::container_config(name, BUSYBOX, &sleeper);
        let id = cri
            .create(&pod, cfg, &pod_cfg)
            .unwrap_or_else(|e| fail("CreateContainer", e));
        cri.start(&id).unwrap_or_else(|e| fail("StartContainer", e));
        first_running.get_or_insert(t0.elapsed());
        ids.push(id);
    }
    let shims = c.shims();
    assert_eq!(shims.len(), 1, "one shim for the pod: {shims:?}");
    let tree = harness::tree(shims[0]);
    let qemus: Vec<u32> = tree
        .iter()
        .copied()
        .filter(|p| harness::comm(*p).starts_with("qemu"))
        .collect();
    assert_eq!(qemus.len(), 1, "one VM for the pod: {tree:?}");

    let mut exec = |id: &str, cmd: &[&str]| -> String {
        let (code, out) = cri
            .exec_sync(id, cmd)
            .unwrap_or_else(|e| fail("ExecSync", e));
        assert_eq!(code, 0, "{cmd:?} in {id}: {out}");
        out.trim().to_string()
    };
    let host_boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let boot: Vec<String> = ids
        .iter()
        .map(|id| exec(id, &["cat", "/proc/sys/kernel/random/boot_id"]))
        .collect();
    assert_eq!(boot[0], boot[1], "one guest kernel");
    assert_ne!(boot[0], host_boot.trim(), "not the host's kernel");
    for ns in ["net", "ipc", "uts"] {
        let path = format!("/proc/self/ns/{ns}");
        let got: Vec<String> = ids
            .iter()
            .map(|id| exec(id, &["readlink", &path]))
            .collect();
        assert_eq!(got[0], got[1], "the pod's {ns} namespace is shared");
    }
    let pid_ns: Vec<String> = ids
        .iter()
        .map(|id| exec(id, &["readlink", "/proc/self/ns/pid"]))
        .collect();
    assert_ne!(
        pid_ns[0], pid_ns[1],
        "each container has its own pid namespace"
    );
    let host: Vec<String> = ids.iter().map(|id| exec(id, &["hostname"])).collect();
    assert_eq!(host, ["moat-pod", "moat-pod"]);

    // The idle pod's host footprint: the shim, QEMU, virtiofsd (and its sandboxed child).
    std::thread::sleep(Duration::from_secs(3));
    let tree = harness::tree(shims[0]);
    let ticks0: u64 = tree.iter().map(|p| harness::cpu_ticks(*p)).sum();
    std::thread::sleep(Duration::from_secs(5));
    let ticks1: u64 = tree.iter().map(|p| harness::cpu_ticks(*p)).sum();
    let hz = 100.0; // USER_HZ
    let idle_cpu = (ticks1 - ticks0) as f64 / hz / 5.0;
    let parts: Vec<(String, u64)> = tree
        .iter()
        .map(|p| (harness::comm(*p), harness::pss_kib(*p)))
        .collect();
    let total: u64 = parts.iter().map(|(_, k)| k).sum();
    println!(
        "pod start to first container running: {:.2}s (RunPodSandbox + CreateContainer + StartContainer, TCG)",
        first_running.unwrap().as_secs_f64()
    );
    println!(
        "idle pod, 128 MiB guest: host PSS {:.1} MiB ({}), idle CPU {:.1}% of a core",
        total as f64 / 1024.0,
        parts
            .iter()
            .map(|(n, k)| format!("{n} {:.1}", *k as f64 / 1024.0))
            .collect::<Vec<_>>()
            .join(", "),
        idle_cpu * 100.0
    );

    cri.stop_pod(&pod)
        .unwrap_or_else(|e| fail("StopPodSandbox", e));
    cri.remove_pod(&pod)
        .unwrap_or_else(|e| fail("RemovePodSandbox", e));
    assert_eq!(c.wait_no_shims(Duration::from_secs(15)), Vec::<u32>::new());
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
