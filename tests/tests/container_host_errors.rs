//! Host-integration tier, the failures: every malformed spec makes `moat-agent run` exit 1
//! with a message naming the spec field at fault, and leaves no process and no mount
//! behind (processes whose command line mentions the bundle; this process's mount table
//! before and after).

use std::sync::{Mutex, MutexGuard};

use moat_tests::bundle::Bundle;
use moat_tests::host::{mount_table, processes_mentioning, run_agent};
use serde_json::{json, Value};

fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs a bundle whose spec `edit` broke; expects exit 1, `field` in stderr, and nothing
/// left behind. The process would run `sleep` with the bundle path in its arguments, so
/// that one that got as far as running shows up as a leftover.
fn assert_rejected(tag: &str, field: &str, edit: impl FnOnce(&mut Value, &Bundle)) {
    let _g = serial();
    let mut b = Bundle::new(tag).expect("creating the bundle");
    let marker = b.path().to_string_lossy().into_owned();
    b.args(&["/bin/sh", "-c", &format!("sleep 30; : {marker}")]);
    let mounts_before = mount_table();
    b.write_with(|v| edit(v, &b)).expect("writing config.json");
    let out = run_agent(&b);
    println!("{}", out.stderr.trim_end());
    let left = processes_mentioning(&marker);
    let new_mounts: Vec<_> = mount_table().difference(&mounts_before).cloned().collect();
    assert_eq!(out.code, 1, "{out}");
    let line = out
        .stderr
        .lines()
        .find(|l| l.starts_with("moat-agent run: "))
        .unwrap_or_else(|| panic!("no `moat-agent run: ` error line:\n{out}"));
    assert!(
        line.contains(field),
        "the error does not name {field:?}:\n{out}"
    );
    assert!(left.is_empty(), "processes left behind: {left:?}");
    assert!(new_mounts.is_empty(), "mounts left behind: {new_mounts:#?}");
}

fn mount(v: &mut Value, m: Value) {
    v["mounts"].as_array_mut().expect("mounts").push(m);
}

/// The index of a mount pushed onto the default spec's list.
fn next_mount() -> usize {
    oci_spec::runtime::Spec::default()
        .mounts()
        .as_ref()
        .map_or(0, Vec::len)
}

#[test]
#[ignore = "host-integration tier: needs root and busybox-static; run by scripts/test.sh"]
fn bad_mount_type() {
    let field = format!("mounts[{}].type", next_mount());
    assert_rejected("mount-type", &field, |v, _| {
        mount(
            v,
            json!({"destination": "/mnt", "type": "nosuchfs", "source": "none"}),
        );
    });
}

#[test]
#[ignore = "host-integration tier: needs root and busybox-static; run by scripts/test.sh"]
fn relative_mount_destination() {
    let field = format!("mounts[{}].destination", next_mount());
    assert_rejected("rel-mount", &field, |v, _| {
        mount(
            v,
            json!({"destination": "mnt", "type": "tmpfs", "source": "tmpfs"}),
        );
    });
}

#[test]
#[ignore = "host-integration tier: needs root and busybox-static; run by scripts/test.sh"]
fn unknown_mount_option() {
    // Words that are not flags go to the filesystem as data (as with runc); tmpfs refuses.
    let field = format!("mounts[{}]", next_mount());
    assert_rejected("mount-opt", &field, |v, _| {
        mount(
            v,
            json!({"destination": "/mnt", "type": "tmpfs", "source": "tmpfs",
                   "options": ["nosuid", "fly"]}),
        );
    });
}

#[test]
#[ignore = "host-integration tier: needs root and busybox-static; run by scripts/test.sh"]
fn bind_mount_of_a_missing_source() {
    // Found only while the container's mounts are made: after namespaces and some mounts.
    let field = format!("mounts[{}]", next_mount());
    assert_rejected("bind-missing", &field, |v, b| {
        let src = b.path().join("no-such-dir").to_string_lossy().into_owned();
        mount(
            v,
            json!({"destination": "/mnt", "type": "bind", "source": src,
                        "options": ["rbind"]}),
        );
    });
}

#[test]
#[ignore = "host-integration tier: needs root and busybox-static; run by scripts/test.sh"]
fn unknown_capability() {
    assert_rejected("cap", "process.capabilities.bounding[1]", |v, _| {
        v["process"]["capabilities"]["bounding"] = json!(["CAP_CHOWN", "CAP_FLY"]);
    });
}

#[test]
#[ignore = "host-integration tier: needs root and busybox-static; run by scripts/test.sh"]
fn invalid_seccomp_action() {
    assert_rejected(
        "seccomp-action",
        "linux.seccomp.syscalls[0].action",
        |v, _| {
            v["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_FLY"}]});
        },
    );
}

#[test]
#[ignore = "host-integration tier: needs root and busybox-static; run by scripts/test.sh"]
fn invalid_seccomp_default_action() {
    assert_rejected("seccomp-default", "linux.seccomp.defaultAction", |v, _| {
        v["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_MAYBE", "syscalls": []});
    });
}

#[test]
#[ignore = "host-integration tier: needs root and busybox-static; run by scripts/test.sh"]
fn invalid_seccomp_operator() {
    assert_rejected(
        "seccomp-op",
        "linux.seccomp.syscalls[0].args[0].op",
        |v, _| {
            v["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["dup"], "action": "SCMP_ACT_ERRNO",
                          "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_SOMETIMES"}]}]});
        },
    );
}

#[test]
#[ignore = "host-integration tier: needs root and busybox-static; run by scripts/test.sh"]
fn seccomp_argument_index_out_of_range() {
    assert_rejected(
        "seccomp-index",
        "linux.seccomp.syscalls[0].args[0]",
        |v, _| {
            v["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["dup"], "action": "SCMP_ACT_ERRNO",
                          "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]});
        },
    );
}

#[test]
#[ignore = "host-integration tier: needs root and busybox-static; run by scripts/test.sh"]
fn uid_map_without_user_namespace() {
    assert_rejected("uidmap", "linux.uidMappings", |v, _| {
        v["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 1}]);
    });
}

#[test]
#[ignore = "host-integration tier: needs root and busybox-static; run by scripts/test.sh"]
fn missing_rootfs() {
    assert_rejected("rootfs", "root.path", |v, _| {
        v["root"]["path"] = json!("no-such-rootfs");
    });
}

#[test]
#[ignore = "host-integration tier: needs root and busybox-static; run by scripts/test.sh"]
fn relative_cwd() {
    assert_rejected("cwd", "process.cwd", |v, _| {
        v["process"]["cwd"] = json!("work")
    });
}

#[test]
#[ignore = "host-integration tier: needs root and busybox-static; run by scripts/test.sh"]
fn empty_args() {
    assert_rejected("args", "process.args", |v, _| {
        v["process"]["args"] = json!([])
    });
}

#[test]
#[ignore = "host-integration tier: needs root and busybox-static; run by scripts/test.sh"]
fn missing_executable() {
    assert_rejected("exe", "process.args", |v, _| {
        v["process"]["args"] = json!(["/bin/no-such-program"]);
    });
}

#[test]
#[ignore = "host-integration tier: needs root and busybox-static; run by scripts/test.sh"]
fn unknown_rlimit() {
    assert_rejected("rlimit", "process.rlimits[0].type", |v, _| {
        v["process"]["rlimits"] = json!([{"type": "RLIMIT_FLY", "soft": 1, "hard": 1}]);
    });
}

#[test]
#[ignore = "host-integration tier: needs root and busybox-static; run by scripts/test.sh"]
fn rlimit_soft_above_hard() {
    assert_rejected("rlimit-order", "process.rlimits[0]", |v, _| {
        v["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "soft": 10, "hard": 5}]);
    });
}

#[test]
#[ignore = "host-integration tier: needs root and busybox-static; run by scripts/test.sh"]
fn oom_score_adj_out_of_range() {
    assert_rejected("oom", "process.oomScoreAdj", |v, _| {
        v["process"]["oomScoreAdj"] = json!(5000);
    });
}

#[test]
#[ignore = "host-integration tier: needs root and busybox-static; run by scripts/test.sh"]
fn namespace_path_that_does_not_exist() {
    assert_rejected("nspath", "linux.namespaces[1].path", |v, _| {
        v["linux"]["namespaces"][1]["path"] = json!("/proc/no-such-pid/ns/net");
    });
}

#[test]
#[ignore = "host-integration tier: needs root and busybox-static; run by scripts/test.sh"]
fn unknown_namespace_type() {
    assert_rejected("nstype", "linux.namespaces[0].type", |v, _| {
        v["linux"]["namespaces"][0]["type"] = json!("galaxy");
    });
}

#[test]
#[ignore = "host-integration tier: needs root and busybox-static; run by scripts/test.sh"]
fn sysctl_outside_the_containers_namespaces() {
    assert_rejected("sysctl", "linux.sysctl", |v, _| {
        v["linux"]["sysctl"] = json!({"kernel.panic": "1"});
    });
}

#[test]
#[ignore = "host-integration tier: needs root and busybox-static; run by scripts/test.sh"]
fn hostname_without_uts_namespace() {
    assert_rejected("hostname", "hostname", |v, _| {
        let ns = v["linux"]["namespaces"].as_array_mut().expect("namespaces");
        ns.retain(|n| n["type"] != "uts");
    });
}

#[test]
#[ignore = "host-integration tier: needs root and busybox-static; run by scripts/test.sh"]
fn device_with_a_relative_path() {
    assert_rejected("device", "linux.devices[0].path", |v, _| {
        v["linux"]["devices"] = json!([{"path": "dev/x", "type": "c", "major": 1, "minor": 3}]);
    });
}

#[test]
#[ignore = "host-integration tier: needs root and busybox-static; run by scripts/test.sh"]
fn failing_create_container_hook() {
    assert_rejected("hook", "createContainer", |v, _| {
        v["hooks"] = json!({"createContainer": [{"path": "/bin/false", "args": ["false"]}]});
    });
}

#[test]
#[ignore = "host-integration tier: needs root and busybox-static; run by scripts/test.sh"]
fn config_json_that_is_not_json() {
    assert_rejected("json", "config.json", |v, _| *v = json!("not a spec"));
}
