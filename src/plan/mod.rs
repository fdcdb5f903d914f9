//! A plan is everything a run will do, as plain data: which hosts, in which
//! batches, and per host the ordered steps, each a command or a check. The
//! planner (`build`) is a pure function of the configuration and what the
//! hosts reported; `--dry-run` prints a plan (`render`) and a real run hands
//! the very same value to the executor.

mod build;
pub mod gates;
mod render;
pub mod roles;
pub mod shape;
mod steps;

use std::time::Duration;

use serde::Serialize;

use std::collections::BTreeMap;

use crate::config::{CheckFrom, OnFailure};
use crate::host::{Layout, ReleaseId};
use crate::lb::{LbAction, ServiceState};
use crate::shell::Cmd;

pub use build::{
    DeployInput, PlanError, Resumes, RollbackInput, Run, Service, deploy, health_check, repair,
    rollback, rollout_shape,
};
pub use gates::{BatchGate, GateCommand, Measure};
pub use render::render;
pub use roles::{Part, Pools};
pub use shape::Shape;

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
    /// Unique per run; names the run in the lock and the hosts' journals.
    pub run: String,
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
    pub batches: Vec<Batch>,
    /// How the batches were cut, kept so that the executor cuts the hosts
    /// still to do (undo, a retuned rollout) by the very same rules. With
    /// roles, `parts` has each role's shape; this is the stage's own.
    pub shape: Shape,
    /// The rolling hosts by the settings they run with (a role's or the
    /// stage's) and their place in `rollout.role_order`, each with its
    /// shape. One part when no role has settings of its own.
    pub parts: Vec<Part>,
    /// The same over every host of the run, for an undo: a resumed run
    /// rolls out only what the dead one left, but undoes it all.
    #[serde(skip)]
    pub undo_parts: Vec<Part>,
    /// Which capacity pool each host of the stage counts against, and each
    /// pool's `max_unavailable`.
    pub pools: Pools,
    /// Hosts of the stage that were out of service when the plan was made
    /// (in maintenance, draining, or DOWN in the load balancer), whether
    /// this run touches them or not: they count against
    /// `shape.max_unavailable` from the start.
    pub out_at_start: BTreeMap<String, OutOfService>,
    /// After every batch succeeded (cleanup, marking releases bad).
    pub finish: Vec<Pipeline>,
    /// What happens when hosts fail.
    pub on_failure: FailurePolicy,
    /// Per host, the way back to the release it ran before (deploys only):
    /// drain, switch back, restart, health, enable. Batched like `batches`.
    pub undo: Vec<Pipeline>,
    /// After an undo: mark the release bad on every host that has it.
    pub undo_finish: Vec<Pipeline>,
    /// Hooks that run once for the whole run, on the machine running shipit.
    pub hooks: RunHooks,
    /// `on_failure` hooks that run on hosts, when the run fails.
    pub on_failure_hosts: Vec<Pipeline>,
    /// Continues an interrupted run: the journal is appended to, not
    /// started afresh.
    pub resume: bool,
    /// The dead run this one continues: journal entries keep its id, so
    /// the hosts' journals tell one run however many processes carried it.
    /// (`run` is this process's own id, which names the lock.)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resumes: Option<String>,
    /// The dead run was rolling back: this one only finishes that undo.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub undoing: bool,
    /// How each host records the run; the executor appends the outcome.
    pub bookkeeping: Bookkeeping,
    /// Things the user should know before running this (no health check…).
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FailurePolicy {
    pub action: OnFailure,
    pub max_fail_percentage: u8,
    /// Ctrl-C / SIGTERM also returns switched hosts (`--rollback-on-abort`).
    pub rollback_on_abort: bool,
}

/// A host found out of service when the plan was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct OutOfService {
    pub state: ServiceState,
    /// An interrupted run of shipit's left it out, and this run puts it
    /// back; otherwise it stays out for the whole run.
    pub returns: bool,
}

/// One batch of the rolling phase: its hosts' pipelines, run at once, how
/// long the batch is watched once every host is back in service, and the
/// gates evaluated during that watch.
#[derive(Debug, Clone, Serialize)]
pub struct Batch {
    pub pipelines: Vec<Pipeline>,
    #[serde(with = "humantime_serde_ms")]
    pub bake: Duration,
    /// The zone all its hosts are in, with `rollout.by_zone`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Evaluated during the bake (deploys only; see `gates`).
    pub gates: Vec<BatchGate>,
}

impl Batch {
    pub fn hosts(&self) -> impl Iterator<Item = &str> {
        self.pipelines.iter().map(|p| p.host.as_str())
    }
}

impl FailurePolicy {
    /// Whether a batch with `failed` of `hosts` failing stops the rollout.
    pub fn stops(&self, failed: usize, hosts: usize) -> bool {
        match self.action {
            OnFailure::Continue => failed * 100 > usize::from(self.max_fail_percentage) * hosts,
            OnFailure::Rollback | OnFailure::Pause => failed > 0,
        }
    }
}

/// Run-level hooks with `run_on = "local"`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunHooks {
    /// Before anything changes; a failure stops the run.
    pub before: Vec<Step>,
    /// Once every host has the release, before any switch; a failure stops
    /// the run.
    pub after_upload: Vec<Step>,
    /// After a successful run (after_deploy / after_rollback).
    pub after: Vec<Step>,
    /// After a failed run.
    pub on_failure: Vec<Step>,
}

/// A host taking part in the run, with what it ran before.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedHost {
    pub name: String,
    pub address: String,
    /// What the host ran before the run: what `current` pointed to when
    /// the plan was made or, resuming, when the dead run began. `None` on
    /// a dry run, which does not read the hosts, or on a host never
    /// deployed to. An undo returns the host here.
    pub before: Option<ReleaseId>,
    /// What it runs as the plan is made: `before`, except on a resumed run
    /// (hosts the dead run switched run the new release).
    pub current: Option<ReleaseId>,
    /// True if the host is already where the run would take it (a
    /// rollback target it runs already, or a resumed run it finished).
    pub unchanged: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Taken out of the load balancer by an operator before the run
    /// (maintenance or drain): it gets the release but stays out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub left_out: Option<ServiceState>,
    /// The role whose settings (`[roles.NAME.*]`) its pipeline follows;
    /// `None`: the stage's own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
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
    /// The longest this step's command may run (`app.restart_timeout`),
    /// within `ssh.command_timeout`; none: only that one bounds it.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_millis"
    )]
    pub timeout: Option<std::time::Duration>,
}

impl Step {
    pub fn new(kind: StepKind, action: Action) -> Step {
        Step {
            kind,
            action,
            timeout: None,
        }
    }
}

fn serialize_millis<S: serde::Serializer>(
    d: &Option<std::time::Duration>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_u64(d.as_millis() as u64),
        None => s.serialize_none(),
    }
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
    /// The watch of a batch back in service (`rollout.bake`).
    Bake,
    /// The watch of a host for `health.min_healthy_time` after it is back
    /// in service.
    #[serde(rename = "min_healthy_time")]
    MinHealthyTime,
    /// A `[[gates]]` check during the watch.
    Gate,
    MarkBad,
    Cleanup,
    #[serde(rename = "before_deploy")]
    BeforeDeploy,
    #[serde(rename = "after_upload")]
    AfterUpload,
    #[serde(rename = "before_switch")]
    BeforeSwitch,
    #[serde(rename = "after_switch")]
    AfterSwitch,
    #[serde(rename = "after_deploy")]
    AfterDeploy,
    #[serde(rename = "after_rollback")]
    AfterRollback,
    #[serde(rename = "on_failure")]
    OnFailure,
}

impl StepKind {
    pub fn is_hook(self) -> bool {
        matches!(
            self,
            StepKind::BeforeDeploy
                | StepKind::AfterUpload
                | StepKind::BeforeSwitch
                | StepKind::AfterSwitch
                | StepKind::AfterDeploy
                | StepKind::AfterRollback
                | StepKind::OnFailure
        )
    }

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
            StepKind::Bake => "bake",
            StepKind::MinHealthyTime => "min_healthy_time",
            StepKind::Gate => "gate",
            StepKind::MarkBad => "mark-bad",
            StepKind::Cleanup => "cleanup",
            StepKind::BeforeDeploy => "before_deploy",
            StepKind::AfterUpload => "after_upload",
            StepKind::BeforeSwitch => "before_switch",
            StepKind::AfterSwitch => "after_switch",
            StepKind::AfterDeploy => "after_deploy",
            StepKind::AfterRollback => "after_rollback",
            StepKind::OnFailure => "on_failure",
        }
    }
}

/// In JSON (docs/events.md) an HTTP check keeps its `http` type and
/// fields; a command check is `command-check`.
#[derive(Debug, Clone)]
pub enum Action {
    /// A command on the pipeline's host.
    Remote { cmd: Cmd },
    /// A command on the pipeline's host, with the release archive on stdin.
    Upload { cmd: Cmd },
    /// A command on the machine running shipit.
    Local { cmd: Cmd },
    /// A health check of the pipeline's host, polled until it passes.
    Health { check: HealthCheck },
    /// Taking the pipeline's host out of the load balancer, or putting it
    /// back, by the stage's `[lb]` driver.
    Lb { lb: LbAction },
    /// Nothing to do, and why (shown by dry runs).
    Nothing { reason: String },
}

impl Serialize for Action {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        #[serde(rename_all = "kebab-case", tag = "type")]
        enum Shown<'a> {
            Remote { cmd: &'a Cmd },
            Upload { cmd: &'a Cmd },
            Local { cmd: &'a Cmd },
            Http { check: &'a HealthCheck },
            CommandCheck { check: &'a HealthCheck },
            Lb { lb: &'a LbAction },
            Nothing { reason: &'a str },
        }
        match self {
            Action::Remote { cmd } => Shown::Remote { cmd },
            Action::Upload { cmd } => Shown::Upload { cmd },
            Action::Local { cmd } => Shown::Local { cmd },
            Action::Health { check } => match check.kind {
                CheckKind::Http { .. } => Shown::Http { check },
                CheckKind::Command { .. } => Shown::CommandCheck { check },
            },
            Action::Lb { lb } => Shown::Lb { lb },
            Action::Nothing { reason } => Shown::Nothing { reason },
        }
        .serialize(s)
    }
}

/// A health check as a plan holds it: what to ask, and when the answers
/// count as healthy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthCheck {
    #[serde(flatten)]
    pub kind: CheckKind,
    /// How long the host may take to pass.
    #[serde(with = "humantime_serde_ms")]
    pub timeout: Duration,
    #[serde(with = "humantime_serde_ms")]
    pub interval: Duration,
    /// How long one request, or one run of the command, may take.
    #[serde(with = "humantime_serde_ms")]
    pub request_timeout: Duration,
    /// Passing checks in a row needed.
    pub healthy_threshold: u32,
    /// Failures this soon after the restart do not count in the watch.
    #[serde(with = "humantime_serde_ms")]
    pub start_period: Duration,
    /// Once back in service, the host is watched this long.
    #[serde(with = "humantime_serde_ms")]
    pub min_healthy_time: Duration,
}

/// What one try of a health check does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum CheckKind {
    /// `GET url`, from the machine running shipit or on the host.
    Http {
        url: String,
        expect_status: u16,
        expect_body: Option<String>,
        from: CheckFrom,
    },
    /// A command on the host; exit 0 is healthy.
    Command { cmd: Cmd },
}

impl HealthCheck {
    /// What one try asks, for output: `GET URL`, `GET URL on the host`,
    /// or the command.
    pub fn target(&self) -> String {
        match &self.kind {
            CheckKind::Http {
                url,
                from: CheckFrom::Controller,
                ..
            } => format!("GET {url}"),
            CheckKind::Http {
                url,
                from: CheckFrom::Host,
                ..
            } => format!("GET {url} on the host"),
            CheckKind::Command { cmd } => format!("`{}`", command_line(cmd)),
        }
    }
}

/// The line the user wrote, without the variables and directory shipit
/// adds around it (those are shown with the restart step).
pub fn command_line(cmd: &Cmd) -> String {
    match cmd.argv.as_slice() {
        [sh, c, line] if sh.value() == "sh" && c.value() == "-c" => line.value().to_string(),
        _ => cmd.display(),
    }
}

/// Durations in JSON as milliseconds.
pub(crate) mod humantime_serde_ms {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_u128(d.as_millis())
    }
}

/// What each host writes about the run: journal entries as it goes and a
/// revisions.log line at the end.
#[derive(Debug, Clone, Serialize)]
pub struct Bookkeeping {
    #[serde(skip)]
    pub layout: Layout,
    pub by: String,
    /// Digest of the release archive, recorded so a resumed run can tell
    /// whether it ships the same thing.
    pub digest: String,
}

impl Plan {
    /// The run id journal entries carry: the dead run's when resuming.
    pub fn journal_run(&self) -> &str {
        self.resumes.as_deref().unwrap_or(&self.run)
    }

    /// Every pipeline of the plan, phase by phase.
    pub fn pipelines(&self) -> impl Iterator<Item = &Pipeline> {
        self.prepare
            .iter()
            .chain(self.batches.iter().flat_map(|b| &b.pipelines))
            .chain(self.finish.iter())
    }

    /// The rolling pipeline of `host`, if it rolls in this run.
    pub fn rolling(&self, host: &str) -> Option<&Pipeline> {
        self.batches
            .iter()
            .flat_map(|b| &b.pipelines)
            .find(|p| p.host == host)
    }

    pub fn host(&self, name: &str) -> Option<&PlannedHost> {
        self.hosts.iter().find(|h| h.name == name)
    }

    /// The part `host` rolls in, if it rolls in this run.
    pub fn part_of(&self, host: &str) -> Option<&Part> {
        self.parts
            .iter()
            .find(|p| p.hosts.iter().any(|h| h == host))
    }

    /// The values of every secret word in the plan's commands, for masking
    /// them wherever they might show up (command output, errors).
    pub fn secrets(&self) -> Vec<String> {
        let hooks = &self.hooks;
        let gate_commands =
            self.batches
                .iter()
                .flat_map(|b| &b.gates)
                .flat_map(|g| match &g.measure {
                    Measure::Command { commands, .. } => commands.iter().map(|c| &c.cmd).collect(),
                    _ => Vec::new(),
                });
        let steps = self
            .pipelines()
            .chain(&self.undo)
            .chain(&self.undo_finish)
            .chain(&self.on_failure_hosts)
            .flat_map(|p| &p.steps)
            .chain(&hooks.before)
            .chain(&hooks.after_upload)
            .chain(&hooks.after)
            .chain(&hooks.on_failure);
        let mut all: Vec<String> = steps
            .flat_map(|s| match &s.action {
                Action::Remote { cmd } | Action::Upload { cmd } | Action::Local { cmd } => {
                    vec![cmd]
                }
                Action::Lb { lb } => lb.member.commands.values().collect(),
                Action::Health { check } => match &check.kind {
                    CheckKind::Command { cmd } => vec![cmd],
                    CheckKind::Http { .. } => Vec::new(),
                },
                Action::Nothing { .. } => Vec::new(),
            })
            .chain(gate_commands)
            .flat_map(|cmd| cmd.secrets().into_iter().map(str::to_string))
            .collect();
        all.sort();
        all.dedup();
        all
    }

    /// Hosts that change in this run.
    pub fn changing_hosts(&self) -> impl Iterator<Item = &PlannedHost> {
        self.hosts.iter().filter(|h| !h.unchanged)
    }
}

#[cfg(test)]
mod tests;
