//! Device nodes and `/dev` symlinks in the rootfs, before pivot_root, as runc makes them
//! whenever `/dev` is not a bind mount:
//!
//! * runc's default nodes (`null`, `zero`, `full`, `random`, `urandom`, `tty`; mode 0666,
//!   owned by uid/gid 0 as the setup process sees them, which is the container's root when
//!   it runs inside the container's user namespace), less those `linux.devices` names too,
//!   then `linux.devices`;
//! * where mknod(2) is not permitted (a user namespace, or `EPERM`), the agent's node at
//!   the same path is bind-mounted on an empty file instead;
//! * `/dev/ptmx` becomes a symlink to `pts/ptmx` (the devpts `newinstance` node);
//! * `fd`, `stdin`, `stdout`, `stderr` link into `/proc/self/fd`, and `core` to
//!   `/proc/kcore` where that exists.
//!
//! [`super::prepare_rootfs`] sets the umask to 0 while it runs, so that the nodes' modes
//! are exactly the spec's.

use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use nix::sys::stat::{Mode, SFlag};
use oci_spec::runtime::{LinuxDeviceType, Spec};

use super::host::Host;
use super::securejoin::{clean, secure_join};
use super::{sys_err, RootfsError};
use crate::container::syscall::Syscall;

/// One node to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeviceNode {
    /// Where the error points: `linux.devices[i]`, or `default device /dev/null`.
    pub field: String,
    /// The path in the container.
    pub path: PathBuf,
    /// `S_IFCHR`, `S_IFBLK` or `S_IFIFO`.
    pub kind: SFlag,
    /// Major number.
    pub major: u64,
    /// Minor number.
    pub minor: u64,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

/// runc's default nodes: path, major, minor.
const DEFAULT_DEVICES: &[(&str, u64, u64)] = &[
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
];

/// The nodes to create: the defaults the spec does not name, then `linux.devices` (already
/// validated: no type `a`, no negative numbers).
pub(crate) fn device_nodes(spec: &Spec) -> Vec<DeviceNode> {
    let spec_devices = spec
        .linux()
        .as_ref()
        .and_then(|l| l.devices().clone())
        .unwrap_or_default();
    let named = |p: &Path| spec_devices.iter().any(|d| clean(d.path()) == clean(p));
    let mut out: Vec<DeviceNode> = DEFAULT_DEVICES
        .iter()
        .filter(|(p, _, _)| !named(Path::new(p)))
        .map(|&(p, major, minor)| DeviceNode {
            field: format!("default device {p}"),
            path: p.into(),
            kind: SFlag::S_IFCHR,
            major,
            minor,
            mode: 0o666,
            uid: 0,
            gid: 0,
        })
        .collect();
    for (i, d) in spec_devices.iter().enumerate() {
        let kind = match d.typ() {
            LinuxDeviceType::B => SFlag::S_IFBLK,
            LinuxDeviceType::P => SFlag::S_IFIFO,
            LinuxDeviceType::C | LinuxDeviceType::U | LinuxDeviceType::A => SFlag::S_IFCHR,
        };
        out.push(DeviceNode {
            field: format!("linux.devices[{i}]"),
            path: d.path().clone(),
            kind,
            major: u64::try_from(d.major()).unwrap_or(0),
            minor: u64::try_from(d.minor()).unwrap_or(0),
            mode: d.file_mode().unwrap_or(0o666) & 0o7777,
            uid: d.uid().unwrap_or(0),
            gid: d.gid().unwrap_or(0),
        });
    }
    out
}

/// Creates every node of [`device_nodes`] in `rootfs`.
pub(crate) fn create_devices(
    sys: &dyn Syscall,
    host: &Host,
    spec: &Spec,
    rootfs: &Path,
) -> Result<(), RootfsError> {
    for node in device_nodes(spec) {
        create_device(sys, host, rootfs, &node)?;
    }
    Ok(())
}

fn create_device(
    sys: &dyn Syscall,
    host: &Host,
    rootfs: &Path,
    node: &DeviceNode,
) -> Result<(), RootfsError> {
    let field = node.field.as_str();
    let dest = secure_join(rootfs, &node.path).map_err(|e| {
        sys_err(
            field,
            format!("resolving {} inside the rootfs", node.path.display()),
            e,
        )
    })?;
    if dest == rootfs {
        return Err(RootfsError::Invalid {
            field: format!("{field}.path"),
            reason: format!("{} resolves to the root", node.path.display()),
        });
    }
    if let Some(parent) = dest.parent() {
        sys.mkdir_all(parent, 0o755)
            .map_err(|e| sys_err(field, format!("create {}", parent.display()), e))?;
    }
    if host.in_userns {
        return bind_device(sys, node, &dest);
    }
    let dev = nix::sys::stat::makedev(node.major, node.minor);
    let mode = Mode::from_bits_truncate(node.mode);
    match sys.mknod(&dest, node.kind, mode, dev) {
        Ok(()) => sys
            .lchown(&dest, node.uid, node.gid)
            .map_err(|e| sys_err(field, format!("chown {}", dest.display()), e)),
        // Already there (an image that ships /dev/null): keep it, as runc does.
        Err(nix::Error::EEXIST) => Ok(()),
        Err(nix::Error::EPERM) => bind_device(sys, node, &dest),
        Err(e) => Err(sys_err(field, format!("mknod {}", dest.display()), e)),
    }
}

/// Bind-mounts the agent's node at the same path onto an empty file at `dest`.
fn bind_device(sys: &dyn Syscall, node: &DeviceNode, dest: &Path) -> Result<(), RootfsError> {
    let field = node.field.as_str();
    sys.touch(dest, 0o644)
        .map_err(|e| sys_err(field, format!("create {}", dest.display()), e))?;
    sys.mount(Some(&node.path), dest, None, MsFlags::MS_BIND, None)
        .map_err(|e| {
            sys_err(
                field,
                format!("bind {} on {}", node.path.display(), dest.display()),
                e,
            )
        })
}

/// `/dev/ptmx` → `pts/ptmx`, then the `/proc/self/fd` links and `/dev/core`.
pub(crate) fn dev_symlinks(
    sys: &dyn Syscall,
    host: &Host,
    rootfs: &Path,
) -> Result<(), RootfsError> {
    let field = "/dev symlinks";
    let resolve = |p: &str| {
        secure_join(rootfs, Path::new(p))
            .map_err(|e| sys_err(field, format!("resolving {p} inside the rootfs"), e))
    };
    let ptmx = resolve("/dev/ptmx")?;
    // runc replaces whatever is there (a node from linux.devices, an image's file).
    match std::fs::remove_file(&ptmx) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            let errno = nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO));
            return Err(sys_err(field, format!("remove {}", ptmx.display()), errno));
        }
    }
    sys.symlink(Path::new("pts/ptmx"), &ptmx)
        .map_err(|e| sys_err(field, format!("symlink {}", ptmx.display()), e))?;
    let mut links = vec![
        ("/proc/self/fd", "/dev/fd"),
        ("/proc/self/fd/0", "/dev/stdin"),
        ("/proc/self/fd/1", "/dev/stdout"),
        ("/proc/self/fd/2", "/dev/stderr"),
    ];
    if host.kcore {
        links.push(("/proc/kcore", "/dev/core"));
    }
    for (target, link) in links {
        let at = resolve(link)?;
        match sys.symlink(Path::new(target), &at) {
            Ok(()) | Err(nix::Error::EEXIST) => {}
            Err(e) => return Err(sys_err(field, format!("symlink {}", at.display()), e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::rootfs::testutil::{fake_host, TempDir};
    use crate::container::syscall::{Call, RecordingSyscall};
    use oci_spec::runtime::{LinuxBuilder, LinuxDeviceBuilder, SpecBuilder};

    fn spec_with_devices() -> Spec {
        let fuse = LinuxDeviceBuilder::default()
            .path("/dev/fuse")
            .typ(LinuxDeviceType::C)
            .major(10)
            .minor(229)
            .file_mode(0o20660u32)
            .uid(1000u32)
            .gid(1001u32)
            .build()
            .unwrap();
        let null = LinuxDeviceBuilder::default()
            .path("/dev/null")
            .typ(LinuxDeviceType::C)
            .major(1)
            .minor(3)
            .file_mode(0o600u32)
            .build()
            .unwrap();
        let fifo = LinuxDeviceBuilder::default()
            .path("/dev/sub/fifo")
            .typ(LinuxDeviceType::P)
            .build()
            .unwrap();
        let linux = LinuxBuilder::default()
            .devices(vec![fuse, null, fifo])
            .build()
            .unwrap();
        SpecBuilder::default().linux(linux).build().unwrap()
    }

    #[test]
    fn spec_devices_override_defaults_by_path() {
        let nodes = device_nodes(&spec_with_devices());
        let paths: Vec<_> = nodes.iter().map(|n| n.path.to_str().unwrap()).collect();
        assert_eq!(
            paths,
            [
                "/dev/zero",
                "/dev/full",
                "/dev/random",
                "/dev/urandom",
                "/dev/tty",
                "/dev/fuse",
                "/dev/null",
                "/dev/sub/fifo"
            ]
        );
        let fuse = &nodes[5];
        assert_eq!(fuse.field, "linux.devices[0]");
        assert_eq!((fuse.major, fuse.minor, fuse.mode), (10, 229, 0o660));
        assert_eq!((fuse.uid, fuse.gid), (1000, 1001));
        assert_eq!(nodes[7].kind, SFlag::S_IFIFO);
        assert_eq!(nodes[4].field, "default device /dev/tty");
    }

    #[test]
    fn mknod_then_chown_each_node() {
        let t = TempDir::new();
        let r = t.path();
        let sys = RecordingSyscall::default();
        create_devices(&sys, &fake_host(), &spec_with_devices(), r).unwrap();
        let calls = sys.calls();
        assert_eq!(calls.len(), 8 * 3);
        assert_eq!(
            calls[..3],
            [
                Call::MkdirAll(r.join("dev"), 0o755),
                Call::Mknod(
                    r.join("dev/zero"),
                    SFlag::S_IFCHR,
                    0o666,
                    nix::sys::stat::makedev(1, 5)
                ),
                Call::Lchown(r.join("dev/zero"), 0, 0),
            ]
        );
        assert_eq!(
            calls[15..17],
            [
                Call::MkdirAll(r.join("dev"), 0o755),
                Call::Mknod(
                    r.join("dev/fuse"),
                    SFlag::S_IFCHR,
                    0o660,
                    nix::sys::stat::makedev(10, 229)
                ),
            ]
        );
        assert_eq!(calls[17], Call::Lchown(r.join("dev/fuse"), 1000, 1001));
        assert_eq!(calls[21], Call::MkdirAll(r.join("dev/sub"), 0o755));
        assert_eq!(
            calls[22],
            Call::Mknod(r.join("dev/sub/fifo"), SFlag::S_IFIFO, 0o666, 0)
        );
    }

    #[test]
    fn user_namespaces_bind_the_agents_nodes() {
        let t = TempDir::new();
        let r = t.path();
        let sys = RecordingSyscall::default();
        let host = Host {
            in_userns: true,
            ..fake_host()
        };
        create_devices(&sys, &host, &Spec::default(), r).unwrap();
        let calls = sys.calls();
        assert_eq!(calls.len(), 6 * 3);
        assert!(!calls.iter().any(|c| matches!(c, Call::Mknod(..))));
        assert_eq!(
            calls[..3],
            [
                Call::MkdirAll(r.join("dev"), 0o755),
                Call::Touch(r.join("dev/null"), 0o644),
                Call::Mount(
                    Some("/dev/null".into()),
                    r.join("dev/null"),
                    None,
                    MsFlags::MS_BIND,
                    None
                ),
            ]
        );
    }

    #[test]
    fn eperm_falls_back_to_bind_and_eexist_is_kept() {
        let t = TempDir::new();
        let r = t.path();
        let sys = RecordingSyscall::default();
        sys.fail_when(
            |c| matches!(c, Call::Mknod(p, ..) if p.ends_with("dev/null")),
            nix::Error::EPERM,
        );
        sys.fail_when(
            |c| matches!(c, Call::Mknod(p, ..) if p.ends_with("dev/zero")),
            nix::Error::EEXIST,
        );
        create_devices(&sys, &fake_host(), &Spec::default(), r).unwrap();
        let calls = sys.calls();
        assert_eq!(
            calls[1..4],
            [
                Call::Mknod(
                    r.join("dev/null"),
                    SFlag::S_IFCHR,
                    0o666,
                    nix::sys::stat::makedev(1, 3)
                ),
                Call::Touch(r.join("dev/null"), 0o644),
                Call::Mount(
                    Some("/dev/null".into()),
                    r.join("dev/null"),
                    None,
                    MsFlags::MS_BIND,
                    None
                ),
            ]
        );
        // zero: mkdir, mknod (EEXIST), and no chown.
        assert!(matches!(&calls[5], Call::Mknod(p, ..) if p.ends_with("dev/zero")));
        assert_eq!(calls[6], Call::MkdirAll(r.join("dev"), 0o755));
    }

    #[test]
    fn mknod_failures_name_the_device_field() {
        let t = TempDir::new();
        let sys = RecordingSyscall::default();
        sys.fail_when(
            |c| matches!(c, Call::Mknod(p, ..) if p.ends_with("dev/fuse")),
            nix::Error::EINVAL,
        );
        let err = create_devices(&sys, &fake_host(), &spec_with_devices(), t.path()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "linux.devices[0]: mknod {}/dev/fuse: EINVAL: Invalid argument",
                t.path().display()
            )
        );
    }

    #[test]
    fn symlinks_in_dev() {
        let t = TempDir::new();
        let r = t.path();
        let sys = RecordingSyscall::default();
        sys.fail_when(
            |c| matches!(c, Call::Symlink(_, l) if l.ends_with("dev/stdin")),
            nix::Error::EEXIST,
        );
        dev_symlinks(&sys, &fake_host(), r).unwrap();
        let link = |t: &str, l: &str| Call::Symlink(t.into(), r.join(l));
        assert_eq!(
            sys.calls(),
            [
                link("pts/ptmx", "dev/ptmx"),
                link("/proc/self/fd", "dev/fd"),
                link("/proc/self/fd/0", "dev/stdin"),
                link("/proc/self/fd/1", "dev/stdout"),
                link("/proc/self/fd/2", "dev/stderr"),
                link("/proc/kcore", "dev/core"),
            ]
        );
        let sys = RecordingSyscall::default();
        let host = Host {
            kcore: false,
            ..fake_host()
        };
        dev_symlinks(&sys, &host, r).unwrap();
        assert_eq!(sys.calls().len(), 5);
    }

    #[test]
    fn an_existing_ptmx_is_replaced() {
        let t = TempDir::new();
        std::fs::create_dir_all(t.path().join("dev")).unwrap();
        std::fs::write(t.path().join("dev/ptmx"), b"").unwrap();
        dev_symlinks(&RecordingSyscall::default(), &fake_host(), t.path()).unwrap();
        assert!(!t.path().join("dev/ptmx").exists());
    }
}
