//! VM tier for the agent's containers: a real guest under QEMU, its rootfs share served by
//! virtiofsd, and the container lifecycle driven over vsock with moat-protocol requests.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use moat::boot::{TempDir, VsockVm};
use moat::virtiofsd::Virtiofsd;
use moat::vsock::{connect, AgentClient};
use moat_protocol::{
    ContainerStatus, CreateContainer, ErrorKind, Event, ExecProcess, ProcessRef, ProcessStarted,
    Request, Response, Spec, StdioRequest,
};

const SHARE_TAG: &str = "moatfs";
const GUEST_SHARE: &str = "/run/moat/share";
const T: Duration = Duration::from_secs(60);

/// A booted guest with a share holding busybox rootfs directories.
struct Sandbox {
    dir: TempDir,
    vm: VsockVm,
    agent: AgentClient,
    _fs: Virtiofsd,
}

impl Sandbox {
    fn boot() -> Self {
        let paths = moat_tests::guest_paths();
        let dir = TempDir::new("vm-containers").unwrap();
        let share = dir.0.join("share");
        std::fs::create_dir_all(&share).unwrap();
        let fs = Virtiofsd::start(&share, &dir.0.join("fs.sock"), &dir.0.join("virtiofsd.log"))
            .expect("virtiofsd starts");
        let mut vm = VsockVm::start_with_fs(
            &paths,
            &dir.0,
            vec![format!("moat.share={SHARE_TAG}")],
            Some((fs.socket().to_path_buf(), SHARE_TAG.into())),
        )
        .unwrap();
        let (agent, _) = vm.wait_for_agent(T).unwrap();
        Sandbox {
            dir,
            vm,
            agent,
            _fs: fs,
        }
    }

    /// Makes `share/<id>/rootfs` with busybox; returns its guest path.
    fn rootfs(&self, id: &str) -> String {
        let root = self.dir.0.join("share").join(id).join("rootfs");
        busybox_rootfs(&root);
        format!("{GUEST_SHARE}/{id}/rootfs")
    }

    fn call(&mut self, r: Request) -> Response {
        match self.agent.call("test", r) {
            Ok(resp) => resp,
            Err(moat::vsock::AgentError::Refused { reply, .. }) => Response::Error(reply),
            Err(e) => panic!(
                "agent call failed: {e}\nconsole:\n{}",
                self.vm.vm.console_tail()
            ),
        }
    }

    fn ok(&mut self, r: Request) {
        let resp = self.call(r);
        assert_eq!(
            resp,
            Response::Ok,
            "console:\n{}",
            self.vm.vm.console_tail()
        );
    }

    fn create(&mut self, id: &str, spec: Spec, stdio: StdioRequest) -> ProcessStarted {
        let rootfs = self.rootfs(id);
        let req = CreateContainer {
            id: id.into(),
            spec: Box::new(spec),
            rootfs,
            stdio,
        };
        match self.call(Request::CreateContainer(req)) {
            Response::Started(s) => s,
            other => panic!(
                "create {id}: {other:?}\nconsole:\n{}",
                self.vm.vm.console_tail()
            ),
        }
    }

    fn stream(&self, port: u32) -> UnixStream {
        let (s, _) = connect(&self.vm.uds, port, T).expect("stdio stream connects");
        s.set_read_timeout(Some(T)).unwrap();
        s
    }

    /// A second control connection (for blocking waits and event subscriptions).
    fn second_client(&self) -> AgentClient {
        AgentClient::connect(&self.vm.uds, moat_protocol::CONTROL_PORT, T).unwrap()
    }

    fn wait(&mut self, id: &str, exec_id: Option<&str>) -> i32 {
        let p = ProcessRef {
            id: id.into(),
            exec_id: exec_id.map(str::to_string),
        };
        match self.call(Request::WaitProcess(p)) {
            Response::Exited { status } => status,
            other => panic!("wait: {other:?}"),
        }
    }

    fn status(&mut self, id: &str) -> ContainerStatus {
        match self.call(Request::State { id: id.into() }) {
            Response::State(s) => s.status,
            other => panic!("state: {other:?}"),
        }
    }

    fn shutdown(mut self) {
        let mut agent = self.second_client();
        self.vm.shutdown(&mut agent, T).unwrap();
    }
}

fn busybox_rootfs(root: &Path) {
    for d in ["bin", "proc", "sys", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static is installed");
    for applet in [
        "sh", "echo", "cat", "sleep", "true", "tail", "id", "hostname", "uname", "head",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
}

fn spec(args: &[&str]) -> Spec {
    let mut s = Spec::default();
    let mut p = s.process().clone().unwrap();
    p.set_terminal(Some(false));
    p.set_args(Some(args.iter().map(|a| a.to_string()).collect()));
    s.set_process(Some(p));
    s
}

fn read_all(mut s: UnixStream) -> String {
    let mut out = String::new();
    s.read_to_string(&mut out).expect("stream reads to EOF");
    out
}

const ALL_STDIO: StdioRequest = StdioRequest {
    stdin: true,
    stdout: true,
    stderr: true,
};

#[test]
#[ignore = "VM tier: needs QEMU, virtiofsd and the built guest; run by scripts/test.sh"]
fn create_start_wait_with_stdio_and_exit_status() {
    let mut sb = Sandbox::boot();
    let started = sb.create(
        "c1",
        spec(&["sh", "-c", "read x; echo out:$x; echo err >&2; exit 3"]),
        ALL_STDIO,
    );
    assert_eq!(sb.status("c1"), ContainerStatus::Created);
    let mut stdin = sb.stream(started.stdio.stdin.unwrap());
    let stdout = sb.stream(started.stdio.stdout.unwrap());
    let stderr = sb.stream(started.stdio.stderr.unwrap());
    sb.ok(Request::StartContainer { id: "c1".into() });
    stdin.write_all(b"ping\n").unwrap();
    drop(stdin);
    assert_eq!(read_all(stdout), "out:ping\n");
    assert_eq!(read_all(stderr), "err\n");
    assert_eq!(sb.wait("c1", None), 3);
    assert_eq!(sb.status("c1"), ContainerStatus::Stopped);
    // start of a stopped container is refused
    let r = sb.call(Request::StartContainer { id: "c1".into() });
    assert!(matches!(r, Response::Error(e) if e.kind == ErrorKind::FailedPrecondition));
    sb.ok(Request::DeleteContainer {
        id: "c1".into(),
        force: false,
    });
    assert!(
        matches!(sb.call(Request::State { id: "c1".into() }), Response::Error(e) if e.kind == ErrorKind::NotFound)
    );
    sb.shutdown();
}

#[test]
#[ignore = "VM tier: needs QEMU, virtiofsd and the built guest; run by scripts/test.sh"]
fn exec_signal_pause_resume_stats() {
    let mut sb = Sandbox::boot();
    let started = sb.create("c2", spec(&["sleep", "1000"]), StdioRequest::default());
    sb.ok(Request::StartContainer { id: "c2".into() });
    assert_eq!(sb.status("c2"), ContainerStatus::Running);

    let mut process = spec(&["sh", "-c", "echo pid1=$(cat /proc/1/comm) host=$(hostname)"])
        .process()
        .clone()
        .unwrap();
    process.set_terminal(Some(false));
    let exec = ExecProcess {
        id: "c2".into(),
        exec_id: "e1".into(),
        process: Box::new(process),
        stdio: StdioRequest {
            stdin: false,
            stdout: true,
            stderr: false,
        },
    };
    let e = match sb.call(Request::ExecProcess(exec)) {
        Response::Started(s) => s,
        other => panic!("exec: {other:?}"),
    };
    let out = read_all(sb.stream(e.stdio.stdout.unwrap()));
    assert_eq!(
        out, "pid1=sleep host=youki\n",
        "the exec runs in the container's pid and uts namespaces"
    );
    assert_eq!(sb.wait("c2", Some("e1")), 0);
    execs_are_deleted_and_failed_ones_leave_nothing(&mut sb);

    let pids = match sb.call(Request::ListProcesses { id: "c2".into() }) {
        Response::Processes(p) => p,
        other => panic!("ps: {other:?}"),
    };
    assert!(
        pids.contains(&started.pid),
        "{pids:?} lacks init {}",
        started.pid
    );

    sb.ok(Request::PauseContainer { id: "c2".into() });
    assert_eq!(sb.status("c2"), ContainerStatus::Paused);
    sb.ok(Request::ResumeContainer { id: "c2".into() });
    assert_eq!(sb.status("c2"), ContainerStatus::Running);

    let stats = match sb.call(Request::Stats { id: "c2".into() }) {
        Response::Stats(s) => s,
        other => panic!("stats: {other:?}"),
    };
    assert!(stats.pids.current >= 1, "{stats:?}");
    assert!(stats.memory.usage > 0, "{stats:?}");
    assert!(stats.cpu.usage_usec > 0, "{stats:?}");

    sb.ok(Request::SignalProcess {
        process: ProcessRef {
            id: "c2".into(),
            exec_id: None,
        },
        signal: 9,
        all: false,
    });
    assert_eq!(sb.wait("c2", None), 137, "SIGKILL is reported as 128+9");
    sb.ok(Request::DeleteContainer {
        id: "c2".into(),
        force: false,
    });
    sb.shutdown();
}

#[test]
#[ignore = "VM tier: needs QEMU, virtiofsd and the built guest; run by scripts/test.sh"]
fn oom_kill_is_reported_as_an_event() {
    let mut sb = Sandbox::boot();
    let mut events = sb.second_client();
    assert_eq!(
        events
            .call("SubscribeEvents", Request::SubscribeEvents)
            .unwrap(),
        Response::Ok
    );
    let mut s = spec(&["tail", "/dev/zero"]);
    let mut linux = s.linux().clone().unwrap();
    let mem = oci_spec::runtime::LinuxMemoryBuilder::default()
        .limit(16i64 * 1024 * 1024)
        .swap(16i64 * 1024 * 1024)
        .build()
        .unwrap();
    linux.set_resources(Some(
        oci_spec::runtime::LinuxResourcesBuilder::default()
            .memory(mem)
            .build()
            .unwrap(),
    ));
    s.set_linux(Some(linux));
    sb.create("c3", s, StdioRequest::default());
    sb.ok(Request::StartContainer { id: "c3".into() });
    assert_eq!(sb.wait("c3", None), 137, "the OOM killer's SIGKILL");
    let mut seen = Vec::new();
    for _ in 0..2 {
        match events.read_event() {
            Ok(ev) => seen.push(ev),
            Err(e) => panic!("event stream: {e}; seen {seen:?}"),
        }
        if seen
            .iter()
            .any(|e| matches!(e, Event::Oom { id } if id == "c3"))
        {
            break;
        }
    }
    assert!(
        seen.iter()
            .any(|e| matches!(e, Event::Oom { id } if id == "c3")),
        "{seen:?}"
    );
    sb.ok(Request::DeleteContainer {
        id: "c3".into(),
        force: true,
    });
    sb.shutdown();
}

#[test]
#[ignore = "VM tier: needs QEMU, virtiofsd and the built guest; run by scripts/test.sh"]
fn malformed_specs_name_the_field_and_leave_nothing() {
    let mut sb = Sandbox::boot();
    let mut cases: Vec<(&str, Spec, &str)> = Vec::new();

    let mut s = spec(&["true"]);
    let mut mounts = s.mounts().clone().unwrap();
    mounts.push(
        oci_spec::runtime::MountBuilder::default()
            .destination("/x")
            .typ("nosuchfs")
            .source("none")
            .build()
            .unwrap(),
    );
    let n = mounts.len() - 1;
    s.set_mounts(Some(mounts));
    cases.push(("m1", s, Box::leak(format!("mounts[{n}]").into_boxed_str())));

    let mut s = spec(&["true"]);
    let mut linux = s.linux().clone().unwrap();
    linux.set_uid_mappings(Some(vec![
        oci_spec::runtime::LinuxIdMappingBuilder::default()
            .container_id(0u32)
            .host_id(1000u32)
            .size(1u32)
            .build()
            .unwrap(),
    ]));
    s.set_linux(Some(linux));
    cases.push(("m2", s, "linux.uidMappings"));

    let mut s = spec(&["true"]);
    let mut linux = s.linux().clone().unwrap();
    let sc = oci_spec::runtime::LinuxSeccompBuilder::default()
        .default_action(oci_spec::runtime::LinuxSeccompAction::ScmpActNotify)
        .build()
        .unwrap();
    linux.set_seccomp(Some(sc));
    s.set_linux(Some(linux));
    cases.push(("m3", s, "linux.seccomp.defaultAction"));

    cases.push(("m4", spec(&["/no/such/program"]), "process.args[0]"));

    for (id, s, field) in cases {
        let rootfs = sb.rootfs(id);
        let r = sb.call(Request::CreateContainer(CreateContainer {
            id: id.into(),
            spec: Box::new(s),
            rootfs,
            stdio: StdioRequest::default(),
        }));
        match r {
            Response::Error(e) => {
                assert_eq!(e.kind, ErrorKind::InvalidArgument, "{id}: {e:?}");
                assert!(
                    e.message.contains(field),
                    "{id}: {:?} does not name {field}",
                    e.message
                );
            }
            other => panic!("{id}: accepted a bad spec: {other:?}"),
        }
        // Nothing of it is left: the id is free and unknown.
        assert!(
            matches!(sb.call(Request::State { id: id.into() }), Response::Error(e) if e.kind == ErrorKind::NotFound)
        );
    }
    // The agent is still healthy: a good container runs.
    sb.create("ok", spec(&["true"]), StdioRequest::default());
    sb.ok(Request::StartContainer { id: "ok".into() });
    assert_eq!(sb.wait("ok", None), 0);
    sb.shutdown();
}

#[test]
#[ignore = "VM tier: needs QEMU, virtiofsd and the built guest; run by scripts/test.sh"]
fn output_is_kept_until_read_and_a_slow_reader_applies_back_pressure() {
    let mut sb = Sandbox::boot();
    let out_only = StdioRequest {
        stdin: false,
        stdout: true,
        stderr: false,
    };
    // Writes and exits before the host has connected: nothing may be lost.
    let s = sb.create(
        "fast",
        spec(&["sh", "-c", "echo written-before-connect"]),
        out_only,
    );
    sb.ok(Request::StartContainer { id: "fast".into() });
    assert_eq!(sb.wait("fast", None), 0);
    assert_eq!(
        read_all(sb.stream(s.stdio.stdout.unwrap())),
        "written-before-connect\n"
    );

    // 32 MiB of output and nobody reading: the writer must block, not the agent buffer it.
    let s = sb.create(
        "slow",
        spec(&["head", "-c", "33554432", "/dev/zero"]),
        out_only,
    );
    let out = sb.stream(s.stdio.stdout.unwrap());
    sb.ok(Request::StartContainer { id: "slow".into() });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        sb.status("slow"),
        ContainerStatus::Running,
        "the writer is held back while the host does not read"
    );
    let mut total = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let mut out = out;
    loop {
        let n = out.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        assert!(buf[..n].iter().all(|b| *b == 0));
        total += n;
    }
    assert_eq!(total, 33_554_432);
    assert_eq!(sb.wait("slow", None), 0);
    sb.shutdown();
}

#[test]
#[ignore = "VM tier: needs QEMU, virtiofsd and the built guest; run by scripts/test.sh"]
fn terminal_processes_get_a_pty_with_size_and_resize() {
    let mut sb = Sandbox::boot();
    let mut s = spec(&["sh", "-c", "stty size; read x; stty size; echo got:$x"]);
    let mut p = s.process().clone().unwrap();
    p.set_terminal(Some(true));
    p.set_console_size(Some(
        oci_spec::runtime::BoxBuilder::default()
            .height(30u64)
            .width(100u64)
            .build()
            .unwrap(),
    ));
    s.set_process(Some(p));
    let st = sb.create("tty", s, StdioRequest::default());
    let port = st
        .stdio
        .tty
        .expect("a terminal process announces one tty stream");
    assert!(st.stdio.stdout.is_none());
    let mut tty = sb.stream(port);
    sb.ok(Request::StartContainer { id: "tty".into() });
    let mut seen = String::new();
    let mut buf = [0u8; 1024];
    while !seen.contains("30 100") {
        let n = tty.read(&mut buf).unwrap();
        assert!(n > 0, "tty closed early: {seen:?}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    sb.ok(Request::ResizeTty {
        process: ProcessRef {
            id: "tty".into(),
            exec_id: None,
        },
        rows: 40,
        cols: 120,
    });
    tty.write_all(b"abc\n").unwrap();
    let rest = read_all(tty);
    assert!(rest.contains("40 120"), "{rest:?}");
    assert!(rest.contains("got:abc"), "{rest:?}");
    assert_eq!(sb.wait("tty", None), 0);
    sb.shutdown();
}

/// `DeleteProcess` forgets an exited exec and refuses a running one; execs that fail to
/// start give back their stdio at once (250 of them, each with three streams, would hold
/// about 1,500 descriptors for a minute otherwise, past PID 1's limit of 1,024).
fn execs_are_deleted_and_failed_ones_leave_nothing(sb: &mut Sandbox) {
    let exec = |exec_id: &str, args: &[&str]| {
        let mut process = spec(args).process().clone().unwrap();
        process.set_terminal(Some(false));
        Request::ExecProcess(ExecProcess {
            id: "c2".into(),
            exec_id: exec_id.into(),
            process: Box::new(process),
            stdio: StdioRequest {
                stdin: true,
                stdout: true,
                stderr: true,
            },
        })
    };
    let e1 = ProcessRef {
        id: "c2".into(),
        exec_id: Some("e1".into()),
    };
    sb.ok(Request::DeleteProcess(e1.clone()));
    match sb.call(Request::WaitProcess(e1)) {
        Response::Error(e) => assert_eq!(e.kind, ErrorKind::NotFound, "{e:?}"),
        other => panic!("a deleted exec is gone: {other:?}"),
    }
    let started = std::time::Instant::now();
    for i in 0..250 {
        match sb.call(exec(&format!("bad{i}"), &["/nonexistent"])) {
            Response::Error(e) => assert!(e.message.contains("/nonexistent"), "{e:?}"),
            other => panic!("exec of a missing program: {other:?}"),
        }
    }
    println!("250 failed execs in {:?}", started.elapsed());
    let Response::Started(_) = sb.call(exec("long", &["sleep", "100"])) else {
        panic!("an exec after 250 failed ones starts");
    };
    let long = ProcessRef {
        id: "c2".into(),
        exec_id: Some("long".into()),
    };
    match sb.call(Request::DeleteProcess(long.clone())) {
        Response::Error(e) => assert_eq!(e.kind, ErrorKind::FailedPrecondition, "{e:?}"),
        other => panic!("deleting a running exec: {other:?}"),
    }
    sb.ok(Request::SignalProcess {
        process: long.clone(),
        signal: 9,
        all: false,
    });
    assert_eq!(sb.wait("c2", Some("long")), 137);
    sb.ok(Request::DeleteProcess(long));
}
