//! `driver = "command"` (or `drain` and `enable` without a driver): the
//! user's own command lines take a host out and put it back, run on this
//! machine or on a host (`run_on`). After the drain, `wait_drained` (if
//! set) is polled every second until it exits 0, bounded by
//! `drain_timeout`. shipit cannot ask such a balancer about a host, so
//! every host counts as in service before the run.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::{
    Done, Driver, DriverSpec, HostRef, LbCtx, LbError, LbOp, Member, OnTimeout, Preflight, Proof,
    ServiceState, Shared, Via, human,
};
use crate::config::{DEFAULT_ENABLE_TIMEOUT, LbSettings, Template};
use crate::host::check::{Program, Verdict};
use crate::shell::Cmd;
use crate::transport::{ExecRequest, Output, Quiet, TransportError};

pub const SPEC: DriverSpec = DriverSpec {
    name: "command",
    keys: &[
        "drain",
        "enable",
        "run_on",
        "wait_drained",
        "enable_timeout",
    ],
    parse,
};

/// How often `wait_drained` is run while it exits non-zero.
pub const WAIT_DRAINED_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Serialize)]
pub struct CommandLb {
    #[serde(skip)]
    pub drain: Template,
    #[serde(skip)]
    pub enable: Template,
    /// Where both commands (and `wait_drained`) run.
    pub run_on: Via,
    /// Polled after `drain` until it exits 0.
    #[serde(skip)]
    pub wait_drained: Option<Template>,
    /// Bounds the drain command (then `wait_drained` gets what is left).
    #[serde(serialize_with = "super::millis")]
    pub drain_timeout: Duration,
    pub drain_timeout_action: OnTimeout,
    /// Bounds the enable command: one that never returns must not keep a
    /// host out, and the lock held, forever.
    #[serde(serialize_with = "super::millis")]
    pub enable_timeout: Duration,
    /// Where releases live on the hosts, for judging `bin/...` programs in
    /// `check`.
    #[serde(skip)]
    pub deploy_to: String,
}

fn parse(lb: &mut LbSettings<'_, '_>, shared: Shared) -> Option<Arc<dyn Driver>> {
    let drain = lb.template("drain");
    let enable = lb.template("enable");
    let run_on = match lb.string("run_on")? {
        None => Some(Via::Local),
        Some(at) => lb.via(&at.key, &at.value),
    };
    let wait_drained = lb.template("wait_drained");
    let enable_timeout = lb.positive_duration("enable_timeout", DEFAULT_ENABLE_TIMEOUT);
    let (drain, enable, run_on, wait_drained, enable_timeout) =
        (drain?, enable?, run_on?, wait_drained?, enable_timeout?);
    let (drain, enable) = match (drain, enable) {
        (Some(drain), Some(enable)) => (drain, enable),
        (Some(_), None) => {
            return lb.fail(
                "lb.enable",
                "missing: with lb.drain set, shipit must also know how to put a host back",
            );
        }
        (None, Some(_)) => {
            return lb.fail(
                "lb.drain",
                "missing: with lb.enable set, shipit must also know how to take a host out",
            );
        }
        (None, None) => {
            return lb.missing(
                "drain",
                ": driver = \"command\" needs lb.drain and lb.enable",
            );
        }
    };
    Some(Arc::new(CommandLb {
        drain,
        enable,
        run_on,
        wait_drained,
        drain_timeout: shared.drain_timeout,
        drain_timeout_action: shared.drain_timeout_action,
        enable_timeout,
        deploy_to: lb.deploy_to().unwrap_or_default().to_string(),
    }))
}

impl CommandLb {
    fn cmd<'m>(&self, member: &'m Member, purpose: &str) -> Option<&'m Cmd> {
        member.commands.get(purpose)
    }

    fn exec_line(&self, cmd: &Cmd) -> String {
        match &self.run_on {
            Via::Local => format!("local: {}", cmd.display()),
            other => format!("on {other}: {}", cmd.display()),
        }
    }

    async fn run(
        &self,
        ctx: &LbCtx<'_>,
        cmd: &Cmd,
        timeout: Option<Duration>,
    ) -> Result<Output, TransportError> {
        let request = ExecRequest {
            command: cmd.render(),
            stdin: None,
            timeout,
        };
        ctx.remote.exec(&self.run_on, request, ctx.observer).await
    }

    /// Runs `cmd` once, within `limit` (and `ssh.command_timeout`); an error
    /// says what ran and how it ended. A second signal stops a command that
    /// is running when it comes; one started after it (putting a host
    /// back) runs to its end.
    async fn once(&self, ctx: &LbCtx<'_>, cmd: &Cmd, limit: Duration) -> Result<(), LbError> {
        let shown = self.exec_line(cmd);
        let limit = ctx.command_timeout.map_or(limit, |c| c.min(limit));
        let run = self.run(ctx, cmd, Some(limit));
        let outcome = if ctx.cancel.is_cancelled() {
            run.await
        } else {
            tokio::select! {
                outcome = run => outcome,
                () = ctx.cancel.cancelled() => {
                    return Err(LbError {
                        result: "interrupted".into(),
                        error: format!("`{shown}` was stopped while it ran: the run was told to hurry"),
                        interrupted: true,
                    });
                }
            }
        };
        match outcome {
            Ok(out) if out.exit.success() => Ok(()),
            Ok(out) => {
                let tail = out.stderr_tail(8);
                Err(LbError {
                    result: out.exit.to_string(),
                    error: if tail.is_empty() {
                        format!("`{shown}` ended with {} (no output)", out.exit)
                    } else {
                        format!("`{shown}` ended with {}; stderr:\n{tail}", out.exit)
                    },
                    interrupted: false,
                })
            }
            Err(e) => Err(LbError {
                result: match e {
                    TransportError::Timeout { .. } => "timed out".into(),
                    _ => "error".into(),
                },
                error: e.to_string(),
                interrupted: false,
            }),
        }
    }

    /// Polls `wait` until it exits 0, within `drain_timeout`.
    async fn wait_drained(&self, ctx: &LbCtx<'_>, wait: &Cmd) -> Result<Done, LbError> {
        let deadline = Instant::now() + self.drain_timeout;
        let mut tries = 0;
        loop {
            tries += 1;
            let left = deadline.saturating_duration_since(Instant::now());
            let limit = ctx
                .command_timeout
                .unwrap_or(left)
                .max(Duration::from_secs(1));
            let last = match self.run(ctx, wait, Some(limit)).await {
                Ok(out) if out.exit.success() => {
                    return Ok(Done {
                        result: format!(
                            "ok ({tries} wait tr{})",
                            if tries == 1 { "y" } else { "ies" }
                        ),
                        warnings: Vec::new(),
                    });
                }
                Ok(out) => out.exit.to_string(),
                Err(TransportError::Timeout { .. }) => "timed out".to_string(),
                Err(e) => return Err(LbError::failed(e.to_string())),
            };
            if ctx.cancel.is_cancelled() {
                return Err(LbError {
                    result: "interrupted".into(),
                    error: format!("interrupted while waiting for `{}`", wait.display()),
                    interrupted: true,
                });
            }
            if Instant::now() + WAIT_DRAINED_INTERVAL >= deadline {
                let what = format!(
                    "`{}` did not exit 0 within {} ({tries} tr{}, last: {last})",
                    wait.display(),
                    humantime::format_duration(self.drain_timeout),
                    if tries == 1 { "y" } else { "ies" }
                );
                return match self.drain_timeout_action {
                    OnTimeout::Warn => Ok(Done {
                        result: "ok, not drained".into(),
                        warnings: vec![format!(
                            "{what}; restarting anyway (lb.drain_timeout_action = \"warn\")"
                        )],
                    }),
                    OnTimeout::Fail => Err(LbError {
                        result: "not drained".into(),
                        error: format!("{what} (lb.drain_timeout_action = \"fail\")"),
                        interrupted: false,
                    }),
                };
            }
            tokio::select! {
                () = tokio::time::sleep(WAIT_DRAINED_INTERVAL) => {}
                () = ctx.cancel.cancelled() => {}
            }
        }
    }
}

#[async_trait::async_trait]
impl Driver for CommandLb {
    fn name(&self) -> &'static str {
        "command"
    }

    fn member(&self, host: &HostRef<'_>) -> Member {
        let shell = |template: &Template| {
            let cmd = Cmd::shell(template.render_shell(host.vars)).envs(host.env.iter().cloned());
            match (&self.run_on, host.local_dir) {
                (Via::Local, Some(dir)) => cmd.cwd(dir),
                _ => cmd,
            }
        };
        let mut commands = BTreeMap::new();
        commands.insert("drain", shell(&self.drain));
        commands.insert("enable", shell(&self.enable));
        if let Some(wait) = &self.wait_drained {
            commands.insert("wait_drained", shell(wait));
        }
        Member {
            host: host.vars.name.clone(),
            server: host.vars.name.clone(),
            commands,
        }
    }

    fn ssh_hosts(&self) -> Vec<&Via> {
        match &self.run_on {
            Via::Local => Vec::new(),
            other => vec![other],
        }
    }

    fn summary(&self, op: LbOp, member: &Member) -> String {
        let purpose = match op {
            LbOp::Drain => "drain",
            LbOp::Enable => "enable",
        };
        self.cmd(member, purpose)
            .map_or_else(String::new, |cmd| self.exec_line(cmd))
    }

    fn describe(&self, op: LbOp, member: &Member) -> String {
        let mut text = self.summary(op, member);
        if let (LbOp::Drain, Some(wait)) = (op, self.cmd(member, "wait_drained")) {
            // Its environment is the drain command's, shown just before.
            let bare = Cmd {
                env: Vec::new(),
                ..wait.clone()
            };
            let _ = write!(
                text,
                "; then every {}{}: {} until it exits 0 (≤{}, then {})",
                human(WAIT_DRAINED_INTERVAL),
                if wait.env.is_empty() {
                    ""
                } else {
                    ", with the same environment"
                },
                bare.display(),
                human(self.drain_timeout),
                self.drain_timeout_action.as_str()
            );
        }
        text
    }

    async fn preflight(&self, _ctx: &LbCtx<'_>, members: &[Member]) -> Preflight {
        Preflight {
            states: members
                .iter()
                .map(|m| (m.host.clone(), ServiceState::Unknown))
                .collect(),
            ..Preflight::default()
        }
    }

    async fn drain(&self, ctx: &LbCtx<'_>, member: &Member) -> Result<Done, LbError> {
        let Some(drain) = self.cmd(member, "drain") else {
            return Err(LbError::failed("no drain command for this host"));
        };
        self.once(ctx, drain, self.drain_timeout).await?;
        match self.cmd(member, "wait_drained") {
            Some(wait) => self.wait_drained(ctx, wait).await,
            None => Ok(Done::ok()),
        }
    }

    async fn enable(
        &self,
        ctx: &LbCtx<'_>,
        member: &Member,
        _proof: Proof,
    ) -> Result<Done, LbError> {
        let Some(enable) = self.cmd(member, "enable") else {
            return Err(LbError::failed("no enable command for this host"));
        };
        self.once(ctx, enable, self.enable_timeout)
            .await
            .map(|()| Done::ok())
    }

    async fn states(
        &self,
        _ctx: &LbCtx<'_>,
        members: &[Member],
    ) -> Result<BTreeMap<String, ServiceState>, String> {
        Ok(members
            .iter()
            .map(|m| (m.host.clone(), ServiceState::Unknown))
            .collect())
    }

    /// Valid `sh` syntax, and the first word exists where they run; never
    /// run.
    async fn check(&self, _ctx: &LbCtx<'_>, member: &Member) -> Verdict {
        if self.run_on != Via::Local {
            return Verdict::skip(format!(
                "drain and enable run on {}; not checked from here",
                self.run_on
            ));
        }
        let mut found = Vec::new();
        for purpose in ["drain", "enable"] {
            let key = format!("lb.{purpose}");
            let Some(cmd) = self.cmd(member, purpose) else {
                continue;
            };
            // The user's line: the `sh -c` argument.
            let line = cmd
                .argv
                .get(2)
                .map(|w| w.value().to_string())
                .unwrap_or_default();
            let program = Program::of(&line, &self.deploy_to);
            let [kind, path] = program.args();
            let script = Cmd::script("lb-check", LB_CHECK, [line, kind, path.clone()]);
            let request = ExecRequest {
                command: script.render(),
                stdin: None,
                timeout: Some(Duration::from_secs(10)),
            };
            let out = match crate::transport::local::run(request, &[], &Quiet).await {
                Ok(out) => out.stdout_text(),
                Err(e) => return Verdict::fail(format!("{key}: {e}")),
            };
            let out = out.trim_end();
            if let Some(error) = out.strip_prefix("syntax\t") {
                return Verdict::fail(format!("{key} is not valid sh: {error}"));
            }
            match out {
                "found" => found.push(format!("`{path}`")),
                "missing" => {
                    return Verdict::fail(format!("{key}: `{path}` not found on this machine"));
                }
                _ => {}
            }
        }
        found.dedup();
        let mut reason = "drain and enable parse".to_string();
        if !found.is_empty() {
            let _ = write!(reason, "; {} found", found.join(", "));
        }
        Verdict::ok(reason + " (not run)")
    }

    fn settings(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

/// `sh -n` on the line, then whether its first word exists here.
const LB_CHECK: &str = r#"line=$1 kind=$2 p=$3
if ! err=$(sh -n -c "$line" 2>&1); then printf 'syntax\t%s\n' "$(printf '%s' "$err" | tr '\n' ' ')"; exit 0; fi
case $kind in
  file) if [ -f "$p" ] && [ -x "$p" ]; then echo found; else echo missing; fi ;;
  command|release) if command -v "$p" >/dev/null 2>&1; then echo found; else echo missing; fi ;;
  *) echo unchecked ;;
esac"#;

#[cfg(test)]
mod tests;
