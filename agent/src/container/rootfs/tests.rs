//! Call sequences of [`prepare`], [`pivot_root`] and [`chroot_no_pivot`] against the
//! recording fake, on a temporary directory as rootfs.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::SFlag;
use oci_spec::runtime::{LinuxBuilder, Mount, MountBuilder, Spec, SpecBuilder};

use super::host::Host;
use super::testutil::{fake_host, TempDir};
use super::*;
use crate::container::syscall::{Call, RecordingSyscall};

const NOSUID: MsFlags = MsFlags::MS_NOSUID;
const NODEV: MsFlags = MsFlags::MS_NODEV;
const NOEXEC: MsFlags = MsFlags::MS_NOEXEC;
const RDONLY: MsFlags = MsFlags::MS_RDONLY;
const BIND: MsFlags = MsFlags::MS_BIND;
const REC: MsFlags = MsFlags::MS_REC;

fn mnt(
    src: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    f: MsFlags,
    data: Option<&str>,
) -> Call {
    Call::Mount(
        src.map(Path::to_path_buf),
        target.to_path_buf(),
        fstype.map(str::to_string),
        f,
        data.map(str::to_string),
    )
}

fn fs(src: &str, target: PathBuf, fstype: &str, f: MsFlags, data: Option<&str>) -> [Call; 2] {
    [
        Call::MkdirAll(target.clone(), 0o755),
        mnt(Some(Path::new(src)), &target, Some(fstype), f, data),
    ]
}

fn mount(dest: &str, typ: Option<&str>, src: Option<&str>, opts: &[&str]) -> Mount {
    let mut b = MountBuilder::default().destination(dest);
    if let Some(t) = typ {
        b = b.typ(t);
    }
    if let Some(s) = src {
        b = b.source(s);
    }
    b.options(opts.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()
        .unwrap()
}

/// A spec with only `mounts`, no devices (a bound /dev), and no linux section.
fn spec_with(mounts: Vec<Mount>, dev_bind_src: &Path) -> Spec {
    let mut all = vec![mount(
        "/dev",
        None,
        Some(dev_bind_src.to_str().unwrap()),
        &["rbind"],
    )];
    all.extend(mounts);
    SpecBuilder::default().mounts(all).build().unwrap()
}

/// The calls after the `/` propagation, the rootfs self-bind and the `/dev` bind.
fn calls_after_setup(sys: &RecordingSyscall) -> Vec<Call> {
    sys.calls()[4..].to_vec()
}

#[test]
fn the_default_runc_spec() {
    let t = TempDir::new();
    let r = t.path();
    let sys = RecordingSyscall::default();
    prepare(&sys, &fake_host(), &Spec::default(), r).unwrap();

    let mut want = vec![
        mnt(None, Path::new("/"), None, MsFlags::MS_SLAVE | REC, None),
        mnt(Some(r), r, None, BIND | REC, None),
    ];
    want.extend(fs("proc", r.join("proc"), "proc", MsFlags::empty(), None));
    want.extend(fs(
        "tmpfs",
        r.join("dev"),
        "tmpfs",
        NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    ));
    want.extend(fs(
        "devpts",
        r.join("dev/pts"),
        "devpts",
        NOSUID | NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    ));
    want.extend(fs(
        "shm",
        r.join("dev/shm"),
        "tmpfs",
        NOSUID | NOEXEC | NODEV,
        Some("mode=1777,size=65536k"),
    ));
    want.extend(fs(
        "mqueue",
        r.join("dev/mqueue"),
        "mqueue",
        NOSUID | NOEXEC | NODEV,
        None,
    ));
    want.extend(fs(
        "sysfs",
        r.join("sys"),
        "sysfs",
        NOSUID | NOEXEC | NODEV | RDONLY,
        None,
    ));
    // cgroup v1 in the spec, cgroup2 in the guest.
    want.extend(fs(
        "cgroup",
        r.join("sys/fs/cgroup"),
        "cgroup2",
        NOSUID | NOEXEC | NODEV | MsFlags::MS_RELATIME | RDONLY,
        None,
    ));
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        let p = r.join("dev").join(name);
        want.push(Call::MkdirAll(r.join("dev"), 0o755));
        let dev = nix::sys::stat::makedev(major, minor);
        want.push(Call::Mknod(p.clone(), SFlag::S_IFCHR, 0o666, dev));
        want.push(Call::Lchown(p, 0, 0));
    }
    for (target, link) in [
        ("pts/ptmx", "dev/ptmx"),
        ("/proc/self/fd", "dev/fd"),
        ("/proc/self/fd/0", "dev/stdin"),
        ("/proc/self/fd/1", "dev/stdout"),
        ("/proc/self/fd/2", "dev/stderr"),
        ("/proc/kcore", "dev/core"),
    ] {
        want.push(Call::Symlink(target.into(), r.join(link)));
    }
    assert_eq!(sys.calls(), want);
}

#[test]
fn a_bound_dev_gets_no_device_nodes() {
    let t = TempDir::new();
    let r = t.path();
    let sys = RecordingSyscall::default();
    prepare(&sys, &fake_host(), &spec_with(vec![], r), r).unwrap();
    assert_eq!(
        sys.calls(),
        [
            mnt(None, Path::new("/"), None, MsFlags::MS_SLAVE | REC, None),
            mnt(Some(r), r, None, BIND | REC, None),
            Call::MkdirAll(r.join("dev"), 0o755),
            mnt(Some(r), &r.join("dev"), None, BIND | REC, None),
        ]
    );
}

#[test]
fn bind_mounts_are_remounted_for_their_flags_after_propagation() {
    let t = TempDir::new();
    let r = t.path();
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let file = t.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let spec = spec_with(
        vec![
            mount(
                "/data",
                Some("bind"),
                Some(src.to_str().unwrap()),
                &["rbind", "ro", "nosuid", "rprivate"],
            ),
            mount(
                "/etc/hosts",
                None,
                Some(file.to_str().unwrap()),
                &["bind", "shared", "slave"],
            ),
        ],
        t.path(),
    );
    let sys = RecordingSyscall::default();
    prepare(&sys, &fake_host(), &spec, r).unwrap();
    let data = r.join("data");
    let hosts = r.join("etc/hosts");
    assert_eq!(
        calls_after_setup(&sys)[..9],
        [
            Call::MkdirAll(data.clone(), 0o755),
            mnt(Some(&src), &data, None, BIND | REC, None),
            mnt(None, &data, None, MsFlags::MS_PRIVATE | REC, None),
            mnt(
                None,
                &data,
                None,
                MsFlags::MS_REMOUNT | BIND | RDONLY | NOSUID,
                None
            ),
            // A file source: the parent directory, then an empty file to bind onto.
            Call::MkdirAll(r.join("etc"), 0o755),
            Call::Touch(hosts.clone(), 0o644),
            mnt(Some(&file), &hosts, None, BIND, None),
            mnt(None, &hosts, None, MsFlags::MS_SHARED, None),
            mnt(None, &hosts, None, MsFlags::MS_SLAVE, None),
        ]
    );
}

#[test]
fn a_refused_bind_remount_keeps_the_locked_flags() {
    let t = TempDir::new();
    let spec = spec_with(
        vec![mount(
            "/x",
            None,
            Some(t.path().to_str().unwrap()),
            &["rbind", "ro"],
        )],
        t.path(),
    );
    let sys = RecordingSyscall::default();
    sys.fail_when(
        |c| matches!(c, Call::Mount(None, _, _, f, _) if *f == MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY),
        nix::Error::EPERM,
    );
    let host = Host {
        locked_flags: |_| MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
        ..fake_host()
    };
    prepare(&sys, &host, &spec, t.path()).unwrap();
    let x = t.path().join("x");
    let remount = MsFlags::MS_REMOUNT | BIND | RDONLY;
    assert_eq!(
        calls_after_setup(&sys)[2..],
        [
            mnt(None, &x, None, remount, None),
            mnt(None, &x, None, remount | NODEV | NOSUID, None),
        ]
    );
}

#[test]
fn destinations_through_symlinks_stay_inside_the_rootfs() {
    let t = TempDir::new();
    let r = t.path();
    std::os::unix::fs::symlink("/../../../../etc", r.join("evil")).unwrap();
    std::os::unix::fs::symlink("../../../../tmp", r.join("rel")).unwrap();
    let spec = spec_with(
        vec![
            mount("/evil/x", Some("tmpfs"), None, &[]),
            mount("/rel/y", Some("tmpfs"), None, &[]),
        ],
        t.path(),
    );
    let sys = RecordingSyscall::default();
    prepare(&sys, &fake_host(), &spec, r).unwrap();
    let targets: Vec<PathBuf> = calls_after_setup(&sys)
        .into_iter()
        .filter_map(|c| match c {
            Call::Mount(_, t, ..) => Some(t),
            _ => None,
        })
        .collect();
    assert_eq!(targets, [r.join("etc/x"), r.join("tmp/y")]);
}

#[test]
fn nothing_may_be_mounted_inside_proc_but_lxcfs_files() {
    let t = TempDir::new();
    let src = t.path().to_str().unwrap();
    let ok = spec_with(
        vec![mount("/proc/meminfo", None, Some(src), &["bind"])],
        t.path(),
    );
    prepare(&RecordingSyscall::default(), &fake_host(), &ok, t.path()).unwrap();
    for (m, want) in [
        (
            mount("/proc/sys", None, Some(src), &["rbind"]),
            "mounts[1].destination: /proc/sys cannot be mounted because it is inside /proc",
        ),
        (
            mount("/proc", Some("tmpfs"), None, &[]),
            "mounts[1].destination: only a proc filesystem may be mounted on /proc",
        ),
    ] {
        let spec = spec_with(vec![m], t.path());
        let err = prepare(&RecordingSyscall::default(), &fake_host(), &spec, t.path());
        assert_eq!(err.unwrap_err().to_string(), want);
    }
    // Through a symlink too.
    std::os::unix::fs::symlink("/proc/sys", t.path().join("sneaky")).unwrap();
    let spec = spec_with(vec![mount("/sneaky", Some("tmpfs"), None, &[])], t.path());
    let err = prepare(&RecordingSyscall::default(), &fake_host(), &spec, t.path()).unwrap_err();
    assert!(
        err.to_string().contains("/proc/sys cannot be mounted"),
        "{err}"
    );
}

#[test]
fn a_tmpfs_over_an_existing_directory_keeps_its_mode() {
    use std::os::unix::fs::PermissionsExt;
    let t = TempDir::new();
    let dir = t.path().join("tmp");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let spec = spec_with(
        vec![mount("/tmp", Some("tmpfs"), None, &["size=1m"])],
        t.path(),
    );
    let sys = RecordingSyscall::default();
    prepare(&sys, &fake_host(), &spec, t.path()).unwrap();
    assert_eq!(
        calls_after_setup(&sys)[1],
        mnt(
            Some(Path::new("tmpfs")),
            &dir,
            Some("tmpfs"),
            MsFlags::empty(),
            Some("mode=1777,size=1m")
        )
    );
}

#[test]
fn a_refused_cgroup2_mount_binds_the_own_cgroup() {
    let t = TempDir::new();
    let spec = spec_with(
        vec![mount(
            "/sys/fs/cgroup",
            Some("cgroup"),
            Some("cgroup"),
            &["nosuid", "ro", "rprivate"],
        )],
        t.path(),
    );
    let sys = RecordingSyscall::default();
    sys.fail_when(
        |c| matches!(c, Call::Mount(_, _, Some(t), ..) if t == "cgroup2"),
        nix::Error::EPERM,
    );
    prepare(&sys, &fake_host(), &spec, t.path()).unwrap();
    let cg = t.path().join("sys/fs/cgroup");
    let own = std::env::temp_dir();
    assert_eq!(
        calls_after_setup(&sys)[..6],
        [
            Call::MkdirAll(cg.clone(), 0o755),
            mnt(
                Some(Path::new("cgroup")),
                &cg,
                Some("cgroup2"),
                NOSUID | RDONLY,
                None
            ),
            Call::MkdirAll(cg.clone(), 0o755),
            mnt(Some(&own), &cg, None, BIND | REC, None),
            mnt(None, &cg, None, MsFlags::MS_PRIVATE | REC, None),
            mnt(
                None,
                &cg,
                None,
                MsFlags::MS_REMOUNT | BIND | NOSUID | RDONLY,
                None
            ),
        ]
    );
}

#[test]
fn cgroup2_keeps_its_data() {
    let t = TempDir::new();
    let spec = spec_with(
        vec![mount(
            "/sys/fs/cgroup",
            Some("cgroup2"),
            None,
            &["nsdelegate"],
        )],
        t.path(),
    );
    let sys = RecordingSyscall::default();
    prepare(&sys, &fake_host(), &spec, t.path()).unwrap();
    let cg = t.path().join("sys/fs/cgroup");
    assert_eq!(
        calls_after_setup(&sys)[1],
        mnt(
            Some(Path::new("cgroup2")),
            &cg,
            Some("cgroup2"),
            MsFlags::empty(),
            Some("nsdelegate")
        )
    );
}

#[test]
fn root_propagation_from_the_spec() {
    let t = TempDir::new();
    let linux = LinuxBuilder::default()
        .rootfs_propagation("rshared")
        .build()
        .unwrap();
    let mut spec = spec_with(vec![], t.path());
    spec.set_linux(Some(linux));
    let sys = RecordingSyscall::default();
    let host = Host {
        mount_point_of: |_| Some(PathBuf::from("/run")),
        ..fake_host()
    };
    prepare(&sys, &host, &spec, t.path()).unwrap();
    assert_eq!(
        sys.calls()[..3],
        [
            mnt(None, Path::new("/"), None, MsFlags::MS_SHARED | REC, None),
            mnt(None, Path::new("/run"), None, MsFlags::MS_PRIVATE, None),
            mnt(Some(t.path()), t.path(), None, BIND | REC, None),
        ]
    );
}

#[test]
fn other_root_propagations_wait_for_pivot_root() {
    let t = TempDir::new();
    for word in ["runbindable", "private", "rprivate", "slave"] {
        let linux = LinuxBuilder::default()
            .rootfs_propagation(word)
            .build()
            .unwrap();
        let mut spec = spec_with(vec![], t.path());
        spec.set_linux(Some(linux));
        let sys = RecordingSyscall::default();
        prepare(&sys, &fake_host(), &spec, t.path()).unwrap();
        assert_eq!(
            sys.calls()[..2],
            [
                mnt(None, Path::new("/"), None, MsFlags::MS_SLAVE | REC, None),
                mnt(Some(t.path()), t.path(), None, BIND | REC, None),
            ],
            "{word}"
        );
    }
}

#[test]
fn failures_name_the_field() {
    let t = TempDir::new();
    let spec = spec_with(
        vec![
            mount("/a", Some("tmpfs"), None, &[]),
            mount("/b", Some("mqueue"), None, &[]),
        ],
        t.path(),
    );
    let sys = RecordingSyscall::default();
    sys.fail_when(
        |c| matches!(c, Call::Mount(_, _, Some(t), ..) if t == "mqueue"),
        nix::Error::ENODEV,
    );
    let err = prepare(&sys, &fake_host(), &spec, t.path()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "mounts[2]: mount mqueue on {}/b: ENODEV: No such device",
            t.path().display()
        )
    );

    let sys = RecordingSyscall::default();
    sys.fail_when(
        |c| matches!(c, Call::MkdirAll(p, _) if p.ends_with("a")),
        nix::Error::EROFS,
    );
    let err = prepare(&sys, &fake_host(), &spec, t.path()).unwrap_err();
    assert!(err.to_string().starts_with("mounts[1]: create "), "{err}");

    let sys = RecordingSyscall::default();
    sys.fail_when(
        |c| matches!(c, Call::Mount(_, t, ..) if t.as_os_str() == "/"),
        nix::Error::EINVAL,
    );
    let err = prepare(&sys, &fake_host(), &spec, t.path()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "linux.rootfsPropagation: set propagation of /: EINVAL: Invalid argument"
    );

    let missing = spec_with(
        vec![mount("/m", None, Some("/nonexistent/src"), &["bind"])],
        t.path(),
    );
    let err = prepare(
        &RecordingSyscall::default(),
        &fake_host(),
        &missing,
        t.path(),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "mounts[1].source: bind source /nonexistent/src: ENOENT: No such file or directory"
    );

    std::os::unix::fs::symlink("/loop", t.path().join("loop")).unwrap();
    let looping = spec_with(vec![mount("/loop/x", Some("tmpfs"), None, &[])], t.path());
    let err = prepare(
        &RecordingSyscall::default(),
        &fake_host(),
        &looping,
        t.path(),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "mounts[1].destination: resolving \"/loop/x\" inside the rootfs: \
         ELOOP: Too many symbolic links encountered"
    );

    // A bad option fails before anything is mounted.
    let bad = spec_with(vec![mount("/x", Some("tmpfs"), None, &["rro"])], t.path());
    let sys = RecordingSyscall::default();
    let err = prepare(&sys, &fake_host(), &bad, t.path()).unwrap_err();
    assert!(
        err.to_string().starts_with("mounts[1].options[0]: "),
        "{err}"
    );
    assert!(sys.calls().is_empty());
}

#[test]
fn pivot_root_sequence() {
    let sys = RecordingSyscall::default();
    pivot_root(&sys, Path::new("/run/c/rootfs")).unwrap();
    let dot = PathBuf::from(".");
    assert_eq!(
        sys.calls(),
        [
            Call::OpenDir("/".into()),
            Call::Chdir("/run/c/rootfs".into()),
            Call::PivotRoot(dot.clone(), dot.clone()),
            Call::Fchdir(0),
            mnt(None, &dot, None, MsFlags::MS_SLAVE | REC, None),
            Call::Umount(dot, MntFlags::MNT_DETACH),
            Call::Chdir("/".into()),
        ]
    );
    let sys = RecordingSyscall::default();
    sys.fail_when(|c| matches!(c, Call::PivotRoot(..)), nix::Error::EINVAL);
    let err = pivot_root(&sys, Path::new("/r")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "root.path: pivot_root to /r: EINVAL: Invalid argument"
    );
}

#[test]
fn no_pivot_sequence() {
    let sys = RecordingSyscall::default();
    chroot_no_pivot(&sys, Path::new("/r")).unwrap();
    assert_eq!(
        sys.calls(),
        [
            Call::Chdir("/r".into()),
            mnt(
                Some(Path::new("/r")),
                Path::new("/"),
                None,
                MsFlags::MS_MOVE,
                None
            ),
            Call::Chroot(".".into()),
            Call::Chdir("/".into()),
        ]
    );
}
