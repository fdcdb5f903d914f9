//! The safe points, as the executor meets them: before each batch (the
//! batch loop asks [`Executor::safe_point`]), during a bake (the watch
//! listens to a [`BakeWatch`]) and once the rollout is over. A run without
//! a [`Control`] passes them all at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::tune::{self, Tuning};
use super::{Control, Gate, Steered};
use crate::execute::Executor;
use crate::execute::pipeline::RunCtx;
use crate::host::steer::{Request, Stage};
use crate::plan::Batch;
use crate::plan::shape::Candidate;
use crate::report::Event;
use crate::transport::Transport;

impl<T: Transport, L: Transport> Executor<'_, T, L> {
    /// Before batch `i` of `batches`: applies a tune to the batches from
    /// here on, waits while paused (a Ctrl-C ends the wait), and says
    /// whether to start batch `i`: false once an abort or a rollback came.
    pub(in crate::execute) async fn safe_point(
        &self,
        run: &RunCtx<'_>,
        batches: &mut Vec<Batch>,
        i: usize,
    ) -> bool {
        let Some(control) = &self.control else {
            return true;
        };
        loop {
            let mut changed = control.subscribe();
            match control.gate(i, batches.len()) {
                Gate::Go => break,
                Gate::Stop => return false,
                Gate::Tune(request) => self.retune(run, control, batches, i, &request),
                Gate::Wait => {
                    if self.cancel.is_cancelled() {
                        return true;
                    }
                    tokio::select! {
                        _ = changed.changed() => {}
                        () = self.cancel.cancelled() => return true,
                        () = tokio::time::sleep(Duration::from_secs(5)) => control.remind(),
                    }
                }
            }
        }
        control.batch_started(i, batches.len(), tuning(run, batches, i + 1));
        true
    }

    /// Cuts `batches[i..]` anew as `request` asks, or says why not.
    fn retune(
        &self,
        run: &RunCtx<'_>,
        control: &Control,
        batches: &mut Vec<Batch>,
        i: usize,
        request: &Request,
    ) {
        let crate::host::steer::Ask::Tune {
            batch_size,
            bake_ms,
        } = &request.ask
        else {
            return;
        };
        let tuning = tuning(run, batches, i);
        let result = tune::recut(
            &tuning,
            batch_size.as_deref(),
            bake_ms.map(Duration::from_millis),
        )
        .map(|shaped| {
            let detail = tune::describe(&shaped, i);
            let new = tune::regroup(&batches[i..], &shaped);
            batches.truncate(i);
            batches.extend(new);
            self.reporter.event(&Event::Retuned {
                from: i + 1,
                batches: batches
                    .iter()
                    .map(|b| b.hosts().map(str::to_string).collect())
                    .collect(),
            });
            detail
        });
        control.tuned(request, result);
    }

    /// Watches for what ends the bake of batch `number` early; `None`
    /// from [`BakeWatch::begin`] means the bake is skipped.
    pub(in crate::execute) fn bake_watch(
        &self,
        number: usize,
        of: usize,
        duration: Duration,
    ) -> Option<BakeWatch<'_>> {
        let control = self.control.as_deref();
        if let Some(control) = control
            && !control.bake_begins(number, of, duration)
        {
            return None;
        }
        Some(BakeWatch {
            control,
            number,
            of,
            cut: AtomicBool::new(false),
        })
    }

    /// The rollout is over; the stop it ended on, if any.
    pub(in crate::execute) fn steer_over(&self) -> Option<Steered> {
        self.control.as_ref()?.rollout_over()
    }

    /// The run moved on to its undo or its finish.
    pub(in crate::execute) fn steer_moved(&self, stage: Stage) {
        if let Some(control) = &self.control {
            control.moved(stage);
        }
    }
}

/// What a bake listens to while it watches its batch.
pub struct BakeWatch<'c> {
    control: Option<&'c Control>,
    number: usize,
    of: usize,
    cut: AtomicBool,
}

impl BakeWatch<'_> {
    /// Resolves when a request ends the bake; never without a control.
    pub async fn cut(&self) {
        match self.control {
            Some(control) => {
                control.bake_cut().await;
                self.cut.store(true, Ordering::Relaxed);
            }
            None => std::future::pending().await,
        }
    }

    /// The bake is over; who ended it early, if someone did.
    pub fn end(self) -> Option<String> {
        let control = self.control?;
        control.bake_ended(self.number, self.of, self.cut.load(Ordering::Relaxed))
    }
}

/// The hosts of `batches[from..]`, as the budget sees them now.
fn tuning(run: &RunCtx<'_>, batches: &[Batch], from: usize) -> Tuning {
    let plan = run.plan;
    let remaining: Vec<Candidate> = batches
        .iter()
        .skip(from)
        .flat_map(|b| b.hosts())
        .map(|h| Candidate {
            host: h.to_string(),
            zone: plan.host(h).and_then(|p| p.zone.clone()),
            out: run.budget.is_out(h),
            returns: plan.out_at_start.get(h).is_some_and(|o| o.returns),
        })
        .collect();
    let out_elsewhere = run
        .budget
        .out()
        .into_iter()
        .filter(|h| !remaining.iter().any(|c| &c.host == h))
        .collect();
    Tuning {
        remaining,
        out_elsewhere,
        shape: plan.shape.clone(),
        next: from,
        parts: plan.parts.len(),
    }
}
