//! The runc-compatible command line. Clap definitions come from `liboci-cli` where they fit
//! runc; `kill` is moat's own because runc's signal argument is optional.

mod exec;
mod lifecycle;
mod ops;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use clap::{Args, Parser, Subcommand};
use liboci_cli::{CommonCmd, GlobalOpts, StandardCmd};

use crate::state::{ContainerState, Status, Store, DEFAULT_ROOT};
use crate::vsock::AgentClient;

/// `moat`'s arguments.
#[derive(Debug, Parser)]
#[command(
    name = "moat",
    version,
    about = "An OCI runtime that runs every container in a microVM"
)]
pub struct Cli {
    #[command(flatten)]
    global: GlobalOpts,
    /// Accepted for runc compatibility; moat decides by itself.
    #[arg(long = "rootless", id = "global_rootless", hide = true)]
    rootless: Option<String>,
    #[command(subcommand)]
    command: Command,
}

/// `kill`: runc's signal argument is optional (SIGTERM).
#[derive(Debug, Args)]
pub struct Kill {
    /// Container id.
    pub container_id: String,
    /// Signal name (`TERM`, `SIGKILL`) or number.
    #[arg(default_value = "SIGTERM")]
    pub signal: String,
    /// Send the signal to every process of the container.
    #[arg(short, long)]
    pub all: bool,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
enum Command {
    /// Create a container (its VM boots; only `start` remains).
    Create(liboci_cli::Create),
    /// Start a created container.
    Start(liboci_cli::Start),
    /// Print a container's state as JSON.
    State(liboci_cli::State),
    /// Send a signal to a container.
    Kill(Kill),
    /// Delete a container and everything it made.
    Delete(liboci_cli::Delete),
    #[command(flatten)]
    Common(CommonCmd),
    /// Print what this host offers and which backend moat will use.
    Check,
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
    #[command(hide = true)]
    Initramfs {
        /// The static `moat-agent` binary.
        #[arg(long)]
        agent: PathBuf,
        /// Where to write the archive.
        #[arg(long, short)]
        output: PathBuf,
    },
}

// Keep the unused StandardCmd import meaningful for readers: moat's verbs are runc's.
#[allow(dead_code)]
type RuncStandardVerbs = StandardCmd;

/// What every command gets.
pub(crate) struct Ctx {
    pub store: Store,
    log: Option<(PathBuf, bool)>,
}

impl Ctx {
    /// Records an error in `--log` in runc's shape (logrus text or JSON).
    fn log_error(&self, msg: &str) {
        let Some((path, json)) = &self.log else {
            return;
        };
        let time = crate::state::now_rfc3339();
        let line = if *json {
            serde_json::json!({ "level": "error", "msg": msg, "time": time }).to_string()
        } else {
            format!("time=\"{time}\" level=error msg={msg:?}")
        };
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }

    /// Loads a container's state with its live status.
    pub fn state(&self, id: &str) -> Result<ContainerState> {
        let mut st = self.store.load(id)?;
        st.status = live_status(&self.store, &st);
        if st.status == Status::Stopped {
            st.pid = 0;
        }
        Ok(st)
    }

    /// A control connection to the container's agent.
    pub fn agent(&self, id: &str) -> Result<AgentClient> {
        let uds = self.store.dir(id).join("vsock.sock");
        AgentClient::connect(&uds, moat_protocol::CONTROL_PORT, Duration::from_secs(30))
            .with_context(|| format!("reaching the sandbox of container {id:?}"))
    }
}

/// Whether a pid is a live moat sandbox process.
pub(crate) fn sandbox_alive(pid: u32) -> bool {
    pid != 0
        && std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|c| c.trim() == "moat")
            .unwrap_or(false)
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                !s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(false)
}

/// The status now: stopped once the sandbox is gone, else what the agent says.
fn live_status(store: &Store, st: &ContainerState) -> Status {
    if st.status == Status::Stopped || !sandbox_alive(st.pid) {
        return Status::Stopped;
    }
    if st.status == Status::Creating {
        return Status::Creating;
    }
    let uds = store.dir(&st.id).join("vsock.sock");
    let Ok(mut agent) =
        AgentClient::connect(&uds, moat_protocol::CONTROL_PORT, Duration::from_secs(5))
    else {
        return st.status;
    };
    match agent.call("State", moat_protocol::Request::State { id: st.id.clone() }) {
        Ok(moat_protocol::Response::State(s)) => match s.status {
            moat_protocol::ContainerStatus::Creating => Status::Creating,
            moat_protocol::ContainerStatus::Created => Status::Created,
            moat_protocol::ContainerStatus::Running => Status::Running,
            moat_protocol::ContainerStatus::Paused => Status::Paused,
            moat_protocol::ContainerStatus::Stopped => Status::Stopped,
        },
        _ => st.status,
    }
}

/// Reads a JSON file with errors naming the field.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let de = &mut serde_json::Deserializer::from_slice(&bytes);
    serde_path_to_error::deserialize(de)
        .map_err(|e| anyhow!("{}: {}: {}", path.display(), e.path(), e.inner()))
}

/// Runs `moat` with `std::env::args`; the process's exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let root = cli
        .global
        .root
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT));
    let json = cli.global.log_format.as_deref() == Some("json");
    let ctx = Ctx {
        store: Store::new(root),
        log: cli.global.log.clone().map(|p| (p, json)),
    };
    match dispatch(&ctx, cli.command) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            let msg = format!("{e:#}");
            ctx.log_error(&msg);
            eprintln!("moat: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(ctx: &Ctx, command: Command) -> Result<i32> {
    match command {
        Command::Create(a) => lifecycle::create(ctx, &a).map(|_| 0),
        Command::Start(a) => lifecycle::start(ctx, &a.container_id).map(|()| 0),
        Command::State(a) => lifecycle::state(ctx, &a.container_id).map(|()| 0),
        Command::Kill(a) => lifecycle::kill(ctx, &a).map(|()| 0),
        Command::Delete(a) => lifecycle::delete(ctx, &a.container_id, a.force).map(|()| 0),
        Command::Common(CommonCmd::Run(a)) => lifecycle::run(ctx, &a),
        Command::Common(CommonCmd::Exec(a)) => exec::exec(ctx, &a),
        Command::Common(CommonCmd::List(a)) => ops::list(ctx, &a).map(|()| 0),
        Command::Common(CommonCmd::Ps(a)) => ops::ps(ctx, &a).map(|()| 0),
        Command::Common(CommonCmd::Pause(a)) => ops::pause(ctx, &a.container_id, true).map(|()| 0),
        Command::Common(CommonCmd::Resume(a)) => {
            ops::pause(ctx, &a.container_id, false).map(|()| 0)
        }
        Command::Common(CommonCmd::Events(a)) => ops::events(ctx, &a).map(|()| 0),
        Command::Common(CommonCmd::Update(a)) => ops::update(ctx, &a).map(|()| 0),
        Command::Common(CommonCmd::Spec(a)) => ops::spec(&a).map(|()| 0),
        Command::Common(CommonCmd::Features(_)) => ops::features().map(|()| 0),
        Command::Common(CommonCmd::Checkpointt(_)) => Err(anyhow!(
            "checkpoint is not supported by moat (VM snapshots are planned)"
        )),
        Command::Check => ops::check(),
        Command::Boot { runs, timeout } => {
            ops::boot(runs, Duration::from_secs(timeout)).map(|()| 0)
        }
        Command::VhostUserVsock {
            socket,
            uds_path,
            guest_cid,
        } => ops::vhost_user_vsock(&socket, &uds_path, guest_cid).map(|()| 0),
        Command::Initramfs { agent, output } => ops::initramfs(&agent, &output).map(|()| 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn runc_style_invocations_parse() {
        for args in [
            &[
                "moat",
                "--root",
                "/r",
                "--log",
                "/l",
                "--log-format",
                "json",
                "create",
                "--bundle",
                "/b",
                "--pid-file",
                "/p",
                "--console-socket",
                "/s",
                "id",
            ][..],
            &[
                "moat",
                "--rootless",
                "auto",
                "--systemd-cgroup",
                "start",
                "id",
            ],
            &["moat", "kill", "id"],
            &["moat", "kill", "--all", "id", "KILL"],
            &[
                "moat",
                "exec",
                "-d",
                "--pid-file",
                "/p",
                "-e",
                "A=b",
                "--cwd",
                "/",
                "-u",
                "1:2",
                "--cap",
                "CAP_CHOWN",
                "id",
                "sh",
                "-c",
                "x",
            ],
            &["moat", "spec", "--rootless", "--bundle", "/b"],
            &["moat", "run", "-d", "--bundle", "/b", "id"],
            &["moat", "delete", "--force", "id"],
            &["moat", "list", "--format", "json", "-q"],
            &[
                "moat",
                "update",
                "--memory",
                "100",
                "--pids-limit",
                "5",
                "id",
            ],
            &["moat", "events", "--stats", "--interval", "2", "id"],
        ] {
            Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        }
    }
}
