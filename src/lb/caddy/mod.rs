//! `driver = "caddy"`: shipit edits the upstream list of one
//! `reverse_proxy` handler (found by its `"@id"`) through Caddy's admin
//! API, on every Caddy of the stage at once (`via` or `admin` a list).
//!
//! - A drain removes the host's upstream from the handler (after making
//!   sure shipit's tracking server lists it, see `api` for why), then polls
//!   `GET /reverse_proxy/upstreams` (every 50 ms, after half a second every
//!   200 ms) until Caddy counts no request in flight to it on two polls
//!   100 ms apart, or `drain_timeout` passes (a warning, or
//!   a failure with `drain_timeout_action = "fail"`).
//! - An enable adds it back, as the tracking server kept it, then waits
//!   until Caddy's upstream pool lists it and, if the handler has passive
//!   health checks, counts fewer failures for it than `max_fails`. Caddy
//!   2.6 sends a newly listed upstream requests at once (until an active
//!   check fails), and its admin API does not report active health checks:
//!   shipit's own `[health]` check just before the enable is what proves
//!   the host up.
//! - The preflight reads the handler and the tracking server: a host whose
//!   upstream is in neither is unknown to Caddy (a problem); one that is
//!   only tracked is out of service.
//!
//! `http` writes and reads the bytes, `admin` carries them, `api` knows
//! the paths and the JSON, `edit` makes the changes with `If-Match` and
//! retries on conflict, `config` reads the `[lb]` keys.

mod admin;
mod api;
mod config;
mod edit;
mod http;

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::join_all;
use serde::Serialize;
use tokio::time::Instant;

use self::admin::Balancer;
use self::edit::{Mover, TookOut};
use super::{
    Done, Driver, DriverSpec, HostRef, LbCtx, LbError, LbOp, Member, OnTimeout, Preflight, Proof,
    ServiceState, Via, human,
};
use crate::config::Template;
use crate::host::check::Verdict;

pub const SPEC: DriverSpec = DriverSpec {
    name: "caddy",
    keys: &["admin", "via", "route_id", "server", "enable_timeout"],
    parse: config::parse,
};

/// How often Caddy is asked about an upstream while shipit waits.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// How often in the first half second of a drain: requests in flight at
/// the change usually end within milliseconds.
const FIRST_POLLS: (u32, Duration) = (10, Duration::from_millis(50));

/// A drain is done when Caddy counts 0 requests twice, this far apart: a
/// request can still be entering the previous config generation for a
/// moment after Caddy answered the change.
const SETTLE: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Serialize)]
pub struct Caddy {
    /// One entry per Caddy; every one is drained and enabled.
    pub balancers: Vec<Balancer>,
    /// The `@id` of the managed reverse_proxy handler.
    pub route_id: String,
    /// Each host's `dial` address in the handler's upstreams.
    #[serde(skip)]
    pub server: Template,
    #[serde(serialize_with = "super::millis")]
    pub drain_timeout: Duration,
    pub drain_timeout_action: OnTimeout,
    #[serde(serialize_with = "super::millis")]
    pub enable_timeout: Duration,
}

impl Caddy {
    /// `local:localhost:2019` or `lb1:localhost:2019, lb2:localhost:2019`.
    fn balancer_list(&self) -> String {
        self.balancers
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn mover<'a>(&'a self, ctx: &'a LbCtx<'_>, b: &'a Balancer, deadline: Instant) -> Mover<'a> {
        Mover {
            remote: ctx.remote,
            balancer: b,
            route_id: &self.route_id,
            deadline,
        }
    }

    /// Each member's state on one Caddy; `Err` if it cannot be read (asked
    /// once: a preflight or a check should say so at once). Members in
    /// neither the handler nor the tracking server come back in `missing`.
    async fn found(
        &self,
        ctx: &LbCtx<'_>,
        b: &Balancer,
        members: &[Member],
    ) -> Result<Found, String> {
        let mover = self.mover(ctx, b, Instant::now());
        let (handler, tracked) = tokio::join!(mover.handler(), mover.tracked());
        let (handler, tracked) = (handler?, tracked?);
        let mut found = Found {
            states: BTreeMap::new(),
            missing: Vec::new(),
            has: handler.dials(),
        };
        for member in members {
            let state = if handler.position(&member.server).is_some() {
                ServiceState::InService
            } else {
                if tracked.position(&member.server).is_none() {
                    found.missing.push(member.server.clone());
                }
                ServiceState::Maintenance
            };
            found.states.insert(member.host.clone(), state);
        }
        Ok(found)
    }
}

/// What one Caddy says about the members.
struct Found {
    states: BTreeMap<String, ServiceState>,
    /// Servers in neither the handler nor the tracking server.
    missing: Vec<String>,
    /// The handler's upstreams, for messages.
    has: String,
}

/// Keeps the least available state of a host across Caddys.
fn merge(into: &mut BTreeMap<String, ServiceState>, from: BTreeMap<String, ServiceState>) {
    for (host, state) in from {
        let worst = into.entry(host).or_insert(state);
        if state != ServiceState::InService && *worst == ServiceState::InService {
            *worst = state;
        }
    }
}

#[async_trait::async_trait]
impl Driver for Caddy {
    fn name(&self) -> &'static str {
        "caddy"
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
            "caddy {}: {} {}/{}",
            self.balancer_list(),
            match op {
                LbOp::Drain => "drain",
                LbOp::Enable => "enable",
            },
            self.route_id,
            member.server
        )
    }

    fn describe(&self, op: LbOp, member: &Member) -> String {
        let list = self.balancer_list();
        let (id, dial) = (&self.route_id, &member.server);
        let tracked = api::tracking_server(id);
        match op {
            LbOp::Drain => format!(
                "caddy {list}: DELETE /id/{id}/upstreams/N ({dial}; If-Match, after making sure server {tracked} lists it); \
                 wait until /reverse_proxy/upstreams counts 0 requests to it (≤{}, then {})",
                human(self.drain_timeout),
                self.drain_timeout_action.as_str()
            ),
            LbOp::Enable => format!(
                "caddy {list}: POST /id/{id}/upstreams ({dial} as {tracked} lists it; If-Match); \
                 wait until Caddy's pool lists it, with fewer failures than max_fails if counted (≤{})",
                human(self.enable_timeout)
            ),
        }
    }

    async fn preflight(&self, ctx: &LbCtx<'_>, members: &[Member]) -> Preflight {
        let answers = join_all(
            self.balancers
                .iter()
                .map(|b| async move { (b, self.found(ctx, b, members).await) }),
        )
        .await;
        let mut out = Preflight::default();
        for (balancer, answer) in answers {
            let found = match answer {
                Ok(found) => found,
                Err(e) => {
                    out.problems.push(e);
                    continue;
                }
            };
            if !found.missing.is_empty() {
                out.problems.push(format!(
                    "caddy {balancer}: @id {} has no upstream {} (it has {}); check lb.server and the handler's upstreams",
                    self.route_id,
                    found.missing.join(", "),
                    found.has
                ));
            }
            merge(&mut out.states, found.states);
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
                .map(|b| self.enable_one(ctx, member, b)),
        )
        .await;
        let errors: Vec<String> = results.into_iter().filter_map(Result::err).collect();
        if errors.is_empty() {
            Ok(Done::ok())
        } else {
            Err(LbError::failed(errors.join("\n")))
        }
    }

    /// Reached, and the server found: in the handler, or out and tracked.
    async fn check(&self, ctx: &LbCtx<'_>, member: &Member) -> Verdict {
        let found = self.preflight(ctx, std::slice::from_ref(member)).await;
        if let Some(problem) = found.problems.into_iter().next() {
            return Verdict::fail(problem);
        }
        let (list, id, dial) = (self.balancer_list(), &self.route_id, &member.server);
        match found.states.get(&member.host) {
            Some(ServiceState::InService) => {
                Verdict::ok(format!("caddy {list}: @id {id} lists {dial}"))
            }
            _ => Verdict::ok_noted(format!(
                "caddy {list}: {dial} is out of @id {id} (tracked in server {}: taken out, not put back)",
                api::tracking_server(id)
            )),
        }
    }

    async fn states(
        &self,
        ctx: &LbCtx<'_>,
        members: &[Member],
    ) -> Result<BTreeMap<String, ServiceState>, String> {
        let mut states = BTreeMap::new();
        for balancer in &self.balancers {
            merge(
                &mut states,
                self.found(ctx, balancer, members).await?.states,
            );
        }
        Ok(states)
    }

    fn settings(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

impl Caddy {
    /// Move out, then wait until no request is in flight, on one Caddy. Ok
    /// with a warning if requests were left and that is allowed.
    async fn drain_one(
        &self,
        ctx: &LbCtx<'_>,
        member: &Member,
        b: &Balancer,
    ) -> Result<Option<String>, String> {
        let dial = &member.server;
        let deadline = Instant::now() + self.drain_timeout;
        let mover = self.mover(ctx, b, deadline);
        if mover.take_out(dial).await? == TookOut::WasOut {
            tracing::debug!("caddy {b}: {dial} was out already");
        }
        let mut idle = false;
        let mut polls = 0;
        loop {
            polls += 1;
            let in_flight = mover
                .pool()
                .await?
                .into_iter()
                .find(|e| e.address == *dial)
                .map(|e| e.num_requests);
            tracing::debug!("caddy {b}: {dial}: {in_flight:?} request(s) in flight");
            if in_flight == Some(0) {
                if idle {
                    return Ok(None);
                }
                idle = true;
            } else {
                idle = false;
            }
            let left = match in_flight {
                Some(n) => format!("{n} request(s) in flight"),
                None => format!(
                    "no count of requests in flight (Caddy's pool does not list it: was server {} deleted?)",
                    api::tracking_server(&self.route_id)
                ),
            };
            if ctx.cancel.is_cancelled() {
                return Err(format!(
                    "caddy {b}: interrupted while {dial} still had {left}"
                ));
            }
            if Instant::now() >= deadline {
                let left = format!(
                    "caddy {b}: {dial} still has {left} after {}",
                    humantime::format_duration(self.drain_timeout)
                );
                return match self.drain_timeout_action {
                    OnTimeout::Warn => Ok(Some(format!(
                        "{left}; restarting anyway (lb.drain_timeout_action = \"warn\")"
                    ))),
                    OnTimeout::Fail => Err(format!("{left} (lb.drain_timeout_action = \"fail\")")),
                };
            }
            let pause = match (idle, polls < FIRST_POLLS.0) {
                (true, _) => SETTLE,
                (false, true) => FIRST_POLLS.1,
                (false, false) => POLL_INTERVAL,
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = ctx.cancel.cancelled() => {}
            }
        }
    }

    /// Put back, then wait until Caddy's pool takes it, on one Caddy.
    async fn enable_one(
        &self,
        ctx: &LbCtx<'_>,
        member: &Member,
        b: &Balancer,
    ) -> Result<(), String> {
        let dial = &member.server;
        let deadline = Instant::now() + self.enable_timeout;
        let mover = self.mover(ctx, b, deadline);
        let max_fails = mover.put_back(dial).await?;
        loop {
            let entry = mover.pool().await?.into_iter().find(|e| e.address == *dial);
            let why_not = match (&entry, max_fails) {
                (None, _) => "is not in Caddy's upstream pool".to_string(),
                (Some(e), Some(max)) if e.fails >= max => format!(
                    "has {} failed request(s) counted by the passive health check (max_fails {max}): Caddy sends it nothing until they expire",
                    e.fails
                ),
                (Some(_), _) => return Ok(()),
            };
            if Instant::now() >= deadline {
                return Err(format!(
                    "caddy {b}: after {} (lb.enable_timeout), {dial} {why_not}",
                    humantime::format_duration(self.enable_timeout)
                ));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

#[cfg(test)]
mod tests;
