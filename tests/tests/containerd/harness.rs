//! A containerd of the test's own: its own root, state, sockets and config under a temporary
//! directory, started by the test and killed at the end (with any shim it left).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The runtime name under test.
pub const RUNTIME: &str = "io.containerd.moat.v2";

/// The snapshotter (plain directory copies: nothing to mount in the shim but a bind).
const SNAPSHOTTER: &str = "native";

/// A running containerd.
pub struct Containerd {
    /// Its directory (config, root, state, sockets, log).
    pub dir: PathBuf,
    /// The gRPC socket.
    pub sock: PathBuf,
    /// The containerd namespace the test uses.
    pub ns: &'static str,
    child: Child,
    /// Pod network namespaces that existed before (the CRI plugin's are removed at the end
    /// even when a test failed before `RemovePodSandbox`).
    netns_before: Vec<std::ffi::OsString>,
}

fn cni_netns() -> Vec<std::ffi::OsString> {
    std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().starts_with("cni-"))
        .collect()
}

fn need(bin: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{bin} is not on PATH: run scripts/setup-host.sh (containerd) and scripts/build-guest.sh (the shim)"
    );
}

impl Containerd {
    /// Starts containerd. With `cri`, its CRI plugin is on (runtime handler `moat`, CNI
    /// bridge) and containerd runs in a network namespace of its own, so that the pod
    /// networks it makes stay out of the host's.
    pub fn start(tag: &str, cri: bool) -> Self {
        for bin in ["containerd", "ctr", "containerd-shim-moat-v2"] {
            need(bin);
        }
        let dir = std::env::temp_dir().join(format!("moat-ctd-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("cni")).unwrap();
        let sock = dir.join("containerd.sock");
        // The VMs of this tier: 128 MiB guests.
        std::fs::write(dir.join("moat-shim.json"), r#"{"memory_mib": 128}"#).unwrap();
        std::fs::write(dir.join("cni/10-moat-test.conflist"), cni_config(&dir)).unwrap();
        std::fs::write(dir.join("config.toml"), config(&dir, cri)).unwrap();
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let netns_before = cni_netns();
        let mut cmd = if cri {
            let mut c = Command::new("unshare");
            c.args([
                "--net",
                "--",
                "sh",
                "-c",
                "ip link set lo up && exec containerd --config \"$0\"",
            ]);
            c
        } else {
            let mut c = Command::new("containerd");
            c.arg("--config");
            c
        };
        // MOAT_SHIM_DIR: a directory holding a containerd-shim-moat-v2 to test instead of
        // the installed one (containerd finds shims on its PATH).
        if let Some(d) = std::env::var_os("MOAT_SHIM_DIR") {
            let path = std::env::var_os("PATH").unwrap_or_default();
            let mut dirs = vec![PathBuf::from(d)];
            dirs.extend(std::env::split_paths(&path));
            cmd.env("PATH", std::env::join_paths(dirs).unwrap());
        }
        let child = cmd
            .arg(dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting containerd");
        let c = Containerd {
            dir,
            sock,
            ns: if cri { "k8s.io" } else { "moat-test" },
            child,
            netns_before,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !c.ctr(&["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "containerd did not come up; log:\n{}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    /// `ctr -a SOCK -n NS ARGS`.
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_cmd(args).output().expect("running ctr")
    }

    /// The `ctr` command, not yet run.
    pub fn ctr_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ctr");
        c.arg("-a")
            .arg(&self.sock)
            .args(["-n", self.ns])
            .args(args)
            .env("CONTAINERD_SNAPSHOTTER", SNAPSHOTTER)
            .stdin(Stdio::null());
        c
    }

    /// `ctr`, which must succeed; its stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        let o = self.ctr(args);
        assert!(
            o.status.success(),
            "ctr {args:?} failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Builds the busybox image and imports it.
    pub fn import_images(&self) {
        let tar = self.dir.join("images.tar");
        super::image::write_layout(&tar);
        self.ctr_ok(&["images", "import", tar.to_str().unwrap()]);
    }

    /// containerd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// Processes of this containerd's shims: their command line names its socket.
    pub fn shims(&self) -> Vec<u32> {
        let needle = self.sock.to_string_lossy().into_owned();
        // The daemons, not the short-lived `start` and `delete` invocations.
        pids_where(|cmd| {
            cmd.contains("containerd-shim-moat-v2")
                && cmd.contains(&needle)
                && cmd.contains("-socket")
        })
    }

    /// Waits until no shim of this containerd is left.
    pub fn wait_no_shims(&self, timeout: Duration) -> Vec<u32> {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.shims();
            if s.is_empty() || Instant::now() > deadline {
                return s;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Containers first, so their shims end cleanly; then containerd; then any shim left
        // (by pid: only processes this test started).
        let out = self.ctr(&["tasks", "ls", "-q"]);
        for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = self.ctr(&["tasks", "kill", "-s", "SIGKILL", id]);
            std::thread::sleep(Duration::from_millis(300));
            let _ = self.ctr(&["tasks", "rm", "-f", id]);
        }
        let out = self.ctr(&["containers", "ls", "-q"]);
        for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = self.ctr(&["containers", "rm", id]);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in self.shims() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(Duration::from_millis(200));
        for n in cni_netns() {
            if !self.netns_before.contains(&n) {
                let p = Path::new("/run/netns").join(&n);
                let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
                let _ = std::fs::remove_file(&p);
            }
        }
        if std::env::var_os("MOAT_KEEP_TEST_DIRS").is_none() {
            let _ = Command::new("umount")
                .args(["-R", "-l"])
                .arg(&self.dir)
                .stderr(Stdio::null())
                .status();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn config(dir: &Path, cri: bool) -> String {
    let d = dir.display();
    let mut disabled = vec![
        "io.containerd.snapshotter.v1.aufs",
        "io.containerd.snapshotter.v1.btrfs",
        "io.containerd.snapshotter.v1.devmapper",
        "io.containerd.snapshotter.v1.zfs",
        "io.containerd.snapshotter.v1.overlayfs",
        "io.containerd.tracing.processor.v1.otlp",
        "io.containerd.internal.v1.tracing",
    ];
    if !cri {
        disabled.push("io.containerd.grpc.v1.cri");
    }
    let disabled = disabled
        .iter()
        .map(|p| format!("{p:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = [{disabled}]

[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[debug]
  level = "debug"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "{SNAPSHOTTER}"
    default_runtime_name = "moat"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.moat]
      runtime_type = "{RUNTIME}"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.moat.options]
        ConfigPath = "{d}/moat-shim.json"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{d}/cni"
"#,
        pause = super::image::PAUSE,
    )
}

/// A bridge in containerd's own network namespace; nothing leaves it.
fn cni_config(dir: &Path) -> String {
    serde_json::json!({
        "cniVersion": "0.4.0",
        "name": "moat-test",
        "plugins": [{
            "type": "bridge",
            "bridge": "moatbr0",
            "isGateway": false,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{ "subnet": "10.234.0.0/24" }]],
                "dataDir": dir.join("cni-ipam"),
            },
        }],
    })
    .to_string()
}

/// Pids whose command line (NULs as spaces) satisfies `f`.
pub fn pids_where(f: impl Fn(&str) -> bool) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if f(&cmd) {
            out.push(pid);
        }
    }
    out
}

/// A process and all its descendants.
pub fn tree(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let p = all[i];
        for t in std::fs::read_dir(format!("/proc/{p}/task"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let kids = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            all.extend(
                kids.split_whitespace()
                    .filter_map(|k| k.parse::<u32>().ok()),
            );
        }
        i += 1;
    }
    all
}

/// A process's name (`comm`).
pub fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Proportional set size of a process, in KiB.
pub fn pss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("Pss:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// CPU time (user + system) of a process, in clock ticks.
pub fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // Fields after the command: state is 0, utime 11, stime 12.
    get(11) + get(12)
}

/// A line from `/proc/<pid>/status` (`Threads`, `VmRSS`), as a number.
pub fn status_field(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Open fds of a process.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}
