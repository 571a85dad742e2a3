//! Host mode: `moat-agent run --bundle DIR [--id ID]` runs one OCI bundle on the host with
//! the agent's own container code (create, start, wait, delete), the caller's stdio, and no
//! cgroups (hosts here are cgroup v1). It exists for the host-integration tests and the
//! benchmark against runc; the guest never uses it.

use std::path::PathBuf;
use std::sync::Arc;

use moat_protocol::{CreateContainer, ProcessRef, StdioRequest};

use crate::container::manager::{Manager, ManagerConfig};
use crate::container::syscall::LinuxSyscall;
use crate::reaper::Reaper;

/// Parses the arguments after `run`, runs the bundle, and returns the exit code to use:
/// the container's status, or 1 with a message on stderr when it could not run.
pub fn main(args: &[String]) -> i32 {
    let mut bundle = None;
    let mut id = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--bundle" | "-b" => bundle = it.next().map(PathBuf::from),
            "--id" => id = it.next().cloned(),
            other => {
                eprintln!("moat-agent run: unknown argument {other:?}");
                return 2;
            }
        }
    }
    let bundle = bundle.unwrap_or_else(|| PathBuf::from("."));
    let id = id.unwrap_or_else(|| format!("host-{}", std::process::id()));
    match run(&bundle, &id) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("moat-agent run: {e}");
            1
        }
    }
}

fn run(bundle: &std::path::Path, id: &str) -> Result<i32, String> {
    let spec =
        moat_protocol::spec::load_spec(&bundle.join("config.json")).map_err(|e| e.to_string())?;
    let root = spec
        .root()
        .as_ref()
        .map(|r| r.path().clone())
        .unwrap_or_else(|| PathBuf::from("rootfs"));
    let rootfs = if root.is_absolute() {
        root
    } else {
        bundle.join(root)
    };
    let rootfs = rootfs
        .canonicalize()
        .map_err(|e| format!("root.path: {}: {e}", rootfs.display()))?;
    // Container inits are orphaned by their intermediate process; collect them here.
    nix::sys::prctl::set_child_subreaper(true)
        .map_err(|e| format!("PR_SET_CHILD_SUBREAPER: {e}"))?;
    let reaper = Reaper::start().map_err(|e| format!("starting the reaper: {e}"))?;
    let m = Manager::new(
        Arc::new(LinuxSyscall),
        reaper,
        ManagerConfig {
            cgroup_root: None,
            inherit_stdio: true,
        },
    );
    let req = CreateContainer {
        id: id.to_string(),
        spec: Box::new(spec),
        rootfs: rootfs.to_string_lossy().into_owned(),
        stdio: StdioRequest {
            stdin: true,
            stdout: true,
            stderr: true,
        },
    };
    m.create(req).map_err(|e| e.message)?;
    m.start(id).map_err(|e| e.message)?;
    let status = m
        .wait(&ProcessRef {
            id: id.to_string(),
            exec_id: None,
        })
        .map_err(|e| e.message)?;
    m.delete(id, true).map_err(|e| e.message)?;
    Ok(status)
}
