//! Container requests and replies: what the host asks the agent to do with OCI containers,
//! and the state, statistics and events it reports back.

use serde::{Deserialize, Serialize};

pub use oci_spec::runtime::{LinuxResources, Process, Spec};

/// Creates a container up to the point where only `StartContainer` remains: the init process
/// exists, inside its namespaces and cgroup, and waits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateContainer {
    /// Container id, unique in the sandbox.
    pub id: String,
    /// The OCI runtime spec (`config.json`). `root.path` is ignored in favour of `rootfs`.
    pub spec: Box<Spec>,
    /// Where the container's root filesystem is in the guest (on the virtio-fs share).
    pub rootfs: String,
    /// How the init process's stdio is connected.
    pub stdio: StdioRequest,
}

/// Runs a new process in a running container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecProcess {
    /// Container id.
    pub id: String,
    /// Id of the new process, unique within the container.
    pub exec_id: String,
    /// The process, as in `config.json`'s `process`.
    pub process: Box<Process>,
    /// How its stdio is connected.
    pub stdio: StdioRequest,
}

/// Which stdio streams the host wants. With `process.terminal` the process gets a pty and
/// one stream carries both directions; otherwise each requested stream is a pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StdioRequest {
    /// Connect stdin (otherwise it is `/dev/null`).
    pub stdin: bool,
    /// Connect stdout (otherwise `/dev/null`).
    pub stdout: bool,
    /// Connect stderr (otherwise `/dev/null`).
    pub stderr: bool,
}

/// The vsock ports on which the agent waits for the host to connect each stream. The
/// process does not run (`StartContainer`) or is not started (exec) past its setup until
/// every announced port has been connected, so no output is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StdioPorts {
    /// stdin pipe.
    pub stdin: Option<u32>,
    /// stdout pipe.
    pub stdout: Option<u32>,
    /// stderr pipe.
    pub stderr: Option<u32>,
    /// The pty (both directions) when `terminal` is true.
    pub tty: Option<u32>,
}

/// A process the agent started: its guest pid and where its stdio is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessStarted {
    /// Pid in the guest's pid namespace.
    pub pid: u32,
    /// Stdio ports to connect.
    pub stdio: StdioPorts,
}

/// Names a process: the container's init (`exec_id: None`) or an exec'd process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRef {
    /// Container id.
    pub id: String,
    /// Exec id, or `None` for the container's init process.
    pub exec_id: Option<String>,
}

/// The lifecycle states of the OCI runtime spec, plus `Paused` as runc reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerStatus {
    /// Being created.
    Creating,
    /// Created; waiting for start.
    Created,
    /// Init process running.
    Running,
    /// Frozen by the cgroup freezer.
    Paused,
    /// Init process exited.
    Stopped,
}

/// What `State` reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerState {
    /// Container id.
    pub id: String,
    /// Lifecycle state.
    pub status: ContainerStatus,
    /// Guest pid of init (0 once stopped and reaped).
    pub pid: u32,
    /// Init's exit status when stopped (128+n for a signal death).
    pub exit_status: Option<i32>,
}

/// cgroup v2 statistics of one container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStats {
    /// `cpu.stat`.
    pub cpu: CpuStats,
    /// `memory.current`, `memory.max`, `memory.stat`, `memory.events`.
    pub memory: MemoryStats,
    /// `pids.current`, `pids.max`.
    pub pids: PidsStats,
    /// `io.stat`, one entry per device.
    pub io: Vec<IoDeviceStats>,
}

/// From `cpu.stat`, in microseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuStats {
    /// Total CPU time.
    pub usage_usec: u64,
    /// User CPU time.
    pub user_usec: u64,
    /// System CPU time.
    pub system_usec: u64,
    /// Enforcement periods elapsed.
    pub nr_periods: u64,
    /// Periods throttled.
    pub nr_throttled: u64,
    /// Time throttled.
    pub throttled_usec: u64,
}

/// Memory, in bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryStats {
    /// `memory.current`.
    pub usage: u64,
    /// `memory.max` (`None` for "max").
    pub limit: Option<u64>,
    /// `memory.swap.current`.
    pub swap_usage: u64,
    /// `anon` of `memory.stat`.
    pub anon: u64,
    /// `file` of `memory.stat`.
    pub file: u64,
    /// `oom_kill` of `memory.events`.
    pub oom_kills: u64,
}

/// Pids.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PidsStats {
    /// `pids.current`.
    pub current: u64,
    /// `pids.max` (`None` for "max").
    pub limit: Option<u64>,
}

/// One line of `io.stat`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoDeviceStats {
    /// Device major.
    pub major: u32,
    /// Device minor.
    pub minor: u32,
    /// Bytes read.
    pub rbytes: u64,
    /// Bytes written.
    pub wbytes: u64,
    /// Read operations.
    pub rios: u64,
    /// Write operations.
    pub wios: u64,
}

/// Something that happened in the guest, pushed on an event subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// A process exited.
    Exited {
        /// Which process.
        process: ProcessRef,
        /// Its guest pid.
        pid: u32,
        /// Exit status (128+n for a signal death).
        status: i32,
    },
    /// The kernel's OOM killer killed a process in the container's cgroup.
    Oom {
        /// Container id.
        id: String,
    },
}
