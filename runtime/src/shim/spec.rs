//! Pods and specs: which VM a container belongs to (the CRI annotations), the namespaces it
//! gets inside the guest, and the shim's own settings (the runtime options containerd passes).

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType, Spec};
use serde::Deserialize;

/// The CRI annotation naming a container's role: `sandbox` or `container`.
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// The CRI annotation naming a container's pod sandbox.
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// A spec or option the shim cannot use; the message names the field.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// A namespace the guest cannot join.
    #[error("linux.namespaces[{index}]: joining a {typ} namespace by path is not supported in a moat pod")]
    Namespace {
        /// Index in `linux.namespaces`.
        index: usize,
        /// Its type.
        typ: LinuxNamespaceType,
    },
    /// The runtime options are of a type moat does not take.
    #[error("runtime options: {0}")]
    Options(String),
    /// The shim's config file is unreadable or invalid.
    #[error("runtime options: config_path {path}: {why}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// Where a container runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// It boots the VM: a pod's sandbox container, or a container outside any pod.
    Owner,
    /// It joins the VM of pod sandbox `sandbox_id`.
    Member {
        /// The pod sandbox's container id.
        sandbox_id: String,
    },
}

/// The role a spec's annotations give it.
pub fn role(spec: &Spec) -> Role {
    let ann = spec.annotations().as_ref();
    let get = |k: &str| ann.and_then(|a| a.get(k)).filter(|v| !v.is_empty());
    match (get(CONTAINER_TYPE).map(String::as_str), get(SANDBOX_ID)) {
        (Some("container"), Some(sb)) => Role::Member {
            sandbox_id: sb.clone(),
        },
        _ => Role::Owner,
    }
}

/// The key that picks a container's shim: its pod sandbox's id, else its own id.
pub fn grouping(id: &str, spec: Option<&Spec>) -> String {
    match spec.map(role) {
        Some(Role::Member { sandbox_id }) => sandbox_id,
        _ => id.to_string(),
    }
}

/// The namespaces a pod shares: a member joins the sandbox's by path.
const POD_SHARED: [LinuxNamespaceType; 4] = [
    LinuxNamespaceType::Network,
    LinuxNamespaceType::Ipc,
    LinuxNamespaceType::Uts,
    LinuxNamespaceType::Pid,
];

fn ns_file(t: LinuxNamespaceType) -> &'static str {
    match t {
        LinuxNamespaceType::Network => "net",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Mount => "mnt",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Cgroup => "cgroup",
        LinuxNamespaceType::Time => "time",
    }
}

/// Rewrites `linux.namespaces` for the guest. Paths in the spec are host paths (a CNI network
/// namespace, `/proc/<task pid>/ns/...` of the sandbox task); in the guest an owner gets new
/// namespaces instead, and a member joins those of the owner's init (`owner_pid`, a guest
/// pid). Other namespaces given by path cannot be joined in the guest.
pub fn guest_namespaces(spec: &Spec, owner_pid: Option<u32>) -> Result<Spec, SpecError> {
    let mut spec = spec.clone();
    let Some(mut linux) = spec.linux().clone() else {
        return Ok(spec);
    };
    let Some(nss) = linux.namespaces().clone() else {
        return Ok(spec);
    };
    let mut out = Vec::with_capacity(nss.len());
    for (index, ns) in nss.into_iter().enumerate() {
        let typ = ns.typ();
        if ns.path().is_none() {
            out.push(ns);
            continue;
        }
        if !POD_SHARED.contains(&typ) {
            return Err(SpecError::Namespace { index, typ });
        }
        let mut new = LinuxNamespace::default();
        new.set_typ(typ);
        if let Some(pid) = owner_pid {
            new.set_path(Some(PathBuf::from(format!(
                "/proc/{pid}/ns/{}",
                ns_file(typ)
            ))));
        }
        out.push(new);
    }
    linux.set_namespaces(Some(out));
    spec.set_linux(Some(linux));
    Ok(spec)
}

/// The shim's settings, from the JSON file named by the runtime options' `ConfigPath`
/// (containerd: `[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.moat.options]
/// ConfigPath = "..."`; ctr: `--runtime-config-path`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShimConfig {
    /// Guest memory in MiB (default: moat's configuration and the sandbox's spec, as
    /// [`crate::config::Config::vm_size`] decides).
    pub memory_mib: Option<u32>,
    /// Guest vCPUs (default: as for `memory_mib`).
    pub vcpus: Option<u32>,
}

impl ShimConfig {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Self, SpecError> {
        let err = |why: String| SpecError::Config {
            path: path.to_path_buf(),
            why,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let c: ShimConfig = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
        if c.memory_mib.is_some_and(|m| !(64..=1 << 20).contains(&m)) {
            return Err(err("memory_mib: must be between 64 and 1048576".into()));
        }
        if c.vcpus.is_some_and(|v| !(1..=255).contains(&v)) {
            return Err(err("vcpus: must be between 1 and 255".into()));
        }
        Ok(c)
    }
}

/// containerd's CRI `runtimeoptions.v1.Options` (and ctr's `--runtime-config-path`).
const RUNTIME_OPTIONS: &str = "runtimeoptions.v1.Options";

/// The config file named by the task's runtime options, if any. Options of another type
/// (runc's, for one) are refused, so that a misconfigured runtime fails loudly.
pub fn config_path(type_url: &str, value: &[u8]) -> Result<Option<PathBuf>, SpecError> {
    let name = type_url.rsplit('/').next().unwrap_or_default();
    if type_url.is_empty() && value.is_empty() {
        return Ok(None);
    }
    if name != RUNTIME_OPTIONS {
        return Err(SpecError::Options(format!(
            "moat takes options of type {RUNTIME_OPTIONS} (ConfigPath), not {type_url:?}"
        )));
    }
    let path = decode_config_path(value)
        .map_err(|e| SpecError::Options(format!("decoding {RUNTIME_OPTIONS}: {e}")))?;
    Ok(path.filter(|p| !p.is_empty()).map(PathBuf::from))
}

/// Field 2 (`config_path`) of `runtimeoptions.v1.Options`.
fn decode_config_path(value: &[u8]) -> containerd_shim::protos::protobuf::Result<Option<String>> {
    use containerd_shim::protos::protobuf::rt::WireType;
    use containerd_shim::protos::protobuf::CodedInputStream;
    let mut is = CodedInputStream::from_bytes(value);
    let mut path = None;
    while let Some(tag) = is.read_raw_tag_or_eof()? {
        let (field, wire) = (tag >> 3, tag & 7);
        let wire = WireType::new(wire).ok_or_else(|| {
            containerd_shim::protos::protobuf::Error::from(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("bad wire type {wire}"),
            ))
        })?;
        if field == 2 && wire == WireType::LengthDelimited {
            path = Some(is.read_string()?);
        } else {
            is.skip_field(wire)?;
        }
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::LinuxNamespaceBuilder;

    fn spec_with(ann: &[(&str, &str)], nss: Vec<LinuxNamespace>) -> Spec {
        let mut s = Spec::default();
        s.set_annotations(Some(
            ann.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ));
        let mut l = s.linux().clone().unwrap();
        l.set_namespaces(Some(nss));
        s.set_linux(Some(l));
        s
    }

    fn ns(t: LinuxNamespaceType, path: Option<&str>) -> LinuxNamespace {
        let mut b = LinuxNamespaceBuilder::default().typ(t);
        if let Some(p) = path {
            b = b.path(p);
        }
        b.build().unwrap()
    }

    #[test]
    fn cri_annotations_group_a_pod() {
        let sb = spec_with(&[(CONTAINER_TYPE, "sandbox"), (SANDBOX_ID, "pod1")], vec![]);
        assert_eq!(role(&sb), Role::Owner);
        assert_eq!(grouping("pod1", Some(&sb)), "pod1");
        let c = spec_with(
            &[(CONTAINER_TYPE, "container"), (SANDBOX_ID, "pod1")],
            vec![],
        );
        assert_eq!(
            role(&c),
            Role::Member {
                sandbox_id: "pod1".into()
            }
        );
        assert_eq!(grouping("c1", Some(&c)), "pod1");
        assert_eq!(grouping("solo", Some(&Spec::default())), "solo");
        assert_eq!(grouping("solo", None), "solo");
    }

    #[test]
    fn host_namespace_paths_become_the_pods_guest_namespaces() {
        let s = spec_with(
            &[],
            vec![
                ns(LinuxNamespaceType::Mount, None),
                ns(LinuxNamespaceType::Network, Some("/proc/77/ns/net")),
                ns(LinuxNamespaceType::Ipc, Some("/proc/77/ns/ipc")),
                ns(LinuxNamespaceType::Uts, Some("/proc/77/ns/uts")),
                ns(LinuxNamespaceType::Pid, None),
            ],
        );
        let owner = guest_namespaces(&s, None).unwrap();
        let got = owner
            .linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .clone()
            .unwrap();
        assert!(got.iter().all(|n| n.path().is_none()), "{got:?}");
        assert_eq!(got.len(), 5);
        let member = guest_namespaces(&s, Some(9)).unwrap();
        let got = member
            .linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .clone()
            .unwrap();
        let path = |t| {
            got.iter()
                .find(|n| n.typ() == t)
                .and_then(|n| n.path().clone())
        };
        assert_eq!(
            path(LinuxNamespaceType::Network),
            Some("/proc/9/ns/net".into())
        );
        assert_eq!(path(LinuxNamespaceType::Uts), Some("/proc/9/ns/uts".into()));
        assert_eq!(
            path(LinuxNamespaceType::Pid),
            None,
            "own pid namespace kept"
        );
        let bad = spec_with(&[], vec![ns(LinuxNamespaceType::User, Some("/x"))]);
        let e = guest_namespaces(&bad, Some(9)).unwrap_err().to_string();
        assert!(e.starts_with("linux.namespaces[0]"), "{e}");
    }

    #[test]
    fn options_name_a_config_file_or_fail() {
        assert_eq!(config_path("", &[]).unwrap(), None);
        // runtimeoptions.v1.Options { type_url: "x", config_path: "/etc/moat.json" }
        let mut v = vec![0x0a, 1, b'x', 0x12, 14];
        v.extend_from_slice(b"/etc/moat.json");
        assert_eq!(
            config_path("runtimeoptions.v1.Options", &v).unwrap(),
            Some(PathBuf::from("/etc/moat.json"))
        );
        let e = config_path("containerd.runc.v1.Options", &[0x0a, 1, b'r'])
            .unwrap_err()
            .to_string();
        assert!(e.contains("not \"containerd.runc.v1.Options\""), "{e}");
        assert!(config_path("runtimeoptions.v1.Options", &[0x12, 50]).is_err());
    }

    #[test]
    fn config_files_are_checked() {
        let d = crate::boot::TempDir::new("shimcfg").unwrap();
        let p = d.0.join("c.json");
        std::fs::write(&p, r#"{"memory_mib": 128}"#).unwrap();
        assert_eq!(ShimConfig::load(&p).unwrap().memory_mib, Some(128));
        std::fs::write(&p, r#"{"memory": 128}"#).unwrap();
        assert!(ShimConfig::load(&p)
            .unwrap_err()
            .to_string()
            .contains("memory"));
        std::fs::write(&p, r#"{"vcpus": 0}"#).unwrap();
        assert!(ShimConfig::load(&p).is_err());
        assert!(ShimConfig::load(&d.0.join("missing.json")).is_err());
    }
}
