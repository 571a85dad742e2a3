//! The container's root filesystem, set up the way runc sets it up on a host.
//!
//! The process setup code calls, in this order:
//!
//! 1. [`validate_mounts`] with [`kernel_filesystems`], before anything is created (no
//!    namespace needed; pure);
//! 2. in the container's new mount namespace (and inside its user namespace, if it has
//!    one), with the bundle directory as working directory (relative bind sources are
//!    relative to it, as with runc), [`prepare_rootfs`]: `/` made `rslave` (or
//!    `shared`/`rshared` if `linux.rootfsPropagation` says so), the rootfs bound on itself,
//!    `mounts` in order (module `mounts`), then, unless `/dev` is a bind mount, the device
//!    nodes and `/dev` symlinks (module `devices`);
//! 3. [`pivot_root`] (or [`chroot_no_pivot`] for `--no-pivot`);
//! 4. whatever needs a writable `/dev` or `/proc/sys`: the console on `/dev/pts`, sysctls,
//!    hostname;
//! 5. [`finalize_rootfs`]: `/dev` and `/` read-only when asked, `linux.readonlyPaths`,
//!    `linux.maskedPaths`, then `linux.rootfsPropagation` on `/` (module `finalize`).
//!
//! In a user namespace, device nodes are bind-mounted from the agent's `/dev` (mknod is
//! not permitted), and remounts keep the flags the kernel locked. The kernel also wants
//! the namespaces that own what is mounted: `proc` a PID namespace, `sysfs` a network
//! namespace, `mqueue` an IPC namespace, all owned by the user namespace; `devpts`'s
//! `gid=5` must be mapped; `cgroup2` without a cgroup namespace falls back to a bind of the
//! process's own cgroup directory.
//!
//! Not supported, and refused by [`validate_mounts`] rather than ignored: recursive mount
//! attributes (`rro`, ...), ID-mapped mounts, `tmpcopyup`. Bind remounts are not recursive
//! (`rbind,ro` leaves submounts writable), as with mount(2) and runc without `rro`.
//!
//! Every mount, mknod, pivot_root, ... goes through [`Syscall`], so the logic is tested
//! with [`crate::container::syscall::RecordingSyscall`] and no root. What is only read
//! (lstat and readlink to resolve paths inside the rootfs, the bind source's type,
//! `/proc/self/mountinfo`, statvfs) uses `std::fs` and nix directly.

mod devices;
mod finalize;
mod host;
mod mounts;
mod options;
mod securejoin;
mod validate;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod testutil;

use std::path::Path;

use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::Mode;
use oci_spec::runtime::Spec;

use crate::container::syscall::Syscall;
use host::Host;

pub use options::{parse_mount_options, parse_propagation, MountOptions, MS_NOSYMFOLLOW};
pub use securejoin::{secure_join, MAX_SYMLINKS};
pub use validate::{kernel_filesystems, parse_filesystems, validate_mounts};

/// A failure setting up the root filesystem; the message names the spec field at fault.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// The spec asks for something that cannot be done; found before or while mounting.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field, e.g. `mounts[3].type`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A system call failed.
    #[error("{field}: {op}: {errno}")]
    Sys {
        /// The field being carried out, e.g. `mounts[2]`, `linux.maskedPaths[0]`.
        field: String,
        /// What was being done, with the paths.
        op: String,
        /// The errno.
        errno: nix::Error,
    },
}

pub(crate) fn sys_err(
    field: impl Into<String>,
    op: impl Into<String>,
    errno: nix::Error,
) -> RootfsError {
    RootfsError::Sys {
        field: field.into(),
        op: op.into(),
        errno,
    }
}

/// Sets up `rootfs` (an absolute path in the current mount namespace) for pivot_root: runs
/// in the container's new mount namespace, after [`validate_mounts`]. See the module doc.
///
/// The umask is 0 while it runs (device nodes get exactly the spec's modes) and restored
/// afterwards.
pub fn prepare_rootfs(sys: &dyn Syscall, spec: &Spec, rootfs: &Path) -> Result<(), RootfsError> {
    let _umask = UmaskGuard::zero();
    prepare(sys, &Host::probe(spec), spec, rootfs)
}

/// Sets the umask and puts the old one back when dropped.
#[derive(Debug)]
struct UmaskGuard(Mode);

impl UmaskGuard {
    fn zero() -> Self {
        Self(nix::sys::stat::umask(Mode::empty()))
    }
}

impl Drop for UmaskGuard {
    fn drop(&mut self) {
        nix::sys::stat::umask(self.0);
    }
}

pub(crate) fn prepare(
    sys: &dyn Syscall,
    host: &Host,
    spec: &Spec,
    rootfs: &Path,
) -> Result<(), RootfsError> {
    // Read everything first: a bad option fails before the first mount.
    let mounts = spec.mounts().as_deref().unwrap_or(&[]);
    let plans = mounts
        .iter()
        .enumerate()
        .map(|(i, m)| validate::plan_mount(i, m, &|_| true))
        .collect::<Result<Vec<_>, _>>()?;
    let propagation = validate::root_propagation(spec)?;

    // Nothing done below may propagate back to the agent's namespace: `/` becomes a slave,
    // unless the spec asks for shared, which must hold while the mounts are made (a bind of
    // a shared mount then joins its peer group). The spec's other values are applied to the
    // new `/` after pivot_root ([`finalize_rootfs`]); runc applies them here too, where
    // `unbindable` makes the rootfs bind below fail.
    let root_flags = match propagation {
        Some(p) if p.contains(MsFlags::MS_SHARED) => p,
        _ => MsFlags::MS_SLAVE | MsFlags::MS_REC,
    };
    sys.mount(None, Path::new("/"), None, root_flags, None)
        .map_err(|e| sys_err("linux.rootfsPropagation", "set propagation of /", e))?;
    if root_flags.contains(MsFlags::MS_SHARED) {
        // pivot_root refuses a shared parent, and the bind below must not propagate out.
        if let Some(parent) = (host.mount_point_of)(rootfs) {
            sys.mount(None, &parent, None, MsFlags::MS_PRIVATE, None)
                .map_err(|e| {
                    sys_err(
                        "linux.rootfsPropagation",
                        format!("make {} private", parent.display()),
                        e,
                    )
                })?;
        }
    }
    // A mount point of its own, for pivot_root.
    let rbind = MsFlags::MS_BIND | MsFlags::MS_REC;
    sys.mount(Some(rootfs), rootfs, None, rbind, None)
        .map_err(|e| {
            sys_err(
                "root.path",
                format!("bind {} on itself", rootfs.display()),
                e,
            )
        })?;

    for (i, (m, plan)) in mounts.iter().zip(&plans).enumerate() {
        mounts::mount_one(sys, host, rootfs, i, m, plan)?;
    }

    let dev_is_bind = mounts.iter().zip(&plans).any(|(m, p)| {
        matches!(p.kind, validate::MountKind::Bind)
            && securejoin::clean(m.destination()).as_deref() == Some(Path::new("/dev"))
    });
    if !dev_is_bind {
        devices::create_devices(sys, host, spec, rootfs)?;
        devices::dev_symlinks(sys, host, rootfs)?;
    }
    Ok(())
}

/// Makes `rootfs` the root with pivot_root(2) without a directory for the old root:
/// `chdir(rootfs)`, `pivot_root(".", ".")` (the old root is then stacked on `.`), the old
/// root made `rslave` so that unmounting it does not propagate, `umount2(".", MNT_DETACH)`,
/// `chdir("/")`. Runs after [`prepare_rootfs`].
pub fn pivot_root(sys: &dyn Syscall, rootfs: &Path) -> Result<(), RootfsError> {
    let dot = Path::new(".");
    let err = |op: &str| {
        let op = op.to_string();
        move |e| sys_err("root.path", op, e)
    };
    // As runc: keep a handle on the old root, pivot with "." twice, then go back to the old
    // root (stacked on top of the new one) so that the rslave and the unmount reach it and
    // not the container's own mounts (whose propagation the spec chose).
    let old_root = sys
        .open_dir(Path::new("/"))
        .map_err(err("open the old root"))?;
    sys.chdir(rootfs)
        .map_err(err(&format!("chdir {}", rootfs.display())))?;
    sys.pivot_root(dot, dot)
        .map_err(err(&format!("pivot_root to {}", rootfs.display())))?;
    sys.fchdir(&old_root)
        .map_err(err("fchdir to the old root"))?;
    sys.mount(None, dot, None, MsFlags::MS_SLAVE | MsFlags::MS_REC, None)
        .map_err(err("make the old root rslave"))?;
    sys.umount(dot, MntFlags::MNT_DETACH)
        .map_err(err("unmount the old root"))?;
    sys.chdir(Path::new("/")).map_err(err("chdir /"))
}

/// For `--no-pivot`: moves the rootfs mount onto `/` and chroots into it. The agent's other
/// mounts stay reachable below the chroot for a process that can escape one; pivot_root is
/// the safe choice.
pub fn chroot_no_pivot(sys: &dyn Syscall, rootfs: &Path) -> Result<(), RootfsError> {
    let err = |op: &str| {
        let op = op.to_string();
        move |e| sys_err("root.path", op, e)
    };
    sys.chdir(rootfs)
        .map_err(err(&format!("chdir {}", rootfs.display())))?;
    sys.mount(Some(rootfs), Path::new("/"), None, MsFlags::MS_MOVE, None)
        .map_err(err(&format!("move {} to /", rootfs.display())))?;
    sys.chroot(Path::new(".")).map_err(err("chroot ."))?;
    sys.chdir(Path::new("/")).map_err(err("chdir /"))
}

/// Finishes the root after [`pivot_root`]: read-only `/dev` and `/`, `linux.readonlyPaths`,
/// `linux.maskedPaths`, root propagation (in that order; see the `finalize` module). Write
/// sysctls and set up the console before: `/proc/sys` and `/dev` may be read-only afterwards.
pub fn finalize_rootfs(sys: &dyn Syscall, spec: &Spec) -> Result<(), RootfsError> {
    finalize::finalize(sys, &Host::probe(spec), spec)
}
