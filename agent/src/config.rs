//! The agent's settings, read from the kernel command line (`/proc/cmdline`).
//!
//! Parameters with a dot in their name are not passed to init as arguments or environment by
//! the kernel, so the agent's live under the `moat.` prefix:
//!
//! | parameter | meaning | default |
//! |---|---|---|
//! | `moat.log=error\|warn\|info\|debug\|trace` | log level on the console | `info` |
//! | `moat.port=N` | vsock port of the control server | 1024 |
//! | `moat.poweroff_after_ready=1` | power off right after the ready line (boot tests without a vsock device) | off |
//! | `moat.share=TAG` | mount the virtio-fs share `TAG` at `/run/moat/share` (container rootfs and volumes) | none |
//! | `moat.test_port=N` | serve the test services (echo, sink, connect-out) on vsock port N | off |

use moat_protocol::CONTROL_PORT;

/// Where the sandbox's virtio-fs share is mounted in the guest.
pub const SHARE_DIR: &str = "/run/moat/share";

/// Log levels, lowest (quietest) first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Only errors.
    Error,
    /// Errors and warnings.
    Warn,
    /// The default: lifecycle events.
    Info,
    /// Per-request detail.
    Debug,
    /// Everything.
    Trace,
}

/// What the command line asked of the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// Console log level.
    pub log_level: LogLevel,
    /// Control server port.
    pub control_port: u32,
    /// Power off as soon as the agent is ready.
    pub poweroff_after_ready: bool,
    /// virtio-fs tag of the sandbox's share, mounted at [`SHARE_DIR`].
    pub share_tag: Option<String>,
    /// Port of the test services, when enabled.
    pub test_port: Option<u32>,
    /// `moat.` parameters that were present but not understood, reported as warnings.
    pub unknown: Vec<String>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            log_level: LogLevel::Info,
            control_port: CONTROL_PORT,
            poweroff_after_ready: false,
            test_port: None,
            share_tag: None,
            unknown: Vec::new(),
        }
    }
}

impl AgentConfig {
    /// Parses a kernel command line. Never fails: a bad value keeps the default and is
    /// reported in `unknown`, because a typo on the command line must not stop the guest.
    pub fn from_cmdline(cmdline: &str) -> Self {
        let mut cfg = Self::default();
        for word in cmdline.split_ascii_whitespace() {
            let Some(rest) = word.strip_prefix("moat.") else {
                continue;
            };
            let (key, value) = rest.split_once('=').unwrap_or((rest, "1"));
            let ok = match key {
                "log" => parse_level(value).map(|l| cfg.log_level = l).is_some(),
                "port" => parse_port(value).map(|p| cfg.control_port = p).is_some(),
                "share" => (!value.is_empty() && value.len() <= 36)
                    .then(|| cfg.share_tag = Some(value.to_string()))
                    .is_some(),
                "test_port" => parse_port(value).map(|p| cfg.test_port = Some(p)).is_some(),
                "poweroff_after_ready" => parse_bool(value)
                    .map(|b| cfg.poweroff_after_ready = b)
                    .is_some(),
                _ => false,
            };
            if !ok {
                cfg.unknown.push(word.to_string());
            }
        }
        cfg
    }
}

fn parse_level(v: &str) -> Option<LogLevel> {
    Some(match v {
        "error" => LogLevel::Error,
        "warn" => LogLevel::Warn,
        "info" => LogLevel::Info,
        "debug" => LogLevel::Debug,
        "trace" => LogLevel::Trace,
        _ => return None,
    })
}

fn parse_port(v: &str) -> Option<u32> {
    v.parse::<u32>().ok().filter(|p| *p != 0 && *p != u32::MAX)
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "y" | "yes" | "on" | "true" => Some(true),
        "0" | "n" | "no" | "off" | "false" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_without_moat_parameters() {
        let cfg = AgentConfig::from_cmdline("console=ttyS0 quiet panic=-1 reboot=t");
        assert_eq!(cfg, AgentConfig::default());
    }

    #[test]
    fn reads_every_setting() {
        let cfg = AgentConfig::from_cmdline(
            "quiet moat.log=debug moat.port=2000 moat.poweroff_after_ready moat.test_port=5000",
        );
        assert_eq!(cfg.log_level, LogLevel::Debug);
        assert_eq!(cfg.control_port, 2000);
        assert!(cfg.poweroff_after_ready);
        assert_eq!(cfg.test_port, Some(5000));
        assert!(cfg.unknown.is_empty());
    }

    #[test]
    fn bad_values_keep_defaults_and_are_reported() {
        let cfg =
            AgentConfig::from_cmdline("moat.log=loud moat.port=0 moat.port=x moat.colour=red");
        assert_eq!(cfg.log_level, LogLevel::Info);
        assert_eq!(cfg.control_port, CONTROL_PORT);
        assert_eq!(
            cfg.unknown,
            [
                "moat.log=loud",
                "moat.port=0",
                "moat.port=x",
                "moat.colour=red"
            ]
        );
    }
}
