//! `list`, `ps`, `pause`, `resume`, `events`, `update`, `spec`, `features`, `check`, and
//! moat's own `boot` and `initramfs`.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use moat_protocol::{LinuxResources, Request, Response};

use super::Ctx;
use crate::boot::{self, secs, TempDir};
use crate::state::Status;

/// `moat list`.
pub fn list(ctx: &Ctx, a: &liboci_cli::List) -> Result<()> {
    let mut states = Vec::new();
    for id in ctx.store.list()? {
        if let Ok(st) = ctx.state(&id) {
            states.push(st);
        }
    }
    if a.quiet {
        for s in &states {
            println!("{}", s.id);
        }
        return Ok(());
    }
    match a.format.as_str() {
        "json" => println!("{}", serde_json::to_string(&states)?),
        "table" => {
            println!(
                "{:<12} {:<10} {:<10} {:<40} {:<32} OWNER",
                "ID", "PID", "STATUS", "BUNDLE", "CREATED"
            );
            for s in &states {
                let owner = if s.owner == 0 {
                    "root".to_string()
                } else {
                    s.owner.to_string()
                };
                println!(
                    "{:<12} {:<10} {:<10} {:<40} {:<32} {owner}",
                    s.id,
                    s.pid,
                    s.status,
                    s.bundle.display(),
                    s.created
                );
            }
        }
        other => bail!("invalid --format {other:?}: use table or json"),
    }
    Ok(())
}

fn running(ctx: &Ctx, id: &str) -> Result<()> {
    let st = ctx.state(id)?;
    if !matches!(
        st.status,
        Status::Running | Status::Paused | Status::Created
    ) {
        bail!("container {id:?} is {}", st.status);
    }
    Ok(())
}

/// `moat ps`: the guest pids of the container's processes.
pub fn ps(ctx: &Ctx, a: &liboci_cli::Ps) -> Result<()> {
    running(ctx, &a.container_id)?;
    let pids = match ctx.agent(&a.container_id)?.call(
        "ListProcesses",
        Request::ListProcesses {
            id: a.container_id.clone(),
        },
    )? {
        Response::Processes(p) => p,
        other => bail!("unexpected answer to ListProcesses: {other:?}"),
    };
    match a.format.as_str() {
        "json" => println!("{}", serde_json::to_string(&pids)?),
        "table" => {
            println!("PID (in the guest)");
            for p in pids {
                println!("{p}");
            }
        }
        other => bail!("invalid --format {other:?}: use table or json"),
    }
    Ok(())
}

/// `moat pause` / `moat resume`.
pub fn pause(ctx: &Ctx, id: &str, pause: bool) -> Result<()> {
    let _lock = ctx.store.lock(id)?;
    let st = ctx.state(id)?;
    let want = if pause {
        Status::Running
    } else {
        Status::Paused
    };
    if st.status != want {
        bail!("container {id:?} is {}, not {want}", st.status);
    }
    let req = if pause {
        Request::PauseContainer { id: id.into() }
    } else {
        Request::ResumeContainer { id: id.into() }
    };
    ctx.agent(id)?.call(
        if pause {
            "PauseContainer"
        } else {
            "ResumeContainer"
        },
        req,
    )?;
    Ok(())
}

fn stats_event(id: &str, s: &moat_protocol::ContainerStats) -> serde_json::Value {
    serde_json::json!({
        "type": "stats",
        "id": id,
        "data": {
            "cpu": { "usage": { "total": s.cpu.usage_usec * 1000, "user": s.cpu.user_usec * 1000, "kernel": s.cpu.system_usec * 1000 },
                     "throttling": { "periods": s.cpu.nr_periods, "throttledPeriods": s.cpu.nr_throttled, "throttledTime": s.cpu.throttled_usec * 1000 } },
            "memory": { "usage": { "usage": s.memory.usage, "limit": s.memory.limit.unwrap_or(u64::MAX) },
                        "swap": { "usage": s.memory.swap_usage }, "raw": { "anon": s.memory.anon, "file": s.memory.file, "oom_kill": s.memory.oom_kills } },
            "pids": { "current": s.pids.current, "limit": s.pids.limit.unwrap_or(0) },
            "blkio": { "ioServiceBytesRecursive": s.io.iter().flat_map(|d| [
                serde_json::json!({"major": d.major, "minor": d.minor, "op": "Read", "value": d.rbytes}),
                serde_json::json!({"major": d.major, "minor": d.minor, "op": "Write", "value": d.wbytes}),
            ]).collect::<Vec<_>>() },
        }
    })
}

/// `moat events`: stats every `--interval` seconds and OOM events as they happen, as JSON
/// lines; with `--stats`, one stats event.
pub fn events(ctx: &Ctx, a: &liboci_cli::Events) -> Result<()> {
    let id = &a.container_id;
    running(ctx, id)?;
    let mut agent = ctx.agent(id)?;
    let stats = |agent: &mut crate::vsock::AgentClient| -> Result<serde_json::Value> {
        match agent.call("Stats", Request::Stats { id: id.clone() })? {
            Response::Stats(s) => Ok(stats_event(id, &s)),
            other => bail!("unexpected answer to Stats: {other:?}"),
        }
    };
    if a.stats {
        println!("{}", stats(&mut agent)?);
        return Ok(());
    }
    let mut sub = ctx.agent(id)?;
    sub.call("SubscribeEvents", Request::SubscribeEvents)?;
    let (tx, rx) = std::sync::mpsc::channel();
    let id2 = id.clone();
    std::thread::spawn(move || {
        while let Ok(ev) = sub.read_event() {
            let line = match ev {
                moat_protocol::Event::Oom { id } if id == id2 => {
                    serde_json::json!({"type": "oom", "id": id})
                }
                moat_protocol::Event::Exited {
                    process, status, ..
                } if process.id == id2 => {
                    serde_json::json!({"type": "exit", "id": process.id, "data": {"execId": process.exec_id, "status": status}})
                }
                _ => continue,
            };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let interval = Duration::from_secs(u64::from(a.interval.max(1)));
    loop {
        match stats(&mut agent) {
            Ok(v) => println!("{v}"),
            Err(_) => return Ok(()), // the container is gone
        }
        let deadline = std::time::Instant::now() + interval;
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(line) => println!("{line}"),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => break,
                Err(_) => return Ok(()),
            }
        }
    }
}

/// `moat update`: resources from `-r FILE` (`LinuxResources` JSON) or from flags.
pub fn update(ctx: &Ctx, a: &liboci_cli::Update) -> Result<()> {
    use oci_spec::runtime::{
        LinuxBlockIoBuilder, LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder,
    };
    let id = &a.container_id;
    running(ctx, id)?;
    let res: LinuxResources = match &a.resources {
        Some(p) if p.as_os_str() == "-" => {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
            serde_json::from_str(&s).context("resources on stdin")?
        }
        Some(p) => super::read_json(p)?,
        None => {
            let mut r = LinuxResources::default();
            let mut cpu = LinuxCpuBuilder::default();
            let mut any_cpu = false;
            if let Some(v) = a.cpu_period {
                cpu = cpu.period(v);
                any_cpu = true;
            }
            if let Some(v) = a.cpu_quota {
                cpu = cpu.quota(v as i64);
                any_cpu = true;
            }
            if let Some(v) = a.cpu_share {
                cpu = cpu.shares(v);
                any_cpu = true;
            }
            if let Some(v) = &a.cpuset_cpus {
                cpu = cpu.cpus(v.clone());
                any_cpu = true;
            }
            if let Some(v) = &a.cpuset_mems {
                cpu = cpu.mems(v.clone());
                any_cpu = true;
            }
            if any_cpu {
                r.set_cpu(Some(cpu.build()?));
            }
            let mut mem = LinuxMemoryBuilder::default();
            let mut any_mem = false;
            if let Some(v) = a.memory {
                mem = mem.limit(v as i64);
                any_mem = true;
            }
            if let Some(v) = a.memory_reservation {
                mem = mem.reservation(v as i64);
                any_mem = true;
            }
            if let Some(v) = a.memory_swap {
                mem = mem.swap(v);
                any_mem = true;
            }
            if any_mem {
                r.set_memory(Some(mem.build()?));
            }
            if let Some(v) = a.pids_limit {
                r.set_pids(Some(LinuxPidsBuilder::default().limit(v).build()?));
            }
            if let Some(v) = a.blkio_weight {
                r.set_block_io(Some(
                    LinuxBlockIoBuilder::default().weight(v as u16).build()?,
                ));
            }
            r
        }
    };
    ctx.agent(id)?.call(
        "UpdateResources",
        Request::UpdateResources {
            id: id.clone(),
            resources: Box::new(res),
        },
    )?;
    Ok(())
}

/// `moat spec`: a `config.json` like `runc spec` (or its `--rootless` variant).
pub fn spec(a: &liboci_cli::Spec) -> Result<()> {
    crate::spec_cmd::write_spec(a.bundle.as_deref(), a.rootless)?;
    Ok(())
}

/// `moat features`: what this runtime supports, in runc's JSON shape.
pub fn features() -> Result<()> {
    print!("{}", crate::spec_cmd::features_json());
    Ok(())
}

/// `moat check`: what the host offers and which backend moat will use; exit 1 when
/// something needed is missing.
pub fn check() -> Result<i32> {
    let r = crate::check::check(&crate::config::Config::load()?);
    print!("{}", r.render());
    Ok(r.exit_code())
}

/// `moat boot`.
pub fn boot(runs: u32, timeout: Duration) -> Result<()> {
    let config = crate::config::Config::load()?;
    let paths = config.guest_paths();
    let choice = config
        .backend
        .choose(crate::host::detect_kvm())
        .map_err(|e| anyhow!(e))?;
    let vmm = match choice.vmm {
        crate::config::Vmm::Builtin => "the built-in VMM",
        crate::config::Vmm::Qemu(_) => "QEMU",
    };
    println!("backend: {}", choice.why);
    let mut times = Vec::new();
    for i in 1..=runs.max(1) {
        let dir = TempDir::new("boot")?;
        let r = boot::boot_once(&paths, choice.vmm, &dir.0, timeout)?;
        println!(
            "boot {i}: agent {} answered Hello over vsock {} after {vmm} started \
             (Hello round trip {:.2} ms, {} attempt(s)); the guest ended cleanly after {}: {}",
            r.agent_version,
            secs(r.to_ready),
            r.hello_rtt.as_secs_f64() * 1000.0,
            r.attempts,
            secs(r.to_exit),
            r.ready_line.trim()
        );
        times.push(r.to_ready);
    }
    if let Some(m) = boot::median(times) {
        println!(
            "median {vmm} start to agent ready over {runs} boot(s): {}",
            secs(m)
        );
    }
    Ok(())
}

/// `moat vhost-user-vsock`.
pub fn vhost_user_vsock(socket: &Path, uds: &Path, cid: u64) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MOAT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    crate::vsock::serve_vhost_user_vsock(socket, uds, cid).map_err(|e| anyhow!(e))?;
    Ok(())
}

/// `moat initramfs`.
pub fn initramfs(agent: &Path, output: &Path) -> Result<()> {
    let bin =
        std::fs::read(agent).with_context(|| format!("reading the agent {}", agent.display()))?;
    let entries = crate::initramfs::guest_entries(bin, moat_agent::init::INITRAMFS_DIRS);
    let mut buf = Vec::new();
    crate::initramfs::write_archive(&mut buf, &entries)?;
    let tmp = output.with_extension("tmp");
    std::fs::write(&tmp, &buf).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, output).with_context(|| format!("renaming to {}", output.display()))?;
    println!("{} ({} bytes)", output.display(), buf.len());
    Ok(())
}
