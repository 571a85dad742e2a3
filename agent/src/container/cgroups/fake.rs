//! A fake cgroupfs for tests: a temporary directory with the interface files a cgroup2
//! mount would show, so the manager runs without root and without touching the host's
//! cgroups. Unlike the kernel it does not make the files of a new directory by itself:
//! [`FakeCgroupFs::cgroup`] creates a cgroup and fills it in.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use super::Cgroup;

/// The controllers the fake root offers and enables for its children.
pub(crate) const CONTROLLERS: &str = "cpuset cpu io memory hugetlb pids";

/// The interface files of a fresh child cgroup with every controller enabled, as the kernel
/// shows them (io.weight and the hugetlb sizes vary with the kernel).
pub(crate) const LEAF_FILES: &[(&str, &str)] = &[
    ("cgroup.controllers", "cpuset cpu io memory hugetlb pids\n"),
    ("cgroup.subtree_control", ""),
    ("cgroup.procs", ""),
    ("cgroup.events", "populated 0\nfrozen 0\n"),
    ("cgroup.freeze", "0\n"),
    ("cgroup.kill", ""),
    ("cgroup.max.depth", "max\n"),
    ("cpu.weight", "100\n"),
    ("cpu.idle", "0\n"),
    ("cpu.max", "max 100000\n"),
    ("cpu.max.burst", "0\n"),
    (
        "cpu.stat",
        "usage_usec 0\nuser_usec 0\nsystem_usec 0\nnr_periods 0\nnr_throttled 0\nthrottled_usec 0\n",
    ),
    ("cpuset.cpus", "\n"),
    ("cpuset.mems", "\n"),
    ("memory.current", "0\n"),
    ("memory.max", "max\n"),
    ("memory.high", "max\n"),
    ("memory.low", "0\n"),
    ("memory.oom.group", "0\n"),
    ("memory.swap.current", "0\n"),
    ("memory.swap.max", "max\n"),
    ("memory.stat", "anon 0\nfile 0\n"),
    (
        "memory.events",
        "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
    ),
    ("pids.current", "0\n"),
    ("pids.max", "max\n"),
    ("io.max", ""),
    ("io.stat", ""),
    ("io.weight", "default 100\n"),
    ("hugetlb.2MB.max", "max\n"),
    ("hugetlb.2MB.rsvd.max", "max\n"),
    ("hugetlb.1GB.max", "max\n"),
];

/// A temporary cgroup2 root, deleted on drop.
#[derive(Debug)]
pub(crate) struct FakeCgroupFs {
    root: PathBuf,
}

impl FakeCgroupFs {
    /// A root cgroup with every controller of [`CONTROLLERS`] offered and enabled.
    pub(crate) fn new() -> FakeCgroupFs {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let root = std::env::temp_dir().join(format!(
            "moat-fake-cgroupfs-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).unwrap();
        let fake = FakeCgroupFs { root };
        fake.write("", "cgroup.controllers", &format!("{CONTROLLERS}\n"));
        fake.write("", "cgroup.subtree_control", &format!("{CONTROLLERS}\n"));
        fake.write("", "cgroup.procs", "1\n");
        fake
    }

    /// The root directory, to pass to [`Cgroup::create`].
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// Creates the cgroup `rel` and fills it with [`LEAF_FILES`], as the kernel would.
    pub(crate) fn cgroup(&self, rel: &str) -> Cgroup {
        let cg = Cgroup::create(&self.root, rel).unwrap();
        for (name, content) in LEAF_FILES {
            fs::write(cg.path().join(name), content).unwrap();
        }
        cg
    }

    /// Makes a directory `rel` (and its parents) without any files in it.
    pub(crate) fn mkdir(&self, rel: &str) {
        fs::create_dir_all(self.root.join(rel)).unwrap();
    }

    /// Sets the content of `rel/name`, creating it.
    pub(crate) fn write(&self, rel: &str, name: &str, content: &str) {
        fs::write(self.root.join(rel).join(name), content).unwrap();
    }

    /// The content of `rel/name`.
    pub(crate) fn read(&self, rel: &str, name: &str) -> String {
        fs::read_to_string(self.root.join(rel).join(name)).unwrap()
    }

    /// Deletes `rel/name`, as when its controller is not enabled.
    pub(crate) fn remove(&self, rel: &str, name: &str) {
        fs::remove_file(self.root.join(rel).join(name)).unwrap();
    }
}

impl Drop for FakeCgroupFs {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}
