//! Terminals: `process.terminal` with `--console-socket` (the pty master arrives over
//! `SCM_RIGHTS`, as runc sends it), for `run` and for `exec -t`.

use std::io::Write;
use std::time::Duration;

use moat_tests::bundle::Bundle;
use moat_tests::cli::{arg, busybox_bundle, read_until, ConsoleSocket, Moat};

/// A bundle whose process has a terminal.
fn terminal_bundle(tag: &str, script: &str) -> Bundle {
    let mut b = busybox_bundle(tag, &["sh", "-c", script]);
    let mut p = b.spec.process().clone().unwrap();
    p.set_terminal(Some(true));
    b.spec.set_process(Some(p));
    b.write().unwrap();
    b
}

const IS_A_TTY: &str = "test -t 0 && test -t 1 && test -t 2 && echo is-a-tty";

/// `moat run -d --console-socket` for bundle `b` as container `id`; the pty master the
/// console socket received.
fn run_detached_on_console(m: &Moat, b: &Bundle, id: &str) -> std::fs::File {
    let cs = ConsoleSocket::bind(m.work().join(format!("{id}-cs.sock")));
    let o = m.run_logged(
        &[
            "run",
            "-d",
            "--console-socket",
            arg(cs.path()),
            "--bundle",
            arg(b.path()),
            id,
        ],
        id,
    );
    assert_eq!(o.code, 0, "{o}");
    cs.master()
}

#[test]
#[ignore = "VM tier: needs QEMU, virtiofsd and the built guest; run by scripts/test.sh"]
fn console_socket_for_run_and_exec() {
    let m = Moat::new("tty");
    let script = format!("{IS_A_TTY}; read x; echo \"got $x\"; sleep 1000");
    let b = terminal_bundle("tty", &script);
    let mut master = run_detached_on_console(&m, &b, "t1");
    read_until(&mut master, "is-a-tty", Duration::from_secs(60));
    master.write_all(b"hi\n").unwrap();
    read_until(&mut master, "got hi", Duration::from_secs(60));
    assert_eq!(m.log("t1", "out"), "", "the output went to the pty");

    let cs2 = ConsoleSocket::bind(m.work().join("cs2.sock"));
    let cs2_path = cs2.path().to_path_buf();
    std::thread::scope(|s| {
        let exec = s.spawn(|| {
            let script = format!("{IS_A_TTY}; echo exec-tty-ok; exit 5");
            m.run(&[
                "exec",
                "-t",
                "--console-socket",
                arg(&cs2_path),
                "t1",
                "sh",
                "-c",
                &script,
            ])
        });
        let mut master2 = cs2.master();
        let seen = read_until(&mut master2, "exec-tty-ok", Duration::from_secs(60));
        assert!(seen.contains("is-a-tty"), "{seen:?}");
        let o = exec.join().unwrap();
        assert_eq!(o.code, 5, "{o}");
    });
    drop(master);
    m.ok(&["delete", "--force", "t1"]);
    m.assert_clean(&[b.path()]);
}

/// As with runc, the terminal is the container's own: its name resolves in the container's
/// /dev/pts (`tty`, `ttyname(3)`) and it is /dev/console.
#[test]
#[ignore = "VM tier: needs QEMU, virtiofsd and the built guest; run by scripts/test.sh"]
fn terminal_is_named_in_the_container() {
    let m = Moat::new("ttyname");
    let b = terminal_bundle(
        "ttyname",
        "tty; test -c /dev/console && echo console-ok; sleep 1000",
    );
    let mut master = run_detached_on_console(&m, &b, "n1");
    let seen = read_until(&mut master, "\n", Duration::from_secs(60));
    assert!(
        seen.trim_start_matches('\0').starts_with("/dev/pts/"),
        "`tty` in the container: {seen:?}"
    );
    read_until(&mut master, "console-ok", Duration::from_secs(10));
    drop(master);
    m.ok(&["delete", "--force", "n1"]);
    m.assert_clean(&[b.path()]);
}
