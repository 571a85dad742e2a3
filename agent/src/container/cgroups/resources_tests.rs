//! Tests of `resources.rs` against the fake cgroupfs: every conversion, and every error
//! with the exact field it names.

use std::collections::BTreeMap;
use std::path::Path;

use oci_spec::runtime::LinuxResources;
use serde_json::json;

use super::fake::FakeCgroupFs;
use super::*;

const C1: &str = "moat/c1";

fn resources(v: serde_json::Value) -> LinuxResources {
    serde_json::from_value(v).unwrap()
}

/// A fake with one populated cgroup.
fn setup() -> (FakeCgroupFs, Cgroup) {
    let fs = FakeCgroupFs::new();
    let cg = fs.cgroup(C1);
    (fs, cg)
}

/// Every file of a directory and its content.
fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let content = std::fs::read_to_string(e.path()).unwrap();
            (e.file_name().into_string().unwrap(), content)
        })
        .collect()
}

/// Applies `v` and returns the error message.
fn apply_err(cg: &Cgroup, v: serde_json::Value) -> String {
    cg.apply(&resources(v)).unwrap_err().to_string()
}

#[test]
fn cpu_shares_conversion_matches_runc() {
    assert_eq!(cpu_shares_to_weight(2), 1);
    assert_eq!(cpu_shares_to_weight(1024), 39);
    assert_eq!(cpu_shares_to_weight(512), 20);
    assert_eq!(cpu_shares_to_weight(262_144), 10_000);
    // Clamped to the v1 range.
    assert_eq!(cpu_shares_to_weight(1), 1);
    assert_eq!(cpu_shares_to_weight(u64::MAX), 10_000);
}

#[test]
fn blkio_weight_conversion_matches_runc() {
    assert_eq!(blkio_weight_to_io_weight(10), 1);
    assert_eq!(blkio_weight_to_io_weight(100), 910);
    assert_eq!(blkio_weight_to_io_weight(500), 4950);
    assert_eq!(blkio_weight_to_io_weight(1000), 10_000);
    assert_eq!(blkio_weight_to_io_weight(0), 1);
    assert_eq!(blkio_weight_to_io_weight(u16::MAX), 10_000);
}

#[test]
fn swap_conversion_matches_runc() {
    assert_eq!(memory_swap_to_v2(0, 0), Ok(0));
    assert_eq!(memory_swap_to_v2(0, 100), Ok(0));
    assert_eq!(memory_swap_to_v2(0, -1), Ok(-1));
    assert_eq!(memory_swap_to_v2(-1, 100), Ok(-1));
    assert_eq!(memory_swap_to_v2(-1, 0), Ok(-1));
    assert_eq!(memory_swap_to_v2(300, 100), Ok(200));
    assert_eq!(memory_swap_to_v2(100, 100), Ok(0));
    assert!(memory_swap_to_v2(50, 100).unwrap_err().contains("below"));
    assert!(memory_swap_to_v2(200, 0).unwrap_err().contains("needs"));
    assert!(memory_swap_to_v2(200, -1).unwrap_err().contains("needs"));
    assert!(memory_swap_to_v2(200, -5).unwrap_err().contains("invalid"));
}

#[test]
fn absent_fields_leave_every_file_untouched() {
    let (fs, cg) = setup();
    let before = snapshot(cg.path());
    cg.apply(&LinuxResources::default()).unwrap();
    cg.apply(&resources(json!({
        "cpu": {}, "memory": {}, "blockIO": {}, "hugepageLimits": [], "unified": {},
        "devices": [{"allow": false, "access": "rwm"}]
    })))
    .unwrap();
    // Zeros and empty strings mean "unset", as in runc.
    cg.apply(&resources(json!({
        "cpu": {"shares": 0, "quota": 0, "period": 0, "cpus": "", "mems": ""},
        "memory": {"limit": 0, "reservation": 0, "swap": 0},
        "blockIO": {"weight": 0}
    })))
    .unwrap();
    assert_eq!(snapshot(cg.path()), before);
    drop(fs);
}

#[test]
fn cpu_fields() {
    let (fs, cg) = setup();
    cg.apply(&resources(json!({"cpu": {
        "shares": 1024, "quota": 50000, "period": 100000, "burst": 1000, "idle": 0,
        "cpus": "0-1", "mems": "0"
    }})))
    .unwrap();
    assert_eq!(fs.read(C1, "cpu.weight"), "39");
    assert_eq!(fs.read(C1, "cpu.max"), "50000 100000");
    assert_eq!(fs.read(C1, "cpu.max.burst"), "1000");
    assert_eq!(fs.read(C1, "cpu.idle"), "0");
    assert_eq!(fs.read(C1, "cpuset.cpus"), "0-1");
    assert_eq!(fs.read(C1, "cpuset.mems"), "0");

    cg.apply(&resources(json!({"cpu": {"idle": 1}}))).unwrap();
    assert_eq!(fs.read(C1, "cpu.idle"), "1");
}

#[test]
fn cpu_max_forms() {
    let (fs, cg) = setup();
    // Unlimited quota.
    cg.apply(&resources(json!({"cpu": {"quota": -1, "period": 100000}})))
        .unwrap();
    assert_eq!(fs.read(C1, "cpu.max"), "max 100000");
    // Quota alone: the kernel keeps the period.
    cg.apply(&resources(json!({"cpu": {"quota": 30000}})))
        .unwrap();
    assert_eq!(fs.read(C1, "cpu.max"), "30000");
    // Period alone keeps the current quota.
    fs.write(C1, "cpu.max", "20000 100000\n");
    cg.apply(&resources(json!({"cpu": {"period": 50000}})))
        .unwrap();
    assert_eq!(fs.read(C1, "cpu.max"), "20000 50000");
    fs.write(C1, "cpu.max", "max 100000\n");
    cg.apply(&resources(json!({"cpu": {"period": 250000}})))
        .unwrap();
    assert_eq!(fs.read(C1, "cpu.max"), "max 250000");
}

#[test]
fn cpu_errors_name_the_field() {
    let (fs, cg) = setup();
    fs.remove(C1, "cpu.max");
    let err = apply_err(&cg, json!({"cpu": {"period": 50000}}));
    assert!(
        err.starts_with("linux.resources.cpu.period: cpu.max does not exist"),
        "{err}"
    );
    let err = apply_err(&cg, json!({"cpu": {"quota": 50000}}));
    assert!(
        err.starts_with("linux.resources.cpu.quota: cpu.max does not exist"),
        "{err}"
    );
    let err = apply_err(&cg, json!({"cpu": {"quota": 50000, "period": 100000}}));
    assert!(
        err.starts_with("linux.resources.cpu.quota/period: cpu.max does not exist"),
        "{err}"
    );
    for (file, spec, field) in [
        ("cpu.weight", json!({"shares": 2}), "shares"),
        ("cpu.idle", json!({"idle": 1}), "idle"),
        ("cpu.max.burst", json!({"burst": 1}), "burst"),
        ("cpuset.cpus", json!({"cpus": "0"}), "cpus"),
        ("cpuset.mems", json!({"mems": "0"}), "mems"),
    ] {
        fs.remove(C1, file);
        let err = apply_err(&cg, json!({ "cpu": spec }));
        assert_eq!(
            err,
            format!(
                "linux.resources.cpu.{field}: {file} does not exist in this cgroup \
                 (controller not enabled or not supported by the guest kernel)"
            )
        );
    }
}

#[test]
fn a_refused_write_names_field_value_and_file() {
    let (fs, cg) = setup();
    // A directory where the file should be: the write fails as the kernel's would.
    fs.remove(C1, "memory.max");
    fs.mkdir(&format!("{C1}/memory.max"));
    let err = apply_err(&cg, json!({"memory": {"limit": 1}}));
    assert_eq!(
        err,
        "linux.resources.memory.limit: writing 1 to memory.max: Is a directory"
    );
}

#[test]
fn memory_fields() {
    let (fs, cg) = setup();
    cg.apply(&resources(json!({"memory": {
        "limit": 268435456, "reservation": 134217728, "swap": 536870912,
        "kernel": 1, "kernelTCP": 1, "swappiness": 10, "disableOOMKiller": true
    }})))
    .unwrap();
    assert_eq!(fs.read(C1, "memory.max"), "268435456");
    assert_eq!(fs.read(C1, "memory.low"), "134217728");
    assert_eq!(fs.read(C1, "memory.swap.max"), "268435456");

    // swap == limit: no swap.
    cg.apply(&resources(json!({"memory": {"limit": 1000, "swap": 1000}})))
        .unwrap();
    assert_eq!(fs.read(C1, "memory.max"), "1000");
    assert_eq!(fs.read(C1, "memory.swap.max"), "0");

    // Unlimited memory with no swap setting: both unlimited.
    cg.apply(&resources(json!({"memory": {"limit": -1}})))
        .unwrap();
    assert_eq!(fs.read(C1, "memory.max"), "max");
    assert_eq!(fs.read(C1, "memory.swap.max"), "max");

    cg.apply(&resources(
        json!({"memory": {"limit": 4096, "swap": -1, "reservation": -1}}),
    ))
    .unwrap();
    assert_eq!(fs.read(C1, "memory.max"), "4096");
    assert_eq!(fs.read(C1, "memory.swap.max"), "max");
    assert_eq!(fs.read(C1, "memory.low"), "max");

    // A limit alone leaves swap alone.
    fs.write(C1, "memory.swap.max", "77\n");
    cg.apply(&resources(json!({"memory": {"limit": 8192}})))
        .unwrap();
    assert_eq!(fs.read(C1, "memory.swap.max"), "77\n");
}

#[test]
fn memory_errors_name_the_field_and_write_nothing() {
    let (_fs, cg) = setup();
    let before = snapshot(cg.path());
    let err = apply_err(&cg, json!({"memory": {"limit": 100, "swap": 50}}));
    assert_eq!(
        err,
        "linux.resources.memory.swap: memory+swap limit 50 is below the memory limit 100; \
         it must be >= it"
    );
    let err = apply_err(&cg, json!({"memory": {"swap": 50}}));
    assert_eq!(
        err,
        "linux.resources.memory.swap: a swap limit (50) needs a memory limit \
         (linux.resources.memory.limit)"
    );
    let err = apply_err(&cg, json!({"memory": {"limit": -5}}));
    assert_eq!(
        err,
        "linux.resources.memory.limit: -5 is neither a number of bytes nor -1 (unlimited)"
    );
    let err = apply_err(&cg, json!({"memory": {"limit": 100, "reservation": -2}}));
    assert_eq!(
        err,
        "linux.resources.memory.reservation: -2 is neither a number of bytes nor -1 \
         (unlimited)"
    );
    assert_eq!(snapshot(cg.path()), before);
}

#[test]
fn memory_check_before_update() {
    let (fs, cg) = setup();
    fs.write(C1, "memory.current", "5000\n");
    let err = apply_err(
        &cg,
        json!({"memory": {"limit": 5000, "checkBeforeUpdate": true}}),
    );
    assert_eq!(
        err,
        "linux.resources.memory.limit: 5000 is not above the current usage 5000 \
         (checkBeforeUpdate)"
    );
    assert_eq!(fs.read(C1, "memory.max"), "max\n");
    cg.apply(&resources(
        json!({"memory": {"limit": 5001, "checkBeforeUpdate": true}}),
    ))
    .unwrap();
    assert_eq!(fs.read(C1, "memory.max"), "5001");
    // Without the flag the kernel decides (it reclaims).
    cg.apply(&resources(json!({"memory": {"limit": 10}})))
        .unwrap();
    assert_eq!(fs.read(C1, "memory.max"), "10");
}

#[test]
fn swap_without_swap_accounting() {
    let (fs, cg) = setup();
    fs.remove(C1, "memory.swap.max");
    // Lifting or disabling swap that does not exist is fine.
    cg.apply(&resources(json!({"memory": {"limit": -1}})))
        .unwrap();
    cg.apply(&resources(json!({"memory": {"limit": 100, "swap": 100}})))
        .unwrap();
    assert_eq!(fs.read(C1, "memory.max"), "100");
    // A real swap limit is not.
    let err = apply_err(&cg, json!({"memory": {"limit": 100, "swap": 200}}));
    assert!(
        err.starts_with("linux.resources.memory.swap: memory.swap.max does not exist"),
        "{err}"
    );
}

#[test]
fn pids_limit() {
    let (fs, cg) = setup();
    cg.apply(&resources(json!({"pids": {"limit": 100}})))
        .unwrap();
    assert_eq!(fs.read(C1, "pids.max"), "100");
    for unlimited in [0, -1] {
        fs.write(C1, "pids.max", "5\n");
        cg.apply(&resources(json!({"pids": {"limit": unlimited}})))
            .unwrap();
        assert_eq!(fs.read(C1, "pids.max"), "max");
    }
    fs.remove(C1, "pids.max");
    let err = apply_err(&cg, json!({"pids": {"limit": 1}}));
    assert!(
        err.starts_with("linux.resources.pids.limit: pids.max does not exist"),
        "{err}"
    );
}

#[test]
fn block_io_weights_on_io_weight() {
    let (fs, cg) = setup();
    cg.apply(&resources(json!({"blockIO": {
        "weight": 500,
        "leafWeight": 300,
        "weightDevice": [
            {"major": 8, "minor": 0, "weight": 100},
            {"major": 8, "minor": 16, "leafWeight": 20}
        ]
    }})))
    .unwrap();
    assert_eq!(fs.read(C1, "io.weight"), "4950\n8:0 910\n");
}

#[test]
fn block_io_weights_fall_back_to_bfq() {
    let (fs, cg) = setup();
    fs.remove(C1, "io.weight");
    fs.write(C1, "io.bfq.weight", "default 100\n");
    cg.apply(&resources(json!({"blockIO": {
        "weight": 500, "weightDevice": [{"major": 254, "minor": 0, "weight": 1000}]
    }})))
    .unwrap();
    assert_eq!(fs.read(C1, "io.bfq.weight"), "500\n254:0 1000\n");
}

#[test]
fn block_io_weight_errors() {
    let (fs, cg) = setup();
    let err = apply_err(&cg, json!({"blockIO": {"weight": 5}}));
    assert_eq!(
        err,
        "linux.resources.blockIO.weight: 5 is outside the blkio weight range 10-1000"
    );
    let err = apply_err(
        &cg,
        json!({"blockIO": {"weightDevice": [{"major": 8, "minor": 0, "weight": 2000}]}}),
    );
    assert_eq!(
        err,
        "linux.resources.blockIO.weightDevice[0].weight: 2000 is outside the blkio weight \
         range 10-1000"
    );
    let err = apply_err(
        &cg,
        json!({"blockIO": {"weightDevice": [{"major": -8, "minor": 0, "weight": 20}]}}),
    );
    assert_eq!(
        err,
        "linux.resources.blockIO.weightDevice[0]: device -8:0 has a negative number"
    );
    fs.remove(C1, "io.weight");
    let err = apply_err(&cg, json!({"blockIO": {"weight": 500}}));
    assert_eq!(
        err,
        "linux.resources.blockIO.weight: io.weight or io.bfq.weight does not exist in this \
         cgroup (controller not enabled or not supported by the guest kernel)"
    );
}

#[test]
fn block_io_throttles_one_line_per_device() {
    let (fs, cg) = setup();
    cg.apply(&resources(json!({"blockIO": {
        "throttleReadBpsDevice": [
            {"major": 8, "minor": 0, "rate": 1048576},
            {"major": 254, "minor": 0, "rate": 0}
        ],
        "throttleWriteBpsDevice": [{"major": 8, "minor": 0, "rate": 2097152}],
        "throttleReadIOPSDevice": [{"major": 8, "minor": 0, "rate": 100}],
        "throttleWriteIOPSDevice": [{"major": 254, "minor": 0, "rate": 50}]
    }})))
    .unwrap();
    assert_eq!(
        fs.read(C1, "io.max"),
        "8:0 rbps=1048576 wbps=2097152 riops=100\n254:0 rbps=max wiops=50\n"
    );
}

#[test]
fn block_io_throttle_errors() {
    let (fs, cg) = setup();
    let err = apply_err(
        &cg,
        json!({"blockIO": {"throttleWriteIOPSDevice": [
            {"major": 8, "minor": 0, "rate": 5}, {"major": 8, "minor": -1, "rate": 5}
        ]}}),
    );
    assert_eq!(
        err,
        "linux.resources.blockIO.throttleWriteIOPSDevice[1]: device 8:-1 has a negative number"
    );
    fs.remove(C1, "io.max");
    let err = apply_err(
        &cg,
        json!({"blockIO": {
            "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 5}],
            "throttleWriteBpsDevice": [{"major": 8, "minor": 0, "rate": 5}]
        }}),
    );
    assert!(
        err.starts_with(
            "linux.resources.blockIO.throttleReadBpsDevice[0], \
             linux.resources.blockIO.throttleWriteBpsDevice[0]: io.max does not exist"
        ),
        "{err}"
    );
}

#[test]
fn hugepage_limits() {
    let (fs, cg) = setup();
    cg.apply(&resources(json!({"hugepageLimits": [
        {"pageSize": "2MB", "limit": 4194304},
        {"pageSize": "1GB", "limit": -1}
    ]})))
    .unwrap();
    assert_eq!(fs.read(C1, "hugetlb.2MB.max"), "4194304");
    assert_eq!(fs.read(C1, "hugetlb.2MB.rsvd.max"), "4194304");
    assert_eq!(fs.read(C1, "hugetlb.1GB.max"), "max");
}

#[test]
fn hugepage_limit_errors() {
    let (_fs, cg) = setup();
    let err = apply_err(
        &cg,
        json!({"hugepageLimits": [
            {"pageSize": "2MB", "limit": 1}, {"pageSize": "64KB", "limit": 1}
        ]}),
    );
    assert_eq!(
        err,
        "linux.resources.hugepageLimits[1].pageSize: hugetlb.64KB.max does not exist in this \
         cgroup (controller not enabled or not supported by the guest kernel)"
    );
    for bad in ["../2MB", "2mb", "MB", "2", "2 MB", "2MB/", "2TB", ""] {
        let err = apply_err(
            &cg,
            json!({"hugepageLimits": [{"pageSize": bad, "limit": 1}]}),
        );
        assert_eq!(
            err,
            format!(
                "linux.resources.hugepageLimits[0].pageSize: {bad:?} is not a page size such \
                 as 2MB or 1GB"
            )
        );
    }
    let err = apply_err(
        &cg,
        json!({"hugepageLimits": [{"pageSize": "2MB", "limit": -3}]}),
    );
    assert_eq!(
        err,
        "linux.resources.hugepageLimits[0].limit: -3 is neither a number of bytes nor -1 \
         (unlimited)"
    );
}

#[test]
fn rdma_limits() {
    let (fs, cg) = setup();
    fs.write(C1, "rdma.max", "");
    cg.apply(&resources(json!({"rdma": {
        "mlx5_1": {"hcaHandles": 3},
        "mlx5_0": {"hcaHandles": 2, "hcaObjects": 2000},
        "unused": {}
    }})))
    .unwrap();
    assert_eq!(
        fs.read(C1, "rdma.max"),
        "mlx5_0 hca_handle=2 hca_object=2000\nmlx5_1 hca_handle=3\n"
    );
    let err = apply_err(&cg, json!({"rdma": {"a b": {"hcaHandles": 1}}}));
    assert_eq!(
        err,
        "linux.resources.rdma[\"a b\"]: not an RDMA device name"
    );
    fs.remove(C1, "rdma.max");
    let err = apply_err(&cg, json!({"rdma": {"mlx5_0": {"hcaHandles": 1}}}));
    assert!(
        err.starts_with("linux.resources.rdma[\"mlx5_0\"]: rdma.max does not exist"),
        "{err}"
    );
}

#[test]
fn unified_writes_existing_files_last() {
    let (fs, cg) = setup();
    cg.apply(&resources(json!({
        "memory": {"limit": 1000},
        "unified": {"memory.high": "800", "memory.max": "2000", "cgroup.max.depth": "3"}
    })))
    .unwrap();
    assert_eq!(fs.read(C1, "memory.high"), "800");
    // unified overrides the typed field.
    assert_eq!(fs.read(C1, "memory.max"), "2000");
    assert_eq!(fs.read(C1, "cgroup.max.depth"), "3");
}

#[test]
fn unified_errors_name_the_key() {
    let (_fs, cg) = setup();
    for key in ["../memory.max", "a/b", "", ".", ".."] {
        let err = apply_err(&cg, json!({"unified": {key: "1"}}));
        assert_eq!(
            err,
            format!("linux.resources.unified[{key:?}]: not the name of a file of the cgroup")
        );
    }
    for key in [
        "cgroup.procs",
        "cgroup.kill",
        "cgroup.freeze",
        "cgroup.subtree_control",
    ] {
        let err = apply_err(&cg, json!({"unified": {key: "1"}}));
        assert_eq!(
            err,
            format!("linux.resources.unified[{key:?}]: is the runtime's to manage, not a resource")
        );
    }
    let err = apply_err(&cg, json!({"unified": {"memory.nope": "1"}}));
    assert_eq!(
        err,
        "linux.resources.unified[\"memory.nope\"]: memory.nope does not exist in this cgroup \
         (controller not enabled or not supported by the guest kernel)"
    );
}

#[test]
fn devices_are_accepted_and_not_written() {
    let (_fs, cg) = setup();
    let before = snapshot(cg.path());
    cg.apply(&resources(json!({"devices": [
        {"allow": false, "access": "rwm"},
        {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"}
    ]})))
    .unwrap();
    assert_eq!(snapshot(cg.path()), before);
}

#[test]
fn a_full_runtime_spec_applies() {
    // What containerd's CRI plugin sends for a container with limits.
    let (fs, cg) = setup();
    cg.apply(&resources(json!({
        "devices": [{"allow": false, "access": "rwm"}],
        "memory": {"limit": 134217728, "swap": 134217728},
        "cpu": {"shares": 512, "quota": 50000, "period": 100000},
        "pids": {"limit": 1024},
        "hugepageLimits": [{"pageSize": "2MB", "limit": 0}],
        "unified": {"memory.oom.group": "1"}
    })))
    .unwrap();
    assert_eq!(fs.read(C1, "memory.max"), "134217728");
    assert_eq!(fs.read(C1, "memory.swap.max"), "0");
    assert_eq!(fs.read(C1, "cpu.weight"), "20");
    assert_eq!(fs.read(C1, "cpu.max"), "50000 100000");
    assert_eq!(fs.read(C1, "pids.max"), "1024");
    assert_eq!(fs.read(C1, "hugetlb.2MB.max"), "0");
    assert_eq!(fs.read(C1, "memory.oom.group"), "1");
}
