//! `containerd-shim-moat-v2`: containerd's runtime v2 shim for moat, one microVM per pod.
//!
//! containerd runs `containerd-shim-moat-v2 ... start` in a container's bundle directory;
//! `start` groups containers by pod (the CRI `io.kubernetes.cri.sandbox-id` annotation of a
//! `container`, else the container's own id), starts one shim daemon per group, and prints
//! its ttrpc address bare, as containerd 1.6 expects (the `containerd-shim` crate 0.11;
//! 0.12 answers in JSON, which 1.6 cannot read). The daemon enters a private mount namespace
//! (rootfs and volume mounts vanish with it) and serves the Task service ([`task`]).
//!
//! The daemon waits for its own children (QEMU, virtiofsd) with `std::process::Child`, so
//! the crate's reaper is off.

pub mod convert;
pub mod io;
pub mod process;
pub mod spec;
pub mod task;
pub mod vm;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use containerd_shim::api::DeleteResponse;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config, ExitSignal, Flags, StartOpts};
use sha2::Digest;

/// The runtime name containerd selects the shim by.
pub const RUNTIME_ID: &str = "io.containerd.moat.v2";

/// Where pod VMs keep their sockets, console logs and shares.
pub const STATE_ROOT: &str = "/run/moat/shim";

/// The shim binary's `main`.
pub fn main() {
    containerd_shim::run::<MoatShim>(
        RUNTIME_ID,
        Some(Config {
            no_reaper: true,
            no_sub_reaper: true,
            ..Default::default()
        }),
    );
}

/// A pod's state directory: short (socket paths have a 108-byte limit) and unique per
/// containerd namespace and pod.
pub fn pod_dir(namespace: &str, id: &str) -> PathBuf {
    let hash = sha2::Sha256::digest(format!("{namespace}/{id}").as_bytes());
    let hex: String = hash[..8].iter().map(|b| format!("{b:02x}")).collect();
    Path::new(STATE_ROOT).join(hex)
}

/// The daemon's private mount namespace and moat's configuration (`/etc/moat/config.toml`
/// or `MOAT_CONFIG`, then the environment), as the CLI reads it; virtiofsd is found by
/// `MOAT_VIRTIOFSD`, set here while the process has one thread.
fn daemon_setup() -> Result<crate::config::Config, String> {
    crate::sandbox::share::private_mount_namespace()
        .map_err(|e| format!("entering a private mount namespace: {e}"))?;
    let config = crate::config::Config::load().map_err(|e| format!("moat's configuration: {e}"))?;
    std::env::set_var("MOAT_VIRTIOFSD", &config.virtiofsd);
    Ok(config)
}

/// The shim for the `containerd-shim` crate.
pub struct MoatShim {
    exit: Arc<ExitSignal>,
    namespace: String,
    id: String,
    /// moat's configuration, or why the shim cannot run containers (no private mount
    /// namespace, a bad config file).
    setup: Result<crate::config::Config, String>,
}

impl std::fmt::Debug for MoatShim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MoatShim")
            .field("namespace", &self.namespace)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl containerd_shim::Shim for MoatShim {
    type T = task::Service;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        // The daemon (no action) is still single-threaded here: its own mount namespace
        // covers every thread it will start, and the environment may still be changed.
        let setup = if args.action.is_empty() {
            daemon_setup()
        } else {
            Err("not the shim daemon".into())
        };
        MoatShim {
            exit: Arc::new(ExitSignal::default()),
            namespace: args.namespace.clone(),
            id: args.id.clone(),
            setup,
        }
    }

    fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        // containerd runs `start` in the bundle directory.
        let spec = moat_protocol::spec::load_spec(Path::new("config.json")).ok();
        let grouping = spec::grouping(&opts.id, spec.as_ref());
        let (_, address) = containerd_shim::spawn(opts, &grouping, Vec::new())?;
        containerd_shim::util::write_address(&address)?;
        Ok(address)
    }

    fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        // Called after a shim died or a create failed: its mounts died with its mount
        // namespace and its VM with it (PR_SET_PDEATHSIG); remove what is left on disk.
        let dir = pod_dir(&self.namespace, &self.id);
        // A pod whose VM still answers belongs to a live shim (its mounts are in that shim's
        // namespace, invisible here): leave it.
        let live = std::os::unix::net::UnixStream::connect(dir.join("vsock.sock")).is_ok();
        if dir.exists() && !live && !vm::has_mounts_under(&dir) {
            let _ = std::fs::remove_dir_all(&dir);
        }
        Ok(DeleteResponse {
            exit_status: 128 + libc::SIGKILL as u32,
            exited_at: containerd_shim::protos::protobuf::MessageField::some(convert::now()),
            ..Default::default()
        })
    }

    fn wait(&mut self) {
        self.exit.wait();
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        task::Service::new(
            &self.namespace,
            publisher,
            Arc::clone(&self.exit),
            self.setup.clone(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_dirs_are_short_and_distinct() {
        let a = pod_dir("k8s.io", &"a".repeat(64));
        let b = pod_dir("default", &"a".repeat(64));
        assert_ne!(a, b);
        // The longest socket in it: vsock.sock_<port>.
        assert!(a.join("vhost-vsock.sock").as_os_str().len() < 60, "{a:?}");
    }
}
