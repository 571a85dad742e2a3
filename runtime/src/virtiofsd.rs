//! virtiofsd: one per sandbox, serving the sandbox's share directory to the guest over
//! vhost-user-fs, in its own namespace sandbox so that the share is its only view of the
//! host. It exits when QEMU disconnects.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A failure starting virtiofsd.
#[derive(Debug, thiserror::Error)]
pub enum VirtiofsdError {
    /// The binary could not be run.
    #[error("starting {bin}: {source} (run scripts/setup-host.sh, which installs it with `cargo install virtiofsd`, or set MOAT_VIRTIOFSD)")]
    Spawn {
        /// The binary.
        bin: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// It exited or never made its socket.
    #[error("virtiofsd did not create {socket} within {timeout:?}: {why}")]
    NoSocket {
        /// The socket path.
        socket: PathBuf,
        /// How long we waited.
        timeout: Duration,
        /// Its exit status or "still running".
        why: String,
    },
}

/// The virtiofsd binary: `MOAT_VIRTIOFSD`, else `virtiofsd` on `PATH` or in `~/.cargo/bin`.
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("MOAT_VIRTIOFSD") {
        return PathBuf::from(p);
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("virtiofsd"))
        .find(|p| p.is_file());
    on_path
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(".cargo/bin/virtiofsd"))
                .filter(|p| p.is_file())
        })
        .unwrap_or_else(|| PathBuf::from("/usr/libexec/virtiofsd"))
}

/// A running virtiofsd; killed when dropped.
#[derive(Debug)]
pub struct Virtiofsd {
    child: Child,
    socket: PathBuf,
}

impl Virtiofsd {
    /// Starts virtiofsd sharing `dir` on `socket` and waits for the socket to exist.
    pub fn start(dir: &Path, socket: &Path, log: &Path) -> Result<Self, VirtiofsdError> {
        let bin = binary();
        let log = std::fs::File::create(log).map_err(|source| VirtiofsdError::Spawn {
            bin: bin.clone(),
            source,
        })?;
        let mut cmd = Command::new(&bin);
        crate::host::die_with_parent(&mut cmd);
        let mut child = cmd
            .arg("--shared-dir")
            .arg(dir)
            .arg("--socket-path")
            .arg(socket)
            .args([
                "--sandbox",
                "namespace",
                "--cache",
                "auto",
                "--announce-submounts",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|source| VirtiofsdError::Spawn {
                bin: bin.clone(),
                source,
            })?;
        let timeout = Duration::from_secs(10);
        let start = Instant::now();
        while !socket.exists() {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(VirtiofsdError::NoSocket {
                    socket: socket.into(),
                    timeout,
                    why: format!("it exited with {status}"),
                });
            }
            if start.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                return Err(VirtiofsdError::NoSocket {
                    socket: socket.into(),
                    timeout,
                    why: "still running".into(),
                });
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(Self {
            child,
            socket: socket.to_path_buf(),
        })
    }

    /// The vhost-user socket QEMU connects to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `timeout` for it to exit by itself (it does when QEMU disconnects).
    pub fn wait(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if start.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}
