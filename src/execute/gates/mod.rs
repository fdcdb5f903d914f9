//! Gates: the checks of `[[gates]]` on live traffic, evaluated while a
//! batch bakes (`watch`), each gate in its own loop:
//!
//! - it is evaluated every `interval` from the start of the bake, and once
//!   more when the bake ends: that last evaluation decides;
//! - `fail` at any evaluation fails the batch at once (every host of it,
//!   at [`StepKind::Gate`]), and the failure policy applies (rollback by
//!   default);
//! - `inconclusive` (too few answers, no data, a measurement that could
//!   not be made) lets the bake go on; at its end it becomes what the
//!   gate's `on_inconclusive` says;
//! - every evaluation is a `gate-evaluated` event with the values
//!   measured, and what each gate decided per batch is kept for the final
//!   table ([`GateRecord`]).
//!
//! The arithmetic of each type is in its own file (`haproxy`,
//! `prometheus`, `command`), apart from the requests made here.

mod command;
mod haproxy;
mod prometheus;

use std::sync::Mutex;

use futures::future::join_all;

use super::Executor;
use super::lb::Reach;
use super::pipeline::RunCtx;
use super::step::exec_request;
use super::watch::Watch;
use crate::config::OnInconclusive;
use crate::lb::{Counted, Driver, LbCtx, Member};
use crate::plan::gates::render_query;
use crate::plan::{Batch, BatchGate, Measure, Plan, StepKind};
use crate::report::{Event, GateSummary, HostResult, Measured, Verdict};
use crate::transport::{Quiet, Transport};

/// What the gates decided, batch by batch, for the final table.
#[derive(Debug, Default)]
pub(super) struct GateRecord(Mutex<Vec<GateSummary>>);

impl GateRecord {
    fn add(&self, summary: GateSummary) {
        self.0.lock().expect("gate record").push(summary);
    }

    /// Every decision so far, in batch and gate order.
    pub fn all(&self) -> Vec<GateSummary> {
        let mut all = self.0.lock().expect("gate record").clone();
        all.sort_by_key(|s| (s.batch, s.gate));
        all
    }
}

/// A gate's state across one bake.
enum Meter {
    /// The counters sampled so far.
    Haproxy(haproxy::Tally),
    /// Each evaluation stands alone.
    Stateless,
}

/// One evaluation: the verdict, the values, the words.
type Evaluation = (Verdict, Measured, String);

impl<T: Transport, L: Transport> Executor<'_, T, L> {
    /// Evaluates every gate of batch `number` (1-based) of `of` until the
    /// end of the watch; a gate that fails fails the batch through `watch`.
    pub(super) async fn watch_gates(
        &self,
        run: &RunCtx<'_>,
        batch: &Batch,
        number: usize,
        of: usize,
        watch: &Watch<'_>,
    ) {
        join_all(
            batch
                .gates
                .iter()
                .map(|gate| self.watch_gate(run, batch, gate, (number, of), watch)),
        )
        .await;
    }

    async fn watch_gate(
        &self,
        run: &RunCtx<'_>,
        batch: &Batch,
        gate: &BatchGate,
        (number, of): (usize, usize),
        watch: &Watch<'_>,
    ) {
        let hosts = measured(run, gate);
        let names: Vec<String> = hosts.iter().map(|m| m.host.clone()).collect();
        let mut meter = match &gate.measure {
            Measure::Haproxy { lb, .. } => {
                let mut tally = haproxy::Tally::default();
                // The baseline; a failed sample leaves the next one to be it.
                if let Ok(counted) = self.answers(lb.as_ref(), &hosts).await {
                    tally.add(watch.started.elapsed(), &counted);
                }
                Meter::Haproxy(tally)
            }
            _ => Meter::Stateless,
        };
        let summary = |outcome: Verdict, (_, measured, message): &Evaluation| GateSummary {
            batch: number,
            of,
            gate: gate.index,
            kind: gate.kind().to_string(),
            outcome,
            measured: measured.clone(),
            limit: gate.limit(),
            message: message.clone(),
        };
        let mut latest: Option<Evaluation> = None;
        let mut next = watch.started + gate.interval;
        loop {
            let last = next >= watch.bake_end;
            tokio::select! {
                () = tokio::time::sleep_until(next.min(watch.bake_end)) => {}
                () = watch.over.cancelled() => break,
                () = self.cancel.cancelled() => break,
            }
            let (verdict, measured, message) =
                self.evaluate(run, gate, &hosts, &mut meter, watch).await;
            let outcome = match verdict {
                Verdict::Fail => Some(Verdict::Fail),
                _ if !last => None,
                Verdict::Pass => Some(Verdict::Pass),
                Verdict::Inconclusive => Some(match gate.on_inconclusive {
                    OnInconclusive::Fail => Verdict::Fail,
                    OnInconclusive::Pass => Verdict::Pass,
                }),
            };
            let message = match (verdict, outcome) {
                (Verdict::Inconclusive, Some(Verdict::Fail)) => format!(
                    "{message}; still inconclusive at the end of the bake, and on_inconclusive = \"fail\""
                ),
                (Verdict::Inconclusive, Some(_)) => format!(
                    "{message}; inconclusive at the end of the bake: passing, as on_inconclusive = \"pass\""
                ),
                _ => message,
            };
            self.reporter.event(&Event::GateEvaluated {
                batch: number,
                of,
                gate: gate.index,
                kind: gate.kind().to_string(),
                hosts: names.clone(),
                verdict,
                outcome,
                measured: measured.clone(),
                limit: gate.limit(),
                message: message.clone(),
                elapsed: watch.started.elapsed(),
            });
            let evaluation = (verdict, measured, message);
            if let Some(outcome) = outcome {
                run.gates.add(summary(outcome, &evaluation));
                if outcome == Verdict::Fail {
                    watch.fail(
                        batch.hosts().map(str::to_string).collect(),
                        StepKind::Gate,
                        format!("gates[{}] {}: {}", gate.index, gate.kind(), evaluation.2),
                    );
                }
                return;
            }
            latest = Some(evaluation);
            next += gate.interval;
        }
        // The bake ended before this gate decided (Ctrl-C, or another
        // check failed the batch): its last word, undecided.
        if let Some(evaluation) = latest {
            run.gates.add(summary(Verdict::Inconclusive, &evaluation));
        }
    }

    /// Before anything changes: each gate of the plan that can be asked
    /// without side effects is asked once, so that a gate that could never
    /// measure refuses the run rather than failing (or, with
    /// `on_inconclusive = "pass"`, silently passing) every bake: a
    /// Prometheus that cannot be reached or refuses the query, a load
    /// balancer that counts no answers for a measured host. Command gates
    /// are not run ahead.
    pub(super) async fn gates_preflight(&self, plan: &Plan) -> Result<(), String> {
        let mut seen = std::collections::BTreeSet::new();
        let first_of_each = plan
            .batches
            .iter()
            .flat_map(|b| &b.gates)
            .filter(|g| seen.insert(g.index));
        let mut problems = Vec::new();
        for gate in first_of_each {
            let problem = match &gate.measure {
                Measure::Prometheus {
                    url,
                    query,
                    timeout,
                    ..
                } => prometheus::ask(&self.http, url, query, *timeout)
                    .await
                    .err(),
                Measure::Haproxy { lb, .. } => match self.answers(lb.as_ref(), &gate.hosts).await {
                    Err(e) => Some(e),
                    Ok(counted) => {
                        let mut uncounted: Vec<&str> = counted
                            .iter()
                            .filter(|c| c.answers.is_none())
                            .map(|c| c.host.as_str())
                            .collect();
                        uncounted.dedup();
                        (!uncounted.is_empty()).then(|| {
                            format!(
                                "HAProxy counts no HTTP answers for {} (a server missing, or a backend in TCP mode)",
                                uncounted.join(", ")
                            )
                        })
                    }
                },
                Measure::Command { .. } => None,
            };
            if let Some(problem) = problem {
                problems.push(format!("gates[{}] {}: {problem}", gate.index, gate.kind()));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "a gate cannot measure, so no batch could pass it: {}",
                problems.join("; ")
            ))
        }
    }

    /// One evaluation of `gate` on `hosts`, now.
    async fn evaluate(
        &self,
        run: &RunCtx<'_>,
        gate: &BatchGate,
        hosts: &[Member],
        meter: &mut Meter,
        watch: &Watch<'_>,
    ) -> Evaluation {
        let names: Vec<String> = hosts.iter().map(|m| m.host.clone()).collect();
        match (&gate.measure, meter) {
            (
                Measure::Haproxy {
                    max_error_rate,
                    min_requests,
                    window,
                    lb,
                },
                Meter::Haproxy(tally),
            ) => match self.answers(lb.as_ref(), hosts).await {
                Ok(counted) => {
                    let sampled = tally.add(watch.started.elapsed(), &counted);
                    let counts = tally.counts(&names, *window);
                    haproxy::judge(counts, sampled, &names, *max_error_rate, *min_requests)
                }
                Err(e) => unmeasured(format!("could not read HAProxy's counters: {e}")),
            },
            (
                Measure::Prometheus {
                    url,
                    query,
                    template,
                    max,
                    min,
                    timeout,
                },
                _,
            ) => {
                // Rendered again only if a measured host dropped out.
                let query = if hosts.len() == gate.hosts.len() {
                    query.clone()
                } else {
                    let plan = run.plan;
                    render_query(template, &plan.app, &plan.stage, &plan.release, hosts)
                };
                match prometheus::ask(&self.http, url, &query, *timeout).await {
                    Ok(values) => prometheus::judge(&values, *min, *max),
                    Err(e) => unmeasured(format!("could not query: {e}")),
                }
            }
            (Measure::Command { commands, timeout }, _) => {
                let runs = commands
                    .iter()
                    .filter(|c| c.host.as_ref().is_none_or(|h| names.contains(h)))
                    .map(|c| async move {
                        let request = exec_request(&c.cmd, None, Some(*timeout));
                        let output = match &c.host {
                            None => self.local.exec("local", request, &Quiet).await,
                            Some(host) => self.transport.exec(host, request, &Quiet).await,
                        };
                        command::judge_run(c.host.as_deref(), output)
                    });
                command::judge(join_all(runs).await)
            }
            (Measure::Haproxy { .. }, Meter::Stateless) => {
                unreachable!("a haproxy gate always has its tally")
            }
        }
    }

    /// The load balancer's answer counters for `hosts`.
    async fn answers(&self, lb: &dyn Driver, hosts: &[Member]) -> Result<Vec<Counted>, String> {
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
        lb.answers(&ctx, hosts).await.unwrap_or_else(|| {
            Err(format!(
                "the {} driver does not count answers per server",
                lb.name()
            ))
        })
    }
}

/// An evaluation whose measurement could not be made.
fn unmeasured(error: String) -> Evaluation {
    (
        Verdict::Inconclusive,
        Measured::Error {
            error: error.clone(),
        },
        error,
    )
}

/// The gate's hosts that run the release now and have not failed in this
/// run (with `on_failure = "continue"` a failed host may be out of
/// service): the hosts switched so far, however the batches were cut.
fn measured(run: &RunCtx<'_>, gate: &BatchGate) -> Vec<Member> {
    gate.hosts
        .iter()
        .filter(|m| {
            run.book.get(&m.host).is_some_and(|r| {
                r.now.as_ref() == Some(&run.plan.release)
                    && !matches!(r.result, Some(HostResult::Failed { .. }))
            })
        })
        .cloned()
        .collect()
}
