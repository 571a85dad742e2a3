//! The built guest kernel's `.config` holds every option the agent and devices need: every
//! option the fragments in `guest-kernel/fragments/` set, checked by
//! `guest-kernel/check-config.sh`.

use std::path::PathBuf;
use std::process::Command;

fn check(config: &std::path::Path) -> (bool, String) {
    let root = moat_tests::repo_root();
    let out = Command::new("bash")
        .arg(root.join("guest-kernel/check-config.sh"))
        .arg(config)
        .output()
        .expect("running check-config.sh");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn installed_config() -> PathBuf {
    let kernel = moat_tests::guest_paths().kernel;
    let config = kernel.with_file_name("vmlinux.config");
    assert!(
        config.is_file(),
        "{} is missing: run scripts/build-guest.sh",
        config.display()
    );
    config
}

#[test]
#[ignore = "needs the built guest kernel; run by scripts/test.sh"]
fn built_config_has_every_fragment_option() {
    let (ok, out) = check(&installed_config());
    assert!(ok, "the guest kernel config lacks options:\n{out}");
}

#[test]
#[ignore = "needs the built guest kernel; run by scripts/test.sh"]
fn checker_names_a_missing_option() {
    let text = std::fs::read_to_string(installed_config()).unwrap();
    let stripped: String = text
        .lines()
        .filter(|l| {
            !l.starts_with("CONFIG_VIRTIO_VSOCKETS=") && !l.starts_with("CONFIG_SECCOMP_FILTER=")
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let dir = moat::boot::TempDir::new("kconfig").unwrap();
    let path = dir.0.join("config");
    std::fs::write(&path, stripped).unwrap();
    let (ok, out) = check(&path);
    assert!(
        !ok,
        "check-config.sh passed a config without vsock and seccomp:\n{out}"
    );
    assert!(out.contains("CONFIG_VIRTIO_VSOCKETS"), "{out}");
    assert!(out.contains("CONFIG_SECCOMP_FILTER"), "{out}");
}

#[test]
#[ignore = "needs the built guest kernel; run by scripts/test.sh"]
fn no_modules_pci_or_acpi() {
    let text = std::fs::read_to_string(installed_config()).unwrap();
    for opt in ["CONFIG_MODULES", "CONFIG_PCI", "CONFIG_ACPI"] {
        assert!(
            !text.lines().any(|l| l == format!("{opt}=y")),
            "{opt} is enabled"
        );
    }
    for opt in [
        "CONFIG_PVH=y",
        "CONFIG_VIRTIO_MMIO=y",
        "CONFIG_VIRTIO_FS=y",
        "CONFIG_CGROUPS=y",
    ] {
        assert!(text.lines().any(|l| l == opt), "{opt} missing");
    }
}
