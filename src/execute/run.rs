//! A whole run, phase by phase: the journal opened on every host, the
//! `before` hooks, prepare (upload on all hosts at once), the rolling
//! phase, the undo of a failed deploy, the finish (cleanup, `after` hooks)
//! or the failure hooks, the books closed (journal and revisions.log, one
//! round trip per host), and the per-host summary.

use super::book::Book;
use super::capacity::Budget;
use super::pipeline::{Direction, RunCtx};
use super::{Executor, RunReport};
use crate::config::OnFailure;
use crate::plan::{Operation, Plan};
use crate::report::{Event, HostResult, Phase};
use crate::transport::Transport;

impl<T: Transport, L: Transport> Executor<'_, T, L> {
    pub(super) async fn run_plan(&self, plan: &Plan) -> RunReport {
        let run = RunCtx {
            plan,
            book: Book::new(plan),
            budget: Budget::pooled(plan.pools.clone(), &plan.out_at_start),
            refused: Default::default(),
            gates: Default::default(),
        };
        self.reporter.event(&Event::RunStarted {
            operation: plan.operation,
            app: plan.app.clone(),
            stage: plan.stage.clone(),
            release: plan.release.clone(),
            revision: plan.revision.clone(),
            hosts: plan.changing_hosts().map(|h| h.name.clone()).collect(),
            batches: plan
                .batches
                .iter()
                .map(|b| b.hosts().map(str::to_string).collect())
                .collect(),
            before: plan
                .hosts
                .iter()
                .map(|h| (h.name.clone(), h.before.clone()))
                .collect(),
        });
        self.journal_started(plan).await;

        let mut stopped_by = None;
        if let Err(why) = self.gates_preflight(plan).await {
            stopped_by = Some(format!("{why}; nothing was changed"));
        }
        if stopped_by.is_none() && !self.local_steps(&plan.hooks.before).await {
            stopped_by = Some("a before_deploy hook failed; nothing was changed".to_string());
        }
        let mut prepared = stopped_by.is_none();
        if prepared && !plan.prepare.is_empty() {
            prepared = self
                .phase(&run, Phase::Prepare, &plan.prepare, Direction::Forward)
                .await
                .is_empty();
            if !prepared && !self.cancel.is_cancelled() {
                self.note(
                    None,
                    "prepare failed: no host was switched; the new release stays marked unfinished",
                );
            }
            if prepared && !self.local_steps(&plan.hooks.after_upload).await {
                prepared = false;
                stopped_by = Some("an after_upload hook failed; no host was switched".to_string());
            }
        }
        let failed_batch = if prepared {
            self.rollout(&run).await
        } else {
            None
        };
        let steered = self.steer_over();
        let interrupted = self.cancel.is_cancelled();
        let refused = run.refused.lock().expect("refused").clone();
        if stopped_by.is_none() && !refused.is_empty() {
            stopped_by = Some(format!(
                "rollout.max_unavailable = {} left no room to take {} out of service",
                run.budget.max_unavailable(&refused[0]),
                refused.join(", ")
            ));
        }

        let wants_undo = plan.operation == Operation::Deploy
            && (plan.undoing
                || (failed_batch.is_some() && plan.on_failure.action == OnFailure::Rollback)
                || (interrupted && plan.on_failure.rollback_on_abort)
                || steered
                    .as_ref()
                    .is_some_and(|s| s.rollback || plan.on_failure.action == OnFailure::Rollback));
        let undone = if wants_undo && !self.hurry.is_cancelled() {
            self.steer_moved(crate::host::steer::Stage::Undo);
            self.undo(&run).await
        } else {
            None
        };

        let rolled_out = !plan.undoing
            && prepared
            && failed_batch.is_none()
            && !interrupted
            && steered.is_none()
            && refused.is_empty()
            && Self::all_done(&run);
        if rolled_out && !plan.finish.is_empty() {
            // Cleanup trouble does not undo a good deploy; it is reported.
            self.phase(&run, Phase::Finish, &plan.finish, Direction::Forward)
                .await;
        }
        if rolled_out && !self.local_steps(&plan.hooks.after).await {
            self.note(
                None,
                "an after hook failed; the run itself is complete, every host runs the new release",
            );
        }
        if !rolled_out {
            self.failure_hooks(&run).await;
        }
        self.close_books(plan, &run.book, rolled_out).await;

        let hosts = run.book.summaries(plan);
        let ok = rolled_out
            && hosts
                .iter()
                .all(|h| matches!(h.result, HostResult::Done | HostResult::Unchanged));
        self.reporter.event(&Event::RunFinished {
            ok,
            hosts: hosts.clone(),
            gates: run.gates.all(),
        });
        RunReport {
            ok,
            interrupted,
            undo_ran: undone.is_some(),
            undo_failed: undone.map(|u| u.failed).unwrap_or_default(),
            stopped_by,
            steered,
            hosts,
        }
    }
}
