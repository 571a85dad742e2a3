//! Running a bundle on the host with `moat-agent run` (or `runc run`, the peer), and
//! finding what a run left behind: processes that still mention the bundle, mounts that
//! were not there before.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::bundle::{agent_bin, Bundle};

/// How long one container may run in a test before it is killed and the test fails.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// The outcome of one run.
#[derive(Debug)]
pub struct RunOutput {
    /// The exit code, or 128+n for death by signal n (as shells report it).
    pub code: i32,
    /// Everything written to stdout.
    pub stdout: String,
    /// Everything written to stderr.
    pub stderr: String,
}

impl std::fmt::Display for RunOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit code {}\n--- stdout\n{}--- stderr\n{}---",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs a command with its stdio discarded; how long it took. It must succeed (its stderr
/// is in the failure message).
pub fn timed(mut cmd: Command) -> Duration {
    let start = Instant::now();
    let out = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let took = start.elapsed();
    assert_eq!(
        code_of(out.status),
        0,
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

/// The exit code of a status, 128+n for a signal.
pub fn code_of(s: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))
}

/// A running `moat-agent run --bundle DIR --id ID`, its stdio piped.
#[derive(Debug)]
pub struct Running {
    child: Child,
    out: mpsc::Receiver<(bool, String)>,
}

/// A container id unique to this test process.
pub fn unique_id(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "moat-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

impl Running {
    /// Starts the agent on a bundle whose `config.json` is written. With
    /// `MOAT_HOST_RUNTIME=runc` it starts `runc run` instead: the feature tests then check
    /// themselves against runc's behaviour.
    pub fn agent(bundle: &Bundle, id: &str) -> Self {
        if std::env::var("MOAT_HOST_RUNTIME").as_deref() == Ok("runc") {
            return Self::spawn(runc_command(bundle, id));
        }
        Self::spawn(agent_command(bundle, id))
    }

    /// Starts any command with piped stdio.
    pub fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        let (tx, out) = mpsc::channel();
        let readers: [(bool, Box<dyn Read + Send>); 2] = [
            (true, Box::new(child.stdout.take().expect("piped stdout"))),
            (false, Box::new(child.stderr.take().expect("piped stderr"))),
        ];
        for (is_out, mut r) in readers {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = r.read_to_end(&mut buf);
                let _ = tx.send((is_out, String::from_utf8_lossy(&buf).into_owned()));
            });
        }
        Running { child, out }
    }

    /// The agent's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Writes to the container's stdin (the agent passes its own stdin on).
    pub fn write_stdin(&mut self, data: &[u8]) {
        let stdin = self.child.stdin.as_mut().expect("piped stdin");
        stdin
            .write_all(data)
            .expect("writing to the container's stdin");
        stdin.flush().expect("flushing the container's stdin");
    }

    /// Waits for the exit (killing it after `timeout`, which fails the test) and for the
    /// output. Output pipes still open two seconds after the exit mean some process of the
    /// container outlived the agent: that fails the test too.
    pub fn wait(mut self, timeout: Duration) -> RunOutput {
        drop(self.child.stdin.take());
        let start = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("waiting for the agent") {
                break s;
            }
            if start.elapsed() > timeout {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let (stdout, stderr) = collect(&self.out, Duration::from_secs(2));
                panic!(
                    "no exit after {timeout:?}; killed it\n--- stdout\n{stdout}--- stderr\n{stderr}"
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let (stdout, stderr) = collect(&self.out, Duration::from_secs(2));
        RunOutput {
            code: code_of(status),
            stdout,
            stderr,
        }
    }
}

fn collect(out: &mpsc::Receiver<(bool, String)>, grace: Duration) -> (String, String) {
    let (mut stdout, mut stderr) = (None, None);
    let deadline = Instant::now() + grace;
    while stdout.is_none() || stderr.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        match out.recv_timeout(left) {
            Ok((true, s)) => stdout = Some(s),
            Ok((false, s)) => stderr = Some(s),
            Err(_) => break,
        }
    }
    let held = "(still held open by a leftover process: the container outlived the agent)\n";
    (
        stdout.unwrap_or_else(|| held.into()),
        stderr.unwrap_or_else(|| held.into()),
    )
}

/// `moat-agent run --bundle DIR --id ID`.
pub fn agent_command(bundle: &Bundle, id: &str) -> Command {
    let mut cmd = Command::new(agent_bin());
    cmd.arg("run")
        .arg("--bundle")
        .arg(bundle.path())
        .arg("--id")
        .arg(id);
    cmd
}

/// `runc run --bundle DIR ID`, failing the test when runc is not installed.
pub fn runc_command(bundle: &Bundle, id: &str) -> Command {
    assert!(
        on_path("runc"),
        "runc is missing: run `apt-get install runc` (scripts/setup-host.sh does)"
    );
    let mut cmd = Command::new("runc");
    cmd.arg("run").arg("--bundle").arg(bundle.path()).arg(id);
    cmd
}

/// Runs a bundle with the agent to the end.
pub fn run_agent(bundle: &Bundle) -> RunOutput {
    Running::agent(bundle, &unique_id("run")).wait(RUN_TIMEOUT)
}

/// The processes (other than this one) whose command line mentions `needle`, as
/// `(pid, command line)`.
pub fn processes_mentioning(needle: &str) -> Vec<(u32, String)> {
    let me = std::process::id();
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push((pid, cmdline.trim_end().to_string()));
        }
    }
    found
}

/// The children of a process (from `/proc/<pid>/task/*/children`).
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut kids = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return kids;
    };
    for t in tasks.flatten() {
        if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
            kids.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
    }
    kids
}

/// This process's mounts, one entry per `/proc/self/mountinfo` line without the mount and
/// parent ids (which say nothing about what is mounted where).
pub fn mount_table() -> BTreeSet<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .map(|l| l.splitn(3, ' ').nth(2).unwrap_or(l).to_string())
        .collect()
}

/// The inode of a namespace file (`/proc/self/ns/net`, `/run/netns/x`), as the checker's
/// `ns=TYPE:INODE` takes it.
pub fn ns_inode(path: impl AsRef<Path>) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let p = path.as_ref();
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
        .ino()
}

/// Whether a command is on `PATH`.
pub fn on_path(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(cmd).is_file()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_process_by_its_command_line_and_as_a_child() {
        let marker = format!("moat-marker-{}", std::process::id());
        let mut child = Command::new("sh")
            .args(["-c", "sleep 30; true", &marker])
            .spawn()
            .unwrap();
        // Until the child has exec'd, its command line is this test's.
        let start = Instant::now();
        let mut found = processes_mentioning(&marker);
        while found.is_empty() && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
            found = processes_mentioning(&marker);
        }
        assert!(children_of(std::process::id()).contains(&child.id()));
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, child.id());
        assert!(processes_mentioning(&marker).is_empty());
    }

    #[test]
    fn mount_table_drops_the_ids() {
        let t = mount_table();
        assert!(t.iter().any(|l| l.contains(" / / ")), "{t:?}");
        assert!(on_path("sh"));
        assert!(!on_path("no-such-command-moat"));
    }
}
