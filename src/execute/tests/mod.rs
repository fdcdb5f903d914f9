//! Executor logic against a scripted transport: ordering, stopping, and
//! putting drained hosts back. Real hosts are in tests/integration. The
//! plans and the runner all tests share are here; the tests, by flow, in
//! the files beside it.

use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::plan::{Action, DeployInput, Pipeline, Plan, Step, StepKind, deploy};
use crate::report::Recording;
use crate::report::{Event, HostResult, Phase};
use crate::testing::{self, facts, id, stage};
use crate::transport::fake::FakeTransport;

mod journal;
mod lb;
mod order;
mod secrets;
mod timeouts;
mod watch;

const STAGE: &str = r#"
restart = "restart-app"
[lb]
drain = "lb-drain {name}"
enable = "lb-enable {name}"
[rollout]
rolling_batch_size = 2
"#;

const STEPS: &[&str] = &[
    "shipit:unpack",
    "shipit:switch",
    "lb-drain",
    "lb-enable",
    "restart-app",
    "shipit:remove-releases",
    "shipit:record",
];

fn plan(hosts: usize) -> Plan {
    plan_with(hosts, "")
}

/// `extra` goes into `[rollout]`.
fn plan_with(hosts: usize, extra: &str) -> Plan {
    let stage = stage(hosts, &format!("keep_releases = 1\n{STAGE}{extra}\n"));
    testing::deploy_plan(&stage, true, None).unwrap()
}

async fn run(
    plan: &Plan,
    remote: &FakeTransport,
    local: &FakeTransport,
) -> (RunReport, Vec<Event>) {
    let recording = Recording::default();
    let report = Executor::with_local(remote, local, &recording)
        .archive(Bytes::from_static(b"archive"))
        .run(plan)
        .await;
    (report, recording.events())
}

fn position(log: &[String], entry: &str) -> usize {
    log.iter()
        .position(|e| e == entry)
        .unwrap_or_else(|| panic!("{entry} not in {log:?}"))
}

fn plan_with_lb(hosts: usize, lb: &str) -> Plan {
    let stage = stage(hosts, &format!("restart = \"restart-app\"\n{lb}"));
    testing::deploy_plan(&stage, true, None).unwrap()
}

const WAITING_LB: &str = r#"
[lb]
drain = "lb-drain {name}"
enable = "lb-enable {name}"
run_on = "web2"
wait_drained = "lb-idle {name}"
drain_timeout = "1s"
"#;

/// A plan for `hosts` with the command driver and `rollout` (the whole
/// `[rollout]` table and what follows it).
fn gated_plan(hosts: usize, rollout: &str) -> Plan {
    let stage = stage(
        hosts,
        &format!(
            "keep_releases = 1\nrestart = \"restart-app\"\n[lb]\ndrain = \"lb-drain {{name}}\"\n\
             enable = \"lb-enable {{name}}\"\n[rollout]\n{rollout}\n"
        ),
    );
    testing::deploy_plan(&stage, true, None).unwrap()
}

/// What the run's summary says of `host`.
fn result_of(report: &RunReport, host: &str) -> HostResult {
    report
        .hosts
        .iter()
        .find(|s| s.host == host)
        .unwrap_or_else(|| panic!("{host} is not in the summary"))
        .result
        .clone()
}
