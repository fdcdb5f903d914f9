//! `driver = "haproxy"`: shipit speaks HAProxy's runtime API itself, to
//! every HAProxy of the stage at once (an HA pair is a list in `via` or
//! `socket`).
//!
//! - A drain sets the server to `drain` and polls `show stat` until HAProxy
//!   counts no session and no queued request on it (or `drain_timeout`
//!   passes: a warning, or a failure with `drain_timeout_action = "fail"`).
//!   It stays in `drain` while it restarts: no new request reaches it, and
//!   HAProxy's own checks keep running (a restart longer than `fall` checks
//!   shows as DOWN meanwhile).
//! - An enable sets `ready` and polls until HAProxy reports the server
//!   plain `UP`, bounded by `enable_timeout`. A check of HAProxy's that
//!   landed while the app restarted still counts against it ("UP 1/2",
//!   or DOWN after `fall` of them), and HAProxy would take up to `rise`
//!   more check intervals to believe it again. When shipit's own health
//!   check has just passed on the host (for the release it now runs),
//!   the enable says so: `set server B/S health up`, and the server is UP
//!   at once. HAProxy goes on checking as always; if its check disagrees
//!   with shipit's, it takes the server out after `fall` failures, and a
//!   watch (`bake`, `min_healthy_time`) sees it out. Without a passed
//!   check of shipit's (no `[health]`, or a put-back after a failed one),
//!   the enable waits for HAProxy's own check. Either way the server is UP
//!   in HAProxy before the next batch drains another.
//! - The preflight reads `show servers state`: every server the run
//!   touches must exist on every HAProxy, and servers found in maintenance,
//!   draining or DOWN count as out of service.
//!
//! A runtime API request that cannot be carried (the socket refused, the
//! relay host's connection dropped) is retried until the step's timeout;
//! an answer from HAProxy that refuses a request is final.
//!
//! `api` builds the request lines and reads the answers (no I/O),
//! `socket` carries them, `config` reads the `[lb]` keys.

pub mod api;
mod config;
pub mod socket;

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::join_all;
use serde::Serialize;
use tokio::time::Instant;

use self::api::{Request, ServerStat, State};
pub use self::socket::{AdminSocket, Balancer};
use super::{
    Counted, Done, Driver, DriverSpec, HostRef, LbCtx, LbError, LbOp, Member, OnTimeout, Preflight,
    Proof, ServiceState, Via, human,
};
use crate::config::Template;

pub const SPEC: DriverSpec = DriverSpec {
    name: "haproxy",
    keys: &["socket", "via", "backend", "server", "enable_timeout"],
    parse: config::parse,
};

/// How often HAProxy is asked about a server while shipit waits, once
/// the first looks ([`poll_after`]) did not see what it waits for.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// The pause before look number `looked` + 1 at a server: 20, 40, 60 ms,
/// then [`POLL_INTERVAL`]. Under load a drained server's last request ends
/// within milliseconds, so the first look after `drain` usually still sees
/// it; waiting a whole interval for the second cost each batch 50 ms on
/// average. An admin socket answers `show stat` in well under a
/// millisecond, and over SSH a look is one round trip.
fn poll_after(looked: u32) -> Duration {
    match looked {
        0..=2 => Duration::from_millis(20 * (u64::from(looked) + 1)),
        _ => POLL_INTERVAL,
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Haproxy {
    /// One entry per HAProxy; every one is drained and enabled.
    pub balancers: Vec<Balancer>,
    pub backend: String,
    /// The server's name in the backend; renders to a valid HAProxy name
    /// for every host of the stage (checked when the file is loaded).
    #[serde(skip)]
    pub server: Template,
    #[serde(serialize_with = "super::millis")]
    pub drain_timeout: Duration,
    pub drain_timeout_action: OnTimeout,
    #[serde(serialize_with = "super::millis")]
    pub enable_timeout: Duration,
}

impl Haproxy {
    /// `local:/run/haproxy/admin.sock` or `lb1:/run/a.sock, lb2:/run/a.sock`.
    fn balancer_list(&self) -> String {
        self.balancers
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[async_trait::async_trait]
impl Driver for Haproxy {
    fn name(&self) -> &'static str {
        "haproxy"
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
            .map(|b| &b.via)
            .filter(|v| **v != Via::Local)
            .collect()
    }

    fn summary(&self, op: LbOp, member: &Member) -> String {
        format!(
            "haproxy {}: {} {}/{}",
            self.balancer_list(),
            match op {
                LbOp::Drain => "drain",
                LbOp::Enable => "enable",
            },
            self.backend,
            member.server
        )
    }

    fn describe(&self, op: LbOp, member: &Member) -> String {
        let target = format!("{}/{}", self.backend, member.server);
        let list = self.balancer_list();
        match op {
            LbOp::Drain => format!(
                "haproxy {list}: set server {target} state drain; wait until 0 sessions (≤{}, then {})",
                human(self.drain_timeout),
                self.drain_timeout_action.as_str()
            ),
            LbOp::Enable => format!(
                "haproxy {list}: set server {target} state ready (and health up, after shipit's own check passed); \
                 wait until HAProxy reports UP (≤{})",
                human(self.enable_timeout)
            ),
        }
    }

    async fn preflight(&self, ctx: &LbCtx<'_>, members: &[Member]) -> Preflight {
        let request = match Request::servers_state(&self.backend) {
            Ok(request) => request,
            Err(e) => {
                return Preflight {
                    problems: vec![format!("haproxy: {e}")],
                    ..Preflight::default()
                };
            }
        };
        let request = &request;
        let answers = join_all(self.balancers.iter().map(|b| async move {
            let answer = socket::ask(ctx.remote, b, request).await.and_then(|a| {
                api::parse_servers_state(&a).map_err(|e| format!("haproxy {b}: `{request}`: {e}"))
            });
            (b, answer)
        }))
        .await;
        let mut out = Preflight::default();
        for (balancer, answer) in answers {
            let known = match answer {
                Ok(known) => known,
                Err(e) => {
                    out.problems.push(e);
                    continue;
                }
            };
            let missing: Vec<&str> = members
                .iter()
                .filter(|m| !known.iter().any(|k| k.server == m.server))
                .map(|m| m.server.as_str())
                .collect();
            if !missing.is_empty() {
                let has: Vec<&str> = known.iter().map(|k| k.server.as_str()).collect();
                out.problems.push(format!(
                    "haproxy {balancer}: backend {} has no server {} (it has {}); check lb.server and the backend's `server` lines",
                    self.backend,
                    missing.join(", "),
                    if has.is_empty() {
                        "none".to_string()
                    } else {
                        has.join(", ")
                    }
                ));
            }
            for member in members {
                let Some(k) = known.iter().find(|k| k.server == member.server) else {
                    continue;
                };
                let state = k.service_state();
                let worst = out.states.entry(member.host.clone()).or_insert(state);
                if state != ServiceState::InService && *worst == ServiceState::InService {
                    *worst = state;
                }
            }
        }
        out
    }

    async fn drain(&self, ctx: &LbCtx<'_>, member: &Member) -> Result<Done, LbError> {
        let results = join_all(
            self.balancers
                .iter()
                .map(|b| self.drain_one(ctx, member, b)),
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
            done.result = "ok, sessions left".into();
        }
        Ok(done)
    }

    async fn enable(
        &self,
        ctx: &LbCtx<'_>,
        member: &Member,
        proof: Proof,
    ) -> Result<Done, LbError> {
        let results = join_all(
            self.balancers
                .iter()
                .map(|b| self.enable_one(ctx, member, b, proof)),
        )
        .await;
        let mut told = false;
        let mut errors = Vec::new();
        for result in results {
            match result {
                Ok(up) => told |= up == Up::Told,
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(LbError::failed(errors.join("\n")));
        }
        let mut done = Done::ok();
        if told {
            done.result = "ok (health up after shipit's check)".into();
        }
        Ok(done)
    }

    async fn states(
        &self,
        ctx: &LbCtx<'_>,
        members: &[Member],
    ) -> Result<BTreeMap<String, ServiceState>, String> {
        let mut states = BTreeMap::new();
        for balancer in &self.balancers {
            let stats = self.stats(ctx, balancer).await?;
            for member in members {
                let state = stats
                    .iter()
                    .find(|s| s.backend == self.backend && s.server == member.server)
                    .map_or(ServiceState::Unknown, ServerStat::service_state);
                let worst = states.entry(member.host.clone()).or_insert(state);
                if state != ServiceState::InService && *worst == ServiceState::InService {
                    *worst = state;
                }
            }
        }
        Ok(states)
    }

    fn settings(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }

    /// `show stat` on every HAProxy at once: each member's `hrsp_*`
    /// counters there. One request per balancer, however many members.
    async fn answers(
        &self,
        ctx: &LbCtx<'_>,
        members: &[Member],
    ) -> Option<Result<Vec<Counted>, String>> {
        let answers = join_all(self.balancers.iter().map(|b| async move {
            let stats = self.stats(ctx, b).await?;
            Ok::<_, String>(
                members
                    .iter()
                    .map(|m| Counted {
                        balancer: b.to_string(),
                        host: m.host.clone(),
                        answers: stats
                            .iter()
                            .find(|s| s.backend == self.backend && s.server == m.server)
                            .and_then(|s| s.answers),
                    })
                    .collect::<Vec<_>>(),
            )
        }))
        .await;
        Some(
            answers
                .into_iter()
                .collect::<Result<Vec<_>, _>>()
                .map(|all| all.into_iter().flatten().collect()),
        )
    }
}

impl Haproxy {
    /// drain → wait for no sessions, on one load balancer. Ok with
    /// a warning if sessions were left and that is allowed.
    async fn drain_one(
        &self,
        ctx: &LbCtx<'_>,
        member: &Member,
        b: &Balancer,
    ) -> Result<Option<String>, String> {
        let target = format!("{}/{}", self.backend, member.server);
        let deadline = Instant::now() + self.drain_timeout;
        self.set_state(ctx, member, b, State::Drain, deadline)
            .await?;
        let mut warning = None;
        let mut looked = 0;
        loop {
            let stat = self.server_stat(ctx, member, b, deadline).await?;
            if stat.is_idle() {
                break;
            }
            if ctx.cancel.is_cancelled() {
                return Err(format!(
                    "haproxy {b}: interrupted while {target} still had {} session(s)",
                    stat.scur + stat.qcur
                ));
            }
            if Instant::now() >= deadline {
                let left = format!(
                    "haproxy {b}: {target} still has {} session(s){} after {}",
                    stat.scur,
                    if stat.qcur > 0 {
                        format!(" and {} queued request(s)", stat.qcur)
                    } else {
                        String::new()
                    },
                    humantime::format_duration(self.drain_timeout)
                );
                match self.drain_timeout_action {
                    OnTimeout::Warn => {
                        warning = Some(format!(
                            "{left}; restarting anyway (lb.drain_timeout_action = \"warn\")"
                        ));
                        break;
                    }
                    OnTimeout::Fail => {
                        return Err(format!("{left} (lb.drain_timeout_action = \"fail\")"));
                    }
                }
            }
            tokio::select! {
                () = tokio::time::sleep(poll_after(looked)) => {}
                () = ctx.cancel.cancelled() => {}
            }
            looked += 1;
        }
        // The server stays in `drain`, not `maint`: HAProxy sends it no new
        // request either way, but its checks go on, so when shipit sets it
        // `ready` after a quick restart its check state is still UP and it
        // takes traffic at once instead of a whole check interval later.
        Ok(warning)
    }

    /// ready → wait until HAProxy says UP, on one load balancer. With
    /// `proof`, a server HAProxy's checks still hold back is told `health
    /// up` (once; a server tracking another's checks refuses, and then
    /// HAProxy's check decides).
    async fn enable_one(
        &self,
        ctx: &LbCtx<'_>,
        member: &Member,
        b: &Balancer,
        proof: Proof,
    ) -> Result<Up, String> {
        let deadline = Instant::now() + self.enable_timeout;
        self.set_state(ctx, member, b, State::Ready, deadline)
            .await?;
        let mut up = Up::Checked;
        let mut looked = 0;
        loop {
            let stat = self.server_stat(ctx, member, b, deadline).await?;
            if stat.is_up() {
                return Ok(up);
            }
            if proof == Proof::Checked && up == Up::Checked && stat.held_by_checks() {
                up = Up::Told;
                match self.health_up(ctx, member, b, deadline).await {
                    Ok(()) => continue,
                    Err(e) => {
                        tracing::debug!("{e}; waiting for HAProxy's own check");
                        up = Up::Refused;
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "haproxy {b}: {}/{} is {} after {}, not UP; check that HAProxy's health check reaches the host (lb.enable_timeout)",
                    self.backend,
                    member.server,
                    stat.describe(),
                    humantime::format_duration(self.enable_timeout)
                ));
            }
            tokio::time::sleep(poll_after(looked)).await;
            looked += 1;
        }
    }

    async fn set_state(
        &self,
        ctx: &LbCtx<'_>,
        member: &Member,
        b: &Balancer,
        state: State,
        deadline: Instant,
    ) -> Result<(), String> {
        let request = Request::set_state(&self.backend, &member.server, state)
            .map_err(|e| format!("haproxy {b}: {e}"))?;
        let answer = retrying(deadline, || socket::ask(ctx.remote, b, &request)).await?;
        api::set_state_answer(&answer).map_err(|e| format!("haproxy {b}: `{request}`: {e}"))
    }

    async fn health_up(
        &self,
        ctx: &LbCtx<'_>,
        member: &Member,
        b: &Balancer,
        deadline: Instant,
    ) -> Result<(), String> {
        let request = Request::health_up(&self.backend, &member.server)
            .map_err(|e| format!("haproxy {b}: {e}"))?;
        let answer = retrying(deadline, || socket::ask(ctx.remote, b, &request)).await?;
        api::set_state_answer(&answer).map_err(|e| format!("haproxy {b}: `{request}`: {e}"))
    }

    async fn server_stat(
        &self,
        ctx: &LbCtx<'_>,
        member: &Member,
        b: &Balancer,
        deadline: Instant,
    ) -> Result<ServerStat, String> {
        let stats = retrying(deadline, || self.stats(ctx, b)).await?;
        stats
            .into_iter()
            .find(|s| s.backend == self.backend && s.server == member.server)
            .ok_or_else(|| {
                format!(
                    "haproxy {b}: backend {} has no server {} (any more)",
                    self.backend, member.server
                )
            })
    }

    async fn stats(&self, ctx: &LbCtx<'_>, b: &Balancer) -> Result<Vec<ServerStat>, String> {
        let answer = socket::ask(ctx.remote, b, &Request::ServerStats).await?;
        api::parse_stat(&answer)
            .map_err(|e| format!("haproxy {b}: `{}`: {e}", Request::ServerStats))
    }
}

/// How an enable saw a server come up on one HAProxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Up {
    /// By HAProxy's own check (or it never doubted the server).
    Checked,
    /// Told `health up` after shipit's check passed.
    Told,
    /// It refused `health up`: HAProxy's check decided.
    Refused,
}

/// Runs `attempt` until it succeeds or `deadline` passes: a request that
/// could not be carried is tried again; the last error is the answer.
async fn retrying<T, F, Fut>(deadline: Instant, mut attempt: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let mut tries = 0u32;
    loop {
        tries += 1;
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(e) if Instant::now() + POLL_INTERVAL >= deadline => {
                return Err(if tries > 1 {
                    format!("{e} ({tries} tries)")
                } else {
                    e
                });
            }
            Err(e) => {
                tracing::debug!("haproxy request failed, trying again: {e}");
                tokio::time::sleep(POLL_INTERVAL).await;
            }
        }
    }
}

#[cfg(test)]
mod tests;
