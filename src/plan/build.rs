//! The planners: configuration + host facts → [`Plan`]. Pure: no clock, no
//! network, no environment; the caller passes the release id and who runs it.

use std::collections::BTreeMap;
use std::fmt;

use crate::config::{Host, Stage, Vars};
use crate::host::releases::{self, RollbackChoice, RollbackError};
use crate::host::{Current, HostFacts, Layout, ReleaseId};
use crate::shell::{Cmd, Word};

use super::{
    Action, Bookkeeping, FailurePolicy, HttpCheck, Operation, Pipeline, Plan, PlannedHost, Step,
    StepKind,
};
use crate::config::OnFailure;

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
}

pub struct RollbackInput<'a> {
    pub stage: &'a Stage,
    pub hosts: &'a [Host],
    pub to: Option<ReleaseId>,
    /// Rollback needs to know what the hosts have: always real facts.
    pub facts: &'a BTreeMap<String, HostFacts>,
    pub run: Run,
}

/// Who runs this and how, for every plan.
#[derive(Debug, Clone)]
pub struct Run {
    pub id: String,
    pub by: String,
    pub rollback_on_abort: bool,
}

/// Why a plan cannot be made. Found before anything changes on any host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanError {
    /// Per-host problems, each naming the host and what to do.
    Hosts(Vec<String>),
    Rollback(RollbackError),
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
        }
    }
}

impl std::error::Error for PlanError {}

/// Splits hosts into rolling batches.
pub fn batches<T: Clone>(hosts: &[T], per_batch: usize) -> Vec<Vec<T>> {
    hosts.chunks(per_batch.max(1)).map(<[T]>::to_vec).collect()
}

pub fn deploy(input: &DeployInput<'_>) -> Result<Plan, PlanError> {
    let stage = input.stage;
    let app = &stage.app;
    let layout = Layout::new(&app.deploy_to);
    if let Some(facts) = input.facts {
        preflight(stage, input.hosts, facts)?;
    }
    let facts_of = |host: &Host| input.facts.and_then(|f| f.get(&host.name));
    let before = |host: &Host| facts_of(host).and_then(|f| f.current.release().cloned());
    // Resuming: hosts the interrupted run finished stay as they are.
    let done = |host: &Host| -> bool {
        input.resume
            && facts_of(host).is_some_and(|f| {
                f.current.release() == Some(&input.release)
                    && f.last_run
                        .as_ref()
                        .is_some_and(|r| r.release == input.release.as_str() && r.host_done())
            })
    };
    let has_release = |host: &Host| {
        facts_of(host)
            .and_then(|f| f.release(&input.release))
            .is_some_and(|r| r.finished)
    };

    let mut prepare = Vec::new();
    let mut rolling = Vec::new();
    let mut finish = Vec::new();
    let mut undo = Vec::new();
    let mut undo_finish = Vec::new();
    for host in input.hosts {
        let previous = before(host);
        if let Some(previous) = previous.as_ref().filter(|p| **p != input.release) {
            let back = HostContext::new(
                stage,
                host,
                previous,
                Some(&input.release),
                Operation::Rollback,
            );
            undo.push(Pipeline {
                host: host.name.clone(),
                steps: back.rollout_steps(&layout),
            });
        }
        undo_finish.push(Pipeline {
            host: host.name.clone(),
            steps: vec![Step {
                kind: StepKind::MarkBad,
                action: Action::Remote {
                    cmd: layout.mark_bad(
                        &input.release,
                        &format!("failed deploy rolled back by {}", input.run.by),
                    ),
                },
            }],
        });
        if done(host) {
            continue;
        }
        let ctx = HostContext::new(
            stage,
            host,
            &input.release,
            previous.as_ref(),
            Operation::Deploy,
        );
        rolling.push(Pipeline {
            host: host.name.clone(),
            steps: ctx.rollout_steps(&layout),
        });
        if input.resume && has_release(host) {
            continue;
        }
        let mut steps = vec![Step {
            kind: StepKind::Upload,
            action: Action::Upload {
                cmd: layout.unpack(&input.release),
            },
        }];
        if !app.shared_dirs.is_empty() || !app.shared_files.is_empty() {
            steps.push(Step {
                kind: StepKind::LinkShared,
                action: Action::Remote {
                    cmd: layout.link_shared(&input.release, &app.shared_dirs, &app.shared_files),
                },
            });
        }
        steps.push(Step {
            kind: StepKind::Finish,
            action: Action::Remote {
                cmd: layout.finish(&input.release, &input.revision),
            },
        });
        prepare.push(Pipeline {
            host: host.name.clone(),
            steps,
        });
    }
    for host in input.hosts {
        let cleanup = match facts_of(host) {
            Some(facts) => {
                let before = before(host);
                let mut protect = vec![&input.release];
                protect.extend(before.iter());
                let mut after = facts.releases.clone();
                if facts.release(&input.release).is_none() {
                    after.push(crate::host::ReleaseInfo {
                        id: input.release.clone(),
                        finished: true,
                        bad: false,
                        revision: input.revision.clone(),
                    });
                }
                let remove =
                    releases::cleanup(&after, Some(&input.release), app.keep_releases, &protect);
                if remove.is_empty() {
                    Action::Nothing {
                        reason: format!(
                            "nothing to remove (keep_releases = {})",
                            app.keep_releases
                        ),
                    }
                } else {
                    Action::Remote {
                        cmd: layout.remove_releases(&remove),
                    }
                }
            }
            None => Action::Nothing {
                reason: format!(
                    "keep the newest {} finished releases; which ones go is decided from what the host has",
                    app.keep_releases
                ),
            },
        };
        finish.push(Pipeline {
            host: host.name.clone(),
            steps: vec![Step {
                kind: StepKind::Cleanup,
                action: cleanup,
            }],
        });
    }

    let per_batch = stage.rollout.batch_size.hosts_per_batch(rolling.len());
    Ok(Plan {
        run: input.run.id.clone(),
        operation: Operation::Deploy,
        app: app.name.clone(),
        stage: stage.name.clone(),
        release: input.release.clone(),
        revision: input.revision.clone(),
        hosts: input
            .hosts
            .iter()
            .map(|h| PlannedHost {
                name: h.name.clone(),
                address: h.address.clone(),
                before: before(h),
                unchanged: done(h),
            })
            .collect(),
        prepare,
        batches: batches(&rolling, per_batch),
        finish,
        on_failure: policy(stage, &input.run, per_batch),
        undo,
        undo_finish,
        resume: input.resume,
        bookkeeping: Bookkeeping {
            layout,
            by: input.run.by.clone(),
            digest: input.digest.clone(),
        },
        warnings: warnings(stage),
    })
}

fn policy(stage: &Stage, run: &Run, per_batch: usize) -> FailurePolicy {
    FailurePolicy {
        action: stage.rollout.on_failure,
        max_fail_percentage: stage.rollout.max_fail_percentage,
        rollback_on_abort: run.rollback_on_abort,
        batch_size: per_batch,
    }
}

/// Puts back hosts that an interrupted run left drained, if the release
/// they run answers its health check: one quick check, then enable.
pub fn repair(stage: &Stage, hosts: &[Host], facts: &BTreeMap<String, HostFacts>) -> Vec<Pipeline> {
    let layout = Layout::new(&stage.app.deploy_to);
    hosts
        .iter()
        .filter_map(|host| {
            let f = facts.get(&host.name)?;
            let trace = f.last_run.as_ref()?;
            if !(trace.interrupted() && trace.left_drained()) {
                return None;
            }
            let current = f.current.release()?;
            let ctx = HostContext::new(stage, host, current, None, Operation::Deploy);
            let steps: Vec<Step> = ctx
                .rollout_steps(&layout)
                .into_iter()
                .filter(|s| matches!(s.kind, StepKind::Health | StepKind::Enable))
                .map(|mut s| {
                    if let Action::Http { check } = &mut s.action {
                        // The host had its chance; one look is enough.
                        check.timeout = check.request_timeout.max(check.interval) + check.interval;
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

pub fn rollback(input: &RollbackInput<'_>) -> Result<Plan, PlanError> {
    let stage = input.stage;
    let layout = Layout::new(&stage.app.deploy_to);
    let fleet: Vec<(&str, &HostFacts)> = input
        .hosts
        .iter()
        .filter_map(|h| input.facts.get(&h.name).map(|f| (h.name.as_str(), f)))
        .collect();
    let RollbackChoice { target, abandoned } =
        releases::rollback_target(&fleet, input.to.as_ref()).map_err(PlanError::Rollback)?;
    let not_a_link: Vec<String> = fleet
        .iter()
        .filter(|(_, f)| f.current == Current::NotALink)
        .map(|(h, _)| {
            format!(
                "{h}: {} is not a symlink; move it away first",
                layout.current()
            )
        })
        .collect();
    if !not_a_link.is_empty() {
        return Err(PlanError::Hosts(not_a_link));
    }

    let before = |host: &Host| {
        input
            .facts
            .get(&host.name)
            .and_then(|f| f.current.release().cloned())
    };
    let mut rolling = Vec::new();
    let mut finish = Vec::new();
    let mut planned = Vec::new();
    let note = format!("rolled back from by {}", input.run.by);
    for host in input.hosts {
        let previous = before(host);
        let unchanged = previous.as_ref() == Some(&target);
        if !unchanged {
            let ctx =
                HostContext::new(stage, host, &target, previous.as_ref(), Operation::Rollback);
            rolling.push(Pipeline {
                host: host.name.clone(),
                steps: ctx.rollout_steps(&layout),
            });
        }
        let host_facts = input.facts.get(&host.name);
        let to_mark: Vec<Step> = abandoned
            .iter()
            .filter(|id| host_facts.is_some_and(|f| f.release(id).is_some()))
            .map(|id| Step {
                kind: StepKind::MarkBad,
                action: Action::Remote {
                    cmd: layout.mark_bad(id, &note),
                },
            })
            .collect();
        if !to_mark.is_empty() {
            finish.push(Pipeline {
                host: host.name.clone(),
                steps: to_mark,
            });
        }
        planned.push(PlannedHost {
            name: host.name.clone(),
            address: host.address.clone(),
            before: previous,
            unchanged,
        });
    }

    let per_batch = stage.rollout.batch_size.hosts_per_batch(rolling.len());
    let revision = fleet
        .iter()
        .find_map(|(_, f)| f.release(&target).map(|r| r.revision.clone()))
        .unwrap_or_default();
    Ok(Plan {
        run: input.run.id.clone(),
        operation: Operation::Rollback,
        app: stage.app.name.clone(),
        stage: stage.name.clone(),
        release: target,
        revision,
        hosts: planned,
        prepare: Vec::new(),
        batches: batches(&rolling, per_batch),
        finish,
        // A failing rollback stops where it is: undoing it would return
        // hosts to the release being escaped.
        on_failure: FailurePolicy {
            action: OnFailure::Pause,
            ..policy(stage, &input.run, per_batch)
        },
        undo: Vec::new(),
        undo_finish: Vec::new(),
        resume: false,
        bookkeeping: Bookkeeping {
            layout,
            by: input.run.by.clone(),
            digest: String::new(),
        },
        warnings: warnings(stage),
    })
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

fn warnings(stage: &Stage) -> Vec<String> {
    let mut warnings = Vec::new();
    if stage.lb.drain.is_none() {
        warnings.push(
            "no load balancer configured ([lb]): requests sent to a host while it restarts will fail".into(),
        );
    }
    if stage.health.is_none() {
        warnings.push(
            "no health check configured ([health]): a host counts as done as soon as its restart command exits 0"
                .into(),
        );
    }
    warnings
}

/// One host's values for templates and the environment of its commands.
struct HostContext<'a> {
    stage: &'a Stage,
    vars: Vars,
    env: Vec<(String, Word)>,
}

impl<'a> HostContext<'a> {
    fn new(
        stage: &'a Stage,
        host: &Host,
        release: &ReleaseId,
        previous: Option<&ReleaseId>,
        operation: Operation,
    ) -> Self {
        let layout = Layout::new(&stage.app.deploy_to);
        let vars = stage.vars(host, release.as_str());
        let mut env: Vec<(String, Word)> = vec![
            ("SHIPIT_OPERATION".into(), operation.as_str().into()),
            ("SHIPIT_APP".into(), vars.app.clone().into()),
            ("SHIPIT_STAGE".into(), vars.stage.clone().into()),
            ("SHIPIT_HOST".into(), vars.name.clone().into()),
            ("SHIPIT_ADDRESS".into(), vars.address.clone().into()),
            ("SHIPIT_DEPLOY_TO".into(), vars.deploy_to.clone().into()),
            ("SHIPIT_RELEASE".into(), vars.release.clone().into()),
            ("SHIPIT_RELEASE_PATH".into(), layout.release(release).into()),
        ];
        if let Some(previous) = previous {
            env.push((
                "SHIPIT_PREVIOUS_RELEASE".into(),
                previous.to_string().into(),
            ));
        }
        HostContext { stage, vars, env }
    }

    /// drain → switch → restart → health → enable, leaving out what the
    /// stage does not configure.
    fn rollout_steps(&self, layout: &Layout) -> Vec<Step> {
        let release: ReleaseId = self
            .vars
            .release
            .parse()
            .expect("vars.release is a ReleaseId");
        let mut steps = Vec::new();
        let local = |template: &crate::config::Template| Action::Local {
            cmd: Cmd::shell(template.render_shell(&self.vars)).envs(self.env.clone()),
        };
        if let Some(drain) = &self.stage.lb.drain {
            steps.push(Step {
                kind: StepKind::Drain,
                action: local(drain),
            });
        }
        steps.push(Step {
            kind: StepKind::Switch,
            action: Action::Remote {
                cmd: layout.switch(&release),
            },
        });
        if let Some(restart) = &self.stage.app.restart {
            steps.push(Step {
                kind: StepKind::Restart,
                action: Action::Remote {
                    cmd: Cmd::shell(restart.render_shell(&self.vars))
                        .envs(self.env.clone())
                        .cwd(layout.release(&release)),
                },
            });
        }
        if let Some(health) = &self.stage.health {
            steps.push(Step {
                kind: StepKind::Health,
                action: Action::Http {
                    check: HttpCheck {
                        url: health.url.render_plain(&self.vars),
                        expect_status: health.expect_status,
                        expect_body: health
                            .expect_body
                            .as_ref()
                            .map(|b| b.render_plain(&self.vars)),
                        timeout: health.timeout,
                        interval: health.interval,
                        request_timeout: health.request_timeout,
                    },
                },
            });
        }
        if let Some(enable) = &self.stage.lb.enable {
            steps.push(Step {
                kind: StepKind::Enable,
                action: local(enable),
            });
        }
        steps
    }
}
