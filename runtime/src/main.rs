//! `moat`: the command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use moat::boot::{self, secs, TempDir};
use moat::paths::GuestPaths;

#[derive(Debug, Parser)]
#[command(
    name = "moat",
    version,
    about = "An OCI runtime that runs every pod in a microVM"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Boot the guest, wait for its agent, power it off, and print the timings.
    Boot {
        /// How many boots (the median is printed).
        #[arg(long, default_value_t = 1)]
        runs: u32,
        /// Give up on a boot after this many seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Serve moat's virtio-vsock device to one QEMU over vhost-user, until QEMU disconnects.
    #[command(name = "vhost-user-vsock", hide = true)]
    VhostUserVsock {
        /// The vhost-user socket QEMU connects to (`-chardev socket,path=...`).
        #[arg(long)]
        socket: PathBuf,
        /// The hybrid vsock socket host processes connect to (`CONNECT <port>`).
        #[arg(long)]
        uds_path: PathBuf,
        /// The guest's CID.
        #[arg(long, default_value_t = moat_protocol::GUEST_CID)]
        guest_cid: u64,
    },
    /// Build the guest initramfs from a static agent binary.
    Initramfs {
        /// The static `moat-agent` binary.
        #[arg(long)]
        agent: PathBuf,
        /// Where to write the archive.
        #[arg(long, short)]
        output: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("moat: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Boot { runs, timeout } => cmd_boot(runs, Duration::from_secs(timeout)),
        Command::Initramfs { agent, output } => cmd_initramfs(&agent, &output),
        Command::VhostUserVsock {
            socket,
            uds_path,
            guest_cid,
        } => cmd_vhost_user_vsock(&socket, &uds_path, guest_cid),
    }
}

fn cmd_boot(runs: u32, timeout: Duration) -> Result<()> {
    let paths = GuestPaths::from_env();
    let mut times = Vec::new();
    for i in 1..=runs.max(1) {
        let dir = TempDir::new("boot")?;
        let r = boot::boot_once(&paths, &dir.0, timeout)?;
        println!(
            "boot {i}: agent {} answered Hello over vsock {} after QEMU start \
             (Hello round trip {:.2} ms, {} attempt(s)); QEMU exited 0 after {}: {}",
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
            "median QEMU start to agent ready over {runs} boot(s): {}",
            secs(m)
        );
    }
    Ok(())
}

fn cmd_vhost_user_vsock(socket: &std::path::Path, uds: &std::path::Path, cid: u64) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MOAT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    moat::vsock::serve_vhost_user_vsock(socket, uds, cid)?;
    Ok(())
}

fn cmd_initramfs(agent: &std::path::Path, output: &std::path::Path) -> Result<()> {
    let bin =
        std::fs::read(agent).with_context(|| format!("reading the agent {}", agent.display()))?;
    let entries = moat::initramfs::guest_entries(bin, moat_agent::init::INITRAMFS_DIRS);
    let mut buf = Vec::new();
    moat::initramfs::write_archive(&mut buf, &entries)?;
    let tmp = output.with_extension("tmp");
    std::fs::write(&tmp, &buf).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, output).with_context(|| format!("renaming to {}", output.display()))?;
    println!("{} ({} bytes)", output.display(), buf.len());
    Ok(())
}
