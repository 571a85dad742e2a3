//! `moat-checker`: runs inside a container and verifies its setup from the inside, like
//! youki's `runtimetest`. Each argument is one expectation, `KEY=VALUE`; each is checked in
//! order and reported on stdout as `ok <arg>` or `FAIL <arg>: expected X, got Y`. The exit
//! status is 0 only when every check passed (1 otherwise, 2 without arguments).
//!
//! It is built static (`--target x86_64-unknown-linux-musl`) so that it runs in a busybox
//! rootfs with no libc. The vocabulary (see `usage`) covers what the OCI runtime spec lets a
//! config set: identity, capabilities, limits, namespaces, mounts, paths, seccomp.

mod parse;

use std::ffi::CString;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use parse::{MountInfo, SyscallExpect};

const USAGE: &str = "\
usage: moat-checker KEY=VALUE...
  hostname=NAME  domainname=NAME          uname(2)
  uid=N  gid=N                            real, effective, saved and fs ids all N
  groups=N,N  umask=0022                  supplementary groups (set), umask (octal)
  cwd=PATH  env=KEY=VALUE  env-absent=KEY
  cap-eff|cap-prm|cap-inh|cap-bnd|cap-amb=CAP_X,CAP_Y   exact set (empty: none)
  nnp=0|1  seccomp=0|1|2                  NoNewPrivs, Seccomp mode (/proc/self/status)
  rlimit-NAME=SOFT:HARD                   NAME: nofile, nproc, core, ...; unlimited
  oom=N                                   /proc/self/oom_score_adj
  pid=N  ppid=N                           getpid(), getppid()
  ns=TYPE:INODE  ns-not=TYPE:INODE        /proc/self/ns/TYPE is (is not) that namespace
  uid-map=C H N[;C H N]  gid-map=...      /proc/self/uid_map, gid_map
  net-ifaces=lo[,eth0]                    the interfaces of /proc/net/dev, exactly
  sysctl=KEY:VALUE                        /proc/sys/KEY (dots for slashes)
  mount=DEST:TYPE[:OPT,OPT]               the top mount at DEST; TYPE * for any; OPT a
                                          mount or superblock option, or shared, slave,
                                          private, unbindable
  no-mount=DEST  ro-root=0|1
  masked=PATH                             a mount point that reads empty
  readonly=PATH  writable=PATH            writing (in) it fails with EROFS / succeeds
  exists=PATH  absent=PATH  file=PATH:CONTENT  contains=PATH:TEXT
  symlink=PATH:TARGET  chardev=PATH:MAJOR:MINOR  mode=PATH:0666
  syscall=NAME[(ARG,...)]:ok|ERRNO        make the call, expect success or that errno;
                                          NAME: mkdir mkdirat getpid getppid getuid
                                          gettid uname personality socket dup kill
                                          getcwd unshare prctl sched_yield";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() || args.iter().any(|a| a == "-h" || a == "--help") {
        eprintln!("{USAGE}");
        std::process::exit(2);
    }
    let mut failed = 0;
    for a in &args {
        match check(a) {
            Ok(()) => println!("ok {a}"),
            Err(e) => {
                println!("FAIL {a}: {e}");
                failed += 1;
            }
        }
    }
    println!(
        "moat-checker: {} passed, {failed} failed",
        args.len() - failed
    );
    std::process::exit(if failed == 0 { 0 } else { 1 });
}

type Check = Result<(), String>;

fn expect_eq(expected: impl std::fmt::Display, got: impl std::fmt::Display) -> Check {
    let (e, g) = (expected.to_string(), got.to_string());
    if e == g {
        Ok(())
    } else {
        Err(format!("expected {e}, got {g}"))
    }
}

fn os_err(e: &std::io::Error) -> String {
    e.raw_os_error()
        .map_or_else(|| e.to_string(), parse::errno_name)
}

/// One expectation.
fn check(arg: &str) -> Check {
    let (key, val) = arg.split_once('=').ok_or("not KEY=VALUE")?;
    if let Some(name) = key.strip_prefix("rlimit-") {
        return rlimit(name, val);
    }
    if let Some(set) = key.strip_prefix("cap-") {
        let field = match set {
            "eff" => "CapEff",
            "prm" => "CapPrm",
            "inh" => "CapInh",
            "bnd" => "CapBnd",
            "amb" => "CapAmb",
            _ => return Err(format!("unknown capability set {set:?}")),
        };
        let want = parse::caps_from_names(val)?;
        let got = status(field)?;
        let got = u64::from_str_radix(&got, 16).map_err(|e| format!("{field}: {e}"))?;
        return expect_eq(parse::caps_to_names(want), parse::caps_to_names(got));
    }
    match key {
        "hostname" => expect_eq(val, uname()?.0),
        "domainname" => expect_eq(val, uname()?.1),
        "uid" | "gid" => {
            let line = status(if key == "uid" { "Uid" } else { "Gid" })?;
            let ids: Vec<&str> = line.split_whitespace().collect();
            if ids.len() == 4 && ids.iter().all(|i| *i == val) {
                Ok(())
            } else {
                Err(format!(
                    "expected {val} (real, effective, saved, fs), got {}",
                    ids.join(" ")
                ))
            }
        }
        "groups" => expect_eq(
            parse::sorted_list(val).join(","),
            parse::sorted_list(&status("Groups")?).join(","),
        ),
        "umask" => {
            let want = u32::from_str_radix(val, 8).map_err(|_| "umask is octal")?;
            let got = u32::from_str_radix(&status("Umask")?, 8).map_err(|e| e.to_string())?;
            expect_eq(format!("{want:04o}"), format!("{got:04o}"))
        }
        "cwd" => {
            let cwd = std::env::current_dir().map_err(|e| format!("getcwd: {}", os_err(&e)))?;
            expect_eq(val, cwd.display())
        }
        "env" => {
            let (k, v) = val.split_once('=').ok_or("env=KEY=VALUE")?;
            match std::env::var_os(k) {
                Some(got) => expect_eq(v, got.to_string_lossy()),
                None => Err(format!("expected {v}, got {k} unset")),
            }
        }
        "env-absent" => match std::env::var_os(val) {
            None => Ok(()),
            Some(v) => Err(format!("expected unset, got {}", v.to_string_lossy())),
        },
        "nnp" => expect_eq(val, status("NoNewPrivs")?),
        "seccomp" => expect_eq(val, status("Seccomp")?),
        "oom" => expect_eq(val, read_trim("/proc/self/oom_score_adj")?),
        "pid" => expect_eq(val, std::process::id()),
        "ppid" => expect_eq(val, std::os::unix::process::parent_id()),
        "ns" | "ns-not" => {
            let (typ, ino) = val.split_once(':').ok_or("TYPE:INODE")?;
            let link = fs::read_link(format!("/proc/self/ns/{typ}"))
                .map_err(|e| format!("readlink /proc/self/ns/{typ}: {}", os_err(&e)))?;
            let link = link.to_string_lossy();
            let got = link
                .rsplit_once('[')
                .and_then(|(_, r)| r.strip_suffix(']'))
                .ok_or_else(|| format!("odd namespace link {link}"))?;
            match (key == "ns", got == ino) {
                (true, true) | (false, false) => Ok(()),
                (true, false) => Err(format!("expected {typ}:[{ino}], got {link}")),
                (false, true) => Err(format!("expected a namespace other than {link}, got it")),
            }
        }
        "uid-map" | "gid-map" => {
            let file = format!("/proc/self/{}", key.replace('-', "_"));
            let got = fs::read_to_string(&file).map_err(|e| format!("{file}: {}", os_err(&e)))?;
            expect_eq(parse::normalize_idmap(val), parse::normalize_idmap(&got))
        }
        "net-ifaces" => {
            let dev = fs::read_to_string("/proc/self/net/dev")
                .map_err(|e| format!("/proc/self/net/dev: {}", os_err(&e)))?;
            expect_eq(
                parse::sorted_list(val).join(","),
                parse::net_interfaces(&dev).join(","),
            )
        }
        "sysctl" => {
            let (k, v) = val.split_once(':').ok_or("KEY:VALUE")?;
            let got = read_trim(&format!("/proc/sys/{}", k.replace('.', "/")))?;
            let norm = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
            expect_eq(norm(v), norm(&got))
        }
        "mount" => mount(val),
        "no-mount" => match mountinfo()?.iter().rev().find(|m| m.mount_point == val) {
            None => Ok(()),
            Some(m) => Err(format!("expected no mount, got {}", m.describe())),
        },
        "ro-root" => {
            let root = top_mount("/")?;
            match val {
                "1" if root.has_option("ro") => write_probe("/", true),
                "0" if root.has_option("rw") => Ok(()),
                "1" | "0" => Err(format!(
                    "expected {}, got {}",
                    if val == "1" { "ro" } else { "rw" },
                    root.describe()
                )),
                _ => Err("ro-root=0|1".into()),
            }
        }
        "masked" => masked(val),
        "readonly" => write_probe(val, true),
        "writable" => write_probe(val, false),
        "exists" => fs::symlink_metadata(val)
            .map(|_| ())
            .map_err(|e| format!("expected it to exist, got {}", os_err(&e))),
        "absent" => match fs::symlink_metadata(val) {
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("expected ENOENT, got {}", os_err(&e))),
            Ok(m) => Err(format!("expected ENOENT, got a {:?}", m.file_type())),
        },
        "file" | "contains" => {
            let (p, want) = val.split_once(':').ok_or("PATH:TEXT")?;
            let got = fs::read_to_string(p).map_err(|e| format!("{p}: {}", os_err(&e)))?;
            let got = got.trim_end_matches('\n');
            if key == "file" {
                expect_eq(format!("{want:?}"), format!("{got:?}"))
            } else if got.contains(want) {
                Ok(())
            } else {
                Err(format!("expected it to contain {want:?}, got {got:?}"))
            }
        }
        "symlink" => {
            let (p, want) = val.split_once(':').ok_or("PATH:TARGET")?;
            let got = fs::read_link(p).map_err(|e| format!("readlink {p}: {}", os_err(&e)))?;
            expect_eq(want, got.display())
        }
        "chardev" => {
            let mut it = val.splitn(3, ':');
            let (p, maj, min) = match (it.next(), it.next(), it.next()) {
                (Some(p), Some(a), Some(b)) => (p, a, b),
                _ => return Err("PATH:MAJOR:MINOR".into()),
            };
            let m = fs::symlink_metadata(p).map_err(|e| format!("{p}: {}", os_err(&e)))?;
            if !m.file_type().is_char_device() {
                return Err(format!(
                    "expected a character device, got a {:?}",
                    m.file_type()
                ));
            }
            let dev = m.rdev();
            let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
            let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
            expect_eq(format!("{maj}:{min}"), format!("{major}:{minor}"))
        }
        "mode" => {
            let (p, want) = val.split_once(':').ok_or("PATH:MODE")?;
            let want = u32::from_str_radix(want.trim_start_matches('0'), 8).unwrap_or(0);
            let m = fs::metadata(p).map_err(|e| format!("{p}: {}", os_err(&e)))?;
            expect_eq(format!("{want:04o}"), format!("{:04o}", m.mode() & 0o7777))
        }
        "syscall" => {
            let s = parse::parse_syscall(val)?;
            let got = call(&s)?;
            let show = |r: Option<i32>| r.map_or_else(|| "success".to_string(), parse::errno_name);
            expect_eq(show(s.errno), show(got))
        }
        _ => Err(format!(
            "unknown check {key:?} (moat-checker --help lists them)"
        )),
    }
}

/// A field of `/proc/self/status`.
fn status(field: &str) -> Result<String, String> {
    let s = fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("/proc/self/status: {}", os_err(&e)))?;
    parse::status_field(&s, field)
        .map(str::to_string)
        .ok_or_else(|| format!("no {field} in /proc/self/status"))
}

fn read_trim(path: &str) -> Result<String, String> {
    fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| format!("{path}: {}", os_err(&e)))
}

/// `(nodename, domainname)`.
fn uname() -> Result<(String, String), String> {
    // SAFETY: utsname is plain old data; all-zero is a valid value.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable utsname.
    if unsafe { libc::uname(&mut u) } != 0 {
        return Err(format!(
            "uname: {}",
            os_err(&std::io::Error::last_os_error())
        ));
    }
    let field = |f: &[libc::c_char]| {
        let bytes: Vec<u8> = f
            .iter()
            .take_while(|c| **c != 0)
            .map(|c| *c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    Ok((field(&u.nodename), field(&u.domainname)))
}

fn rlimit(name: &str, val: &str) -> Check {
    let res = match name {
        "nofile" => libc::RLIMIT_NOFILE,
        "nproc" => libc::RLIMIT_NPROC,
        "core" => libc::RLIMIT_CORE,
        "cpu" => libc::RLIMIT_CPU,
        "data" => libc::RLIMIT_DATA,
        "fsize" => libc::RLIMIT_FSIZE,
        "stack" => libc::RLIMIT_STACK,
        "memlock" => libc::RLIMIT_MEMLOCK,
        "as" => libc::RLIMIT_AS,
        "locks" => libc::RLIMIT_LOCKS,
        "sigpending" => libc::RLIMIT_SIGPENDING,
        "msgqueue" => libc::RLIMIT_MSGQUEUE,
        "nice" => libc::RLIMIT_NICE,
        "rtprio" => libc::RLIMIT_RTPRIO,
        "rttime" => libc::RLIMIT_RTTIME,
        _ => return Err(format!("unknown resource {name:?}")),
    };
    let (soft, hard) = val.split_once(':').ok_or("SOFT:HARD")?;
    let want = (
        parse::parse_limit(soft).ok_or("bad soft limit")?,
        parse::parse_limit(hard).ok_or("bad hard limit")?,
    );
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `r` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(res, &mut r) } != 0 {
        return Err(format!(
            "getrlimit: {}",
            os_err(&std::io::Error::last_os_error())
        ));
    }
    let show = |(s, h): (u64, u64)| format!("{}:{}", parse::show_limit(s), parse::show_limit(h));
    expect_eq(show(want), show((r.rlim_cur, r.rlim_max)))
}

fn mountinfo() -> Result<Vec<MountInfo>, String> {
    let text = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("/proc/self/mountinfo: {}", os_err(&e)))?;
    Ok(text.lines().filter_map(MountInfo::parse).collect())
}

fn top_mount(point: &str) -> Result<MountInfo, String> {
    let all = mountinfo()?;
    parse::mounts_at(&all, point)
        .last()
        .map(|m| (*m).clone())
        .ok_or_else(|| format!("expected a mount at {point}, got none"))
}

fn mount(val: &str) -> Check {
    let mut it = val.splitn(3, ':');
    let dest = it.next().unwrap_or_default();
    let typ = it.next().ok_or("DEST:TYPE[:OPTS]")?;
    let opts = it.next().unwrap_or("");
    let m = top_mount(dest)?;
    if typ != "*" && m.fstype != typ {
        return Err(format!("expected type {typ}, got {}", m.describe()));
    }
    let missing: Vec<&str> = opts
        .split(',')
        .filter(|o| !o.is_empty() && !m.has_option(o))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "expected {}, got {}",
            missing.join(","),
            m.describe()
        ))
    }
}

fn masked(path: &str) -> Check {
    let meta =
        fs::metadata(path).map_err(|e| format!("expected a masked path, got {}", os_err(&e)))?;
    if meta.is_dir() {
        let n = fs::read_dir(path)
            .map_err(|e| format!("expected an empty directory, got {}", os_err(&e)))?
            .count();
        if n != 0 {
            return Err(format!("expected an empty directory, got {n} entries"));
        }
    } else {
        match fs::read(path) {
            Ok(b) if b.is_empty() => {}
            Ok(b) => return Err(format!("expected empty content, got {} bytes", b.len())),
            Err(e) => return Err(format!("expected empty content, got {}", os_err(&e))),
        }
    }
    top_mount(path).map(|_| ())
}

/// Whether the mount holding `path` is read-only (`statvfs`'s `ST_RDONLY`).
fn mount_readonly(path: &str) -> Result<bool, String> {
    let c = CString::new(path).map_err(|_| "NUL in path")?;
    // SAFETY: statvfs is plain old data; all-zero is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a valid, writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(format!(
            "statvfs {path}: {}",
            os_err(&std::io::Error::last_os_error())
        ));
    }
    Ok(st.f_flag & libc::ST_RDONLY != 0)
}

/// `readonly=` (`want_ro`) or `writable=`: the mount holding `path` is (not) read-only, and
/// writing fails with EROFS (works): a probe file created in a directory, a file opened
/// for writing (not truncated). Leaves nothing behind. Directories whose filesystem refuses
/// new files anyway (procfs) pass `readonly=` on the mount flag alone.
fn write_probe(path: &str, want_ro: bool) -> Check {
    let p = Path::new(path);
    let is_dir = fs::metadata(p)
        .map_err(|e| format!("{path}: {}", os_err(&e)))?
        .is_dir();
    let ro = mount_readonly(path)?;
    if ro != want_ro {
        return Err(format!(
            "expected a {} mount, got a {} one",
            if want_ro { "read-only" } else { "writable" },
            if ro { "read-only" } else { "writable" }
        ));
    }
    let probe = p.join(format!(".moat-checker-probe-{}", std::process::id()));
    let result = if is_dir {
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&probe)
    } else {
        fs::OpenOptions::new().write(true).open(p)
    };
    match (result, want_ro) {
        (Ok(_), true) => {
            if is_dir {
                let _ = fs::remove_file(&probe);
            }
            Err("expected EROFS, got a write that works".into())
        }
        (Ok(_), false) => {
            if is_dir {
                let _ = fs::remove_file(&probe);
            }
            Ok(())
        }
        (Err(e), true) if e.raw_os_error() == Some(libc::EROFS) || is_dir => Ok(()),
        (Err(e), true) => Err(format!("expected EROFS, got {}", os_err(&e))),
        (Err(e), false) => Err(format!("expected a write that works, got {}", os_err(&e))),
    }
}

/// Makes a system call with harmless arguments; returns `None` on success, else the errno.
fn call(s: &SyscallExpect) -> Result<Option<i32>, String> {
    let arg = |i: usize, default: u64| s.args.get(i).copied().unwrap_or(default) as libc::c_long;
    let probe =
        CString::new(format!("/tmp/.moat-checker-{}", std::process::id())).unwrap_or_default();
    let mut uts_buf = [0u8; 512];
    let mut cwd_buf = [0u8; 4096];
    let (nr, args): (libc::c_long, [libc::c_long; 3]) = match s.name.as_str() {
        "mkdir" => (libc::SYS_mkdir, [probe.as_ptr() as _, arg(0, 0o755), 0]),
        "mkdirat" => (
            libc::SYS_mkdirat,
            [libc::AT_FDCWD as _, probe.as_ptr() as _, arg(0, 0o755)],
        ),
        "getpid" => (libc::SYS_getpid, [0; 3]),
        "getppid" => (libc::SYS_getppid, [0; 3]),
        "getuid" => (libc::SYS_getuid, [0; 3]),
        "gettid" => (libc::SYS_gettid, [0; 3]),
        "sched_yield" => (libc::SYS_sched_yield, [0; 3]),
        "uname" => (libc::SYS_uname, [uts_buf.as_mut_ptr() as _, 0, 0]),
        "getcwd" => (
            libc::SYS_getcwd,
            [cwd_buf.as_mut_ptr() as _, cwd_buf.len() as _, 0],
        ),
        "personality" => (libc::SYS_personality, [arg(0, 0xffff_ffff), 0, 0]),
        "socket" => (
            libc::SYS_socket,
            [
                arg(0, libc::AF_UNIX as u64),
                arg(1, libc::SOCK_STREAM as u64),
                arg(2, 0),
            ],
        ),
        "dup" => (libc::SYS_dup, [arg(0, 0), 0, 0]),
        "kill" => (libc::SYS_kill, [std::process::id() as _, arg(0, 0), 0]),
        "unshare" => (libc::SYS_unshare, [arg(0, 0), 0, 0]),
        "prctl" => (
            libc::SYS_prctl,
            [arg(0, libc::PR_GET_DUMPABLE as u64), 0, 0],
        ),
        other => return Err(format!("the checker cannot call {other:?} (see --help)")),
    };
    // SAFETY: every call above gets pointers to live buffers of the sizes it is told, or
    // plain integers, and none of them affects memory this program relies on.
    let ret = unsafe { libc::syscall(nr, args[0], args[1], args[2]) };
    if ret < 0 {
        return Ok(Some(
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
        ));
    }
    // Undo what the successful call made.
    match s.name.as_str() {
        "mkdir" | "mkdirat" => {
            let _ = fs::remove_dir(Path::new(std::ffi::OsStr::from_bytes(probe.as_bytes())));
        }
        "socket" | "dup" => {
            // SAFETY: `ret` is a descriptor the call just returned to us.
            unsafe { libc::close(ret as libc::c_int) };
        }
        _ => {}
    }
    Ok(None)
}
