//! What each request does, and when: the answers a run gives as requests
//! come, what the gate before a batch decides, what is left once the
//! rollout is over, and the state the run publishes.

use std::time::Duration;

use tokio::time::Instant;

use super::{At, Gate, Inner, KEEP_ANSWERS, Pause, Steered, now_utc, tune, who, whole};
use crate::config::OnFailure;
use crate::host::revlog;
use crate::host::steer::{self, Answer, Ask, Outcome, Request, State};
use crate::plan::Operation;
use crate::report::{Event, Reporter};

impl Inner {
    /// Where the run stands, in words for an answer: "batch 2/4".
    pub(super) fn where_now(&self) -> String {
        match self.at {
            At::Prepare => "before batch 1".into(),
            At::Batch { number, of } | At::Bake { number, of, .. } => {
                format!("batch {number}/{of}")
            }
            At::Paused { next, of } => format!("before batch {next}/{of}"),
            At::Undo => "rolling back".into(),
            At::Finish => "finishing".into(),
        }
    }

    /// When a pause or a stop taken now acts.
    pub(super) fn acts(&self) -> String {
        match self.at {
            At::Prepare => "once every host has the release, before batch 1".into(),
            At::Batch { number, of } => format!("once batch {number}/{of} is back in service"),
            At::Bake { number, of, .. } => format!("once bake {number}/{of} ends"),
            At::Paused { .. } => "now".into(),
            At::Undo | At::Finish => "never: the rollout is over".into(),
        }
    }

    pub(super) fn receive(&mut self, request: Request, reporter: &dyn Reporter) {
        let by = who(&request);
        if request.run != self.state.run {
            let detail = format!(
                "{} by {by} refused: it is for run {}, not for this one ({})",
                request.ask.name(),
                request.run,
                self.state.run
            );
            return self.answer(reporter, &request, Outcome::Refused, detail);
        }
        if self.over {
            let detail = match request.ask {
                Ask::Resume => format!("resume by {by} refused: the run is not paused"),
                _ => format!(
                    "{} by {by} comes too late: every batch is done ({})",
                    request.ask.name(),
                    self.where_now()
                ),
            };
            return self.answer(reporter, &request, Outcome::Ignored, detail);
        }
        match request.ask.clone() {
            Ask::Pause { message } => self.receive_pause(reporter, request, message, &by),
            Ask::Resume => self.receive_resume(reporter, request, &by),
            Ask::Promote { all } => self.receive_promote(reporter, request, all, &by),
            Ask::Abort { .. } | Ask::Rollback { .. } => self.receive_stop(reporter, request, &by),
            Ask::Tune {
                batch_size,
                bake_ms,
            } => {
                match tune::recut(
                    &self.tuning,
                    batch_size.as_deref(),
                    bake_ms.map(Duration::from_millis),
                ) {
                    Ok(shaped) => {
                        let detail = format!(
                            "tune by {by} taken: {}",
                            tune::describe(&shaped, self.tuning.next)
                        );
                        self.tune = Some(request.clone());
                        self.answer(reporter, &request, Outcome::Accepted, detail);
                    }
                    Err(why) => {
                        let detail = format!("tune by {by} refused: {why}");
                        self.answer(reporter, &request, Outcome::Refused, detail);
                    }
                }
            }
        }
    }

    pub(super) fn receive_pause(
        &mut self,
        reporter: &dyn Reporter,
        request: Request,
        message: Option<String>,
        by: &str,
    ) {
        let (outcome, detail) = match &self.pause {
            Some(Pause::Active { request: first, .. }) => (
                Outcome::Ignored,
                format!("pause by {by}: already paused by {}", who(first)),
            ),
            Some(Pause::Pending(first)) => (
                Outcome::Ignored,
                format!("pause by {by}: a pause by {} is already coming", who(first)),
            ),
            None => {
                let detail = format!(
                    "{by} asks to pause{}: pausing {}",
                    message.map(|m| format!(" ({m})")).unwrap_or_default(),
                    self.acts()
                );
                self.pause = Some(Pause::Pending(request.clone()));
                (Outcome::Accepted, detail)
            }
        };
        self.answer(reporter, &request, outcome, detail);
    }

    pub(super) fn receive_resume(&mut self, reporter: &dyn Reporter, request: Request, by: &str) {
        let (outcome, detail) = match self.pause.take() {
            Some(Pause::Active {
                request: paused,
                since,
            }) => (
                Outcome::Done,
                format!(
                    "resumed by {by} after {} (paused by {})",
                    whole(since.elapsed()),
                    who(&paused)
                ),
            ),
            Some(Pause::Pending(paused)) => {
                let detail = format!(
                    "pause by {} cancelled by {by} before it took effect",
                    who(&paused)
                );
                self.answer(reporter, &paused, Outcome::Ignored, detail.clone());
                (Outcome::Done, detail)
            }
            None => (
                Outcome::Refused,
                format!("resume by {by} refused: the run is not paused"),
            ),
        };
        self.answer(reporter, &request, outcome, detail);
    }

    pub(super) fn receive_promote(
        &mut self,
        reporter: &dyn Reporter,
        request: Request,
        all: bool,
        by: &str,
    ) {
        let baking = matches!(self.at, At::Bake { .. });
        if all {
            let now = if baking {
                "this bake ends now and "
            } else {
                ""
            };
            let detail = format!("promote --all by {by}: {now}no further batch is baked");
            self.skip_bakes = Some(request.clone());
            return self.answer(reporter, &request, Outcome::Done, detail);
        }
        if !baking {
            let detail = format!(
                "promote by {by} refused: no bake is under way ({}); `promote --all` skips every bake still to come",
                self.where_now()
            );
            return self.answer(reporter, &request, Outcome::Refused, detail);
        }
        let detail = match self.at {
            At::Bake { number, of, .. } => {
                format!("promote by {by} taken: ending bake {number}/{of} now")
            }
            _ => format!("promote by {by} taken: ending {} now", self.where_now()),
        };
        self.cut = Some(request.clone());
        self.answer(reporter, &request, Outcome::Accepted, detail);
    }

    pub(super) fn receive_stop(&mut self, reporter: &dyn Reporter, request: Request, by: &str) {
        let rollback = request.is_rollback();
        if rollback && self.operation == Operation::Rollback {
            let detail = format!("rollback by {by} refused: this run is a rollback itself");
            return self.answer(reporter, &request, Outcome::Refused, detail);
        }
        if let Some(first) = &self.stop {
            let detail = format!(
                "{} by {by}: already stopping ({} by {})",
                request.ask.name(),
                first.ask.name(),
                who(first)
            );
            return self.answer(reporter, &request, Outcome::Ignored, detail);
        }
        let then = self.then(rollback);
        let when = match self.at {
            At::Bake { number, of, .. } => format!("ending bake {number}/{of} now"),
            _ => format!("stopping {}", self.acts()),
        };
        let detail = format!(
            "{by} asks to {}{}: {when}; then {then}",
            request.ask.verb(),
            request
                .message()
                .map(|m| format!(" ({m})"))
                .unwrap_or_default()
        );
        self.stop = Some(request.clone());
        self.answer(reporter, &request, Outcome::Accepted, detail);
    }

    /// What follows a stop.
    pub(super) fn then(&self, rollback: bool) -> &'static str {
        match self.operation {
            Operation::Rollback => "the hosts stay where they are",
            Operation::Deploy if rollback || self.on_failure == OnFailure::Rollback => {
                "every switched host goes back to its previous release"
            }
            Operation::Deploy => "the hosts stay where they are (rollout.on_failure)",
        }
    }

    /// The gate's answer when nothing waits to be acted on.
    pub(super) fn quiet_gate(&self) -> Option<Gate> {
        if self.stopping {
            return Some(Gate::Stop);
        }
        if self.stop.is_some() || self.tune.is_some() {
            return None;
        }
        match self.pause {
            None => Some(Gate::Go),
            Some(Pause::Active { .. }) => Some(Gate::Wait),
            Some(Pause::Pending(_)) => None,
        }
    }

    pub(super) fn gate(&mut self, index: usize, of: usize, reporter: &dyn Reporter) -> Gate {
        if self.stopping {
            return Gate::Stop;
        }
        if let Some(stop) = self.stop.clone() {
            self.stopping = true;
            let detail = format!(
                "stopped by {} before batch {}/{of} ({}); then {}",
                who(&stop),
                index + 1,
                stop.ask.name(),
                self.then(stop.is_rollback())
            );
            self.answer(reporter, &stop, Outcome::Done, detail);
            return Gate::Stop;
        }
        if let Some(tune) = self.tune.take() {
            return Gate::Tune(tune);
        }
        match self.pause.clone() {
            Some(Pause::Pending(request)) => {
                let detail = format!(
                    "paused by {} before batch {}/{of}{}; `shipit {} resume` continues",
                    who(&request),
                    index + 1,
                    request
                        .message()
                        .map(|m| format!(": {m}"))
                        .unwrap_or_default(),
                    self.stage
                );
                self.pause = Some(Pause::Active {
                    request: request.clone(),
                    since: Instant::now(),
                });
                self.at = At::Paused {
                    next: index + 1,
                    of,
                };
                self.last_reminder = Some(Instant::now());
                self.answer(reporter, &request, Outcome::Done, detail);
                Gate::Wait
            }
            Some(Pause::Active { .. }) => Gate::Wait,
            None => Gate::Go,
        }
    }

    pub(super) fn rollout_over(&mut self, reporter: &dyn Reporter) -> Option<Steered> {
        let after = match self.at {
            At::Batch { number, of } | At::Bake { number, of, .. } => {
                format!("after batch {number}/{of}")
            }
            At::Paused { next, of } => format!("before batch {next}/{of}"),
            At::Prepare | At::Undo | At::Finish => "before batch 1".into(),
        };
        self.over = true;
        self.at = At::Finish;
        if let Some(Pause::Pending(request)) = self.pause.take() {
            let detail = format!(
                "pause by {}: nothing left to pause, the last batch was already under way",
                who(&request)
            );
            self.answer(reporter, &request, Outcome::Ignored, detail);
        }
        if let Some(request) = self.tune.take() {
            let detail = format!("tune by {}: no batch is left to retune", who(&request));
            self.answer(reporter, &request, Outcome::Ignored, detail);
        }
        let stop = self.stop.clone()?;
        if !self.stopping {
            self.stopping = true;
            let detail = format!(
                "stopped by {} {after} ({}); then {}",
                who(&stop),
                stop.ask.name(),
                self.then(stop.is_rollback())
            );
            self.answer(reporter, &stop, Outcome::Done, detail);
        }
        Some(Steered {
            rollback: stop.is_rollback(),
            by: who(&stop),
        })
    }

    /// Records an answer for `request`.
    pub(super) fn answer(
        &mut self,
        reporter: &dyn Reporter,
        request: &Request,
        outcome: Outcome,
        detail: String,
    ) {
        let answer = Answer {
            id: request.id.clone(),
            action: request.ask.name().to_string(),
            by: who(request),
            outcome,
            detail,
        };
        self.record(reporter, request, answer);
    }

    pub(super) fn record(&mut self, reporter: &dyn Reporter, request: &Request, answer: Answer) {
        reporter.event(&Event::Steer {
            request: answer.id.clone(),
            action: answer.action.clone(),
            by: answer.by.clone(),
            message: request.message().map(str::to_string),
            asked: request.time.clone(),
            outcome: answer.outcome,
            detail: answer.detail.clone(),
        });
        if answer.outcome.is_final() {
            let entry = revlog::Entry {
                time: now_utc(),
                action: answer.action.clone(),
                release: self.state.release.clone(),
                previous: None,
                revision: self.revision.clone(),
                by: answer.by.clone(),
                result: match answer.outcome {
                    Outcome::Done => answer.detail.clone(),
                    Outcome::Refused => format!("refused: {}", answer.detail),
                    _ => format!("ignored: {}", answer.detail),
                },
                message: request.message().map(str::to_string),
                run: Some(self.state.run.clone()),
            };
            self.log.push(entry.to_line());
        }
        self.state.answers.retain(|a| a.id != answer.id);
        self.state.answers.push(answer);
        let excess = self.state.answers.len().saturating_sub(KEEP_ANSWERS);
        self.state.answers.drain(..excess);
    }

    pub(super) fn published(&self) -> State {
        let mut state = self.state.clone();
        let now = Instant::now();
        state.bake_left_ms = None;
        state.paused = None;
        (state.stage, state.batch, state.of) = match self.at {
            At::Prepare => (steer::Stage::Prepare, 0, state.of),
            At::Batch { number, of } => (steer::Stage::Batch, number, of),
            At::Bake { number, of, until } => {
                state.bake_left_ms = Some(until.saturating_duration_since(now).as_millis() as u64);
                (steer::Stage::Bake, number, of)
            }
            At::Paused { next, of } => (steer::Stage::Paused, next - 1, of),
            At::Undo => (steer::Stage::Undo, state.batch, state.of),
            At::Finish => (steer::Stage::Finish, state.batch, state.of),
        };
        if let Some(Pause::Active { request, since }) = &self.pause {
            state.paused = Some(steer::Paused {
                by: who(request),
                message: request.message().map(str::to_string),
                for_ms: (now - *since).as_millis() as u64,
            });
        }
        state.pending = [
            self.pause.as_ref().and_then(|p| match p {
                Pause::Pending(r) => Some(r),
                Pause::Active { .. } => None,
            }),
            self.stop.as_ref().filter(|_| !self.stopping),
            self.tune.as_ref(),
            self.cut.as_ref(),
        ]
        .into_iter()
        .flatten()
        .map(|r| format!("{} by {}", r.ask.name(), who(r)))
        .collect();
        state.skip_bakes = self.skip_bakes.as_ref().map(who);
        state
    }
}
