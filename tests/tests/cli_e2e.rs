//! End-to-end tier for the `moat` command line: the installed binary (`$MOAT_BIN`, else
//! `/usr/local/bin/moat`) runs busybox bundles in microVMs, each test with its own `--root`,
//! and every test checks that nothing is left behind. Bad input is in `cli_e2e/bad_input.rs`,
//! the cycles, the concurrent sandboxes and the benchmark in `cli_e2e/stress.rs`, the
//! console socket in `cli_e2e/terminal.rs`.
//!
//! `cargo test -p moat-tests --test cli_e2e -- --ignored --test-threads=1 --nocapture`

#[path = "cli_e2e/bad_input.rs"]
mod bad_input;
#[path = "cli_e2e/stress.rs"]
mod stress;
#[path = "cli_e2e/terminal.rs"]
mod terminal;

use std::collections::BTreeMap;
use std::io::BufRead;
use std::process::Stdio;
use std::time::{Duration, Instant};

use moat_tests::cli::{arg, busybox_bundle, mem_total_kib, Moat};
use oci_spec::runtime::LinuxNamespaceType;
use serde_json::Value;

/// Prints a tick every 0.2 s and exits 42 on SIGTERM.
const TICKER: &str = "trap 'echo got-term; exit 42' TERM; while :; do echo tick; sleep 0.2; done";

fn ticks(m: &Moat, id: &str) -> usize {
    m.log(id, "out").matches("tick").count()
}

#[test]
#[ignore = "VM tier: needs QEMU, virtiofsd and the built guest; run by scripts/test.sh"]
fn lifecycle_statuses_and_state() {
    let m = Moat::new("life");
    let mut b = busybox_bundle("life", &["sh", "-c", TICKER]);
    b.spec.set_annotations(Some(
        [("org.example.e2e".to_string(), "yes".to_string())].into(),
    ));
    b.write().unwrap();
    let pid_file = m.work().join("life.pid");
    let o = m.run_logged(
        &[
            "create",
            "--bundle",
            arg(b.path()),
            "--pid-file",
            arg(&pid_file),
            "c1",
        ],
        "c1",
    );
    assert_eq!(o.code, 0, "{o}");
    let st = m.state("c1");
    let pid: u64 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(st["status"], "created", "{st:#}");
    assert_eq!(st["id"], "c1");
    assert_eq!(st["pid"], pid, "--pid-file holds the sandbox's pid: {st:#}");
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_eq!(comm.trim(), "moat", "the pid is the live sandbox process");
    assert_eq!(st["bundle"], arg(&b.path().canonicalize().unwrap()));
    assert_eq!(st["ociVersion"], b.spec.version().as_str());
    assert_eq!(st["annotations"]["org.example.e2e"], "yes", "{st:#}");
    assert!(
        st["created"].as_str().is_some_and(|c| c.ends_with('Z')),
        "{st:#}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(ticks(&m, "c1"), 0, "the process waits for start");

    m.ok(&["start", "c1"]);
    assert_eq!(m.status("c1"), "running");
    m.wait_log("c1", "out", "tick");

    m.ok(&["pause", "c1"]);
    assert_eq!(m.status("c1"), "paused");
    // Output already on its way arrives; then nothing more while paused.
    std::thread::sleep(Duration::from_millis(500));
    let frozen = ticks(&m, "c1");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(ticks(&m, "c1"), frozen, "a paused container keeps running");
    m.ok(&["resume", "c1"]);
    assert_eq!(m.status("c1"), "running");
    let resumed = ticks(&m, "c1");
    let start = Instant::now();
    while ticks(&m, "c1") < resumed + 3 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no ticks after resume"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    m.ok(&["kill", "c1", "TERM"]);
    assert_eq!(m.wait_exit("c1"), 42);
    let st = m.state("c1");
    assert_eq!(st["status"], "stopped", "{st:#}");
    assert_eq!(st["pid"], 0, "{st:#}");
    m.wait_log("c1", "out", "got-term");
    assert_eq!(m.log("c1", "err"), "", "nothing on stderr");
    m.ok(&["delete", "c1"]);
    let o = m.run(&["state", "c1"]);
    assert_ne!(o.code, 0, "state of a deleted container: {o}");
    m.assert_clean(&[b.path()]);
}

#[test]
#[ignore = "VM tier: needs QEMU, virtiofsd and the built guest; run by scripts/test.sh"]
fn kill_by_number_name_and_all() {
    let m = Moat::new("kill");
    // A pid-namespace init ignores signals it has no handler for: wait for the trap.
    let script =
        "trap 'exit 43' USR1; sleep 1000 & sleep 1000 & echo ready; while :; do sleep 0.2; done";
    let b = busybox_bundle("kill", &["sh", "-c", script]);
    m.run_detached(&b, "k1");
    m.wait_log("k1", "out", "ready");
    m.ok(&["kill", "k1", "10"]);
    assert_eq!(m.wait_exit("k1"), 43);
    m.ok(&["delete", "k1"]);

    let pid_file = m.work().join("k2.pid");
    let o = m.run_logged(
        &[
            "run",
            "-d",
            "--pid-file",
            arg(&pid_file),
            "--bundle",
            arg(b.path()),
            "k2",
        ],
        "k2",
    );
    assert_eq!(o.code, 0, "{o}");
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        m.state("k2")["pid"].to_string(),
        "run -d --pid-file holds the sandbox's pid"
    );
    m.wait_log("k2", "out", "ready");
    let pids: Vec<u64> = serde_json::from_str(&m.ok(&["ps", "--format", "json", "k2"])).unwrap();
    assert!(pids.len() >= 3, "init and two sleeps: {pids:?}");
    m.ok(&["kill", "--all", "k2", "SIGKILL"]);
    assert_eq!(m.wait_exit("k2"), 137);
    m.ok(&["delete", "k2"]);
    m.assert_clean(&[b.path()]);
}

#[test]
#[ignore = "VM tier: needs QEMU, virtiofsd and the built guest; run by scripts/test.sh"]
fn run_exit_codes_and_separate_stdio() {
    let m = Moat::new("exit");
    let b = busybox_bundle(
        "exit",
        &["sh", "-c", "echo out1; echo err1 >&2; echo out2; exit 3"],
    );
    let o = m.run(&["run", "--bundle", arg(b.path()), "e1"]);
    assert_eq!(o.code, 3, "{o}");
    assert_eq!(o.stdout, "out1\nout2\n", "{o}");
    assert_eq!(o.stderr, "err1\n", "{o}");
    assert!(m.entries().is_empty(), "run deletes the container");

    // Without a pid namespace the shell is not an init that ignores signals: it dies of
    // its own SIGKILL and SIGTERM.
    let mut b = busybox_bundle("exit-sig", &["sh", "-c", "kill -9 $$; echo survived"]);
    let mut linux = b.spec.linux().clone().unwrap();
    let ns = linux.namespaces().clone().unwrap_or_default();
    linux.set_namespaces(Some(
        ns.into_iter()
            .filter(|n| n.typ() != LinuxNamespaceType::Pid)
            .collect(),
    ));
    b.spec.set_linux(Some(linux));
    b.write().unwrap();
    let o = m.run(&["run", "--bundle", arg(b.path()), "e2"]);
    assert_eq!(o.code, 137, "128+SIGKILL: {o}");
    assert!(!o.stdout.contains("survived"), "{o}");
    b.args(&["sh", "-c", "kill -TERM $$; echo survived"]);
    b.write().unwrap();
    let o = m.run(&["run", "--bundle", arg(b.path()), "e3"]);
    assert_eq!(o.code, 143, "128+SIGTERM: {o}");

    // `moat run` in the foreground returns 128+n when the container is killed with n, and
    // what the container wrote before is delivered.
    let b2 = busybox_bundle(
        "exit-kill",
        &["sh", "-c", "echo up; touch /tmp/up; sleep 1000"],
    );
    let up = b2.rootfs().join("tmp/up");
    std::thread::scope(|s| {
        let run = s.spawn(|| m.run(&["run", "--bundle", arg(b2.path()), "e4"]));
        let start = Instant::now();
        while !up.exists() {
            assert!(start.elapsed() < Duration::from_secs(120), "e4 never ran");
            std::thread::sleep(Duration::from_millis(50));
        }
        m.ok(&["kill", "e4", "KILL"]);
        let o = run.join().unwrap();
        assert_eq!(o.code, 137, "{o}");
        assert_eq!(o.stdout, "up\n", "{o}");
    });
    m.assert_clean(&[b.path(), b2.path()]);
}

#[test]
#[ignore = "VM tier: needs QEMU, virtiofsd and the built guest; run by scripts/test.sh"]
fn stdin_reaches_the_container() {
    let m = Moat::new("stdin");
    let b = busybox_bundle(
        "stdin",
        &["sh", "-c", "read line; echo \"got $line\"; wc -c"],
    );
    let mut input = b"hello from stdin\n".to_vec();
    input.extend(std::iter::repeat_n(b'x', 65536));
    let o = m.run_with_input(&["run", "--bundle", arg(b.path()), "s1"], &input);
    assert_eq!(o.code, 0, "{o}");
    assert_eq!(
        o.stdout.split_whitespace().collect::<Vec<_>>(),
        ["got", "hello", "from", "stdin", "65536"],
        "{o}"
    );
    m.assert_clean(&[b.path()]);
}

#[test]
#[ignore = "VM tier: needs QEMU, virtiofsd and the built guest; run by scripts/test.sh"]
fn env_cwd_user_and_hostname_from_the_spec() {
    let m = Moat::new("env");
    let mut b = busybox_bundle(
        "env",
        &[
            "sh",
            "-c",
            "echo \"$FOO\"; pwd; id -u; id -g; id -G; hostname",
        ],
    );
    let mut p = b.spec.process().clone().unwrap();
    let mut env = p.env().clone().unwrap_or_default();
    env.push("FOO=bar baz".into());
    p.set_env(Some(env));
    p.set_cwd("/tmp".into());
    let mut u = p.user().clone();
    u.set_uid(1000);
    u.set_gid(1000);
    u.set_additional_gids(Some(vec![10]));
    p.set_user(u);
    b.spec.set_process(Some(p));
    b.spec.set_hostname(Some("e2e-host".into()));
    b.write().unwrap();
    let o = m.run(&["run", "--bundle", arg(b.path()), "v1"]);
    assert_eq!(o.code, 0, "{o}");
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(
        lines,
        ["bar baz", "/tmp", "1000", "1000", "1000 10", "e2e-host"],
        "{o}"
    );
    m.assert_clean(&[b.path()]);
}

#[test]
#[ignore = "VM tier: needs QEMU, virtiofsd and the built guest; run by scripts/test.sh"]
fn own_kernel_and_memory() {
    let m = Moat::new("kern");
    let host_release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let host_mem = mem_total_kib(&std::fs::read_to_string("/proc/meminfo").unwrap());
    let script = "uname -r; nproc; cat /proc/meminfo";
    let mut b = busybox_bundle("kern", &["sh", "-c", script]);
    let o = m.run(&["run", "--bundle", arg(b.path()), "u1"]);
    assert_eq!(o.code, 0, "{o}");
    let mut lines = o.stdout.lines();
    let release = lines.next().unwrap();
    assert_ne!(
        release,
        host_release.trim(),
        "the container sees the host's kernel"
    );
    assert_eq!(lines.next(), Some("1"), "one vCPU by default: {o}");
    let mem = mem_total_kib(&o.stdout);
    println!(
        "guest kernel {release} (host {}), MemTotal {mem} KiB (host {host_mem} KiB)",
        host_release.trim()
    );
    assert!(
        (150 << 10..=256 << 10).contains(&mem),
        "a 256 MiB VM by default, MemTotal {mem} KiB"
    );
    assert!(host_mem > 4 * mem, "far below the host's {host_mem} KiB");

    // A memory limit of 512 MiB and a quota of two CPUs size the VM.
    let mut linux = b.spec.linux().clone().unwrap();
    let mut res = linux.resources().clone().unwrap_or_default();
    res.set_memory(Some(
        oci_spec::runtime::LinuxMemoryBuilder::default()
            .limit(512i64 << 20)
            .build()
            .unwrap(),
    ));
    res.set_cpu(Some(
        oci_spec::runtime::LinuxCpuBuilder::default()
            .quota(200_000i64)
            .period(100_000u64)
            .build()
            .unwrap(),
    ));
    linux.set_resources(Some(res));
    b.spec.set_linux(Some(linux));
    b.write().unwrap();
    let o = m.run(&["run", "--bundle", arg(b.path()), "u2"]);
    assert_eq!(o.code, 0, "{o}");
    let big = mem_total_kib(&o.stdout);
    assert!(
        big > 512 << 10 && big <= 640 << 10,
        "limit + 128 MiB overhead, MemTotal {big} KiB"
    );
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(
        o.stdout.lines().nth(1),
        Some(cpus.min(2).to_string().as_str()),
        "{o}"
    );
    m.assert_clean(&[b.path()]);
}

/// CapEff of a `/proc/<pid>/status` text.
fn cap_eff(status: &str) -> u64 {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap_or_else(|| panic!("no CapEff in {status}"));
    u64::from_str_radix(hex.trim(), 16).unwrap()
}

#[test]
#[ignore = "VM tier: needs QEMU, virtiofsd and the built guest; run by scripts/test.sh"]
fn exec_into_a_running_container() {
    let m = Moat::new("exec");
    let mut b = busybox_bundle("exec", &["sleep", "1000"]);
    let mut p = b.spec.process().clone().unwrap();
    p.set_no_new_privileges(Some(false));
    b.spec.set_process(Some(p));
    b.write().unwrap();
    m.run_detached(&b, "x1");
    assert_eq!(m.status("x1"), "running");

    let o = m.run(&["exec", "x1", "sh", "-c", "echo out; echo err >&2; exit 7"]);
    assert_eq!(
        (o.code, o.stdout.as_str(), o.stderr.as_str()),
        (7, "out\n", "err\n"),
        "{o}"
    );

    let o = m.run(&[
        "exec",
        "--env",
        "X=from-exec",
        "--cwd",
        "/tmp",
        "--user",
        "1000:1000",
        "x1",
        "sh",
        "-c",
        "echo $X; pwd; id -u; id -g",
    ]);
    assert_eq!(o.code, 0, "{o}");
    assert_eq!(o.stdout, "from-exec\n/tmp\n1000\n1000\n", "{o}");

    let o = m.run_with_input(&["exec", "x1", "cat"], b"piped in\n");
    assert_eq!((o.code, o.stdout.as_str()), (0, "piped in\n"), "{o}");

    let plain = cap_eff(&m.ok(&["exec", "x1", "cat", "/proc/self/status"]));
    let more = cap_eff(&m.ok(&[
        "exec",
        "--cap",
        "CAP_SYS_ADMIN",
        "x1",
        "cat",
        "/proc/self/status",
    ]));
    assert_eq!(
        plain & (1 << 21),
        0,
        "no CAP_SYS_ADMIN by default: {plain:x}"
    );
    assert_eq!(
        more,
        plain | (1 << 21),
        "--cap adds CAP_SYS_ADMIN: {more:x}"
    );

    let nnp = |extra: &[&str]| {
        let mut args = vec!["exec"];
        args.extend(extra);
        args.extend(["x1", "grep", "NoNewPrivs", "/proc/self/status"]);
        m.ok(&args).split_whitespace().last().unwrap().to_string()
    };
    assert_eq!(nnp(&[]), "0");
    assert_eq!(nnp(&["--no-new-privs"]), "1");

    // Detached: the pid file names a live holder process; the process shows in ps.
    let before: Vec<u64> = serde_json::from_str(&m.ok(&["ps", "--format", "json", "x1"])).unwrap();
    let pid_file = m.work().join("exec.pid");
    let o = m.run_logged(
        &[
            "exec",
            "-d",
            "--pid-file",
            arg(&pid_file),
            "x1",
            "sleep",
            "999",
        ],
        "exec-d",
    );
    assert_eq!(o.code, 0, "{o}");
    let holder: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        std::path::Path::new(&format!("/proc/{holder}")).exists(),
        "the --pid-file process {holder} is alive"
    );
    let after: Vec<u64> = serde_json::from_str(&m.ok(&["ps", "--format", "json", "x1"])).unwrap();
    assert_eq!(after.len(), before.len() + 1, "{before:?} -> {after:?}");

    let o = m.run(&["delete", "x1"]);
    assert_ne!(
        o.code, 0,
        "a running container is not deleted without --force"
    );
    m.ok(&["delete", "--force", "x1"]);
    m.assert_clean(&[b.path()]);
}

#[test]
#[ignore = "VM tier: needs QEMU, virtiofsd and the built guest; run by scripts/test.sh"]
fn ps_and_list_formats() {
    let m = Moat::new("ps");
    let b = busybox_bundle("ps", &["sh", "-c", "sleep 1000 & echo ready; sleep 1000"]);
    m.create(&b, "p1");
    m.run_detached(&b, "p2");
    m.wait_log("p2", "out", "ready");

    let table = m.ok(&["list"]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"]
    );
    let rows: BTreeMap<&str, Vec<&str>> = lines
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0], f)
        })
        .collect();
    assert_eq!(rows.len(), 2, "{table}");
    assert_eq!(rows["p1"][2], "created", "{table}");
    assert_eq!(rows["p2"][2], "running", "{table}");
    let bundle = b.path().canonicalize().unwrap();
    assert_eq!(rows["p2"][3], arg(&bundle), "{table}");

    let json: Vec<Value> = serde_json::from_str(&m.ok(&["list", "--format", "json"])).unwrap();
    let by_id: BTreeMap<&str, &Value> = json
        .iter()
        .map(|v| (v["id"].as_str().unwrap(), v))
        .collect();
    assert_eq!(by_id["p1"]["status"], "created");
    assert_eq!(by_id["p2"]["status"], "running");
    assert_eq!(by_id["p2"]["pid"], m.state("p2")["pid"]);
    assert_eq!(m.ok(&["list", "-q"]), "p1\np2\n");

    let pids: Vec<u64> = serde_json::from_str(&m.ok(&["ps", "--format", "json", "p2"])).unwrap();
    assert!(pids.len() >= 2, "sh and a background sleep: {pids:?}");
    let table = m.ok(&["ps", "p2"]);
    let listed: Vec<u64> = table
        .lines()
        .skip(1)
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert_eq!(listed, pids, "{table}");
    assert!(!table.lines().next().unwrap().trim().is_empty());

    m.ok(&["delete", "p1"]);
    m.ok(&["delete", "--force", "p2"]);
    assert_eq!(m.ok(&["list", "-q"]), "");
    m.assert_clean(&[b.path()]);
}

#[test]
#[ignore = "VM tier: needs QEMU, virtiofsd and the built guest; run by scripts/test.sh"]
fn spec_features_and_the_log() {
    let m = Moat::new("spec");
    let dir = m.work().join("bundle");
    std::fs::create_dir_all(&dir).unwrap();
    m.ok(&["spec", "--bundle", arg(&dir)]);
    let path = dir.join("config.json");
    let written = std::fs::read_to_string(&path).unwrap();
    let spec: oci_spec::runtime::Spec = serde_json::from_str(&written).unwrap();
    assert_eq!(
        spec.root().as_ref().unwrap().path().to_str(),
        Some("rootfs")
    );
    assert!(spec.process().as_ref().unwrap().args().is_some());
    let o = m.run(&["spec", "--bundle", arg(&dir)]);
    let line = moat_tests::cli::one_line_error(&o);
    assert!(line.contains("exists"), "{o}");
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        written,
        "not overwritten"
    );
    // Without --bundle: the current directory.
    let cwd = m.work().join("cwd");
    std::fs::create_dir_all(&cwd).unwrap();
    let o = m.command(&["spec"]).current_dir(&cwd).output().unwrap();
    assert!(o.status.success(), "{o:?}");
    assert!(cwd.join("config.json").is_file());

    let f: Value = serde_json::from_str(&m.ok(&["features"])).unwrap();
    assert!(
        f["ociVersionMin"].is_string() && f["ociVersionMax"].is_string(),
        "{f:#}"
    );
    assert!(
        f["hooks"].as_array().is_some_and(|h| !h.is_empty()),
        "{f:#}"
    );
    assert!(f["linux"]["namespaces"].as_array().is_some(), "{f:#}");

    // --log with --log-format json records a failure as runc does.
    let log = m.work().join("moat.log");
    let o = m.run(&["--log", arg(&log), "--log-format", "json", "state", "nope"]);
    assert_ne!(o.code, 0);
    let text = std::fs::read_to_string(&log).unwrap();
    let entry: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(entry["level"], "error", "{text}");
    assert!(entry["msg"].as_str().unwrap().contains("nope"), "{text}");
    assert!(entry["time"].is_string(), "{text}");
    m.assert_clean(&[]);
}

#[test]
#[ignore = "VM tier: needs QEMU, virtiofsd and the built guest; run by scripts/test.sh"]
fn events_stats_and_oom() {
    let m = Moat::new("events");
    let mut b = busybox_bundle("events", &["sleep", "1000"]);
    let mut linux = b.spec.linux().clone().unwrap();
    let mut res = linux.resources().clone().unwrap_or_default();
    let limit = 48i64 << 20;
    res.set_memory(Some(
        oci_spec::runtime::LinuxMemoryBuilder::default()
            .limit(limit)
            .build()
            .unwrap(),
    ));
    linux.set_resources(Some(res));
    b.spec.set_linux(Some(linux));
    b.write().unwrap();
    m.run_detached(&b, "ev");

    let stats: Value = serde_json::from_str(&m.ok(&["events", "--stats", "ev"])).unwrap();
    assert_eq!(stats["type"], "stats", "{stats:#}");
    assert_eq!(stats["id"], "ev");
    let d = &stats["data"];
    assert_eq!(d["memory"]["usage"]["limit"], limit, "{stats:#}");
    assert!(
        d["memory"]["usage"]["usage"].as_u64().unwrap() > 0,
        "{stats:#}"
    );
    assert!(d["cpu"]["usage"]["total"].as_u64().is_some(), "{stats:#}");
    assert!(d["pids"]["current"].as_u64().unwrap() >= 1, "{stats:#}");

    // The event stream: a stats line at once, then the OOM kill of an exec'd `tail`.
    let mut events = m
        .command(&["events", "--interval", "1", "ev"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let out = events.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = |want: &str| -> Value {
        let start = Instant::now();
        loop {
            let left = Duration::from_secs(120).saturating_sub(start.elapsed());
            let line = rx
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("no {want:?} event: {e}"));
            let v: Value = serde_json::from_str(&line).unwrap();
            if v["type"] == want {
                return v;
            }
        }
    };
    next("stats");
    let o = m.run(&["exec", "ev", "tail", "/dev/zero"]);
    assert_eq!(o.code, 137, "tail is OOM-killed: {o}");
    let oom = next("oom");
    assert_eq!(oom["id"], "ev", "{oom}");
    let _ = events.kill();
    let _ = events.wait();
    let stats: Value = serde_json::from_str(&m.ok(&["events", "--stats", "ev"])).unwrap();
    assert!(
        stats["data"]["memory"]["raw"]["oom_kill"].as_u64().unwrap() >= 1,
        "{stats:#}"
    );
    m.ok(&["delete", "--force", "ev"]);
    m.assert_clean(&[b.path()]);
}

#[test]
#[ignore = "VM tier: needs QEMU, virtiofsd and the built guest; run by scripts/test.sh"]
fn update_resources() {
    let m = Moat::new("update");
    let b = busybox_bundle("update", &["sleep", "1000"]);
    m.run_detached(&b, "up");
    let read = |file: &str| m.ok(&["exec", "up", "cat", &format!("/sys/fs/cgroup/{file}")]);
    assert_eq!(
        m.ok(&["exec", "up", "cat", "/proc/self/cgroup"]),
        "0::/\n",
        "the container has its own cgroup namespace"
    );

    m.ok(&[
        "update",
        "--memory",
        "104857600",
        "--pids-limit",
        "55",
        "up",
    ]);
    assert_eq!(read("memory.max"), "104857600\n");
    assert_eq!(read("pids.max"), "55\n");
    m.ok(&[
        "update",
        "--cpu-quota",
        "50000",
        "--cpu-period",
        "100000",
        "up",
    ]);
    assert_eq!(read("cpu.max"), "50000 100000\n");

    let r = m.work().join("resources.json");
    std::fs::write(
        &r,
        r#"{"memory": {"limit": 209715200}, "pids": {"limit": 66}}"#,
    )
    .unwrap();
    m.ok(&["update", "-r", arg(&r), "up"]);
    assert_eq!(read("memory.max"), "209715200\n");
    assert_eq!(read("pids.max"), "66\n");
    let stats: Value = serde_json::from_str(&m.ok(&["events", "--stats", "up"])).unwrap();
    assert_eq!(stats["data"]["memory"]["usage"]["limit"], 209715200u64);
    assert_eq!(stats["data"]["pids"]["limit"], 66);

    m.ok(&["delete", "--force", "up"]);
    m.assert_clean(&[b.path()]);
}
