//! The bake: once a batch is back in service, it is watched for
//! `rollout.bake` before the next batch starts. During the watch each
//! host's health check keeps being polled; a host whose check fails
//! [`FAILS_IN_A_ROW`] times in a row fails the batch, and the failure
//! policy applies as for any failed step. A first Ctrl-C ends the watch
//! (the batch is in service; no new batch starts), and so do a promote, an
//! abort and a rollback from `shipit STAGE …` (`control`).

use std::sync::Mutex;
use std::time::Duration;

use futures::future::join_all;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::pipeline::RunCtx;
use super::{Executor, health};
use crate::plan::{Action, Batch, HttpCheck, StepKind};
use crate::report::{Event, HostResult};
use crate::transport::Transport;

/// Failed checks in a row that fail a host during a watch: one failed
/// answer can be a blip, two are a trend.
pub const FAILS_IN_A_ROW: u32 = 2;

impl<T: Transport, L: Transport> Executor<'_, T, L> {
    /// Watches batch `number` (1-based) of `of` for its bake. Hosts that
    /// fail are marked failed in the book.
    pub(super) async fn watch(&self, run: &RunCtx<'_>, batch: &Batch, number: usize, of: usize) {
        if batch.bake.is_zero() {
            return;
        }
        // A promote, an abort or a rollback ends the bake (`control`).
        let Some(steer) = self.bake_watch(number, of, batch.bake) else {
            return;
        };
        let hosts: Vec<String> = batch.hosts().map(str::to_string).collect();
        self.reporter.event(&Event::BakeStarted {
            batch: number,
            of,
            hosts: hosts.clone(),
            duration: batch.bake,
        });
        let started = Instant::now();
        let deadline = started + batch.bake;
        // In-service hosts with a health check are polled; a host an
        // operator keeps out is not in service, so not watched.
        let checks: Vec<(&str, &HttpCheck)> = batch
            .pipelines
            .iter()
            .filter(|p| run.book.get(&p.host).is_some_and(|r| r.left_out.is_none()))
            .filter_map(|p| {
                p.steps.iter().find_map(|s| match &s.action {
                    Action::Http { check } if s.kind == StepKind::Health => {
                        Some((p.host.as_str(), check))
                    }
                    _ => None,
                })
            })
            .collect();
        let failures: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());
        let over = CancellationToken::new();
        let watchers = checks.iter().map(|(host, check)| {
            let (failures, over) = (&failures, &over);
            async move {
                if let Some(why) = self.watch_health(check, started, deadline, over).await {
                    failures
                        .lock()
                        .expect("failures")
                        .push((host.to_string(), why));
                    over.cancel();
                }
            }
        });
        tokio::select! {
            // Watchers end early only by failing; with none (no host has a
            // health check) the bake still lasts its time.
            () = async { join_all(watchers).await; over.cancelled().await } => {}
            () = tokio::time::sleep_until(deadline) => {}
            () = self.cancel.cancelled() => {}
            () = steer.cut() => {}
        }
        over.cancel();
        let ended_by = steer.end();
        let failures = failures.into_inner().expect("failures");
        for (host, why) in &failures {
            self.note(Some(host), why);
            run.book.update(host, |r| {
                r.result = Some(HostResult::Failed {
                    step: StepKind::Bake,
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
            ended_by,
        });
    }

    /// Polls one health check until `deadline`; the failure, if the check
    /// failed [`FAILS_IN_A_ROW`] times in a row.
    async fn watch_health(
        &self,
        check: &HttpCheck,
        started: Instant,
        deadline: Instant,
        over: &CancellationToken,
    ) -> Option<String> {
        let mut in_a_row = 0;
        loop {
            let next = Instant::now() + check.interval;
            if next >= deadline {
                return None;
            }
            tokio::select! {
                () = tokio::time::sleep_until(next) => {}
                () = over.cancelled() => return None,
                () = self.cancel.cancelled() => return None,
            }
            match health::probe(&self.http, check).await {
                health::Probe::Healthy => in_a_row = 0,
                failed => {
                    in_a_row += 1;
                    if in_a_row >= FAILS_IN_A_ROW {
                        return Some(format!(
                            "failed its health check {in_a_row} times in a row during the bake ({} into it): {}",
                            humantime::format_duration(Duration::from_secs(
                                started.elapsed().as_secs()
                            )),
                            failed.describe(check)
                        ));
                    }
                }
            }
        }
    }
}
