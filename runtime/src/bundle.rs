//! Host-side checks of an OCI bundle's spec and the VM size it asks for, shared by the CLI
//! (`moat create`) and the containerd shim: everything the host can reject before a VM boots.

use oci_spec::runtime::Spec;

/// Filesystems the guest kernel has (guest-kernel/fragments), for checking mounts early.
pub const GUEST_FILESYSTEMS: &[&str] = &[
    "proc",
    "sysfs",
    "tmpfs",
    "devtmpfs",
    "devpts",
    "mqueue",
    "cgroup",
    "cgroup2",
    "overlay",
    "ext4",
    "virtiofs",
    "fuse",
    "ramfs",
    "hugetlbfs",
    "bpf",
];

/// A spec the guest would refuse; the message names the field.
#[derive(Debug, thiserror::Error)]
#[error("config.json: {0}")]
pub struct SpecCheckError(String);

/// Checks what the agent checks (namespaces, mounts, ids, capabilities) and compiles the
/// seccomp profile, so that bad input fails before anything is created.
pub fn check_spec(spec: &Spec) -> Result<(), SpecCheckError> {
    moat_agent::container::spec_check::validate(spec, &|t| GUEST_FILESYSTEMS.contains(&t))
        .map_err(|e| SpecCheckError(e.to_string()))?;
    if let Some(sc) = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
        moat_agent::container::seccomp::compile(sc).map_err(|e| SpecCheckError(e.to_string()))?;
    }
    Ok(())
}

/// The guest's vCPUs and memory (MiB) for a spec with the built-in VM defaults (the memory
/// limit plus 128 MiB, else 256; the CPU quota rounded up or the cpuset count, else 1): see
/// [`crate::config::vm_size`], which the config file's `[vm]` section can change.
pub fn vm_size(spec: &Spec) -> (u32, u32) {
    let host = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    let s = crate::config::vm_size(&crate::config::VmDefaults::default(), spec, host);
    (s.vcpus, s.memory_mib)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_size_follows_the_spec() {
        let mut s = Spec::default();
        assert_eq!(vm_size(&s), (1, 256));
        let mut linux = s.linux().clone().unwrap();
        let mem = oci_spec::runtime::LinuxMemoryBuilder::default()
            .limit(512i64 << 20)
            .build()
            .unwrap();
        linux.set_resources(Some(
            oci_spec::runtime::LinuxResourcesBuilder::default()
                .memory(mem)
                .build()
                .unwrap(),
        ));
        s.set_linux(Some(linux));
        assert_eq!(vm_size(&s).1, 640);
    }

    #[test]
    fn the_default_spec_passes_and_a_bad_one_names_its_field() {
        check_spec(&Spec::default()).unwrap();
        let mut s = Spec::default();
        let mut p = s.process().clone().unwrap();
        p.set_cwd("relative".into());
        s.set_process(Some(p));
        let e = check_spec(&s).unwrap_err().to_string();
        assert!(e.starts_with("config.json: process.cwd"), "{e}");
    }
}
