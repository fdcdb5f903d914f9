//! Hooks that run once for the whole run on this machine, and the
//! `on_failure` hooks, which learn the failed hosts in SHIPIT_FAILED_HOSTS.

use super::Executor;
use super::pipeline::{Direction, RunCtx};
use crate::plan::{Action, Pipeline, Step};
use crate::report::{HostResult, Phase};
use crate::transport::Transport;

impl<T: Transport, L: Transport> Executor<'_, T, L> {
    /// Run-level local steps (hooks), one after another; false at the
    /// first failure.
    pub(super) async fn local_steps(&self, steps: &[Step]) -> bool {
        for step in steps {
            if self.step("local", step).await.is_err() {
                return false;
            }
        }
        true
    }

    /// `on_failure` hooks, locally and on the hosts, with the failed hosts
    /// in SHIPIT_FAILED_HOSTS. Their own failures are only reported.
    pub(super) async fn failure_hooks(&self, run: &RunCtx<'_>) {
        let plan = run.plan;
        let failed: Vec<String> = run
            .book
            .all()
            .into_iter()
            .filter(|(_, r)| matches!(r.result, Some(HostResult::Failed { .. })))
            .map(|(h, _)| h)
            .collect();
        let tag = |step: &Step| {
            let mut step = step.clone();
            if let Action::Local { cmd } | Action::Remote { cmd } = &mut step.action {
                cmd.env
                    .push(("SHIPIT_FAILED_HOSTS".into(), failed.join(" ").into()));
            }
            step
        };
        let local: Vec<Step> = plan.hooks.on_failure.iter().map(tag).collect();
        self.local_steps(&local).await;
        let hosts: Vec<Pipeline> = plan
            .on_failure_hosts
            .iter()
            .map(|p| Pipeline {
                host: p.host.clone(),
                steps: p.steps.iter().map(tag).collect(),
            })
            .collect();
        if !hosts.is_empty() {
            self.phase(run, Phase::Finish, &hosts, Direction::Forward)
                .await;
        }
    }
}
