//! The watch of a batch back in service: it lasts the batch's bake
//! (`rollout.bake`, from when the batch is back) and, for each host, its
//! `health.min_healthy_time` (from when that host went back), whichever
//! ends later, before the next batch starts. During the watch each host's
//! health check keeps being polled; a host whose check fails
//! [`FAILS_IN_A_ROW`] times in a row (failures within `health.start_period`
//! of its restart do not count), or that its load balancer takes out of
//! service while its min_healthy_time runs, fails the batch, and the
//! failure policy applies as for any failed step. A first Ctrl-C ends the
//! watch (the batch is in service; no new batch starts).

use std::sync::Mutex;
use std::time::Duration;

use futures::future::join_all;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Executor;
use super::health::{FAILS_IN_A_ROW, Probe, Watching};
use super::pipeline::RunCtx;
use crate::lb::{LbAction, LbOp, ServiceState};
use crate::plan::{Action, Batch, HealthCheck, StepKind};
use crate::report::{Event, HostResult};
use crate::transport::Transport;

/// One host under watch.
struct Watched<'p> {
    host: &'p str,
    check: &'p HealthCheck,
    /// Its watch ends here.
    until: Instant,
    /// Its min_healthy_time ends here (if it has one): failures before
    /// are failures of that window, and its load balancer is asked too.
    settling: Option<Instant>,
    /// When it went back into service.
    back: Instant,
    restarted: Instant,
    enable: Option<&'p LbAction>,
}

impl<T: Transport, L: Transport> Executor<'_, T, L> {
    /// Watches batch `number` (1-based) of `of`. Hosts that fail are
    /// marked failed in the book.
    pub(super) async fn watch(&self, run: &RunCtx<'_>, batch: &Batch, number: usize, of: usize) {
        let started = Instant::now();
        let watched = Self::watched(run, batch, started);
        let Some(end) = watched.iter().map(|w| w.until).max() else {
            return;
        };
        let hosts: Vec<String> = batch.hosts().map(str::to_string).collect();
        // As configured: the bake, or the longest min_healthy_time (each
        // counts from its host's return, a moment ago).
        let nominal = watched
            .iter()
            .map(|w| w.check.min_healthy_time)
            .fold(batch.bake, Duration::max);
        self.reporter.event(&Event::BakeStarted {
            batch: number,
            of,
            hosts: hosts.clone(),
            duration: nominal,
        });
        let failures: Mutex<Vec<(String, StepKind, String)>> = Mutex::new(Vec::new());
        let over = CancellationToken::new();
        let watchers = watched.iter().map(|w| {
            let (failures, over) = (&failures, &over);
            async move {
                if let Some((kind, why)) = self.watch_host(w, started, over).await {
                    failures
                        .lock()
                        .expect("failures")
                        .push((w.host.to_string(), kind, why));
                    over.cancel();
                }
            }
        });
        tokio::select! {
            _ = join_all(watchers) => {}
            () = tokio::time::sleep_until(end) => {}
            () = self.cancel.cancelled() => {}
        }
        over.cancel();
        let failures = failures.into_inner().expect("failures");
        for (host, kind, why) in &failures {
            self.note(Some(host), why);
            run.book.update(host, |r| {
                r.result = Some(HostResult::Failed {
                    step: *kind,
                    error: why.clone(),
                    interrupted: false,
                });
            });
        }
        self.reporter.event(&Event::BakeFinished {
            batch: number,
            of,
            ok: failures.is_empty(),
            duration: started.elapsed(),
            interrupted: self.cancel.is_cancelled(),
        });
    }

    /// The hosts of `batch` to watch from `now`, and until when: in-service
    /// hosts with a health check, for the bake or their min_healthy_time.
    /// A host an operator keeps out is not in service, so not watched.
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
                })?;
                let back = r.in_service.unwrap_or(now);
                let settling =
                    (!check.min_healthy_time.is_zero()).then(|| back + check.min_healthy_time);
                let until = settling.map_or(now + batch.bake, |s| s.max(now + batch.bake));
                let enable = p.steps.iter().find_map(|s| match &s.action {
                    Action::Lb { lb } if lb.op == LbOp::Enable => Some(lb),
                    _ => None,
                });
                (until > now).then_some(Watched {
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

    /// Polls one host until its watch ends; the failure, if it failed.
    async fn watch_host(
        &self,
        w: &Watched<'_>,
        started: Instant,
        over: &CancellationToken,
    ) -> Option<(StepKind, String)> {
        let mut judge = Watching::new(w.check.start_period);
        let prober = self.prober();
        loop {
            let next = Instant::now() + w.check.interval;
            if next >= w.until {
                return None;
            }
            tokio::select! {
                () = tokio::time::sleep_until(next) => {}
                () = over.cancelled() => return None,
                () = self.cancel.cancelled() => return None,
            }
            let now = Instant::now();
            let settling = w.settling.is_some_and(|s| now < s);
            if settling
                && let Some(lb) = w.enable
                && let Some(state) = self.lb_left_service(lb).await
            {
                return Some((
                    StepKind::MinHealthyTime,
                    format!(
                        "is {} in its load balancer {} after it was put back, within health.min_healthy_time ({})",
                        state.as_str(),
                        round_secs(now.saturating_duration_since(w.back)),
                        humantime::format_duration(w.check.min_healthy_time)
                    ),
                ));
            }
            let seen = prober.probe(w.host, w.check).await;
            let since_restart = Instant::now().saturating_duration_since(w.restarted);
            if !judge.see(since_restart, seen == Probe::Healthy) {
                continue;
            }
            let what = format!(
                "failed its health check {} times in a row",
                judge.in_a_row().max(FAILS_IN_A_ROW)
            );
            return Some(if settling {
                (
                    StepKind::MinHealthyTime,
                    format!(
                        "{what} {} after it was put back, within health.min_healthy_time ({}): {}",
                        round_secs(now.saturating_duration_since(w.back)),
                        humantime::format_duration(w.check.min_healthy_time),
                        seen.describe(w.check)
                    ),
                )
            } else {
                (
                    StepKind::Bake,
                    format!(
                        "{what} during the bake ({} into it): {}",
                        round_secs(started.elapsed()),
                        seen.describe(w.check)
                    ),
                )
            });
        }
    }

    /// The state of the host in its load balancer, if it is out of service
    /// there (DOWN, in maintenance or draining); `None` while in service or
    /// when the balancer cannot tell.
    async fn lb_left_service(&self, lb: &LbAction) -> Option<ServiceState> {
        let reach = super::lb::Reach {
            transport: self.transport,
            local: self.local,
        };
        let ctx = crate::lb::LbCtx {
            remote: &reach,
            observer: &crate::transport::Quiet,
            command_timeout: self.command_timeout,
            cancel: &self.hurry,
        };
        let states = lb
            .driver
            .states(&ctx, std::slice::from_ref(&lb.member))
            .await
            .ok()?;
        states.get(&lb.member.host).copied().filter(|s| s.is_out())
    }
}

/// Seconds to a tenth, as people read them: `1.6s`.
fn round_secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}
