//! Resolving a container path inside the rootfs on the host side, before pivot_root: every
//! symlink met on the way is read and followed as if the rootfs were `/`, and `..` never
//! climbs above it. A destination such as `/etc/x` where the image's `/etc` is a symlink to
//! `/../../host/etc` therefore lands in `<rootfs>/host/etc`, never outside.
//!
//! This reads the real filesystem (lstat, readlink) with `std::fs`; it creates nothing.
//! Components that do not exist yet are taken as they are, so that the caller can create
//! them. Like runc's `FollowSymlinkInScope`, it resolves a path once, just before use: a
//! process that could change the rootfs concurrently could race it (nothing in the
//! container runs yet while the rootfs is set up).

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};

/// The most symlinks followed for one path (Linux's `MAXSYMLINKS` is 40; runc's
/// securejoin allows 255).
pub const MAX_SYMLINKS: usize = 255;

/// Joins `unsafe_path` (a container path) to `root`, resolving symlinks inside `root`.
///
/// Fails with `ELOOP` after [`MAX_SYMLINKS`] links, or with the errno of an lstat or readlink
/// that fails for a reason other than the path not existing.
pub fn secure_join(root: &Path, unsafe_path: &Path) -> Result<PathBuf, nix::Error> {
    let mut pending: VecDeque<OsString> = names(unsafe_path);
    // The resolved path below `root`, one name per entry; `..` pops, never past `root`.
    let mut resolved: Vec<OsString> = Vec::new();
    let mut links = 0;
    while let Some(name) = pending.pop_front() {
        if name == ".." {
            resolved.pop();
            continue;
        }
        let candidate = join(root, &resolved).join(&name);
        let meta = match std::fs::symlink_metadata(&candidate) {
            Ok(m) => m,
            // Not there yet (or below a file): the caller creates it, or fails to.
            Err(e) if e.kind() == ErrorKind::NotFound => {
                resolved.push(name);
                continue;
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
                resolved.push(name);
                continue;
            }
            Err(e) => return Err(errno_of(&e)),
        };
        if !meta.file_type().is_symlink() {
            resolved.push(name);
            continue;
        }
        links += 1;
        if links > MAX_SYMLINKS {
            return Err(nix::Error::ELOOP);
        }
        let target = std::fs::read_link(&candidate).map_err(|e| errno_of(&e))?;
        if target.is_absolute() {
            resolved.clear();
        }
        for n in names(&target).into_iter().rev() {
            pending.push_front(n);
        }
    }
    Ok(join(root, &resolved))
}

/// The names of `p`, with `.` and the root dropped and `..` kept.
fn names(p: &Path) -> VecDeque<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

fn join(root: &Path, names: &[OsString]) -> PathBuf {
    let mut p = root.to_path_buf();
    p.extend(names);
    p
}

fn errno_of(e: &std::io::Error) -> nix::Error {
    nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// `p` with `.` and `..` resolved by name alone; `None` if `..` would climb above `/`.
/// Relative paths are taken from `/`.
pub fn clean(p: &Path) -> Option<PathBuf> {
    let mut out: Vec<OsString> = Vec::new();
    for n in names(p) {
        if n == ".." {
            out.pop()?;
        } else {
            out.push(n);
        }
    }
    Some(join(Path::new("/"), &out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::rootfs::testutil::TempDir;
    use std::os::unix::fs::symlink;

    #[test]
    fn plain_and_missing_paths_join_below_root() {
        let t = TempDir::new();
        std::fs::create_dir_all(t.path().join("etc")).unwrap();
        let j = |p: &str| secure_join(t.path(), Path::new(p)).unwrap();
        assert_eq!(j("/etc/hosts"), t.path().join("etc/hosts"));
        assert_eq!(j("/a/b/./c"), t.path().join("a/b/c"));
        assert_eq!(j("/"), t.path());
        assert_eq!(j("relative/x"), t.path().join("relative/x"));
    }

    #[test]
    fn dot_dot_cannot_climb_out() {
        let t = TempDir::new();
        let j = |p: &str| secure_join(t.path(), Path::new(p)).unwrap();
        assert_eq!(j("/../../etc/passwd"), t.path().join("etc/passwd"));
        assert_eq!(j("/a/../../../b"), t.path().join("b"));
        assert_eq!(j("../x"), t.path().join("x"));
    }

    #[test]
    fn absolute_symlinks_resolve_inside_the_root() {
        let t = TempDir::new();
        std::fs::create_dir_all(t.path().join("real")).unwrap();
        symlink("/real", t.path().join("abs")).unwrap();
        symlink("/etc", t.path().join("hostetc")).unwrap();
        symlink("/../../../../etc", t.path().join("climb")).unwrap();
        let j = |p: &str| secure_join(t.path(), Path::new(p)).unwrap();
        assert_eq!(j("/abs/file"), t.path().join("real/file"));
        assert_eq!(j("/hostetc/passwd"), t.path().join("etc/passwd"));
        assert_eq!(j("/climb/shadow"), t.path().join("etc/shadow"));
    }

    #[test]
    fn relative_symlinks_resolve_from_their_directory_and_stay_inside() {
        let t = TempDir::new();
        std::fs::create_dir_all(t.path().join("a/b")).unwrap();
        symlink("../c", t.path().join("a/b/up")).unwrap();
        symlink("../../../../../..", t.path().join("a/out")).unwrap();
        let j = |p: &str| secure_join(t.path(), Path::new(p)).unwrap();
        assert_eq!(j("/a/b/up/d"), t.path().join("a/c/d"));
        assert_eq!(j("/a/out/tmp"), t.path().join("tmp"));
        // A final symlink is resolved too: the mount lands on what it names.
        assert_eq!(j("/a/b/up"), t.path().join("a/c"));
    }

    #[test]
    fn symlink_loops_end_in_eloop() {
        let t = TempDir::new();
        symlink("/loop2", t.path().join("loop1")).unwrap();
        symlink("/loop1", t.path().join("loop2")).unwrap();
        symlink("self", t.path().join("self")).unwrap();
        assert_eq!(
            secure_join(t.path(), Path::new("/loop1/x")),
            Err(nix::Error::ELOOP)
        );
        assert_eq!(
            secure_join(t.path(), Path::new("/self")),
            Err(nix::Error::ELOOP)
        );
    }

    #[test]
    fn paths_below_a_file_are_taken_as_they_are() {
        let t = TempDir::new();
        std::fs::write(t.path().join("file"), b"").unwrap();
        assert_eq!(
            secure_join(t.path(), Path::new("/file/x")).unwrap(),
            t.path().join("file/x")
        );
    }

    #[test]
    fn clean_resolves_by_name() {
        let c = |p: &str| clean(Path::new(p));
        assert_eq!(c("/dev/"), Some(PathBuf::from("/dev")));
        assert_eq!(c("//dev/./pts/.."), Some(PathBuf::from("/dev")));
        assert_eq!(c("/a/../b"), Some(PathBuf::from("/b")));
        assert_eq!(c("/"), Some(PathBuf::from("/")));
        assert_eq!(c("/a/../../b"), None);
        assert_eq!(c("/.."), None);
    }
}
