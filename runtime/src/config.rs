//! moat's settings: built-in defaults, then the config file, then environment variables, then
//! command-line flags, each layer overriding the one before it.
//!
//! # The file
//!
//! `/etc/moat/config.toml`, or the file `MOAT_CONFIG` names. A missing default file means
//! built-in defaults; a file named by `MOAT_CONFIG` (or passed to [`Config::load_from`]) must
//! exist. Unknown keys are errors, so that a typo is not silently ignored; every error names
//! the file, the line and the key.
//!
//! ```toml
//! kernel = "/usr/local/share/moat/vmlinux"      # guest vmlinux (PVH entry)
//! initramfs = "/usr/local/share/moat/initramfs.cpio"
//! share_dir = "/usr/local/share/moat"           # where kernel and initramfs default to
//! qemu = "qemu-system-x86_64"                   # a bare name is looked up on PATH
//! moat_vmm = "/usr/local/bin/moat-vmm"          # the built-in VMM; default: beside moat, or PATH
//! virtiofsd = "/usr/libexec/virtiofsd"          # default: PATH, ~/.cargo/bin, /usr/libexec
//! backend = "auto"                              # "auto" | "qemu" | "builtin"
//! log_level = "warn"                            # a level, or `target=level,...`
//!
//! [vm]
//! vcpus = 1                 # when the container has no CPU limit
//! memory_mib = 256          # when the container has no memory limit
//! memory_overhead_mib = 128 # added to a container's memory limit
//! ```
//!
//! Relative paths in the file are relative to the file's directory; `qemu`, `moat_vmm` and
//! `virtiofsd` given as a bare name (no `/`) are looked up on `PATH` when started.
//!
//! # Environment
//!
//! `MOAT_KERNEL`, `MOAT_INITRAMFS`, `MOAT_SHARE_DIR`, `MOAT_QEMU`, `MOAT_VMM`,
//! `MOAT_VIRTIOFSD`, `MOAT_BACKEND`, `MOAT_LOG` (the log level). An empty variable counts as unset.
//!
//! # Precedence
//!
//! Each layer is applied in turn, and within a layer `share_dir` first, so that `share_dir`
//! moves the kernel and initramfs of the layers below it, and an explicit `kernel` or
//! `initramfs` of the same layer still wins. So `MOAT_SHARE_DIR` overrides a `kernel` set in
//! the file, and `MOAT_KERNEL` overrides both.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;
use serde::Deserialize;

use self::layers::{check_layer, env_layer, parse_file};
use crate::backend::BuiltinSupport;
use crate::host::KvmKind;
use crate::paths::{GuestPaths, DEFAULT_SHARE_DIR};
use crate::qemu::Accel;

/// Where the config file is looked for when `MOAT_CONFIG` is not set.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/moat/config.toml";
/// The smallest guest moat boots, in MiB.
pub const MIN_MEMORY_MIB: u32 = 128;
/// The largest guest memory accepted, in MiB (1 TiB).
pub const MAX_MEMORY_MIB: u32 = 1 << 20;
/// The most vCPUs accepted.
pub const MAX_VCPUS: u32 = 255;
/// The kernel's CFS period when a spec gives a quota without one, in µs.
const DEFAULT_CPU_PERIOD: u64 = 100_000;

/// A failure loading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists but could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file that was asked for explicitly does not exist.
    #[error("config file {path} (named by {by}) does not exist")]
    Missing {
        /// The file.
        path: PathBuf,
        /// `MOAT_CONFIG`, or whoever named it.
        by: String,
    },
    /// The file is not valid TOML, or a setting in it is wrong.
    #[error("{path}: {}{}{message}", line.map(|l| format!("line {l}: ")).unwrap_or_default(), key.as_ref().map(|k| format!("{k}: ")).unwrap_or_default())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The line (1-based), when known.
        line: Option<usize>,
        /// The key, e.g. `vm.vcpus`, when known.
        key: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// An environment variable or flag has a value moat cannot use.
    #[error("{name}={value:?}: {why}")]
    Invalid {
        /// The variable (`MOAT_BACKEND`) or flag (`--backend`).
        name: String,
        /// Its value.
        value: String,
        /// What is wrong.
        why: String,
    },
}

/// Which VMM runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The built-in VMM on hardware KVM, QEMU with TCG otherwise.
    #[default]
    Auto,
    /// QEMU, with KVM where it is hardware-backed and TCG elsewhere.
    Qemu,
    /// moat's built-in VMM (needs hardware KVM).
    Builtin,
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Backend::Auto),
            "qemu" => Ok(Backend::Qemu),
            "builtin" => Ok(Backend::Builtin),
            _ => Err("expected one of \"auto\", \"qemu\", \"builtin\"".into()),
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Auto => "auto",
            Backend::Qemu => "qemu",
            Backend::Builtin => "builtin",
        })
    }
}

/// The VMM that will run the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vmm {
    /// QEMU with this accelerator.
    Qemu(Accel),
    /// The built-in VMM.
    Builtin,
}

/// The backend moat will use, and why, in words for `moat check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendChoice {
    /// What runs the guest.
    pub vmm: Vmm,
    /// E.g. `qemu with TCG: no /dev/kvm`.
    pub why: String,
}

impl Backend {
    /// The VMM for this setting on a host with this KVM; an error a person can act on when
    /// the setting cannot be honoured.
    pub fn choose(self, kvm: KvmKind) -> Result<BackendChoice, String> {
        match self {
            Backend::Auto => {
                let (vmm, why) = crate::backend::auto_vmm(kvm);
                Ok(BackendChoice {
                    vmm,
                    why: why.to_string(),
                })
            }
            Backend::Builtin => match crate::backend::builtin_support(kvm) {
                BuiltinSupport::Full => Ok(BackendChoice {
                    vmm: Vmm::Builtin,
                    why: "built-in VMM: /dev/kvm is hardware KVM (backend = \"builtin\")".into(),
                }),
                BuiltinSupport::BootOnly | BuiltinSupport::None => Err(format!(
                    "backend = \"builtin\", but the built-in VMM cannot run containers here \
                     ({}): set backend = \"auto\" or \"qemu\" (or MOAT_BACKEND)",
                    kvm.describe()
                )),
            },
            Backend::Qemu => {
                let accel = Accel::for_host(kvm);
                let why = match accel {
                    Accel::Kvm => "qemu with KVM: hardware KVM".to_string(),
                    Accel::Tcg => crate::backend::auto_vmm(kvm).1.to_string(),
                };
                Ok(BackendChoice {
                    vmm: Vmm::Qemu(accel),
                    why: format!("{why} (backend = \"qemu\")"),
                })
            }
        }
    }
}

/// Default guest size, for containers without limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmDefaults {
    /// vCPUs of a guest whose container has no CPU limit.
    pub vcpus: u32,
    /// Memory of a guest whose container has no memory limit, MiB.
    pub memory_mib: u32,
    /// Added to a container's memory limit for the guest kernel and agent, MiB.
    pub memory_overhead_mib: u32,
}

impl Default for VmDefaults {
    fn default() -> Self {
        Self {
            vcpus: 1,
            memory_mib: 256,
            memory_overhead_mib: 128,
        }
    }
}

/// One layer of settings: the file, the environment or the command line. `None` leaves the
/// layer below in place. The CLI fills one from its flags for [`Config::load_with`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// Guest kernel.
    pub kernel: Option<PathBuf>,
    /// Guest initramfs.
    pub initramfs: Option<PathBuf>,
    /// Directory holding `vmlinux` and `initramfs.cpio`.
    pub share_dir: Option<PathBuf>,
    /// QEMU binary.
    pub qemu: Option<PathBuf>,
    /// moat-vmm binary.
    pub moat_vmm: Option<PathBuf>,
    /// virtiofsd binary.
    pub virtiofsd: Option<PathBuf>,
    /// Backend.
    pub backend: Option<Backend>,
    /// Default vCPUs.
    pub vcpus: Option<u32>,
    /// Default memory, MiB.
    pub memory_mib: Option<u32>,
    /// Memory overhead, MiB.
    pub memory_overhead_mib: Option<u32>,
    /// Log level.
    pub log_level: Option<String>,
}

/// The resolved settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Guest `vmlinux`.
    pub kernel: PathBuf,
    /// Guest initramfs.
    pub initramfs: PathBuf,
    /// `qemu-system-x86_64` (a bare name is looked up on `PATH`).
    pub qemu: PathBuf,
    /// `moat-vmm`, the built-in VMM's process (a bare name is looked up on `PATH`).
    pub moat_vmm: PathBuf,
    /// virtiofsd.
    pub virtiofsd: PathBuf,
    /// Which VMM to use; see [`Backend::choose`].
    pub backend: Backend,
    /// Default guest size.
    pub vm: VmDefaults,
    /// The log level (`warn` by default), as a `tracing` filter.
    pub log_level: String,
    /// The config file that was read, if any.
    pub file: Option<PathBuf>,
}

/// A guest's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmSize {
    /// vCPUs.
    pub vcpus: u32,
    /// Memory, MiB.
    pub memory_mib: u32,
}

impl Config {
    /// Loads the configuration with no command-line overrides: the file `MOAT_CONFIG` names
    /// (or `/etc/moat/config.toml`, which may be absent), then the environment.
    pub fn load() -> Result<Self, ConfigError> {
        Self::load_with(&Overrides::default())
    }

    /// As [`Self::load`], with the command line's flags on top.
    pub fn load_with(cli: &Overrides) -> Result<Self, ConfigError> {
        Self::load_from(None, cli)
    }

    /// As [`Self::load_with`], reading `file` (which must exist) instead of the file
    /// `MOAT_CONFIG` or the default names, when given.
    pub fn load_from(file: Option<&Path>, cli: &Overrides) -> Result<Self, ConfigError> {
        let env = |k: &str| std::env::var_os(k);
        let (path, by) = match file {
            Some(p) => (p.to_path_buf(), Some("the command line".to_string())),
            None => match env("MOAT_CONFIG").filter(|v| !v.is_empty()) {
                Some(p) => (PathBuf::from(p), Some("MOAT_CONFIG".to_string())),
                None => (PathBuf::from(DEFAULT_CONFIG_PATH), None),
            },
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => Some(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match by {
                Some(by) => return Err(ConfigError::Missing { path, by }),
                None => None,
            },
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        Self::resolve(text.as_deref().map(|t| (path.as_path(), t)), env, cli)
    }

    /// The whole resolution without touching the process environment: `file` is the config
    /// file's path and text, `env` looks up environment variables (also `PATH` and `HOME`
    /// for finding virtiofsd).
    pub fn resolve(
        file: Option<(&Path, &str)>,
        env: impl Fn(&str) -> Option<OsString>,
        cli: &Overrides,
    ) -> Result<Self, ConfigError> {
        let share = PathBuf::from(DEFAULT_SHARE_DIR);
        let mut cfg = Config {
            kernel: share.join("vmlinux"),
            initramfs: share.join("initramfs.cpio"),
            qemu: PathBuf::from("qemu-system-x86_64"),
            moat_vmm: PathBuf::new(),
            virtiofsd: PathBuf::new(),
            backend: Backend::Auto,
            vm: VmDefaults::default(),
            log_level: "warn".into(),
            file: None,
        };
        if let Some((path, text)) = file {
            cfg.apply(&parse_file(path, text)?);
            cfg.file = Some(path.to_path_buf());
        }
        cfg.apply(&env_layer(&env)?);
        check_layer(cli, |field| format!("--{}", field.replace('_', "-")))?;
        cfg.apply(cli);
        if cfg.virtiofsd.as_os_str().is_empty() {
            cfg.virtiofsd = find_virtiofsd(&env);
        }
        if cfg.moat_vmm.as_os_str().is_empty() {
            cfg.moat_vmm = default_moat_vmm();
        }
        Ok(cfg)
    }

    fn apply(&mut self, o: &Overrides) {
        if let Some(s) = &o.share_dir {
            self.kernel = s.join("vmlinux");
            self.initramfs = s.join("initramfs.cpio");
        }
        let set = |dst: &mut PathBuf, src: &Option<PathBuf>| {
            if let Some(p) = src {
                dst.clone_from(p);
            }
        };
        set(&mut self.kernel, &o.kernel);
        set(&mut self.initramfs, &o.initramfs);
        set(&mut self.qemu, &o.qemu);
        set(&mut self.moat_vmm, &o.moat_vmm);
        set(&mut self.virtiofsd, &o.virtiofsd);
        self.backend = o.backend.unwrap_or(self.backend);
        self.vm.vcpus = o.vcpus.unwrap_or(self.vm.vcpus);
        self.vm.memory_mib = o.memory_mib.unwrap_or(self.vm.memory_mib);
        self.vm.memory_overhead_mib = o.memory_overhead_mib.unwrap_or(self.vm.memory_overhead_mib);
        if let Some(l) = &o.log_level {
            self.log_level.clone_from(l);
        }
    }

    /// The guest's paths for [`crate::boot`] and [`crate::qemu`].
    pub fn guest_paths(&self) -> GuestPaths {
        GuestPaths {
            kernel: self.kernel.clone(),
            initramfs: self.initramfs.clone(),
            qemu: self.qemu.clone(),
            moat_vmm: self.moat_vmm.clone(),
        }
    }

    /// The guest's size for a container's spec on this host; see [`vm_size`].
    pub fn vm_size(&self, spec: &Spec) -> VmSize {
        let host = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        vm_size(&self.vm, spec, host)
    }
}

impl std::str::FromStr for Config {
    type Err = ConfigError;
    /// The built-in defaults with `s` as the config file (named `<string>` in errors); no
    /// environment, no flags.
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        Self::resolve(
            Some((Path::new("<string>"), s)),
            |_| None,
            &Overrides::default(),
        )
    }
}

/// Sizes the guest for a container:
///
/// - vCPUs: `ceil(linux.resources.cpu.quota / period)` when there is a quota (the period
///   defaulting to the kernel's 100 ms), the number of CPUs in `linux.resources.cpu.cpus`
///   when there is a cpuset, the smaller of the two when there are both, else
///   `defaults.vcpus`; at least 1 and at most `host_cpus`;
/// - memory: `linux.resources.memory.limit` rounded up to MiB plus
///   `defaults.memory_overhead_mib`, or `defaults.memory_mib` without a limit (absent, 0 or
///   -1); at least [`MIN_MEMORY_MIB`].
pub fn vm_size(defaults: &VmDefaults, spec: &Spec, host_cpus: u32) -> VmSize {
    let res = spec.linux().as_ref().and_then(|l| l.resources().as_ref());
    let cpu = res.and_then(|r| r.cpu().as_ref());
    let quota = cpu
        .and_then(|c| Some((c.quota().filter(|q| *q > 0)?, c.period())))
        .map(|(q, p)| {
            let p = p.filter(|p| *p > 0).unwrap_or(DEFAULT_CPU_PERIOD);
            (q as u64).div_ceil(p).min(u64::from(u32::MAX)) as u32
        });
    let cpuset = cpu.and_then(|c| c.cpus().as_deref()).and_then(cpuset_count);
    let vcpus = match (quota, cpuset) {
        (Some(q), Some(s)) => q.min(s),
        (Some(n), None) | (None, Some(n)) => n,
        (None, None) => defaults.vcpus,
    };
    let limit = res
        .and_then(|r| r.memory().as_ref())
        .and_then(|m| m.limit())
        .filter(|l| *l > 0);
    let memory = match limit {
        Some(l) => (l as u64)
            .div_ceil(1 << 20)
            .saturating_add(u64::from(defaults.memory_overhead_mib))
            .min(u64::from(u32::MAX)) as u32,
        None => defaults.memory_mib,
    };
    VmSize {
        vcpus: vcpus.clamp(1, host_cpus.max(1)),
        memory_mib: memory.max(MIN_MEMORY_MIB),
    }
}

/// How many CPUs a cpuset list (`0-3,6,8-9`) names; `None` when it is malformed or empty.
pub fn cpuset_count(list: &str) -> Option<u32> {
    let mut ranges = Vec::new();
    for part in list.trim().split(',') {
        let part = part.trim();
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.trim().parse::<u64>().ok()?, b.trim().parse::<u64>().ok()?),
            None => {
                let n = part.parse::<u64>().ok()?;
                (n, n)
            }
        };
        if lo > hi {
            return None;
        }
        ranges.push((lo, hi));
    }
    ranges.sort_unstable();
    let (mut count, mut covered_to) = (0u64, None::<u64>);
    for (lo, hi) in ranges {
        let start = match covered_to {
            Some(c) if c >= hi => continue,
            Some(c) if c >= lo => c + 1,
            _ => lo,
        };
        count += hi - start + 1;
        covered_to = Some(hi);
    }
    u32::try_from(count).ok().filter(|n| *n > 0)
}

/// The virtiofsd binary when no setting names one: `virtiofsd` on `PATH`, then
/// `~/.cargo/bin/virtiofsd` (where `cargo install` puts it), then `/usr/libexec/virtiofsd`
/// (Debian's package).
fn find_virtiofsd(env: &impl Fn(&str) -> Option<OsString>) -> PathBuf {
    let on_path = env("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join("virtiofsd"))
        .find(|p| p.is_file());
    on_path
        .or_else(|| {
            env("HOME")
                .map(|h| PathBuf::from(h).join(".cargo/bin/virtiofsd"))
                .filter(|p| p.is_file())
        })
        .unwrap_or_else(|| PathBuf::from("/usr/libexec/virtiofsd"))
}

/// `moat-vmm` beside the running binary (`scripts/build-guest.sh` installs `moat`, the shim
/// and `moat-vmm` together), else the bare name, looked up on `PATH`.
fn default_moat_vmm() -> PathBuf {
    std::env::current_exe()
        .ok()
        .map(|exe| exe.with_file_name("moat-vmm"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("moat-vmm"))
}

/// A program as it would be started: a name with a `/` as it is, a bare name looked up on
/// `PATH`. `None` when there is no such file.
pub fn find_program(prog: &Path) -> Option<PathBuf> {
    if prog.as_os_str().as_encoded_bytes().contains(&b'/') {
        return prog.is_file().then(|| prog.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

mod layers;

#[cfg(test)]
mod tests;
