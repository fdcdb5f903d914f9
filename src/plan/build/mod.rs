//! The planners: configuration + host facts → [`Plan`]. Pure: no clock, no
//! network, no environment; the caller passes the release id and who runs it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::config::{Hook, Host, OnFailure, Stage, Var};
use crate::host::releases::{self, RollbackChoice, RollbackError};
use crate::host::{Current, HostFacts, Layout, ReleaseId};
use crate::lb::ServiceState;
use crate::shell::Word;

use super::gates;
use super::roles;
use super::shape::{self, Shape};
use super::steps::{HostSteps, RunEnv};
use super::{
    Action, Batch, Bookkeeping, FailurePolicy, Operation, OutOfService, Pipeline, Plan,
    PlannedHost, RunHooks, Step, StepKind,
};

mod deploy;
mod rollback;

pub use deploy::deploy;
pub use rollback::rollback;

/// What the load balancer said about each host of the stage before the
/// run; hosts it does not list count as in service.
pub type Service = BTreeMap<String, ServiceState>;

pub struct DeployInput<'a> {
    pub stage: &'a Stage,
    /// The hosts taking part, in inventory order.
    pub hosts: &'a [Host],
    pub release: ReleaseId,
    pub revision: String,
    /// What each host reported; `None` for a dry run.
    pub facts: Option<&'a BTreeMap<String, HostFacts>>,
    pub run: Run,
    /// Continue the interrupted run that was deploying `release`: hosts it
    /// finished are left alone, hosts that have the release skip the upload.
    pub resume: bool,
    /// Digest of the archive, for the journal.
    pub digest: String,
    /// `[env]`, resolved (secrets marked).
    pub env: &'a [(String, Word)],
    /// The load balancer's view of the stage's hosts; `None` for a dry run.
    pub service: Option<&'a Service>,
}

pub struct RollbackInput<'a> {
    pub stage: &'a Stage,
    pub hosts: &'a [Host],
    pub to: Option<ReleaseId>,
    /// Rollback needs to know what the hosts have: always real facts.
    pub facts: &'a BTreeMap<String, HostFacts>,
    pub run: Run,
    /// `[env]`, resolved (secrets marked).
    pub env: &'a [(String, Word)],
    /// The load balancer's view of the stage's hosts.
    pub service: Option<&'a Service>,
}

/// Who runs this and how, for every plan.
#[derive(Debug, Clone)]
pub struct Run {
    pub id: String,
    pub by: String,
    pub rollback_on_abort: bool,
    /// Where commands for the machine running shipit run: deploy.toml's
    /// directory, so relative paths in them mean what they mean there.
    pub local_dir: Option<String>,
    /// `deploy --resume`: the dead run this one continues.
    pub resumes: Option<Resumes>,
}

/// The dead run a resumed one continues, as the hosts' journals tell it.
#[derive(Debug, Clone)]
pub struct Resumes {
    /// Its id, which the journal entries keep.
    pub run: String,
    /// It was rolling back when it died: the resumed run finishes that.
    pub undoing: bool,
}

/// Why a plan cannot be made. Found before anything changes on any host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanError {
    /// Per-host problems, each naming the host and what to do.
    Hosts(Vec<String>),
    Rollback(RollbackError),
    /// `max_unavailable` leaves no room to take any host out.
    Capacity(String),
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanError::Hosts(problems) => {
                write!(f, "not deploying; nothing was changed on any host:")?;
                for p in problems {
                    write!(f, "\n  {p}")?;
                }
                Ok(())
            }
            PlanError::Rollback(e) => write!(f, "{e}"),
            PlanError::Capacity(why) => {
                write!(f, "not starting; nothing was changed on any host: {why}")
            }
        }
    }
}

impl std::error::Error for PlanError {}

/// The stage's rollout settings resolved for a run that rolls `rolling`
/// hosts. `max_unavailable` is of the stage's hosts and defaults to the
/// largest batch; a share that rounds down to 0 is refused.
pub fn rollout_shape(stage: &Stage, rolling: usize) -> Result<Shape, PlanError> {
    let rollout = &stage.rollout;
    let mut shape = Shape {
        ramp: rollout.ramp.clone(),
        bake: rollout.bake.clone(),
        by_zone: rollout.by_zone,
        max_unavailable: 0,
        percent_of: rolling,
    };
    shape.max_unavailable = match rollout.max_unavailable {
        None => shape.largest(),
        Some(limit) => match limit.limit_of(stage.hosts.len()) {
            0 => {
                return Err(PlanError::Capacity(format!(
                    "rollout.max_unavailable = {limit} of the {} hosts of stage {} is 0 hosts, so no host could \
                     ever be taken out of service; raise it",
                    stage.hosts.len(),
                    stage.name
                )));
            }
            n => n,
        },
    };
    Ok(shape)
}

/// Hosts of the stage that the load balancer reported out of service;
/// those an interrupted run of shipit's left out (`ours`) come back with
/// this run.
fn out_at_start(
    stage: &Stage,
    service: Option<&Service>,
    ours: &dyn Fn(&Host) -> bool,
) -> BTreeMap<String, OutOfService> {
    let Some(service) = service else {
        return BTreeMap::new();
    };
    stage
        .hosts
        .iter()
        .filter_map(|h| {
            let state = *service.get(&h.name)?;
            state.is_out().then(|| {
                let returns = ours(h);
                (h.name.clone(), OutOfService { state, returns })
            })
        })
        .collect()
}

/// For each host, the hook points where it runs the `run_on = "once"`
/// hooks: it is the first host of the run whose settings (its role's or
/// the stage's) have that list. Without roles, the run's first host.
fn once_points(stage: &Stage, hosts: &[Host]) -> BTreeMap<String, BTreeSet<StepKind>> {
    let lists = |s: &Stage| -> Vec<(StepKind, Vec<Hook>)> {
        let h = &s.hooks;
        vec![
            (StepKind::BeforeDeploy, h.before_deploy.clone()),
            (StepKind::AfterUpload, h.after_upload.clone()),
            (StepKind::BeforeSwitch, h.before_switch.clone()),
            (StepKind::AfterSwitch, h.after_switch.clone()),
            (StepKind::AfterDeploy, h.after_deploy.clone()),
            (StepKind::AfterRollback, h.after_rollback.clone()),
            (StepKind::OnFailure, h.on_failure.clone()),
        ]
    };
    let key = |list: &[Hook]| -> Vec<(String, bool)> {
        list.iter()
            .map(|h| {
                (
                    h.run.source().to_string(),
                    h.run_on == crate::config::RunOn::Once,
                )
            })
            .collect()
    };
    let mut seen: BTreeSet<(StepKind, Vec<(String, bool)>)> = BTreeSet::new();
    hosts
        .iter()
        .map(|host| {
            let points = lists(stage.for_host(host))
                .into_iter()
                .filter(|(kind, list)| seen.insert((*kind, key(list))))
                .map(|(kind, _)| kind)
                .collect();
            (host.name.clone(), points)
        })
        .collect()
}

/// Refuses a run whose health check would wait for `{revision}` while
/// the revision is unknown: every body contains the empty text, so the
/// check could not tell the releases apart.
fn revision_needed(
    stage: &Stage,
    hosts: &[&Host],
    revision_of: &dyn Fn(&Host) -> String,
    why: &str,
) -> Result<(), PlanError> {
    // Hosts with the same reason are named together.
    let mut by_why: Vec<(String, Vec<&str>)> = Vec::new();
    for h in hosts
        .iter()
        .filter(|h| uses_revision(stage.for_host(h)) && revision_of(h).is_empty())
    {
        match by_why.iter_mut().find(|(w, _)| w == why) {
            Some((_, names)) => names.push(&h.name),
            None => by_why.push((why.to_string(), vec![&h.name])),
        }
    }
    let problems: Vec<String> = by_why
        .into_iter()
        .map(|(why, names)| {
            format!(
                "{}: the health check uses {{revision}}, but {why}",
                names.join(", ")
            )
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(PlanError::Hosts(problems))
    }
}

/// The batches, with each host's rolling pipeline in its place.
fn assemble(
    shaped: Vec<shape::BatchShape>,
    mut pipelines: BTreeMap<String, Pipeline>,
) -> Vec<Batch> {
    shaped
        .into_iter()
        .map(|b| Batch {
            pipelines: b.hosts.iter().filter_map(|h| pipelines.remove(h)).collect(),
            bake: b.bake,
            zone: b.zone,
            gates: Vec::new(),
        })
        .collect()
}

/// For each host, the hosts of its batch (SHIPIT_BATCH_HOSTS).
fn batch_members(shaped: &[shape::BatchShape]) -> BTreeMap<String, Vec<String>> {
    shaped
        .iter()
        .flat_map(|b| b.hosts.iter().map(move |h| (h.clone(), b.hosts.clone())))
        .collect()
}

fn policy(stage: &Stage, run: &Run) -> FailurePolicy {
    FailurePolicy {
        action: stage.rollout.on_failure,
        max_fail_percentage: stage.rollout.max_fail_percentage,
        rollback_on_abort: run.rollback_on_abort,
    }
}

/// An operator took `host` out of the load balancer before the run (drain
/// or maintenance): it gets the release, but shipit leaves it out. A host
/// an interrupted run of shipit's left drained is not the operator's.
fn left_out(out: &BTreeMap<String, OutOfService>, host: &Host) -> Option<ServiceState> {
    out.get(&host.name)
        .filter(|o| o.state.set_by_operator() && !o.returns)
        .map(|o| o.state)
}

/// Whether an interrupted run of shipit's left `host` out of service (its
/// journal says so).
fn left_by_shipit(facts: Option<&BTreeMap<String, HostFacts>>, host: &Host) -> bool {
    facts
        .and_then(|f| f.get(&host.name))
        .and_then(|f| f.last_run.as_ref())
        .is_some_and(|t| t.interrupted() && t.left_drained())
}

/// Puts back hosts that an interrupted run left drained, if the release
/// they run answers its health check: one quick check, then enable.
pub fn repair(
    stage: &Stage,
    hosts: &[Host],
    facts: &BTreeMap<String, HostFacts>,
    local_dir: Option<&str>,
) -> Vec<Pipeline> {
    let names: Vec<String> = hosts.iter().map(|h| h.name.clone()).collect();
    let run = RunEnv {
        env: &[],
        hosts: &names,
        revision: "",
        local_dir,
    };
    hosts
        .iter()
        .filter_map(|host| {
            let f = facts.get(&host.name)?;
            let trace = f.last_run.as_ref()?;
            if !(trace.interrupted() && trace.left_drained()) {
                return None;
            }
            let current = f.current.release()?;
            let revision = f
                .release(current)
                .map(|r| r.revision.clone())
                .unwrap_or_default();
            let settings = stage.for_host(host);
            let steps: Vec<Step> =
                HostSteps::new(settings, Some(host), current, None, Operation::Deploy, run)
                    .revision(&revision)
                    .rollout(false)
                    .into_iter()
                    .filter(|s| matches!(s.kind, StepKind::Health | StepKind::Enable))
                    .map(|mut s| {
                        if let Action::Health { check } = &mut s.action {
                            // The host had its chance; one look is enough.
                            check.healthy_threshold = 1;
                            check.min_healthy_time = std::time::Duration::ZERO;
                            check.timeout =
                                check.request_timeout.max(check.interval) + check.interval;
                        }
                        s
                    })
                    .collect();
            (!steps.is_empty()).then(|| Pipeline {
                host: host.name.clone(),
                steps,
            })
        })
        .collect()
}

/// Problems that would make a deploy fail halfway, found up front.
fn preflight(
    stage: &Stage,
    hosts: &[Host],
    facts: &BTreeMap<String, HostFacts>,
) -> Result<(), PlanError> {
    let layout = Layout::new(&stage.app.deploy_to);
    let mut problems = Vec::new();
    for host in hosts {
        let Some(f) = facts.get(&host.name) else {
            problems.push(format!("{}: no facts (probe did not run)", host.name));
            continue;
        };
        if f.deploy_to_exists && !f.deploy_to_writable {
            problems.push(format!(
                "{}: {} is not writable by the SSH user; fix its owner or permissions",
                host.name,
                layout.deploy_to()
            ));
        }
        if f.current == Current::NotALink {
            problems.push(format!(
                "{}: {} is a real directory, not a symlink; move it away (shipit will not delete it)",
                host.name,
                layout.current()
            ));
        }
        for missing in &f.missing_shared {
            problems.push(format!(
                "{}: shared file {}/{missing} is missing; create it on the host (shipit never creates shared files)",
                host.name,
                layout.shared()
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(PlanError::Hosts(problems))
    }
}

/// Whether `settings`' health check waits for `{revision}`.
fn uses_revision(settings: &Stage) -> bool {
    settings
        .health
        .as_ref()
        .is_some_and(|h| h.templates().iter().any(|t| t.uses(Var::Revision)))
}

/// The health check of `host` for `release` (whose revision is
/// `revision`) as a run polls it, without `[env]`: for `shipit STAGE check`.
pub fn health_check(
    stage: &Stage,
    host: &Host,
    release: &ReleaseId,
    revision: &str,
) -> Option<super::HealthCheck> {
    let names = [host.name.clone()];
    let run = RunEnv {
        env: &[],
        hosts: &names,
        revision,
        local_dir: None,
    };
    HostSteps::new(
        stage.for_host(host),
        Some(host),
        release,
        None,
        Operation::Deploy,
        run,
    )
    .health_check()
}

fn warnings(stage: &Stage, rolling: &[&Host], out: &BTreeMap<String, OutOfService>) -> Vec<String> {
    let mut warnings: Vec<String> = out
        .iter()
        .filter(|(_, o)| o.state.set_by_operator() && !o.returns)
        .map(|(host, o)| {
            format!(
                "{host}: in {} on the load balancer; if this run rolls it, it gets the release but stays out (shipit leaves it as found)",
                o.state.as_str()
            )
        })
        .collect();
    // A role that sets its own [lb] or [health] means what it says (a
    // worker has no load balancer); the stage's own settings are warned of.
    let own: Vec<&&Host> = rolling
        .iter()
        .filter(|h| stage.role_of(h).is_none())
        .collect();
    if stage.lb.is_none() && (!own.is_empty() || rolling.is_empty()) {
        warnings.push(
            "no load balancer configured ([lb] driver = \"none\" or no [lb]): requests sent to a host while it restarts will fail".into(),
        );
    }
    let unchecked: Vec<&str> = rolling
        .iter()
        .filter(|h| stage.for_host(h).health.is_none())
        .map(|h| h.name.as_str())
        .collect();
    if stage.health.is_none() && (rolling.is_empty() || unchecked.len() == rolling.len()) {
        warnings.push(
            "no health check configured ([health]): a host counts as done as soon as its restart command exits 0"
                .into(),
        );
    } else if !unchecked.is_empty() {
        warnings.push(format!(
            "no health check configured for {} (their role's [health]): they count as done as soon as their restart \
             command exits 0",
            unchecked.join(", ")
        ));
    }
    warnings
}
