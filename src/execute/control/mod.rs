//! Steering a run while it goes: requests from `shipit STAGE pause`,
//! `resume`, `promote`, `abort`, `rollback` and `tune`, sent from any
//! machine through the hosts (`host::steer`, `remote`), and the safe points
//! where the run acts on them (`hooks`).
//!
//! [`Control`] is the meeting point: the poller hands it requests as they
//! come ([`Control::receive`]) and it answers each at once (taken, refused,
//! nothing to do). The executor asks it at its safe points: before each
//! batch ([`Control::gate`]: stop, retune, pause) and during a bake (ended
//! by a promote, an abort or a rollback). Nothing is ever cut in half: a
//! pause or a stop takes effect once the batch in flight is back in
//! service; only a bake ends at once.
//!
//! Every answer is an [`Event::Steer`], a line in revisions.log once it is
//! final, and part of the state the run publishes on the hosts, where the
//! requester reads it. `decide` holds what each request does and when.

mod decide;
mod hooks;
pub mod remote;
pub mod tune;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::OnFailure;
use crate::host::steer::{self, Answer, Ask, Outcome, Request, State};
use crate::plan::{Operation, Plan};
use crate::report::{Event, Reporter};

pub use hooks::BakeWatch;
use tune::Tuning;

/// A run stopped by a request rather than by a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Steered {
    /// `rollback` asked (every switched host goes back whatever
    /// `rollout.on_failure` says); otherwise an `abort`.
    pub rollback: bool,
    /// Who asked, as shown to people.
    pub by: String,
}

impl Steered {
    pub fn verb(&self) -> &'static str {
        if self.rollback {
            "rollback asked"
        } else {
            "aborted"
        }
    }
}

/// Where the run is, for answers and the published state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    Prepare,
    Batch {
        number: usize,
        of: usize,
    },
    Bake {
        number: usize,
        of: usize,
        until: Instant,
    },
    /// Paused before batch `next` (1-based).
    Paused {
        next: usize,
        of: usize,
    },
    Undo,
    Finish,
}

#[derive(Debug, Clone)]
enum Pause {
    /// Taken; takes effect at the next safe point.
    Pending(Request),
    Active {
        request: Request,
        since: Instant,
    },
}

/// What the executor does at the safe point before a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Gate {
    Go,
    /// Start no further batch.
    Stop,
    /// Cut the batches from here anew, then ask again.
    Tune(Request),
    /// Paused: wait for a change, then ask again.
    Wait,
}

/// How often a paused run says it is still paused.
const REMINDER: Duration = Duration::from_secs(60);

/// Answers kept in the published state (the newest).
const KEEP_ANSWERS: usize = 50;

pub struct Control {
    inner: Mutex<Inner>,
    changed: watch::Sender<u64>,
    reporter: Arc<dyn Reporter>,
}

struct Inner {
    /// What is published; `stage`, `batch`, `paused`… are filled in from
    /// the fields below when it is.
    state: State,
    /// deploy.toml's stage name, for the commands the answers suggest.
    stage: String,
    revision: String,
    operation: Operation,
    on_failure: OnFailure,
    at: At,
    pause: Option<Pause>,
    /// An abort or a rollback, until the run stops on it.
    stop: Option<Request>,
    stopping: bool,
    /// A promote of the bake under way.
    cut: Option<Request>,
    skip_bakes: Option<Request>,
    tune: Option<Request>,
    /// The batches not started yet, to judge a tune the moment it comes.
    tuning: Tuning,
    /// The rollout is over: no safe point is left.
    over: bool,
    seen: HashSet<String>,
    /// revisions.log lines not yet written on the hosts.
    log: Vec<String>,
    last_reminder: Option<Instant>,
}

impl Control {
    /// A control for `plan`, run by `by` (pid `pid` on `machine`) since
    /// `since`; events go to `reporter`.
    pub fn new(
        plan: &Plan,
        by: &str,
        machine: &str,
        pid: u32,
        reporter: Arc<dyn Reporter>,
    ) -> Control {
        let state = State {
            run: plan.run.clone(),
            op: plan.operation.as_str().to_string(),
            release: plan.release.to_string(),
            by: by.to_string(),
            machine: machine.to_string(),
            pid,
            since: now_utc(),
            stage: steer::Stage::Prepare,
            batch: 0,
            of: plan.batches.len(),
            bake_left_ms: None,
            paused: None,
            pending: Vec::new(),
            skip_bakes: None,
            answers: Vec::new(),
            ended: None,
        };
        Control {
            inner: Mutex::new(Inner {
                state,
                stage: plan.stage.clone(),
                revision: plan.revision.clone(),
                operation: plan.operation,
                on_failure: plan.on_failure.action,
                at: At::Prepare,
                pause: None,
                stop: None,
                stopping: false,
                cut: None,
                skip_bakes: None,
                tune: None,
                tuning: Tuning::for_plan(plan),
                over: false,
                seen: HashSet::new(),
                log: Vec::new(),
                last_reminder: None,
            }),
            changed: watch::channel(0).0,
            reporter,
        }
    }

    /// Wakes whoever waits for a change (a paused gate, a bake, the
    /// publisher) once `f` changed something.
    fn with<R>(&self, f: impl FnOnce(&mut Inner, &dyn Reporter) -> R) -> R {
        let out = {
            let mut inner = self.inner.lock().expect("control");
            f(&mut inner, self.reporter.as_ref())
        };
        self.changed.send_modify(|v| *v += 1);
        out
    }

    /// A receiver that sees every change from now on.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// A request read from a host. Each is answered once, however often it
    /// is read.
    pub fn receive(&self, request: Request) {
        if !self
            .inner
            .lock()
            .expect("control")
            .seen
            .insert(request.id.clone())
        {
            return;
        }
        self.with(|inner, reporter| inner.receive(request, reporter));
    }

    /// A file in the requests directory that is no request: refused once.
    pub fn unreadable(&self, id: &str, why: &str) {
        let request = Request {
            id: id.to_string(),
            run: String::new(),
            by: "?".into(),
            machine: "?".into(),
            time: String::new(),
            ask: Ask::Abort { message: None },
        };
        if !self
            .inner
            .lock()
            .expect("control")
            .seen
            .insert(id.to_string())
        {
            return;
        }
        self.with(|inner, reporter| {
            let answer = Answer {
                id: request.id.clone(),
                action: "unknown".into(),
                by: request.by.clone(),
                outcome: Outcome::Refused,
                detail: format!("request {id} refused: {why}"),
            };
            inner.record(reporter, &request, answer);
        });
    }

    /// The state to publish now, and the revisions.log lines not written
    /// yet (taken: the caller writes them).
    pub fn publication(&self) -> (State, Vec<String>) {
        let mut inner = self.inner.lock().expect("control");
        let log = std::mem::take(&mut inner.log);
        (inner.published(), log)
    }

    /// Lines the caller could not write after all: kept for the next try.
    pub fn unwritten(&self, mut lines: Vec<String>) {
        let mut inner = self.inner.lock().expect("control");
        lines.append(&mut inner.log);
        inner.log = lines;
    }

    pub(super) fn gate(&self, index: usize, of: usize) -> Gate {
        // Nothing to act on: answered without waking anyone, so that a
        // paused gate waits for a real change.
        if let Some(gate) = self.inner.lock().expect("control").quiet_gate() {
            return gate;
        }
        self.with(|inner, reporter| inner.gate(index, of, reporter))
    }

    /// Batch `index` (0-based) of `of` starts; `tuning` holds the batches
    /// after it.
    pub(super) fn batch_started(&self, index: usize, of: usize, tuning: Tuning) {
        self.with(|inner, _| {
            inner.at = At::Batch {
                number: index + 1,
                of,
            };
            inner.tuning = tuning;
        });
    }

    /// A tune was applied at the gate (`Ok`: what the batches are now), or
    /// could not be after all.
    pub(super) fn tuned(&self, request: &Request, result: Result<String, String>) {
        self.with(|inner, reporter| {
            let (outcome, detail) = match result {
                Ok(detail) => (
                    Outcome::Done,
                    format!("retuned by {}: {detail}", who(request)),
                ),
                Err(why) => (Outcome::Refused, format!("tune refused: {why}")),
            };
            inner.answer(reporter, request, outcome, detail);
        });
    }

    /// A paused run's periodic word, every [`REMINDER`].
    pub(super) fn remind(&self) {
        let mut inner = self.inner.lock().expect("control");
        let Some(Pause::Active { request, since }) = &inner.pause else {
            return;
        };
        let now = Instant::now();
        if inner
            .last_reminder
            .is_some_and(|last| now - last < REMINDER)
        {
            return;
        }
        let text = format!(
            "still paused, for {} now, by {}{}; `shipit {} resume` continues",
            whole(now - *since),
            who(request),
            request
                .message()
                .map(|m| format!(": {m}"))
                .unwrap_or_default(),
            inner.stage
        );
        inner.last_reminder = Some(now);
        drop(inner);
        self.reporter.event(&Event::Note {
            host: None,
            message: text,
        });
    }

    /// The executor moved on to the undo or the finish.
    pub(super) fn moved(&self, stage: steer::Stage) {
        self.with(|inner, _| {
            inner.at = match stage {
                steer::Stage::Undo => At::Undo,
                _ => At::Finish,
            }
        });
    }

    /// The rollout is over (every batch done, or stopped): what is still
    /// waiting for a safe point gets its answer. Returns the stop request
    /// the run ended on, if any.
    pub(super) fn rollout_over(&self) -> Option<Steered> {
        self.with(|inner, reporter| inner.rollout_over(reporter))
    }

    /// Whether the next bake is skipped (`promote --all`, or a stop on its
    /// way), saying so; otherwise the bake starts.
    pub(super) fn bake_begins(&self, number: usize, of: usize, duration: Duration) -> bool {
        self.with(|inner, reporter| {
            let why = match (&inner.skip_bakes, &inner.stop) {
                (_, Some(stop)) => Some(format!("{} by {}", stop.ask.name(), who(stop))),
                (Some(promote), None) => Some(format!("promote --all by {}", who(promote))),
                (None, None) => None,
            };
            match why {
                Some(why) => {
                    reporter.event(&Event::Note {
                        host: None,
                        message: format!("bake {number}/{of} skipped: {why}"),
                    });
                    false
                }
                None => {
                    inner.at = At::Bake {
                        number,
                        of,
                        until: Instant::now() + duration,
                    };
                    true
                }
            }
        })
    }

    /// Resolves once something ends the bake under way: a promote, a
    /// `promote --all`, an abort or a rollback.
    pub(super) async fn bake_cut(&self) {
        let mut changed = self.subscribe();
        loop {
            {
                let inner = self.inner.lock().expect("control");
                if inner.cut.is_some() || inner.skip_bakes.is_some() || inner.stop.is_some() {
                    return;
                }
            }
            if changed.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// The bake ended, `early` or at its end; why, if it was ended early.
    pub(super) fn bake_ended(&self, number: usize, of: usize, early: bool) -> Option<String> {
        self.with(|inner, reporter| {
            inner.at = At::Batch { number, of };
            let cut = inner.cut.take();
            if let Some(promote) = &cut {
                let detail = if early {
                    format!(
                        "bake {number}/{of} ended by a promote from {}",
                        who(promote)
                    )
                } else {
                    format!("bake {number}/{of} had just ended when the promote came")
                };
                inner.answer(reporter, promote, Outcome::Done, detail);
            }
            if !early {
                return None;
            }
            if let Some(stop) = &inner.stop {
                return Some(format!("{} by {}", stop.ask.name(), who(stop)));
            }
            if let Some(promote) = cut.as_ref().or(inner.skip_bakes.as_ref()) {
                return Some(format!("{} by {}", promote.ask.name(), who(promote)));
            }
            None
        })
    }
}

/// Who asked, as people read it: `alice@laptop`, or a CI actor with the
/// machine it ran on.
pub fn who(request: &Request) -> String {
    if request.by.ends_with(&format!("@{}", request.machine)) || request.machine.is_empty() {
        request.by.clone()
    } else {
        format!("{} on {}", request.by, request.machine)
    }
}

/// A duration in whole seconds, as people read it: `1m 5s`.
pub fn whole(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

fn now_utc() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

#[cfg(test)]
mod tests;
