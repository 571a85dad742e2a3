//! The few facts about the running system that rootfs setup decides on, read once by
//! [`Host::probe`]; unit tests build a [`Host`] by hand so that the call sequence does not
//! depend on the machine running them.

use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use oci_spec::runtime::{LinuxNamespaceType, Spec};

/// What rootfs setup needs to know about the system it runs on.
#[derive(Debug, Clone)]
pub(crate) struct Host {
    /// mknod(2) is not permitted (a user namespace): device nodes are bind-mounted from the
    /// agent's `/dev` instead.
    pub in_userns: bool,
    /// `/proc/kcore` exists, so `/dev/core` gets a symlink to it.
    pub kcore: bool,
    /// The flags of the mount holding a path that a bind remount must keep (in a user
    /// namespace the kernel locks `ro`, `nosuid`, `nodev`, `noexec` of inherited mounts).
    pub locked_flags: fn(&Path) -> MsFlags,
    /// The mount point of the mount that holds a path (from `/proc/self/mountinfo`).
    pub mount_point_of: fn(&Path) -> Option<PathBuf>,
    /// The agent-side directory of this process's cgroup, bound at the container's cgroup
    /// mount when mounting cgroup2 is refused.
    pub own_cgroup: fn() -> PathBuf,
}

impl Host {
    /// Reads the facts from the running system.
    pub fn probe(spec: &Spec) -> Self {
        let userns_in_spec = spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_ref())
            .is_some_and(|ns| ns.iter().any(|n| n.typ() == LinuxNamespaceType::User));
        Self {
            in_userns: userns_in_spec || running_in_userns(),
            kcore: Path::new("/proc/kcore").exists(),
            locked_flags: statvfs_flags,
            mount_point_of,
            own_cgroup,
        }
    }
}

/// Whether this process is in a user namespace other than the initial one (whose uid map is
/// the identity over all 2^32-1 ids).
fn running_in_userns() -> bool {
    match std::fs::read_to_string("/proc/self/uid_map") {
        Ok(map) => {
            let fields: Vec<&str> = map.split_whitespace().collect();
            fields != ["0", "0", "4294967295"]
        }
        Err(_) => false,
    }
}

/// The lockable flags of the mount holding `path`, from statvfs(3).
fn statvfs_flags(path: &Path) -> MsFlags {
    use nix::sys::statvfs::FsFlags;
    let Ok(st) = nix::sys::statvfs::statvfs(path) else {
        return MsFlags::empty();
    };
    let f = st.flags();
    let mut out = MsFlags::empty();
    for (st_flag, ms_flag) in [
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
    ] {
        if f.contains(st_flag) {
            out |= ms_flag;
        }
    }
    out
}

fn mount_point_of(path: &Path) -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    longest_mount_prefix(&info, path)
}

/// The longest mount point in `mountinfo` that holds `path`.
pub(crate) fn longest_mount_prefix(mountinfo: &str, path: &Path) -> Option<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_octal(field)))
        .filter(|mp| path.starts_with(mp))
        .max_by_key(|mp| mp.components().count())
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let oct = std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(oct, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `/sys/fs/cgroup` plus this process's cgroup v2 path from `/proc/self/cgroup`.
fn own_cgroup() -> PathBuf {
    let base = PathBuf::from("/sys/fs/cgroup");
    let Ok(text) = std::fs::read_to_string("/proc/self/cgroup") else {
        return base;
    };
    match text.lines().find_map(|l| l.strip_prefix("0::")) {
        Some(rel) => base.join(rel.trim_start_matches('/')),
        None => base,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_mount_holding_a_path() {
        let info = "22 1 0:21 / / rw shared:1 - ext4 /dev/vda rw\n\
                    30 22 0:25 / /run rw shared:2 - tmpfs tmpfs rw\n\
                    31 30 0:26 / /run/moat\\040x rw - virtiofs rootfs rw\n";
        let f = |p: &str| longest_mount_prefix(info, Path::new(p));
        assert_eq!(
            f("/run/moat x/c1/rootfs"),
            Some(PathBuf::from("/run/moat x"))
        );
        assert_eq!(f("/run/other"), Some(PathBuf::from("/run")));
        assert_eq!(f("/runner"), Some(PathBuf::from("/")));
    }

    #[test]
    fn unescapes_mountinfo_octal() {
        assert_eq!(unescape_octal("a\\040b\\134c"), "a b\\c");
        assert_eq!(unescape_octal("tail\\04"), "tail\\04");
    }
}
