//! Checks a spec before anything is created, so that a bad spec fails with an error naming
//! the field and leaves no process, cgroup or mount behind.

use std::collections::HashSet;

use oci_spec::runtime::{LinuxNamespaceType, Spec};

/// A spec the agent will not run; the message names the field.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SpecError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, SpecError> {
    Err(SpecError(msg.into()))
}

/// Validates what rootfs, process and namespace setup rely on. Mounts are checked with
/// `fs_known` (the guest kernel's filesystems); seccomp is compiled separately.
pub fn validate(spec: &Spec, fs_known: &dyn Fn(&str) -> bool) -> Result<(), SpecError> {
    let Some(process) = spec.process() else {
        return err("process: missing (a container needs a process to run)");
    };
    match process.args() {
        Some(a) if !a.is_empty() && !a[0].is_empty() => {}
        _ => return err("process.args: must name a program to run"),
    }
    if !process.cwd().is_absolute() {
        return err(format!(
            "process.cwd: {:?} is not an absolute path",
            process.cwd()
        ));
    }
    for (i, e) in process.env().iter().flatten().enumerate() {
        if !e.contains('=') {
            return err(format!("process.env[{i}]: {e:?} is not KEY=value"));
        }
    }
    if let Some(adj) = process.oom_score_adj() {
        if !(-1000..=1000).contains(&adj) {
            return err(format!("process.oomScoreAdj: {adj} is outside -1000..1000"));
        }
    }
    let mut seen_rlimits = HashSet::new();
    for (i, r) in process.rlimits().iter().flatten().enumerate() {
        if !seen_rlimits.insert(super::creds::rlimit_resource(r.typ())) {
            return err(format!(
                "process.rlimits[{i}].type: {:?} appears twice",
                r.typ()
            ));
        }
        if r.soft() > r.hard() {
            return err(format!(
                "process.rlimits[{i}]: soft limit {} exceeds hard limit {}",
                r.soft(),
                r.hard()
            ));
        }
    }
    if let Some(caps) = process.capabilities() {
        super::creds::parse_capabilities(caps).map_err(|e| SpecError(e.to_string()))?;
    }
    let linux = spec.linux().as_ref();
    let namespaces = linux.and_then(|l| l.namespaces().as_ref());
    let mut types = HashSet::new();
    for (i, n) in namespaces.into_iter().flatten().enumerate() {
        if !types.insert(n.typ()) {
            return err(format!(
                "linux.namespaces[{i}].type: {} appears twice",
                n.typ()
            ));
        }
        if let Some(p) = n.path() {
            if !p.is_absolute() {
                return err(format!("linux.namespaces[{i}].path: {p:?} is not absolute"));
            }
            if !p.exists() {
                return err(format!(
                    "linux.namespaces[{i}].path: {} does not exist",
                    p.display()
                ));
            }
        }
    }
    let has = |t: LinuxNamespaceType| types.contains(&t);
    let new_userns = namespaces
        .into_iter()
        .flatten()
        .any(|n| n.typ() == LinuxNamespaceType::User && n.path().is_none());
    let uid_maps = linux
        .and_then(|l| l.uid_mappings().as_ref())
        .is_some_and(|m| !m.is_empty());
    let gid_maps = linux
        .and_then(|l| l.gid_mappings().as_ref())
        .is_some_and(|m| !m.is_empty());
    if (uid_maps || gid_maps) && !new_userns {
        let field = if uid_maps {
            "linux.uidMappings"
        } else {
            "linux.gidMappings"
        };
        return err(format!(
            "{field}: mappings need a new user namespace in linux.namespaces"
        ));
    }
    if new_userns && !(uid_maps && gid_maps) {
        return err(
            "linux.uidMappings: a new user namespace needs both uidMappings and gidMappings",
        );
    }
    if let Some(h) = spec.hostname() {
        if !has(LinuxNamespaceType::Uts) && !h.is_empty() {
            return err("hostname: setting a hostname needs a uts namespace in linux.namespaces");
        }
    }
    if let Some(d) = spec.domainname() {
        if !has(LinuxNamespaceType::Uts) && !d.is_empty() {
            return err(
                "domainname: setting a domain name needs a uts namespace in linux.namespaces",
            );
        }
    }
    if !has(LinuxNamespaceType::Mount) {
        return err(
            "linux.namespaces: a mount namespace is required (moat builds each rootfs in one)",
        );
    }
    for (k, _) in linux
        .and_then(|l| l.sysctl().as_ref())
        .into_iter()
        .flatten()
    {
        if k.contains('/') || k.contains("..") || k.is_empty() {
            return err(format!("linux.sysctl[{k:?}]: not a sysctl name"));
        }
        let ns_ok = if k.starts_with("net.") {
            has(LinuxNamespaceType::Network)
        } else if k.starts_with("kernel.msg")
            || k.starts_with("kernel.sem")
            || k.starts_with("kernel.shm")
            || k.starts_with("fs.mqueue.")
        {
            has(LinuxNamespaceType::Ipc)
        } else if k == "kernel.hostname" || k == "kernel.domainname" {
            has(LinuxNamespaceType::Uts)
        } else {
            false
        };
        if !ns_ok {
            return err(format!(
                "linux.sysctl[{k:?}]: not namespaced, or its namespace is not in linux.namespaces"
            ));
        }
    }
    super::rootfs::validate_mounts(spec, fs_known).map_err(|e| SpecError(e.to_string()))?;
    Ok(())
}

/// Validates a container id: the host uses it in paths too.
pub fn validate_id(id: &str) -> Result<(), SpecError> {
    if id.is_empty() || id.len() > 1024 {
        return err(format!("id: {id:?} must be 1 to 1024 characters"));
    }
    if id == "."
        || id == ".."
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_+-.".contains(c))
    {
        return err(format!(
            "id: {id:?} may hold only letters, digits and _+-. (and is not . or ..)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{
        LinuxBuilder, LinuxIdMappingBuilder, LinuxNamespaceBuilder, ProcessBuilder, SpecBuilder,
    };

    fn base() -> Spec {
        Spec::default()
    }

    fn check(spec: &Spec) -> String {
        validate(spec, &|t| {
            [
                "proc", "tmpfs", "devpts", "mqueue", "sysfs", "cgroup", "cgroup2",
            ]
            .contains(&t)
        })
        .err()
        .map(|e| e.0)
        .unwrap_or_default()
    }

    #[test]
    fn the_default_spec_is_valid() {
        assert_eq!(check(&base()), "");
    }

    #[test]
    fn ids_are_checked() {
        for bad in ["", "../x", "a/b", "..", ".", "x y"] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
        validate_id("abc-1_2.3").unwrap();
    }

    #[test]
    fn errors_name_the_field() {
        let mut s = base();
        s.set_process(Some(
            ProcessBuilder::default()
                .args(Vec::<String>::new())
                .build()
                .unwrap(),
        ));
        assert!(check(&s).starts_with("process.args"), "{}", check(&s));

        let mut s = base();
        s.set_process(Some(ProcessBuilder::default().cwd("rel").build().unwrap()));
        assert!(check(&s).starts_with("process.cwd"));

        let mut s = base();
        let mut linux = s.linux().clone().unwrap();
        linux.set_uid_mappings(Some(vec![LinuxIdMappingBuilder::default()
            .container_id(0u32)
            .host_id(1000u32)
            .size(1u32)
            .build()
            .unwrap()]));
        s.set_linux(Some(linux));
        assert!(
            check(&s).starts_with("linux.uidMappings: mappings need a new user namespace"),
            "{}",
            check(&s)
        );

        let mut s = base();
        let mut linux = s.linux().clone().unwrap();
        let mut ns = linux.namespaces().clone().unwrap();
        ns.retain(|n| n.typ() != LinuxNamespaceType::Uts);
        linux.set_namespaces(Some(ns));
        s.set_linux(Some(linux));
        s.set_hostname(Some("box".into()));
        assert!(check(&s).starts_with("hostname:"), "{}", check(&s));

        let mut s = base();
        let mut linux = s.linux().clone().unwrap();
        let mut ns = linux.namespaces().clone().unwrap();
        ns.push(
            LinuxNamespaceBuilder::default()
                .typ(LinuxNamespaceType::Pid)
                .build()
                .unwrap(),
        );
        linux.set_namespaces(Some(ns));
        s.set_linux(Some(linux));
        assert!(check(&s).contains("appears twice"), "{}", check(&s));

        let mut s = base();
        s.set_hostname(None);
        s.set_linux(Some(
            LinuxBuilder::default().namespaces(vec![]).build().unwrap(),
        ));
        assert!(
            check(&s).starts_with("linux.namespaces: a mount namespace"),
            "{}",
            check(&s)
        );

        let mut s = base();
        let mut linux = s.linux().clone().unwrap();
        linux.set_sysctl(Some([("kernel.panic".to_string(), "1".to_string())].into()));
        s.set_linux(Some(linux));
        assert!(
            check(&s).starts_with("linux.sysctl[\"kernel.panic\"]"),
            "{}",
            check(&s)
        );

        let s = SpecBuilder::default().build().unwrap();
        let mut s2 = s.clone();
        s2.set_process(None);
        assert!(check(&s2).starts_with("process: missing"));
    }
}
