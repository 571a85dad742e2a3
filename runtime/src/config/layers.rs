//! The layers above the built-in defaults: the config file (parsed and checked with the
//! line and key of each error) and the environment, plus the checks every layer shares.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Backend, ConfigError, Overrides, MAX_MEMORY_MIB, MAX_VCPUS, MIN_MEMORY_MIB};

/// The file as written, before validation and path resolution.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    kernel: Option<PathBuf>,
    initramfs: Option<PathBuf>,
    share_dir: Option<PathBuf>,
    qemu: Option<PathBuf>,
    moat_vmm: Option<PathBuf>,
    virtiofsd: Option<PathBuf>,
    backend: Option<Backend>,
    #[serde(default, deserialize_with = "de_log_level")]
    log_level: Option<String>,
    #[serde(default)]
    vm: FileVm,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct FileVm {
    #[serde(default, deserialize_with = "de_vcpus")]
    vcpus: Option<u32>,
    #[serde(default, deserialize_with = "de_memory")]
    memory_mib: Option<u32>,
    #[serde(default, deserialize_with = "de_overhead")]
    memory_overhead_mib: Option<u32>,
}

fn check_vcpus(n: u32) -> Result<u32, String> {
    (1..=MAX_VCPUS)
        .contains(&n)
        .then_some(n)
        .ok_or_else(|| format!("must be between 1 and {MAX_VCPUS}, not {n}"))
}

fn check_memory(n: u32) -> Result<u32, String> {
    (MIN_MEMORY_MIB..=MAX_MEMORY_MIB)
        .contains(&n)
        .then_some(n)
        .ok_or_else(|| {
            format!("must be between {MIN_MEMORY_MIB} and {MAX_MEMORY_MIB} MiB, not {n}")
        })
}

fn check_overhead(n: u32) -> Result<u32, String> {
    (n <= MAX_MEMORY_MIB)
        .then_some(n)
        .ok_or_else(|| format!("must be at most {MAX_MEMORY_MIB} MiB, not {n}"))
}

/// A level (`off`, `error`, `warn`, `info`, `debug`, `trace`) or comma-separated
/// `target=level` directives, as `tracing`'s `EnvFilter` reads them.
pub(super) fn check_log_level(s: &str) -> Result<String, String> {
    const LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];
    let ok = !s.trim().is_empty()
        && s.split(',').all(|d| {
            let level = d.rsplit_once('=').map_or(
                d,
                |(target, l)| {
                    if target.trim().is_empty() {
                        ""
                    } else {
                        l
                    }
                },
            );
            LEVELS.contains(&level.trim().to_ascii_lowercase().as_str())
        });
    ok.then(|| s.to_string()).ok_or_else(|| {
        "expected a level (off, error, warn, info, debug, trace) or `target=level,...`".into()
    })
}

fn de_with<'de, D, T, U>(d: D, check: fn(T) -> Result<U, String>) -> Result<Option<U>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    check(T::deserialize(d)?)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn de_vcpus<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    de_with(d, check_vcpus)
}

fn de_memory<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    de_with(d, check_memory)
}

fn de_overhead<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    de_with(d, check_overhead)
}

fn de_log_level<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    de_with(d, |s: String| check_log_level(&s))
}

/// Parses the file into a layer, resolving its relative paths against its directory.
pub(super) fn parse_file(path: &Path, text: &str) -> Result<Overrides, ConfigError> {
    let line_of = |span: Option<std::ops::Range<usize>>| {
        span.map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
    };
    let err = |line, key, message: &str| ConfigError::Parse {
        path: path.to_path_buf(),
        line,
        key,
        message: message.trim_end().to_string(),
    };
    let de =
        toml::Deserializer::parse(text).map_err(|e| err(line_of(e.span()), None, e.message()))?;
    let f: FileConfig = serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let key = (key != ".").then_some(key);
        err(line_of(e.inner().span()), key, e.inner().message())
    })?;
    let dir = path.parent().unwrap_or(Path::new("/"));
    let rel = |p: Option<PathBuf>| p.map(|p| dir.join(p));
    let prog = |p: Option<PathBuf>| {
        p.map(|p| match p.as_os_str().as_encoded_bytes().contains(&b'/') {
            true => dir.join(p),
            false => p,
        })
    };
    Ok(Overrides {
        kernel: rel(f.kernel),
        initramfs: rel(f.initramfs),
        share_dir: rel(f.share_dir),
        qemu: prog(f.qemu),
        moat_vmm: prog(f.moat_vmm),
        virtiofsd: prog(f.virtiofsd),
        backend: f.backend,
        vcpus: f.vm.vcpus,
        memory_mib: f.vm.memory_mib,
        memory_overhead_mib: f.vm.memory_overhead_mib,
        log_level: f.log_level,
    })
}

/// The environment's layer.
pub(super) fn env_layer(env: &impl Fn(&str) -> Option<OsString>) -> Result<Overrides, ConfigError> {
    let get = |k: &str| env(k).filter(|v| !v.is_empty());
    let path = |k: &str| get(k).map(PathBuf::from);
    let backend = match get("MOAT_BACKEND") {
        None => None,
        Some(v) => {
            let s = v.to_string_lossy();
            Some(s.parse().map_err(|why| ConfigError::Invalid {
                name: "MOAT_BACKEND".into(),
                value: s.to_string(),
                why,
            })?)
        }
    };
    let layer = Overrides {
        kernel: path("MOAT_KERNEL"),
        initramfs: path("MOAT_INITRAMFS"),
        share_dir: path("MOAT_SHARE_DIR"),
        qemu: path("MOAT_QEMU"),
        moat_vmm: path("MOAT_VMM"),
        virtiofsd: path("MOAT_VIRTIOFSD"),
        backend,
        log_level: get("MOAT_LOG").map(|v| v.to_string_lossy().into_owned()),
        ..Overrides::default()
    };
    check_layer(&layer, |field| match field {
        "log_level" => "MOAT_LOG".into(),
        "moat_vmm" => "MOAT_VMM".into(),
        other => format!("MOAT_{}", other.to_ascii_uppercase()),
    })?;
    Ok(layer)
}

/// Validates the numbers and the log level of a layer that did not come from the file.
pub(super) fn check_layer(o: &Overrides, name: impl Fn(&str) -> String) -> Result<(), ConfigError> {
    let invalid = |field: &str, value: String, why| ConfigError::Invalid {
        name: name(field),
        value,
        why,
    };
    for (field, value, check) in [
        (
            "vcpus",
            o.vcpus,
            check_vcpus as fn(u32) -> Result<u32, String>,
        ),
        ("memory_mib", o.memory_mib, check_memory),
        ("memory_overhead_mib", o.memory_overhead_mib, check_overhead),
    ] {
        if let Some(v) = value {
            check(v).map_err(|why| invalid(field, v.to_string(), why))?;
        }
    }
    if let Some(l) = &o.log_level {
        check_log_level(l).map_err(|why| invalid("log_level", l.clone(), why))?;
    }
    Ok(())
}
