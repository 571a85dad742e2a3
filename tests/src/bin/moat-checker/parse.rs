//! The pure half of the checker: parsing its arguments and what the kernel reports
//! (`/proc/self/status`, `/proc/self/mountinfo`), with no system calls, so it is unit-tested
//! on any host.

/// Capability names by number: moat's own list (`moat features` prints it).
pub use moat::spec_cmd::CAPABILITIES as CAPS;

/// Errno names the checker understands, with their x86_64 numbers.
const ERRNOS: [(&str, i32); 34] = [
    ("EPERM", 1),
    ("ENOENT", 2),
    ("ESRCH", 3),
    ("EINTR", 4),
    ("EIO", 5),
    ("ENXIO", 6),
    ("E2BIG", 7),
    ("EBADF", 9),
    ("EAGAIN", 11),
    ("ENOMEM", 12),
    ("EACCES", 13),
    ("EFAULT", 14),
    ("EBUSY", 16),
    ("EEXIST", 17),
    ("EXDEV", 18),
    ("ENODEV", 19),
    ("ENOTDIR", 20),
    ("EISDIR", 21),
    ("EINVAL", 22),
    ("EMFILE", 24),
    ("ETXTBSY", 26),
    ("ENOSPC", 28),
    ("ESPIPE", 29),
    ("EROFS", 30),
    ("EPIPE", 32),
    ("ERANGE", 34),
    ("ENAMETOOLONG", 36),
    ("ENOSYS", 38),
    ("ENOTEMPTY", 39),
    ("ELOOP", 40),
    ("EAFNOSUPPORT", 97),
    ("EOPNOTSUPP", 95),
    ("ECONNREFUSED", 111),
    ("ENOTSUP", 95),
];

/// An errno by name (`EPERM`) or number (`1`).
pub fn errno_from_str(s: &str) -> Option<i32> {
    ERRNOS
        .iter()
        .find(|(n, _)| *n == s)
        .map(|(_, v)| *v)
        .or_else(|| s.parse().ok().filter(|n| (1..4096).contains(n)))
}

/// The name of an errno, or its number.
pub fn errno_name(n: i32) -> String {
    ERRNOS
        .iter()
        .find(|(_, v)| *v == n)
        .map_or_else(|| n.to_string(), |(name, _)| (*name).to_string())
}

/// A number in decimal, `0x` hex, or `0`-prefixed octal (as modes are written).
pub fn parse_num(s: &str) -> Option<u64> {
    let s = s.trim();
    if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()
    } else if s.len() > 1 && s.starts_with('0') {
        u64::from_str_radix(&s[1..], 8).ok()
    } else {
        s.parse().ok()
    }
}

/// A capability set from names (`CAP_CHOWN` or `chown`), comma-separated; empty is none.
pub fn caps_from_names(list: &str) -> Result<u64, String> {
    let mut mask = 0u64;
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let upper = name.to_ascii_uppercase();
        let full = if upper.starts_with("CAP_") {
            upper
        } else {
            format!("CAP_{upper}")
        };
        let bit = CAPS
            .iter()
            .position(|c| *c == full)
            .ok_or_else(|| format!("unknown capability {name:?}"))?;
        mask |= 1 << bit;
    }
    Ok(mask)
}

/// The names of the capabilities in a mask (bits past the known ones as numbers).
pub fn caps_to_names(mask: u64) -> String {
    let names: Vec<String> = (0..64)
        .filter(|b| mask & (1u64 << b) != 0)
        .map(|b| {
            CAPS.get(b)
                .map_or_else(|| format!("cap{b}"), |c| (*c).to_string())
        })
        .collect();
    if names.is_empty() {
        "(none)".into()
    } else {
        names.join(",")
    }
}

/// The value of `Key:` in `/proc/self/status` text.
pub fn status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status.lines().find_map(|l| {
        l.strip_prefix(key)
            .and_then(|r| r.strip_prefix(':'))
            .map(str::trim)
    })
}

/// Undoes the octal escapes (`\040` for a space) of `/proc/self/mountinfo` paths.
pub fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    /// Where it is mounted.
    pub mount_point: String,
    /// The path inside its filesystem that is mounted (not `/` for a bind of a subtree).
    pub root: String,
    /// Per-mount options: `ro`/`rw`, `nosuid`, `nodev`, `noexec`, `relatime`, ...
    pub mount_opts: Vec<String>,
    /// Optional fields: `shared:N`, `master:N`, `propagate_from:N`, `unbindable`.
    pub optional: Vec<String>,
    /// The filesystem type.
    pub fstype: String,
    /// The source.
    pub source: String,
    /// Per-superblock options (`size=65536k`, `mode=755`, ...).
    pub super_opts: Vec<String>,
}

impl MountInfo {
    /// Parses one line; `None` for a line that does not have the documented shape.
    pub fn parse(line: &str) -> Option<Self> {
        let (left, right) = line.split_once(" - ")?;
        let f: Vec<&str> = left.split(' ').collect();
        if f.len() < 6 {
            return None;
        }
        let r: Vec<&str> = right.split(' ').collect();
        if r.len() < 3 {
            return None;
        }
        let split = |s: &str| s.split(',').map(str::to_string).collect::<Vec<_>>();
        Some(MountInfo {
            root: unescape_octal(f[3]),
            mount_point: unescape_octal(f[4]),
            mount_opts: split(f[5]),
            optional: f[6..].iter().map(|s| s.to_string()).collect(),
            fstype: r[0].to_string(),
            source: unescape_octal(r[1]),
            super_opts: split(r[2]),
        })
    }

    /// Whether the mount has one expected option: a per-mount or superblock option, or a
    /// propagation type (`shared`, `slave`, `private`, `unbindable`).
    pub fn has_option(&self, opt: &str) -> bool {
        let tag = |t: &str| self.optional.iter().any(|o| o.split(':').next() == Some(t));
        match opt {
            "shared" => tag("shared"),
            "slave" => tag("master"),
            "unbindable" => tag("unbindable"),
            "private" => !tag("shared") && !tag("master") && !tag("unbindable"),
            _ => self
                .mount_opts
                .iter()
                .chain(&self.super_opts)
                .any(|o| o == opt),
        }
    }

    /// The options as the checker reports them.
    pub fn describe(&self) -> String {
        let prop = if self.optional.is_empty() {
            "private".to_string()
        } else {
            self.optional.join(" ")
        };
        format!(
            "{} {} [{}] [{}] {prop}",
            self.fstype,
            self.source,
            self.mount_opts.join(","),
            self.super_opts.join(",")
        )
    }
}

/// The mounts at `point`, topmost last.
pub fn mounts_at<'a>(mounts: &'a [MountInfo], point: &str) -> Vec<&'a MountInfo> {
    mounts.iter().filter(|m| m.mount_point == point).collect()
}

/// A system call the checker can make, with arguments, and the expected result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyscallExpect {
    /// Its name.
    pub name: String,
    /// Its arguments (only those the call takes from the caller; see `checks::call`).
    pub args: Vec<u64>,
    /// `None`: success; `Some(e)`: fails with errno `e`.
    pub errno: Option<i32>,
}

/// Parses `NAME[(ARG,...)]:RESULT`, RESULT being `ok` or an errno name or number.
pub fn parse_syscall(v: &str) -> Result<SyscallExpect, String> {
    let (call, result) = v.rsplit_once(':').ok_or("expected NAME[(ARGS)]:ok|ERRNO")?;
    let (name, args) = match call.split_once('(') {
        Some((n, rest)) => {
            let inner = rest.strip_suffix(')').ok_or("unclosed (")?;
            let args = inner
                .split(',')
                .filter(|a| !a.trim().is_empty())
                .map(|a| parse_num(a).ok_or_else(|| format!("bad argument {a:?}")))
                .collect::<Result<Vec<_>, _>>()?;
            (n, args)
        }
        None => (call, vec![]),
    };
    let errno = match result {
        "ok" => None,
        e => Some(errno_from_str(e).ok_or_else(|| format!("unknown errno {e:?}"))?),
    };
    Ok(SyscallExpect {
        name: name.to_string(),
        args,
        errno,
    })
}

/// A resource limit value: a number or `unlimited`.
pub fn parse_limit(s: &str) -> Option<u64> {
    if s == "unlimited" {
        Some(u64::MAX)
    } else {
        s.parse().ok()
    }
}

/// A resource limit value as the checker reports it.
pub fn show_limit(v: u64) -> String {
    if v == u64::MAX {
        "unlimited".into()
    } else {
        v.to_string()
    }
}

/// Whitespace-normalised lines of a `uid_map`/`gid_map`, joined by `;` (the form the
/// expectations use: `uid-map=0 100000 65536;65536 0 1`).
pub fn normalize_idmap(text: &str) -> String {
    text.split([';', '\n'])
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(";")
}

/// A comma-separated list as a sorted set (for groups and interface names).
pub fn sorted_list(s: &str) -> Vec<String> {
    let mut v: Vec<String> = s
        .split([',', ' ', '\t'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    v.sort();
    v.dedup();
    v
}

/// The interface names in `/proc/net/dev` text.
pub fn net_interfaces(dev: &str) -> Vec<String> {
    let mut v: Vec<String> = dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split_once(':').map(|(n, _)| n.trim().to_string()))
        .collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_in_three_bases() {
        assert_eq!(parse_num("42"), Some(42));
        assert_eq!(parse_num("0x1f"), Some(31));
        assert_eq!(parse_num("0755"), Some(0o755));
        assert_eq!(parse_num("0"), Some(0));
        assert_eq!(parse_num("0xffffffff"), Some(0xffff_ffff));
        assert_eq!(parse_num("x"), None);
        assert_eq!(parse_num("09"), None);
    }

    #[test]
    fn errnos_by_name_and_number() {
        assert_eq!(errno_from_str("EPERM"), Some(1));
        assert_eq!(errno_from_str("ENOSYS"), Some(38));
        assert_eq!(errno_from_str("1234"), Some(1234));
        assert_eq!(errno_from_str("EWHAT"), None);
        assert_eq!(errno_from_str("0"), None);
        assert_eq!(errno_name(30), "EROFS");
        assert_eq!(errno_name(1234), "1234");
    }

    #[test]
    fn capability_names_round_trip() {
        let m = caps_from_names("CAP_CHOWN,kill, CAP_NET_BIND_SERVICE").unwrap();
        assert_eq!(m, 1 | 1 << 5 | 1 << 10);
        assert_eq!(caps_to_names(m), "CAP_CHOWN,CAP_KILL,CAP_NET_BIND_SERVICE");
        assert_eq!(caps_from_names("").unwrap(), 0);
        assert_eq!(caps_to_names(0), "(none)");
        assert_eq!(
            caps_to_names(1 << 40 | 1 << 41),
            "CAP_CHECKPOINT_RESTORE,cap41"
        );
        assert!(caps_from_names("CAP_FLY").unwrap_err().contains("CAP_FLY"));
        // The full set a root process on a 6.x kernel has.
        assert_eq!(caps_from_names(&CAPS.join(",")).unwrap(), 0x1ff_ffff_ffff);
    }

    #[test]
    fn status_fields() {
        let s = "Name:\tmoat-checker\nUmask:\t0022\nUid:\t0\t0\t0\t0\nGroups:\t1 2 \nCapEff:\t00000000a80425fb\nNoNewPrivs:\t1\n";
        assert_eq!(status_field(s, "Umask"), Some("0022"));
        assert_eq!(status_field(s, "Uid"), Some("0\t0\t0\t0"));
        assert_eq!(status_field(s, "Groups"), Some("1 2"));
        assert_eq!(status_field(s, "NoNewPrivs"), Some("1"));
        assert_eq!(status_field(s, "Cap"), None);
        let eff = u64::from_str_radix(status_field(s, "CapEff").unwrap(), 16).unwrap();
        // Docker's default set.
        assert_eq!(
            caps_to_names(eff),
            "CAP_CHOWN,CAP_DAC_OVERRIDE,CAP_FOWNER,CAP_FSETID,CAP_KILL,CAP_SETGID,CAP_SETUID,\
             CAP_SETPCAP,CAP_NET_BIND_SERVICE,CAP_NET_RAW,CAP_SYS_CHROOT,CAP_MKNOD,\
             CAP_AUDIT_WRITE,CAP_SETFCAP"
        );
    }

    #[test]
    fn mountinfo_lines() {
        let l = "36 35 98:0 /mnt1 /mnt\\040two rw,nosuid,noexec shared:1 master:2 - ext3 /dev/root rw,errors=continue";
        let m = MountInfo::parse(l).unwrap();
        assert_eq!(m.root, "/mnt1");
        assert_eq!(m.mount_point, "/mnt two");
        assert_eq!(m.fstype, "ext3");
        assert_eq!(m.source, "/dev/root");
        for o in [
            "rw",
            "nosuid",
            "noexec",
            "shared",
            "slave",
            "errors=continue",
        ] {
            assert!(m.has_option(o), "{o}");
        }
        for o in ["ro", "nodev", "private", "unbindable"] {
            assert!(!m.has_option(o), "{o}");
        }
        let p = MountInfo::parse("22 1 0:5 / /dev rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755")
            .unwrap();
        assert!(p.optional.is_empty());
        assert!(p.has_option("private") && p.has_option("size=65536k") && p.has_option("mode=755"));
        assert_eq!(
            p.describe(),
            "tmpfs tmpfs [rw,nosuid] [rw,size=65536k,mode=755] private"
        );
        assert!(MountInfo::parse("garbage").is_none());
        assert!(MountInfo::parse("1 2 3 - x").is_none());
        let all = [m, p];
        assert_eq!(mounts_at(&all, "/dev").len(), 1);
        assert!(mounts_at(&all, "/nope").is_empty());
    }

    #[test]
    fn octal_escapes() {
        assert_eq!(unescape_octal("/a\\040b\\011c\\134d"), "/a b\tc\\d");
        assert_eq!(unescape_octal("/trailing\\04"), "/trailing\\04");
        assert_eq!(unescape_octal("\\"), "\\");
    }

    #[test]
    fn syscall_expectations() {
        assert_eq!(
            parse_syscall("mkdir:EPERM").unwrap(),
            SyscallExpect {
                name: "mkdir".into(),
                args: vec![],
                errno: Some(1)
            }
        );
        let s = parse_syscall("mkdir(0700):ok").unwrap();
        assert_eq!((s.args, s.errno), (vec![0o700], None));
        let s = parse_syscall("socket(2,1):EAFNOSUPPORT").unwrap();
        assert_eq!(
            (s.name.as_str(), s.args, s.errno),
            ("socket", vec![2, 1], Some(97))
        );
        let s = parse_syscall("personality(0xffffffff):1234").unwrap();
        assert_eq!((s.args, s.errno), (vec![0xffff_ffff], Some(1234)));
        assert!(parse_syscall("mkdir").is_err());
        assert!(parse_syscall("mkdir(1:ok").is_err());
        assert!(parse_syscall("mkdir:EWHAT").is_err());
        assert!(parse_syscall("mkdir(zz):ok").is_err());
    }

    #[test]
    fn limits_id_maps_and_lists() {
        assert_eq!(parse_limit("unlimited"), Some(u64::MAX));
        assert_eq!(parse_limit("100"), Some(100));
        assert_eq!(parse_limit("-1"), None);
        assert_eq!(show_limit(u64::MAX), "unlimited");
        assert_eq!(
            normalize_idmap("         0     100000      65536\n     65536          0          1\n"),
            "0 100000 65536;65536 0 1"
        );
        assert_eq!(
            normalize_idmap("0 100000 65536;65536 0 1"),
            "0 100000 65536;65536 0 1"
        );
        assert_eq!(sorted_list("2000, 1000 1000"), ["1000", "2000"]);
        assert!(sorted_list("").is_empty());
        let dev = "Inter-|   Receive\n face |bytes\n    lo: 0 0\n  eth0: 1 2\n";
        assert_eq!(net_interfaces(dev), ["eth0", "lo"]);
    }
}
