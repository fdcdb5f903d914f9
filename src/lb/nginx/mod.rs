//! `driver = "nginx"`: open-source nginx has no API to change an upstream
//! at run time, so shipit owns a file the user's configuration includes
//! inside an `upstream` block (one `server ADDRESS;` line per host), edits
//! it where nginx runs and reloads nginx. Every nginx of the stage (`via`
//! a list) is changed the same way, at once.
//!
//! - A drain marks the host's line `down` (the line stays, with whatever
//!   parameters it has, so the file always lists every server and a
//!   `hash` balancing keeps its mapping for the others), tests, reloads,
//!   waits until nginx applied the reload, then waits until the worker
//!   processes that ran before the reload have exited: they hold every
//!   request in flight through nginx, to this host among others. Bounded
//!   by `drain_timeout`, then warn or fail.
//! - An enable first waits until the host accepts a connection from the
//!   nginx host (bounded by `enable_timeout`), so nginx's first requests
//!   cannot fail on a port that is not open yet; then removes `down`,
//!   tests, reloads, and waits until nginx applied the reload (every
//!   worker from before it shutting down): from then on every new request
//!   is handled by a worker that sends this host its share.
//! - The preflight checks that the file exists, is writable, is one nginx
//!   loads (`nginx -T` lists it; its `server` lines are valid only inside
//!   an `upstream` block, so a passing test proves where it is included),
//!   that nginx's master and workers can be watched, and that it lists
//!   every server of the run; a line marked `down` is out of service.
//!
//! All edits happen in one host-side script (`script`) under a `flock` on
//! the file: the drains of a batch run at once and never lose each other's
//! edit. A refused configuration test restores the file and fails the step with
//! nginx's message.
//!
//! `upstream` reads the file and server addresses, `config` the `[lb]`
//! keys.

mod config;
pub mod script;
pub mod upstream;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::future::join_all;
use serde::Serialize;
use tokio::sync::Notify;
use tokio::time::Instant;

use self::script::{Answer, Op};
use self::upstream::Probe;
use super::{
    Done, Driver, DriverSpec, HostRef, LbCtx, LbError, LbOp, Member, OnTimeout, Preflight, Proof,
    ServiceState, Via, human,
};
use crate::config::Template;
use crate::host::check::Verdict;
use crate::transport::{ExecObserver, ExecRequest, Output, Stream, TransportError};

pub const SPEC: DriverSpec = DriverSpec {
    name: "nginx",
    keys: &["upstream_file", "server", "nginx", "via", "enable_timeout"],
    parse: config::parse,
};

/// How long to wait before carrying a request again whose connection
/// failed.
const RETRY_INTERVAL: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, Serialize)]
pub struct Nginx {
    /// Where each nginx is reached; every one is changed.
    pub balancers: Vec<Via>,
    /// The file of `server` lines, as the nginx host sees it.
    pub upstream_file: String,
    /// The host's address in the upstream; renders to a valid address for
    /// every host of the stage (checked when the file is loaded).
    #[serde(skip)]
    pub server: Template,
    /// How to invoke nginx there, as written.
    pub nginx: String,
    /// The same, word by word.
    #[serde(skip)]
    pub nginx_words: Vec<String>,
    #[serde(serialize_with = "super::millis")]
    pub drain_timeout: Duration,
    pub drain_timeout_action: OnTimeout,
    #[serde(serialize_with = "super::millis")]
    pub enable_timeout: Duration,
}

impl Nginx {
    /// `local` or `lb1, lb2`.
    fn via_list(&self) -> String {
        self.balancers
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `nginx lb1:/etc/nginx/upstreams/shop.conf` in messages.
    fn at(&self, via: &Via) -> String {
        format!("nginx {via}:{}", self.upstream_file)
    }
}

#[async_trait::async_trait]
impl Driver for Nginx {
    fn name(&self) -> &'static str {
        "nginx"
    }

    fn member(&self, host: &HostRef<'_>) -> Member {
        Member {
            host: host.vars.name.clone(),
            server: self.server.render_plain(host.vars),
            commands: BTreeMap::new(),
        }
    }

    fn ssh_hosts(&self) -> Vec<&Via> {
        self.balancers
            .iter()
            .filter(|v| **v != Via::Local)
            .collect()
    }

    fn summary(&self, op: LbOp, member: &Member) -> String {
        format!(
            "nginx {}: {} {} in {}",
            self.via_list(),
            match op {
                LbOp::Drain => "drain",
                LbOp::Enable => "enable",
            },
            member.server,
            self.upstream_file
        )
    }

    fn describe(&self, op: LbOp, member: &Member) -> String {
        let nginx = &self.nginx;
        let edit = |what: &str| {
            format!(
                "{what} `server {}` in {}, `{nginx} -T` (the test), `{nginx} -s reload`, one edit at a time \
                 (the file is restored if the test or reload fails); wait until nginx applied it (≤{})",
                member.server,
                self.upstream_file,
                human(script::RELOAD_WAIT)
            )
        };
        let mut text = format!("nginx {}: ", self.via_list());
        match op {
            LbOp::Drain => {
                let _ = write!(
                    text,
                    "{}, then until its workers from before the reload have exited (≤{}, then {})",
                    edit("mark down"),
                    human(self.drain_timeout),
                    self.drain_timeout_action.as_str()
                );
            }
            LbOp::Enable => {
                let probe = Probe::of(&member.server)
                    .map_or_else(|_| member.server.clone(), |p| p.to_string());
                let _ = write!(
                    text,
                    "wait until {probe} accepts connections from there (≤{}); {}",
                    human(self.enable_timeout),
                    edit("remove `down` from")
                );
            }
        }
        text
    }

    async fn preflight(&self, ctx: &LbCtx<'_>, members: &[Member]) -> Preflight {
        let answers = join_all(self.balancers.iter().map(|via| async move {
            let cmd = script::command(
                Op::Check,
                &self.upstream_file,
                "",
                Duration::ZERO,
                None,
                &self.nginx_words,
            );
            let out = self
                .run(
                    ctx,
                    via,
                    &cmd,
                    (script::time_limit(Duration::ZERO), Duration::ZERO),
                    false,
                )
                .await;
            (via, out.and_then(|out| self.checked(via, &out)))
        }))
        .await;
        let mut found = Preflight::default();
        for (via, answer) in answers {
            let listed = match answer {
                Ok(listed) => listed,
                Err(e) => {
                    found.problems.push(e);
                    continue;
                }
            };
            let missing: Vec<&str> = members
                .iter()
                .filter(|m| !listed.iter().any(|l| l.address == m.server))
                .map(|m| m.server.as_str())
                .collect();
            if !missing.is_empty() {
                let has: Vec<&str> = listed.iter().map(|l| l.address.as_str()).collect();
                found.problems.push(format!(
                    "{}: no server {} (it has {}); add a line `server ADDRESS;` for every host (lb.server renders each host's ADDRESS)",
                    self.at(via),
                    missing.join(", "),
                    if has.is_empty() {
                        "none".to_string()
                    } else {
                        has.join(", ")
                    }
                ));
            }
            merge_states(&mut found.states, members, &listed);
        }
        found
    }

    async fn drain(&self, ctx: &LbCtx<'_>, member: &Member) -> Result<Done, LbError> {
        let results = join_all(
            self.balancers
                .iter()
                .map(|via| self.drain_one(ctx, member, via)),
        )
        .await;
        let mut done = Done::ok();
        let mut errors = Vec::new();
        for result in results {
            match result {
                Ok(Some(warning)) => done.warnings.push(warning),
                Ok(None) => {}
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(LbError {
                result: "failed".into(),
                error: errors.join("\n"),
                interrupted: ctx.cancel.is_cancelled(),
            });
        }
        if !done.warnings.is_empty() {
            done.result = "ok, requests left".into();
        }
        Ok(done)
    }

    async fn enable(
        &self,
        ctx: &LbCtx<'_>,
        member: &Member,
        _proof: Proof,
    ) -> Result<Done, LbError> {
        let results = join_all(
            self.balancers
                .iter()
                .map(|via| self.enable_one(ctx, member, via)),
        )
        .await;
        let mut done = Done::ok();
        let mut errors = Vec::new();
        for result in results {
            match result {
                Ok(Some(note)) => done.warnings.push(note),
                Ok(None) => {}
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(done)
        } else {
            Err(LbError::failed(errors.join("\n")))
        }
    }

    async fn states(
        &self,
        ctx: &LbCtx<'_>,
        members: &[Member],
    ) -> Result<BTreeMap<String, ServiceState>, String> {
        let mut states = BTreeMap::new();
        for via in &self.balancers {
            let cmd = script::command(
                Op::Read,
                &self.upstream_file,
                "",
                Duration::ZERO,
                None,
                &self.nginx_words,
            );
            let out = self
                .run(
                    ctx,
                    via,
                    &cmd,
                    (script::time_limit(Duration::ZERO), Duration::ZERO),
                    false,
                )
                .await?;
            let answer = self.answer(via, &out)?;
            let listed = upstream::parse(answer.file.as_deref().unwrap_or_default())
                .map_err(|e| format!("{}: {e}", self.at(via)))?;
            merge_states(&mut states, members, &listed);
        }
        Ok(states)
    }

    /// Whether each nginx can be reached, loads the file and lists the
    /// host, and its state there.
    async fn check(&self, ctx: &LbCtx<'_>, member: &Member) -> Verdict {
        let found = self.preflight(ctx, std::slice::from_ref(member)).await;
        if let Some(problem) = found.problems.into_iter().next() {
            return Verdict::fail(problem);
        }
        let state = found
            .states
            .get(&member.host)
            .copied()
            .unwrap_or(ServiceState::Unknown);
        Verdict::ok(format!(
            "nginx {}: server {} in {} (loaded by nginx): {}",
            self.via_list(),
            member.server,
            self.upstream_file,
            state.as_str()
        ))
    }

    fn settings(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

/// Each member's state from the file's lines: `down` is out of service
/// (like HAProxy's maintenance); across several nginx, the worst.
fn merge_states(
    states: &mut BTreeMap<String, ServiceState>,
    members: &[Member],
    listed: &[upstream::Listed],
) {
    for member in members {
        let Some(line) = listed.iter().find(|l| l.address == member.server) else {
            continue;
        };
        let state = if line.down {
            ServiceState::Maintenance
        } else {
            ServiceState::InService
        };
        let worst = states.entry(member.host.clone()).or_insert(state);
        if state != ServiceState::InService {
            *worst = state;
        }
    }
}

impl Nginx {
    /// Marks the server down on one nginx and waits for its old workers.
    /// Ok with a warning if requests were left and that is allowed.
    async fn drain_one(
        &self,
        ctx: &LbCtx<'_>,
        member: &Member,
        via: &Via,
    ) -> Result<Option<String>, String> {
        let cmd = script::command(
            Op::Down,
            &self.upstream_file,
            &member.server,
            self.drain_timeout,
            None,
            &self.nginx_words,
        );
        let out = self
            .run(
                ctx,
                via,
                &cmd,
                (script::time_limit(self.drain_timeout), self.drain_timeout),
                true,
            )
            .await?;
        let answer = self.answer(via, &out)?;
        if answer.has("drained") {
            tracing::debug!(
                "{}: {} drained; reload applied in {:?}, old workers gone after {:?}",
                self.at(via),
                member.server,
                answer.millis("reloaded"),
                answer.millis("drained")
            );
            return Ok(None);
        }
        let Some(pids) = answer.nth("left", 1) else {
            return Err(format!(
                "{}: the edit script gave an unexpected answer: {:?}",
                self.at(via),
                out.stdout_text().trim()
            ));
        };
        let count = pids.split_whitespace().count();
        let left = format!(
            "{}: {} nginx worker(s) from before the reload (pid {pids}) still running after {}, \
             so requests through nginx were still in flight (to {} or another server)",
            self.at(via),
            count,
            humantime::format_duration(self.drain_timeout),
            member.server
        );
        match self.drain_timeout_action {
            OnTimeout::Warn => Ok(Some(format!(
                "{left}; restarting anyway (lb.drain_timeout_action = \"warn\")"
            ))),
            OnTimeout::Fail => Err(format!("{left} (lb.drain_timeout_action = \"fail\")")),
        }
    }

    /// Puts the server back on one nginx once it accepts connections from
    /// there. Ok with a note if that could not be tried.
    async fn enable_one(
        &self,
        ctx: &LbCtx<'_>,
        member: &Member,
        via: &Via,
    ) -> Result<Option<String>, String> {
        let probe = Probe::of(&member.server).ok();
        let cmd = script::command(
            Op::Up,
            &self.upstream_file,
            &member.server,
            self.enable_timeout,
            probe.as_ref(),
            &self.nginx_words,
        );
        let out = self
            .run(
                ctx,
                via,
                &cmd,
                (script::time_limit(self.enable_timeout), self.enable_timeout),
                false,
            )
            .await?;
        let answer = self.answer(via, &out)?;
        if !answer.has("reloaded") {
            return Err(format!(
                "{}: the edit script gave an unexpected answer: {:?}",
                self.at(via),
                out.stdout_text().trim()
            ));
        }
        Ok(answer.has("probe").then(|| {
            format!(
                "{}: {} put back without checking that it accepts connections from there ({})",
                self.at(via),
                member.server,
                answer.nth("probe", 1).unwrap_or_default()
            )
        }))
    }

    /// The file's `server` lines after a successful check, or the problem.
    fn checked(&self, via: &Via, out: &Output) -> Result<Vec<upstream::Listed>, String> {
        let answer = self.answer(via, out)?;
        let at = self.at(via);
        if answer.get("loaded") != Some("yes") {
            let mut shown: Vec<&str> = answer.confs.iter().map(String::as_str).take(5).collect();
            if answer.confs.len() > 5 {
                shown.push("…");
            }
            return Err(format!(
                "{at}: nginx does not load this file (`{} -T` read {}); include it inside your upstream block: `include {};`",
                self.nginx,
                shown.join(", "),
                self.upstream_file
            ));
        }
        if answer.get("writable") != Some("yes") {
            return Err(format!(
                "{at}: not writable by {}; shipit edits this file (give that user write access to it)",
                answer.nth("writable", 1).unwrap_or("the SSH user")
            ));
        }
        if answer.get("master").unwrap_or_default().is_empty() {
            return Err(format!(
                "{at}: cannot watch nginx's worker processes: {}",
                answer.nth("master", 1).unwrap_or("no master found")
            ));
        }
        if answer.get("workers").unwrap_or_default().is_empty() {
            return Err(format!(
                "{at}: nginx's master (pid {}) has no process titled `nginx: worker process`; shipit watches them to know when requests are done",
                answer.get("master").unwrap_or_default()
            ));
        }
        upstream::parse(answer.file.as_deref().unwrap_or_default())
            .map_err(|e| format!("{at}: {e}"))
    }

    /// The script's answer, or its failure as a sentence naming the nginx.
    fn answer(&self, via: &Via, out: &Output) -> Result<Answer, String> {
        if out.exit.success() {
            return Ok(Answer::parse(&out.stdout_text()));
        }
        let said = out.stderr_tail(8);
        Err(format!(
            "{}: {}",
            self.at(via),
            if said.trim().is_empty() {
                format!("the edit script ended with {} (no output)", out.exit)
            } else {
                said.trim().to_string()
            }
        ))
    }

    /// Runs the script on `via`, for at most `limit`. A connection that
    /// failed is tried again (every operation can be repeated) for
    /// `retry_for`. With `cancellable`, a cancel stops the wait once the
    /// edit is done and nginx reloaded (never halfway through the edit).
    async fn run(
        &self,
        ctx: &LbCtx<'_>,
        via: &Via,
        cmd: &crate::shell::Cmd,
        (limit, retry_for): (Duration, Duration),
        cancellable: bool,
    ) -> Result<Output, String> {
        let start = Instant::now();
        let (deadline, retry_until) = (start + limit, start + retry_for);
        let mut tries = 0u32;
        loop {
            tries += 1;
            let marker = Reloaded::default();
            let request = ExecRequest {
                command: cmd.render(),
                stdin: None,
                timeout: Some(deadline.saturating_duration_since(Instant::now())),
            };
            let exec = ctx.remote.exec(via, request, &marker);
            let result = if cancellable {
                tokio::select! {
                    result = exec => result,
                    () = async { marker.wait().await; ctx.cancel.cancelled().await } => {
                        return Err(format!(
                            "{}: interrupted while waiting for nginx's workers from before the reload",
                            self.at(via)
                        ));
                    }
                }
            } else {
                exec.await
            };
            match result {
                Ok(out) => return Ok(out),
                Err(e @ TransportError::Timeout { .. }) => {
                    return Err(format!("{}: {e}", self.at(via)));
                }
                Err(e) if Instant::now() + RETRY_INTERVAL >= retry_until => {
                    return Err(format!(
                        "{}: {e}{}",
                        self.at(via),
                        if tries > 1 {
                            format!(" ({tries} tries)")
                        } else {
                            String::new()
                        }
                    ));
                }
                Err(e) => {
                    tracing::debug!("nginx edit could not be carried, trying again: {e}");
                    tokio::time::sleep(RETRY_INTERVAL).await;
                }
            }
        }
    }
}

/// Watches the script's output for the line that says the edit is done
/// and nginx applied it: from then on, stopping early is safe.
#[derive(Default)]
struct Reloaded {
    seen: AtomicBool,
    /// The start of stdout, in case the line arrives in pieces.
    head: std::sync::Mutex<Vec<u8>>,
    notify: Notify,
}

impl Reloaded {
    async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            if self.seen.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }
}

impl ExecObserver for Reloaded {
    fn output(&self, stream: Stream, data: &[u8]) {
        if !matches!(stream, Stream::Stdout) || self.seen.load(Ordering::Acquire) {
            return;
        }
        let mut head = self.head.lock().unwrap_or_else(|e| e.into_inner());
        if head.len() < 4096 {
            head.extend_from_slice(data);
        }
        if head
            .split(|b| *b == b'\n')
            .any(|line| line.starts_with(b"reloaded\t"))
        {
            self.seen.store(true, Ordering::Release);
            self.notify.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests;
