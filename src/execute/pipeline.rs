//! One host's pipeline within a phase: its steps in order, the journal
//! entries that go with them, the capacity budget asked before the host
//! goes out of service, and putting the host back when it stops early.
//!
//! When a pipeline stops with its host out of the load balancer, [`decide`]
//! says what happens, by how far the host got:
//!
//! | how far | what shipit does |
//! |---|---|
//! | drained, not switched | put back: it serves what it served before |
//! | switched, not restarted (a deploy stopped by a signal or a hook) | switch `current` back (one rename), put back |
//! | restarted, health check passed, enable failed | try to put it back once more |
//! | restart or health check cut short by a second signal (hurry) | one look at its health check: put back if it answers; a deploy's host whose restart did not complete is otherwise switched back and put back if it answers for the release it ran before |
//! | returned to the release it served before (undo, rollback), health check failed | put back: the load balancer's own check judges it |
//! | anything else | left out, and the run says why |
//!
//! On a first Ctrl-C a deploy's host that was already restarted finishes
//! its health check and enable within the usual bounds: stopping there
//! would leave a restarted host out for no reason.

use tokio::time::Instant;

use super::Executor;
use super::book::Book;
use super::capacity::Budget;
use super::journal::journal_event;
use super::step::Failure;
use crate::host::{ReleaseId, journal};
use crate::lb::Proof;
use crate::plan::{Action, HealthCheck, Pipeline, Plan, Step, StepKind};
use crate::report::{Event, HostResult, Phase};
use crate::transport::Transport;

/// What a run's pipelines share: the plan, the book and the budget.
pub(super) struct RunCtx<'p> {
    pub plan: &'p Plan,
    pub book: Book,
    pub budget: Budget,
    /// Why hosts were not taken out of service: the budget had no room.
    /// The rollout stops there; those hosts were never touched.
    pub refused: std::sync::Mutex<Vec<String>>,
    /// What the gates decided, per batch.
    pub gates: super::gates::GateRecord,
}

/// Which way a pipeline moves a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Direction {
    /// Towards the plan's release.
    Forward,
    /// Back to the host's previous release.
    Undo,
}

/// What a phase's pipelines mean for a host's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Failures fail the host; success changes nothing visible yet.
    Prepare,
    /// The host's outcome: done, failed, rolled back.
    Rolling,
    /// Cleanup and marks: failures are reported, results stay.
    Bookkeeping,
}

/// How far a stopped pipeline got.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Progress {
    pub switched: bool,
    /// The restart step started (whether or not it succeeded).
    pub restart_began: bool,
    pub restarted: bool,
    pub healthy: bool,
    /// The step that failed was the enable.
    pub enable_failed: bool,
    pub interrupted: bool,
    /// Out of service before this pipeline took it out (a failed host the
    /// undo returns, a host found out).
    pub was_out: bool,
}

/// What to do with a host a pipeline left out of the load balancer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum PutBack {
    /// Enable it, saying why that is safe.
    Enable(&'static str),
    /// Point `current` back at the release it ran before, then enable it.
    SwitchBack,
    /// Its restart or health check was cut short: whether it serves is
    /// unknown. Look once (at most [`LOOK`]) at its health check and enable
    /// it if it answers. With `switch_back` (a deploy's restart that did
    /// not complete: the app may still run what it ran before), one that
    /// does not is switched back and looked at again for that release.
    Recheck { switch_back: bool },
    /// Leave it out, saying why.
    LeaveOut(String),
}

/// How long one look at a host's health check may take when deciding
/// whether to put it back: short, so that a run told to hurry still ends
/// within a CI runner's grace period.
pub(super) const LOOK: std::time::Duration = std::time::Duration::from_secs(2);

/// What [`Executor::put_back`] did.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Back {
    /// `current` points at the release the host ran before again.
    pub switched_back: bool,
    /// The host is back in the load balancer.
    pub enabled: bool,
}

/// A pipeline's health check, if it has one.
fn health_check(pipeline: &Pipeline) -> Option<&HealthCheck> {
    pipeline.steps.iter().find_map(|s| match &s.action {
        Action::Health { check } => Some(check),
        _ => None,
    })
}

/// A step not started because the host's journal could not be written.
fn journal_failure(why: &str) -> Failure {
    Failure {
        result: "journal not written".into(),
        error: format!(
            "the host's journal (deploy_to/.shipit/journal) could not be written, so this step was not started: {why}"
        ),
        ..Failure::default()
    }
}

/// The put-back rule (see the module documentation).
pub(super) fn decide(
    progress: Progress,
    direction: Direction,
    release: &str,
    has_previous: bool,
) -> PutBack {
    if !progress.switched && direction == Direction::Undo && progress.was_out {
        return PutBack::LeaveOut(format!(
            "left out of the load balancer: it still runs {release}, which did not prove healthy"
        ));
    }
    if !progress.switched {
        return PutBack::Enable("putting the host back: it still serves its previous release");
    }
    match direction {
        Direction::Forward if !progress.restart_began && has_previous => PutBack::SwitchBack,
        Direction::Forward if progress.healthy && progress.enable_failed => PutBack::Enable(
            "it answered its health check, but the enable failed: trying to put it back once more",
        ),
        _ if progress.interrupted && progress.restart_began && !progress.healthy => {
            PutBack::Recheck {
                switch_back: direction == Direction::Forward && !progress.restarted && has_previous,
            }
        }
        Direction::Forward => PutBack::LeaveOut(format!(
            "left out of the load balancer: it runs {release}, which did not prove healthy"
        )),
        Direction::Undo if progress.restarted && !progress.interrupted => PutBack::Enable(
            "putting the host back although its health check failed: it runs the release it served before this \
             run, so the load balancer's own health check judges it",
        ),
        Direction::Undo => PutBack::LeaveOut(format!(
            "left out of the load balancer: returning it to {release} did not complete"
        )),
    }
}

impl<T: Transport, L: Transport> Executor<'_, T, L> {
    /// Runs every pipeline of a phase at once; returns the hosts whose
    /// pipeline failed.
    pub(super) async fn phase(
        &self,
        run: &RunCtx<'_>,
        phase: Phase,
        pipelines: &[Pipeline],
        direction: Direction,
    ) -> Vec<String> {
        self.reporter.event(&Event::PhaseStarted {
            phase,
            hosts: pipelines.iter().map(|p| p.host.clone()).collect(),
        });
        let results = futures::future::join_all(
            pipelines
                .iter()
                .map(|p| self.pipeline(run, p, phase, direction)),
        )
        .await;
        pipelines
            .iter()
            .zip(results)
            .filter(|(_, ok)| !ok)
            .map(|(p, _)| p.host.clone())
            .collect()
    }

    async fn pipeline(
        &self,
        run: &RunCtx<'_>,
        pipeline: &Pipeline,
        phase: Phase,
        direction: Direction,
    ) -> bool {
        let plan = run.plan;
        let role = match phase {
            Phase::Batch { .. } | Phase::Undo { .. } => Role::Rolling,
            Phase::Finish => Role::Bookkeeping,
            _ => Role::Prepare,
        };
        let host = pipeline.host.as_str();
        let started = Instant::now();
        run.book.update(host, |r| r.touched = true);
        let before = run.book.get(host).and_then(|r| r.before);
        let (stop, target) = match direction {
            Direction::Forward => (&self.cancel, Some(plan.release.clone())),
            Direction::Undo => (&self.hurry, before.clone()),
        };
        // The release it runs now, named when it is left out.
        let running = match direction {
            Direction::Forward => before.clone(),
            Direction::Undo => Some(plan.release.clone()),
        };
        // The step that takes the host out of service: its drain, or
        // without a load balancer its switch.
        let goes_out = pipeline
            .steps
            .iter()
            .position(|s| s.kind == StepKind::Drain)
            .or_else(|| {
                pipeline
                    .steps
                    .iter()
                    .position(|s| s.kind == StepKind::Switch)
            })
            .filter(|_| role == Role::Rolling);

        let mut failed: Option<(StepKind, Failure)> = None;
        let mut progress = Progress {
            was_out: run.budget.is_out(host),
            ..Progress::default()
        };
        let (mut out, mut drained) = (false, false);
        // Journal entries not yet on the host: they ride along with the next
        // command sent there, or go in one write when the pipeline ends.
        let mut pending: Vec<journal::Entry> = Vec::new();
        for (i, step) in pipeline.steps.iter().enumerate() {
            // A deploy's host that was restarted finishes its health check
            // and enable: a first signal never strands it.
            let finishing = direction == Direction::Forward
                && progress.restarted
                && matches!(step.kind, StepKind::Health | StepKind::Enable);
            if stop.is_cancelled() && !finishing {
                failed = Some((
                    step.kind,
                    Failure::interrupted("interrupted before this step started"),
                ));
                break;
            }
            if goes_out == Some(i) {
                if let Err(refused) = run.budget.take(host).await {
                    // Never touched: not a failure of this host, a stop.
                    self.note(Some(host), &refused.to_string());
                    run.refused.lock().expect("refused").push(host.to_string());
                    self.reporter.event(&Event::HostFinished {
                        host: host.to_string(),
                        phase,
                        ok: false,
                        duration: started.elapsed(),
                        step: Some(step.kind),
                        error: Some(refused.to_string()),
                        drained: false,
                    });
                    self.flush_journal(plan, host, &mut pending).await;
                    return false;
                }
                out = true;
            }
            if step.kind == StepKind::Restart {
                progress.restart_began = true;
            }
            if step.kind == StepKind::Drain {
                // Written before draining: a run that dies from here on
                // leaves a journal saying the host may be out. Without
                // it, the host is not taken out.
                pending.push(self.journal_entry(plan, "drained", None));
                if let Err(failure) = self.write_journal(plan, host, &mut pending).await {
                    let failure = if failure.lost {
                        failure
                    } else {
                        journal_failure(&failure.error)
                    };
                    failed = Some((step.kind, failure));
                    break;
                }
            }
            let event = journal_event(step.kind).filter(|_| step.kind != StepKind::Drain);
            let on_host = matches!(step.action, Action::Remote { .. } | Action::Upload { .. });
            // Entries not yet on the host go ahead of the step, in its own
            // round trip: a step never starts before the journal tells
            // what came before it, and a journal that cannot be written is
            // never taken for a step that failed (`journal::unwritten`).
            let first = (on_host && !pending.is_empty()).then(|| {
                plan.bookkeeping
                    .layout
                    .journal_first(&std::mem::take(&mut pending))
            });
            let proof = if progress.healthy {
                Proof::Checked
            } else {
                Proof::Unchecked
            };
            match self.step_then(host, step, first, proof).await {
                Err(failure)
                    if journal::unwritten(failure.exit_code, failure.stderr_tail.as_deref()) =>
                {
                    // The step never started.
                    if step.kind == StepKind::Restart {
                        progress.restart_began = false;
                    }
                    failed = Some((step.kind, journal_failure(&failure.error)));
                    break;
                }
                Err(failure) if step.kind == StepKind::Drain => {
                    // A drain that failed may have taken the host out of
                    // some load balancers already: put it back below.
                    drained = true;
                    run.book.update(host, |r| r.drained = true);
                    failed = Some((step.kind, failure));
                    break;
                }
                Ok(()) => {
                    match step.kind {
                        StepKind::Drain => {
                            drained = true;
                            run.book.update(host, |r| r.drained = true);
                        }
                        StepKind::Switch => {
                            progress.switched = true;
                            let now = target.clone();
                            run.book.update(host, |r| {
                                r.now = now;
                                r.restarted = Some(Instant::now());
                            });
                        }
                        StepKind::Restart => {
                            progress.restarted = true;
                            run.book
                                .update(host, |r| r.restarted = Some(Instant::now()));
                        }
                        StepKind::Health => progress.healthy = true,
                        StepKind::Enable => {
                            drained = false;
                            run.book.update(host, |r| r.drained = false);
                        }
                        _ => {}
                    }
                    if let Some(event) = event {
                        pending.push(self.journal_entry(plan, event, None));
                    }
                }
                Err(failure) => {
                    if step.kind == StepKind::Switch && failure.lost {
                        // The rename may have happened before the
                        // connection went: say what is known.
                        self.note(
                            Some(host),
                            &format!(
                                "the connection was lost during the switch: `current` may point to {} now; its app \
                                 was not restarted, so it serves what it served. `shipit {} status` tells once the \
                                 host answers",
                                target.as_ref().map_or("the new release".into(), ToString::to_string),
                                plan.stage
                            ),
                        );
                    }
                    progress.enable_failed = step.kind == StepKind::Enable;
                    failed = Some((step.kind, failure));
                    break;
                }
            }
        }
        // Without a restart step, the switch is what changes the host.
        if progress.switched && !pipeline.steps.iter().any(|s| s.kind == StepKind::Restart) {
            progress.restart_began = true;
            progress.restarted = true;
        }
        progress.interrupted = failed.as_ref().is_some_and(|(_, f)| f.interrupted);

        if drained {
            let release = if progress.switched { &target } else { &running };
            let release = release
                .as_ref()
                .map_or("its release".into(), ToString::to_string);
            let decision = decide(progress, direction, &release, before.is_some());
            let back = self
                .put_back(run, pipeline, &decision, before.as_ref(), direction)
                .await;
            if back.switched_back {
                run.book.update(host, |r| r.now = r.before.clone());
            }
            if back.enabled {
                drained = false;
                run.book.update(host, |r| r.drained = false);
                pending.push(self.journal_entry(plan, "enabled", None));
            }
        }
        let ok = failed.is_none();
        if out {
            // Back in service (enabled; without a load balancer, healthy or
            // never switched), or out for good: the budget must know.
            let enables = pipeline.steps.iter().any(|s| s.kind == StepKind::Enable);
            let back = if enables {
                !drained
            } else {
                ok || !progress.switched
            };
            if back {
                run.budget.put_back(host);
            } else {
                run.budget.stuck(host);
            }
        }
        if ok && role == Role::Rolling {
            let event = match direction {
                Direction::Forward => "rolled-out",
                Direction::Undo => "rolled-back",
            };
            pending.push(self.journal_entry(plan, event, None));
        }
        self.flush_journal(plan, host, &mut pending).await;

        let elapsed = started.elapsed();
        self.reporter.event(&Event::HostFinished {
            host: host.to_string(),
            phase,
            ok,
            duration: elapsed,
            step: failed.as_ref().map(|(step, _)| *step),
            error: failed.as_ref().map(|(_, f)| f.error.clone()),
            drained,
        });
        run.book.update(host, |r| {
            r.elapsed += elapsed;
            if role != Role::Rolling && role != Role::Prepare {
                // Cleanup or marking trouble is reported by its step, and
                // does not change what the host runs.
                return;
            }
            r.lost = failed.as_ref().is_some_and(|(_, f)| f.lost);
            match (&failed, direction) {
                (Some((step, failure)), Direction::Forward) => {
                    r.result = Some(HostResult::Failed {
                        step: *step,
                        error: failure.error.clone(),
                        interrupted: failure.interrupted,
                    });
                }
                (Some((step, failure)), Direction::Undo) => {
                    r.result = Some(HostResult::Failed {
                        step: *step,
                        error: format!("rolling back: {}", failure.error),
                        interrupted: failure.interrupted,
                    });
                }
                (None, Direction::Forward) if role == Role::Rolling => {
                    r.result = Some(HostResult::Done);
                    r.in_service = Some(Instant::now());
                }
                (None, Direction::Undo) if role == Role::Rolling => {
                    // A host that failed keeps its failure; one that had
                    // succeeded was rolled back because of others.
                    if !matches!(r.result, Some(HostResult::Failed { .. })) {
                        r.result = Some(HostResult::RolledBack);
                    }
                }
                (None, _) => {}
            }
        });
        ok
    }

    /// Carries out a put-back decision.
    async fn put_back(
        &self,
        run: &RunCtx<'_>,
        pipeline: &Pipeline,
        decision: &PutBack,
        before: Option<&ReleaseId>,
        direction: Direction,
    ) -> Back {
        let host = pipeline.host.as_str();
        let mut back = Back::default();
        let Some(enable) = pipeline.steps.iter().find(|s| s.kind == StepKind::Enable) else {
            return back;
        };
        match decision {
            PutBack::Enable(why) => self.note(Some(host), why),
            PutBack::SwitchBack => {
                let Some(before) = before else {
                    return back;
                };
                self.note(
                    Some(host),
                    &format!(
                        "switching current back to {before} (it was never restarted, so it still runs {before}), then putting it back"
                    ),
                );
                if !self.switch_back(run, host, before).await {
                    return back;
                }
                back.switched_back = true;
            }
            PutBack::Recheck { switch_back } => {
                let Some(own) = health_check(pipeline) else {
                    self.note(
                        Some(host),
                        "left out of the load balancer: its restart was cut short, and without a health check \
                         nothing tells what it runs",
                    );
                    return back;
                };
                let target = match direction {
                    Direction::Forward => run.plan.release.to_string(),
                    Direction::Undo => {
                        before.map_or_else(|| "its previous release".into(), ToString::to_string)
                    }
                };
                if self.answers_check(host, own).await {
                    self.note(
                        Some(host),
                        &format!(
                            "its restart or health check was cut short, but it answers its health check for {target}: putting it back"
                        ),
                    );
                } else if !switch_back {
                    self.note(
                        Some(host),
                        &format!(
                            "left out of the load balancer: it was restarted on {target}, and the run was told to hurry \
                             before it answered its health check"
                        ),
                    );
                    return back;
                } else {
                    // A deploy's host may still run what it ran before.
                    let previous = run
                        .plan
                        .undo
                        .iter()
                        .find(|p| p.host == host)
                        .and_then(health_check);
                    let (Some(before), Some(previous)) = (before, previous) else {
                        self.note(
                            Some(host),
                            &format!(
                                "left out of the load balancer: its restart was cut short and it does not answer its health check for {target}"
                            ),
                        );
                        return back;
                    };
                    if !self.switch_back(run, host, before).await {
                        return back;
                    }
                    back.switched_back = true;
                    if !self.answers_check(host, previous).await {
                        self.note(
                            Some(host),
                            &format!(
                                "left out of the load balancer: its restart was cut short, and it answers its health check \
                                 neither for {target} nor for {before} (current points at {before} again)"
                            ),
                        );
                        return back;
                    }
                    self.note(
                        Some(host),
                        &format!(
                            "its restart was cut short; it still answers for {before}, so current points at {before} again: putting it back"
                        ),
                    );
                }
            }
            PutBack::LeaveOut(why) => {
                self.note(Some(host), why);
                return back;
            }
        }
        back.enabled = self.step(host, enable).await.is_ok();
        back
    }

    /// Points `current` back at `before`; false (and says so) if it failed.
    async fn switch_back(&self, run: &RunCtx<'_>, host: &str, before: &ReleaseId) -> bool {
        let back = Step::new(
            StepKind::Switch,
            Action::Remote {
                cmd: run.plan.bookkeeping.layout.switch(before),
            },
        );
        if self.step(host, &back).await.is_err() {
            self.note(
                Some(host),
                "left out of the load balancer: switching current back failed",
            );
            return false;
        }
        true
    }

    /// One look at `check`, within [`LOOK`]: whether the host answers it
    /// now. Never cut short by a signal: it is how a host gets back.
    async fn answers_check(&self, host: &str, check: &HealthCheck) -> bool {
        let mut once = check.clone();
        once.request_timeout = once.request_timeout.min(LOOK);
        once.timeout = once.request_timeout;
        once.interval = once.request_timeout;
        once.healthy_threshold = 1;
        once.start_period = std::time::Duration::ZERO;
        once.min_healthy_time = std::time::Duration::ZERO;
        let never = tokio_util::sync::CancellationToken::new();
        super::health::wait_healthy(&self.prober(), host, &once, &never)
            .await
            .is_ok()
    }

    /// Runs stand-alone pipelines (repairs before a run) and returns the
    /// hosts whose pipeline succeeded.
    pub async fn run_pipelines(&self, phase: Phase, pipelines: &[Pipeline]) -> Vec<String> {
        if pipelines.is_empty() {
            return Vec::new();
        }
        self.reporter.event(&Event::PhaseStarted {
            phase,
            hosts: pipelines.iter().map(|p| p.host.clone()).collect(),
        });
        let results = futures::future::join_all(pipelines.iter().map(|p| async move {
            for step in &p.steps {
                if self.step(&p.host, step).await.is_err() {
                    return None;
                }
            }
            Some(p.host.clone())
        }))
        .await;
        results.into_iter().flatten().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(
        switched: bool,
        restarted: bool,
        healthy: bool,
        enable_failed: bool,
        interrupted: bool,
    ) -> Progress {
        Progress {
            switched,
            restart_began: restarted,
            restarted,
            healthy,
            enable_failed,
            interrupted,
            was_out: false,
        }
    }

    #[test]
    fn an_undo_never_puts_back_a_host_still_on_the_release_that_failed() {
        let failed_host = Progress {
            was_out: true,
            ..Progress::default()
        };
        assert_eq!(
            decide(failed_host, Direction::Undo, "R", true),
            PutBack::LeaveOut(
                "left out of the load balancer: it still runs R, which did not prove healthy"
                    .into()
            )
        );
        // One that served the new release well until the undo drained it.
        assert!(matches!(
            decide(Progress::default(), Direction::Undo, "R", true),
            PutBack::Enable(_)
        ));
    }

    #[test]
    fn the_put_back_rule() {
        use Direction::{Forward, Undo};
        let d = |progress, direction| decide(progress, direction, "R", true);
        assert!(matches!(
            d(p(false, false, false, false, true), Forward),
            PutBack::Enable(_)
        ));
        assert!(matches!(
            d(p(false, false, false, false, false), Undo),
            PutBack::Enable(_)
        ));
        // Stopped between switch and restart: back to the old link.
        assert_eq!(
            d(p(true, false, false, false, true), Forward),
            PutBack::SwitchBack
        );
        assert_eq!(
            d(p(true, false, false, false, false), Forward),
            PutBack::SwitchBack
        );
        // ...unless there is nothing to go back to.
        assert!(matches!(
            decide(p(true, false, false, false, true), Forward, "R", false),
            PutBack::LeaveOut(_)
        ));
        // Healthy, but the enable failed: once more.
        assert!(matches!(
            d(p(true, true, true, true, false), Forward),
            PutBack::Enable(_)
        ));
        // Did not prove healthy: stays out.
        assert_eq!(
            d(p(true, true, false, false, false), Forward),
            PutBack::LeaveOut(
                "left out of the load balancer: it runs R, which did not prove healthy".into()
            )
        );
        // Cut short by a second signal: what it runs is looked at.
        assert_eq!(
            d(p(true, true, false, false, true), Forward),
            PutBack::Recheck { switch_back: false }
        );
        let cut_restart = Progress {
            switched: true,
            restart_began: true,
            interrupted: true,
            ..Progress::default()
        };
        assert_eq!(
            d(cut_restart, Forward),
            PutBack::Recheck { switch_back: true }
        );
        assert_eq!(
            decide(cut_restart, Forward, "R", false),
            PutBack::Recheck { switch_back: false }
        );
        assert_eq!(
            d(cut_restart, Undo),
            PutBack::Recheck { switch_back: false }
        );
        // Back on the release it served before: the balancer judges.
        assert!(matches!(
            d(p(true, true, false, false, false), Undo),
            PutBack::Enable(_)
        ));
        assert!(matches!(
            d(p(true, false, false, false, false), Undo),
            PutBack::LeaveOut(_)
        ));
        assert_eq!(
            d(p(true, true, false, false, true), Undo),
            PutBack::Recheck { switch_back: false }
        );
        // A restart that began and failed: its app may be half-way; it
        // stays out (the failure policy decides what comes next).
        let failed_restart = Progress {
            switched: true,
            restart_began: true,
            ..Progress::default()
        };
        assert!(matches!(d(failed_restart, Forward), PutBack::LeaveOut(_)));
    }
}
