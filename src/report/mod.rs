//! What happened during a run, as events, and the reporters that show them.
//! The executor only emits [`Event`]s; how they look (plain lines, progress
//! bars, JSON) is decided here, so new outputs never touch the executor.

pub mod plain;

use std::time::Duration;

use serde::Serialize;

use crate::host::ReleaseId;
use crate::plan::{Operation, StepKind};

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    RunStarted {
        operation: Operation,
        app: String,
        stage: String,
        release: ReleaseId,
        revision: String,
        hosts: Vec<String>,
        batches: Vec<Vec<String>>,
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
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
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
    },
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
    /// Still out of the load balancer.
    pub drained: bool,
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
