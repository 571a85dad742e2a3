//! `moat spec` and `moat features`, as runc prints them.
//!
//! `moat spec` writes runc's example `config.json` (a busybox-style `sh` on a terminal, a
//! read-only `rootfs`), or with `--rootless` the same converted the way runc converts it: a
//! user namespace mapping root to the caller, no network namespace, `/sys` bound from the
//! host instead of a new sysfs, no `uid=`/`gid=` mount options, no cgroup resources.
//!
//! `moat features` prints the runtime-spec "Features structure": what this runtime
//! recognizes, decided at build time. The lists name what the guest agent accepts: mount
//! options it reads itself (`agent/src/container/rootfs/options.rs`; filesystem data words
//! are not listed, as the spec says), the seccomp actions, operators and flags of
//! `agent/src/container/seccomp`. The tests check each list against the agent's code.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capability, LinuxCapabilities, LinuxDeviceCgroupBuilder, LinuxIdMappingBuilder,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxResourcesBuilder, Mount, MountBuilder,
    RootBuilder, Spec,
};
use serde::Serialize;

/// The oldest runtime-spec version moat accepts.
pub const OCI_VERSION_MIN: &str = "1.0.0";
/// The newest runtime-spec version moat knows; `moat spec` writes it.
pub const OCI_VERSION_MAX: &str = "1.2.0";

/// A failure of `moat spec`.
#[derive(Debug, thiserror::Error)]
pub enum SpecCmdError {
    /// `config.json` is already there (runc's message, word for word).
    #[error("File config.json exists. Remove it first")]
    Exists,
    /// The bundle directory is not usable.
    #[error("bundle {path}: {source}")]
    Bundle {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Writing `config.json` failed.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// runc's example spec, with moat's hostname: `sh` on a terminal as root, a read-only
/// `rootfs`, the default mounts, masked and read-only paths, and every device denied.
pub fn example_spec() -> Spec {
    let mut spec = Spec::default();
    spec.set_version(OCI_VERSION_MAX.to_string());
    spec.set_root(Some(
        RootBuilder::default()
            .path("rootfs")
            .readonly(true)
            .build()
            .expect("a root with a path"),
    ));
    let mut process = spec.process().clone().unwrap_or_default();
    process.set_terminal(Some(true));
    process.set_args(Some(vec!["sh".into()]));
    let caps = [
        Capability::AuditWrite,
        Capability::Kill,
        Capability::NetBindService,
    ]
    .into_iter()
    .collect::<std::collections::HashSet<_>>();
    let mut c = LinuxCapabilities::default();
    c.set_bounding(Some(caps.clone()))
        .set_permitted(Some(caps.clone()))
        .set_effective(Some(caps))
        .set_inheritable(None)
        .set_ambient(None);
    process.set_capabilities(Some(c));
    spec.set_process(Some(process));
    spec.set_hostname(Some("moat".into()));
    spec.set_annotations(None);
    let mut linux = spec.linux().clone().unwrap_or_default();
    let deny_all = LinuxDeviceCgroupBuilder::default()
        .allow(false)
        .access("rwm")
        .build()
        .expect("a device rule");
    linux.set_resources(Some(
        LinuxResourcesBuilder::default()
            .devices(vec![deny_all])
            .build()
            .expect("resources"),
    ));
    let mut masked = linux.masked_paths().clone().unwrap_or_default();
    if !masked.iter().any(|p| p == "/sys/devices/virtual/tpm") {
        masked.push("/sys/devices/virtual/tpm".into());
    }
    linux.set_masked_paths(Some(masked));
    spec.set_linux(Some(linux));
    spec
}

/// Converts a spec for a rootless container the way runc does: a user namespace mapping
/// container root to `uid`/`gid` (one ID each) instead of a network namespace, `/sys` bound
/// read-only from the host (a new sysfs needs a network namespace), no `uid=`/`gid=` mount
/// options, and no cgroup resources.
pub fn to_rootless(spec: &mut Spec, uid: u32, gid: u32) {
    let mut linux = spec.linux().clone().unwrap_or_default();
    let mut namespaces = linux.namespaces().clone().unwrap_or_default();
    namespaces.retain(|n| {
        !matches!(
            n.typ(),
            LinuxNamespaceType::Network | LinuxNamespaceType::User
        )
    });
    namespaces.push(
        LinuxNamespaceBuilder::default()
            .typ(LinuxNamespaceType::User)
            .build()
            .expect("a namespace"),
    );
    linux.set_namespaces(Some(namespaces));
    let map = |host: u32| {
        vec![LinuxIdMappingBuilder::default()
            .container_id(0u32)
            .host_id(host)
            .size(1u32)
            .build()
            .expect("a mapping")]
    };
    linux.set_uid_mappings(Some(map(uid)));
    linux.set_gid_mappings(Some(map(gid)));
    linux.set_resources(None);
    spec.set_linux(Some(linux));

    let mounts: Vec<Mount> = spec
        .mounts()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|mut m| {
            if Path::new(m.destination())
                .components()
                .eq(Path::new("/sys").components())
            {
                return MountBuilder::default()
                    .destination("/sys")
                    .typ("none")
                    .source("/sys")
                    .options(
                        ["rbind", "nosuid", "noexec", "nodev", "ro"]
                            .map(String::from)
                            .to_vec(),
                    )
                    .build()
                    .expect("a mount");
            }
            if let Some(opts) = m.options().clone() {
                let kept = opts
                    .into_iter()
                    .filter(|o| !o.starts_with("uid=") && !o.starts_with("gid="))
                    .collect();
                m.set_options(Some(kept));
            }
            m
        })
        .collect();
    spec.set_mounts(Some(mounts));
}

/// `moat spec [--bundle DIR] [--rootless]`: writes `DIR/config.json` (the current directory
/// without `--bundle`), refusing to overwrite one; `--rootless` maps root to the caller's
/// effective uid and gid.
pub fn write_spec(bundle: Option<&Path>, rootless: bool) -> Result<PathBuf, SpecCmdError> {
    let mut spec = example_spec();
    if rootless {
        to_rootless(
            &mut spec,
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        );
    }
    write_spec_to(bundle.unwrap_or(Path::new(".")), &spec)
}

/// Writes `spec` as `bundle/config.json`, tab-indented as runc writes it; never replaces an
/// existing file.
pub fn write_spec_to(bundle: &Path, spec: &Spec) -> Result<PathBuf, SpecCmdError> {
    use std::os::unix::fs::OpenOptionsExt;
    let bundle_err = |source| SpecCmdError::Bundle {
        path: bundle.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(bundle).map_err(bundle_err)?;
    if !meta.is_dir() {
        return Err(bundle_err(std::io::Error::from_raw_os_error(libc::ENOTDIR)));
    }
    let path = bundle.join("config.json");
    let write_err = |source| SpecCmdError::Write {
        path: path.clone(),
        source,
    };
    let mut f = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o666)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(SpecCmdError::Exists)
        }
        Err(e) => return Err(write_err(e)),
    };
    let text = String::from_utf8(to_json(spec, b"\t")).expect("JSON is UTF-8");
    f.write_all(sort_capability_lists(&text).as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(write_err)?;
    Ok(path)
}

/// Sorts each list inside `"capabilities": {...}` of a spec pretty-printed by [`to_json`]:
/// oci-spec keeps capability sets in hash sets, whose order changes from run to run, and a
/// file `moat spec` writes should be the same every time.
fn sort_capability_lists(json: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut lines = json.lines();
    let mut in_caps = false;
    while let Some(line) = lines.next() {
        out.push(line.to_string());
        let t = line.trim();
        if t == "\"capabilities\": {" {
            in_caps = true;
        } else if in_caps && t.starts_with('}') {
            in_caps = false;
        } else if in_caps && t.ends_with('[') {
            let mut items = Vec::new();
            let mut close = None;
            for l in lines.by_ref() {
                if l.trim_start().starts_with(']') {
                    close = Some(l);
                    break;
                }
                items.push(l.trim_end_matches(',').to_string());
            }
            items.sort();
            let last = items.len().saturating_sub(1);
            for (i, item) in items.into_iter().enumerate() {
                out.push(if i < last { format!("{item},") } else { item });
            }
            out.extend(close.map(str::to_string));
        }
    }
    out.join("\n")
}

fn to_json<T: Serialize>(v: &T, indent: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(indent);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    v.serialize(&mut ser).expect("serializing to memory");
    out
}

/// The runtime-spec Features structure as moat fills it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Features {
    /// [`OCI_VERSION_MIN`].
    pub oci_version_min: &'static str,
    /// [`OCI_VERSION_MAX`].
    pub oci_version_max: &'static str,
    /// The hooks run (host side: prestart, createRuntime, poststart, poststop; guest side:
    /// createContainer, startContainer).
    pub hooks: Vec<&'static str>,
    /// The mount options moat reads itself.
    pub mount_options: Vec<&'static str>,
    /// The Linux part.
    pub linux: LinuxFeatures,
    /// `io.github.moat.*`: the version and the backends.
    pub annotations: BTreeMap<&'static str, String>,
}

/// `linux` of the Features structure.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LinuxFeatures {
    /// Namespace types.
    pub namespaces: Vec<&'static str>,
    /// Capability names.
    pub capabilities: Vec<&'static str>,
    /// Cgroup managers.
    pub cgroup: CgroupFeatures,
    /// Seccomp.
    pub seccomp: SeccompFeatures,
    /// AppArmor (not supported).
    pub apparmor: Enabled,
    /// SELinux (not supported).
    pub selinux: Enabled,
    /// Intel RDT (not supported).
    pub intel_rdt: Enabled,
    /// Mount extensions.
    pub mount_extensions: MountExtensions,
}

/// `linux.cgroup`: the guest runs cgroup v2, with no systemd.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CgroupFeatures {
    /// cgroup v1.
    pub v1: bool,
    /// cgroup v2.
    pub v2: bool,
    /// The systemd cgroup manager.
    pub systemd: bool,
    /// The user systemd cgroup manager.
    pub systemd_user: bool,
    /// The rdma controller.
    pub rdma: bool,
}

/// `linux.seccomp` of the Features structure.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SeccompFeatures {
    /// Whether seccomp is supported.
    pub enabled: bool,
    /// [`SECCOMP_ACTIONS`].
    pub actions: Vec<&'static str>,
    /// [`SECCOMP_OPERATORS`].
    pub operators: Vec<&'static str>,
    /// Architectures.
    pub archs: Vec<&'static str>,
    /// Flags recognized.
    pub known_flags: Vec<&'static str>,
    /// Flags that take effect.
    pub supported_flags: Vec<&'static str>,
}

/// `{"enabled": ...}`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Enabled {
    /// Whether the feature is supported.
    pub enabled: bool,
}

/// `linux.mountExtensions`: ID-mapped mounts are refused.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct MountExtensions {
    /// `uidMappings`/`gidMappings` on mounts.
    pub idmap: Enabled,
}

/// Mount option words that set or clear a mount flag, or change propagation
/// (`agent/src/container/rootfs/options.rs`).
pub const MOUNT_OPTIONS: &[&str] = &[
    "async",
    "atime",
    "bind",
    "defaults",
    "dev",
    "diratime",
    "dirsync",
    "exec",
    "iversion",
    "lazytime",
    "loud",
    "mand",
    "noatime",
    "nodev",
    "nodiratime",
    "noexec",
    "noiversion",
    "nolazytime",
    "nomand",
    "norelatime",
    "nostrictatime",
    "nosuid",
    "nosymfollow",
    "private",
    "rbind",
    "relatime",
    "remount",
    "ro",
    "rprivate",
    "rshared",
    "rslave",
    "runbindable",
    "rw",
    "shared",
    "silent",
    "slave",
    "strictatime",
    "suid",
    "symfollow",
    "sync",
    "unbindable",
];

/// Every capability Linux defines (`include/uapi/linux/capability.h`), in number order.
pub const CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The seccomp actions the agent compiles (`SCMP_ACT_NOTIFY` is refused: no notification
/// agent in the guest).
pub const SECCOMP_ACTIONS: &[&str] = &[
    "SCMP_ACT_ALLOW",
    "SCMP_ACT_ERRNO",
    "SCMP_ACT_KILL",
    "SCMP_ACT_KILL_PROCESS",
    "SCMP_ACT_KILL_THREAD",
    "SCMP_ACT_LOG",
    "SCMP_ACT_TRACE",
    "SCMP_ACT_TRAP",
];

/// The seccomp argument operators the agent compiles.
pub const SECCOMP_OPERATORS: &[&str] = &[
    "SCMP_CMP_EQ",
    "SCMP_CMP_GE",
    "SCMP_CMP_GT",
    "SCMP_CMP_LE",
    "SCMP_CMP_LT",
    "SCMP_CMP_MASKED_EQ",
    "SCMP_CMP_NE",
];

/// What `moat features` reports.
pub fn features() -> Features {
    let seccomp = SeccompFeatures {
        enabled: true,
        actions: SECCOMP_ACTIONS.to_vec(),
        operators: SECCOMP_OPERATORS.to_vec(),
        archs: vec!["SCMP_ARCH_X86_64"],
        known_flags: vec![
            "SECCOMP_FILTER_FLAG_TSYNC",
            "SECCOMP_FILTER_FLAG_LOG",
            "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
            "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV",
        ],
        // WAIT_KILLABLE_RECV is accepted but only means something with SCMP_ACT_NOTIFY.
        supported_flags: vec![
            "SECCOMP_FILTER_FLAG_TSYNC",
            "SECCOMP_FILTER_FLAG_LOG",
            "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
        ],
    };
    let off = Enabled { enabled: false };
    Features {
        oci_version_min: OCI_VERSION_MIN,
        oci_version_max: OCI_VERSION_MAX,
        hooks: vec![
            "prestart",
            "createRuntime",
            "createContainer",
            "startContainer",
            "poststart",
            "poststop",
        ],
        mount_options: MOUNT_OPTIONS.to_vec(),
        linux: LinuxFeatures {
            namespaces: vec![
                "cgroup", "ipc", "mount", "network", "pid", "user", "uts", "time",
            ],
            capabilities: CAPABILITIES.to_vec(),
            cgroup: CgroupFeatures {
                v1: false,
                v2: true,
                systemd: false,
                systemd_user: false,
                rdma: true,
            },
            seccomp,
            apparmor: off,
            selinux: off,
            intel_rdt: off,
            mount_extensions: MountExtensions { idmap: off },
        },
        annotations: [
            (
                "io.github.moat.runtime",
                format!("moat {}", env!("CARGO_PKG_VERSION")),
            ),
            ("io.github.moat.backends", "qemu".to_string()),
        ]
        .into_iter()
        .collect(),
    }
}

/// `moat features`'s output: [`features`] as JSON, indented by four spaces as runc prints
/// it, with a final newline.
pub fn features_json() -> String {
    let mut out = String::from_utf8(to_json(&features(), b"    ")).expect("JSON is UTF-8");
    out.push('\n');
    out
}

#[cfg(test)]
mod tests;
