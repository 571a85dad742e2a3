//! OCI bundles for the host-integration tier: a busybox rootfs (from Debian's
//! `busybox-static`) with `moat-checker` in it, and a `config.json` that starts from
//! oci-spec's default `Spec` (what `runc spec` writes) and is changed per test.
//!
//! ```text
//! $TMPDIR/moat-bundle-<tag>-<pid>-<n>/
//!   config.json
//!   rootfs/bin/{busybox, sh -> busybox, ..., moat-checker}
//!   rootfs/{proc,sys,dev,tmp,etc,mnt,root}/
//! ```
//! The directory is removed when the [`Bundle`] is dropped.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use oci_spec::runtime::Spec;

/// Applets linked to busybox in every rootfs.
pub const APPLETS: &[&str] = &[
    "sh", "true", "false", "echo", "cat", "ls", "sleep", "mkdir", "id", "hostname", "env", "kill",
    "test", "touch", "rm", "pwd", "readlink", "stat", "uname", "grep", "mount", "ps",
];

/// Where a bundle's checker is inside the container.
pub const CHECKER_IN_CONTAINER: &str = "/bin/moat-checker";

/// The cargo target directory: `$CARGO_TARGET_DIR`, else the one holding this test binary
/// (`<target>/debug/deps/<test>`).
pub fn target_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    std::env::current_exe()
        .ok()
        .and_then(|e| e.ancestors().nth(3).map(Path::to_path_buf))
        .unwrap_or_else(|| crate::repo_root().join("target"))
}

fn built(env: &str, default: PathBuf, how: &str) -> PathBuf {
    let p = std::env::var_os(env).map_or(default, PathBuf::from);
    assert!(
        p.is_file(),
        "{} is missing: run `{how}` (or set {env}); scripts/test.sh does",
        p.display()
    );
    p
}

/// The agent binary for host mode (`moat-agent run`): `$MOAT_AGENT_BIN` or
/// `<target>/debug/moat-agent`.
pub fn agent_bin() -> PathBuf {
    built(
        "MOAT_AGENT_BIN",
        target_dir().join("debug/moat-agent"),
        "cargo build -p moat-agent",
    )
}

/// The static checker: `$MOAT_CHECKER_BIN` or `<target>/x86_64-unknown-linux-musl/release/
/// moat-checker`.
pub fn checker_bin() -> PathBuf {
    built(
        "MOAT_CHECKER_BIN",
        target_dir().join("x86_64-unknown-linux-musl/release/moat-checker"),
        "cargo build -p moat-tests --bin moat-checker --release --target x86_64-unknown-linux-musl",
    )
}

/// Debian's static busybox, failing the test with what to install when it is missing or
/// is the dynamic build (which would not run in a rootfs without libc).
pub fn busybox_bin() -> PathBuf {
    let p = PathBuf::from("/bin/busybox");
    let bytes = std::fs::read(&p).unwrap_or_default();
    assert!(
        is_static_elf(&bytes),
        "{} is missing or not static: run `apt-get install busybox-static` (scripts/setup-host.sh does)",
        p.display()
    );
    p
}

/// Whether `elf` is a 64-bit little-endian ELF file without a `PT_INTERP` (no dynamic
/// loader).
pub fn is_static_elf(elf: &[u8]) -> bool {
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    };
    if elf.get(..6) != Some(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    (0..phnum as usize).all(|i| {
        let at = phoff as usize + i * phentsize as usize;
        u32_at(at).is_some_and(|t| t != 3 /* PT_INTERP */)
    })
}

/// One bundle in a temporary directory.
#[derive(Debug)]
pub struct Bundle {
    dir: PathBuf,
    /// The spec written to `config.json` by [`Bundle::write`]; change it freely.
    pub spec: Spec,
}

impl Bundle {
    /// Creates the directory, the rootfs and the default spec (not yet written). The spec's
    /// process runs `moat-checker` with no expectations; see [`Bundle::check`].
    pub fn new(tag: &str) -> io::Result<Self> {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("moat-bundle-{tag}-{}-{n}", std::process::id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        let b = Bundle {
            dir,
            spec: Spec::default(),
        };
        b.make_rootfs()?;
        Ok(b)
    }

    fn make_rootfs(&self) -> io::Result<()> {
        let root = self.rootfs();
        for d in ["bin", "proc", "sys", "dev", "tmp", "etc", "mnt", "root"] {
            std::fs::create_dir_all(root.join(d))?;
        }
        std::fs::copy(busybox_bin(), root.join("bin/busybox"))?;
        for a in APPLETS {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(a))?;
        }
        std::fs::copy(checker_bin(), root.join("bin/moat-checker"))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
        std::fs::write(
            root.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/tmp:/bin/sh\n",
        )?;
        std::fs::write(root.join("etc/group"), "root:x:0:\nuser:x:1000:\n")?;
        Ok(())
    }

    /// The bundle directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The rootfs directory (on the host).
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    /// Sets the process's arguments.
    pub fn args<S: AsRef<str>>(&mut self, args: &[S]) -> &mut Self {
        let mut p = self.spec.process().clone().unwrap_or_default();
        p.set_args(Some(args.iter().map(|a| a.as_ref().to_string()).collect()));
        self.spec.set_process(Some(p));
        self
    }

    /// Makes the process `moat-checker` with these expectations.
    pub fn check<S: AsRef<str>>(&mut self, expectations: &[S]) -> &mut Self {
        let mut args = vec![CHECKER_IN_CONTAINER.to_string()];
        args.extend(expectations.iter().map(|e| e.as_ref().to_string()));
        self.args(&args)
    }

    /// Writes `config.json` from [`Bundle::spec`].
    pub fn write(&self) -> io::Result<()> {
        self.write_with(|_| {})
    }

    /// Writes `config.json` from [`Bundle::spec`] after `edit` changed its JSON (for specs
    /// the types cannot hold, such as an unknown capability).
    pub fn write_with(&self, edit: impl FnOnce(&mut serde_json::Value)) -> io::Result<()> {
        let mut v = serde_json::to_value(&self.spec).map_err(io::Error::other)?;
        edit(&mut v);
        let text = serde_json::to_string_pretty(&v).map_err(io::Error::other)?;
        std::fs::write(self.dir.join("config.json"), text)
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_elf_detection() {
        let mut elf = vec![0u8; 0x100];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[0x20] = 0x40; // phoff
        elf[0x36] = 0x38; // phentsize
        elf[0x38] = 2; // phnum
        elf[0x40] = 1; // PT_LOAD
        elf[0x78] = 6; // PT_PHDR
        assert!(is_static_elf(&elf));
        elf[0x78] = 3; // PT_INTERP
        assert!(!is_static_elf(&elf));
        assert!(!is_static_elf(b"#!/bin/sh\n"));
        assert!(!is_static_elf(&elf[..0x50]));
        // This test binary is dynamically linked (the gnu target).
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(!is_static_elf(&me));
    }

    #[test]
    fn default_spec_json_round_trips() {
        let v = serde_json::to_value(Spec::default()).unwrap();
        assert_eq!(v["root"]["path"], "rootfs");
        let back: Spec = serde_json::from_value(v).unwrap();
        assert_eq!(back, Spec::default());
    }
}
