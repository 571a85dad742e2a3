//! What is done after pivot_root, when `/` is the container's root:
//!
//! 1. `/dev` remounted read-only if its mount asked for `ro` (it was mounted writable so
//!    that the device nodes could be made);
//! 2. `root.readonly`: `/` remounted `MS_BIND | MS_REMOUNT | MS_RDONLY`, keeping the flags
//!    the kernel locks in a user namespace;
//! 3. `linux.readonlyPaths`: each bound on itself (recursively), then remounted
//!    `ro,nosuid,nodev,noexec` (a superset of every flag the kernel could have locked, so
//!    the remount is never refused for dropping one); missing paths are skipped;
//! 4. `linux.maskedPaths`: `/dev/null` bound over a file; over a directory (the bind fails
//!    with `ENOTDIR`) an empty read-only tmpfs; missing paths are skipped;
//! 5. `linux.rootfsPropagation` on `/`, last so that it covers the mounts above too (and
//!    so that `runbindable` does not stop their binds).
//!
//! Steps 1 to 4 are runc's `finalizeRootfs` and the path loops of its init, in its order;
//! runc sets the propagation right after pivot_root instead.

use std::path::Path;

use nix::mount::MsFlags;
use oci_spec::runtime::Spec;

use super::host::Host;
use super::mounts::remount_bind;
use super::securejoin::clean;
use super::validate::{plan_mount, root_propagation, MountKind};
use super::{sys_err, RootfsError};
use crate::container::syscall::Syscall;

/// The steps of the module doc.
pub(crate) fn finalize(sys: &dyn Syscall, host: &Host, spec: &Spec) -> Result<(), RootfsError> {
    let root = Path::new("/");
    let propagation = root_propagation(spec)?;
    remount_dev_readonly(sys, spec)?;
    if spec.root().as_ref().and_then(|r| r.readonly()) == Some(true) {
        remount_bind(sys, host, root, MsFlags::MS_RDONLY)
            .map_err(|e| sys_err("root.readonly", "remount / read-only", e))?;
    }
    let linux = spec.linux().as_ref();
    for (i, p) in linux
        .and_then(|l| l.readonly_paths().as_ref())
        .into_iter()
        .flatten()
        .enumerate()
    {
        readonly_path(sys, Path::new(p)).map_err(|e| {
            sys_err(
                format!("linux.readonlyPaths[{i}]"),
                format!("make {p} read-only"),
                e,
            )
        })?;
    }
    for (i, p) in linux
        .and_then(|l| l.masked_paths().as_ref())
        .into_iter()
        .flatten()
        .enumerate()
    {
        mask_path(sys, Path::new(p))
            .map_err(|e| sys_err(format!("linux.maskedPaths[{i}]"), format!("mask {p}"), e))?;
    }
    if let Some(p) = propagation {
        sys.mount(None, root, None, p, None)
            .map_err(|e| sys_err("linux.rootfsPropagation", "set propagation of /", e))?;
    }
    Ok(())
}

/// Step 1: the first non-bind mount on `/dev` that asked for `ro`.
fn remount_dev_readonly(sys: &dyn Syscall, spec: &Spec) -> Result<(), RootfsError> {
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        if clean(m.destination()).as_deref() != Some(Path::new("/dev")) {
            continue;
        }
        let plan = plan_mount(i, m, &|_| true)?;
        if matches!(plan.kind, MountKind::Bind) || !plan.opts.flags.contains(MsFlags::MS_RDONLY) {
            return Ok(());
        }
        let flags = plan.opts.flags | MsFlags::MS_REMOUNT;
        return sys
            .mount(None, Path::new("/dev"), None, flags, None)
            .map_err(|e| sys_err(format!("mounts[{i}]"), "remount /dev read-only", e));
    }
    Ok(())
}

fn readonly_path(sys: &dyn Syscall, p: &Path) -> Result<(), nix::Error> {
    let bind = MsFlags::MS_BIND | MsFlags::MS_REC;
    match sys.mount(Some(p), p, None, bind, None) {
        Err(nix::Error::ENOENT) => return Ok(()),
        r => r?,
    }
    let ro = MsFlags::MS_BIND
        | MsFlags::MS_REMOUNT
        | MsFlags::MS_RDONLY
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV
        | MsFlags::MS_NOEXEC;
    sys.mount(Some(p), p, None, ro, None)
}

fn mask_path(sys: &dyn Syscall, p: &Path) -> Result<(), nix::Error> {
    match sys.mount(
        Some(Path::new("/dev/null")),
        p,
        None,
        MsFlags::MS_BIND,
        None,
    ) {
        Ok(()) | Err(nix::Error::ENOENT) => Ok(()),
        Err(nix::Error::ENOTDIR) => sys.mount(
            Some(Path::new("tmpfs")),
            p,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            None,
        ),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::rootfs::testutil::fake_host;
    use crate::container::syscall::{Call, RecordingSyscall};
    use oci_spec::runtime::{LinuxBuilder, MountBuilder, RootBuilder, SpecBuilder};

    fn mnt(src: Option<&str>, target: &str, fstype: Option<&str>, flags: MsFlags) -> Call {
        Call::Mount(
            src.map(Into::into),
            target.into(),
            fstype.map(Into::into),
            flags,
            None,
        )
    }

    fn spec(readonly: bool, propagation: &str, masked: &[&str], ro: &[&str]) -> Spec {
        let linux = LinuxBuilder::default()
            .rootfs_propagation(propagation)
            .masked_paths(masked.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .readonly_paths(ro.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .build()
            .unwrap();
        SpecBuilder::default()
            .root(
                RootBuilder::default()
                    .path("rootfs")
                    .readonly(readonly)
                    .build()
                    .unwrap(),
            )
            .mounts(vec![])
            .linux(linux)
            .build()
            .unwrap()
    }

    const BIND: MsFlags = MsFlags::MS_BIND;

    #[test]
    fn masked_files_get_dev_null_and_directories_a_readonly_tmpfs() {
        let sys = RecordingSyscall::default();
        sys.fail_when(
            |c| matches!(c, Call::Mount(Some(s), t, ..) if s.as_os_str() == "/dev/null" && t.as_os_str() == "/proc/acpi"),
            nix::Error::ENOTDIR,
        );
        sys.fail_when(
            |c| matches!(c, Call::Mount(_, t, ..) if t.as_os_str() == "/proc/missing"),
            nix::Error::ENOENT,
        );
        let s = spec(
            false,
            "",
            &["/proc/kcore", "/proc/acpi", "/proc/missing"],
            &[],
        );
        finalize(&sys, &fake_host(), &s).unwrap();
        assert_eq!(
            sys.calls(),
            [
                mnt(Some("/dev/null"), "/proc/kcore", None, BIND),
                mnt(Some("/dev/null"), "/proc/acpi", None, BIND),
                mnt(
                    Some("tmpfs"),
                    "/proc/acpi",
                    Some("tmpfs"),
                    MsFlags::MS_RDONLY
                ),
                mnt(Some("/dev/null"), "/proc/missing", None, BIND),
            ]
        );
    }

    #[test]
    fn readonly_paths_bind_then_remount_and_skip_missing() {
        let sys = RecordingSyscall::default();
        sys.fail_when(
            |c| matches!(c, Call::Mount(_, t, ..) if t.as_os_str() == "/proc/bus"),
            nix::Error::ENOENT,
        );
        let s = spec(false, "", &[], &["/proc/bus", "/proc/sys"]);
        finalize(&sys, &fake_host(), &s).unwrap();
        let ro = BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC;
        assert_eq!(
            sys.calls(),
            [
                mnt(Some("/proc/bus"), "/proc/bus", None, BIND | MsFlags::MS_REC),
                mnt(Some("/proc/sys"), "/proc/sys", None, BIND | MsFlags::MS_REC),
                mnt(Some("/proc/sys"), "/proc/sys", None, ro),
            ]
        );
    }

    #[test]
    fn readonly_root_comes_first_and_propagation_last() {
        let sys = RecordingSyscall::default();
        let s = spec(true, "rshared", &["/proc/kcore"], &["/proc/sys"]);
        finalize(&sys, &fake_host(), &s).unwrap();
        let calls = sys.calls();
        assert_eq!(calls.len(), 5);
        let ro = BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        assert_eq!(calls[0], mnt(None, "/", None, ro));
        let shared = MsFlags::MS_SHARED | MsFlags::MS_REC;
        assert_eq!(calls[4], mnt(None, "/", None, shared));
    }

    #[test]
    fn readonly_root_keeps_locked_flags_on_eperm() {
        let sys = RecordingSyscall::default();
        let first = BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        sys.fail_when(
            |c| {
                let first = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
                matches!(c, Call::Mount(_, _, _, f, _) if *f == first)
            },
            nix::Error::EPERM,
        );
        let host = crate::container::rootfs::host::Host {
            locked_flags: |_| MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            ..fake_host()
        };
        finalize(&sys, &host, &spec(true, "", &[], &[])).unwrap();
        assert_eq!(
            sys.calls(),
            [
                mnt(None, "/", None, first),
                mnt(
                    None,
                    "/",
                    None,
                    first | MsFlags::MS_NOSUID | MsFlags::MS_NODEV
                ),
            ]
        );
        // Nothing more to keep: the EPERM stands, naming root.readonly.
        let sys = RecordingSyscall::default();
        sys.fail_when(|c| matches!(c, Call::Mount(..)), nix::Error::EPERM);
        let err = finalize(&sys, &fake_host(), &spec(true, "", &[], &[])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "root.readonly: remount / read-only: EPERM: Operation not permitted"
        );
    }

    #[test]
    fn dev_is_remounted_readonly_when_asked() {
        let dev = MountBuilder::default()
            .destination("/dev/")
            .typ("tmpfs")
            .source("tmpfs")
            .options(vec!["nosuid".to_string(), "ro".into(), "mode=755".into()])
            .build()
            .unwrap();
        let mut s = spec(false, "", &[], &[]);
        s.set_mounts(Some(vec![dev]));
        let sys = RecordingSyscall::default();
        finalize(&sys, &fake_host(), &s).unwrap();
        let f = MsFlags::MS_NOSUID | MsFlags::MS_RDONLY | MsFlags::MS_REMOUNT;
        assert_eq!(sys.calls(), [mnt(None, "/dev", None, f)]);
    }

    #[test]
    fn failures_name_the_path_field() {
        let sys = RecordingSyscall::default();
        sys.fail_when(
            |c| matches!(c, Call::Mount(_, t, ..) if t.as_os_str() == "/proc/kcore"),
            nix::Error::EACCES,
        );
        let err = finalize(
            &sys,
            &fake_host(),
            &spec(false, "", &["/a", "/proc/kcore"], &[]),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "linux.maskedPaths[1]: mask /proc/kcore: EACCES: Permission denied"
        );
        let sys = RecordingSyscall::default();
        sys.fail_when(
            |c| matches!(c, Call::Mount(_, _, _, f, _) if f.contains(MsFlags::MS_REMOUNT)),
            nix::Error::EPERM,
        );
        let err = finalize(&sys, &fake_host(), &spec(false, "", &[], &["/proc/sys"])).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("linux.readonlyPaths[0]: make /proc/sys read-only: EPERM"));
    }
}
