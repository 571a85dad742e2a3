//! Tests of [`super`]: the specs `moat spec` writes, and `moat features` checked against
//! the agent's own code.

use std::collections::HashSet;

use moat_agent::container::{rootfs, seccomp, spec_check};
use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompFilterFlag};

use super::*;

fn namespaces(s: &Spec) -> Vec<LinuxNamespaceType> {
    let linux = s.linux().as_ref().unwrap();
    linux
        .namespaces()
        .as_ref()
        .unwrap()
        .iter()
        .map(|n| n.typ())
        .collect()
}

fn mount<'a>(s: &'a Spec, dest: &str) -> &'a Mount {
    let mounts = s.mounts().as_ref().unwrap();
    mounts
        .iter()
        .find(|m| m.destination() == Path::new(dest))
        .unwrap()
}

/// The agent accepts the spec, and reads every mount option of it.
fn agent_accepts(s: &Spec) {
    spec_check::validate(s, &|_| true).unwrap();
    for m in s.mounts().as_ref().unwrap() {
        rootfs::parse_mount_options(m.options().as_deref().unwrap_or_default()).unwrap();
    }
}

#[test]
fn the_example_is_runcs() {
    let s = example_spec();
    assert_eq!(s.version(), OCI_VERSION_MAX);
    let p = s.process().as_ref().unwrap();
    assert_eq!(p.terminal(), Some(true));
    assert_eq!(p.args().as_deref(), Some(&["sh".to_string()][..]));
    let caps = p.capabilities().as_ref().unwrap();
    assert_eq!(caps.bounding().as_ref().unwrap().len(), 3);
    assert!(caps
        .effective()
        .as_ref()
        .unwrap()
        .contains(&Capability::Kill));
    assert!(caps.inheritable().is_none() && caps.ambient().is_none());
    let root = s.root().as_ref().unwrap();
    assert_eq!(
        (root.path().to_str(), root.readonly()),
        (Some("rootfs"), Some(true))
    );
    assert_eq!(s.hostname().as_deref(), Some("moat"));
    let ns = namespaces(&s);
    assert!(ns.contains(&LinuxNamespaceType::Network) && ns.contains(&LinuxNamespaceType::Cgroup));
    assert!(!ns.contains(&LinuxNamespaceType::User));
    let linux = s.linux().as_ref().unwrap();
    let devices = linux
        .resources()
        .as_ref()
        .unwrap()
        .devices()
        .clone()
        .unwrap();
    assert_eq!(
        (devices[0].allow(), devices[0].access().as_deref()),
        (false, Some("rwm"))
    );
    assert!(linux
        .masked_paths()
        .as_ref()
        .unwrap()
        .contains(&"/sys/devices/virtual/tpm".into()));
    assert_eq!(mount(&s, "/sys").typ().as_deref(), Some("sysfs"));
    assert!(mount(&s, "/dev/pts")
        .options()
        .as_ref()
        .unwrap()
        .contains(&"gid=5".into()));
    agent_accepts(&s);
}

#[test]
fn rootless_is_converted_like_runc() {
    let mut s = example_spec();
    to_rootless(&mut s, 1000, 1001);
    let ns = namespaces(&s);
    assert!(!ns.contains(&LinuxNamespaceType::Network));
    assert_eq!(
        ns.iter()
            .filter(|n| **n == LinuxNamespaceType::User)
            .count(),
        1
    );
    let linux = s.linux().as_ref().unwrap();
    let uid = linux.uid_mappings().as_ref().unwrap();
    let gid = linux.gid_mappings().as_ref().unwrap();
    assert_eq!(
        (uid[0].container_id(), uid[0].host_id(), uid[0].size()),
        (0, 1000, 1)
    );
    assert_eq!(
        (gid[0].container_id(), gid[0].host_id(), gid[0].size()),
        (0, 1001, 1)
    );
    assert!(linux.resources().is_none(), "no cgroup settings");
    let sys = mount(&s, "/sys");
    assert_eq!(sys.typ().as_deref(), Some("none"));
    assert_eq!(sys.source().as_deref(), Some(Path::new("/sys")));
    assert_eq!(sys.options().as_ref().unwrap()[0], "rbind");
    assert!(sys.options().as_ref().unwrap().contains(&"ro".into()));
    for m in s.mounts().as_ref().unwrap() {
        let opts = m.options().clone().unwrap_or_default();
        assert!(!opts
            .iter()
            .any(|o| o.starts_with("gid=") || o.starts_with("uid=")));
    }
    agent_accepts(&s);
    // Converting twice changes nothing more.
    let once = s.clone();
    to_rootless(&mut s, 1000, 1001);
    assert_eq!(s, once);
}

#[test]
fn writes_config_json_once() {
    let dir = std::env::temp_dir().join(format!("moat-spec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = write_spec(Some(&dir), true).unwrap();
    assert_eq!(path, dir.join("config.json"));
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("{\n\t\"ociVersion\": \"1.2.0\""), "{text}");
    assert!(
        text.contains("\"bounding\": [\n\t\t\t\t\"CAP_AUDIT_WRITE\",\n\t\t\t\t\"CAP_KILL\",\n"),
        "sorted: {text}"
    );
    let back: Spec = serde_json::from_str(&text).unwrap();
    assert!(namespaces(&back).contains(&LinuxNamespaceType::User));
    let uid = nix::unistd::geteuid().as_raw();
    let linux = back.linux().as_ref().unwrap();
    assert_eq!(linux.uid_mappings().as_ref().unwrap()[0].host_id(), uid);

    let e = write_spec_to(&dir, &example_spec()).unwrap_err();
    assert_eq!(e.to_string(), "File config.json exists. Remove it first");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text, "left alone");

    let e = write_spec_to(&dir.join("missing"), &example_spec()).unwrap_err();
    assert!(matches!(e, SpecCmdError::Bundle { .. }), "{e}");
    let e = write_spec_to(&path, &example_spec()).unwrap_err();
    assert!(e.to_string().contains("Not a directory"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn features_have_the_runtime_spec_shape() {
    let json = features_json();
    assert!(
        json.starts_with("{\n    \"ociVersionMin\": \"1.0.0\",\n"),
        "{json}"
    );
    assert!(json.ends_with("}\n"));
    let f: oci_spec::runtime::Features = serde_json::from_str(&json).unwrap();
    assert_eq!(f.oci_version_max(), OCI_VERSION_MAX);
    assert_eq!(f.hooks().as_ref().unwrap().len(), 6);
    let linux = f.linux().as_ref().unwrap();
    assert_eq!(linux.namespaces().as_ref().unwrap().len(), 8);
    let cg = linux.cgroup().as_ref().unwrap();
    assert_eq!(
        (*cg.v1(), *cg.v2(), *cg.systemd()),
        (Some(false), Some(true), Some(false))
    );
    let sc = linux.seccomp().as_ref().unwrap();
    assert_eq!(sc.enabled(), &Some(true));
    assert_eq!(sc.actions().as_ref().unwrap().len(), SECCOMP_ACTIONS.len());
    assert_eq!(linux.apparmor().as_ref().unwrap().enabled(), &Some(false));
    assert_eq!(linux.intel_rdt().as_ref().unwrap().enabled(), &Some(false));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["linux"]["mountExtensions"]["idmap"]["enabled"], false);
    assert_eq!(v["linux"]["cgroup"]["systemdUser"], false);
    let ann = f.annotations().as_ref().unwrap();
    assert_eq!(
        ann["io.github.moat.runtime"],
        format!("moat {}", env!("CARGO_PKG_VERSION"))
    );
    assert!(!json.contains("null"), "absent, not null: {json}");
}

#[test]
fn mount_options_are_the_ones_the_agent_reads() {
    let mut seen = HashSet::new();
    for word in MOUNT_OPTIONS {
        assert!(seen.insert(word), "{word} twice");
        let o = rootfs::parse_mount_options(&[word.to_string()]).unwrap();
        assert!(
            o.data.is_empty(),
            "{word} would be passed to the filesystem"
        );
    }
    for refused in ["rro", "rnosuid", "idmap", "ridmap", "tmpcopyup"] {
        assert!(!MOUNT_OPTIONS.contains(&refused));
        assert!(rootfs::parse_mount_options(&[refused.to_string()]).is_err());
    }
    let mut sorted = MOUNT_OPTIONS.to_vec();
    sorted.sort_unstable();
    assert_eq!(sorted, MOUNT_OPTIONS, "kept sorted");
}

#[test]
fn capabilities_are_every_known_one() {
    let mut seen = HashSet::new();
    for name in CAPABILITIES {
        let c: Capability = serde_json::from_value(serde_json::json!(name)).unwrap();
        assert!(seen.insert(c), "{name} twice");
    }
    assert_eq!(
        seen.len(),
        41,
        "CAP_CHOWN (0) to CAP_CHECKPOINT_RESTORE (40)"
    );
}

fn compile(profile: serde_json::Value) -> Result<(), String> {
    let p: LinuxSeccomp = serde_json::from_value(profile).map_err(|e| e.to_string())?;
    seccomp::compile(&p).map(|_| ()).map_err(|e| e.to_string())
}

#[test]
fn seccomp_lists_are_what_the_agent_compiles() {
    for action in SECCOMP_ACTIONS {
        let rule = serde_json::json!({"names": ["getpid"], "action": action});
        compile(serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [rule]}))
            .unwrap_or_else(|e| panic!("{action}: {e}"));
        compile(serde_json::json!({"defaultAction": action, "syscalls": []}))
            .unwrap_or_else(|e| panic!("{action} as default: {e}"));
    }
    let notify = serde_json::json!({"names": ["getpid"], "action": "SCMP_ACT_NOTIFY"});
    assert!(
        compile(serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [notify]}))
            .is_err()
    );
    for op in SECCOMP_OPERATORS {
        let rule = serde_json::json!({"names": ["personality"], "action": "SCMP_ACT_ERRNO",
            "args": [{"index": 0, "value": 8, "valueTwo": 8, "op": op}]});
        compile(serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [rule]}))
            .unwrap_or_else(|e| panic!("{op}: {e}"));
    }
    let f = features();
    for arch in &f.linux.seccomp.archs {
        compile(serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "architectures": [arch]}))
            .unwrap();
    }
    assert!(
        compile(serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_AARCH64"]}))
        .is_err()
    );
    for flag in &f.linux.seccomp.known_flags {
        let fl: LinuxSeccompFilterFlag = serde_json::from_value(serde_json::json!(flag)).unwrap();
        let p: LinuxSeccomp = serde_json::from_value(
            serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "flags": [flag]}),
        )
        .unwrap();
        let compiled = seccomp::compile(&p).unwrap();
        let supported = f.linux.seccomp.supported_flags.contains(flag);
        assert_eq!(compiled.ignored_flags.is_empty(), supported, "{fl:?}");
    }
}

#[test]
fn capability_lists_are_sorted_and_nothing_else() {
    let json = "{\n\t\"capabilities\": {\n\t\t\"bounding\": [\n\t\t\t\"CAP_KILL\",\n\t\t\t\
                \"CAP_AUDIT_WRITE\"\n\t\t],\n\t\t\"ambient\": []\n\t},\n\t\"rlimits\": [\n\t\t\"b\",\n\t\t\"a\"\n\t]\n}";
    let sorted = sort_capability_lists(json);
    let v: serde_json::Value = serde_json::from_str(&sorted).unwrap();
    assert_eq!(
        v["capabilities"]["bounding"],
        serde_json::json!(["CAP_AUDIT_WRITE", "CAP_KILL"])
    );
    assert_eq!(v["capabilities"]["ambient"], serde_json::json!([]));
    assert_eq!(
        v["rlimits"],
        serde_json::json!(["b", "a"]),
        "outside capabilities: as is"
    );
    assert_eq!(sort_capability_lists(&sorted), sorted);
}
