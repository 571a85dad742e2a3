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

#[cfg(test)]
mod tests {
    use super::*;

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
