//! One entry of the spec's `mounts`, carried out inside the rootfs before pivot_root, in
//! runc's way:
//!
//! 1. the destination is resolved inside the rootfs ([`secure_join`]) and checked against
//!    `/proc` (only `proc` itself, and a few files lxcfs emulates, may go there);
//! 2. the destination is created: a directory, or an empty file when a bind source is one;
//! 3. the mount call; for `/dev` without `ro`, which [`super::finalize_rootfs`] adds once
//!    the device nodes exist;
//! 4. each propagation option, a mount call of its own;
//! 5. for a bind mount with flags other than `bind`/`rbind`, a remount
//!    (`MS_REMOUNT | MS_BIND | flags`): the kernel ignores them on the first bind. In a user
//!    namespace the kernel refuses a remount that drops a locked flag; the remount is then
//!    tried once more keeping the flags the mount already has.
//!
//! cgroup mounts: the guest kernel runs cgroup v2 only, so type `cgroup` (v1, runc's default
//! spec) mounts cgroup2 instead, without v1's data (controller names). When the kernel
//! refuses cgroup2 (a user namespace without its own cgroup namespace), the container's own
//! cgroup directory is bind-mounted there instead, as runc does.

use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use oci_spec::runtime::Mount;

use super::host::Host;
use super::securejoin::{clean, secure_join};
use super::validate::{MountKind, PlannedMount};
use super::{sys_err, RootfsError};
use crate::container::syscall::Syscall;

/// Mount points under `/proc` that may be bind-mounted over (lxcfs emulates them).
const PROC_ALLOWED: &[&str] = &[
    "/proc/cpuinfo",
    "/proc/diskstats",
    "/proc/meminfo",
    "/proc/stat",
    "/proc/swaps",
    "/proc/uptime",
    "/proc/loadavg",
    "/proc/slabinfo",
    "/proc/net/dev",
    "/proc/sys/kernel/ns_last_pid",
];

/// Carries out `mounts[i]`, already planned (read and validated).
pub(crate) fn mount_one(
    sys: &dyn Syscall,
    host: &Host,
    rootfs: &Path,
    i: usize,
    m: &Mount,
    plan: &PlannedMount,
) -> Result<(), RootfsError> {
    let field = format!("mounts[{i}]");
    let dest = secure_join(rootfs, m.destination()).map_err(|errno| RootfsError::Sys {
        field: format!("{field}.destination"),
        op: format!("resolving {:?} inside the rootfs", m.destination()),
        errno,
    })?;
    check_proc_destination(rootfs, &dest, &plan.kind, &field)?;
    let flags = plan.opts.flags;
    match &plan.kind {
        MountKind::Bind => {
            let source = m.source().clone().unwrap_or_default();
            bind(sys, host, &field, &source, &dest, plan)
        }
        MountKind::Cgroup { v1 } => {
            let source = m.source().clone().unwrap_or_else(|| "cgroup2".into());
            mkdir(sys, &field, &dest)?;
            let data = if *v1 { None } else { plan.opts.data_string() };
            let r = sys.mount(
                Some(&source),
                &dest,
                Some("cgroup2"),
                flags,
                data.as_deref(),
            );
            match r {
                Ok(()) => propagate(sys, &field, &dest, &plan.opts.propagation),
                Err(nix::Error::EPERM | nix::Error::EBUSY) => {
                    let own = (host.own_cgroup)();
                    let mut fallback = plan.clone();
                    fallback.opts.flags |= MsFlags::MS_BIND | MsFlags::MS_REC;
                    bind(sys, host, &field, &own, &dest, &fallback)
                }
                Err(errno) => Err(sys_err(
                    &field,
                    format!("mount cgroup2 on {}", dest.display()),
                    errno,
                )),
            }
        }
        MountKind::Fs(typ) => {
            if typ == "proc" || typ == "sysfs" {
                if let Ok(meta) = std::fs::symlink_metadata(&dest) {
                    if !meta.is_dir() {
                        return Err(RootfsError::Invalid {
                            field: format!("{field}.destination"),
                            reason: format!("{} is not a directory", dest.display()),
                        });
                    }
                }
            }
            let mut data = plan.opts.data_string();
            if typ == "tmpfs" {
                // runc gives the tmpfs the mode of the directory it covers (a later mode=
                // in the options wins).
                if let Ok(meta) = std::fs::metadata(&dest) {
                    use std::os::unix::fs::PermissionsExt;
                    let mode = format!("mode={:04o}", meta.permissions().mode() & 0o7777);
                    data = Some(match data {
                        Some(d) => format!("{mode},{d}"),
                        None => mode,
                    });
                }
            }
            mkdir(sys, &field, &dest)?;
            let mut flags = flags;
            if clean(m.destination()).as_deref() == Some(Path::new("/dev")) {
                flags -= MsFlags::MS_RDONLY;
            }
            let source: PathBuf = m.source().clone().unwrap_or_else(|| typ.into());
            sys.mount(Some(&source), &dest, Some(typ), flags, data.as_deref())
                .map_err(|e| sys_err(&field, format!("mount {typ} on {}", dest.display()), e))?;
            propagate(sys, &field, &dest, &plan.opts.propagation)
        }
    }
}

/// Bind-mounts `source` on `dest`, creating `dest` like `source` (directory or file), then
/// propagation, then the remount for the remaining flags.
fn bind(
    sys: &dyn Syscall,
    host: &Host,
    field: &str,
    source: &Path,
    dest: &Path,
    plan: &PlannedMount,
) -> Result<(), RootfsError> {
    let meta = std::fs::metadata(source).map_err(|e| RootfsError::Sys {
        field: format!("{field}.source"),
        op: format!("bind source {}", source.display()),
        errno: nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
    })?;
    if meta.is_dir() {
        mkdir(sys, field, dest)?;
    } else {
        if let Some(parent) = dest.parent() {
            mkdir(sys, field, parent)?;
        }
        sys.touch(dest, 0o644)
            .map_err(|e| sys_err(field, format!("create {}", dest.display()), e))?;
    }
    let flags = plan.opts.flags & (MsFlags::MS_BIND | MsFlags::MS_REC);
    sys.mount(Some(source), dest, None, flags, None)
        .map_err(|e| {
            sys_err(
                field,
                format!("bind {} on {}", source.display(), dest.display()),
                e,
            )
        })?;
    propagate(sys, field, dest, &plan.opts.propagation)?;
    let extra = plan.opts.remount_flags();
    if extra.is_empty() {
        return Ok(());
    }
    remount_bind(sys, host, dest, extra)
        .map_err(|e| sys_err(field, format!("remount {}", dest.display()), e))
}

/// `MS_REMOUNT | MS_BIND | flags` on `dest`; on `EPERM`, once more with the lockable flags
/// that `dest` already has.
pub(crate) fn remount_bind(
    sys: &dyn Syscall,
    host: &Host,
    dest: &Path,
    flags: MsFlags,
) -> Result<(), nix::Error> {
    let f = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | flags;
    match sys.mount(None, dest, None, f, None) {
        Err(nix::Error::EPERM) => {
            let locked = (host.locked_flags)(dest);
            if f.contains(locked) {
                return Err(nix::Error::EPERM);
            }
            sys.mount(None, dest, None, f | locked, None)
        }
        r => r,
    }
}

fn propagate(
    sys: &dyn Syscall,
    field: &str,
    dest: &Path,
    propagation: &[MsFlags],
) -> Result<(), RootfsError> {
    for &p in propagation {
        sys.mount(None, dest, None, p, None).map_err(|e| {
            sys_err(
                field,
                format!("set propagation {p:?} on {}", dest.display()),
                e,
            )
        })?;
    }
    Ok(())
}

fn mkdir(sys: &dyn Syscall, field: &str, dir: &Path) -> Result<(), RootfsError> {
    sys.mkdir_all(dir, 0o755)
        .map_err(|e| sys_err(field, format!("create {}", dir.display()), e))
}

/// runc's rule for `/proc`: only a `proc` mount at `/proc` itself, and below it only the
/// files in [`PROC_ALLOWED`].
fn check_proc_destination(
    rootfs: &Path,
    dest: &Path,
    kind: &MountKind,
    field: &str,
) -> Result<(), RootfsError> {
    let Ok(rel) = dest.strip_prefix(rootfs.join("proc")) else {
        return Ok(());
    };
    let reason = if rel.as_os_str().is_empty() {
        if *kind == MountKind::Fs("proc".into()) {
            return Ok(());
        }
        "only a proc filesystem may be mounted on /proc".to_string()
    } else {
        let inside = Path::new("/proc").join(rel);
        if PROC_ALLOWED.iter().any(|a| Path::new(a) == inside) {
            return Ok(());
        }
        format!(
            "{} cannot be mounted because it is inside /proc",
            inside.display()
        )
    };
    Err(RootfsError::Invalid {
        field: format!("{field}.destination"),
        reason,
    })
}
