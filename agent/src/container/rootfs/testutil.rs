//! Helpers for the unit tests: a temporary directory to play the rootfs, and a [`Host`] that
//! does not depend on the machine running the tests.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use nix::mount::MsFlags;

use super::host::Host;

/// A directory under the system temp dir, removed when dropped.
#[derive(Debug)]
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("moat-rootfs-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("creating a temporary directory");
        // Canonical, so that the paths the code computes compare equal to ours.
        Self(
            p.canonicalize()
                .expect("canonicalizing the temporary directory"),
        )
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// No user namespace, `/proc/kcore` present, no locked flags, the rootfs on `/`, and the
/// own cgroup at the system temp dir (which exists, so a bind of it can be planned).
pub(crate) fn fake_host() -> Host {
    Host {
        in_userns: false,
        kcore: true,
        locked_flags: |_| MsFlags::empty(),
        mount_point_of: |_| Some(PathBuf::from("/")),
        own_cgroup: std::env::temp_dir,
    }
}
