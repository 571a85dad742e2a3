//! `linux.resources` to cgroup v2 interface files, with runc's conversions from the
//! cgroup v1 units of the OCI spec.
//!
//! | OCI field | file | conversion |
//! |---|---|---|
//! | `cpu.shares` | `cpu.weight` | [`cpu_shares_to_weight`] (0: untouched) |
//! | `cpu.quota`, `cpu.period` | `cpu.max` | "QUOTA PERIOD"; quota -1 is "max", 0 untouched |
//! | `cpu.burst` | `cpu.max.burst` | as is |
//! | `cpu.idle` | `cpu.idle` | as is |
//! | `cpu.cpus`, `cpu.mems` | `cpuset.cpus`, `cpuset.mems` | as is ("" untouched) |
//! | `memory.limit` | `memory.max` | -1 is "max", 0 untouched |
//! | `memory.reservation` | `memory.low` | -1 is "max", 0 untouched |
//! | `memory.swap` | `memory.swap.max` | [`memory_swap_to_v2`]: swap − limit |
//! | `pids.limit` | `pids.max` | ≤ 0 is "max" |
//! | `blockIO.weight`, `weightDevice` | `io.weight` | [`blkio_weight_to_io_weight`] |
//! | (same, without `io.weight`) | `io.bfq.weight` | as is (BFQ takes 1–1000) |
//! | `blockIO.throttle*Device` | `io.max` | one line per device; rate 0 is "max" |
//! | `hugepageLimits` | `hugetlb.<size>.max` (and `.rsvd.max`) | -1 is "max" |
//! | `rdma` | `rdma.max` | "DEV hca_handle=N hca_object=N" |
//! | `unified` | the key's file | as is, last, so it overrides the above |
//!
//! Absent fields leave their files untouched, so the same code serves `UpdateResources`.
//! Not applied, because cgroup v2 has no such knob: `memory.kernel`, `memory.kernelTCP`,
//! `memory.swappiness`, `memory.disableOOMKiller`, `memory.useHierarchy`,
//! `cpu.realtimeRuntime`, `cpu.realtimePeriod`, `blockIO.leafWeight`, `network`.
//!
//! `devices` is accepted and not enforced: cgroup v2 device control is an eBPF program,
//! and inside a moat guest the VM boundary is the device boundary, since the guest has only
//! the virtual devices the VMM gave it. `memory.oom.group` is left at the kernel default.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};

use oci_spec::runtime::{LinuxBlockIo, LinuxCpu, LinuxMemory, LinuxResources};

use super::{read_file, write_file, Cgroup, CgroupError, Result};

/// runc's `ConvertCPUSharesToCgroupV2Value`: maps cgroup v1 `cpu.shares` [2, 262144] onto
/// `cpu.weight` [1, 10000] linearly, so the default 1024 becomes 39. Values outside the v1
/// range are clamped to it first, as the v1 kernel did.
pub fn cpu_shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

/// runc's `ConvertBlkIOToIOWeightValue`: maps the blkio weight [10, 1000] onto `io.weight`
/// [1, 10000] linearly, so the default 500 becomes 4950. Values outside the range are
/// clamped to it.
pub fn blkio_weight_to_io_weight(weight: u16) -> u64 {
    let weight = u64::from(weight.clamp(10, 1000));
    1 + (weight - 10) * 9999 / 990
}

/// runc's `ConvertMemorySwapToCgroupV2Value`: the OCI `swap` is the memory+swap limit (the
/// v1 `memory.memsw.limit_in_bytes`), `memory.swap.max` is swap alone. Both values as in
/// the spec, 0 for absent; the result is what to write: -1 for "max", 0 for "leave
/// untouched" (unless `swap` was positive, then it is "0"), otherwise swap − limit.
pub fn memory_swap_to_v2(swap: i64, limit: i64) -> Result<i64, String> {
    // As with v1: an unlimited memory and no swap setting means both unlimited.
    if limit == -1 && swap == 0 {
        return Ok(-1);
    }
    if swap == -1 || swap == 0 {
        return Ok(swap);
    }
    if limit == 0 || limit == -1 {
        return Err(format!(
            "a swap limit ({swap}) needs a memory limit (linux.resources.memory.limit)"
        ));
    }
    if limit < 0 {
        return Err(format!("invalid memory limit {limit}"));
    }
    if swap < limit {
        return Err(format!(
            "memory+swap limit {swap} is below the memory limit {limit}; it must be >= it"
        ));
    }
    Ok(swap - limit)
}

/// A byte limit where -1 means unlimited: its value for the file, `None` for 0 (untouched).
fn bytes_or_max(field: &str, value: i64) -> Result<Option<String>> {
    match value {
        0 => Ok(None),
        -1 => Ok(Some("max".to_string())),
        v if v > 0 => Ok(Some(v.to_string())),
        v => Err(CgroupError::Invalid {
            field: field.to_string(),
            reason: format!("{v} is neither a number of bytes nor -1 (unlimited)"),
        }),
    }
}

/// Checks a blkio weight against the OCI range.
fn check_blkio_weight(field: &str, weight: u16) -> Result<()> {
    if (10..=1000).contains(&weight) {
        Ok(())
    } else {
        Err(CgroupError::Invalid {
            field: field.to_string(),
            reason: format!("{weight} is outside the blkio weight range 10-1000"),
        })
    }
}

/// Checks a device number pair and formats it as `MAJ:MIN`.
fn device(field: &str, major: i64, minor: i64) -> Result<String> {
    if major < 0 || minor < 0 {
        return Err(CgroupError::Invalid {
            field: field.to_string(),
            reason: format!("device {major}:{minor} has a negative number"),
        });
    }
    Ok(format!("{major}:{minor}"))
}

/// Whether `size` is a hugetlb page size as the kernel names them: digits then KB, MB or GB.
fn is_page_size(size: &str) -> bool {
    let digits = size.trim_end_matches(['K', 'M', 'G', 'B']);
    let unit = &size[digits.len()..];
    !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && matches!(unit, "KB" | "MB" | "GB")
}

/// Interface files that `unified` may not write: they are the runtime's, not resources.
const NOT_RESOURCES: &[&str] = &[
    "cgroup.procs",
    "cgroup.threads",
    "cgroup.kill",
    "cgroup.freeze",
    "cgroup.subtree_control",
    "cgroup.type",
];

/// One line to write to a multi-line interface file, and the field it comes from.
struct Line {
    field: String,
    text: String,
}

impl Cgroup {
    /// Applies `linux.resources` to the cgroup. Absent fields are left as they are, so it
    /// also serves `UpdateResources`. It stops at the first error, which names the OCI
    /// field; the fields applied before it stay applied.
    pub fn apply(&self, res: &LinuxResources) -> Result<()> {
        if let Some(cpu) = res.cpu() {
            self.apply_cpu(cpu)?;
        }
        if let Some(memory) = res.memory() {
            self.apply_memory(memory)?;
        }
        if let Some(pids) = res.pids() {
            let limit = pids.limit();
            let value = if limit > 0 {
                limit.to_string()
            } else {
                "max".to_string()
            };
            self.set("linux.resources.pids.limit", "pids.max", &value)?;
        }
        if let Some(block_io) = res.block_io() {
            self.apply_block_io(block_io)?;
        }
        for (i, hp) in res.hugepage_limits().iter().flatten().enumerate() {
            self.apply_hugepage_limit(i, hp.page_size(), hp.limit())?;
        }
        if let Some(rdma) = res.rdma() {
            let mut lines = Vec::new();
            for (dev, limits) in rdma.iter().collect::<BTreeMap<_, _>>() {
                let field = format!("linux.resources.rdma[{dev:?}]");
                if dev.is_empty() || dev.contains(char::is_whitespace) {
                    return Err(CgroupError::Invalid {
                        field,
                        reason: "not an RDMA device name".to_string(),
                    });
                }
                let mut text = dev.clone();
                if let Some(n) = limits.hca_handles() {
                    text.push_str(&format!(" hca_handle={n}"));
                }
                if let Some(n) = limits.hca_objects() {
                    text.push_str(&format!(" hca_object={n}"));
                }
                if text.len() > dev.len() {
                    lines.push(Line { field, text });
                }
            }
            self.set_lines("rdma.max", &lines)?;
        }
        if let Some(devices) = res.devices() {
            crate::debug!(
                "cgroups: {} device rules not enforced in the guest (the VM is the device boundary)",
                devices.len()
            );
        }
        if let Some(unified) = res.unified() {
            for (key, value) in unified.iter().collect::<BTreeMap<_, _>>() {
                self.apply_unified(key, value)?;
            }
        }
        Ok(())
    }

    /// Whether the cgroup has the interface file `name`.
    fn has(&self, name: &str) -> bool {
        fs::metadata(self.file(name)).is_ok_and(|m| m.is_file())
    }

    /// Writes `value` to the interface file `name` for the OCI `field`.
    fn set(&self, field: &str, name: &str, value: &str) -> Result<()> {
        write_file(&self.file(name), value).map_err(|error| apply_error(field, name, value, error))
    }

    /// Writes each line with a write(2) of its own on one open file, as the kernel parses
    /// one device per write (`io.max`, `io.weight`, `rdma.max`).
    fn set_lines(&self, name: &str, lines: &[Line]) -> Result<()> {
        let Some(first) = lines.first() else {
            return Ok(());
        };
        let mut file = OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(self.file(name))
            .map_err(|error| apply_error(&first.field, name, &first.text, error))?;
        for line in lines {
            file.write_all(format!("{}\n", line.text).as_bytes())
                .map_err(|error| apply_error(&line.field, name, &line.text, error))?;
        }
        Ok(())
    }

    /// Reads an interface file that applying `field` depends on.
    fn get(&self, field: &str, name: &str) -> Result<String> {
        read_file(&self.file(name)).map_err(|error| {
            if error.kind() == io::ErrorKind::NotFound {
                CgroupError::Missing {
                    field: field.to_string(),
                    file: name.to_string(),
                }
            } else {
                CgroupError::Read {
                    field: field.to_string(),
                    file: name.to_string(),
                    error,
                }
            }
        })
    }

    fn apply_cpu(&self, cpu: &LinuxCpu) -> Result<()> {
        let idle = cpu.idle();
        // The kernel refuses cpu.weight while the group is idle: leave idle before setting
        // the weight, enter it after.
        if let Some(0) = idle {
            self.set("linux.resources.cpu.idle", "cpu.idle", "0")?;
        }
        if let Some(shares) = cpu.shares().filter(|&s| s != 0) {
            let weight = cpu_shares_to_weight(shares).to_string();
            self.set("linux.resources.cpu.shares", "cpu.weight", &weight)?;
        }
        if let Some(idle) = idle.filter(|&i| i != 0) {
            self.set("linux.resources.cpu.idle", "cpu.idle", &idle.to_string())?;
        }
        if let Some(burst) = cpu.burst() {
            self.set(
                "linux.resources.cpu.burst",
                "cpu.max.burst",
                &burst.to_string(),
            )?;
        }
        let quota = cpu.quota().filter(|&q| q != 0);
        let period = cpu.period().filter(|&p| p != 0);
        let quota_text = |q: i64| {
            if q < 0 {
                "max".to_string()
            } else {
                q.to_string()
            }
        };
        let cpu_max = match (quota, period) {
            (None, None) => None,
            // The kernel keeps the period when only the quota is written.
            (Some(q), None) => Some(("linux.resources.cpu.quota", quota_text(q))),
            (Some(q), Some(p)) => Some((
                "linux.resources.cpu.quota/period",
                format!("{} {p}", quota_text(q)),
            )),
            // Keep the current quota: "max PERIOD" would lift it.
            (None, Some(p)) => {
                let field = "linux.resources.cpu.period";
                let current = self.get(field, "cpu.max")?;
                let quota = current.split_ascii_whitespace().next().unwrap_or("max");
                Some((field, format!("{quota} {p}")))
            }
        };
        if let Some((field, value)) = cpu_max {
            self.set(field, "cpu.max", &value)?;
        }
        if let Some(cpus) = cpu.cpus().as_deref().filter(|c| !c.is_empty()) {
            self.set("linux.resources.cpu.cpus", "cpuset.cpus", cpus)?;
        }
        if let Some(mems) = cpu.mems().as_deref().filter(|m| !m.is_empty()) {
            self.set("linux.resources.cpu.mems", "cpuset.mems", mems)?;
        }
        Ok(())
    }

    fn apply_memory(&self, memory: &LinuxMemory) -> Result<()> {
        const LIMIT: &str = "linux.resources.memory.limit";
        const SWAP: &str = "linux.resources.memory.swap";
        const RESERVATION: &str = "linux.resources.memory.reservation";
        let limit = memory.limit().unwrap_or(0);
        let swap = memory.swap().unwrap_or(0);
        // Check everything before writing anything.
        let max = bytes_or_max(LIMIT, limit)?;
        let low = bytes_or_max(RESERVATION, memory.reservation().unwrap_or(0))?;
        let swap_max = match memory_swap_to_v2(swap, limit) {
            // swap == limit: no swap at all.
            Ok(0) if swap > 0 => Some("0".to_string()),
            Ok(0) => None,
            Ok(-1) => Some("max".to_string()),
            Ok(v) => Some(v.to_string()),
            Err(reason) => {
                return Err(CgroupError::Invalid {
                    field: SWAP.to_string(),
                    reason,
                })
            }
        };
        if memory.check_before_update() == Some(true) && limit > 0 {
            let usage = self.get(LIMIT, "memory.current")?;
            let usage: u64 = usage.trim().parse().unwrap_or(0);
            if usage >= limit.unsigned_abs() {
                return Err(CgroupError::Invalid {
                    field: LIMIT.to_string(),
                    reason: format!(
                        "{limit} is not above the current usage {usage} (checkBeforeUpdate)"
                    ),
                });
            }
        }
        if let Some(max) = max {
            self.set(LIMIT, "memory.max", &max)?;
        }
        if let Some(swap_max) = swap_max {
            match self.set(SWAP, "memory.swap.max", &swap_max) {
                // Without swap accounting there is nothing to lift or to turn off.
                Err(CgroupError::Missing { .. }) if swap_max == "max" || swap_max == "0" => {}
                other => other?,
            }
        }
        if let Some(low) = low {
            self.set(RESERVATION, "memory.low", &low)?;
        }
        Ok(())
    }

    fn apply_block_io(&self, bio: &LinuxBlockIo) -> Result<()> {
        // Weights: (field, device, blkio weight).
        let mut weights: Vec<(String, Option<String>, u16)> = Vec::new();
        if let Some(w) = bio.weight().filter(|&w| w != 0) {
            let field = "linux.resources.blockIO.weight".to_string();
            check_blkio_weight(&field, w)?;
            weights.push((field, None, w));
        }
        for (i, d) in bio.weight_device().iter().flatten().enumerate() {
            let Some(w) = d.weight() else { continue };
            let field = format!("linux.resources.blockIO.weightDevice[{i}]");
            check_blkio_weight(&format!("{field}.weight"), w)?;
            let dev = device(&field, d.major(), d.minor())?;
            weights.push((field, Some(dev), w));
        }
        if let Some((first, _, _)) = weights.first() {
            // io.weight (cost model) takes 1-10000; BFQ's io.bfq.weight takes 1-1000.
            let (name, convert) = if self.has("io.weight") {
                ("io.weight", true)
            } else if self.has("io.bfq.weight") {
                ("io.bfq.weight", false)
            } else {
                return Err(CgroupError::Missing {
                    field: first.clone(),
                    file: "io.weight or io.bfq.weight".to_string(),
                });
            };
            let lines: Vec<Line> = weights
                .into_iter()
                .map(|(field, dev, w)| {
                    let w = if convert {
                        blkio_weight_to_io_weight(w)
                    } else {
                        u64::from(w)
                    };
                    let text = match dev {
                        Some(dev) => format!("{dev} {w}"),
                        None => w.to_string(),
                    };
                    Line { field, text }
                })
                .collect();
            self.set_lines(name, &lines)?;
        }

        // io.max: one line per device, with every limit given for it.
        let throttles = [
            (
                "rbps",
                "throttleReadBpsDevice",
                bio.throttle_read_bps_device(),
            ),
            (
                "wbps",
                "throttleWriteBpsDevice",
                bio.throttle_write_bps_device(),
            ),
            (
                "riops",
                "throttleReadIOPSDevice",
                bio.throttle_read_iops_device(),
            ),
            (
                "wiops",
                "throttleWriteIOPSDevice",
                bio.throttle_write_iops_device(),
            ),
        ];
        let mut devices: Vec<(String, Vec<String>, Vec<String>)> = Vec::new();
        for (key, name, list) in throttles {
            for (i, d) in list.iter().flatten().enumerate() {
                let field = format!("linux.resources.blockIO.{name}[{i}]");
                let dev = device(&field, d.major(), d.minor())?;
                let rate = match d.rate() {
                    0 => "max".to_string(),
                    r => r.to_string(),
                };
                let at = match devices.iter().position(|(d, _, _)| *d == dev) {
                    Some(at) => at,
                    None => {
                        devices.push((dev, Vec::new(), Vec::new()));
                        devices.len() - 1
                    }
                };
                devices[at].1.push(format!("{key}={rate}"));
                devices[at].2.push(field);
            }
        }
        let lines: Vec<Line> = devices
            .into_iter()
            .map(|(dev, limits, fields)| Line {
                field: fields.join(", "),
                text: format!("{dev} {}", limits.join(" ")),
            })
            .collect();
        self.set_lines("io.max", &lines)
    }

    fn apply_hugepage_limit(&self, i: usize, page_size: &str, limit: i64) -> Result<()> {
        let field = format!("linux.resources.hugepageLimits[{i}]");
        if !is_page_size(page_size) {
            return Err(CgroupError::Invalid {
                field: format!("{field}.pageSize"),
                reason: format!("{page_size:?} is not a page size such as 2MB or 1GB"),
            });
        }
        let name = format!("hugetlb.{page_size}.max");
        if !self.has(&name) {
            return Err(CgroupError::Missing {
                field: format!("{field}.pageSize"),
                file: name,
            });
        }
        let limit_field = format!("{field}.limit");
        let value = match limit {
            -1 => "max".to_string(),
            l if l >= 0 => l.to_string(),
            l => {
                return Err(CgroupError::Invalid {
                    field: limit_field,
                    reason: format!("{l} is neither a number of bytes nor -1 (unlimited)"),
                })
            }
        };
        self.set(&limit_field, &name, &value)?;
        // Reservations too where the kernel accounts them (5.11), as runc does.
        let rsvd = format!("hugetlb.{page_size}.rsvd.max");
        if self.has(&rsvd) {
            self.set(&limit_field, &rsvd, &value)?;
        }
        Ok(())
    }

    fn apply_unified(&self, key: &str, value: &str) -> Result<()> {
        let field = format!("linux.resources.unified[{key:?}]");
        let invalid = |reason: &str| CgroupError::Invalid {
            field: field.clone(),
            reason: reason.to_string(),
        };
        if key.is_empty() || key == "." || key == ".." || key.contains(['/', '\0']) {
            return Err(invalid("not the name of a file of the cgroup"));
        }
        if NOT_RESOURCES.contains(&key) {
            return Err(invalid("is the runtime's to manage, not a resource"));
        }
        if !self.has(key) {
            return Err(CgroupError::Missing {
                field,
                file: key.to_string(),
            });
        }
        self.set(&field, key, value)
    }
}

/// The error of a failed write for `field`: a missing file is told apart, as it means a
/// controller is not there rather than a value the kernel refused.
fn apply_error(field: &str, name: &str, value: &str, error: io::Error) -> CgroupError {
    if error.kind() == io::ErrorKind::NotFound {
        CgroupError::Missing {
            field: field.to_string(),
            file: name.to_string(),
        }
    } else {
        CgroupError::Write {
            field: field.to_string(),
            file: name.to_string(),
            value: value.to_string(),
            error,
        }
    }
}
