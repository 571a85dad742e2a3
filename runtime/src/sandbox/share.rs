//! The sandbox's virtio-fs share: `<state>/share/<id>/rootfs` is a bind of the bundle's
//! rootfs, `<state>/share/<id>/mounts/<n>` a bind of the spec's n-th host-sourced bind
//! mount. The spec is rewritten to the guest paths of those binds. All of it happens in the
//! sandbox process's private mount namespace, so it vanishes with the sandbox.

use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use oci_spec::runtime::Spec;

/// Where the agent mounts the share in the guest (`moat.share=` on the command line).
pub const GUEST_SHARE: &str = "/run/moat/share";

/// A failure preparing the share.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    /// A bind mount failed.
    #[error("{field}: binding {src} into the sandbox share: {errno}")]
    Bind {
        /// The spec field.
        field: String,
        /// The host path.
        src: PathBuf,
        /// The errno.
        errno: nix::Error,
    },
    /// A host source is missing.
    #[error("{field}: {src} does not exist on the host")]
    Missing {
        /// The spec field.
        field: String,
        /// The host path.
        src: PathBuf,
    },
    /// Creating a directory or file failed.
    #[error("creating {path}: {source}")]
    Create {
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// Whether a spec mount is a bind mount of a host path.
fn is_bind(m: &oci_spec::runtime::Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .iter()
            .flatten()
            .any(|o| o == "bind" || o == "rbind")
}

/// Enters a private mount namespace (host mount events still propagate in).
pub fn private_mount_namespace() -> Result<(), nix::Error> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
}

/// Binds the rootfs and host bind sources of container `id` into `share`, and returns the
/// spec with bind sources rewritten to guest paths, and the rootfs's guest path.
pub fn prepare(
    share: &Path,
    id: &str,
    bundle: &Path,
    spec: &Spec,
) -> Result<(Spec, String), ShareError> {
    let create = |path: &Path| -> Result<(), ShareError> {
        std::fs::create_dir_all(path).map_err(|source| ShareError::Create {
            path: path.into(),
            source,
        })
    };
    let root_rel = spec
        .root()
        .as_ref()
        .map(|r| r.path().clone())
        .unwrap_or_else(|| "rootfs".into());
    let rootfs = if root_rel.is_absolute() {
        root_rel
    } else {
        bundle.join(root_rel)
    };
    if !rootfs.is_dir() {
        return Err(ShareError::Missing {
            field: "root.path".into(),
            src: rootfs,
        });
    }
    let target = share.join(id).join("rootfs");
    create(&target)?;
    let readonly = spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false);
    bind(&rootfs, &target, readonly, "root.path")?;
    let mut spec = spec.clone();
    if let Some(mounts) = spec.mounts().clone() {
        let mut out = Vec::with_capacity(mounts.len());
        for (i, mut m) in mounts.into_iter().enumerate() {
            if is_bind(&m) {
                let field = format!("mounts[{i}].source");
                let src = m.source().clone().unwrap_or_default();
                let src = if src.is_absolute() {
                    src
                } else {
                    bundle.join(src)
                };
                let meta = std::fs::metadata(&src).map_err(|_| ShareError::Missing {
                    field: field.clone(),
                    src: src.clone(),
                })?;
                let dst = share.join(id).join("mounts").join(i.to_string());
                if meta.is_dir() {
                    create(&dst)?;
                } else {
                    create(dst.parent().unwrap_or(share))?;
                    std::fs::File::create(&dst).map_err(|source| ShareError::Create {
                        path: dst.clone(),
                        source,
                    })?;
                }
                let ro = m.options().iter().flatten().any(|o| o == "ro");
                bind(&src, &dst, ro, &field)?;
                m.set_source(Some(PathBuf::from(format!(
                    "{GUEST_SHARE}/{id}/mounts/{i}"
                ))));
            }
            out.push(m);
        }
        spec.set_mounts(Some(out));
    }
    Ok((spec, format!("{GUEST_SHARE}/{id}/rootfs")))
}

fn bind(src: &Path, dst: &Path, readonly: bool, field: &str) -> Result<(), ShareError> {
    let err = |errno| ShareError::Bind {
        field: field.into(),
        src: src.into(),
        errno,
    };
    mount(
        Some(src),
        dst,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(err)?;
    if readonly {
        mount(
            None::<&str>,
            dst,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::MountBuilder;

    #[test]
    fn bind_mounts_are_recognised_by_type_or_option() {
        let b = MountBuilder::default()
            .destination("/a")
            .typ("bind")
            .source("/x")
            .build()
            .unwrap();
        let r = MountBuilder::default()
            .destination("/a")
            .typ("none")
            .source("/x")
            .options(vec!["rbind".into()])
            .build()
            .unwrap();
        let p = MountBuilder::default()
            .destination("/proc")
            .typ("proc")
            .source("proc")
            .build()
            .unwrap();
        assert!(is_bind(&b) && is_bind(&r) && !is_bind(&p));
    }

    #[test]
    fn a_missing_rootfs_names_root_path() {
        let d = crate::boot::TempDir::new("share").unwrap();
        let err = prepare(&d.0.join("share"), "c", &d.0, &Spec::default()).unwrap_err();
        assert!(err.to_string().starts_with("root.path:"), "{err}");
    }
}
