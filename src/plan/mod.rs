//! A plan is everything a run will do, as plain data: which hosts, in which
//! batches, and per host the ordered steps, each a command or a check. The
//! planner (`build`) is a pure function of the configuration and what the
//! hosts reported; `--dry-run` prints a plan (`render`) and a real run hands
//! the very same value to the executor.

mod build;
mod render;

use std::time::Duration;

use serde::Serialize;

use crate::host::{Layout, ReleaseId};
use crate::lb::LbAction;
use crate::shell::Cmd;

pub use build::{
    DeployInput, PlanError, RollbackInput, WAIT_DRAINED_INTERVAL, batches, deploy, rollback,
};
pub use render::render;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    Deploy,
    Rollback,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Deploy => "deploy",
            Operation::Rollback => "rollback",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub operation: Operation,
    pub app: String,
    pub stage: String,
    /// The release every host ends up on.
    pub release: ReleaseId,
    pub revision: String,
    pub hosts: Vec<PlannedHost>,
    /// Runs on all hosts at once before anything visible changes (deploy:
    /// upload and unpack). If any host fails here, nothing is switched.
    pub prepare: Vec<Pipeline>,
    /// The rolling phase, batch after batch.
    pub batches: Vec<Vec<Pipeline>>,
    /// After every batch succeeded (cleanup, marking releases bad).
    pub finish: Vec<Pipeline>,
    /// How each host records the run; the executor appends the outcome.
    pub bookkeeping: Bookkeeping,
    /// Things the user should know before running this (no health check…).
    pub warnings: Vec<String>,
}

/// A host taking part in the run, with what it ran before.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedHost {
    pub name: String,
    pub address: String,
    /// What `current` pointed to when the plan was made. `None` on a dry
    /// run, which does not read the hosts, or on a host never deployed to.
    pub before: Option<ReleaseId>,
    /// True if a rollback finds this host already on the target.
    pub unchanged: bool,
}

/// One host's steps within a phase, run in order.
#[derive(Debug, Clone, Serialize)]
pub struct Pipeline {
    pub host: String,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub kind: StepKind,
    pub action: Action,
}

/// What a step is for. The executor relies on a few of these meanings:
/// after `Drain` a host must be enabled again before shipit stops, unless
/// it was switched to a release that never became healthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepKind {
    Upload,
    LinkShared,
    Finish,
    Drain,
    Switch,
    Restart,
    Health,
    Enable,
    MarkBad,
    Cleanup,
}

impl StepKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::Upload => "upload",
            StepKind::LinkShared => "link-shared",
            StepKind::Finish => "finish",
            StepKind::Drain => "drain",
            StepKind::Switch => "switch",
            StepKind::Restart => "restart",
            StepKind::Health => "health",
            StepKind::Enable => "enable",
            StepKind::MarkBad => "mark-bad",
            StepKind::Cleanup => "cleanup",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case", tag = "type")]
pub enum Action {
    /// A command on the pipeline's host.
    Remote { cmd: Cmd },
    /// A command on the pipeline's host, with the release archive on stdin.
    Upload { cmd: Cmd },
    /// A command on the machine running shipit.
    Local { cmd: Cmd },
    /// An HTTP check from the machine running shipit.
    Http { check: HttpCheck },
    /// Taking the pipeline's host out of the load balancer, or putting it
    /// back, by the stage's `[lb]` driver.
    Lb { lb: LbAction },
    /// Nothing to do, and why (shown by dry runs).
    Nothing { reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HttpCheck {
    pub url: String,
    pub expect_status: u16,
    pub expect_body: Option<String>,
    #[serde(with = "humantime_serde_ms")]
    pub timeout: Duration,
    #[serde(with = "humantime_serde_ms")]
    pub interval: Duration,
    #[serde(with = "humantime_serde_ms")]
    pub request_timeout: Duration,
}

/// Durations in JSON as milliseconds.
mod humantime_serde_ms {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_u128(d.as_millis())
    }
}

/// What each host writes about the run: a revisions.log line at the end.
#[derive(Debug, Clone, Serialize)]
pub struct Bookkeeping {
    #[serde(skip)]
    pub layout: Layout,
    pub by: String,
}

impl Plan {
    /// Every pipeline of the plan, phase by phase.
    pub fn pipelines(&self) -> impl Iterator<Item = &Pipeline> {
        self.prepare
            .iter()
            .chain(self.batches.iter().flatten())
            .chain(self.finish.iter())
    }

    /// Hosts that change in this run.
    pub fn changing_hosts(&self) -> impl Iterator<Item = &PlannedHost> {
        self.hosts.iter().filter(|h| !h.unchanged)
    }
}

#[cfg(test)]
mod tests;
