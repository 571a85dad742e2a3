//! `moat exec`: a new process in a running container. In the foreground, `moat exec` itself
//! pumps stdio and exits with the process's status; with `-d` it forks a small holder
//! process that does the same (its pid goes to `--pid-file`), as runc's detached exec leaves
//! a process a subreaper can wait for.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use moat_protocol::{ExecProcess, Process, ProcessRef, Request, Response, StdioRequest};

use super::Ctx;
use crate::sandbox::stdio::{self, TtyHost};
use crate::state::Status;

fn build_process(ctx: &Ctx, a: &liboci_cli::Exec) -> Result<Process> {
    if let Some(path) = &a.process {
        return super::read_json(path);
    }
    if a.command.is_empty() {
        bail!("exec: give a command to run, or --process FILE");
    }
    let st = ctx.store.load(&a.container_id)?;
    let spec = moat_protocol::spec::load_spec(&st.bundle.join("config.json"))?;
    let mut p = spec.process().clone().unwrap_or_default();
    p.set_args(Some(a.command.clone()));
    p.set_terminal(Some(a.tty));
    p.set_console_size(None);
    if !a.env.is_empty() {
        let mut env = p.env().clone().unwrap_or_default();
        for (k, v) in &a.env {
            env.retain(|e| e.split_once('=').map(|(ek, _)| ek) != Some(k.as_str()));
            env.push(format!("{k}={v}"));
        }
        p.set_env(Some(env));
    }
    if let Some(cwd) = &a.cwd {
        p.set_cwd(cwd.clone());
    }
    if let Some((uid, gid)) = a.user {
        let mut u = p.user().clone();
        u.set_uid(uid);
        if let Some(g) = gid {
            u.set_gid(g);
        }
        if !a.additional_gids.is_empty() {
            u.set_additional_gids(Some(a.additional_gids.clone()));
        }
        p.set_user(u);
    }
    if a.no_new_privs {
        p.set_no_new_privileges(Some(true));
    }
    if !a.cap.is_empty() {
        let mut caps = p.capabilities().clone().unwrap_or_default();
        for name in &a.cap {
            let cap: oci_spec::runtime::Capability =
                serde_json::from_value(serde_json::Value::String(name.clone()))
                    .map_err(|_| anyhow!("--cap {name:?}: unknown capability"))?;
            let add = |s: &Option<oci_spec::runtime::Capabilities>| {
                let mut s = s.clone().unwrap_or_default();
                s.insert(cap);
                Some(s)
            };
            caps.set_bounding(add(caps.bounding()));
            caps.set_effective(add(caps.effective()));
            caps.set_permitted(add(caps.permitted()));
        }
        p.set_capabilities(Some(caps));
    }
    Ok(p)
}

/// `moat exec`; the exit code to use.
pub fn exec(ctx: &Ctx, a: &liboci_cli::Exec) -> Result<i32> {
    let st = ctx.state(&a.container_id)?;
    if st.status != Status::Running {
        bail!(
            "cannot exec in container {:?}: it is {}",
            a.container_id,
            st.status
        );
    }
    let process = build_process(ctx, a)?;
    let terminal = process.terminal().unwrap_or(false);
    if a.detach {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        // SAFETY: the CLI is single-threaded here; the child runs the exec to its end.
        match unsafe { nix::unistd::fork() }? {
            nix::unistd::ForkResult::Child => {
                drop(r);
                let _ = nix::unistd::setsid();
                let code = run_exec(ctx, a, process, terminal, Some(std::fs::File::from(w)))
                    .unwrap_or_else(|e| {
                        eprintln!("moat exec: {e:#}");
                        255
                    });
                std::process::exit(code);
            }
            nix::unistd::ForkResult::Parent { child } => {
                drop(w);
                let guest_pid =
                    crate::sandbox::read_ready(std::fs::File::from(r)).map_err(|e| anyhow!(e.0))?;
                let _ = guest_pid;
                if let Some(f) = &a.pid_file {
                    std::fs::write(f, child.as_raw().to_string())?;
                }
                return Ok(0);
            }
        }
    }
    if let Some(f) = &a.pid_file {
        std::fs::write(f, std::process::id().to_string())?;
    }
    run_exec(ctx, a, process, terminal, None)
}

/// Starts the process, pumps its stdio, waits; its exit status. `ready` (detached mode) gets
/// `ok <guest pid>` once the process runs, or `error ...`.
fn run_exec(
    ctx: &Ctx,
    a: &liboci_cli::Exec,
    process: Process,
    terminal: bool,
    ready: Option<std::fs::File>,
) -> Result<i32> {
    use std::io::Write;
    let id = &a.container_id;
    let exec_id = format!(
        "exec-{}-{}",
        std::process::id(),
        crate::state::now_rfc3339().replace([':', '.'], "")
    );
    let mut agent = ctx.agent(id)?;
    let req = ExecProcess {
        id: id.clone(),
        exec_id: exec_id.clone(),
        process: Box::new(process),
        stdio: StdioRequest {
            stdin: true,
            stdout: true,
            stderr: true,
        },
    };
    let started = match agent.call("ExecProcess", Request::ExecProcess(req)) {
        Ok(Response::Started(s)) => s,
        Ok(other) => bail!("unexpected answer to ExecProcess: {other:?}"),
        Err(crate::vsock::AgentError::Refused { reply, .. }) => {
            if let Some(mut r) = ready {
                let _ = writeln!(r, "error {}", reply.message);
            }
            bail!("{}", reply.message)
        }
        Err(e) => return Err(e.into()),
    };
    let uds = ctx.store.dir(id).join("vsock.sock");
    let tty = terminal.then(|| match &a.console_socket {
        Some(p) => TtyHost::ConsoleSocket(PathBuf::from(p)),
        None => TtyHost::Inherit,
    });
    let pumps = stdio::start(&uds, started.stdio, [0, 1, 2], tty)?;
    if let Some(mut r) = ready {
        let _ = writeln!(r, "ok {}", started.pid);
    }
    let p = ProcessRef {
        id: id.clone(),
        exec_id: Some(exec_id),
    };
    if let Some(fd) = pumps.tty_size_fd.clone() {
        let (uds2, p2, stop) = (uds.clone(), p.clone(), pumps.stopped());
        std::thread::spawn(move || {
            let Ok(mut c) = crate::vsock::AgentClient::connect(
                &uds2,
                moat_protocol::CONTROL_PORT,
                Duration::from_secs(10),
            ) else {
                return;
            };
            let mut last = None;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let size = stdio::window_size(std::os::fd::AsRawFd::as_raw_fd(&*fd));
                if let (Some((rows, cols)), true) = (size, size != last) {
                    let _ = c.call(
                        "ResizeTty",
                        Request::ResizeTty {
                            process: p2.clone(),
                            rows,
                            cols,
                        },
                    );
                    last = size;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
    }
    agent.set_timeout(None)?;
    let status = match agent.call("WaitProcess", Request::WaitProcess(p.clone())) {
        Ok(Response::Exited { status }) => status,
        Ok(other) => bail!("unexpected answer to WaitProcess: {other:?}"),
        Err(e) => return Err(e.into()),
    };
    pumps.finish(Duration::from_secs(10));
    // The agent keeps an exec until told to forget it (or until many have piled up).
    let _ = agent.set_timeout(Some(Duration::from_secs(10)));
    let _ = agent.call("DeleteProcess", Request::DeleteProcess(p));
    Ok(status)
}
