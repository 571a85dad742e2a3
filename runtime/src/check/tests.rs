//! Tests of [`super`]: every branch of the report, from made-up facts.

use super::*;
use crate::config::Vmm;
use crate::qemu::Accel;

fn good() -> Probes {
    Probes {
        kvm: KvmKind::PvmOnly,
        vhost_vsock: false,
        vhost_net: false,
        qemu: ToolProbe::Found {
            path: "/usr/bin/qemu-system-x86_64".into(),
            version: "QEMU emulator version 7.2.22".into(),
        },
        moat_vmm: ToolProbe::Found {
            path: "/usr/local/bin/moat-vmm".into(),
            version: "moat-vmm 0.1.0".into(),
        },
        virtiofsd: ToolProbe::Found {
            path: "/root/.cargo/bin/virtiofsd".into(),
            version: "virtiofsd 1.14.0".into(),
        },
        kernel: FileProbe::Found {
            path: "/usr/local/share/moat/vmlinux".into(),
            size: 19_762_784,
        },
        initramfs: FileProbe::Found {
            path: "/usr/local/share/moat/initramfs.cpio".into(),
            size: 2_971_428,
        },
        backend: Backend::Auto,
        config_file: None,
    }
}

/// The text after `label:` in the rendered report.
fn rendered(out: &str, label: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{label}:")))
        .unwrap_or_else(|| panic!("no {label} line in {out}"))
        .trim_start()
        .to_string()
}

fn text(r: &Report, label: &str) -> String {
    r.lines
        .iter()
        .find(|l| l.label == label)
        .map(|l| l.text.clone())
        .unwrap_or_else(|| panic!("no {label} line"))
}

#[test]
fn a_pvm_host_with_everything_is_ok_on_tcg() {
    let r = Report::new(&good());
    assert!(r.ok());
    assert_eq!(r.exit_code(), 0);
    assert_eq!(r.backend.as_ref().unwrap().vmm, Vmm::Qemu(Accel::Tcg));
    let out = r.render();
    assert!(rendered(&out, "host KVM").starts_with("PVM-only (kvm_pvm, no vmx/svm)"));
    assert_eq!(
        rendered(&out, "backend"),
        "qemu with TCG: /dev/kvm is PVM-only (kvm_pvm, no vmx/svm), which cannot run this \
         guest's user space"
    );
    assert!(rendered(&out, "qemu").starts_with("/usr/bin/qemu-system-x86_64, QEMU emulator"));
    assert_eq!(
        rendered(&out, "guest kernel"),
        "/usr/local/share/moat/vmlinux, 18.8 MiB"
    );
    assert!(rendered(&out, "/dev/vhost-vsock").starts_with("absent (not needed"));
    assert!(rendered(&out, "config file").starts_with("none (/etc/moat/config.toml does not"));
    assert!(
        out.ends_with("\nok: moat can run containers on this host\n"),
        "{out}"
    );
    assert!(out.lines().count() <= 12, "a few lines: {out}");
}

#[test]
fn each_kind_of_kvm() {
    for (kvm, kvm_line, backend_line, accel) in [
        (
            KvmKind::Hardware,
            "hardware KVM",
            "built-in VMM: /dev/kvm is hardware KVM",
            Accel::Kvm,
        ),
        (
            KvmKind::Absent,
            "none (no /dev/kvm)",
            "qemu with TCG: no /dev/kvm",
            Accel::Tcg,
        ),
        (
            KvmKind::Unknown,
            "neither kvm_intel",
            "qemu with TCG: /dev/kvm has no",
            Accel::Tcg,
        ),
    ] {
        let r = Report::new(&Probes { kvm, ..good() });
        assert!(r.ok());
        assert!(text(&r, "host KVM").contains(kvm_line), "{kvm:?}");
        assert!(text(&r, "backend").starts_with(backend_line), "{kvm:?}");
        let want = match kvm {
            KvmKind::Hardware => Vmm::Builtin,
            _ => Vmm::Qemu(accel),
        };
        assert_eq!(r.backend.unwrap().vmm, want);
    }
}

#[test]
fn vhost_devices_are_reported_not_required() {
    let r = Report::new(&Probes {
        vhost_vsock: true,
        vhost_net: true,
        ..good()
    });
    assert!(r.ok());
    assert!(text(&r, "/dev/vhost-vsock").starts_with("present"));
    assert!(text(&r, "/dev/vhost-net").starts_with("present"));
}

#[test]
fn missing_guest_files_say_to_build_the_guest() {
    let r = Report::new(&Probes {
        kernel: FileProbe::Missing {
            path: "/usr/local/share/moat/vmlinux".into(),
            why: "no such file".into(),
        },
        initramfs: FileProbe::Missing {
            path: "/x/initramfs.cpio".into(),
            why: "not a regular file".into(),
        },
        config_file: Some("/etc/moat/config.toml".into()),
        ..good()
    });
    assert!(!r.ok());
    assert_eq!(r.exit_code(), 1);
    assert_eq!(r.todo.len(), 2);
    assert!(r.todo[0].starts_with("guest kernel: run scripts/build-guest.sh"));
    assert!(r.todo[0].ends_with("or set MOAT_KERNEL or `kernel` in /etc/moat/config.toml"));
    assert!(r.todo[1].contains("MOAT_INITRAMFS"));
    let out = r.render();
    assert_eq!(
        rendered(&out, "guest kernel"),
        "/usr/local/share/moat/vmlinux: no such file"
    );
    assert_eq!(rendered(&out, "config file"), "/etc/moat/config.toml");
    assert!(out.contains("not ok: 2 things to fix"), "{out}");
    assert!(out.contains("\n  - guest initramfs: run scripts/build-guest.sh"));
}

#[test]
fn missing_or_broken_tools_say_what_to_install() {
    let r = Report::new(&Probes {
        qemu: ToolProbe::Missing {
            looked_for: "qemu-system-x86_64".into(),
        },
        virtiofsd: ToolProbe::Broken {
            path: "/usr/libexec/virtiofsd".into(),
            why: "`--version` failed (exit status: 1)".into(),
        },
        ..good()
    });
    assert!(!r.ok());
    assert_eq!(text(&r, "qemu"), "not found (qemu-system-x86_64)");
    assert!(r.todo[0].starts_with("qemu: install Debian's qemu-system-x86"));
    assert!(r.todo[0].contains("set MOAT_QEMU"));
    assert!(text(&r, "virtiofsd").contains("does not work"));
    assert!(r.todo[1].contains("scripts/setup-host.sh"));
    assert!(r.render().contains("not ok: 2 things"));
}

#[test]
fn the_builtin_backend_needs_hardware_kvm_and_then_no_qemu() {
    // good() is a PVM-only host: the built-in VMM boots only to init there.
    let r = Report::new(&Probes {
        backend: Backend::Builtin,
        ..good()
    });
    assert!(!r.ok());
    assert!(r.backend.is_err());
    assert!(text(&r, "backend").starts_with("none: backend = \"builtin\""));
    assert!(text(&r, "built-in VMM").contains("user space cannot run"));
    assert!(r.render().contains("not ok: 1 thing to fix"));
    let hw = Report::new(&Probes {
        kvm: KvmKind::Hardware,
        backend: Backend::Builtin,
        qemu: ToolProbe::Missing {
            looked_for: "qemu-system-x86_64".into(),
        },
        ..good()
    });
    assert!(hw.ok(), "{}", hw.render());
    assert_eq!(hw.backend.as_ref().unwrap().vmm, Vmm::Builtin);
    assert!(text(&hw, "qemu").contains("not needed"));
    // ... but moat-vmm is.
    let no_vmm = Report::new(&Probes {
        kvm: KvmKind::Hardware,
        moat_vmm: ToolProbe::Missing {
            looked_for: "moat-vmm".into(),
        },
        ..good()
    });
    assert!(!no_vmm.ok());
    assert!(no_vmm.render().contains("MOAT_VMM"), "{}", no_vmm.render());
    let pvm_no_vmm = Report::new(&Probes {
        moat_vmm: ToolProbe::Missing {
            looked_for: "moat-vmm".into(),
        },
        ..good()
    });
    assert!(pvm_no_vmm.ok(), "{}", pvm_no_vmm.render());
    assert!(text(&hw, "built-in VMM").starts_with("available"));
    let q = Report::new(&Probes {
        backend: Backend::Qemu,
        ..good()
    });
    assert!(text(&q, "backend").ends_with("(backend = \"qemu\")"));
}

#[test]
fn probing_real_files_and_programs() {
    assert_eq!(
        probe_tool(Path::new("/nonexistent/qemu")),
        ToolProbe::Missing {
            looked_for: "/nonexistent/qemu".into()
        }
    );
    assert!(matches!(
        probe_tool(Path::new("moat-no-such-program")),
        ToolProbe::Missing { .. }
    ));
    // GNU `true --version` prints its version; another `true` may print nothing (Broken).
    match probe_tool(Path::new("true")) {
        ToolProbe::Found { version, .. } => assert!(!version.is_empty()),
        ToolProbe::Broken { .. } => {}
        ToolProbe::Missing { .. } => panic!("`true` is on PATH"),
    }
    assert!(matches!(
        probe_tool(Path::new("false")),
        ToolProbe::Broken { .. }
    ));
    let dir = std::env::temp_dir().join(format!("moat-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("vmlinux");
    std::fs::write(&f, [0u8; 3000]).unwrap();
    assert_eq!(
        probe_file(&f),
        FileProbe::Found {
            path: f.clone(),
            size: 3000
        }
    );
    assert!(
        matches!(probe_file(&dir), FileProbe::Missing { why, .. } if why == "not a regular file")
    );
    assert!(
        matches!(probe_file(&dir.join("x")), FileProbe::Missing { why, .. } if why == "no such file")
    );
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(human_size(2_971_428), "2.8 MiB");
    assert_eq!(human_size(3000), "2.9 KiB");
    assert_eq!(human_size(12), "12 bytes");
}
