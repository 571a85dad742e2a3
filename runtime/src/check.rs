//! `moat check`: what this host offers, which backend moat will use and why, and what to do
//! when something moat needs is missing.
//!
//! [`Probes::gather`] looks at the host (the only part that touches it); [`Report::new`]
//! turns the facts into lines a person reads, a verdict and an exit code, so every branch is
//! tested with made-up facts.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::{find_program, Backend, BackendChoice, Config, Vmm, DEFAULT_CONFIG_PATH};
use crate::host::KvmKind;

/// How long `<tool> --version` may take.
const VERSION_TIMEOUT: Duration = Duration::from_secs(5);

/// A helper program, looked for and asked its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolProbe {
    /// Found, and `--version` answered.
    Found {
        /// Where it is.
        path: PathBuf,
        /// The first line `--version` printed.
        version: String,
    },
    /// Found, but `--version` failed.
    Broken {
        /// Where it is.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
    /// Not found.
    Missing {
        /// The name or path that was looked for.
        looked_for: PathBuf,
    },
}

/// A file the guest boots from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileProbe {
    /// A readable regular file.
    Found {
        /// Where.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
    },
    /// Absent or unusable.
    Missing {
        /// Where it was looked for.
        path: PathBuf,
        /// Why it cannot be used (`no such file`, `is a directory`, ...).
        why: String,
    },
}

/// Everything `moat check` looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probes {
    /// What `/dev/kvm` is.
    pub kvm: KvmKind,
    /// Whether `/dev/vhost-vsock` exists.
    pub vhost_vsock: bool,
    /// Whether `/dev/vhost-net` exists.
    pub vhost_net: bool,
    /// `qemu-system-x86_64`.
    pub qemu: ToolProbe,
    /// `moat-vmm`.
    pub moat_vmm: ToolProbe,
    /// virtiofsd.
    pub virtiofsd: ToolProbe,
    /// The guest kernel.
    pub kernel: FileProbe,
    /// The guest initramfs.
    pub initramfs: FileProbe,
    /// The configured backend.
    pub backend: Backend,
    /// The config file that was read, if any.
    pub config_file: Option<PathBuf>,
}

impl Probes {
    /// Looks at this host, with the paths and backend of `cfg`.
    pub fn gather(cfg: &Config) -> Self {
        Self {
            kvm: crate::host::detect_kvm(),
            vhost_vsock: Path::new("/dev/vhost-vsock").exists(),
            vhost_net: Path::new("/dev/vhost-net").exists(),
            qemu: probe_tool(&cfg.qemu),
            moat_vmm: probe_tool(&cfg.moat_vmm),
            virtiofsd: probe_tool(&cfg.virtiofsd),
            kernel: probe_file(&cfg.kernel),
            initramfs: probe_file(&cfg.initramfs),
            backend: cfg.backend,
            config_file: cfg.file.clone(),
        }
    }
}

/// Finds `prog` (on `PATH` when it is a bare name) and runs `prog --version`.
pub fn probe_tool(prog: &Path) -> ToolProbe {
    let Some(path) = find_program(prog) else {
        return ToolProbe::Missing {
            looked_for: prog.to_path_buf(),
        };
    };
    match version_line(&path) {
        Ok(version) => ToolProbe::Found { path, version },
        Err(why) => ToolProbe::Broken { path, why },
    }
}

/// Whether `path` is a readable regular file, and its size.
pub fn probe_file(path: &Path) -> FileProbe {
    let missing = |why: String| FileProbe::Missing {
        path: path.to_path_buf(),
        why,
    };
    match std::fs::metadata(path) {
        Ok(m) if !m.is_file() => missing("not a regular file".into()),
        Ok(m) => match std::fs::File::open(path) {
            Ok(_) => FileProbe::Found {
                path: path.to_path_buf(),
                size: m.len(),
            },
            Err(e) => missing(e.to_string()),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => missing("no such file".into()),
        Err(e) => missing(e.to_string()),
    }
}

/// The first non-empty line `path --version` prints, waiting at most [`VERSION_TIMEOUT`].
fn version_line(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let mut child = Command::new(path)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run it: {e}"))?;
    let deadline = Instant::now() + VERSION_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "`--version` did not finish within {VERSION_TIMEOUT:?}"
                ));
            }
            Err(e) => return Err(format!("waiting for `--version`: {e}")),
        }
    };
    let mut out = Vec::new();
    if let Some(mut so) = child.stdout.take() {
        let _ = so.by_ref().take(64 * 1024).read_to_end(&mut out);
    }
    if !status.success() {
        return Err(format!("`--version` failed ({status})"));
    }
    String::from_utf8_lossy(&out)
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
        .ok_or_else(|| "`--version` printed nothing".into())
}

/// One line of the report: a label and what was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// E.g. `host KVM`.
    pub label: &'static str,
    /// E.g. `hardware (kvm_intel/kvm_amd with vmx/svm)`.
    pub text: String,
}

/// What `moat check` prints, and its verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The facts, one line each, ending with the backend.
    pub lines: Vec<Line>,
    /// The backend moat will use, or why none can be used.
    pub backend: Result<BackendChoice, String>,
    /// What to do, one item per missing thing; empty when moat can run containers here.
    pub todo: Vec<String>,
}

impl Report {
    /// Turns the facts into the report.
    pub fn new(p: &Probes) -> Self {
        let config = p
            .config_file
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
        let mut lines = Vec::new();
        let mut todo = Vec::new();
        let mut line = |label, text: String| lines.push(Line { label, text });

        line("host KVM", kvm_text(p.kvm).into());
        line(
            "built-in VMM",
            crate::backend::builtin_support(p.kvm).describe().into(),
        );
        let backend = p.backend.choose(p.kvm);
        let builtin = matches!(&backend, Ok(c) if c.vmm == Vmm::Builtin);
        line(
            "/dev/vhost-vsock",
            format!(
                "{} (not needed: moat serves vsock to QEMU itself, over vhost-user)",
                present(p.vhost_vsock)
            ),
        );
        line(
            "/dev/vhost-net",
            format!("{} (not used yet)", present(p.vhost_net)),
        );

        let tools = [
            (
                "qemu",
                &p.qemu,
                "install Debian's qemu-system-x86 (`apt-get install qemu-system-x86`)",
                "MOAT_QEMU",
                "qemu",
            ),
            (
                "moat-vmm",
                &p.moat_vmm,
                "run scripts/build-guest.sh (it installs moat-vmm beside moat)",
                "MOAT_VMM",
                "moat_vmm",
            ),
            (
                "virtiofsd",
                &p.virtiofsd,
                "run scripts/setup-host.sh (it runs `cargo install virtiofsd`)",
                "MOAT_VIRTIOFSD",
                "virtiofsd",
            ),
        ];
        for (label, probe, install, var, key) in tools {
            let set = format!("set {var} or `{key}` in {}", config.display());
            match probe {
                ToolProbe::Found { path, version } => {
                    line(label, format!("{}, {version}", path.display()))
                }
                ToolProbe::Broken { path, why } => {
                    line(label, format!("{} does not work: {why}", path.display()));
                    todo.push(format!(
                        "{label}: {} does not work; {install}, or {set}",
                        path.display()
                    ));
                }
                ToolProbe::Missing { looked_for } if label == "qemu" && builtin => line(
                    label,
                    format!(
                        "not found ({}; not needed: the built-in VMM runs the guests)",
                        looked_for.display()
                    ),
                ),
                ToolProbe::Missing { looked_for } if label == "moat-vmm" && !builtin => line(
                    label,
                    format!(
                        "not found ({}; not needed: QEMU runs the guests)",
                        looked_for.display()
                    ),
                ),
                ToolProbe::Missing { looked_for } => {
                    let looked = looked_for.display();
                    line(label, format!("not found ({looked})"));
                    todo.push(format!("{label}: {install}, or {set}"));
                }
            }
        }

        let files = [
            ("guest kernel", &p.kernel, "MOAT_KERNEL", "kernel"),
            (
                "guest initramfs",
                &p.initramfs,
                "MOAT_INITRAMFS",
                "initramfs",
            ),
        ];
        for (label, probe, var, key) in files {
            match probe {
                FileProbe::Found { path, size } => {
                    line(label, format!("{}, {}", path.display(), human_size(*size)))
                }
                FileProbe::Missing { path, why } => {
                    line(label, format!("{}: {why}", path.display()));
                    todo.push(format!(
                        "{label}: run scripts/build-guest.sh (it installs the kernel and \
                         initramfs under MOAT_SHARE_DIR, /usr/local/share/moat by default), \
                         or set {var} or `{key}` in {}",
                        config.display()
                    ));
                }
            }
        }

        line(
            "config file",
            match &p.config_file {
                Some(f) => f.display().to_string(),
                None => format!("none ({DEFAULT_CONFIG_PATH} does not exist: built-in defaults)"),
            },
        );
        match &backend {
            Ok(choice) => line("backend", choice.why.clone()),
            Err(why) => {
                line("backend", format!("none: {why}"));
                todo.push(format!("backend: {why}"));
            }
        }
        Self {
            lines,
            backend,
            todo,
        }
    }

    /// Whether moat can run containers on this host.
    pub fn ok(&self) -> bool {
        self.todo.is_empty()
    }

    /// `moat check`'s exit code: 0 when [`Self::ok`], else 1.
    pub fn exit_code(&self) -> i32 {
        if self.ok() {
            0
        } else {
            1
        }
    }

    /// The report as text: one `label: fact` line each, then the verdict and what to do.
    pub fn render(&self) -> String {
        let width = self.lines.iter().map(|l| l.label.len()).max().unwrap_or(0) + 1;
        let mut out = String::new();
        for l in &self.lines {
            out.push_str(&format!("{:<width$} {}\n", format!("{}:", l.label), l.text));
        }
        if self.ok() {
            out.push_str("ok: moat can run containers on this host\n");
        } else {
            let n = self.todo.len();
            let things = if n == 1 { "thing" } else { "things" };
            out.push_str(&format!(
                "not ok: {n} {things} to fix before moat can run containers:\n"
            ));
            for t in &self.todo {
                out.push_str(&format!("  - {t}\n"));
            }
        }
        out
    }
}

/// Runs the checks on this host with `cfg`'s settings.
pub fn check(cfg: &Config) -> Report {
    Report::new(&Probes::gather(cfg))
}

fn kvm_text(kvm: KvmKind) -> &'static str {
    match kvm {
        KvmKind::Hardware => "hardware KVM (kvm_intel/kvm_amd, with vmx/svm)",
        KvmKind::PvmOnly => {
            "PVM-only (kvm_pvm, no vmx/svm): it runs only PVM-enlightened guest kernels; an \
             ordinary guest's system calls fault, so its user space cannot run"
        }
        KvmKind::Unknown => {
            "/dev/kvm is present, but neither kvm_intel/kvm_amd with vmx/svm nor kvm_pvm is \
             loaded"
        }
        KvmKind::Absent => "none (no /dev/kvm)",
    }
}

fn present(yes: bool) -> &'static str {
    if yes {
        "present"
    } else {
        "absent"
    }
}

fn human_size(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
    } else if bytes >= 1 << 10 {
        format!("{:.1} KiB", bytes as f64 / f64::from(1 << 10))
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
mod tests;
