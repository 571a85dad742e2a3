//! Checks of the spec's filesystem fields that need nothing but the spec and the kernel's
//! filesystem list, so that a bad spec fails before anything is created.

use std::collections::HashSet;
use std::path::Path;

use nix::mount::MsFlags;
use oci_spec::runtime::{LinuxDeviceType, Mount, Spec};

use super::options::{parse_mount_options, parse_propagation, MountOptions};
use super::securejoin::clean;
use super::RootfsError;

/// How one entry of `mounts` is carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MountKind {
    /// A bind mount: `bind`/`rbind` in the options, or type `bind`.
    Bind,
    /// A cgroup mount: type `cgroup2`, or type `cgroup` (v1), which becomes cgroup2 here.
    Cgroup {
        /// The spec asked for cgroup v1; its data (controller names) is dropped.
        v1: bool,
    },
    /// Any other filesystem, by its type.
    Fs(String),
}

/// One mount of the spec, read and checked.
#[derive(Debug, Clone)]
pub(crate) struct PlannedMount {
    /// What to mount.
    pub kind: MountKind,
    /// The options, read with runc's table.
    pub opts: MountOptions,
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> RootfsError {
    RootfsError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Reads and checks `mounts[i]` (see [`validate_mounts`]).
pub(crate) fn plan_mount(
    i: usize,
    m: &Mount,
    fs_known: &dyn Fn(&str) -> bool,
) -> Result<PlannedMount, RootfsError> {
    check_abs(&format!("mounts[{i}].destination"), m.destination())?;
    if m.uid_mappings().is_some() || m.gid_mappings().is_some() {
        return Err(invalid(
            format!("mounts[{i}].uidMappings"),
            "ID-mapped mounts are not supported",
        ));
    }
    let words = m.options().as_deref().unwrap_or(&[]);
    let mut opts = parse_mount_options(words)
        .map_err(|(j, reason)| invalid(format!("mounts[{i}].options[{j}]"), reason))?;
    let typ = m.typ().as_deref().unwrap_or("");
    if typ == "bind" && !opts.is_bind() {
        // runc takes type "bind" as a (non-recursive) bind mount.
        opts.flags |= MsFlags::MS_BIND;
    }
    if opts.is_bind() {
        let has_source = m
            .source()
            .as_ref()
            .is_some_and(|s| !s.as_os_str().is_empty());
        if !has_source {
            return Err(invalid(
                format!("mounts[{i}].source"),
                "a bind mount needs a source",
            ));
        }
        if let Some((j, word)) = opts.data.first() {
            // The kernel ignores data on a bind mount: a leftover word is a mistake.
            return Err(invalid(
                format!("mounts[{i}].options[{j}]"),
                format!("unknown mount option {word:?}"),
            ));
        }
        return Ok(PlannedMount {
            kind: MountKind::Bind,
            opts,
        });
    }
    let kind = match typ {
        "" | "none" | "bind" => {
            return Err(invalid(
                format!("mounts[{i}].type"),
                "missing filesystem type (and no \"bind\" or \"rbind\" option)",
            ))
        }
        "cgroup" | "cgroup2" => {
            if !fs_known("cgroup2") {
                return Err(invalid(
                    format!("mounts[{i}].type"),
                    "the kernel has no cgroup2 filesystem",
                ));
            }
            MountKind::Cgroup {
                v1: typ == "cgroup",
            }
        }
        other => {
            // "fuse.sshfs" is the kernel's "fuse".
            let base = other.split('.').next().unwrap_or(other);
            if !fs_known(base) {
                return Err(invalid(
                    format!("mounts[{i}].type"),
                    format!("unknown filesystem type {other:?}"),
                ));
            }
            MountKind::Fs(other.to_string())
        }
    };
    Ok(PlannedMount { kind, opts })
}

fn check_abs(field: &str, p: &Path) -> Result<(), RootfsError> {
    if !p.is_absolute() {
        return Err(invalid(field, format!("{p:?} is not an absolute path")));
    }
    if clean(p).is_none() {
        return Err(invalid(field, format!("{p:?} leaves the container's root")));
    }
    Ok(())
}

/// Reads `linux.rootfsPropagation`; `None` when it is unset or empty.
pub(crate) fn root_propagation(spec: &Spec) -> Result<Option<MsFlags>, RootfsError> {
    let word = spec
        .linux()
        .as_ref()
        .and_then(|l| l.rootfs_propagation().as_deref())
        .unwrap_or("");
    if word.is_empty() {
        return Ok(None);
    }
    parse_propagation(word).map(Some).ok_or_else(|| {
        invalid(
            "linux.rootfsPropagation",
            format!("unknown propagation {word:?}"),
        )
    })
}

/// Checks the spec's filesystem fields before anything is created: every mount has an
/// absolute destination that `..` does not take out of the root, a type the kernel knows
/// (`fs_known`; bind mounts need no type, and type `cgroup` needs `cgroup2`), options that
/// parse, and a source if it is a bind mount; `linux.rootfsPropagation` is a propagation
/// word; `linux.maskedPaths`, `linux.readonlyPaths` and `linux.devices[].path` are absolute;
/// device types are `c`, `b`, `u` or `p` with non-negative numbers.
pub fn validate_mounts(spec: &Spec, fs_known: &dyn Fn(&str) -> bool) -> Result<(), RootfsError> {
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        plan_mount(i, m, fs_known)?;
    }
    root_propagation(spec)?;
    let Some(linux) = spec.linux() else {
        return Ok(());
    };
    for (name, paths) in [
        ("maskedPaths", linux.masked_paths()),
        ("readonlyPaths", linux.readonly_paths()),
    ] {
        for (i, p) in paths.iter().flatten().enumerate() {
            check_abs(&format!("linux.{name}[{i}]"), Path::new(p))?;
        }
    }
    for (i, d) in linux.devices().iter().flatten().enumerate() {
        check_abs(&format!("linux.devices[{i}].path"), d.path())?;
        if clean(d.path()).is_some_and(|p| p == Path::new("/")) {
            return Err(invalid(
                format!("linux.devices[{i}].path"),
                "a device cannot be the root",
            ));
        }
        if d.typ() == LinuxDeviceType::A {
            return Err(invalid(
                format!("linux.devices[{i}].type"),
                "\"a\" is not a device node type (use c, b, u or p)",
            ));
        }
        if d.major() < 0 || d.minor() < 0 {
            return Err(invalid(
                format!("linux.devices[{i}]"),
                "major and minor must not be negative",
            ));
        }
    }
    Ok(())
}

/// The filesystem types the running kernel knows, from `/proc/filesystems`; empty if that
/// cannot be read (then every typed mount fails validation, naming its type).
pub fn kernel_filesystems() -> HashSet<String> {
    std::fs::read_to_string("/proc/filesystems")
        .map(|t| parse_filesystems(&t))
        .unwrap_or_default()
}

/// Reads `/proc/filesystems` text: one type per line, after an optional `nodev`.
pub fn parse_filesystems(text: &str) -> HashSet<String> {
    text.lines()
        .filter_map(|l| l.split_whitespace().last())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxBuilder, LinuxDeviceBuilder, MountBuilder, SpecBuilder};

    fn known(t: &str) -> bool {
        [
            "proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup2", "overlay", "fuse",
        ]
        .contains(&t)
    }

    fn mount(dest: &str, typ: Option<&str>, src: Option<&str>, opts: &[&str]) -> Mount {
        let mut b = MountBuilder::default().destination(dest);
        if let Some(t) = typ {
            b = b.typ(t);
        }
        if let Some(s) = src {
            b = b.source(s);
        }
        b.options(opts.iter().map(|o| o.to_string()).collect::<Vec<_>>())
            .build()
            .unwrap()
    }

    fn check(mounts: Vec<Mount>) -> Result<(), String> {
        let spec = SpecBuilder::default().mounts(mounts).build().unwrap();
        validate_mounts(&spec, &known).map_err(|e| e.to_string())
    }

    fn check_linux(linux: oci_spec::runtime::Linux) -> Result<(), String> {
        let spec = SpecBuilder::default()
            .mounts(vec![])
            .linux(linux)
            .build()
            .unwrap();
        validate_mounts(&spec, &known).map_err(|e| e.to_string())
    }

    #[test]
    fn the_default_runc_spec_is_valid() {
        validate_mounts(&Spec::default(), &known).unwrap();
    }

    #[test]
    fn errors_name_the_mount_field() {
        let ok = mount("/proc", Some("proc"), Some("proc"), &[]);
        let cases = [
            (
                mount("/x", Some("foo"), None, &[]),
                "mounts[1].type: unknown filesystem type \"foo\"",
            ),
            (
                mount("/x", None, Some("/src"), &["ro"]),
                "mounts[1].type: missing filesystem type (and no \"bind\" or \"rbind\" option)",
            ),
            (
                mount("/x", Some("bind"), Some("/s"), &["ro", "rbindd"]),
                "mounts[1].options[1]: unknown mount option \"rbindd\"",
            ),
            (
                mount("/x", Some("none"), None, &["rbind"]),
                "mounts[1].source: a bind mount needs a source",
            ),
            (
                mount("x", Some("tmpfs"), None, &[]),
                "mounts[1].destination: \"x\" is not an absolute path",
            ),
            (
                mount("/a/../../etc", Some("tmpfs"), None, &[]),
                "mounts[1].destination: \"/a/../../etc\" leaves the container's root",
            ),
            (
                mount("/x", Some("tmpfs"), None, &["size=1m", "rro"]),
                "mounts[1].options[1]: mount option \"rro\": recursive mount attributes \
                 (mount_setattr(2)) are not supported",
            ),
        ];
        for (bad, want) in cases {
            assert_eq!(check(vec![ok.clone(), bad]), Err(want.to_string()));
        }
    }

    #[test]
    fn id_mapped_mounts_are_refused() {
        let mut m = mount("/x", None, Some("/s"), &["rbind"]);
        m.set_uid_mappings(Some(vec![Default::default()]));
        assert_eq!(
            check(vec![m]),
            Err("mounts[0].uidMappings: ID-mapped mounts are not supported".into())
        );
    }

    #[test]
    fn bind_mounts_need_no_type_and_fs_subtypes_use_their_base() {
        check(vec![
            mount("/a", None, Some("/s"), &["rbind", "ro"]),
            mount("/b", Some("none"), Some("/s"), &["bind"]),
            mount("/c", Some("bind"), Some("/s"), &[]),
            mount("/d", Some("tmpfs"), Some("/s"), &["rbind"]),
            mount("/e", Some("fuse.sshfs"), Some("h:/"), &["allow_other"]),
            mount("/f", Some("tmpfs"), None, &["size=1m", "whatever"]),
            mount("/g/../h", Some("tmpfs"), None, &[]),
        ])
        .unwrap();
    }

    #[test]
    fn cgroup_v1_needs_cgroup2() {
        check(vec![mount("/sys/fs/cgroup", Some("cgroup"), None, &["ro"])]).unwrap();
        let spec = SpecBuilder::default()
            .mounts(vec![mount("/sys/fs/cgroup", Some("cgroup"), None, &[])])
            .build()
            .unwrap();
        let err = validate_mounts(&spec, &|t| t == "cgroup").unwrap_err();
        assert_eq!(
            err.to_string(),
            "mounts[0].type: the kernel has no cgroup2 filesystem"
        );
    }

    #[test]
    fn errors_name_the_linux_field() {
        let l = LinuxBuilder::default;
        assert_eq!(
            check_linux(l().rootfs_propagation("rshard").build().unwrap()),
            Err("linux.rootfsPropagation: unknown propagation \"rshard\"".into())
        );
        check_linux(l().rootfs_propagation("rshared").build().unwrap()).unwrap();
        check_linux(l().rootfs_propagation("").build().unwrap()).unwrap();
        assert_eq!(
            check_linux(
                l().masked_paths(vec!["/proc/kcore".into(), "proc/x".into()])
                    .build()
                    .unwrap()
            ),
            Err("linux.maskedPaths[1]: \"proc/x\" is not an absolute path".into())
        );
        assert_eq!(
            check_linux(
                l().readonly_paths(vec!["/proc/../../sys".into()])
                    .build()
                    .unwrap()
            ),
            Err("linux.readonlyPaths[0]: \"/proc/../../sys\" leaves the container's root".into())
        );
    }

    #[test]
    fn device_errors_name_the_device_field() {
        let dev = |path: &str, typ, major| {
            LinuxDeviceBuilder::default()
                .path(path)
                .typ(typ)
                .major(major)
                .minor(1)
                .build()
                .unwrap()
        };
        let with = |d| {
            let devices = vec![dev("/dev/fuse", LinuxDeviceType::C, 10), d];
            check_linux(LinuxBuilder::default().devices(devices).build().unwrap())
        };
        assert_eq!(with(dev("/dev/sda", LinuxDeviceType::B, 8)), Ok(()));
        assert_eq!(
            with(dev("dev/x", LinuxDeviceType::C, 1)),
            Err("linux.devices[1].path: \"dev/x\" is not an absolute path".into())
        );
        assert_eq!(
            with(dev("/dev/..", LinuxDeviceType::C, 1)),
            Err("linux.devices[1].path: a device cannot be the root".into())
        );
        assert_eq!(
            with(dev("/dev/x", LinuxDeviceType::A, 1)),
            Err("linux.devices[1].type: \"a\" is not a device node type (use c, b, u or p)".into())
        );
        assert_eq!(
            with(dev("/dev/x", LinuxDeviceType::C, -1)),
            Err("linux.devices[1]: major and minor must not be negative".into())
        );
    }

    #[test]
    fn parses_proc_filesystems() {
        let fs = parse_filesystems("nodev\tsysfs\nnodev\tcgroup2\n\text4\n\n");
        let want: HashSet<String> = ["sysfs", "cgroup2", "ext4"].map(String::from).into();
        assert_eq!(fs, want);
    }
}
