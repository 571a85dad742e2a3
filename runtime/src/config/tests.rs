//! Tests of [`super`]: layering, file errors, VM sizing.

use std::collections::HashMap;
use std::str::FromStr;

use oci_spec::runtime::{
    LinuxBuilder, LinuxCpuBuilder, LinuxMemoryBuilder, LinuxResourcesBuilder, Spec,
};

use super::layers::check_log_level;
use super::*;

fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
    let m: HashMap<String, OsString> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), OsString::from(v)))
        .collect();
    move |k| m.get(k).cloned()
}

fn file(text: &str) -> Option<(&Path, &str)> {
    Some((Path::new("/etc/moat/config.toml"), text))
}

fn parse_err(text: &str) -> (Option<usize>, Option<String>, String) {
    match Config::from_str(text).unwrap_err() {
        ConfigError::Parse {
            line, key, message, ..
        } => (line, key, message),
        e => panic!("not a parse error: {e}"),
    }
}

#[test]
fn defaults_without_a_file() {
    let c = Config::resolve(None, env(&[]), &Overrides::default()).unwrap();
    assert_eq!(c.kernel, Path::new("/usr/local/share/moat/vmlinux"));
    assert_eq!(
        c.initramfs,
        Path::new("/usr/local/share/moat/initramfs.cpio")
    );
    assert_eq!(c.qemu, Path::new("qemu-system-x86_64"));
    assert_eq!(c.virtiofsd, Path::new("/usr/libexec/virtiofsd"));
    assert_eq!(c.backend, Backend::Auto);
    assert_eq!(c.vm, VmDefaults::default());
    assert_eq!(
        (c.vm.vcpus, c.vm.memory_mib, c.vm.memory_overhead_mib),
        (1, 256, 128)
    );
    assert_eq!(c.log_level, "warn");
    assert_eq!(c.file, None);
    assert_eq!(c.guest_paths().kernel, c.kernel);
}

#[test]
fn the_file_sets_everything() {
    let c = Config::resolve(
        file(
            "kernel = \"/k/vmlinux\"\ninitramfs = \"rel/i.cpio\"\nqemu = \"/opt/q\"\n\
             virtiofsd = \"vfsd\"\nbackend = \"qemu\"\nlog_level = \"moat=debug,warn\"\n\
             [vm]\nvcpus = 2\nmemory_mib = 512\nmemory_overhead_mib = 64\n",
        ),
        env(&[]),
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(c.kernel, Path::new("/k/vmlinux"));
    assert_eq!(c.initramfs, Path::new("/etc/moat/rel/i.cpio"));
    assert_eq!(c.qemu, Path::new("/opt/q"));
    assert_eq!(c.virtiofsd, Path::new("vfsd"), "a bare name stays for PATH");
    assert_eq!(c.backend, Backend::Qemu);
    assert_eq!(c.log_level, "moat=debug,warn");
    assert_eq!(
        c.vm,
        VmDefaults {
            vcpus: 2,
            memory_mib: 512,
            memory_overhead_mib: 64
        }
    );
    assert_eq!(c.file.as_deref(), Some(Path::new("/etc/moat/config.toml")));
}

#[test]
fn environment_beats_file_and_flags_beat_environment() {
    let text = "kernel = \"/file/vmlinux\"\nqemu = \"/file/qemu\"\nbackend = \"qemu\"\n";
    let e = env(&[
        ("MOAT_SHARE_DIR", "/env"),
        ("MOAT_QEMU", "/env/qemu"),
        ("MOAT_BACKEND", "auto"),
        ("MOAT_VIRTIOFSD", "/env/virtiofsd"),
        ("MOAT_INITRAMFS", ""),
    ]);
    let c = Config::resolve(file(text), &e, &Overrides::default()).unwrap();
    assert_eq!(
        c.kernel,
        Path::new("/env/vmlinux"),
        "share dir moves the file's kernel"
    );
    assert_eq!(
        c.initramfs,
        Path::new("/env/initramfs.cpio"),
        "empty = unset"
    );
    assert_eq!(c.qemu, Path::new("/env/qemu"));
    assert_eq!(c.virtiofsd, Path::new("/env/virtiofsd"));
    assert_eq!(c.backend, Backend::Auto);
    let cli = Overrides {
        kernel: Some("/cli/k".into()),
        backend: Some(Backend::Qemu),
        vcpus: Some(3),
        log_level: Some("debug".into()),
        ..Overrides::default()
    };
    let c = Config::resolve(file(text), &e, &cli).unwrap();
    assert_eq!(c.kernel, Path::new("/cli/k"));
    assert_eq!(c.initramfs, Path::new("/env/initramfs.cpio"));
    assert_eq!((c.backend, c.vm.vcpus), (Backend::Qemu, 3));
    assert_eq!(c.log_level, "debug");
    // Within one layer an explicit kernel wins over that layer's share_dir.
    let e = env(&[("MOAT_SHARE_DIR", "/env"), ("MOAT_KERNEL", "/envk")]);
    let c = Config::resolve(None, e, &Overrides::default()).unwrap();
    assert_eq!(c.kernel, Path::new("/envk"));
    assert_eq!(c.initramfs, Path::new("/env/initramfs.cpio"));
}

#[test]
fn bad_environment_and_flags_are_named() {
    let e = Config::resolve(None, env(&[("MOAT_BACKEND", "kvm")]), &Overrides::default());
    let msg = e.unwrap_err().to_string();
    assert!(
        msg.starts_with("MOAT_BACKEND=\"kvm\": expected one of"),
        "{msg}"
    );
    let e = Config::resolve(None, env(&[("MOAT_LOG", "verbose")]), &Overrides::default());
    assert!(e
        .unwrap_err()
        .to_string()
        .starts_with("MOAT_LOG=\"verbose\""));
    let cli = Overrides {
        memory_mib: Some(64),
        ..Overrides::default()
    };
    let msg = Config::resolve(None, env(&[]), &cli)
        .unwrap_err()
        .to_string();
    assert_eq!(
        msg,
        "--memory-mib=\"64\": must be between 128 and 1048576 MiB, not 64"
    );
}

#[test]
fn file_errors_name_the_line_and_the_key() {
    let (line, key, msg) = parse_err("backend = \"qemu\"\n\n[vm]\nvcpus = 0\n");
    assert_eq!((line, key.as_deref()), (Some(4), Some("vm.vcpus")), "{msg}");
    assert!(msg.contains("between 1 and 255"), "{msg}");

    let (line, key, msg) = parse_err("kernel = \"/k\"\nbackend = \"kvm\"\n");
    assert_eq!((line, key.as_deref()), (Some(2), Some("backend")), "{msg}");
    assert!(msg.contains("auto"), "{msg}");

    let (line, key, msg) = parse_err("[vm]\nmemory_mib = \"lots\"\n");
    assert_eq!(
        (line, key.as_deref()),
        (Some(2), Some("vm.memory_mib")),
        "{msg}"
    );

    let (line, _, msg) = parse_err("\nkernal = \"/k\"\n");
    assert_eq!(line, Some(2), "{msg}");
    assert!(msg.contains("kernal"), "{msg}");

    let (line, key, _) = parse_err("[vm]\nvcpus = 1\ncpus = 2\n");
    assert_eq!((line, key.as_deref()), (Some(3), Some("vm.cpus")));

    let (line, key, msg) = parse_err("vm = 3\n");
    assert_eq!((line, key.as_deref()), (Some(1), Some("vm")));
    assert!(msg.ends_with("expected a table"), "{msg}");

    let (line, key, msg) = parse_err("kernel = \"/k\nqemu = 1\n");
    assert_eq!((line, key), (Some(1), None), "syntax error: {msg}");

    let (line, key, _) = parse_err("log_level = \"loud\"\n");
    assert_eq!((line, key.as_deref()), (Some(1), Some("log_level")));

    let full = Config::from_str("[vm]\nvcpus = 300\n")
        .unwrap_err()
        .to_string();
    assert_eq!(
        full,
        "<string>: line 2: vm.vcpus: must be between 1 and 255, not 300"
    );
}

#[test]
fn a_missing_default_file_is_fine_but_a_named_one_is_not() {
    let dir = std::env::temp_dir().join(format!("moat-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let missing = dir.join("nope.toml");
    let e = Config::load_from(Some(&missing), &Overrides::default()).unwrap_err();
    assert!(matches!(e, ConfigError::Missing { .. }), "{e}");
    let present = dir.join("config.toml");
    std::fs::write(&present, "[vm]\nmemory_mib = 300\n").unwrap();
    let c = Config::load_from(Some(&present), &Overrides::default()).unwrap();
    assert_eq!(c.vm.memory_mib, 300);
    assert_eq!(c.file.as_deref(), Some(present.as_path()));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn backend_choice_per_host() {
    let tcg = Vmm::Qemu(Accel::Tcg);
    let c = Backend::Auto.choose(KvmKind::PvmOnly).unwrap();
    assert_eq!(c.vmm, tcg);
    assert_eq!(
        c.why,
        "qemu with TCG: /dev/kvm is PVM-only (kvm_pvm, no vmx/svm), which cannot run this \
         guest's user space"
    );
    let c = Backend::Auto.choose(KvmKind::Hardware).unwrap();
    assert_eq!(c.vmm, Vmm::Builtin);
    assert_eq!(c.why, "built-in VMM: /dev/kvm is hardware KVM");
    let q = Backend::Qemu.choose(KvmKind::Hardware).unwrap();
    assert_eq!(q.vmm, Vmm::Qemu(Accel::Kvm));
    assert_eq!(Backend::Auto.choose(KvmKind::Absent).unwrap().vmm, tcg);
    assert_eq!(Backend::Auto.choose(KvmKind::Unknown).unwrap().vmm, tcg);
    let q = Backend::Qemu.choose(KvmKind::Absent).unwrap();
    assert!(q.why.ends_with("(backend = \"qemu\")"), "{}", q.why);
    assert_eq!(
        Backend::Builtin.choose(KvmKind::Hardware).unwrap().vmm,
        Vmm::Builtin
    );
    // PVM-only KVM boots the guest kernel only as far as init: no containers.
    let e = Backend::Builtin.choose(KvmKind::PvmOnly).unwrap_err();
    assert!(e.contains("cannot run user space"), "{e}");
    assert!(Backend::Builtin.choose(KvmKind::Absent).is_err());
    assert_eq!("builtin".parse(), Ok(Backend::Builtin));
    assert_eq!(Backend::Qemu.to_string(), "qemu");
}

fn spec(quota: Option<(i64, Option<u64>)>, cpus: Option<&str>, mem: Option<i64>) -> Spec {
    let mut cpu = LinuxCpuBuilder::default();
    if let Some((q, p)) = quota {
        cpu = cpu.quota(q);
        if let Some(p) = p {
            cpu = cpu.period(p);
        }
    }
    if let Some(c) = cpus {
        cpu = cpu.cpus(c);
    }
    let mut res = LinuxResourcesBuilder::default().cpu(cpu.build().unwrap());
    if let Some(l) = mem {
        res = res.memory(LinuxMemoryBuilder::default().limit(l).build().unwrap());
    }
    let mut s = Spec::default();
    s.set_linux(Some(
        LinuxBuilder::default()
            .resources(res.build().unwrap())
            .build()
            .unwrap(),
    ));
    s
}

#[test]
fn vm_size_follows_the_spec() {
    let d = VmDefaults::default();
    let size = |s: &Spec, host| {
        let v = vm_size(&d, s, host);
        (v.vcpus, v.memory_mib)
    };
    assert_eq!(size(&Spec::default(), 8), (1, 256), "no limits: defaults");
    assert_eq!(
        size(&spec(Some((150_000, Some(100_000))), None, None), 8).0,
        2
    );
    assert_eq!(
        size(&spec(Some((50_000, Some(100_000))), None, None), 8).0,
        1
    );
    assert_eq!(
        size(&spec(Some((250_000, None)), None, None), 8).0,
        3,
        "period 100ms"
    );
    assert_eq!(
        size(&spec(Some((-1, None)), None, None), 8).0,
        1,
        "unlimited"
    );
    assert_eq!(size(&spec(None, Some("0-3,6"), None), 8).0, 5);
    assert_eq!(
        size(&spec(Some((200_000, None)), Some("0-5"), None), 8).0,
        2
    );
    assert_eq!(
        size(&spec(Some((800_000, None)), None, None), 4).0,
        4,
        "host cap"
    );
    assert_eq!(size(&spec(None, None, Some(100 << 20)), 8).1, 228);
    assert_eq!(
        size(&spec(None, None, Some((100 << 20) + 1)), 8).1,
        229,
        "rounded up"
    );
    assert_eq!(size(&spec(None, None, Some(1)), 8).1, 129);
    assert_eq!(size(&spec(None, None, Some(-1)), 8).1, 256, "unlimited");
    let small = VmDefaults {
        memory_overhead_mib: 0,
        ..d
    };
    assert_eq!(
        vm_size(&small, &spec(None, None, Some(1 << 20)), 8).memory_mib,
        128
    );
    assert_eq!(
        vm_size(&small, &spec(None, None, Some(i64::MAX)), 8).memory_mib,
        u32::MAX
    );
    let two = VmDefaults { vcpus: 2, ..d };
    assert_eq!(
        vm_size(&two, &Spec::default(), 1).vcpus,
        1,
        "default capped too"
    );
    let c = Config::from_str("").unwrap();
    assert!(c.vm_size(&Spec::default()).vcpus >= 1);
}

#[test]
fn cpuset_lists() {
    assert_eq!(cpuset_count("0"), Some(1));
    assert_eq!(cpuset_count("0-3"), Some(4));
    assert_eq!(cpuset_count("0-3,6,8-9"), Some(7));
    assert_eq!(cpuset_count(" 2 , 0-2 ,1"), Some(3), "overlaps count once");
    assert_eq!(cpuset_count("0-7,2-9"), Some(10));
    assert_eq!(cpuset_count("3-1"), None);
    assert_eq!(cpuset_count(""), None);
    assert_eq!(cpuset_count("a"), None);
    assert_eq!(cpuset_count("0,,1"), None);
}

#[test]
fn log_levels() {
    for ok in [
        "warn",
        "DEBUG",
        "moat=debug,warn",
        "moat::vsock=trace",
        "off",
    ] {
        assert!(check_log_level(ok).is_ok(), "{ok}");
    }
    for bad in ["", "verbose", "moat=loud", "=debug", "warn,"] {
        assert!(check_log_level(bad).is_err(), "{bad:?}");
    }
}
