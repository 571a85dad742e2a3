//! Statistics: the `*.stat`, `*.current`, `*.max` and `*.events` files turned into
//! `moat_protocol::ContainerStats`.
//!
//! A controller may be absent (not enabled, or not in the guest kernel), so a missing file
//! reads as zeros, and the parsers accept any content without panicking: unknown keys are
//! skipped and a value that is not a number counts as 0.

use moat_protocol::{ContainerStats, CpuStats, IoDeviceStats, MemoryStats, PidsStats};

use super::{read_file, Cgroup, CgroupError, Result};

/// The `key value` pairs of a flat-keyed file (`cpu.stat`, `memory.stat`, `memory.events`,
/// `cgroup.events`); lines without a value are skipped.
pub(super) fn flat_keyed(content: &str) -> impl Iterator<Item = (&str, &str)> {
    content.lines().filter_map(|line| {
        let mut parts = line.split_ascii_whitespace();
        Some((parts.next()?, parts.next()?))
    })
}

/// A counter: a decimal number, or 0 for anything else.
fn number(value: &str) -> u64 {
    value.trim().parse().unwrap_or(0)
}

/// A limit file (`memory.max`, `pids.max`): `None` for "max", missing or unreadable content.
fn limit(content: Option<&str>) -> Option<u64> {
    content.and_then(|c| c.trim().parse().ok())
}

/// The value of `key` in a flat-keyed file, or 0.
fn keyed(content: &str, key: &str) -> u64 {
    flat_keyed(content)
        .find(|(k, _)| *k == key)
        .map_or(0, |(_, v)| number(v))
}

/// Parses `cpu.stat`.
pub(super) fn parse_cpu_stat(content: &str) -> CpuStats {
    let mut cpu = CpuStats::default();
    for (key, value) in flat_keyed(content) {
        let field = match key {
            "usage_usec" => &mut cpu.usage_usec,
            "user_usec" => &mut cpu.user_usec,
            "system_usec" => &mut cpu.system_usec,
            "nr_periods" => &mut cpu.nr_periods,
            "nr_throttled" => &mut cpu.nr_throttled,
            "throttled_usec" => &mut cpu.throttled_usec,
            _ => continue,
        };
        *field = number(value);
    }
    cpu
}

/// Parses `io.stat`: one line per device, `MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=..
/// dbytes=.. dios=..`. Lines without a valid `MAJ:MIN` are skipped.
pub(super) fn parse_io_stat(content: &str) -> Vec<IoDeviceStats> {
    let mut out = Vec::new();
    for line in content.lines() {
        let mut parts = line.split_ascii_whitespace();
        let Some((major, minor)) = parts.next().and_then(|d| d.split_once(':')) else {
            continue;
        };
        let (Ok(major), Ok(minor)) = (major.parse(), minor.parse()) else {
            continue;
        };
        let mut dev = IoDeviceStats {
            major,
            minor,
            ..IoDeviceStats::default()
        };
        for (key, value) in parts.filter_map(|kv| kv.split_once('=')) {
            let field = match key {
                "rbytes" => &mut dev.rbytes,
                "wbytes" => &mut dev.wbytes,
                "rios" => &mut dev.rios,
                "wios" => &mut dev.wios,
                _ => continue,
            };
            *field = number(value);
        }
        out.push(dev);
    }
    out
}

/// The interface files statistics are made of, as read; `None` where a file is missing.
#[derive(Debug, Default)]
pub(super) struct RawStats {
    pub(super) cpu_stat: Option<String>,
    pub(super) memory_current: Option<String>,
    pub(super) memory_max: Option<String>,
    pub(super) memory_swap_current: Option<String>,
    pub(super) memory_stat: Option<String>,
    pub(super) memory_events: Option<String>,
    pub(super) pids_current: Option<String>,
    pub(super) pids_max: Option<String>,
    pub(super) io_stat: Option<String>,
}

impl RawStats {
    /// Turns the files into statistics.
    pub(super) fn parse(&self) -> ContainerStats {
        fn text(file: &Option<String>) -> &str {
            file.as_deref().unwrap_or("")
        }
        let memory_stat = text(&self.memory_stat);
        ContainerStats {
            cpu: parse_cpu_stat(text(&self.cpu_stat)),
            memory: MemoryStats {
                usage: number(text(&self.memory_current)),
                limit: limit(self.memory_max.as_deref()),
                swap_usage: number(text(&self.memory_swap_current)),
                anon: keyed(memory_stat, "anon"),
                file: keyed(memory_stat, "file"),
                oom_kills: keyed(text(&self.memory_events), "oom_kill"),
            },
            pids: PidsStats {
                current: number(text(&self.pids_current)),
                limit: limit(self.pids_max.as_deref()),
            },
            io: parse_io_stat(text(&self.io_stat)),
        }
    }
}

impl Cgroup {
    /// Reads an interface file for statistics: `None` if it cannot be read.
    fn read_stat(&self, name: &str) -> Option<String> {
        read_file(&self.file(name)).ok()
    }

    /// The cgroup's statistics. Files of absent controllers read as zeros; the only error is
    /// a cgroup directory that no longer exists.
    pub fn stats(&self) -> Result<ContainerStats> {
        if !self.path.is_dir() {
            return Err(CgroupError::NotFound {
                path: self.path.clone(),
            });
        }
        let raw = RawStats {
            cpu_stat: self.read_stat("cpu.stat"),
            memory_current: self.read_stat("memory.current"),
            memory_max: self.read_stat("memory.max"),
            memory_swap_current: self.read_stat("memory.swap.current"),
            memory_stat: self.read_stat("memory.stat"),
            memory_events: self.read_stat("memory.events"),
            pids_current: self.read_stat("pids.current"),
            pids_max: self.read_stat("pids.max"),
            io_stat: self.read_stat("io.stat"),
        };
        Ok(raw.parse())
    }

    /// How many processes the OOM killer has killed in this cgroup and its descendants
    /// (`oom_kill` of `memory.events`); 0 without the memory controller.
    pub fn oom_kills(&self) -> u64 {
        self.read_stat("memory.events")
            .map_or(0, |events| keyed(&events, "oom_kill"))
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::FakeCgroupFs;
    use super::*;

    const CPU_STAT: &str = "usage_usec 2046518\nuser_usec 1290373\nsystem_usec 756145\n\
        core_sched.force_idle_usec 0\nnr_periods 1017\nnr_throttled 33\nthrottled_usec 1520427\n\
        nr_bursts 0\nburst_usec 0\n";

    const MEMORY_STAT: &str = "anon 10354688\nfile 47910912\nkernel 1961984\n\
        kernel_stack 81920\npagetables 184320\nsec_pagetables 0\npercpu 2480\nsock 0\n\
        vmalloc 0\nshmem 0\nzswap 0\nzswapped 0\nfile_mapped 19955712\nfile_dirty 0\n\
        file_writeback 0\nanon_thp 0\ninactive_anon 10326016\nactive_anon 28672\n\
        inactive_file 20082688\nactive_file 27828224\nunevictable 0\npgfault 5730\n";

    const MEMORY_EVENTS: &str = "low 0\nhigh 0\nmax 41\noom 3\noom_kill 2\noom_group_kill 0\n";

    const IO_STAT: &str = "254:0 rbytes=60203008 wbytes=4096 rios=1361 wios=1 dbytes=0 dios=0\n\
        7:0 rbytes=1048576 wbytes=0 rios=32 wios=0 dbytes=0 dios=0\n";

    #[test]
    fn realistic_files() {
        let fs = FakeCgroupFs::new();
        let cg = fs.cgroup("moat/c1");
        fs.write("moat/c1", "cpu.stat", CPU_STAT);
        fs.write("moat/c1", "memory.current", "60555264\n");
        fs.write("moat/c1", "memory.max", "268435456\n");
        fs.write("moat/c1", "memory.swap.current", "4096\n");
        fs.write("moat/c1", "memory.stat", MEMORY_STAT);
        fs.write("moat/c1", "memory.events", MEMORY_EVENTS);
        fs.write("moat/c1", "pids.current", "7\n");
        fs.write("moat/c1", "pids.max", "100\n");
        fs.write("moat/c1", "io.stat", IO_STAT);
        let stats = cg.stats().unwrap();
        assert_eq!(
            stats,
            ContainerStats {
                cpu: CpuStats {
                    usage_usec: 2046518,
                    user_usec: 1290373,
                    system_usec: 756145,
                    nr_periods: 1017,
                    nr_throttled: 33,
                    throttled_usec: 1520427,
                },
                memory: MemoryStats {
                    usage: 60555264,
                    limit: Some(268435456),
                    swap_usage: 4096,
                    anon: 10354688,
                    file: 47910912,
                    oom_kills: 2,
                },
                pids: PidsStats {
                    current: 7,
                    limit: Some(100),
                },
                io: vec![
                    IoDeviceStats {
                        major: 254,
                        minor: 0,
                        rbytes: 60203008,
                        wbytes: 4096,
                        rios: 1361,
                        wios: 1,
                    },
                    IoDeviceStats {
                        major: 7,
                        minor: 0,
                        rbytes: 1048576,
                        wbytes: 0,
                        rios: 32,
                        wios: 0,
                    },
                ],
            }
        );
        assert_eq!(cg.oom_kills(), 2);
    }

    #[test]
    fn fresh_cgroup_has_zeros_and_no_limits() {
        let fs = FakeCgroupFs::new();
        let cg = fs.cgroup("moat/c1");
        assert_eq!(cg.stats().unwrap(), ContainerStats::default());
    }

    #[test]
    fn missing_files_read_as_zeros() {
        let fs = FakeCgroupFs::new();
        let cg = Cgroup::create(fs.root(), "moat/bare").unwrap();
        assert_eq!(cg.stats().unwrap(), ContainerStats::default());
        assert_eq!(cg.oom_kills(), 0);
    }

    #[test]
    fn a_removed_cgroup_is_an_error() {
        let fs = FakeCgroupFs::new();
        let cg = Cgroup::create(fs.root(), "moat/c1").unwrap();
        cg.remove().unwrap();
        let err = cg.stats().unwrap_err();
        assert!(matches!(err, CgroupError::NotFound { .. }), "{err}");
    }

    #[test]
    fn garbage_never_panics() {
        let samples: &[&str] = &[
            "",
            "\n\n\n",
            "usage_usec",
            "usage_usec -5\nuser_usec 1e9\nsystem_usec 99999999999999999999999\n",
            "nr_periods\t12\n  nr_throttled   3  extra\n",
            "max",
            "-1",
            "  42  ",
            "\u{0}\u{1}\u{fffd}",
            "254:0",
            ":\n:0 rbytes=1\n1: rbytes=1\na:b rbytes=1\n4294967296:0 rbytes=1\n",
            "8:0 rbytes rbytes= =5 rbytes==3 wbytes=x wios=7\n",
            "oom_kill\noom_kill x\n",
        ];
        for s in samples {
            let raw = RawStats {
                cpu_stat: Some(s.to_string()),
                memory_current: Some(s.to_string()),
                memory_max: Some(s.to_string()),
                memory_swap_current: Some(s.to_string()),
                memory_stat: Some(s.to_string()),
                memory_events: Some(s.to_string()),
                pids_current: Some(s.to_string()),
                pids_max: Some(s.to_string()),
                io_stat: Some(s.to_string()),
            };
            let _ = raw.parse();
        }
        // Non-UTF-8 bytes in a real file.
        let fs = FakeCgroupFs::new();
        let cg = fs.cgroup("moat/c1");
        std::fs::write(
            cg.file("cpu.stat"),
            b"usage_usec 5\n\xff\xfe\nuser_usec 2\n",
        )
        .unwrap();
        let cpu = cg.stats().unwrap().cpu;
        assert_eq!((cpu.usage_usec, cpu.user_usec), (5, 2));
    }

    #[test]
    fn odd_values_parse_to_what_can_be_trusted() {
        let cpu = parse_cpu_stat("usage_usec -5\nuser_usec 12 extra\nsystem_usec 1e3\n");
        assert_eq!((cpu.usage_usec, cpu.user_usec, cpu.system_usec), (0, 12, 0));
        assert_eq!(limit(Some("max\n")), None);
        assert_eq!(limit(Some(" 1024 \n")), Some(1024));
        assert_eq!(limit(Some("-1")), None);
        assert_eq!(limit(None), None);
        assert_eq!(keyed("oom_kill 1\noom_kill 2\n", "oom_kill"), 1);
        assert_eq!(keyed("oom_kill_x 9\n", "oom_kill"), 0);
        let io = parse_io_stat("8:0 rbytes=1 wbytes=x wios=7 rbytes\n1: rbytes=1\n8:16\n");
        assert_eq!(
            io,
            [
                IoDeviceStats {
                    major: 8,
                    minor: 0,
                    rbytes: 1,
                    wios: 7,
                    ..IoDeviceStats::default()
                },
                IoDeviceStats {
                    major: 8,
                    minor: 16,
                    ..IoDeviceStats::default()
                },
            ]
        );
    }
}
