//! Process figures for the benchmarks: CPU time (`getrusage`) and memory (`/proc/self`).

use std::time::Instant;

/// CPU time used by the whole process so far, and when it was read.
#[derive(Debug, Clone, Copy)]
pub struct CpuTime {
    /// User time, microseconds.
    pub user_us: u64,
    /// System time, microseconds.
    pub sys_us: u64,
    /// When it was read.
    pub at: Instant,
}

impl CpuTime {
    /// Reads `getrusage(RUSAGE_SELF)`.
    pub fn now() -> Self {
        // SAFETY: a zeroed rusage is a valid out-parameter.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `ru` is a valid, writable rusage; RUSAGE_SELF is a valid target.
        unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
        let us = |tv: libc::timeval| tv.tv_sec as u64 * 1_000_000 + tv.tv_usec as u64;
        Self {
            user_us: us(ru.ru_utime),
            sys_us: us(ru.ru_stime),
            at: Instant::now(),
        }
    }

    /// User plus system time in milliseconds.
    pub fn total_ms(&self) -> f64 {
        (self.user_us + self.sys_us) as f64 / 1000.0
    }
}

/// Resident memory of a process, split into guest RAM (the guest memory memfd's mappings)
/// and everything else (the VMM's own overhead).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemorySplit {
    /// Total RSS, KiB.
    pub rss_kib: u64,
    /// RSS of the mappings of the guest memory memfd, KiB (guest pages touched).
    pub guest_kib: u64,
}

impl MemorySplit {
    /// The VMM's own resident memory: total minus guest pages.
    pub fn overhead_kib(&self) -> u64 {
        self.rss_kib.saturating_sub(self.guest_kib)
    }

    /// Reads `/proc/<pid>/smaps` (`pid` 0: this process); guest memory is every mapping
    /// whose header contains `tag` (a memfd name: QEMU's `memory-backend-memfd,id=mem` is
    /// `/memfd:mem`, moat-vmm's shared memory `/memfd:moat-guest-mem`).
    pub fn of_pid_tagged(pid: u32, tag: &str) -> std::io::Result<Self> {
        Ok(Self::parse(&read_smaps(pid)?, |_, _, header| {
            header.contains(tag)
        }))
    }

    /// As [`Self::of_pid_tagged`], guest memory being the mappings inside the host address
    /// ranges `[start, end)` (moat-vmm prints them as `guest_ram:` lines; anonymous memory
    /// has no name on hosts without `CONFIG_ANON_VMA_NAME`).
    pub fn of_pid_ranges(pid: u32, ranges: &[(u64, u64)]) -> std::io::Result<Self> {
        Ok(Self::parse(&read_smaps(pid)?, |start, end, _| {
            ranges.iter().any(|(s, e)| start >= *s && end <= *e)
        }))
    }

    /// Sums `Rss:` over all mappings, and separately over those `is_guest(start, end,
    /// header)` accepts.
    pub fn parse(smaps: &str, is_guest: impl Fn(u64, u64, &str) -> bool) -> Self {
        let mut out = Self::default();
        let mut in_guest = false;
        for line in smaps.lines() {
            let mut words = line.split_ascii_whitespace();
            let first = words.next().unwrap_or("");
            if let Some((a, b)) = first.split_once('-').filter(|_| !first.ends_with(':')) {
                // A mapping header: "start-end perms offset dev inode [path]".
                let hex = |v: &str| u64::from_str_radix(v, 16).unwrap_or(0);
                in_guest = is_guest(hex(a), hex(b), line);
            } else if first == "Rss:" {
                let kib: u64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
                out.rss_kib += kib;
                if in_guest {
                    out.guest_kib += kib;
                }
            }
        }
        out
    }
}

fn read_smaps(pid: u32) -> std::io::Result<String> {
    if pid == 0 {
        std::fs::read_to_string("/proc/self/smaps")
    } else {
        std::fs::read_to_string(format!("/proc/{pid}/smaps"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smaps_split_guest_from_vmm() {
        let s = "\
55d0-55e0 r-xp 00000000 fd:00 123 /usr/bin/moat-vmm
Size:                 64 kB
Rss:                  40 kB
7f00-7f10 rw-s 00000000 00:01 9 /memfd:moat-guest-mem (deleted)
Size:             262144 kB
Rss:               20480 kB
7f20-7f30 rw-p 00000000 00:00 0
Rss:                1000 kB
";
        let m = MemorySplit::parse(s, |_, _, h| h.contains("/memfd:moat-guest-mem"));
        assert_eq!(m.rss_kib, 21520);
        assert_eq!(m.guest_kib, 20480);
        assert_eq!(m.overhead_kib(), 1040);
        let by_range = MemorySplit::parse(s, |a, b, _| a >= 0x7f20 && b <= 0x7f30);
        assert_eq!(by_range.guest_kib, 1000);
    }

    #[test]
    fn cpu_time_moves_forward() {
        let a = CpuTime::now();
        let mut x = 0u64;
        for i in 0..200_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(CpuTime::now().total_ms() >= a.total_ms());
    }
}
