//! Behaviour tests: install compiled profiles in a forked child and watch what the kernel does
//! to one system call, and check that the BPF model (`bpf_eval`) predicted the same. No root
//! is needed: the child sets `no_new_privs` first.

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

use super::bpf_eval::{run_all, Call};
use super::*;

/// What happened to the child's system call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// The filters let the call run: it returned a non-negative value, or EFAULT on the null
    /// pointers the probes pass (no test uses errnoRet 14).
    Allowed,
    /// The call failed with this errno.
    Errno(i32),
    /// The process died of SIGSYS (KILL_*, or TRAP without a handler).
    Sigsys,
}

/// Exit codes of the child when something other than the probed call fails.
const EXIT_PRCTL: i32 = 201;
const EXIT_INSTALL: i32 = 202;

/// Compiles `json`, adding a rule that allows `exit` and `exit_group` so that the child can
/// report (a rule equal to the default action is dropped, so this changes nothing when the
/// default is ALLOW).
fn compile_for_child(json: &str) -> CompiledFilters {
    let mut profile: LinuxSeccomp = serde_json::from_str(json).expect("profile JSON");
    let mut rules = profile.syscalls().clone().unwrap_or_default();
    rules.push(
        serde_json::from_str(r#"{"names": ["exit", "exit_group"], "action": "SCMP_ACT_ALLOW"}"#)
            .expect("rule JSON"),
    );
    profile.set_syscalls(Some(rules));
    compile(&profile).expect("profile compiles")
}

/// Runs `syscall(nr, args...)` in a child with `compiled` installed.
fn observe(compiled: &CompiledFilters, nr: i64, args: [u64; 6]) -> Seen {
    // SAFETY: the child only makes system calls (prctl, setrlimit, seccomp, the probe, _exit)
    // through functions that neither allocate nor take locks, so it is safe to run after fork
    // in a multi-threaded test process.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => child(compiled, nr, args),
        ForkResult::Parent { child } => wait_for(child),
    }
}

fn child(compiled: &CompiledFilters, nr: i64, args: [u64; 6]) -> ! {
    let no_core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prctl and setrlimit with plain integer arguments and a pointer to a live local.
    let ready = unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        libc::setrlimit(libc::RLIMIT_CORE, &no_core);
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
    };
    let code = if !ready {
        EXIT_PRCTL
    } else if install_with_flags(&compiled.filters, compiled.filter_flags).is_err() {
        EXIT_INSTALL
    } else {
        // SAFETY: the probes pass integers, or null pointers that the kernel rejects with
        // EFAULT once the filters let the call through.
        let rc = unsafe { libc::syscall(nr, args[0], args[1], args[2], args[3], args[4], args[5]) };
        if rc >= 0 {
            0
        } else {
            io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(200)
                .min(200)
        }
    };
    // SAFETY: _exit ends the child at once, without running the test harness's code.
    unsafe { libc::_exit(code) }
}

fn wait_for(child: Pid) -> Seen {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match waitpid(child, Some(WaitPidFlag::WNOHANG)).expect("waitpid") {
            WaitStatus::StillAlive => {
                if Instant::now() > deadline {
                    let _ = kill(child, Signal::SIGKILL);
                    let _ = waitpid(child, None);
                    panic!("the child hung");
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            WaitStatus::Exited(_, 0 | libc::EFAULT) => return Seen::Allowed,
            WaitStatus::Exited(_, EXIT_PRCTL) => panic!("prctl(PR_SET_NO_NEW_PRIVS) failed"),
            WaitStatus::Exited(_, EXIT_INSTALL) => panic!("installing the filters failed"),
            WaitStatus::Exited(_, errno) => return Seen::Errno(errno),
            WaitStatus::Signaled(_, Signal::SIGSYS, _) => return Seen::Sigsys,
            other => panic!("unexpected child status {other:?}"),
        }
    }
}

/// What the BPF model says the kernel will do.
fn predict(compiled: &CompiledFilters, nr: i64, args: [u64; 6]) -> Seen {
    let ret = run_all(&compiled.filters, &Call::x86_64(nr, &args));
    match ret & 0xffff_0000 {
        0x7fff_0000 | 0x7ffc_0000 => Seen::Allowed, // ALLOW, LOG
        0x0005_0000 => Seen::Errno((ret & 0xffff) as i32),
        0x7ff0_0000 => Seen::Errno(libc::ENOSYS), // TRACE without a tracer
        0x8000_0000 | 0 | 0x0003_0000 => Seen::Sigsys,
        _ => panic!("unexpected filter result {ret:#x}"),
    }
}

/// Checks that `name(args)` does `expected`, in the kernel and in the model.
fn check(compiled: &CompiledFilters, name: &str, args: [u64; 6], expected: Seen) {
    let nr = syscall_number(name).expect("known system call");
    assert_eq!(
        predict(compiled, nr, args),
        expected,
        "model: {name}{args:x?}"
    );
    assert_eq!(
        observe(compiled, nr, args),
        expected,
        "kernel: {name}{args:x?}"
    );
}

const NO_ARGS: [u64; 6] = [0; 6];
/// personality(0xffffffff) only queries the persona.
const QUERY: [u64; 6] = [0xffff_ffff, 0, 0, 0, 0, 0];

#[test]
fn errno_with_a_custom_errno_ret() {
    let c = compile_for_child(
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 42},
                         {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO"}]}"#,
    );
    check(&c, "getpid", NO_ARGS, Seen::Errno(42));
    check(&c, "mkdir", NO_ARGS, Seen::Errno(libc::EPERM));
    check(&c, "uname", NO_ARGS, Seen::Allowed);
    check(&c, "getppid", NO_ARGS, Seen::Allowed);
}

#[test]
fn the_default_action_applies_to_unlisted_calls() {
    let c = compile_for_child(
        r#"{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 13,
            "syscalls": [{"names": ["getpid", "personality"], "action": "SCMP_ACT_ALLOW"}]}"#,
    );
    check(&c, "getpid", NO_ARGS, Seen::Allowed);
    check(&c, "personality", QUERY, Seen::Allowed);
    check(&c, "uname", NO_ARGS, Seen::Errno(libc::EACCES));
    check(&c, "mkdir", NO_ARGS, Seen::Errno(libc::EACCES));
}

#[test]
fn argument_conditions() {
    let c = compile_for_child(
        r#"{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38,
            "syscalls": [
              {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
               "args": [{"index": 0, "value": 4294967295, "op": "SCMP_CMP_EQ"}]},
              {"names": ["getpid"], "action": "SCMP_ACT_ALLOW",
               "args": [{"index": 1, "value": 4294967296, "op": "SCMP_CMP_GT"},
                        {"index": 2, "value": 65280, "valueTwo": 4608,
                         "op": "SCMP_CMP_MASKED_EQ"}]}]}"#,
    );
    check(&c, "personality", QUERY, Seen::Allowed);
    // PER_LINUX32 fails the condition and gets the default action.
    check(
        &c,
        "personality",
        [8, 0, 0, 0, 0, 0],
        Seen::Errno(libc::ENOSYS),
    );
    check(
        &c,
        "getpid",
        [0, 0x1_0000_0001, 0x12ab, 0, 0, 0],
        Seen::Allowed,
    );
    check(
        &c,
        "getpid",
        [0, 0x1_0000_0000, 0x12ab, 0, 0, 0],
        Seen::Errno(libc::ENOSYS),
    );
    check(
        &c,
        "getpid",
        [0, 0x1_0000_0001, 0x13ab, 0, 0, 0],
        Seen::Errno(libc::ENOSYS),
    );
}

#[test]
fn kill_process_kills_with_sigsys() {
    let c = compile_for_child(
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["uname"], "action": "SCMP_ACT_KILL_PROCESS"}]}"#,
    );
    check(&c, "uname", NO_ARGS, Seen::Sigsys);
    check(&c, "getpid", NO_ARGS, Seen::Allowed);
    let c = compile_for_child(r#"{"defaultAction": "SCMP_ACT_KILL_PROCESS"}"#);
    check(&c, "getpid", NO_ARGS, Seen::Sigsys);
}

#[test]
fn the_kernel_keeps_the_most_restrictive_filter_result() {
    let c = compile_for_child(
        r#"{"defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [
              {"names": ["getpid"], "action": "SCMP_ACT_LOG"},
              {"names": ["getpid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 5,
               "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}]},
              {"names": ["getpid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 7,
               "args": [{"index": 1, "value": 1, "op": "SCMP_CMP_EQ"}]},
              {"names": ["getpid"], "action": "SCMP_ACT_TRACE", "errnoRet": 9,
               "args": [{"index": 2, "value": 1, "op": "SCMP_CMP_EQ"}]},
              {"names": ["getpid"], "action": "SCMP_ACT_KILL",
               "args": [{"index": 0, "value": 2, "op": "SCMP_CMP_EQ"}]}]}"#,
    );
    check(&c, "getpid", NO_ARGS, Seen::Allowed);
    check(&c, "getpid", [1, 0, 0, 0, 0, 0], Seen::Errno(5));
    // Two ERRNO rules match: the first in the profile wins.
    check(&c, "getpid", [1, 1, 0, 0, 0, 0], Seen::Errno(5));
    check(&c, "getpid", [0, 1, 0, 0, 0, 0], Seen::Errno(7));
    // TRACE with no tracer fails with ENOSYS; ERRNO is more restrictive.
    check(&c, "getpid", [0, 0, 1, 0, 0, 0], Seen::Errno(libc::ENOSYS));
    check(&c, "getpid", [0, 1, 1, 0, 0, 0], Seen::Errno(7));
    check(&c, "getpid", [2, 1, 1, 0, 0, 0], Seen::Sigsys);
    check(&c, "uname", NO_ARGS, Seen::Errno(libc::EPERM));
}

#[test]
fn trap_and_flags() {
    let c = compile_for_child(
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "flags": ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
                      "SECCOMP_FILTER_FLAG_LOG"],
            "syscalls": [{"names": ["uname"], "action": "SCMP_ACT_TRAP"}]}"#,
    );
    assert_ne!(c.filter_flags, 0);
    check(&c, "uname", NO_ARGS, Seen::Sigsys);
    check(&c, "getpid", NO_ARGS, Seen::Allowed);
}

#[test]
fn a_profile_denying_seccomp_itself_installs() {
    // The allowlist does not name seccomp: the default filter refuses it and goes last.
    let c = compile_for_child(
        r#"{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 13,
            "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_ALLOW"},
                         {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 5},
                         {"names": ["uname"], "action": "SCMP_ACT_TRACE"}]}"#,
    );
    check(&c, "getpid", NO_ARGS, Seen::Allowed);
    check(&c, "getppid", NO_ARGS, Seen::Errno(5));
    check(&c, "uname", NO_ARGS, Seen::Errno(libc::ENOSYS));
    check(&c, "seccomp", [1, 0, 0, 0, 0, 0], Seen::Errno(libc::EACCES));
    // A rule denies seccomp: its filter goes last.
    let c = compile_for_child(
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["seccomp"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
                         {"names": ["getpid"], "action": "SCMP_ACT_KILL_PROCESS"},
                         {"names": ["uname"], "action": "SCMP_ACT_ERRNO", "errnoRet": 7}]}"#,
    );
    check(&c, "seccomp", [1, 0, 0, 0, 0, 0], Seen::Errno(libc::ENOSYS));
    check(&c, "uname", NO_ARGS, Seen::Errno(7));
    check(&c, "getpid", NO_ARGS, Seen::Sigsys);
}
