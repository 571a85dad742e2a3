//! Guest-side OCI hooks: `createContainer` (in the container's namespaces, before
//! `pivot_root`) and `startContainer` (in the container, after start, before the program
//! runs). Host-side hooks (`prestart`, `createRuntime`, `poststart`, `poststop`) are the
//! runtime's, on the host.
//!
//! A hook gets the container's state as JSON on stdin, as the runtime spec says; a hook
//! that fails or outlives its `timeout` fails the operation.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::{Hook, Spec};

/// A failed hook; the message names it.
#[derive(Debug, thiserror::Error)]
#[error("hooks.{phase}[{index}] ({path}): {what}")]
pub struct HookError {
    /// `createContainer` or `startContainer`.
    pub phase: &'static str,
    /// Its index.
    pub index: usize,
    /// Its path.
    pub path: String,
    /// What went wrong.
    pub what: String,
}

/// The state document a hook reads on stdin.
pub fn state_json(id: &str, status: &str, pid: u32, spec: &Spec) -> String {
    serde_json::json!({
        "ociVersion": spec.version(),
        "id": id,
        "status": status,
        "pid": pid,
        "bundle": "/",
        "annotations": spec.annotations().clone().unwrap_or_default(),
    })
    .to_string()
}

/// Runs the hooks of one phase in order.
pub fn run(phase: &'static str, hooks: &[Hook], state: &str) -> Result<(), HookError> {
    for (index, h) in hooks.iter().enumerate() {
        let fail = |what: String| HookError {
            phase,
            index,
            path: h.path().display().to_string(),
            what,
        };
        let mut cmd = Command::new(h.path());
        if let Some(args) = h.args() {
            if let Some((first, rest)) = args.split_first() {
                use std::os::unix::process::CommandExt;
                cmd.arg0(first).args(rest);
            }
        }
        cmd.env_clear();
        for kv in h.env().iter().flatten() {
            if let Some((k, v)) = kv.split_once('=') {
                cmd.env(k, v);
            }
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| fail(format!("cannot run: {e}")))?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(state.as_bytes());
        }
        let timeout = h
            .timeout()
            .filter(|t| *t > 0)
            .map(|t| Duration::from_secs(t as u64));
        let start = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) => {}
                Err(e) => return Err(fail(format!("waiting: {e}"))),
            }
            if timeout.is_some_and(|t| start.elapsed() > t) {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!(
                    "timed out after {}s",
                    timeout.unwrap_or_default().as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        if !status.success() {
            return Err(fail(format!("exited with {status}")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::HookBuilder;

    #[test]
    fn hooks_get_state_on_stdin_and_failures_name_the_hook() {
        let dir = std::env::temp_dir().join(format!("moat-hook-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("state");
        let ok = HookBuilder::default()
            .path("/bin/sh")
            .args(vec![
                "sh".into(),
                "-c".into(),
                format!("cat > {}", out.display()),
            ])
            .build()
            .unwrap();
        let bad = HookBuilder::default().path("/bin/false").build().unwrap();
        let spec = Spec::default();
        let state = state_json("c1", "created", 42, &spec);
        run("createContainer", std::slice::from_ref(&ok), &state).unwrap();
        let seen: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        assert_eq!(seen["id"], "c1");
        assert_eq!(seen["pid"], 42);
        let e = run("startContainer", &[ok, bad], &state).unwrap_err();
        assert_eq!(e.index, 1);
        assert!(
            e.to_string()
                .starts_with("hooks.startContainer[1] (/bin/false): exited"),
            "{e}"
        );
        let slow = HookBuilder::default()
            .path("/bin/sleep")
            .args(vec!["sleep".into(), "5".into()])
            .timeout(1i64)
            .build()
            .unwrap();
        assert!(run("createContainer", &[slow], &state)
            .unwrap_err()
            .what
            .contains("timed out"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
