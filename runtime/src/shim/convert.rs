//! containerd's types to moat's and back: an exec's process and an update's resources (JSON
//! in an `Any`), and the guest's cgroup statistics as containerd's cgroups v2 `Metrics`.

use containerd_shim::protos::cgroups_v2::metrics::{
    CPUStat, IOEntry, IOStat, MemoryEvents, MemoryStat, Metrics, PidsStat,
};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{Message, MessageField};
use moat_protocol::{ContainerStats, LinuxResources, Process};

/// The type URL containerd registers for cgroups v2 metrics (`ctr task metrics` decodes it).
pub const METRICS_V2_TYPE: &str = "io.containerd.cgroups.v2.Metrics";

/// An `Any` containerd sent that moat cannot read.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {why}")]
pub struct ConvertError {
    what: &'static str,
    why: String,
}

fn json_any<T: serde::de::DeserializeOwned>(
    what: &'static str,
    any: Option<&Any>,
) -> Result<T, ConvertError> {
    let any = any.ok_or_else(|| ConvertError {
        what,
        why: "missing".into(),
    })?;
    serde_json::from_slice(&any.value).map_err(|e| ConvertError {
        what,
        why: format!("not a JSON {} ({}): {e}", what, any.type_url),
    })
}

/// The OCI process of an exec (`ExecProcessRequest.spec`, JSON of runtime-spec `Process`).
pub fn exec_process(any: Option<&Any>) -> Result<Process, ConvertError> {
    json_any("exec spec (process)", any)
}

/// The resources of an update (`UpdateTaskRequest.resources`, JSON of `LinuxResources`).
pub fn resources(any: Option<&Any>) -> Result<LinuxResources, ConvertError> {
    json_any("update resources (LinuxResources)", any)
}

/// The guest's cgroup v2 statistics as containerd's v2 `Metrics`.
pub fn metrics(s: &ContainerStats) -> Metrics {
    let mut m = Metrics::new();
    m.pids = MessageField::some(PidsStat {
        current: s.pids.current,
        limit: s.pids.limit.unwrap_or(0),
        ..Default::default()
    });
    m.cpu = MessageField::some(CPUStat {
        usage_usec: s.cpu.usage_usec,
        user_usec: s.cpu.user_usec,
        system_usec: s.cpu.system_usec,
        nr_periods: s.cpu.nr_periods,
        nr_throttled: s.cpu.nr_throttled,
        throttled_usec: s.cpu.throttled_usec,
        ..Default::default()
    });
    m.memory = MessageField::some(MemoryStat {
        usage: s.memory.usage,
        usage_limit: s.memory.limit.unwrap_or(u64::MAX),
        swap_usage: s.memory.swap_usage,
        anon: s.memory.anon,
        file: s.memory.file,
        ..Default::default()
    });
    m.memory_events = MessageField::some(MemoryEvents {
        oom_kill: s.memory.oom_kills,
        ..Default::default()
    });
    m.io = MessageField::some(IOStat {
        usage: s
            .io
            .iter()
            .map(|d| IOEntry {
                major: d.major.into(),
                minor: d.minor.into(),
                rbytes: d.rbytes,
                wbytes: d.wbytes,
                rios: d.rios,
                wios: d.wios,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    });
    m
}

/// [`metrics`] packed as containerd expects in `StatsResponse.stats`.
pub fn metrics_any(s: &ContainerStats) -> Any {
    let mut any = Any::new();
    any.type_url = METRICS_V2_TYPE.into();
    any.value = metrics(s).write_to_bytes().unwrap_or_default();
    any
}

/// Now, as a protobuf timestamp.
pub fn now() -> Timestamp {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut t = Timestamp::new();
    t.seconds = d.as_secs() as i64;
    t.nanos = d.subsec_nanos() as i32;
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_round_trip_as_v2() {
        let mut s = ContainerStats::default();
        s.pids.current = 3;
        s.memory.usage = 4096;
        s.memory.oom_kills = 1;
        s.cpu.usage_usec = 77;
        s.io.push(moat_protocol::IoDeviceStats {
            major: 254,
            rbytes: 9,
            ..Default::default()
        });
        let any = metrics_any(&s);
        assert_eq!(any.type_url, "io.containerd.cgroups.v2.Metrics");
        let back = Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(back.pids.current, 3);
        assert_eq!(back.memory.usage, 4096);
        assert_eq!(back.memory.usage_limit, u64::MAX);
        assert_eq!(back.memory_events.oom_kill, 1);
        assert_eq!(back.cpu.usage_usec, 77);
        assert_eq!(back.io.usage[0].major, 254);
    }

    #[test]
    fn exec_specs_and_resources_are_json() {
        let mut any = Any::new();
        any.type_url = "types.containerd.io/opencontainers/runtime-spec/1/Process".into();
        any.value = br#"{"args":["sh"],"cwd":"/","user":{"uid":0,"gid":0}}"#.to_vec();
        let p = exec_process(Some(&any)).unwrap();
        assert_eq!(p.args().as_deref(), Some(&["sh".to_string()][..]));
        any.value = b"{".to_vec();
        assert!(exec_process(Some(&any))
            .unwrap_err()
            .to_string()
            .starts_with("exec spec"));
        assert!(exec_process(None).is_err());
        any.value = br#"{"pids":{"limit":10}}"#.to_vec();
        let r = resources(Some(&any)).unwrap();
        assert_eq!(r.pids().as_ref().map(|p| p.limit()), Some(10));
    }
}
