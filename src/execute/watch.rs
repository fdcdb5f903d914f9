//! The bake: once a batch is back in service, it is watched for
//! `rollout.bake` before the next batch starts. The watch runs its checks
//! side by side until the bake ends, each in a helper of its own:
//!
//! - [`Executor::watch_health`]: each host's health check keeps being
//!   polled; a host whose check fails [`FAILS_IN_A_ROW`] times in a row
//!   fails;
//! - [`Executor::watch_service`]: the load balancer must keep reporting
//!   each host in service; a host it reports out of service (drain, maint,
//!   DOWN) at [`FAILS_IN_A_ROW`] polls in a row fails;
//! - [`Executor::watch_gates`] (`gates`): the batch's gates; a gate that
//!   fails fails every host of the batch.
//!
//! The first failure ends the watch ([`Watch::fail`]), and the failure
//! policy applies as for any failed step. A first Ctrl-C ends the watch
//! (the batch is in service; no new batch starts). A host an operator
//! keeps out of the load balancer is not in service, so not watched.

use std::sync::Mutex;
use std::time::Duration;

use futures::future::join_all;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::lb::Reach;
use super::pipeline::RunCtx;
use super::{Executor, health};
use crate::lb::{LbAction, LbCtx, LbOp, ServiceState};
use crate::plan::{Action, Batch, HttpCheck, Pipeline, StepKind};
use crate::report::{Event, HostResult};
use crate::transport::{Quiet, Transport};

/// Failed checks in a row that fail a host during a watch: one failed
/// answer can be a blip, two are a trend.
pub const FAILS_IN_A_ROW: u32 = 2;

/// How often the load balancer is asked about the batch during a watch.
pub const SERVICE_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// One watch of one batch, shared by its checks: when it started and
/// ends, and what it found wrong.
pub(super) struct Watch<'a> {
    pub started: Instant,
    pub deadline: Instant,
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

    /// How long the watch has run, to the second, for messages.
    fn elapsed(&self) -> humantime::FormattedDuration {
        humantime::format_duration(Duration::from_secs(self.started.elapsed().as_secs()))
    }
}

impl<T: Transport, L: Transport> Executor<'_, T, L> {
    /// Watches batch `number` (1-based) of `of` for its bake. Hosts that
    /// fail are marked failed in the book.
    pub(super) async fn watch(&self, run: &RunCtx<'_>, batch: &Batch, number: usize, of: usize) {
        if batch.bake.is_zero() {
            return;
        }
        let hosts: Vec<String> = batch.hosts().map(str::to_string).collect();
        self.reporter.event(&Event::BakeStarted {
            batch: number,
            of,
            hosts: hosts.clone(),
            duration: batch.bake,
        });
        let over = CancellationToken::new();
        let started = Instant::now();
        let watch = Watch {
            started,
            deadline: started + batch.bake,
            over: &over,
            found: Mutex::new(Vec::new()),
        };
        let in_service: Vec<&Pipeline> = batch
            .pipelines
            .iter()
            .filter(|p| run.book.get(&p.host).is_some_and(|r| r.left_out.is_none()))
            .collect();
        // Each check ends by itself by the deadline (its last request
        // bounded by its own timeout), or when another one failed; the
        // watch lasts its whole bake whenever the checks end.
        let checks = async {
            tokio::join!(
                self.watch_health(&in_service, &watch),
                self.watch_service(&in_service, &watch),
                self.watch_gates(run, batch, number, of, &watch),
                watch.until_the_end(),
            )
        };
        tokio::select! {
            _ = checks => {}
            () = self.cancel.cancelled() => {}
        }
        over.cancel();
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
        });
    }

    /// Polls the health check of every host in service until the watch ends.
    async fn watch_health(&self, in_service: &[&Pipeline], watch: &Watch<'_>) {
        let checks = in_service.iter().filter_map(|p| {
            p.steps.iter().find_map(|s| match &s.action {
                Action::Http { check } if s.kind == StepKind::Health => {
                    Some((p.host.as_str(), check))
                }
                _ => None,
            })
        });
        join_all(checks.map(|(host, check)| async move {
            if let Some(why) = self.poll_health(check, watch).await {
                watch.fail(vec![host.to_string()], StepKind::Bake, why);
            }
        }))
        .await;
    }

    /// Polls one health check until the watch ends; the failure, if the
    /// check failed [`FAILS_IN_A_ROW`] times in a row.
    async fn poll_health(&self, check: &HttpCheck, watch: &Watch<'_>) -> Option<String> {
        let mut in_a_row = 0;
        loop {
            let next = Instant::now() + check.interval;
            if next >= watch.deadline {
                return None;
            }
            tokio::select! {
                () = tokio::time::sleep_until(next) => {}
                () = watch.over.cancelled() => return None,
                () = self.cancel.cancelled() => return None,
            }
            match health::probe(&self.http, check).await {
                health::Probe::Healthy => in_a_row = 0,
                failed => {
                    in_a_row += 1;
                    if in_a_row >= FAILS_IN_A_ROW {
                        return Some(format!(
                            "failed its health check {in_a_row} times in a row during the bake ({} into it): {}",
                            watch.elapsed(),
                            failed.describe(check)
                        ));
                    }
                }
            }
        }
    }

    /// Asks the load balancer about the hosts in service every
    /// [`SERVICE_POLL_INTERVAL`] until the watch ends; a host it reports
    /// out of service [`FAILS_IN_A_ROW`] times in a row fails. A balancer
    /// that cannot be asked says nothing about the hosts (once noted).
    async fn watch_service(&self, in_service: &[&Pipeline], watch: &Watch<'_>) {
        let enabled: Vec<&LbAction> = in_service
            .iter()
            .filter_map(|p| {
                p.steps.iter().find_map(|s| match &s.action {
                    Action::Lb { lb } if lb.op == LbOp::Enable => Some(lb),
                    _ => None,
                })
            })
            .collect();
        let Some(driver) = enabled.first().map(|lb| lb.driver.clone()) else {
            return;
        };
        let members: Vec<_> = enabled.iter().map(|lb| lb.member.clone()).collect();
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
                            &format!("cannot ask the load balancer during the bake: {e}"),
                        );
                        noted = true;
                    }
                    continue;
                }
            };
            for (member, count) in members.iter().zip(&mut out_in_a_row) {
                let state = states
                    .get(&member.host)
                    .copied()
                    .unwrap_or(ServiceState::Unknown);
                if !state.is_out() {
                    *count = 0;
                    continue;
                }
                *count += 1;
                if *count >= FAILS_IN_A_ROW {
                    watch.fail(
                        vec![member.host.clone()],
                        StepKind::Bake,
                        format!(
                            "the load balancer reported it out of service ({}) at {count} polls in a row during the bake ({} into it)",
                            state.as_str(),
                            watch.elapsed()
                        ),
                    );
                }
            }
        }
    }
}
