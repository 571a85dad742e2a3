//! `moat boot`: start the guest, wait for its agent, stop it, and say how long it took.
//! The README's first command and the boot smoke test both use it.

use std::path::Path;
use std::time::Duration;

use crate::host;
use crate::paths::GuestPaths;
use crate::qemu::{Accel, QemuError, QemuVm, QemuVmConfig};

/// The line the agent prints on the console once it serves requests.
pub const READY_MARKER: &str = "moat-agent: ready";

/// What one boot measured.
#[derive(Debug, Clone)]
pub struct BootReport {
    /// The agent's ready line.
    pub ready_line: String,
    /// QEMU start to the ready line.
    pub to_ready: Duration,
    /// QEMU start to QEMU exit.
    pub to_exit: Duration,
}

/// A failed boot.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The VM failed.
    #[error(transparent)]
    Qemu(#[from] QemuError),
    /// QEMU ended with a failure status.
    #[error("QEMU exited with {0} after the agent was ready (expected 0)")]
    BadExit(std::process::ExitStatus),
}

/// Boots the guest once in `workdir` (console log there), waits for the agent to be ready,
/// lets it power off, and checks that QEMU exits 0.
pub fn boot_once(
    paths: &GuestPaths,
    workdir: &Path,
    timeout: Duration,
) -> Result<BootReport, BootError> {
    let cfg = QemuVmConfig {
        qemu: paths.qemu.clone(),
        kernel: paths.kernel.clone(),
        initramfs: paths.initramfs.clone(),
        accel: Accel::for_host(host::detect_kvm()),
        vcpus: 1,
        memory_mib: 256,
        console_log: workdir.join("console.log"),
        cmdline_extra: vec!["moat.poweroff_after_ready=1".into()],
        vhost_user_vsock: None,
        vhost_user_fs: None,
    };
    let mut vm = QemuVm::spawn(&cfg)?;
    let ready_line = vm.wait_for_console(READY_MARKER, timeout)?;
    let to_ready = vm.started().elapsed();
    let status = vm.wait_exit(timeout)?;
    let to_exit = vm.started().elapsed();
    if !status.success() {
        return Err(BootError::BadExit(status));
    }
    Ok(BootReport {
        ready_line,
        to_ready,
        to_exit,
    })
}

/// The median of some durations (the lower middle for an even count).
pub fn median(mut v: Vec<Duration>) -> Option<Duration> {
    v.sort();
    v.get(v.len().saturating_sub(1) / 2).copied()
}

/// Seconds with millisecond precision, for printing.
pub fn secs(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

/// A throwaway directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    /// Creates `$TMPDIR/moat-<tag>-<pid>-<n>`.
    pub fn new(tag: &str) -> std::io::Result<Self> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("moat-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&p)?;
        Ok(Self(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        let ms = |v: &[u64]| {
            v.iter()
                .map(|m| Duration::from_millis(*m))
                .collect::<Vec<_>>()
        };
        assert_eq!(median(ms(&[5, 1, 3])), Some(Duration::from_millis(3)));
        assert_eq!(median(ms(&[4, 1, 3, 2])), Some(Duration::from_millis(2)));
        assert_eq!(median(vec![]), None);
    }
}
