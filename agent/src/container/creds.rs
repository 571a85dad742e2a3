//! The process attributes applied last, just before `execve`: rlimits, user and groups,
//! capabilities, `noNewPrivileges`, umask, and the executable lookup.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use caps::{CapSet, Capability, CapsHashSet};
use oci_spec::runtime::{LinuxCapabilities, PosixRlimit, PosixRlimitType, Process};

/// A failure applying process attributes; messages name the spec field.
#[derive(Debug, thiserror::Error)]
pub enum CredsError {
    /// A capability name the kernel does not know.
    #[error("{field}: unknown capability {name:?}")]
    UnknownCapability {
        /// The field, e.g. `process.capabilities.bounding[2]`.
        field: String,
        /// The name.
        name: String,
    },
    /// A system call failed.
    #[error("{field}: {what}: {source}")]
    Sys {
        /// The spec field being applied.
        field: &'static str,
        /// What was being done.
        what: String,
        /// The errno.
        source: nix::Error,
    },
    /// The program to run is not there.
    #[error("process.args[0]: exec: {0:?}: executable file not found in $PATH")]
    NotFound(String),
    /// `process.args` is empty.
    #[error("process.args: must name a program to run")]
    NoArgs,
    /// A string holds a NUL byte.
    #[error("{0}: contains a NUL byte")]
    Nul(&'static str),
}

fn sys(field: &'static str, what: impl Into<String>) -> impl FnOnce(nix::Error) -> CredsError {
    let what = what.into();
    move |source| CredsError::Sys {
        field,
        what,
        source,
    }
}

/// Parses every capability list of `caps` (names checked before anything is changed).
pub fn parse_capabilities(caps: &LinuxCapabilities) -> Result<[CapsHashSet; 5], CredsError> {
    let sets = [
        ("bounding", caps.bounding()),
        ("effective", caps.effective()),
        ("inheritable", caps.inheritable()),
        ("permitted", caps.permitted()),
        ("ambient", caps.ambient()),
    ];
    let mut out: [CapsHashSet; 5] = Default::default();
    for (i, (name, set)) in sets.into_iter().enumerate() {
        for (j, cap) in set.iter().flatten().enumerate() {
            let text = serde_json::to_value(cap)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            let parsed: Capability = text.parse().map_err(|_| CredsError::UnknownCapability {
                field: format!("process.capabilities.{name}[{j}]"),
                name: text.clone(),
            })?;
            out[i].insert(parsed);
        }
    }
    Ok(out)
}

/// The resource number of an rlimit type.
pub fn rlimit_resource(t: PosixRlimitType) -> libc::c_int {
    use PosixRlimitType::*;
    (match t {
        RlimitCpu => libc::RLIMIT_CPU,
        RlimitFsize => libc::RLIMIT_FSIZE,
        RlimitData => libc::RLIMIT_DATA,
        RlimitStack => libc::RLIMIT_STACK,
        RlimitCore => libc::RLIMIT_CORE,
        RlimitRss => libc::RLIMIT_RSS,
        RlimitNproc => libc::RLIMIT_NPROC,
        RlimitNofile => libc::RLIMIT_NOFILE,
        RlimitMemlock => libc::RLIMIT_MEMLOCK,
        RlimitAs => libc::RLIMIT_AS,
        RlimitLocks => libc::RLIMIT_LOCKS,
        RlimitSigpending => libc::RLIMIT_SIGPENDING,
        RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        RlimitNice => libc::RLIMIT_NICE,
        RlimitRtprio => libc::RLIMIT_RTPRIO,
        RlimitRttime => libc::RLIMIT_RTTIME,
    }) as libc::c_int
}

/// Sets every rlimit of the process.
pub fn apply_rlimits(rlimits: &[PosixRlimit]) -> Result<(), CredsError> {
    for r in rlimits {
        let lim = libc::rlimit {
            rlim_cur: r.soft(),
            rlim_max: r.hard(),
        };
        // SAFETY: `lim` is a valid rlimit for the duration of the call; setrlimit reads it.
        let rc = unsafe { libc::setrlimit(rlimit_resource(r.typ()) as _, &lim) };
        nix::errno::Errno::result(rc)
            .map_err(sys("process.rlimits", format!("setrlimit {:?}", r.typ())))?;
    }
    Ok(())
}

/// Switches to the spec's user, groups and capabilities. Runs as root (in the container's
/// user namespace, if any); afterwards the process has exactly what the spec grants.
pub fn apply_user_and_caps(process: &Process) -> Result<(), CredsError> {
    let user = process.user();
    let caps = process
        .capabilities()
        .as_ref()
        .map(parse_capabilities)
        .transpose()?;
    // Drop from the bounding set first: that needs CAP_SETPCAP, which we still have.
    if let Some([bounding, ..]) = &caps {
        for cap in caps::all() {
            if !bounding.contains(&cap)
                && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false)
            {
                caps::drop(None, CapSet::Bounding, cap).map_err(|e| CredsError::Sys {
                    field: "process.capabilities.bounding",
                    what: format!("dropping {cap}: {e}"),
                    source: nix::Error::EPERM,
                })?;
            }
        }
    }
    // Keep the permitted set across the uid change; the final sets are applied after it.
    nix::sys::prctl::set_keepcaps(true).map_err(sys("process.user", "PR_SET_KEEPCAPS"))?;
    let gids: Vec<nix::unistd::Gid> = user
        .additional_gids()
        .iter()
        .flatten()
        .map(|g| nix::unistd::Gid::from_raw(*g))
        .collect();
    nix::unistd::setgroups(&gids).map_err(sys("process.user.additionalGids", "setgroups"))?;
    let gid = nix::unistd::Gid::from_raw(user.gid());
    nix::unistd::setresgid(gid, gid, gid).map_err(sys("process.user.gid", "setresgid"))?;
    let uid = nix::unistd::Uid::from_raw(user.uid());
    nix::unistd::setresuid(uid, uid, uid).map_err(sys("process.user.uid", "setresuid"))?;
    nix::sys::prctl::set_keepcaps(false).map_err(sys("process.user", "PR_SET_KEEPCAPS"))?;
    if let Some(umask) = user.umask() {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(umask as _));
    }
    match caps {
        Some([_, effective, inheritable, permitted, ambient]) => {
            let set = |which: CapSet, v: &CapsHashSet, field: &'static str| {
                caps::set(None, which, v).map_err(|e| CredsError::Sys {
                    field,
                    what: e.to_string(),
                    source: nix::Error::EPERM,
                })
            };
            // Effective first: the kernel refuses a permitted set that does not cover the
            // current effective set.
            set(
                CapSet::Effective,
                &effective,
                "process.capabilities.effective",
            )?;
            set(
                CapSet::Permitted,
                &permitted,
                "process.capabilities.permitted",
            )?;
            set(
                CapSet::Inheritable,
                &inheritable,
                "process.capabilities.inheritable",
            )?;
            // An ambient capability must also be permitted and inheritable. As runc does, one
            // that is not is skipped rather than failing the container (runc's own default
            // spec lists ambient capabilities without inheritable ones).
            let _ = caps::clear(None, CapSet::Ambient);
            for cap in ambient {
                if permitted.contains(&cap) && inheritable.contains(&cap) {
                    caps::raise(None, CapSet::Ambient, cap).map_err(|e| CredsError::Sys {
                        field: "process.capabilities.ambient",
                        what: format!("raising {cap}: {e}"),
                        source: nix::Error::EPERM,
                    })?;
                }
            }
        }
        None if user.uid() != 0 => {
            // No capabilities in the spec: a non-root user ends with none (as after execve).
            for which in [CapSet::Effective, CapSet::Permitted, CapSet::Inheritable] {
                let _ = caps::clear(None, which);
            }
        }
        None => {}
    }
    if process.no_new_privileges().unwrap_or(false) {
        nix::sys::prctl::set_no_new_privs().map_err(sys("process.noNewPrivileges", "prctl"))?;
    }
    Ok(())
}

/// Finds the program to run the way `execvp` would, with the process's own `PATH`.
pub fn find_executable(process: &Process) -> Result<PathBuf, CredsError> {
    let arg0 = process
        .args()
        .as_ref()
        .and_then(|a| a.first())
        .ok_or(CredsError::NoArgs)?;
    if arg0.contains('/') {
        return if is_executable(Path::new(arg0)) {
            Ok(PathBuf::from(arg0))
        } else {
            Err(CredsError::NotFound(arg0.clone()))
        };
    }
    let path = process
        .env()
        .iter()
        .flatten()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(arg0))
        .find(|p| is_executable(p))
        .ok_or_else(|| CredsError::NotFound(arg0.clone()))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Converts strings for `execve`.
pub fn cstrings<'a>(
    items: impl IntoIterator<Item = &'a String>,
    field: &'static str,
) -> Result<Vec<CString>, CredsError> {
    items
        .into_iter()
        .map(|s| CString::new(s.as_bytes()).map_err(|_| CredsError::Nul(field)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{Capability as OciCap, LinuxCapabilitiesBuilder, ProcessBuilder};

    #[test]
    fn parses_capability_sets() {
        let c = LinuxCapabilitiesBuilder::default()
            .bounding(
                [OciCap::Chown, OciCap::NetBindService]
                    .into_iter()
                    .collect::<std::collections::HashSet<_>>(),
            )
            .effective(std::collections::HashSet::new())
            .build()
            .unwrap();
        let [bounding, effective, ..] = parse_capabilities(&c).unwrap();
        assert!(bounding.contains(&Capability::CAP_CHOWN));
        assert!(bounding.contains(&Capability::CAP_NET_BIND_SERVICE));
        assert!(effective.is_empty());
    }

    #[test]
    fn finds_programs_on_the_process_path() {
        let p = ProcessBuilder::default()
            .args(vec!["sh".to_string()])
            .env(vec!["PATH=/nonexistent:/bin".to_string()])
            .build()
            .unwrap();
        assert_eq!(find_executable(&p).unwrap(), PathBuf::from("/bin/sh"));
        let missing = ProcessBuilder::default()
            .args(vec!["no-such-program-xyz".to_string()])
            .build()
            .unwrap();
        let err = find_executable(&missing).unwrap_err().to_string();
        assert!(
            err.contains("process.args[0]") && err.contains("not found"),
            "{err}"
        );
        let empty = ProcessBuilder::default()
            .args(Vec::<String>::new())
            .build()
            .unwrap();
        assert!(matches!(find_executable(&empty), Err(CredsError::NoArgs)));
    }

    #[test]
    fn every_rlimit_type_maps_to_a_resource() {
        assert_eq!(
            rlimit_resource(PosixRlimitType::RlimitNofile),
            libc::RLIMIT_NOFILE as libc::c_int
        );
        assert_eq!(
            rlimit_resource(PosixRlimitType::RlimitRttime),
            libc::RLIMIT_RTTIME as libc::c_int
        );
    }
}
