//! The agent's entry point: PID 1 of the guest, or `moat-agent run` on a host (tests).

use std::path::PathBuf;
use std::sync::Arc;

use moat_agent::config::AgentConfig;
use moat_agent::container::manager::{Manager, ManagerConfig};
use moat_agent::container::syscall::LinuxSyscall;
use moat_agent::{hostrun, info, init, log, reaper::Reaper, server, testsvc, warn};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("run") {
        std::process::exit(hostrun::main(&args[2..]));
    }
    if std::process::id() != 1 {
        eprintln!(
            "moat-agent: must run as PID 1 inside a moat guest (it mounts and powers off the machine); \
             `moat-agent run --bundle DIR` runs one bundle on this host"
        );
        std::process::exit(2);
    }
    // A panic in any thread must end the VM with a reason, not leave a guest without its agent.
    std::panic::set_hook(Box::new(|p| init::fatal(&format!("panic: {p}"))));

    if init::on_initramfs() {
        init::fatal(&init::switch_root().to_string());
    }
    if let Err(e) = init::mount_base() {
        init::fatal(&e.to_string());
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let cfg = AgentConfig::from_cmdline(&cmdline);
    log::set_level(cfg.log_level);
    for word in &cfg.unknown {
        warn!("ignoring unknown or invalid kernel parameter {word}");
    }
    let controllers =
        init::enable_cgroup_controllers().unwrap_or_else(|e| init::fatal(&e.to_string()));
    if let Some(tag) = &cfg.share_tag {
        init::mount_share(tag, moat_agent::config::SHARE_DIR)
            .unwrap_or_else(|e| init::fatal(&e.to_string()));
    }
    let reaper =
        Reaper::start().unwrap_or_else(|e| init::fatal(&format!("starting the reaper: {e}")));
    let manager = Manager::new(
        Arc::new(LinuxSyscall),
        reaper,
        ManagerConfig {
            cgroup_root: Some(PathBuf::from("/sys/fs/cgroup")),
            inherit_stdio: false,
        },
    );
    let listener =
        server::listen_vsock(cfg.control_port).unwrap_or_else(|e| init::fatal(&e.to_string()));
    if let Some(port) = cfg.test_port {
        testsvc::start(port).unwrap_or_else(|e| init::fatal(&e.to_string()));
        warn!("test services enabled on vsock port {port} (moat.test_port)");
    }
    log::announce(format_args!(
        "ready version={} protocol={} port={} cgroup2=[{}]",
        env!("CARGO_PKG_VERSION"),
        moat_protocol::PROTOCOL_VERSION,
        cfg.control_port,
        controllers
    ));
    if cfg.poweroff_after_ready {
        info!("moat.poweroff_after_ready is set; powering off");
        init::power_off();
    }
    server::serve(listener, manager)
}
