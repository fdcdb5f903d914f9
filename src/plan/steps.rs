//! One host's steps: the rollout pipeline (drain → switch → restart →
//! health → enable), hooks at their points, and the environment every
//! command on that host gets.

use std::collections::BTreeSet;

use crate::config::{HealthKind, Hook, Host, RunOn, Stage, Template, Vars};
use crate::host::{Layout, ReleaseId};
use crate::lb::{HostRef, LbAction, LbOp};
use crate::shell::{Cmd, Word};

use super::{Action, CheckKind, HealthCheck, Operation, Step, StepKind};

/// What every host of a run shares: the `[env]` values (resolved), the
/// hosts taking part and the revision.
#[derive(Debug, Clone, Copy)]
pub(super) struct RunEnv<'a> {
    pub env: &'a [(String, Word)],
    pub hosts: &'a [String],
    pub revision: &'a str,
    /// Working directory of commands run on the machine running shipit.
    pub local_dir: Option<&'a str>,
}

/// Builds the steps of one host for one target release.
#[derive(Clone)]
pub(super) struct HostSteps<'a> {
    stage: &'a Stage,
    layout: Layout,
    release: ReleaseId,
    vars: Vars,
    /// SHIPIT_* variables, for every command of this host.
    shipit_env: Vec<(String, Word)>,
    /// `[env]`, for commands on the host (restart, host hooks).
    user_env: &'a [(String, Word)],
    local_dir: Option<&'a str>,
    /// Hook points where this host runs the `run_on = "once"` hooks.
    once: BTreeSet<StepKind>,
}

impl<'a> HostSteps<'a> {
    /// Steps for `host`, or for the run as a whole (`None`: run-level local
    /// hooks, which get no SHIPIT_HOST).
    pub fn new(
        stage: &'a Stage,
        host: Option<&Host>,
        release: &ReleaseId,
        previous: Option<&ReleaseId>,
        operation: Operation,
        run: RunEnv<'a>,
    ) -> Self {
        let layout = Layout::new(&stage.app.deploy_to);
        let vars = match host {
            Some(host) => stage.vars(host, release.as_str()),
            None => Vars {
                app: stage.app.name.clone(),
                port: stage.ssh.port.unwrap_or(22),
                user: stage.ssh.user.clone().unwrap_or_default(),
                stage: stage.name.clone(),
                deploy_to: stage.app.deploy_to.clone(),
                release: release.to_string(),
                ..Vars::default()
            },
        };
        let vars = Vars {
            revision: run.revision.to_string(),
            ..vars
        };
        let mut shipit_env: Vec<(String, Word)> = vec![
            ("SHIPIT_OPERATION".into(), operation.as_str().into()),
            ("SHIPIT_APP".into(), vars.app.clone().into()),
            ("SHIPIT_STAGE".into(), vars.stage.clone().into()),
        ];
        if host.is_some() {
            shipit_env.push(("SHIPIT_HOST".into(), vars.name.clone().into()));
            shipit_env.push(("SHIPIT_ADDRESS".into(), vars.address.clone().into()));
        }
        shipit_env.extend::<[(String, Word); 4]>([
            ("SHIPIT_DEPLOY_TO".into(), vars.deploy_to.clone().into()),
            ("SHIPIT_RELEASE".into(), vars.release.clone().into()),
            ("SHIPIT_RELEASE_PATH".into(), layout.release(release).into()),
            ("SHIPIT_HOSTS".into(), run.hosts.join(" ").into()),
        ]);
        if !run.revision.is_empty() {
            shipit_env.push(("SHIPIT_REVISION".into(), run.revision.into()));
        }
        if let Some(previous) = previous {
            shipit_env.push((
                "SHIPIT_PREVIOUS_RELEASE".into(),
                previous.to_string().into(),
            ));
        }
        HostSteps {
            stage,
            layout,
            release: release.clone(),
            vars,
            shipit_env,
            user_env: run.env,
            local_dir: run.local_dir,
            once: BTreeSet::new(),
        }
    }

    /// The hook points where this host runs `once` hooks (it is the first
    /// host of the run with that list).
    pub fn once(mut self, points: BTreeSet<StepKind>) -> Self {
        self.once = points;
        self
    }

    /// The revision `{revision}` stands for on this host: the host's own
    /// REVISION of the release, for a release it goes back to.
    pub fn revision(mut self, revision: &str) -> Self {
        self.vars.revision = revision.to_string();
        self
    }

    /// The hosts of this host's batch, for its hooks.
    pub fn in_batch(mut self, batch: &[String]) -> Self {
        self.shipit_env
            .push(("SHIPIT_BATCH_HOSTS".into(), batch.join(" ").into()));
        self
    }

    /// A command the user wrote, run on the machine running shipit, in
    /// deploy.toml's directory.
    fn local(&self, template: &Template) -> Action {
        Action::Local {
            cmd: self.local_cmd(template),
        }
    }

    fn local_cmd(&self, template: &Template) -> Cmd {
        let cmd = Cmd::shell(template.render_shell(&self.vars)).envs(self.shipit_env.clone());
        match self.local_dir {
            Some(dir) => cmd.cwd(dir),
            None => cmd,
        }
    }

    /// A command the user wrote, run on the host with `[env]` too.
    fn remote(&self, template: &Template, cwd: Option<String>) -> Action {
        Action::Remote {
            cmd: self.remote_cmd(template, cwd),
        }
    }

    fn remote_cmd(&self, template: &Template, cwd: Option<String>) -> Cmd {
        let cmd = Cmd::shell(template.render_shell(&self.vars))
            .envs(self.shipit_env.clone())
            .envs(self.user_env.iter().cloned());
        match cwd {
            Some(cwd) => cmd.cwd(cwd),
            None => cmd,
        }
    }

    /// A hook at a point of this host's pipeline. `cwd` is where host hooks
    /// run (the release, once it exists).
    pub fn hook(&self, kind: StepKind, hook: &Hook, cwd: Option<String>) -> Step {
        let action = match hook.run_on {
            RunOn::Local => self.local(&hook.run),
            RunOn::Hosts | RunOn::Once => self.remote(&hook.run, cwd),
        };
        Step {
            kind,
            action,
            timeout: None,
        }
    }

    /// The hooks of `list` that run on this host: all of them for
    /// `hosts`, and `once` ones only on the run's first host with the list.
    pub fn hooks(&self, kind: StepKind, list: &[Hook], cwd: Option<String>) -> Vec<Step> {
        let first = self.once.contains(&kind);
        list.iter()
            .filter(|h| match h.run_on {
                RunOn::Hosts | RunOn::Local => true,
                RunOn::Once => first,
            })
            .map(|h| self.hook(kind, h, cwd.clone()))
            .collect()
    }

    pub fn release_dir(&self) -> String {
        self.layout.release(&self.release)
    }

    /// drain → before_switch → switch → after_switch → restart → health →
    /// enable, leaving out what the stage does not configure. A host kept
    /// out (an operator took it out of the load balancer) is neither
    /// drained nor enabled.
    pub fn rollout(&self, kept_out: bool) -> Vec<Step> {
        let stage = self.stage;
        let mut steps = Vec::new();
        if let Some(lb) = self.lb(LbOp::Drain).filter(|_| !kept_out) {
            steps.push(Step {
                kind: StepKind::Drain,
                action: Action::Lb { lb },
                timeout: None,
            });
        }
        let cwd = Some(self.release_dir());
        steps.extend(self.hooks(
            StepKind::BeforeSwitch,
            &stage.hooks.before_switch,
            cwd.clone(),
        ));
        steps.push(Step {
            kind: StepKind::Switch,
            action: Action::Remote {
                cmd: self.layout.switch(&self.release),
            },
            timeout: None,
        });
        steps.extend(self.hooks(
            StepKind::AfterSwitch,
            &stage.hooks.after_switch,
            cwd.clone(),
        ));
        if let Some(restart) = &stage.app.restart {
            steps.push(Step {
                kind: StepKind::Restart,
                action: self.remote(restart, cwd),
                timeout: Some(stage.app.restart_timeout),
            });
        }
        if let Some(check) = self.health_check() {
            steps.push(Step {
                kind: StepKind::Health,
                action: Action::Health { check },
                timeout: None,
            });
        }
        if let Some(lb) = self.lb(LbOp::Enable).filter(|_| !kept_out) {
            steps.push(Step {
                kind: StepKind::Enable,
                action: Action::Lb { lb },
                timeout: None,
            });
        }
        steps
    }

    /// The stage's health check, for this host and release.
    pub fn health_check(&self) -> Option<HealthCheck> {
        let health = self.stage.health.as_ref()?;
        let kind = match &health.check {
            HealthKind::Http {
                url,
                from,
                expect_status,
                expect_body,
            } => CheckKind::Http {
                url: url.render_plain(&self.vars),
                expect_status: *expect_status,
                expect_body: expect_body.as_ref().map(|b| b.render_plain(&self.vars)),
                from: *from,
            },
            // Run like the restart: in the release, with the same variables.
            HealthKind::Command { run } => CheckKind::Command {
                cmd: self.remote_cmd(run, Some(self.release_dir())),
            },
        };
        Some(HealthCheck {
            kind,
            timeout: health.timeout,
            interval: health.interval,
            request_timeout: health.request_timeout,
            healthy_threshold: health.healthy_threshold,
            start_period: health.start_period,
            min_healthy_time: health.min_healthy_time,
        })
    }

    /// The stage's load balancer action for this host.
    fn lb(&self, op: LbOp) -> Option<LbAction> {
        let driver = self.stage.lb.clone()?;
        let member = driver.member(&HostRef {
            vars: &self.vars,
            env: &self.shipit_env,
            local_dir: self.local_dir,
        });
        Some(LbAction { op, driver, member })
    }

    /// Run-level hooks with `run_on = "local"`: once for the whole run.
    pub fn local_hooks(&self, kind: StepKind, list: &[Hook]) -> Vec<Step> {
        list.iter()
            .filter(|h| h.run_on == RunOn::Local)
            .map(|h| Step {
                kind,
                action: self.local(&h.run),
                timeout: None,
            })
            .collect()
    }

    /// Run-level hooks that run on hosts (`hosts`, or `once` on the first
    /// host with the list).
    pub fn host_hooks(&self, kind: StepKind, list: &[Hook], cwd: Option<String>) -> Vec<Step> {
        let first = self.once.contains(&kind);
        list.iter()
            .filter(|h| h.run_on == RunOn::Hosts || (h.run_on == RunOn::Once && first))
            .map(|h| self.hook(kind, h, cwd.clone()))
            .collect()
    }
}
