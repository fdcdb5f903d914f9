//! Planner tests: configuration and facts in, plan out. The helpers all
//! of them share are here; the tests, by flow, in the files beside it.

use super::*;
use crate::lb::LbOp;
use crate::testing::{self, facts, id, run, stage};

mod deploy;
mod gates;
mod hooks;
mod lb;
mod resume;
mod rollback;
mod shape;

const LB_AND_HEALTH: &str = r#"
restart = "bin/restart {name}"
shared_dirs = ["log"]
shared_files = [".env"]
[health]
url = "http://{address}:8080/health"
expect_body = "{release}"
[lb]
drain = "lbctl drain {name}"
enable = "lbctl enable {name}"
[rollout]
rolling_batch_size = 2
"#;

fn deploy_plan(hosts: usize, extra: &str, with_facts: bool) -> Plan {
    testing::deploy_plan(&stage(hosts, extra), with_facts, None).unwrap()
}

fn kinds(p: &Pipeline) -> Vec<&'static str> {
    p.steps.iter().map(|s| s.kind.as_str()).collect()
}

fn hosts(batch: &[Pipeline]) -> Vec<&str> {
    batch.iter().map(|p| p.host.as_str()).collect()
}

fn deploy_with_service(hosts: usize, extra: &str, service: &Service) -> Result<Plan, PlanError> {
    testing::deploy_plan(&stage(hosts, extra), true, Some(service))
}
