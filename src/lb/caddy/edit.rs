//! Taking one upstream out of the managed handler and putting it back, on
//! one Caddy (see `api` for the tracking server). Every change is made with
//! `If-Match` on what it was based on; a 412 means someone changed that
//! meanwhile (another host of the same batch, an operator), so the step
//! starts over from a fresh read.
//!
//! Taking out makes sure the tracking server lists the upstream first, so
//! Caddy keeps counting its requests once the handler no longer lists it.
//! Interrupted between the two, the upstream is in both lists, and serves
//! as before.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use super::admin::{self, Balancer};
use super::api::{self, Changed, Handler, Tracked};
use super::http::{Request, Response};
use crate::lb::Remote;

/// How many conflicting changes a step sits out before it gives up.
const MAX_CONFLICTS: u32 = 20;

/// How long an admin request that could not be carried waits before the
/// next try.
const RETRY_INTERVAL: Duration = Duration::from_millis(200);

/// What a take-out found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TookOut {
    /// Removed from the handler.
    Removed,
    /// Not in the handler, but tracked: out already (an earlier drain that
    /// was not followed by an enable).
    WasOut,
}

/// One Caddy, one route: reads and changes, each request retried while it
/// cannot be carried, until `deadline`.
pub struct Mover<'a> {
    pub remote: &'a dyn Remote,
    pub balancer: &'a Balancer,
    pub route_id: &'a str,
    pub deadline: Instant,
}

impl Mover<'_> {
    pub async fn handler(&self) -> Result<Handler, String> {
        let answer = self.call(&api::read_handler(self.route_id)).await?;
        Handler::parse(self.route_id, &answer).map_err(|e| format!("caddy {}: {e}", self.balancer))
    }

    pub async fn tracked(&self) -> Result<Tracked, String> {
        let request = api::read_tracked(self.route_id);
        let answer = self.call(&request).await?;
        Tracked::parse(self.route_id, &answer)
            .map_err(|e| format!("caddy {}: `{request}`: {e}", self.balancer))
    }

    pub async fn pool(&self) -> Result<Vec<api::PoolEntry>, String> {
        let request = api::read_pool();
        let answer = self.call(&request).await?;
        api::parse_pool(&answer).map_err(|e| format!("caddy {}: `{request}`: {e}", self.balancer))
    }

    /// Tracks `dial`'s upstream, then removes it from the handler (every
    /// copy, if the handler lists it more than once).
    pub async fn take_out(&self, dial: &str) -> Result<TookOut, String> {
        let mut removed = false;
        for _ in 0..MAX_CONFLICTS {
            let handler = self.handler().await?;
            let Some(index) = handler.position(dial) else {
                if removed {
                    return Ok(TookOut::Removed);
                }
                if self.tracked().await?.position(dial).is_some() {
                    return Ok(TookOut::WasOut);
                }
                return Err(format!(
                    "caddy {}: @id {} has no upstream {dial} (it has {}); check lb.server and the handler's upstreams",
                    self.balancer,
                    self.route_id,
                    handler.dials()
                ));
            };
            self.ensure_tracked(&handler.upstreams[index]).await?;
            let request = api::remove_upstream(self.route_id, index, &handler.etag);
            removed |= self.change(&request).await? == Changed::Done;
        }
        Err(self.gave_up(dial))
    }

    /// Lists `upstream` in the tracking server, as the handler has it: no
    /// change at all when it is there already.
    async fn ensure_tracked(&self, upstream: &Value) -> Result<(), String> {
        let dial = api::dial(upstream).unwrap_or_default();
        for _ in 0..MAX_CONFLICTS {
            let tracked = self.tracked().await?;
            let request = match (&tracked.upstreams, tracked.position(dial)) {
                (None, _) => api::create_tracked(self.route_id, upstream, &tracked.etag),
                (Some(_), None) => api::track(self.route_id, upstream, &tracked.etag),
                (Some(_), Some(_)) if tracked.find(dial) == Some(upstream) => return Ok(()),
                (Some(_), Some(index)) => {
                    api::retrack(self.route_id, index, upstream, &tracked.etag)
                }
            };
            if self.change(&request).await? == Changed::Done {
                return Ok(());
            }
        }
        Err(self.gave_up(dial))
    }

    /// Adds `dial`'s upstream back to the handler (as it was tracked, or
    /// `{"dial": ...}` if it is not), unless it is there. Returns the
    /// handler's passive `max_fails`.
    pub async fn put_back(&self, dial: &str) -> Result<Option<u64>, String> {
        for _ in 0..MAX_CONFLICTS {
            let handler = self.handler().await?;
            if handler.position(dial).is_some() {
                return Ok(handler.max_fails);
            }
            let tracked = self.tracked().await?;
            let upstream = tracked
                .find(dial)
                .cloned()
                .unwrap_or_else(|| json!({ "dial": dial }));
            let request = api::add_upstream(self.route_id, &upstream, &handler.etag);
            if self.change(&request).await? == Changed::Done {
                return Ok(handler.max_fails);
            }
        }
        Err(self.gave_up(dial))
    }

    /// Sends a change; a conflict comes back after a short pause.
    async fn change(&self, request: &Request) -> Result<Changed, String> {
        let answer = self.call(request).await?;
        let changed = api::changed(&answer)
            .map_err(|e| format!("caddy {}: `{request}`: {e}", self.balancer))?;
        if changed == Changed::Conflict {
            tracing::debug!("caddy {}: `{request}`: 412, reading again", self.balancer);
            tokio::time::sleep(jitter()).await;
        }
        Ok(changed)
    }

    /// One request, tried again while it cannot be carried (a refused
    /// connection, a dropped relay) until the deadline. With `If-Match`,
    /// a change that was made although its answer was lost comes back
    /// as a conflict, and the step reads again: no change is made twice.
    async fn call(&self, request: &Request) -> Result<Response, String> {
        let mut tries = 0u32;
        loop {
            tries += 1;
            match admin::ask(self.remote, self.balancer, request).await {
                Ok(answer) => return Ok(answer),
                Err(e) if Instant::now() + RETRY_INTERVAL >= self.deadline => {
                    return Err(if tries > 1 {
                        format!("{e} ({tries} tries)")
                    } else {
                        e
                    });
                }
                Err(e) => {
                    tracing::debug!("caddy request failed, trying again: {e}");
                    tokio::time::sleep(RETRY_INTERVAL).await;
                }
            }
        }
    }

    fn gave_up(&self, dial: &str) -> String {
        format!(
            "caddy {}: gave up changing {dial} after {MAX_CONFLICTS} conflicting changes to its config (412 Precondition Failed each time); is something else changing it in a loop?",
            self.balancer
        )
    }
}

/// 10-59 ms, so that two hosts of a batch that conflicted do not retry in
/// lockstep.
fn jitter() -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    Duration::from_millis(10 + u64::from(nanos % 50))
}
