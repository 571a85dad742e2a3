//! `create`, `start`, `run`, `state`, `kill`, `delete`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use moat_protocol::{ProcessRef, Request};
use oci_spec::runtime::Spec;

use super::{sandbox_alive, Ctx, Kill};
use crate::sandbox::{self, SandboxConfig};
use crate::state::Status;

/// Everything checked before a sandbox is forked, so that bad input leaves nothing behind.
struct Prepared {
    bundle: PathBuf,
    spec: Spec,
}

fn prepare(id: &str, bundle: &Path) -> Result<Prepared> {
    crate::state::validate_id(id)?;
    let bundle = bundle
        .canonicalize()
        .with_context(|| format!("bundle {}: no such directory", bundle.display()))?;
    let config = bundle.join("config.json");
    if !config.is_file() {
        bail!(
            "{}: no such file (create one with `moat spec`)",
            config.display()
        );
    }
    let spec = moat_protocol::spec::load_spec(&config)?;
    let root = spec
        .root()
        .as_ref()
        .map(|r| r.path().clone())
        .unwrap_or_else(|| "rootfs".into());
    let rootfs = if root.is_absolute() {
        root
    } else {
        bundle.join(root)
    };
    if !rootfs.is_dir() {
        bail!(
            "root.path: the rootfs {} does not exist or is not a directory",
            rootfs.display()
        );
    }
    crate::bundle::check_spec(&spec)?;
    Ok(Prepared { bundle, spec })
}

/// `moat create`: returns once the container is `created`; the sandbox's pid.
pub fn create(ctx: &Ctx, a: &liboci_cli::Create) -> Result<u32> {
    create_with(
        ctx,
        &a.container_id,
        &a.bundle,
        a.console_socket.clone(),
        a.pid_file.as_deref(),
        a.no_pivot,
    )
}

fn create_with(
    ctx: &Ctx,
    id: &str,
    bundle: &Path,
    console_socket: Option<PathBuf>,
    pid_file: Option<&Path>,
    no_pivot: bool,
) -> Result<u32> {
    let p = prepare(id, bundle)?;
    let config = crate::config::Config::load()?;
    let paths = config.guest_paths();
    let vmm = config
        .backend
        .choose(crate::host::detect_kvm())
        .map_err(|e| anyhow!(e))?
        .vmm;
    // The sandbox process starts virtiofsd by this path (config file < env < flags).
    std::env::set_var("MOAT_VIRTIOFSD", &config.virtiofsd);
    for (what, f) in [
        ("guest kernel", &paths.kernel),
        ("guest initramfs", &paths.initramfs),
    ] {
        if !f.is_file() {
            bail!("{what} {} is missing: run scripts/build-guest.sh (or set MOAT_KERNEL/MOAT_INITRAMFS)", f.display());
        }
    }
    let terminal = p
        .spec
        .process()
        .as_ref()
        .and_then(|pr| pr.terminal())
        .unwrap_or(false);
    if let Some(cs) = &console_socket {
        if !terminal {
            bail!("--console-socket given but process.terminal is false");
        }
        if !cs.exists() {
            bail!("--console-socket {}: no such socket", cs.display());
        }
    }
    // The sandbox's sockets live in the state directory; a Unix socket path holds at most
    // 107 bytes, the longest being the vsock backend's `vsock.sock_<port>`.
    let longest = ctx.store.dir(id).join("vsock.sock_4294967295");
    if longest.as_os_str().len() > 107 {
        bail!(
            "container id {id:?} is too long for --root {}: the sandbox's socket paths would exceed \
             the 107 bytes of a Unix socket address; use a shorter id or --root",
            ctx.store.root().display()
        );
    }
    let lock = ctx.store.reserve(id)?;
    let size = config.vm_size(&p.spec);
    let (vcpus, memory_mib) = (size.vcpus, size.memory_mib);
    let cfg = SandboxConfig {
        store: ctx.store.clone(),
        id: id.to_string(),
        bundle: p.bundle,
        spec: p.spec,
        vm: crate::guest::SandboxVm {
            paths,
            vmm,
            vcpus,
            memory_mib,
        },
        console_socket,
        no_pivot,
    };
    let (pid, ready) = sandbox::fork_sandbox(cfg)?;
    match sandbox::read_ready(ready) {
        Ok(_guest_pid) => {
            if let Some(f) = pid_file {
                write_pid_file(f, pid.as_raw() as u32)?;
            }
            drop(lock);
            Ok(pid.as_raw() as u32)
        }
        Err(e) => {
            let _ = nix::sys::wait::waitpid(pid, None);
            let _ = ctx.store.remove(id);
            drop(lock);
            Err(anyhow!(e.0))
        }
    }
}

fn write_pid_file(path: &Path, pid: u32) -> Result<()> {
    let tmp = path.with_extension("moat-tmp");
    std::fs::write(&tmp, pid.to_string())
        .with_context(|| format!("writing --pid-file {}", path.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing --pid-file {}", path.display()))
}

/// `moat start`.
pub fn start(ctx: &Ctx, id: &str) -> Result<()> {
    let _lock = ctx.store.lock(id)?;
    let st = ctx.state(id)?;
    if st.status != Status::Created {
        bail!(
            "cannot start a container that is {}: only a created container can be started",
            st.status
        );
    }
    let mut agent = ctx.agent(id)?;
    agent.call("StartContainer", Request::StartContainer { id: id.into() })?;
    let spec = moat_protocol::spec::load_spec(&st.bundle.join("config.json"))?;
    let st = crate::state::ContainerState {
        status: Status::Running,
        ..st
    };
    // poststart hooks run in `start`, as runc runs them; a failure is reported, not fatal.
    if let Err(e) = crate::hooks::run_host(&spec, "poststart", &st, &st.bundle) {
        eprintln!("moat: warning: {e}");
    }
    Ok(())
}

/// `moat run`: create, start, and (unless detached) wait and delete.
pub fn run(ctx: &Ctx, a: &liboci_cli::Run) -> Result<i32> {
    let pid = create_with(
        ctx,
        &a.container_id,
        &a.bundle,
        a.console_socket.clone(),
        a.pid_file.as_deref(),
        a.no_pivot,
    )?;
    if let Err(e) = start(ctx, &a.container_id) {
        let _ = delete(ctx, &a.container_id, true);
        return Err(e);
    }
    if a.detach {
        return Ok(0);
    }
    let status = match nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), None) {
        Ok(nix::sys::wait::WaitStatus::Exited(_, c)) => c,
        Ok(nix::sys::wait::WaitStatus::Signaled(_, s, _)) => 128 + s as i32,
        _ => 255,
    };
    if !a.keep {
        delete(ctx, &a.container_id, true)?;
    }
    Ok(status)
}

/// `moat state`: the OCI state JSON.
pub fn state(ctx: &Ctx, id: &str) -> Result<()> {
    let st = ctx.state(id)?;
    println!("{}", serde_json::to_string_pretty(&st)?);
    Ok(())
}

/// Parses `TERM`, `SIGTERM`, `sigterm` or `15`.
pub fn parse_signal(s: &str) -> Result<i32> {
    if let Ok(n) = s.parse::<i32>() {
        return nix::sys::signal::Signal::try_from(n)
            .map(|sig| sig as i32)
            .map_err(|_| anyhow!("unknown signal {s:?}"));
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .map(|sig| sig as i32)
        .map_err(|_| anyhow!("unknown signal {s:?}"))
}

/// `moat kill`.
pub fn kill(ctx: &Ctx, a: &Kill) -> Result<()> {
    let signal = parse_signal(&a.signal)?;
    let st = ctx.state(&a.container_id)?;
    if !matches!(
        st.status,
        Status::Created | Status::Running | Status::Paused
    ) {
        bail!(
            "container {:?} is {}: cannot send it a signal",
            a.container_id,
            st.status
        );
    }
    let mut agent = ctx.agent(&a.container_id)?;
    let process = ProcessRef {
        id: a.container_id.clone(),
        exec_id: None,
    };
    agent.call(
        "SignalProcess",
        Request::SignalProcess {
            process,
            signal,
            all: a.all,
        },
    )?;
    Ok(())
}

/// `moat delete`: stops the VM if needed and removes every trace.
pub fn delete(ctx: &Ctx, id: &str, force: bool) -> Result<()> {
    let lock = ctx.store.lock(id)?;
    let st = ctx.state(id)?;
    if matches!(st.status, Status::Running | Status::Paused) && !force {
        bail!(
            "cannot delete container {id} that is not stopped: {} (use --force)",
            st.status
        );
    }
    let pid = ctx.store.load(id)?.pid;
    if sandbox_alive(pid) {
        // Ask the guest to go away; the sandbox process then tears everything down.
        if let Ok(mut agent) = ctx.agent(id) {
            let _ = agent.call(
                "DeleteContainer",
                Request::DeleteContainer {
                    id: id.into(),
                    force: true,
                },
            );
            let _ = agent.call("Shutdown", Request::Shutdown);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while sandbox_alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if sandbox_alive(pid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let deadline = Instant::now() + Duration::from_secs(5);
            while sandbox_alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    if let Ok(spec) = moat_protocol::spec::load_spec(&st.bundle.join("config.json")) {
        if let Err(e) = crate::hooks::run_host(&spec, "poststop", &st, &st.bundle) {
            eprintln!("moat: warning: {e}");
        }
    }
    drop(lock);
    ctx.store.remove(id)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_and_number() {
        assert_eq!(parse_signal("TERM").unwrap(), 15);
        assert_eq!(parse_signal("SIGKILL").unwrap(), 9);
        assert_eq!(parse_signal("sigusr1").unwrap(), 10);
        assert_eq!(parse_signal("9").unwrap(), 9);
        assert!(parse_signal("SIGFOO").is_err());
        assert!(parse_signal("999").is_err());
    }
}
