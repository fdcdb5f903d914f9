//! The rolling phase: batch after batch, each watched for its bake once
//! back in service, until every batch is done, a batch fails beyond what
//! the failure policy allows, or the run is stopped.

use super::Executor;
use super::pipeline::{Direction, RunCtx};
use crate::config::OnFailure;
use crate::plan::{Batch, Operation};
use crate::report::{HostResult, Phase};
use crate::transport::Transport;

impl<T: Transport, L: Transport> Executor<'_, T, L> {
    /// Runs the plan's batches; returns the index of the batch that
    /// stopped the rollout, if one did.
    pub(super) async fn rollout(&self, run: &RunCtx<'_>) -> Option<usize> {
        let plan = run.plan;
        // A tune cuts the batches not started yet anew (`control`).
        let mut batches = plan.batches.clone();
        let mut i = 0;
        while i < batches.len() {
            if self.cancel.is_cancelled()
                || !self.safe_point(run, &mut batches, i).await
                || self.cancel.is_cancelled()
            {
                break;
            }
            let (batch, total) = (&batches[i], batches.len());
            for host in batch.hosts() {
                run.book.update(host, |r| r.batch = Some(i));
            }
            let phase = Phase::Batch {
                number: i + 1,
                of: total,
            };
            self.phase(run, phase, &batch.pipelines, Direction::Forward)
                .await;
            if run.book.failed_among(batch.hosts()) == 0 && !self.cancel.is_cancelled() {
                self.watch(run, batch, i + 1, total).await;
            }
            if self.stops(run, batch, i, total) {
                return Some(i);
            }
            let refused = run.refused.lock().expect("refused").first().cloned();
            if let Some(host) = refused {
                self.note(
                    None,
                    &format!(
                        "batch {} of {total}: no room left under rollout.max_unavailable = {}; stopping here",
                        i + 1,
                        run.budget.max_unavailable(&host)
                    ),
                );
                break;
            }
            i += 1;
        }
        None
    }

    /// Whether the failures of batch `i` stop the rollout, by the policy;
    /// says which way it goes either way.
    fn stops(&self, run: &RunCtx<'_>, batch: &Batch, i: usize, total: usize) -> bool {
        let plan = run.plan;
        let size = batch.pipelines.len();
        let failed = run.book.failed_among(batch.hosts());
        if failed == 0 {
            return false;
        }
        if !plan.on_failure.stops(failed, size) {
            self.note(
                None,
                &format!(
                    "batch {} of {total}: {failed} of {size} host(s) failed, within max_fail_percentage = {}; going on",
                    i + 1,
                    plan.on_failure.max_fail_percentage
                ),
            );
            return false;
        }
        let switched = !run.book.switched_to(&plan.release).is_empty();
        let then = match plan.on_failure.action {
            OnFailure::Rollback if plan.operation == Operation::Deploy && switched => {
                "rolling every switched host back to its previous release"
            }
            _ => "stopping here",
        };
        self.note(
            None,
            &format!(
                "batch {} of {total}: {failed} of {size} host(s) failed; {then}",
                i + 1
            ),
        );
        true
    }

    /// Every host of the run ended where it should: done or unchanged.
    pub(super) fn all_done(run: &RunCtx<'_>) -> bool {
        run.book.all().iter().all(|(_, r)| {
            matches!(
                r.result,
                None | Some(HostResult::Done | HostResult::Unchanged)
            )
        })
    }
}
