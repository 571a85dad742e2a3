//! What the agent does as PID 1 before it serves anything: the guest's base mounts, the
//! cgroup v2 hierarchy with its controllers enabled, and the ways to end the VM.

use std::fs;
use std::path::Path;

use nix::mount::{mount, MsFlags};
use nix::sys::stat::Mode;

/// A failure of the guest's early setup; always fatal.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// A mount failed.
    #[error("mounting {fstype} on {target}: {source}")]
    Mount {
        /// Mount point.
        target: &'static str,
        /// Filesystem type.
        fstype: &'static str,
        /// The errno.
        source: nix::Error,
    },
    /// Creating a directory or link failed.
    #[error("creating {path}: {source}")]
    Create {
        /// What was being created.
        path: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// The cgroup v2 controllers could not be enabled.
    #[error("enabling cgroup controllers {controllers:?}: {source}")]
    Cgroup {
        /// The controllers asked for.
        controllers: String,
        /// The error.
        source: std::io::Error,
    },
}

/// One mount of the base layout.
struct BaseMount {
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: &'static str,
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// The guest's base mounts, in order (a parent before its children).
const BASE_MOUNTS: &[BaseMount] = &[
    BaseMount {
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
    BaseMount {
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
    BaseMount {
        target: "/dev",
        fstype: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
        data: "mode=0755",
    },
    BaseMount {
        target: "/dev/pts",
        fstype: "devpts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: "gid=5,mode=0620,ptmxmode=0666",
    },
    BaseMount {
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: "mode=1777",
    },
    BaseMount {
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: NOSUID_NODEV_NOEXEC,
        data: "nsdelegate",
    },
    BaseMount {
        target: "/run",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: "mode=0755",
    },
    BaseMount {
        target: "/tmp",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: "mode=1777",
    },
];

/// The directories the initramfs ships empty so that the base mounts have somewhere to go.
/// The initramfs builder uses this list; the rest are created on the mounted filesystems.
pub const INITRAMFS_DIRS: &[&str] = &["proc", "sys", "dev", "run", "tmp", "mnt"];

/// Mounts the base filesystems and creates the usual `/dev` links.
pub fn mount_base() -> Result<(), InitError> {
    for m in BASE_MOUNTS {
        if !Path::new(m.target).is_dir() {
            nix::unistd::mkdir(m.target, Mode::from_bits_truncate(0o755)).map_err(|e| {
                InitError::Create {
                    path: m.target,
                    source: e.into(),
                }
            })?;
        }
        let data = (!m.data.is_empty()).then_some(m.data);
        mount(Some(m.fstype), m.target, Some(m.fstype), m.flags, data).map_err(|source| {
            InitError::Mount {
                target: m.target,
                fstype: m.fstype,
                source,
            }
        })?;
    }
    for (link, to) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
    ] {
        if fs::symlink_metadata(link).is_err() {
            std::os::unix::fs::symlink(to, link)
                .map_err(|source| InitError::Create { path: link, source })?;
        }
    }
    Ok(())
}

/// Enables every controller the kernel offers for the children of the root cgroup, so that
/// containers' cgroups can use cpu, memory, pids, io, cpuset and hugetlb limits.
pub fn enable_cgroup_controllers() -> Result<String, InitError> {
    let root = Path::new("/sys/fs/cgroup");
    let available = fs::read_to_string(root.join("cgroup.controllers")).map_err(|source| {
        InitError::Cgroup {
            controllers: String::new(),
            source,
        }
    })?;
    let wanted = controller_request(&available);
    if !wanted.is_empty() {
        fs::write(root.join("cgroup.subtree_control"), &wanted).map_err(|source| {
            InitError::Cgroup {
                controllers: wanted.clone(),
                source,
            }
        })?;
    }
    Ok(available.trim().to_string())
}

/// Turns the content of `cgroup.controllers` into a `cgroup.subtree_control` request.
fn controller_request(available: &str) -> String {
    available
        .split_ascii_whitespace()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Set on the agent's re-exec after [`switch_root`], so that it happens once.
const SWITCHED_ENV: &str = "MOAT_AGENT_SWITCHED";

/// Whether the agent still runs on the initramfs's own root.
pub fn on_initramfs() -> bool {
    std::env::var_os(SWITCHED_ENV).is_none()
}

/// Moves the agent off the initramfs root onto a tmpfs, then re-executes it there.
///
/// `pivot_root(2)` refuses to work when the caller's root is the initial rootfs, and every
/// container's setup uses it. So, as `switch_root` does: mount a tmpfs, copy `/init` into it,
/// delete the initramfs copy (freeing its memory), move the tmpfs over `/`, chroot into it,
/// and exec the new `/init`. Returns only on failure.
pub fn switch_root() -> InitError {
    const NEW: &str = "/newroot";
    let step = || -> Result<std::convert::Infallible, InitError> {
        let create = |path: &'static str| move |source| InitError::Create { path, source };
        fs::create_dir_all(NEW).map_err(create(NEW))?;
        mount(
            Some("tmpfs"),
            NEW,
            Some("tmpfs"),
            MsFlags::empty(),
            Some("mode=0755"),
        )
        .map_err(|source| InitError::Mount {
            target: NEW,
            fstype: "tmpfs",
            source,
        })?;
        fs::copy("/init", "/newroot/init").map_err(create("/newroot/init"))?;
        for d in INITRAMFS_DIRS {
            fs::create_dir_all(Path::new(NEW).join(d)).map_err(create("/newroot/<dir>"))?;
        }
        let _ = fs::remove_file("/init");
        nix::unistd::chdir(NEW).map_err(|e| InitError::Create {
            path: NEW,
            source: e.into(),
        })?;
        mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>).map_err(|source| {
            InitError::Mount {
                target: "/",
                fstype: "tmpfs (move)",
                source,
            }
        })?;
        nix::unistd::chroot(".").map_err(|e| InitError::Create {
            path: "/ (chroot)",
            source: e.into(),
        })?;
        nix::unistd::chdir("/").map_err(|e| InitError::Create {
            path: "/",
            source: e.into(),
        })?;
        let init = std::ffi::CString::new("/init").expect("no NUL");
        let env = std::ffi::CString::new(format!("{SWITCHED_ENV}=1")).expect("no NUL");
        let e = nix::unistd::execve(&init, &[&init], &[&env]).unwrap_err();
        Err(InitError::Create {
            path: "/init (re-exec)",
            source: e.into(),
        })
    };
    match step() {
        Err(e) => e,
        Ok(never) => match never {},
    }
}

/// Mounts the sandbox's virtio-fs share `tag` at `dir` (created if needed).
pub fn mount_share(tag: &str, dir: &'static str) -> Result<(), InitError> {
    std::fs::create_dir_all(dir).map_err(|source| InitError::Create { path: dir, source })?;
    mount(
        Some(tag),
        dir,
        Some("virtiofs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .map_err(|source| InitError::Mount {
        target: dir,
        fstype: "virtiofs",
        source,
    })
}

/// Ends the VM: syncs, then resets the machine.
///
/// A `-M microvm` guest has no ACPI power button, so "power off" is a reset that the VMM
/// treats as the end of the VM: QEMU with `-no-reboot` exits 0, and the guest kernel is
/// booted with `reboot=t` so the reset is an immediate triple fault. The built-in VMM ends
/// the VM on the same reset.
pub fn power_off() -> ! {
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    // Not PID 1 or not allowed: nothing more can be done than to stop here.
    loop {
        std::thread::park();
    }
}

/// Reports a fatal error on the console and ends the VM instead of hanging.
pub fn fatal(what: &str) -> ! {
    crate::error!("fatal: {what}; powering off");
    power_off()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controller_request_enables_each_available_controller() {
        assert_eq!(
            controller_request("cpuset cpu io memory hugetlb pids\n"),
            "+cpuset +cpu +io +memory +hugetlb +pids"
        );
        assert_eq!(controller_request("\n"), "");
    }

    #[test]
    fn base_mounts_put_parents_first() {
        for (i, m) in BASE_MOUNTS.iter().enumerate() {
            for earlier in &BASE_MOUNTS[..i] {
                assert!(
                    !earlier.target.starts_with(&format!("{}/", m.target)),
                    "{} is mounted before its parent {}",
                    earlier.target,
                    m.target
                );
            }
        }
    }

    #[test]
    fn initramfs_dirs_cover_top_level_mount_points() {
        for m in BASE_MOUNTS {
            let top = m.target.trim_start_matches('/').split('/').next().unwrap();
            assert!(
                INITRAMFS_DIRS.contains(&top),
                "{top} missing from INITRAMFS_DIRS"
            );
        }
    }
}
