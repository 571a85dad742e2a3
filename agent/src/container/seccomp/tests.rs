//! Unit tests: compile profiles and run the filters in the BPF model (`bpf_eval`), with no
//! filter installed.

use super::bpf_eval::{run_all, Call, AUDIT_ARCH_I386};
use super::syscalls_x86_64::SYSCALLS;
use super::*;

// The kernel's SECCOMP_RET_* values.
const ALLOW: u32 = 0x7fff_0000;
const LOG: u32 = 0x7ffc_0000;
const TRAP: u32 = 0x0003_0000;
const KILL_THREAD: u32 = 0;
const KILL_PROCESS: u32 = 0x8000_0000;
fn errno(e: u32) -> u32 {
    0x0005_0000 | e
}
fn trace(data: u32) -> u32 {
    0x7ff0_0000 | data
}

fn profile(json: &str) -> LinuxSeccomp {
    serde_json::from_str(json).expect("profile JSON")
}

fn compiled(json: &str) -> CompiledFilters {
    compile(&profile(json)).expect("profile compiles")
}

fn error(json: &str) -> String {
    compile(&profile(json))
        .expect_err("profile is refused")
        .to_string()
}

fn nr(name: &str) -> i64 {
    syscall_number(name).unwrap_or_else(|| panic!("{name} is in the table"))
}

/// What the stacked filters return for the x86_64 call `name(args...)`.
fn eval(c: &CompiledFilters, name: &str, args: &[u64]) -> u32 {
    run_all(&c.filters, &Call::x86_64(nr(name), args))
}

#[test]
fn rule_actions_map_to_kernel_values() {
    let cases = [
        ("SCMP_ACT_KILL", None, KILL_THREAD),
        ("SCMP_ACT_KILL_THREAD", None, KILL_THREAD),
        ("SCMP_ACT_KILL_PROCESS", None, KILL_PROCESS),
        ("SCMP_ACT_TRAP", None, TRAP),
        ("SCMP_ACT_ERRNO", None, errno(1)),
        ("SCMP_ACT_ERRNO", Some(38), errno(38)),
        ("SCMP_ACT_ERRNO", Some(0), errno(0)),
        ("SCMP_ACT_TRACE", None, trace(1)),
        ("SCMP_ACT_TRACE", Some(4242), trace(4242)),
        ("SCMP_ACT_LOG", None, LOG),
        // Other actions ignore errnoRet.
        ("SCMP_ACT_KILL_PROCESS", Some(5), KILL_PROCESS),
        ("SCMP_ACT_LOG", Some(5), LOG),
    ];
    for (action, errno_ret, expected) in cases {
        let errno_ret = errno_ret.map_or(String::new(), |e| format!(r#", "errnoRet": {e}"#));
        let c = compiled(&format!(
            r#"{{"defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{{"names": ["getpid"], "action": "{action}"{errno_ret}}}]}}"#
        ));
        assert_eq!(c.filters.len(), 2, "{action}: guard and one action filter");
        assert_eq!(eval(&c, "getpid", &[]), expected, "{action}{errno_ret}");
        assert_eq!(eval(&c, "getppid", &[]), ALLOW, "{action}: other calls");
    }
}

#[test]
fn default_actions_map_to_kernel_values() {
    let cases = [
        ("SCMP_ACT_KILL", None, KILL_THREAD),
        ("SCMP_ACT_KILL_THREAD", None, KILL_THREAD),
        ("SCMP_ACT_KILL_PROCESS", None, KILL_PROCESS),
        ("SCMP_ACT_TRAP", None, TRAP),
        ("SCMP_ACT_ERRNO", None, errno(1)),
        ("SCMP_ACT_ERRNO", Some(13), errno(13)),
        ("SCMP_ACT_TRACE", None, trace(1)),
        ("SCMP_ACT_TRACE", Some(9), trace(9)),
        ("SCMP_ACT_LOG", None, LOG),
        ("SCMP_ACT_ALLOW", None, ALLOW),
        ("SCMP_ACT_ALLOW", Some(13), ALLOW),
    ];
    for (action, errno_ret, expected) in cases {
        let errno_ret = errno_ret.map_or(String::new(), |e| format!(r#", "defaultErrnoRet": {e}"#));
        let c = compiled(&format!(r#"{{"defaultAction": "{action}"{errno_ret}}}"#));
        let filters = if expected == ALLOW { 1 } else { 2 };
        assert_eq!(c.filters.len(), filters, "{action}");
        for name in ["getpid", "uname", "exit_group"] {
            assert_eq!(eval(&c, name, &[]), expected, "{action}{errno_ret}: {name}");
        }
    }
}

#[test]
fn empty_or_absent_syscalls_with_a_default_action() {
    let c = compiled(r#"{"defaultAction": "SCMP_ACT_KILL_PROCESS", "syscalls": []}"#);
    assert_eq!(eval(&c, "read", &[]), KILL_PROCESS);
    let c = compiled(r#"{"defaultAction": "SCMP_ACT_ALLOW"}"#);
    assert_eq!(c.filters, vec![guard()], "only the guard");
    assert_eq!(eval(&c, "read", &[]), ALLOW);
}

#[test]
fn a_call_failing_an_allow_rule_condition_gets_the_default() {
    let c = compiled(
        r#"{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 13,
            "syscalls": [
              {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
               "args": [{"index": 0, "value": 4294967295, "op": "SCMP_CMP_EQ"}]},
              {"names": ["exit_group"], "action": "SCMP_ACT_ALLOW"}]}"#,
    );
    assert_eq!(
        c.filters.len(),
        2,
        "guard and default filter; ALLOW has no filter"
    );
    assert_eq!(eval(&c, "personality", &[0xffff_ffff]), ALLOW);
    assert_eq!(eval(&c, "personality", &[0]), errno(13));
    assert_eq!(eval(&c, "personality", &[0x1_ffff_ffff]), errno(13));
    assert_eq!(eval(&c, "exit_group", &[3]), ALLOW);
    assert_eq!(eval(&c, "getpid", &[]), errno(13));
}

#[test]
fn the_most_restrictive_matching_rule_wins() {
    let c = compiled(
        r#"{"defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [
              {"names": ["getpid"], "action": "SCMP_ACT_LOG"},
              {"names": ["getpid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 5,
               "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}]},
              {"names": ["getpid"], "action": "SCMP_ACT_KILL_PROCESS",
               "args": [{"index": 0, "value": 2, "op": "SCMP_CMP_EQ"}]},
              {"names": ["getpid"], "action": "SCMP_ACT_TRAP",
               "args": [{"index": 1, "value": 3, "op": "SCMP_CMP_EQ"}]},
              {"names": ["getpid"], "action": "SCMP_ACT_ALLOW",
               "args": [{"index": 2, "value": 4, "op": "SCMP_CMP_EQ"}]}]}"#,
    );
    assert_eq!(eval(&c, "getpid", &[0]), LOG);
    assert_eq!(eval(&c, "getpid", &[1]), errno(5));
    assert_eq!(eval(&c, "getpid", &[2]), KILL_PROCESS);
    assert_eq!(eval(&c, "getpid", &[1, 3]), TRAP);
    assert_eq!(eval(&c, "getpid", &[2, 3]), KILL_PROCESS);
    // ALLOW never overrides a more restrictive matching rule.
    assert_eq!(eval(&c, "getpid", &[0, 0, 4]), LOG);
    assert_eq!(eval(&c, "getppid", &[]), errno(1));
}

#[test]
fn between_equally_restrictive_actions_the_first_rule_wins() {
    let first_conditional = compiled(
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [
              {"names": ["getpid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 5,
               "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}]},
              {"names": ["getpid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 7}]}"#,
    );
    assert_eq!(eval(&first_conditional, "getpid", &[1]), errno(5));
    assert_eq!(eval(&first_conditional, "getpid", &[0]), errno(7));
    let first_unconditional = compiled(
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [
              {"names": ["getpid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 7},
              {"names": ["getpid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 5,
               "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}]}]}"#,
    );
    assert_eq!(eval(&first_unconditional, "getpid", &[1]), errno(7));
}

#[test]
fn a_rule_with_the_default_action_is_dropped_like_runc() {
    let c = compiled(
        r#"{"defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [
              {"names": ["getpid"], "action": "SCMP_ACT_ERRNO"},
              {"names": ["getpid", "uname"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
              {"names": ["getpid"], "action": "SCMP_ACT_LOG"},
              {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 2}]}"#,
    );
    // guard, default, LOG, ERRNO(2): the two ERRNO(1) rules have no filter.
    assert_eq!(c.filters.len(), 4);
    assert_eq!(eval(&c, "getpid", &[]), LOG);
    assert_eq!(eval(&c, "uname", &[]), errno(1));
    assert_eq!(eval(&c, "getppid", &[]), errno(2));
}

#[test]
fn each_comparison_operator() {
    struct Case {
        op: &'static str,
        value: u64,
        value_two: Option<u64>,
        matching: &'static [u64],
        not_matching: &'static [u64],
    }
    let cases = [
        Case {
            op: "SCMP_CMP_NE",
            value: 0x1_0000_0005,
            value_two: None,
            matching: &[5, 0x1_0000_0006, 0x2_0000_0005],
            not_matching: &[0x1_0000_0005],
        },
        Case {
            op: "SCMP_CMP_LT",
            value: 0x1_0000_0000,
            value_two: None,
            matching: &[0, 0xffff_ffff],
            not_matching: &[0x1_0000_0000, 0x1_0000_0001, 0x2_0000_0000, u64::MAX],
        },
        Case {
            op: "SCMP_CMP_LE",
            value: 0x1_0000_0005,
            value_two: None,
            matching: &[0, 0xffff_ffff, 0x1_0000_0005],
            not_matching: &[0x1_0000_0006, 0x2_0000_0000],
        },
        Case {
            op: "SCMP_CMP_EQ",
            value: 0x1_0000_0005,
            value_two: Some(99), // ignored by every operator but MASKED_EQ
            matching: &[0x1_0000_0005],
            not_matching: &[5, 99, 0x2_0000_0005, 0x1_0000_0004],
        },
        Case {
            op: "SCMP_CMP_GE",
            value: 0x1_0000_0005,
            value_two: None,
            matching: &[0x1_0000_0005, 0x1_0000_0006, 0x2_0000_0000, u64::MAX],
            not_matching: &[0, 0xffff_ffff, 0x1_0000_0004],
        },
        Case {
            op: "SCMP_CMP_GT",
            value: 0x1_0000_0005,
            value_two: None,
            matching: &[0x1_0000_0006, 0x2_0000_0000, u64::MAX],
            not_matching: &[0xffff_ffff, 0x1_0000_0005],
        },
        Case {
            op: "SCMP_CMP_MASKED_EQ",
            value: 0xff00_0000_ff00,
            value_two: Some(0x1200_0000_3400),
            matching: &[0x1200_0000_3400, 0x12ab_cdef_34ff, 0xffff_12ff_ffff_34ff],
            not_matching: &[0x1300_0000_3400, 0x1200_0000_3500, 0x3400, 0],
        },
        Case {
            op: "SCMP_CMP_MASKED_EQ",
            value: 0x3,
            value_two: None, // compares with 0
            matching: &[0, 4, 0x1_0000_0000],
            not_matching: &[1, 2, 0x1_0000_0003],
        },
    ];
    for case in cases {
        let value_two = case
            .value_two
            .map_or(String::new(), |v| format!(r#", "valueTwo": {v}"#));
        let c = compiled(&format!(
            r#"{{"defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{{"names": ["getpid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 99,
                  "args": [{{"index": 1, "value": {}, "op": "{}"{value_two}}}]}}]}}"#,
            case.value, case.op
        ));
        for &arg in case.matching {
            assert_eq!(
                eval(&c, "getpid", &[0, arg]),
                errno(99),
                "{} {arg:#x}",
                case.op
            );
            // Only argument 1 is compared.
            let other = [arg, case.not_matching[0], arg, arg, arg, arg];
            assert_eq!(eval(&c, "getpid", &other), ALLOW, "{} elsewhere", case.op);
        }
        for &arg in case.not_matching {
            assert_eq!(eval(&c, "getpid", &[0, arg]), ALLOW, "{} {arg:#x}", case.op);
        }
    }
}

#[test]
fn conditions_of_a_rule_are_anded_and_rules_are_ored() {
    let c = compiled(
        r#"{"defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [
              {"names": ["getpid"], "action": "SCMP_ACT_ALLOW",
               "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"},
                        {"index": 1, "value": 2, "op": "SCMP_CMP_EQ"}]},
              {"names": ["getpid"], "action": "SCMP_ACT_ALLOW",
               "args": [{"index": 5, "value": 3, "op": "SCMP_CMP_EQ"}]}]}"#,
    );
    assert_eq!(eval(&c, "getpid", &[1, 2]), ALLOW);
    assert_eq!(eval(&c, "getpid", &[1, 0]), errno(1));
    assert_eq!(eval(&c, "getpid", &[0, 2]), errno(1));
    assert_eq!(eval(&c, "getpid", &[0, 0, 0, 0, 0, 3]), ALLOW);
}

#[test]
fn a_repeated_argument_index_ors_its_conditions_like_runc() {
    let c = compiled(
        r#"{"defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_ALLOW",
               "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"},
                        {"index": 0, "value": 2, "op": "SCMP_CMP_EQ"},
                        {"index": 1, "value": 7, "op": "SCMP_CMP_EQ"}]}]}"#,
    );
    assert_eq!(eval(&c, "getpid", &[1]), ALLOW);
    assert_eq!(eval(&c, "getpid", &[2]), ALLOW);
    assert_eq!(eval(&c, "getpid", &[3, 7]), ALLOW);
    assert_eq!(eval(&c, "getpid", &[3]), errno(1));
}

#[test]
fn an_unconditional_rule_subsumes_conditional_ones() {
    for order in [[0, 1], [1, 0]] {
        let rules = [
            r#"{"names": ["getpid"], "action": "SCMP_ACT_ALLOW",
                "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}]}"#,
            r#"{"names": ["getpid"], "action": "SCMP_ACT_ALLOW"}"#,
        ];
        let c = compiled(&format!(
            r#"{{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{}, {}]}}"#,
            rules[order[0]], rules[order[1]]
        ));
        assert_eq!(eval(&c, "getpid", &[5]), ALLOW, "order {order:?}");
    }
}

#[test]
fn several_names_in_one_rule() {
    let c = compiled(
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["getpid", "uname", "mkdir"], "action": "SCMP_ACT_ERRNO",
                          "errnoRet": 13}]}"#,
    );
    for name in ["getpid", "uname", "mkdir"] {
        assert_eq!(eval(&c, name, &[]), errno(13), "{name}");
    }
    assert_eq!(eval(&c, "getppid", &[]), ALLOW);
}

#[test]
fn unknown_names_are_skipped_and_reported() {
    let c = compiled(
        r#"{"defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [
              {"names": ["getpid", "not_a_syscall", "socketcall"], "action": "SCMP_ACT_ALLOW"},
              {"names": ["no_such_call", "not_a_syscall"], "action": "SCMP_ACT_KILL_PROCESS"}]}"#,
    );
    assert_eq!(
        c.skipped_syscalls,
        ["not_a_syscall", "socketcall", "no_such_call"]
    );
    assert_eq!(
        c.filters.len(),
        2,
        "no filter for a rule with only unknown names"
    );
    assert_eq!(eval(&c, "getpid", &[]), ALLOW);
    assert_eq!(eval(&c, "getppid", &[]), errno(1));
}

#[test]
fn argument_index_out_of_range() {
    let rule = r#"{"names": ["getpid"], "action": "SCMP_ACT_ALLOW"}"#;
    let bad = r#"{"names": ["getpid"], "action": "SCMP_ACT_ALLOW",
                  "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}"#;
    assert_eq!(
        error(&format!(
            r#"{{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{rule}, {rule}, {bad}]}}"#
        )),
        "linux.seccomp.syscalls[2].args[0].index: 6 is out of range (0-5)"
    );
}

#[test]
fn notify_is_refused() {
    let rule = r#"{"names": ["getpid"], "action": "SCMP_ACT_ALLOW"}"#;
    let notify = r#"{"names": ["getpid"], "action": "SCMP_ACT_NOTIFY"}"#;
    let message = error(&format!(
        r#"{{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{rule}, {rule}, {rule}, {notify}]}}"#
    ));
    assert!(
        message.starts_with("linux.seccomp.syscalls[3].action: SCMP_ACT_NOTIFY is not supported"),
        "{message}"
    );
    let message = error(r#"{"defaultAction": "SCMP_ACT_NOTIFY"}"#);
    assert!(
        message.starts_with("linux.seccomp.defaultAction: SCMP_ACT_NOTIFY is not supported"),
        "{message}"
    );
}

#[test]
fn errno_ret_out_of_range() {
    assert_eq!(
        error(
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                {"names": ["getpid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 65536}]}"#
        ),
        "linux.seccomp.syscalls[0].errnoRet: 65536 is out of range (0-65535)"
    );
    assert_eq!(
        error(r#"{"defaultAction": "SCMP_ACT_TRACE", "defaultErrnoRet": 70000}"#),
        "linux.seccomp.defaultErrnoRet: 70000 is out of range (0-65535)"
    );
    let c = compiled(r#"{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 65535}"#);
    assert_eq!(eval(&c, "getpid", &[]), errno(65535));
}

#[test]
fn an_empty_name_is_refused() {
    assert_eq!(
        error(
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
                {"names": ["getpid"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["uname", ""], "action": "SCMP_ACT_ALLOW"}]}"#
        ),
        "linux.seccomp.syscalls[1].names[1]: empty system call name"
    );
}

#[test]
fn architectures() {
    for ok in [
        "[]",
        r#"["SCMP_ARCH_X86_64"]"#,
        r#"["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]"#,
        r#"["SCMP_ARCH_AARCH64", "SCMP_ARCH_X86_64"]"#,
        r#"["SCMP_ARCH_NATIVE"]"#,
    ] {
        compiled(&format!(
            r#"{{"defaultAction": "SCMP_ACT_ERRNO", "architectures": {ok}}}"#
        ));
    }
    assert_eq!(
        error(
            r#"{"defaultAction": "SCMP_ACT_ERRNO",
                "architectures": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_X86"]}"#
        ),
        "linux.seccomp.architectures: [SCMP_ARCH_AARCH64, SCMP_ARCH_X86] does not include \
         SCMP_ARCH_X86_64 (moat guests are x86_64)"
    );
}

#[test]
fn other_abis_are_killed() {
    let denylist = compiled(
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_ERRNO"}]}"#,
    );
    let getpid = nr("getpid");
    let x32 = Call::x86_64(getpid | 0x4000_0000, &[]);
    assert_eq!(run_all(&denylist.filters, &x32), KILL_PROCESS, "x32");
    let x32_read = Call::x86_64(0x4000_0000, &[]);
    assert_eq!(run_all(&denylist.filters, &x32_read), KILL_PROCESS, "x32");
    let i386 = Call {
        arch: AUDIT_ARCH_I386,
        ..Call::x86_64(20, &[])
    };
    assert_eq!(run_all(&denylist.filters, &i386), KILL_PROCESS, "i386");
    assert_eq!(
        run_all(&[guard()], &i386),
        KILL_PROCESS,
        "i386, guard alone"
    );
    // -1 (a tracer skipping a call) passes the guard and gets the default action.
    assert_eq!(run_all(&denylist.filters, &Call::x86_64(-1, &[])), ALLOW);
    let allowlist = compiled(r#"{"defaultAction": "SCMP_ACT_ERRNO"}"#);
    assert_eq!(
        run_all(&allowlist.filters, &Call::x86_64(-1, &[])),
        errno(1)
    );
    assert_eq!(eval(&denylist, "getpid", &[]), errno(1));
}

#[test]
fn filter_flags() {
    let c = compiled(
        r#"{"defaultAction": "SCMP_ACT_ERRNO",
            "flags": ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG",
                      "SECCOMP_FILTER_FLAG_SPEC_ALLOW", "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"]}"#,
    );
    assert_eq!(
        c.filter_flags,
        FILTER_FLAG_TSYNC | FILTER_FLAG_LOG | FILTER_FLAG_SPEC_ALLOW
    );
    assert_eq!(
        c.ignored_flags,
        [LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv]
    );
    assert_eq!(
        compiled(r#"{"defaultAction": "SCMP_ACT_ERRNO"}"#).filter_flags,
        0
    );
}

#[test]
fn the_syscall_table_is_sorted_and_agrees_with_libc() {
    assert!(
        SYSCALLS.windows(2).all(|w| w[0].0 < w[1].0),
        "sorted, no duplicates"
    );
    for (name, number) in [
        ("read", libc::SYS_read),
        ("getpid", libc::SYS_getpid),
        ("uname", libc::SYS_uname),
        ("mkdir", libc::SYS_mkdir),
        ("personality", libc::SYS_personality),
        ("exit_group", libc::SYS_exit_group),
        ("clone3", libc::SYS_clone3),
        ("seccomp", libc::SYS_seccomp),
    ] {
        assert_eq!(syscall_number(name), Some(number), "{name}");
    }
    assert_eq!(syscall_number("seccomp"), Some(SYS_SECCOMP_X86_64));
    // The guest kernel (6.12) has calls the host's libc headers may lack.
    assert_eq!(syscall_number("fchmodat2"), Some(452));
    assert_eq!(syscall_number("mseal"), Some(462));
    for unknown in ["", "socketcall", "_llseek", "GETPID", "getpid "] {
        assert_eq!(syscall_number(unknown), None, "{unknown:?}");
    }
}

#[test]
fn an_allowlist_of_every_system_call_fits() {
    let names: Vec<String> = SYSCALLS.iter().map(|(n, _)| format!("\"{n}\"")).collect();
    let c = compiled(&format!(
        r#"{{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1, "syscalls": [
             {{"names": [{}], "action": "SCMP_ACT_ALLOW"}},
             {{"names": ["personality"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13,
               "args": [{{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}}]}},
             {{"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}}]}}"#,
        names.join(", ")
    ));
    assert!(c.filters.iter().all(|f| f.len() < 4096));
    assert_eq!(eval(&c, "read", &[]), ALLOW);
    assert_eq!(eval(&c, "personality", &[8]), errno(13));
    assert_eq!(eval(&c, "personality", &[0]), ALLOW);
    assert_eq!(eval(&c, "clone3", &[]), errno(38));
    assert_eq!(run_all(&c.filters, &Call::x86_64(1000, &[])), errno(1));
}

#[test]
fn a_filter_too_long_for_the_kernel_is_refused() {
    let rules: Vec<String> = (0..700)
        .map(|v| {
            format!(
                r#"{{"names": ["getpid"], "action": "SCMP_ACT_ALLOW",
                    "args": [{{"index": 0, "value": {v}, "op": "SCMP_CMP_EQ"}}]}}"#
            )
        })
        .collect();
    let err = compile(&profile(&format!(
        r#"{{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{}]}}"#,
        rules.join(", ")
    )))
    .expect_err("too long");
    assert!(
        matches!(
            err,
            SeccompError::Build {
                source: BackendError::FilterTooLarge(_),
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "linux.seccomp: the filter for the default action cannot be built"
    );
}

#[test]
fn too_many_instructions_in_all_are_refused() {
    let names: Vec<String> = SYSCALLS
        .iter()
        .filter(|(n, _)| *n != "seccomp")
        .map(|(n, _)| format!("\"{n}\""))
        .collect();
    let names = names.join(", ");
    // 18 filters of every system call: about 18 x 1900 instructions.
    let rules: Vec<String> = (1..=18)
        .map(|e| format!(r#"{{"names": [{names}], "action": "SCMP_ACT_ERRNO", "errnoRet": {e}}}"#))
        .collect();
    let err = compile(&profile(&format!(
        r#"{{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{}]}}"#,
        rules.join(", ")
    )))
    .expect_err("too many");
    assert!(
        matches!(
            err,
            SeccompError::TooLarge {
                max: MAX_INSNS_PER_PATH,
                ..
            }
        ),
        "{err:?}"
    );
}

/// For each filter, whether it refuses the seccomp(2) call that installs the next filter.
fn refusing_install(c: &CompiledFilters) -> Vec<bool> {
    let call = Call::x86_64(
        SYS_SECCOMP_X86_64,
        &[SET_MODE_FILTER, u64::from(c.filter_flags)],
    );
    c.filters
        .iter()
        .map(|f| bpf_eval::refuses(f, &call))
        .collect()
}

#[test]
fn the_filter_refusing_seccomp_goes_last() {
    // An allowlist without seccomp: the default filter refuses it.
    let allowlist = compiled(
        r#"{"defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_ALLOW"},
                         {"names": ["uname"], "action": "SCMP_ACT_ERRNO", "errnoRet": 5},
                         {"names": ["getppid"], "action": "SCMP_ACT_KILL_PROCESS"}]}"#,
    );
    assert_eq!(refusing_install(&allowlist), [false, false, false, true]);
    assert_eq!(eval(&allowlist, "seccomp", &[1]), errno(1));
    assert_eq!(eval(&allowlist, "uname", &[]), errno(5));
    assert_eq!(eval(&allowlist, "getppid", &[]), KILL_PROCESS);
    // The same profile allowing seccomp only in filter mode refuses nothing we need.
    let allowed = compiled(
        r#"{"defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": ["seccomp"], "action": "SCMP_ACT_ALLOW",
                          "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}]},
                         {"names": ["uname"], "action": "SCMP_ACT_ERRNO", "errnoRet": 5}]}"#,
    );
    assert_eq!(refusing_install(&allowed), [false, false, false]);
    // A denylist rule for seccomp: its filter goes last, whatever its place in the profile.
    let denylist = compiled(
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["uname"], "action": "SCMP_ACT_ERRNO", "errnoRet": 5},
                         {"names": ["seccomp", "getpid"], "action": "SCMP_ACT_ERRNO"},
                         {"names": ["getppid"], "action": "SCMP_ACT_TRAP"},
                         {"names": ["seccomp"], "action": "SCMP_ACT_LOG"}]}"#,
    );
    assert_eq!(
        refusing_install(&denylist),
        [false, false, false, false, true]
    );
    assert_eq!(eval(&denylist, "seccomp", &[1]), errno(1));
    assert_eq!(eval(&denylist, "getpid", &[]), errno(1));
    assert_eq!(eval(&denylist, "uname", &[]), errno(5));
    assert_eq!(eval(&denylist, "getppid", &[]), TRAP);
}

#[test]
fn two_filters_refusing_seccomp_are_an_error() {
    assert_eq!(
        error(
            r#"{"defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["seccomp"], "action": "SCMP_ACT_ERRNO"},
                             {"names": ["seccomp"], "action": "SCMP_ACT_KILL_PROCESS",
                              "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}]}]}"#
        ),
        "linux.seccomp.syscalls: the rules with action SCMP_ACT_KILL_PROCESS and the rules with \
         action SCMP_ACT_ERRNO (errnoRet 1) both refuse seccomp(SECCOMP_SET_MODE_FILTER), the \
         call that installs the filters; give it one action"
    );
    // Denying only other seccomp operations is fine.
    compiled(
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["seccomp"], "action": "SCMP_ACT_ERRNO"},
                         {"names": ["seccomp"], "action": "SCMP_ACT_KILL_PROCESS",
                          "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}]}]}"#,
    );
}
