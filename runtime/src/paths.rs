//! Where moat finds its guest and helpers: built-in defaults, overridden by environment
//! variables (a config file joins these with the CLI).

use std::path::PathBuf;

/// Where the setup script installs the guest kernel and initramfs.
pub const DEFAULT_SHARE_DIR: &str = "/usr/local/share/moat";

/// The guest's paths and the hypervisor binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestPaths {
    /// Uncompressed guest `vmlinux` (PVH entry).
    pub kernel: PathBuf,
    /// Uncompressed newc initramfs holding the agent.
    pub initramfs: PathBuf,
    /// `qemu-system-x86_64`.
    pub qemu: PathBuf,
    /// `moat-vmm`.
    pub moat_vmm: PathBuf,
}

impl GuestPaths {
    /// Defaults, with `MOAT_KERNEL`, `MOAT_INITRAMFS`, `MOAT_QEMU` and `MOAT_VMM` taking
    /// precedence.
    pub fn from_env() -> Self {
        Self::from_lookup(|k| std::env::var_os(k))
    }

    /// As [`Self::from_env`], with the environment given as a function (for tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<std::ffi::OsString>) -> Self {
        let or = |var: &str, default: PathBuf| get(var).map(PathBuf::from).unwrap_or(default);
        let share = get("MOAT_SHARE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SHARE_DIR));
        Self {
            kernel: or("MOAT_KERNEL", share.join("vmlinux")),
            initramfs: or("MOAT_INITRAMFS", share.join("initramfs.cpio")),
            qemu: or("MOAT_QEMU", PathBuf::from("qemu-system-x86_64")),
            moat_vmm: or("MOAT_VMM", PathBuf::from("moat-vmm")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_overrides_defaults() {
        let d = GuestPaths::from_lookup(|_| None);
        assert_eq!(d.kernel, PathBuf::from("/usr/local/share/moat/vmlinux"));
        let o = GuestPaths::from_lookup(|k| match k {
            "MOAT_SHARE_DIR" => Some("/opt/m".into()),
            "MOAT_KERNEL" => Some("/k".into()),
            _ => None,
        });
        assert_eq!(o.kernel, PathBuf::from("/k"));
        assert_eq!(o.initramfs, PathBuf::from("/opt/m/initramfs.cpio"));
    }
}
