//! What the host offers a VMM: hardware KVM, PVM-only KVM, or none.
//!
//! On the machines this project is developed on, `/dev/kvm` is backed by the PVM module,
//! which cannot run an ordinary guest kernel's user space (HOST-KVM.md). moat detects that
//! and uses QEMU with TCG instead of letting a user wait for a boot that cannot finish.

use std::path::Path;

/// What `/dev/kvm` is on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmKind {
    /// Backed by `kvm_intel` or `kvm_amd`: hardware virtualization.
    Hardware,
    /// Backed by `kvm_pvm` with no vmx/svm: only PVM-enlightened guests run natively.
    PvmOnly,
    /// `/dev/kvm` exists but no known backend is loaded.
    Unknown,
    /// No `/dev/kvm`.
    Absent,
}

impl KvmKind {
    /// A short description for `moat check`.
    pub fn describe(self) -> &'static str {
        match self {
            KvmKind::Hardware => "hardware KVM (kvm_intel/kvm_amd)",
            KvmKind::PvmOnly => {
                "PVM-only KVM (kvm_pvm, no vmx/svm): an ordinary guest cannot run user space"
            }
            KvmKind::Unknown => "/dev/kvm present, backend unknown",
            KvmKind::Absent => "no /dev/kvm",
        }
    }
}

/// Detects the KVM kind from the real host.
pub fn detect_kvm() -> KvmKind {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    classify_kvm(
        Path::new("/dev/kvm").exists(),
        |m| Path::new("/sys/module").join(m).exists(),
        &cpuinfo,
    )
}

/// The decision, separated from the file system so that it can be tested.
pub fn classify_kvm(dev_kvm: bool, module_loaded: impl Fn(&str) -> bool, cpuinfo: &str) -> KvmKind {
    if !dev_kvm {
        return KvmKind::Absent;
    }
    let hw_flags = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_ascii_whitespace().any(|f| f == "vmx" || f == "svm"));
    if (module_loaded("kvm_intel") || module_loaded("kvm_amd")) && hw_flags {
        KvmKind::Hardware
    } else if module_loaded("kvm_pvm") {
        KvmKind::PvmOnly
    } else {
        KvmKind::Unknown
    }
}

/// Makes the command's process get SIGKILL when the thread that started it exits, so that a
/// sandbox process that dies leaves no QEMU or virtiofsd behind.
pub fn die_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs between fork and exec and only makes one async-signal-safe
    // system call (prctl).
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
}

/// The host TSC frequency in kHz, from `/proc/cpuinfo` ("cpu MHz" of the first CPU).
pub fn tsc_khz() -> Option<u64> {
    parse_cpu_khz(&std::fs::read_to_string("/proc/cpuinfo").ok()?)
}

fn parse_cpu_khz(cpuinfo: &str) -> Option<u64> {
    let line = cpuinfo.lines().find(|l| l.starts_with("cpu MHz"))?;
    let mhz: f64 = line.split(':').nth(1)?.trim().parse().ok()?;
    (mhz > 0.0 && mhz < 100_000.0).then(|| (mhz * 1000.0).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_cpu_frequency() {
        assert_eq!(
            parse_cpu_khz("processor\t: 0\ncpu MHz\t\t: 2596.122\n"),
            Some(2596122)
        );
        assert_eq!(parse_cpu_khz("cpu MHz : nonsense"), None);
        assert_eq!(parse_cpu_khz(""), None);
    }

    #[test]
    fn classifies_the_three_hosts() {
        let vmx = "flags\t: fpu vme vmx sse\n";
        let plain = "flags\t: fpu vme hypervisor sse\n";
        assert_eq!(classify_kvm(false, |_| true, vmx), KvmKind::Absent);
        assert_eq!(
            classify_kvm(true, |m| m == "kvm_intel", vmx),
            KvmKind::Hardware
        );
        assert_eq!(
            classify_kvm(true, |m| m == "kvm_pvm", plain),
            KvmKind::PvmOnly
        );
        assert_eq!(
            classify_kvm(true, |m| m == "kvm_intel", plain),
            KvmKind::Unknown
        );
        assert_eq!(classify_kvm(true, |_| false, vmx), KvmKind::Unknown);
    }
}
