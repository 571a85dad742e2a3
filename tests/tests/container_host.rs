//! Host-integration tier: the agent's container code (`moat-agent run --bundle`) runs a
//! busybox bundle on this host, and `moat-checker` verifies each feature from inside the
//! container. Every test asserts exit 0, no `FAIL` line, and that no process of the run
//! outlived it. cgroup checks that need cgroup v2 are in the VM tier (this host is v1).
//!
//! Specs are changed as JSON, with the field names of `config.json`. With
//! `MOAT_HOST_RUNTIME=runc` the same tests run under runc, which checks the expectations
//! themselves (runc 1.1 on cgroup v1 differs on `domainname`, `/sys/fs/cgroup`, and
//! seccomp profiles that deny what its Go init needs).

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use moat_tests::bundle::Bundle;
use moat_tests::host::{
    children_of, ns_inode, processes_mentioning, run_agent, unique_id, RunOutput, Running,
    RUN_TIMEOUT,
};
use serde_json::{json, Value};

/// The tests share host state (mount table, network namespaces): one at a time.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn bundle(tag: &str) -> Bundle {
    Bundle::new(tag).expect("creating the bundle")
}

/// Runs the checker with `checks` after `edit` changed the spec; asserts that every check
/// passed and nothing was left running.
fn assert_checks<S: AsRef<str>>(b: &mut Bundle, checks: &[S], edit: impl FnOnce(&mut Value)) {
    b.check(checks);
    b.write_with(edit).expect("writing config.json");
    let out = run_agent(b);
    println!("{}", out.stdout.trim_end());
    assert!(
        out.code == 0 && !out.stdout.contains("FAIL") && out.stdout.contains("moat-checker:"),
        "{out}"
    );
    assert_nothing_left(b);
}

fn assert_nothing_left(b: &Bundle) {
    let left = processes_mentioning(&b.path().to_string_lossy());
    assert!(left.is_empty(), "processes left behind: {left:?}");
}

fn run(b: &Bundle, edit: impl FnOnce(&mut Value)) -> RunOutput {
    b.write_with(edit).expect("writing config.json");
    let out = run_agent(b);
    assert_nothing_left(b);
    out
}

fn host_ns(t: &str) -> u64 {
    ns_inode(format!("/proc/self/ns/{t}"))
}

fn push(v: &mut Value, key: &str, item: Value) {
    v[key].as_array_mut().expect("an array").push(item);
}

#[test]
#[ignore = "host-integration tier: needs root and busybox-static; run by scripts/test.sh"]
fn new_namespaces_of_every_kind() {
    let _g = serial();
    let mut b = bundle("ns");
    let mut checks = vec!["pid=1".to_string(), "ppid=0".into(), "net-ifaces=lo".into()];
    for t in ["pid", "net", "ipc", "uts", "mnt", "cgroup"] {
        checks.push(format!("ns-not={t}:{}", host_ns(t)));
    }
    checks.push(format!("ns=user:{}", host_ns("user")));
    assert_checks(&mut b, &checks, |_| {});
}

#[test]
#[ignore = "host-integration tier: needs root and busybox-static; run by scripts/test.sh"]
fn user_namespace_with_id_maps() {
    let _g = serial();
    let mut b = bundle("userns");
    let checks = [
        "uid=0".to_string(),
        "gid=0".into(),
        "uid-map=0 100000 65536".into(),
        "gid-map=0 200000 65536".into(),
        format!("ns-not=user:{}", host_ns("user")),
        format!("ns-not=pid:{}", host_ns("pid")),
        "pid=1".into(),
        "mount=/proc:proc".into(),
        // devpts shows its gid as the host sees it: container gid 5 is host gid 200005.
        "mount=/dev/pts:devpts:gid=200005".into(),
    ];
    assert_checks(&mut b, &checks, |v| {
        push(&mut v["linux"], "namespaces", json!({"type": "user"}));
        v["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        v["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 200000, "size": 65536}]);
    });
}

/// Namespaces held by other processes: `ip netns add`, and `unshare` running `sleep`.
struct Holder {
    netns: String,
    unshare: std::process::Child,
    sleeper: u32,
}

impl Holder {
    fn new() -> Self {
        let netns = unique_id("netns");
        let st = std::process::Command::new("ip")
            .args(["netns", "add", &netns])
            .status()
            .expect("running ip netns add");
        assert!(st.success(), "ip netns add {netns}: {st}");
        let unshare = std::process::Command::new("unshare")
            .args(["--uts", "--ipc", "--pid", "--fork", "sh", "-c"])
            .arg("hostname moat-joined && exec sleep 600")
            .spawn()
            .expect("running unshare");
        let start = Instant::now();
        let sleeper = loop {
            let found = children_of(unshare.id()).into_iter().find(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .is_ok_and(|c| c.trim() == "sleep")
            });
            if let Some(p) = found {
                break p;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "unshare's sleep did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        Holder {
            netns,
            unshare,
            sleeper,
        }
    }

    fn ns(&self, t: &str) -> String {
        format!("/proc/{}/ns/{t}", self.sleeper)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-9", &self.sleeper.to_string()])
            .status();
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

#[test]
#[ignore = "host-integration tier: needs root and busybox-static; run by scripts/test.sh"]
fn joins_namespaces_given_by_path() {
    let _g = serial();
    let h = Holder::new();
    let netns = format!("/run/netns/{}", h.netns);
    let mut b = bundle("join");
    let checks = [
        format!("ns=net:{}", ns_inode(&netns)),
        format!("ns=uts:{}", ns_inode(h.ns("uts"))),
        format!("ns=ipc:{}", ns_inode(h.ns("ipc"))),
        format!("ns=pid:{}", ns_inode(h.ns("pid"))),
        format!("ns-not=mnt:{}", host_ns("mnt")),
        "hostname=moat-joined".into(),
        "net-ifaces=lo".into(),
    ];
    let (uts, ipc, pid) = (h.ns("uts"), h.ns("ipc"), h.ns("pid"));
    assert_checks(&mut b, &checks, |v| {
        v.as_object_mut().expect("an object").remove("hostname");
        v["linux"]["namespaces"] = json!([
            {"type": "pid", "path": pid},
            {"type": "network", "path": netns},
            {"type": "ipc", "path": ipc},
            {"type": "uts", "path": uts},
            {"type": "mount"},
        ]);
    });
}

#[test]
#[ignore = "host-integration tier: needs root and busybox-static; run by scripts/test.sh"]
fn rootfs_is_pivoted_and_readonly() {
    let _g = serial();
    let mut b = bundle("pivot");
    b.args(&[
        "/bin/sh",
        "-c",
        "/bin/moat-checker ro-root=1 mount=/:*:ro && read go && echo bye",
    ]);
    b.write().expect("writing config.json");
    let mut r = Running::agent(&b, &unique_id("pivot"));
    // The container's init is the agent's child once the intermediate process exits.
    let start = Instant::now();
    let init = loop {
        let sh = children_of(r.pid()).into_iter().find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "sh")
        });
        if let Some(p) = sh {
            break p;
        }
        assert!(
            start.elapsed() < RUN_TIMEOUT,
            "the container's sh never appeared"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    // After pivot_root the container's root is the root of its mount namespace ("/"); a
    // chroot would show the rootfs path.
    let root = std::fs::read_link(format!("/proc/{init}/root")).expect("readlink root");
    r.write_stdin(b"go\n");
    let out = r.wait(RUN_TIMEOUT);
    println!("{}", out.stdout.trim_end());
    assert_eq!(
        root.to_string_lossy(),
        "/",
        "the container's root is not a pivoted root"
    );
    assert!(
        out.code == 0 && !out.stdout.contains("FAIL") && out.stdout.contains("bye"),
        "{out}"
    );
    assert_nothing_left(&b);
}

#[test]
#[ignore = "host-integration tier: needs root and busybox-static; run by scripts/test.sh"]
fn mounts_of_every_type_with_options() {
    let _g = serial();
    let mut b = bundle("mounts");
    let data = b.path().join("data");
    std::fs::create_dir_all(&data).expect("mkdir data");
    std::fs::write(data.join("hello"), "world").expect("writing data/hello");
    let checks = [
        "mount=/proc:proc:rw",
        "mount=/sys:sysfs:ro,nosuid,nodev,noexec",
        "mount=/sys/fs/cgroup:*:ro,nosuid,nodev,noexec",
        "mount=/dev:tmpfs:nosuid,mode=755,size=65536k",
        "mount=/dev/pts:devpts:nosuid,noexec,mode=620,ptmxmode=666,gid=5",
        // tmpfs shows no mode= when it is the default, 1777.
        "mount=/dev/shm:tmpfs:nosuid,nodev,noexec,size=65536k",
        "mode=/dev/shm:01777",
        "mount=/dev/mqueue:mqueue:nosuid,nodev,noexec",
        "mount=/tmp:tmpfs:nosuid,nodev,noexec,size=1024k",
        "mode=/tmp:01777",
        "writable=/tmp",
        "mount=/mnt/ro:*:ro,nosuid,nodev,noexec",
        "file=/mnt/ro/hello:world",
        "readonly=/mnt/ro",
        "mount=/mnt/rw:*:rw",
        "writable=/mnt/rw",
        "mount=/mnt/hostdev:devtmpfs",
        "mount=/mnt/hostdev/pts:devpts",
        "mount=/mnt/shared:tmpfs:shared",
        "mount=/mnt/private:tmpfs:private",
        "mount=/mnt/unbindable:tmpfs:unbindable",
        "ro-root=1",
    ];
    let data = data.to_string_lossy().into_owned();
    assert_checks(&mut b, &checks, |v| {
        for m in [
            json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                   "options": ["nosuid", "nodev", "noexec", "mode=1777", "size=1m"]}),
            json!({"destination": "/mnt/ro", "type": "bind", "source": data,
                   "options": ["bind", "ro", "nosuid", "nodev", "noexec"]}),
            json!({"destination": "/mnt/rw", "type": "bind", "source": data, "options": ["rbind"]}),
            json!({"destination": "/mnt/hostdev", "type": "bind", "source": "/dev",
                   "options": ["rbind", "nosuid"]}),
            json!({"destination": "/mnt/shared", "type": "tmpfs", "source": "tmpfs",
                   "options": ["shared"]}),
            json!({"destination": "/mnt/private", "type": "tmpfs", "source": "tmpfs",
                   "options": ["rprivate"]}),
            json!({"destination": "/mnt/unbindable", "type": "tmpfs", "source": "tmpfs",
                   "options": ["unbindable"]}),
        ] {
            push(v, "mounts", m);
        }
    });
}

#[test]
#[ignore = "host-integration tier: needs root and busybox-static; run by scripts/test.sh"]
fn rootfs_propagation() {
    let _g = serial();
    let mut b = bundle("rprop");
    assert_checks(&mut b, &["mount=/:*:shared"], |v| {
        v["linux"]["rootfsPropagation"] = json!("shared");
    });
}

#[test]
#[ignore = "host-integration tier: needs root and busybox-static; run by scripts/test.sh"]
fn default_devices_and_dev_symlinks() {
    let _g = serial();
    let mut b = bundle("dev");
    let checks = [
        "chardev=/dev/null:1:3",
        "chardev=/dev/zero:1:5",
        "chardev=/dev/full:1:7",
        "chardev=/dev/random:1:8",
        "chardev=/dev/urandom:1:9",
        "chardev=/dev/tty:5:0",
        "mode=/dev/null:0666",
        "symlink=/dev/fd:/proc/self/fd",
        "symlink=/dev/stdin:/proc/self/fd/0",
        "symlink=/dev/stdout:/proc/self/fd/1",
        "symlink=/dev/stderr:/proc/self/fd/2",
        "symlink=/dev/ptmx:pts/ptmx",
        "chardev=/dev/moat-null:1:3",
        "mode=/dev/moat-null:0600",
    ];
    assert_checks(&mut b, &checks, |v| {
        v["linux"]["devices"] = json!([{"path": "/dev/moat-null", "type": "c", "major": 1,
            "minor": 3, "fileMode": 0o600, "uid": 0, "gid": 0}]);
    });
}

#[test]
#[ignore = "host-integration tier: needs root and busybox-static; run by scripts/test.sh"]
fn masked_and_readonly_paths() {
    let _g = serial();
    let mut b = bundle("paths");
    let r = b.rootfs();
    std::fs::create_dir_all(r.join("secret-dir")).expect("mkdir");
    std::fs::write(r.join("secret-dir/x"), "secret").expect("write");
    std::fs::write(r.join("secret-file"), "secret").expect("write");
    std::fs::create_dir_all(r.join("rodir")).expect("mkdir");
    // The defaults that exist on this kernel (the spec's list names some that may not).
    let exists = |p: &&&str| std::path::Path::new(p).exists();
    let mut checks: Vec<String> = [
        "/proc/acpi",
        "/proc/keys",
        "/proc/timer_list",
        "/sys/firmware",
    ]
    .iter()
    .filter(exists)
    .map(|p| format!("masked={p}"))
    .collect();
    checks.extend(
        ["/proc/sys", "/proc/bus", "/proc/fs", "/proc/irq"]
            .iter()
            .filter(exists)
            .map(|p| format!("readonly={p}")),
    );
    checks.extend(
        [
            "masked=/secret-dir",
            "masked=/secret-file",
            "readonly=/rodir",
            "writable=/",
        ]
        .map(String::from),
    );
    assert_checks(&mut b, &checks, |v| {
        v["root"]["readonly"] = json!(false);
        push(&mut v["linux"], "maskedPaths", json!("/secret-dir"));
        push(&mut v["linux"], "maskedPaths", json!("/secret-file"));
        push(&mut v["linux"], "readonlyPaths", json!("/rodir"));
    });
}

#[test]
#[ignore = "host-integration tier: needs root and busybox-static; run by scripts/test.sh"]
fn hostname_and_domainname() {
    let _g = serial();
    let mut b = bundle("uts");
    assert_checks(&mut b, &["hostname=box", "domainname=example.org"], |v| {
        v["hostname"] = json!("box");
        v["domainname"] = json!("example.org");
    });
}

#[test]
#[ignore = "host-integration tier: needs root and busybox-static; run by scripts/test.sh"]
fn sysctl_in_the_containers_namespaces() {
    let _g = serial();
    let read = |k: &str| std::fs::read_to_string(format!("/proc/sys/{k}")).unwrap_or_default();
    let before = (read("net/ipv4/ip_forward"), read("kernel/shm_rmid_forced"));
    // Set the opposite of the host's value, so that the check tells them apart.
    let fwd = if before.0.trim() == "1" { "0" } else { "1" };
    let mut b = bundle("sysctl");
    let checks = [
        format!("sysctl=net.ipv4.ip_forward:{fwd}"),
        "sysctl=kernel.shm_rmid_forced:1".into(),
    ];
    assert_checks(&mut b, &checks, |v| {
        v["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": fwd, "kernel.shm_rmid_forced": "1"});
    });
    let after = (read("net/ipv4/ip_forward"), read("kernel/shm_rmid_forced"));
    assert_eq!(before, after, "the host's sysctls changed");
}

#[test]
#[ignore = "host-integration tier: needs root and busybox-static; run by scripts/test.sh"]
fn rlimits() {
    let _g = serial();
    let mut b = bundle("rlimits");
    let checks = [
        "rlimit-nofile=100:200",
        "rlimit-core=1024:4096",
        "rlimit-nproc=500:1000",
        "rlimit-fsize=unlimited:unlimited",
    ];
    assert_checks(&mut b, &checks, |v| {
        v["process"]["rlimits"] = json!([
            {"type": "RLIMIT_NOFILE", "soft": 100, "hard": 200},
            {"type": "RLIMIT_CORE", "soft": 1024, "hard": 4096},
            {"type": "RLIMIT_NPROC", "soft": 500, "hard": 1000},
            {"type": "RLIMIT_FSIZE", "soft": u64::MAX, "hard": u64::MAX},
        ]);
    });
}

/// What the checker sees is what `execve` of a file without file capabilities makes of the
/// five sets: bounding, inheritable and ambient carry over as set; permitted = effective =
/// ambient for a non-root user; for root, permitted = effective = bounding | inheritable,
/// cut down to the old permitted set under noNewPrivileges (no privileges gained).
#[test]
#[ignore = "host-integration tier: needs root and busybox-static; run by scripts/test.sh"]
fn all_five_capability_sets() {
    let _g = serial();
    let caps = json!({
        "bounding": ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_AUDIT_WRITE"],
        "permitted": ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
        "effective": ["CAP_KILL", "CAP_NET_BIND_SERVICE"],
        "inheritable": ["CAP_KILL", "CAP_NET_BIND_SERVICE"],
        "ambient": ["CAP_NET_BIND_SERVICE"],
    });
    let carried = [
        "cap-bnd=CAP_CHOWN,CAP_KILL,CAP_NET_BIND_SERVICE,CAP_AUDIT_WRITE",
        "cap-inh=CAP_KILL,CAP_NET_BIND_SERVICE",
        "cap-amb=CAP_NET_BIND_SERVICE",
    ];
    let cases = [
        (1000, true, "CAP_NET_BIND_SERVICE"),
        (0, true, "CAP_CHOWN,CAP_KILL,CAP_NET_BIND_SERVICE"),
        (
            0,
            false,
            "CAP_CHOWN,CAP_KILL,CAP_NET_BIND_SERVICE,CAP_AUDIT_WRITE",
        ),
    ];
    for (uid, nnp, after_exec) in cases {
        let mut b = bundle("caps");
        let mut checks: Vec<String> = carried.iter().map(|c| c.to_string()).collect();
        checks.push(format!("uid={uid}"));
        checks.push(format!("cap-prm={after_exec}"));
        checks.push(format!("cap-eff={after_exec}"));
        let c = caps.clone();
        assert_checks(&mut b, &checks, |v| {
            v["process"]["user"] = json!({"uid": uid, "gid": uid});
            v["process"]["noNewPrivileges"] = json!(nnp);
            v["process"]["capabilities"] = c;
        });
    }
}

#[test]
#[ignore = "host-integration tier: needs root and busybox-static; run by scripts/test.sh"]
fn no_new_privileges() {
    let _g = serial();
    for nnp in [true, false] {
        let mut b = bundle("nnp");
        assert_checks(&mut b, &[format!("nnp={}", u8::from(nnp))], |v| {
            v["process"]["noNewPrivileges"] = json!(nnp);
        });
    }
}

#[test]
#[ignore = "host-integration tier: needs root and busybox-static; run by scripts/test.sh"]
fn user_additional_groups_and_umask() {
    let _g = serial();
    let mut b = bundle("user");
    let checks = [
        "uid=1000",
        "gid=1000",
        "groups=2000,3000",
        "umask=0027",
        "writable=/tmp",
    ];
    assert_checks(&mut b, &checks, |v| {
        v["root"]["readonly"] = json!(false);
        v["process"]["user"] =
            json!({"uid": 1000, "gid": 1000, "umask": 0o027, "additionalGids": [2000, 3000]});
    });
}

#[test]
#[ignore = "host-integration tier: needs root and busybox-static; run by scripts/test.sh"]
fn cwd_and_env() {
    let _g = serial();
    let mut b = bundle("env");
    std::fs::create_dir_all(b.rootfs().join("work")).expect("mkdir work");
    let checks = [
        "cwd=/work",
        "env=FOO=bar baz",
        "env=EMPTY=",
        "env=PATH=/bin",
        "env-absent=TERM",
        "env-absent=CARGO_MANIFEST_DIR",
    ];
    assert_checks(&mut b, &checks, |v| {
        v["process"]["cwd"] = json!("/work");
        v["process"]["env"] = json!(["PATH=/bin", "FOO=bar baz", "EMPTY="]);
    });
}

#[test]
#[ignore = "host-integration tier: needs root and busybox-static; run by scripts/test.sh"]
fn missing_cwd_is_created_as_runc_does() {
    let _g = serial();
    let mut b = bundle("cwd");
    assert_checks(&mut b, &["cwd=/does/not/exist/yet"], |v| {
        v["process"]["cwd"] = json!("/does/not/exist/yet");
    });
}

#[test]
#[ignore = "host-integration tier: needs root and busybox-static; run by scripts/test.sh"]
fn oom_score_adj() {
    let _g = serial();
    let mut b = bundle("oom");
    assert_checks(&mut b, &["oom=500"], |v| {
        v["process"]["oomScoreAdj"] = json!(500)
    });
}

fn seccomp(default: &str, rules: Value) -> Value {
    json!({"defaultAction": default, "architectures": ["SCMP_ARCH_X86_64"], "syscalls": rules})
}

fn rule(names: &[&str], action: &str) -> Value {
    json!({"names": names, "action": action})
}

#[test]
#[ignore = "host-integration tier: needs root and busybox-static; run by scripts/test.sh"]
fn seccomp_errno_ret_and_argument_conditions() {
    let _g = serial();
    let rules = json!([
        {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
        {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1234},
        {"names": ["uname"], "action": "SCMP_ACT_ERRNO"},
        {"names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": 97,
         "args": [{"index": 0, "value": 2, "op": "SCMP_CMP_EQ"}]},
        {"names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": 22,
         "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"},
                  {"index": 1, "value": 2, "op": "SCMP_CMP_EQ"}]},
        {"names": ["dup"], "action": "SCMP_ACT_ERRNO",
         "args": [{"index": 0, "value": 100, "op": "SCMP_CMP_GT"}]},
        {"names": ["personality"], "action": "SCMP_ACT_ERRNO", "errnoRet": 95,
         "args": [{"index": 0, "value": 255, "valueTwo": 8, "op": "SCMP_CMP_MASKED_EQ"}]},
    ]);
    // With noNewPrivileges the filter goes on last; without, while still privileged.
    for nnp in [true, false] {
        let mut b = bundle("seccomp");
        let checks = [
            "seccomp=2",
            "syscall=mkdir:EACCES",
            "syscall=mkdirat:ok",
            "syscall=getppid:1234",
            "syscall=uname:EPERM",
            "syscall=socket(2,1):EAFNOSUPPORT",
            "syscall=socket(1,2):EINVAL",
            "syscall=socket(1,1):ok",
            "syscall=dup(200):EPERM",
            "syscall=dup(1):ok",
            "syscall=personality(0x108):EOPNOTSUPP",
            "syscall=personality(0xffffffff):ok",
            "syscall=getpid:ok",
        ];
        let r = rules.clone();
        assert_checks(&mut b, &checks, |v| {
            v["root"]["readonly"] = json!(false);
            v["process"]["noNewPrivileges"] = json!(nnp);
            v["linux"]["seccomp"] = seccomp("SCMP_ACT_ALLOW", r);
        });
    }
}

/// The calls the checker (a static musl binary) and the agent's last steps before
/// `execve` make, for a profile that denies everything else.
const CHECKER_SYSCALLS: &[&str] = &[
    "read",
    "write",
    "writev",
    "readv",
    "open",
    "openat",
    "close",
    "fstat",
    "newfstatat",
    "statx",
    "lseek",
    "fcntl",
    "dup2",
    "dup3",
    "execve",
    "execveat",
    "arch_prctl",
    "set_tid_address",
    "brk",
    "mmap",
    "munmap",
    "mprotect",
    "mremap",
    "madvise",
    "rt_sigaction",
    "rt_sigprocmask",
    "rt_sigreturn",
    "sigaltstack",
    "poll",
    "ppoll",
    "exit",
    "exit_group",
    "getpid",
    "ioctl",
    "futex",
    "getrandom",
    "sched_getaffinity",
    "prlimit64",
    "readlink",
    "rseq",
    "set_robust_list",
    "rmdir",
];

#[test]
#[ignore = "host-integration tier: needs root and busybox-static; run by scripts/test.sh"]
fn seccomp_default_action() {
    let _g = serial();
    let mut b = bundle("seccomp-default");
    let checks = [
        "syscall=getpid:ok",
        "syscall=mkdir:ENOSYS",
        "syscall=gettid:ENOSYS",
    ];
    assert_checks(&mut b, &checks, |v| {
        let mut s = seccomp(
            "SCMP_ACT_ERRNO",
            json!([rule(CHECKER_SYSCALLS, "SCMP_ACT_ALLOW")]),
        );
        s["defaultErrnoRet"] = json!(38);
        v["root"]["readonly"] = json!(false);
        v["linux"]["seccomp"] = s;
    });
}

#[test]
#[ignore = "host-integration tier: needs root and busybox-static; run by scripts/test.sh"]
fn seccomp_kill_process_is_death_by_sigsys() {
    let _g = serial();
    let mut b = bundle("seccomp-kill");
    b.check(&["syscall=getpid:ok", "syscall=mkdir:ok"]);
    let out = run(&b, |v| {
        v["root"]["readonly"] = json!(false);
        v["linux"]["seccomp"] = seccomp(
            "SCMP_ACT_ALLOW",
            json!([rule(&["mkdir"], "SCMP_ACT_KILL_PROCESS")]),
        );
    });
    println!("{}", out.stdout.trim_end());
    assert_eq!(out.code, 128 + 31, "{out}");
    assert!(
        out.stdout.contains("ok syscall=getpid") && !out.stdout.contains("mkdir:ok"),
        "{out}"
    );
}

#[test]
#[ignore = "host-integration tier: needs root and busybox-static; run by scripts/test.sh"]
fn create_and_start_container_hooks() {
    let _g = serial();
    let mut b = bundle("hooks");
    let root = b.rootfs().to_string_lossy().into_owned();
    let id = unique_id("hooks");
    let checks = [
        "file=/hook-create:created".to_string(),
        "file=/hook-start:started".into(),
        format!("contains=/hook-create-state:{id}"),
        "contains=/hook-create-state:\"creating\"".into(),
        format!("contains=/hook-start-state:{id}"),
        "contains=/hook-start-state:\"created\"".into(),
    ];
    b.check(&checks);
    // createContainer runs in the container's mount namespace before pivot_root (host
    // paths); startContainer after it, just before the process's execve (container paths).
    let create = format!("cat > {root}/hook-create-state; echo created > {root}/hook-create");
    let start = "cat > /hook-start-state; echo started > /hook-start";
    b.write_with(|v| {
        v["root"]["readonly"] = json!(false);
        v["hooks"] = json!({
            "createContainer": [{"path": "/bin/sh", "args": ["sh", "-c", create]}],
            "startContainer": [{"path": "/bin/sh", "args": ["sh", "-c", start]}],
        });
    })
    .expect("writing config.json");
    let out = Running::agent(&b, &id).wait(RUN_TIMEOUT);
    println!("{}", out.stdout.trim_end());
    assert!(
        out.code == 0 && !out.stdout.contains("FAIL") && out.stdout.contains("moat-checker:"),
        "{out}"
    );
    assert_nothing_left(&b);
    assert!(
        b.rootfs().join("hook-start").is_file(),
        "startContainer's file is not in the rootfs"
    );
}

#[test]
#[ignore = "host-integration tier: needs root and busybox-static; run by scripts/test.sh"]
fn exit_codes_and_signal_deaths() {
    let _g = serial();
    for (script, code, pid_ns) in [
        ("exit 3", 3, true),
        ("true", 0, true),
        ("false", 1, true),
        // The init of a pid namespace ignores SIGKILL from inside it: no pid namespace here.
        ("kill -9 $$", 137, false),
        ("kill -TERM $$", 143, false),
    ] {
        let mut b = bundle("exit");
        b.args(&["/bin/sh", "-c", script]);
        let out = run(&b, |v| {
            if !pid_ns {
                let ns = v["linux"]["namespaces"].as_array_mut().expect("namespaces");
                ns.retain(|n| n["type"] != "pid");
            }
        });
        assert_eq!(out.code, code, "{script}: {out}");
    }
}
