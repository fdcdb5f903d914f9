//! The watch of a batch back in service. It lasts the batch's bake
//! (`rollout.bake`, from when the batch is back) and, for each host, its
//! `health.min_healthy_time` (from when that host went back), whichever
//! ends later, before the next batch starts. Its checks run side by side,
//! each in a helper of its own:
//!
//! - [`Executor::watch_health`]: each host's health check keeps being
//!   polled until its own watch ends; a host whose check fails
//!   [`FAILS_IN_A_ROW`] times in a row (failures within
//!   `health.start_period` of its restart do not count) fails;
//! - [`Executor::watch_service`]: the load balancer must keep reporting
//!   each host in service; a host it reports out of service (drain, maint,
//!   DOWN) at [`FAILS_IN_A_ROW`] polls in a row fails;
//! - [`Executor::watch_gates`] (`gates`): the batch's gates, during its
//!   bake; a gate that fails fails every host of the batch.
//!
//! A failure within a host's min_healthy_time is blamed on that window
//! (`StepKind::MinHealthyTime`), a later one on the bake. The first
//! failure ends the watch ([`Watch::fail`]), and the failure policy
//! applies as for any failed step. A first Ctrl-C ends the watch (the
//! batch is in service; no new batch starts), and so do a promote, an
//! abort and a rollback from `shipit STAGE …` (`control`). A host an
//! operator keeps out of the load balancer is not in service, so not
//! watched.

use std::sync::Mutex;
use std::time::Duration;

use futures::future::join_all;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Executor;
use super::health::{FAILS_IN_A_ROW, Probe, Watching};
use super::lb::Reach;
use super::pipeline::RunCtx;
use crate::lb::{LbAction, LbCtx, LbOp, ServiceState};
use crate::plan::{Action, Batch, HealthCheck, StepKind};
use crate::report::{Event, HostResult};
use crate::transport::{Quiet, Transport};

/// How often the load balancer is asked about the batch during a watch.
pub const SERVICE_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// One watch of one batch, shared by its checks: when it started and
/// ends, and what it found wrong.
pub(super) struct Watch<'a> {
    pub started: Instant,
    /// The whole watch ends here: the bake, or the last host's
    /// min_healthy_time, whichever is later.
    pub deadline: Instant,
    /// The bake ends here; gates decide then.
    pub bake_end: Instant,
    /// Cancelled at the first failure: the other checks stop.
    pub over: &'a CancellationToken,
    found: Mutex<Vec<Finding>>,
}

/// Hosts the watch failed, the step to blame and why.
struct Finding {
    hosts: Vec<String>,
    step: StepKind,
    why: String,
}

impl Watch<'_> {
    /// Fails `hosts` at `step` and ends the watch.
    pub fn fail(&self, hosts: Vec<String>, step: StepKind, why: String) {
        self.found
            .lock()
            .expect("watch findings")
            .push(Finding { hosts, step, why });
        self.over.cancel();
    }

    /// Returns at the deadline, or when a check failed.
    async fn until_the_end(&self) {
        tokio::select! {
            () = tokio::time::sleep_until(self.deadline) => {}
            () = self.over.cancelled() => {}
        }
    }
}

/// One host under watch.
struct Watched<'p> {
    host: &'p str,
    check: Option<&'p HealthCheck>,
    /// Its watch ends here.
    until: Instant,
    /// Its min_healthy_time ends here (if it has one): failures before are
    /// failures of that window.
    settling: Option<Instant>,
    /// When it went back into service.
    back: Instant,
    restarted: Instant,
    enable: Option<&'p LbAction>,
}

impl Watched<'_> {
    /// The step a failure found `now` is blamed on, and the words for when.
    fn blame(&self, now: Instant, watch: &Watch<'_>) -> (StepKind, String) {
        match (self.settling, self.check) {
            (Some(end), Some(check)) if now < end => (
                StepKind::MinHealthyTime,
                format!(
                    "{} after it was put back, within health.min_healthy_time ({})",
                    round_secs(now.saturating_duration_since(self.back)),
                    humantime::format_duration(check.min_healthy_time)
                ),
            ),
            _ => (
                StepKind::Bake,
                format!(
                    "during the bake ({} into it)",
                    round_secs(now.saturating_duration_since(watch.started))
                ),
            ),
        }
    }
}

impl<T: Transport, L: Transport> Executor<'_, T, L> {
    /// Watches batch `number` (1-based) of `of`. Hosts that fail are
    /// marked failed in the book.
    pub(super) async fn watch(&self, run: &RunCtx<'_>, batch: &Batch, number: usize, of: usize) {
        let started = Instant::now();
        let watched = Self::watched(run, batch, started);
        let bake_end = started + batch.bake;
        let deadline = watched.iter().map(|w| w.until).fold(bake_end, Instant::max);
        if deadline <= started {
            return;
        }
        // A promote, an abort or a rollback ends the bake (`control`).
        let Some(steer) = self.bake_watch(number, of, batch.bake) else {
            return;
        };
        let hosts: Vec<String> = batch.hosts().map(str::to_string).collect();
        // As configured: the bake, or the longest min_healthy_time (each
        // counts from its host's return, a moment ago).
        let nominal = watched
            .iter()
            .filter_map(|w| w.check.map(|c| c.min_healthy_time))
            .fold(batch.bake, Duration::max);
        self.reporter.event(&Event::BakeStarted {
            batch: number,
            of,
            hosts,
            duration: nominal,
        });
        let over = CancellationToken::new();
        let watch = Watch {
            started,
            deadline,
            bake_end,
            over: &over,
            found: Mutex::new(Vec::new()),
        };
        // Each check ends by itself by its deadline (its last request
        // bounded by its own timeout), or when another one failed; the
        // watch lasts its whole length whenever the checks end.
        let checks = async {
            tokio::join!(
                self.watch_health(&watched, &watch),
                self.watch_service(&watched, &watch),
                self.watch_gates(run, batch, number, of, &watch),
                watch.until_the_end(),
            )
        };
        tokio::select! {
            _ = checks => {}
            () = self.cancel.cancelled() => {}
            () = steer.cut() => {}
        }
        over.cancel();
        let ended_by = steer.end();
        let found = watch.found.into_inner().expect("watch findings");
        for finding in &found {
            match finding.hosts.as_slice() {
                [host] => self.note(Some(host), &finding.why),
                hosts => self.note(None, &format!("{} fail: {}", hosts.join(", "), finding.why)),
            }
            for host in &finding.hosts {
                run.book.update(host, |r| {
                    r.result = Some(HostResult::Failed {
                        step: finding.step,
                        error: finding.why.clone(),
                        interrupted: false,
                    });
                });
            }
        }
        self.reporter.event(&Event::BakeFinished {
            batch: number,
            of,
            ok: found.is_empty(),
            duration: started.elapsed(),
            interrupted: self.cancel.is_cancelled(),
            ended_by,
        });
    }

    /// The hosts of `batch` to watch from `now`, and until when: each host
    /// in service, for the bake or its min_healthy_time.
    fn watched<'p>(run: &RunCtx<'_>, batch: &'p Batch, now: Instant) -> Vec<Watched<'p>> {
        batch
            .pipelines
            .iter()
            .filter_map(|p| {
                let r = run.book.get(&p.host)?;
                if r.left_out.is_some() {
                    return None;
                }
                let check = p.steps.iter().find_map(|s| match &s.action {
                    Action::Health { check } if s.kind == StepKind::Health => Some(check),
                    _ => None,
                });
                let back = r.in_service.unwrap_or(now);
                let settling = check
                    .filter(|c| !c.min_healthy_time.is_zero())
                    .map(|c| back + c.min_healthy_time);
                let until = settling.map_or(now + batch.bake, |s| s.max(now + batch.bake));
                let enable = p.steps.iter().find_map(|s| match &s.action {
                    Action::Lb { lb } if lb.op == LbOp::Enable => Some(lb),
                    _ => None,
                });
                Some(Watched {
                    host: p.host.as_str(),
                    check,
                    until,
                    settling,
                    back,
                    restarted: r.restarted.unwrap_or(back),
                    enable,
                })
            })
            .collect()
    }

    /// Polls the health check of every watched host until its watch ends.
    async fn watch_health(&self, watched: &[Watched<'_>], watch: &Watch<'_>) {
        join_all(watched.iter().map(|w| async move {
            if let Some((step, why)) = self.poll_health(w, watch).await {
                watch.fail(vec![w.host.to_string()], step, why);
            }
        }))
        .await;
    }

    /// Polls one host's check until its watch ends; the failure, if it
    /// failed [`FAILS_IN_A_ROW`] counted times in a row.
    async fn poll_health(&self, w: &Watched<'_>, watch: &Watch<'_>) -> Option<(StepKind, String)> {
        let check = w.check?;
        let mut judge = Watching::new(check.start_period);
        let prober = self.prober();
        loop {
            let next = Instant::now() + check.interval;
            if next >= w.until {
                return None;
            }
            tokio::select! {
                () = tokio::time::sleep_until(next) => {}
                () = watch.over.cancelled() => return None,
                () = self.cancel.cancelled() => return None,
            }
            let now = Instant::now();
            let seen = prober.probe(w.host, check).await;
            let since_restart = Instant::now().saturating_duration_since(w.restarted);
            if !judge.see(since_restart, seen == Probe::Healthy) {
                continue;
            }
            let (step, when) = w.blame(now, watch);
            return Some((
                step,
                format!(
                    "failed its health check {} times in a row {when}: {}",
                    judge.in_a_row().max(FAILS_IN_A_ROW),
                    seen.describe(check)
                ),
            ));
        }
    }

    /// Asks the load balancer about the watched hosts every
    /// [`SERVICE_POLL_INTERVAL`] until the watch ends; a host it reports
    /// out of service [`FAILS_IN_A_ROW`] times in a row fails. A balancer
    /// that cannot be asked says nothing about the hosts (once noted).
    async fn watch_service(&self, watched: &[Watched<'_>], watch: &Watch<'_>) {
        let enabled: Vec<(&Watched<'_>, &LbAction)> = watched
            .iter()
            .filter_map(|w| w.enable.map(|lb| (w, lb)))
            .collect();
        let Some(driver) = enabled.first().map(|(_, lb)| lb.driver.clone()) else {
            return;
        };
        let members: Vec<_> = enabled.iter().map(|(_, lb)| lb.member.clone()).collect();
        let reach = Reach {
            transport: self.transport,
            local: self.local,
        };
        let ctx = LbCtx {
            remote: &reach,
            observer: &Quiet,
            command_timeout: self.command_timeout,
            cancel: &self.hurry,
        };
        let mut out_in_a_row = vec![0u32; members.len()];
        let mut noted = false;
        loop {
            let next = Instant::now() + SERVICE_POLL_INTERVAL;
            if next >= watch.deadline {
                return;
            }
            tokio::select! {
                () = tokio::time::sleep_until(next) => {}
                () = watch.over.cancelled() => return,
                () = self.cancel.cancelled() => return,
            }
            let states = match driver.states(&ctx, &members).await {
                Ok(states) => states,
                Err(e) => {
                    if !noted {
                        self.note(
                            None,
                            &format!("cannot ask the load balancer during the watch: {e}"),
                        );
                        noted = true;
                    }
                    continue;
                }
            };
            let now = Instant::now();
            for ((w, lb), count) in enabled.iter().zip(&mut out_in_a_row) {
                let state = states
                    .get(&lb.member.host)
                    .copied()
                    .unwrap_or(ServiceState::Unknown);
                if !state.is_out() || now >= w.until {
                    *count = 0;
                    continue;
                }
                *count += 1;
                if *count >= FAILS_IN_A_ROW {
                    let (step, when) = w.blame(now, watch);
                    watch.fail(
                        vec![lb.member.host.clone()],
                        step,
                        format!(
                            "the load balancer reported it out of service ({}) at {count} polls in a row {when}",
                            state.as_str()
                        ),
                    );
                }
            }
        }
    }
}

/// Seconds to a tenth, as people read them: `1.6s`.
fn round_secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}
