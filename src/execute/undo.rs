//! Undoing a failed deploy: every host this run switched goes back to the
//! release it ran before, through the same pipeline (drain, switch back,
//! restart, health check, enable), in batches cut by the plan's shapes
//! (steady size, no canary, no watch; each role's own), the failed batch
//! first (with `rollout.role_order`, the roles in reverse order), and
//! within the same capacity budget. A batch that fails stops the undo: no further
//! host is taken out, so an undo never makes things worse than the batch
//! that failed. Then the release is marked bad where it was unpacked.

use super::Executor;
use super::pipeline::{Direction, RunCtx};
use crate::host::journal;
use crate::plan::Pipeline;
use crate::plan::roles::{self, Piece};
use crate::plan::shape::Candidate;
use crate::report::Phase;
use crate::transport::Transport;

/// How an undo went.
pub(super) struct Undone {
    /// Hosts that could not be returned to their previous release.
    pub failed: Vec<String>,
}

impl<T: Transport, L: Transport> Executor<'_, T, L> {
    /// Returns every host this run switched to its previous release (on a
    /// resumed run, also those the dead run switched: the plan's `before`
    /// is what each ran before the whole run); `None` if no host had been
    /// switched.
    pub(super) async fn undo(&self, run: &RunCtx<'_>) -> Option<Undone> {
        let plan = run.plan;
        let mut order: Vec<(usize, String)> = run
            .book
            .switched_to(&plan.release)
            .into_iter()
            .map(|(h, r)| (r.batch.unwrap_or(0), h))
            .collect();
        // Finishing a dead run's rollback goes on to mark the release bad
        // even when every host is back already.
        if order.is_empty() && !plan.undoing {
            return None;
        }
        // Before any host is touched for it: a run that dies from here on
        // leaves journals saying so, and `deploy --resume` finishes the
        // rollback instead of rolling the release out again.
        let marks = plan.hosts.iter().map(|h| async move {
            let mut entry = vec![self.journal_entry(plan, journal::UNDOING, None)];
            self.flush_journal(plan, &h.name, &mut entry).await;
        });
        futures::future::join_all(marks).await;
        // The failed batch first, then back through the earlier ones.
        order.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        let mut failed = Vec::new();
        let mut pipelines: Vec<&Pipeline> = Vec::new();
        for (_, host) in &order {
            match plan.undo.iter().find(|p| &p.host == host) {
                Some(p) => pipelines.push(p),
                None => {
                    self.note(
                        Some(host),
                        "cannot be rolled back: it had no previous release; left on the new one",
                    );
                    failed.push(host.clone());
                }
            }
        }
        // Each part's hosts by its own shape; the last role of the order
        // goes back first.
        let last_step = plan.undo_parts.iter().map(|p| p.step).max().unwrap_or(0);
        let mut pieces: Vec<Piece> = Vec::new();
        for part in &plan.undo_parts {
            let candidates: Vec<Candidate> = pipelines
                .iter()
                .filter(|p| part.hosts.contains(&p.host))
                .map(|p| Candidate {
                    host: p.host.clone(),
                    zone: plan.host(&p.host).and_then(|h| h.zone.clone()),
                    out: run.budget.is_out(&p.host),
                    // Returning it to its previous release puts it back.
                    returns: true,
                })
                .collect();
            if candidates.is_empty() {
                continue;
            }
            let elsewhere: Vec<String> = run
                .budget
                .out()
                .into_iter()
                .filter(|h| run.budget.pool(h) == part.pool)
                .filter(|h| !candidates.iter().any(|c| &c.host == h))
                .collect();
            pieces.push(Piece {
                step: last_step - part.step,
                candidates,
                shape: part.shape.for_undo(),
                elsewhere,
            });
        }
        let batches = match roles::combine(pieces) {
            Ok(batches) => batches,
            Err(no_room) => {
                self.note(None, &format!("cannot roll back: {no_room}"));
                Vec::new()
            }
        };
        let total = batches.len();
        for (i, batch) in batches.iter().enumerate() {
            if self.hurry.is_cancelled() {
                break;
            }
            let batch: Vec<Pipeline> = batch
                .hosts
                .iter()
                .filter_map(|h| pipelines.iter().find(|p| &p.host == h))
                .map(|p| (*p).clone())
                .collect();
            let stuck = self
                .phase(
                    run,
                    Phase::Undo {
                        number: i + 1,
                        of: total,
                    },
                    &batch,
                    Direction::Undo,
                )
                .await;
            if stuck.is_empty() {
                continue;
            }
            // A host that cannot be reached says nothing about the release
            // the others go back to: it keeps its room, the undo goes on.
            // Any other failure stops it: going on would take more hosts
            // out into the same failure.
            let unreachable = stuck
                .iter()
                .all(|h| run.book.get(h).is_some_and(|r| r.lost));
            failed.extend(stuck.iter().cloned());
            if i + 1 == total {
                break;
            }
            if unreachable {
                self.note(
                    None,
                    &format!(
                        "{} cannot be reached and stays out of service; rolling back the others",
                        stuck.join(", ")
                    ),
                );
            } else {
                self.note(
                    None,
                    &format!(
                        "rollback batch {} of {total} failed on {}; no further host is taken out of service",
                        i + 1,
                        stuck.join(", ")
                    ),
                );
                break;
            }
        }
        for (host, _) in run.book.switched_to(&plan.release) {
            if !failed.contains(&host) {
                failed.push(host);
            }
        }
        // Finishing a dead run's undo: that run marked nothing yet.
        let marks: Vec<Pipeline> = plan
            .undo_finish
            .iter()
            .filter(|p| plan.undoing || run.book.get(&p.host).is_some_and(|r| r.touched))
            .cloned()
            .collect();
        if !marks.is_empty() {
            self.phase(run, Phase::Finish, &marks, Direction::Undo)
                .await;
        }
        if !failed.is_empty() {
            failed.sort();
            self.note(
                None,
                &format!(
                    "the rollback did not complete on {}; see their steps above",
                    failed.join(", ")
                ),
            );
        }
        Some(Undone { failed })
    }
}
