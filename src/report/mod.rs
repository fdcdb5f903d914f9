//! What happened during a command, as events, and the reporters that show
//! them. The executor and the commands only emit [`Event`]s; how they look
//! (plain lines, progress bars, JSON) is decided here, so new outputs never
//! touch the executor.
//!
//! The JSON form of every event is a public contract, documented in
//! docs/events.md: add fields and events freely, but renaming or removing
//! one, or changing its meaning, needs a new [`json::SCHEMA_VERSION`].

pub mod choose;
pub mod gates;
pub mod json;
pub mod plain;
pub mod progress;
pub mod redact;
mod table;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::exit::Exit;
use crate::host::ReleaseId;
use crate::plan::{Operation, Plan, StepKind};

pub use gates::{CommandRun, GateSummary, Measured, Verdict};

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// `app.build` starts on the machine running shipit; its output goes
    /// straight to stderr.
    BuildStarted {
        command: String,
    },
    BuildFinished {
        ok: bool,
        #[serde(serialize_with = "millis")]
        duration: Duration,
    },
    /// The release archive is ready.
    Packed {
        /// `app.source` as written in deploy.toml.
        source: String,
        bytes: u64,
        /// Files packed; 0 when `app.source` is a ready archive.
        files: usize,
        #[serde(serialize_with = "millis")]
        duration: Duration,
    },
    /// Something the user should know before the run starts (from the plan).
    Warning {
        message: String,
    },
    /// The whole plan, for `--dry-run --json`. Secrets are redacted.
    Plan {
        plan: Box<Plan>,
    },
    RunStarted {
        operation: Operation,
        app: String,
        stage: String,
        release: ReleaseId,
        revision: String,
        /// The hosts that change, in plan order.
        hosts: Vec<String>,
        batches: Vec<Vec<String>>,
        /// Every host of the stage and the release it ran when the plan was
        /// made (`null`: none, or unknown).
        before: BTreeMap<String, Option<ReleaseId>>,
    },
    PhaseStarted {
        phase: Phase,
        hosts: Vec<String>,
    },
    StepStarted {
        host: String,
        step: StepKind,
        /// The command or check, as shown to people (secrets redacted).
        action: String,
    },
    /// Bytes of the release archive sent to a host so far.
    UploadProgress {
        host: String,
        sent: u64,
        total: u64,
    },
    /// A line of output from a command (shown with `-v`).
    Output {
        host: String,
        step: StepKind,
        stream: &'static str,
        line: String,
    },
    StepFinished {
        host: String,
        step: StepKind,
        ok: bool,
        #[serde(serialize_with = "millis")]
        duration: Duration,
        /// Short result: `ok`, `exit status 3`, `killed by signal TERM`, `timed out`…
        result: String,
        /// The exit status of a command that ran to the end.
        #[serde(skip_serializing_if = "Option::is_none")]
        exit_code: Option<u32>,
        /// The last lines of a failed command's stderr.
        #[serde(skip_serializing_if = "Option::is_none")]
        stderr_tail: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A host is through with a phase: every step succeeded, or one failed
    /// (then `step` and `error` say which and why).
    HostFinished {
        host: String,
        phase: Phase,
        ok: bool,
        #[serde(serialize_with = "millis")]
        duration: Duration,
        #[serde(skip_serializing_if = "Option::is_none")]
        step: Option<StepKind>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// Out of the load balancer after this phase.
        drained: bool,
    },
    /// A batch is back in service and watched for its bake before the
    /// next batch starts.
    BakeStarted {
        /// 1-based.
        batch: usize,
        of: usize,
        hosts: Vec<String>,
        #[serde(serialize_with = "millis")]
        duration: Duration,
    },
    BakeFinished {
        batch: usize,
        of: usize,
        /// No host failed during the watch.
        ok: bool,
        #[serde(serialize_with = "millis")]
        duration: Duration,
        /// Ended early by Ctrl-C (the batch stays in service).
        interrupted: bool,
        /// Ended early by a request: `promote by alice@laptop`,
        /// `abort by …`, `rollback by …`.
        #[serde(skip_serializing_if = "Option::is_none")]
        ended_by: Option<String>,
    },
    /// A request to steer the run (`shipit STAGE pause`, `resume`,
    /// `promote`, `abort`, `rollback`, `tune`), from anyone who can deploy,
    /// and what became of it. A request is answered `accepted` when it
    /// acts at the next safe point, then `done` once it did.
    Steer {
        /// The request's id.
        request: String,
        /// `pause`, `resume`, `promote`, `promote --all`, `abort`,
        /// `rollback`, `tune`.
        action: String,
        /// Who asked: `alice@laptop`, or a CI actor and its machine.
        by: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        message: Option<String>,
        /// When it was asked, by the requester's clock (RFC 3339, ms).
        asked: String,
        outcome: crate::host::steer::Outcome,
        /// What it means for the run, for people.
        detail: String,
    },
    /// The batches not started yet were cut anew (`shipit STAGE tune`).
    Retuned {
        /// The first batch cut anew (1-based).
        from: usize,
        /// Every batch of the run now, those done included.
        batches: Vec<Vec<String>>,
    },
    /// One evaluation of a gate during a bake, with what it measured.
    GateEvaluated {
        /// The batch baking, 1-based.
        batch: usize,
        of: usize,
        /// The gate's place in `[[gates]]`, 0-based.
        gate: usize,
        #[serde(rename = "type")]
        kind: String,
        /// The hosts measured.
        hosts: Vec<String>,
        verdict: Verdict,
        /// `pass` or `fail` when this evaluation decides the gate for the
        /// batch (a fail at any time, or the bake's last evaluation, where
        /// an inconclusive verdict becomes what `on_inconclusive` says);
        /// absent while the bake goes on.
        #[serde(skip_serializing_if = "Option::is_none")]
        outcome: Option<Verdict>,
        measured: Measured,
        /// What passes, in words: `5xx ≤ 5% of at least 50 answers`.
        limit: String,
        /// The evaluation in words.
        message: String,
        /// Time into the bake.
        #[serde(serialize_with = "millis")]
        elapsed: Duration,
    },
    /// Something shipit did or decided that the user should know about.
    Note {
        #[serde(skip_serializing_if = "Option::is_none")]
        host: Option<String>,
        message: String,
    },
    RunFinished {
        ok: bool,
        hosts: Vec<HostSummary>,
        /// Per batch that was gated, what each gate decided and measured.
        gates: Vec<GateSummary>,
    },
    /// The last event of every command: how it ended.
    Result {
        ok: bool,
        /// The process exit code (docs/exit-codes.md).
        exit_code: u8,
        /// Its name: `success`, `failed-unchanged`, `usage`, …
        exit: Exit,
        /// What went wrong, as printed after `error:`.
        #[serde(skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
}

impl Event {
    /// The event with `f` applied to every text that can carry command
    /// output or command lines (everything but names and ids).
    pub fn map_text(&self, f: &dyn Fn(&str) -> String) -> Event {
        let opt = |s: &Option<String>| s.as_deref().map(f);
        let mut event = self.clone();
        match &mut event {
            Event::BuildStarted { command } => *command = f(command),
            Event::Warning { message } | Event::Note { message, .. } => *message = f(message),
            Event::Steer {
                detail, message, ..
            } => {
                *detail = f(detail);
                *message = opt(message);
            }
            Event::StepStarted { action, .. } => *action = f(action),
            Event::Output { line, .. } => *line = f(line),
            Event::StepFinished {
                result,
                stderr_tail,
                error,
                ..
            } => {
                *result = f(result);
                *stderr_tail = opt(stderr_tail);
                *error = opt(error);
            }
            Event::HostFinished { error, .. } => *error = opt(error),
            Event::RunFinished { hosts, gates, .. } => {
                for h in hosts {
                    if let HostResult::Failed { error, .. } = &mut h.result {
                        *error = f(error);
                    }
                }
                for g in gates {
                    g.message = f(&g.message);
                    g.measured = g.measured.map_text(f);
                }
            }
            Event::GateEvaluated {
                message, measured, ..
            } => {
                *message = f(message);
                *measured = measured.map_text(f);
            }
            Event::Result { message, .. } => *message = opt(message),
            Event::BuildFinished { .. }
            | Event::Packed { .. }
            | Event::Plan { .. }
            | Event::RunStarted { .. }
            | Event::PhaseStarted { .. }
            | Event::BakeStarted { .. }
            | Event::BakeFinished { .. }
            | Event::Retuned { .. }
            | Event::UploadProgress { .. } => {}
        }
        event
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "name", rename_all = "kebab-case")]
pub enum Phase {
    Connect,
    /// Putting back hosts an interrupted run left drained.
    Repair,
    Prepare,
    Batch {
        number: usize,
        of: usize,
    },
    /// Returning switched hosts to their previous release.
    Undo {
        number: usize,
        of: usize,
    },
    Finish,
}

/// Where a host stands at the end of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostSummary {
    pub host: String,
    pub before: Option<ReleaseId>,
    /// What `current` points to now, as far as shipit knows.
    pub now: Option<ReleaseId>,
    pub result: HostResult,
    /// Still out of the load balancer because of this run.
    pub drained: bool,
    /// Out of the load balancer before the run (an operator's drain or
    /// maintenance) and left so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub left_out: Option<crate::lb::ServiceState>,
    #[serde(serialize_with = "millis")]
    pub duration: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum HostResult {
    /// Switched, restarted, healthy and back in the load balancer.
    Done,
    /// Already on the target; nothing to do.
    Unchanged,
    Failed {
        step: StepKind,
        error: String,
        /// Stopped by Ctrl-C / SIGTERM rather than by an error.
        interrupted: bool,
    },
    /// Switched, then returned to its previous release because other
    /// hosts failed.
    RolledBack,
    /// The run stopped before this host's turn; it still runs `before`.
    NotReached,
}

impl Phase {
    pub fn label(&self) -> String {
        match self {
            Phase::Connect => "connect".into(),
            Phase::Repair => "repair".into(),
            Phase::Prepare => "prepare".into(),
            Phase::Batch { number, of } => format!("batch {number}/{of}"),
            Phase::Undo { number, of } => format!("rollback {number}/{of}"),
            Phase::Finish => "finish".into(),
        }
    }
}

impl HostResult {
    pub fn label(&self) -> String {
        match self {
            HostResult::Done => "ok".into(),
            HostResult::Unchanged => "unchanged".into(),
            HostResult::Failed {
                step,
                interrupted: true,
                ..
            } => format!("interrupted at {}", step.as_str()),
            HostResult::Failed { step, .. } => format!("FAILED at {}", step.as_str()),
            HostResult::RolledBack => "rolled back".into(),
            HostResult::NotReached => "not reached".into(),
        }
    }
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

/// Receives every event of a run, from many tasks at once.
pub trait Reporter: Send + Sync {
    fn event(&self, event: &Event);
}

impl<R: Reporter + ?Sized> Reporter for std::sync::Arc<R> {
    fn event(&self, event: &Event) {
        (**self).event(event);
    }
}

impl<R: Reporter + ?Sized> Reporter for Box<R> {
    fn event(&self, event: &Event) {
        (**self).event(event);
    }
}

/// Sends every event to several reporters (say, progress on stderr and JSON
/// on stdout).
pub struct Tee(pub Vec<Box<dyn Reporter>>);

impl Reporter for Tee {
    fn event(&self, event: &Event) {
        for reporter in &self.0 {
            reporter.event(event);
        }
    }
}

/// Keeps every event; for tests.
#[derive(Default)]
pub struct Recording(pub std::sync::Mutex<Vec<Event>>);

impl Reporter for Recording {
    fn event(&self, event: &Event) {
        self.0.lock().expect("recording lock").push(event.clone());
    }
}

impl Recording {
    pub fn events(&self) -> Vec<Event> {
        self.0.lock().expect("recording lock").clone()
    }
}
