//! Benchmark (printed, not asserted): create + start + wait + delete of `busybox true` by
//! the agent's container code on this host (`moat-agent run`) against `runc run` of the
//! same bundle, alternating, in one run. The target is a ratio of at most 1.2.

use std::time::Duration;

use moat::boot::median;
use moat_tests::bundle::Bundle;
use moat_tests::host::{agent_command, runc_command, timed, unique_id};

const RUNS: usize = 20;
const WARMUP: usize = 2;

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

#[test]
#[ignore = "benchmark: needs root, runc and busybox-static; run by scripts/test.sh"]
fn busybox_true_agent_vs_runc() {
    let mut b = Bundle::new("bench").expect("creating the bundle");
    b.args(&["/bin/true"]);
    b.write().expect("writing config.json");
    let (mut agent, mut runc) = (Vec::new(), Vec::new());
    for i in 0..WARMUP + RUNS {
        let a = timed(agent_command(&b, &unique_id("bench-agent")));
        let r = timed(runc_command(&b, &unique_id("bench-runc")));
        if i >= WARMUP {
            agent.push(a);
            runc.push(r);
        }
    }
    let min = |v: &[Duration]| v.iter().min().copied().unwrap_or_default();
    let (amin, rmin) = (min(&agent), min(&runc));
    let (a, r) = (median(agent).expect("runs"), median(runc).expect("runs"));
    println!(
        "create+start+wait of busybox true, {RUNS} runs each (min): agent: median {} ms ({}), \
         runc: median {} ms ({}), ratio {:.2} (target <= 1.2)",
        ms(a),
        ms(amin),
        ms(r),
        ms(rmin),
        a.as_secs_f64() / r.as_secs_f64()
    );
}
