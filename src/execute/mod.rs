//! Runs a [`Plan`] over a [`Transport`] and reports [`Event`]s.
//!
//! The executor decides nothing about *what* to run: that is the plan. It
//! owns *how*: phases in order, the hosts of a phase at the same time, each
//! host's steps in order, and the safety rules that hold whatever fails:
//!
//! - a failure in the prepare phase stops the run before any host switches;
//! - a batch starts only when every host of the previous one is done;
//! - when a host fails, its batch still finishes (no host is abandoned
//!   mid-step); then the plan's failure policy decides: roll every switched
//!   host back (the plan's `undo` pipelines), stop, or go on within the
//!   allowed share of failures;
//! - a host that was drained (or whose drain failed halfway) is enabled
//!   again unless it runs a release that did not prove healthy: no healthy
//!   host stays out of the load balancer because shipit stopped;
//! - on a cancel (Ctrl-C) no new step starts and running steps finish; on a
//!   second one (hurry) waits are cut short and only the essentials run.
//!
//! Every host keeps a journal of its transitions (`host::journal`) so that a
//! run whose machine died can be shown, repaired and resumed.

pub mod health;
pub mod lb;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::OnFailure;
use crate::host::ReleaseId;
use crate::host::journal;
use crate::host::revlog::Entry;
use crate::plan::{Action, Operation, Pipeline, Plan, Step, StepKind};
use crate::report::redact::Redact;
use crate::report::{Event, HostResult, HostSummary, Phase, Reporter};
use crate::transport::local::LocalTransport;
use crate::transport::{
    self, ExecObserver, ExecRequest, Output, Stream, Transport, TransportError,
};

/// How a run ended, host by host.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub ok: bool,
    pub interrupted: bool,
    /// The failure policy (or `--rollback-on-abort`) returned hosts to
    /// their previous release.
    pub undo_ran: bool,
    /// Hosts that could not be returned to their previous release.
    pub undo_failed: Vec<String>,
    /// A run-level reason the run stopped (a failing hook), if no host did.
    pub stopped_by: Option<String>,
    pub hosts: Vec<HostSummary>,
}

pub struct Executor<'a, T: Transport, L: Transport = LocalTransport> {
    transport: &'a T,
    local: &'a L,
    reporter: &'a dyn Reporter,
    archive: Option<Bytes>,
    http: reqwest::Client,
    command_timeout: Option<Duration>,
    cancel: CancellationToken,
    hurry: CancellationToken,
}

/// Why a step failed, for the event stream and the summary.
#[derive(Debug, Clone, Default)]
struct Failure {
    /// Short: `exit status 3`, `timed out`, `connection lost`.
    result: String,
    /// Everything the user needs: command, status, stderr tail.
    error: String,
    interrupted: bool,
    /// The command's exit status, if it ran to the end.
    exit_code: Option<u32>,
    stderr_tail: Option<String>,
}

impl Failure {
    fn interrupted(why: &str) -> Failure {
        Failure {
            result: "interrupted".into(),
            error: why.into(),
            interrupted: true,
            ..Failure::default()
        }
    }
}

/// A step that succeeded: its short result (`ok`, `ok (3 tries)`) and, for
/// a command, its exit status.
struct Success {
    result: String,
    exit_code: Option<u32>,
}

/// One host's state while the run goes on.
#[derive(Debug, Clone)]
struct HostRun {
    before: Option<ReleaseId>,
    now: Option<ReleaseId>,
    drained: bool,
    result: Option<HostResult>,
    /// The host took part (a pipeline started), so it logs the outcome.
    touched: bool,
    /// Rolling batch it was in, for undo order.
    batch: Option<usize>,
    elapsed: Duration,
}

type Book = Mutex<BTreeMap<String, HostRun>>;

/// How far a stopped pipeline got, for deciding whether to put it back.
#[derive(Debug, Clone, Copy)]
struct Progress {
    switched: bool,
    restarted: bool,
    interrupted: bool,
}

/// What a phase's pipelines mean for a host's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Failures fail the host; success changes nothing visible yet.
    Prepare,
    /// The host's outcome: done, failed, rolled back.
    Rolling,
    /// Cleanup and marks: failures are reported, results stay.
    Bookkeeping,
}

/// Which way a pipeline moves a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// Towards the plan's release.
    Forward,
    /// Back to the host's previous release.
    Undo,
}

impl<'a, T: Transport> Executor<'a, T> {
    pub fn new(transport: &'a T, reporter: &'a dyn Reporter) -> Self {
        Executor::with_local(transport, &LocalTransport, reporter)
    }
}

impl<'a, T: Transport, L: Transport> Executor<'a, T, L> {
    /// `local` runs the plan's commands for the machine running shipit.
    pub fn with_local(transport: &'a T, local: &'a L, reporter: &'a dyn Reporter) -> Self {
        Executor {
            transport,
            local,
            reporter,
            archive: None,
            http: health::client(),
            command_timeout: None,
            cancel: CancellationToken::new(),
            hurry: CancellationToken::new(),
        }
    }

    /// The release archive streamed by `Upload` steps.
    pub fn archive(mut self, archive: Bytes) -> Self {
        self.archive = Some(archive);
        self
    }

    pub fn command_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// `cancel`: stop at the next step boundary, let running steps finish,
    /// put drained hosts back. `hurry`: also cut waits short and skip the
    /// undo of switched hosts.
    pub fn cancel_on(mut self, cancel: CancellationToken, hurry: CancellationToken) -> Self {
        self.cancel = cancel;
        self.hurry = hurry;
        self
    }

    pub async fn run(&self, plan: &Plan) -> RunReport {
        // Every event of the run goes through the mask: a command may print
        // a secret it was given, and its output and errors reach the user.
        let redact = Redact::new(self.reporter, plan.secrets());
        if redact.is_empty() {
            return self.run_plan(plan).await;
        }
        Executor {
            transport: self.transport,
            local: self.local,
            reporter: &redact,
            archive: self.archive.clone(),
            http: self.http.clone(),
            command_timeout: self.command_timeout,
            cancel: self.cancel.clone(),
            hurry: self.hurry.clone(),
        }
        .run_plan(plan)
        .await
    }

    async fn run_plan(&self, plan: &Plan) -> RunReport {
        let book: Book = Mutex::new(
            plan.hosts
                .iter()
                .map(|h| {
                    let run = HostRun {
                        before: h.before.clone(),
                        now: h.before.clone(),
                        drained: false,
                        result: h.unchanged.then_some(HostResult::Unchanged),
                        touched: false,
                        batch: None,
                        elapsed: Duration::ZERO,
                    };
                    (h.name.clone(), run)
                })
                .collect(),
        );
        self.reporter.event(&Event::RunStarted {
            operation: plan.operation,
            app: plan.app.clone(),
            stage: plan.stage.clone(),
            release: plan.release.clone(),
            revision: plan.revision.clone(),
            hosts: plan.changing_hosts().map(|h| h.name.clone()).collect(),
            batches: plan
                .batches
                .iter()
                .map(|b| b.iter().map(|p| p.host.clone()).collect())
                .collect(),
            before: plan
                .hosts
                .iter()
                .map(|h| (h.name.clone(), h.before.clone()))
                .collect(),
        });
        self.journal_started(plan).await;

        let mut failed_batch = None;
        let mut stopped_by = None;
        if !self.local_steps(&plan.hooks.before).await {
            stopped_by = Some("a before_deploy hook failed; nothing was changed".to_string());
        }
        let mut prepared = stopped_by.is_none();
        if prepared && !plan.prepare.is_empty() {
            prepared = self
                .phase(
                    plan,
                    Phase::Prepare,
                    &plan.prepare,
                    &book,
                    Direction::Forward,
                )
                .await
                .is_empty();
            if !prepared && !self.cancel.is_cancelled() {
                self.note(
                    None,
                    "prepare failed: no host was switched; the new release stays marked unfinished",
                );
            }
            if prepared && !self.local_steps(&plan.hooks.after_upload).await {
                prepared = false;
                stopped_by = Some("an after_upload hook failed; no host was switched".to_string());
            }
        }
        let total = plan.batches.len();
        for (i, batch) in plan.batches.iter().enumerate() {
            if !prepared || failed_batch.is_some() || self.cancel.is_cancelled() {
                break;
            }
            {
                let mut book = book.lock().expect("host book");
                for p in batch {
                    if let Some(run) = book.get_mut(&p.host) {
                        run.batch = Some(i);
                    }
                }
            }
            self.phase(
                plan,
                Phase::Batch {
                    number: i + 1,
                    of: total,
                },
                batch,
                &book,
                Direction::Forward,
            )
            .await;
            let failed = {
                let book = book.lock().expect("host book");
                batch
                    .iter()
                    .filter(|p| {
                        matches!(
                            book[&p.host].result,
                            Some(HostResult::Failed {
                                interrupted: false,
                                ..
                            })
                        )
                    })
                    .count()
            };
            if failed > 0 {
                if plan.on_failure.stops(failed, batch.len()) {
                    failed_batch = Some(i);
                    let switched = {
                        let book = book.lock().expect("host book");
                        book.values()
                            .any(|r| r.now.as_ref() == Some(&plan.release) && r.before != r.now)
                    };
                    let then = match plan.on_failure.action {
                        OnFailure::Rollback if plan.operation == Operation::Deploy && switched => {
                            "rolling every switched host back to its previous release".to_string()
                        }
                        _ => "stopping here".to_string(),
                    };
                    self.note(
                        None,
                        &format!(
                            "batch {} of {total}: {failed} of {} host(s) failed; {then}",
                            i + 1,
                            batch.len()
                        ),
                    );
                } else {
                    self.note(
                        None,
                        &format!(
                            "batch {} of {total}: {failed} of {} host(s) failed, within max_fail_percentage = {}; going on",
                            i + 1,
                            batch.len(),
                            plan.on_failure.max_fail_percentage
                        ),
                    );
                }
            }
        }
        let interrupted = self.cancel.is_cancelled();

        let wants_undo = plan.operation == Operation::Deploy
            && ((failed_batch.is_some() && plan.on_failure.action == OnFailure::Rollback)
                || (interrupted && plan.on_failure.rollback_on_abort));
        let mut undo_ran = false;
        let mut undo_failed = Vec::new();
        if wants_undo && !self.hurry.is_cancelled() {
            (undo_ran, undo_failed) = self.undo(plan, &book).await;
        }

        let rolled_out = prepared && failed_batch.is_none() && !interrupted && {
            let book = book.lock().expect("host book");
            book.values().all(|r| {
                matches!(
                    r.result,
                    None | Some(HostResult::Done | HostResult::Unchanged)
                )
            })
        };
        if rolled_out && !plan.finish.is_empty() {
            // Cleanup trouble does not undo a good deploy; it is reported.
            self.phase(plan, Phase::Finish, &plan.finish, &book, Direction::Forward)
                .await;
        }
        if rolled_out && !self.local_steps(&plan.hooks.after).await {
            self.note(
                None,
                "an after hook failed; the run itself is complete, every host runs the new release",
            );
        }
        if !rolled_out {
            self.failure_hooks(plan, &book).await;
        }
        self.journal_finished(plan, &book, rolled_out).await;
        self.revisions_log(plan, &book, rolled_out).await;

        let hosts: Vec<HostSummary> = {
            let book = book.lock().expect("host book");
            plan.hosts
                .iter()
                .map(|h| {
                    let run = &book[&h.name];
                    HostSummary {
                        host: h.name.clone(),
                        before: run.before.clone(),
                        now: run.now.clone(),
                        result: run.result.clone().unwrap_or(HostResult::NotReached),
                        drained: run.drained,
                        duration: run.elapsed,
                    }
                })
                .collect()
        };
        let ok = rolled_out
            && hosts
                .iter()
                .all(|h| matches!(h.result, HostResult::Done | HostResult::Unchanged));
        self.reporter.event(&Event::RunFinished {
            ok,
            hosts: hosts.clone(),
        });
        RunReport {
            ok,
            interrupted,
            undo_ran,
            undo_failed,
            stopped_by,
            hosts,
        }
    }

    /// Returns every host this run switched to its previous release, in
    /// batches, the failed batch first; then marks the release bad.
    async fn undo(&self, plan: &Plan, book: &Book) -> (bool, Vec<String>) {
        let mut order: Vec<(usize, String)> = {
            let book = book.lock().expect("host book");
            book.iter()
                .filter(|(_, r)| {
                    r.now.as_ref() == Some(&plan.release)
                        && r.before.as_ref() != Some(&plan.release)
                })
                .map(|(h, r)| (r.batch.unwrap_or(0), h.clone()))
                .collect()
        };
        if order.is_empty() {
            return (false, Vec::new());
        }
        order.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        let mut failed = Vec::new();
        let mut pipelines = Vec::new();
        for (_, host) in &order {
            match plan.undo.iter().find(|p| &p.host == host) {
                Some(p) => pipelines.push(p.clone()),
                None => {
                    self.note(
                        Some(host),
                        "cannot be rolled back: it had no previous release; left on the new one",
                    );
                    failed.push(host.clone());
                }
            }
        }
        let batches = crate::plan::batches(&pipelines, plan.on_failure.batch_size);
        let total = batches.len();
        for (i, batch) in batches.iter().enumerate() {
            if self.hurry.is_cancelled() {
                break;
            }
            let stuck = self
                .phase(
                    plan,
                    Phase::Undo {
                        number: i + 1,
                        of: total,
                    },
                    batch,
                    book,
                    Direction::Undo,
                )
                .await;
            failed.extend(stuck);
        }
        {
            let book = book.lock().expect("host book");
            for (_, host) in &order {
                let run = &book[host];
                if run.now.as_ref() == Some(&plan.release) && !failed.contains(host) {
                    failed.push(host.clone());
                }
            }
        }
        let marks: Vec<Pipeline> = plan
            .undo_finish
            .iter()
            .filter(|p| book.lock().expect("host book")[&p.host].touched)
            .cloned()
            .collect();
        if !marks.is_empty() {
            self.phase(plan, Phase::Finish, &marks, book, Direction::Undo)
                .await;
        }
        if !failed.is_empty() {
            self.note(
                None,
                &format!(
                    "the rollback did not complete on {}; see their steps above",
                    failed.join(", ")
                ),
            );
        }
        (true, failed)
    }

    /// Runs every pipeline of a phase at once; returns the hosts whose
    /// pipeline failed.
    async fn phase(
        &self,
        plan: &Plan,
        phase: Phase,
        pipelines: &[Pipeline],
        book: &Book,
        direction: Direction,
    ) -> Vec<String> {
        self.reporter.event(&Event::PhaseStarted {
            phase,
            hosts: pipelines.iter().map(|p| p.host.clone()).collect(),
        });
        let results = join_all(
            pipelines
                .iter()
                .map(|p| self.pipeline(plan, p, book, phase, direction)),
        )
        .await;
        pipelines
            .iter()
            .zip(results)
            .filter(|(_, ok)| !ok)
            .map(|(p, _)| p.host.clone())
            .collect()
    }

    async fn pipeline(
        &self,
        plan: &Plan,
        pipeline: &Pipeline,
        book: &Book,
        phase: Phase,
        direction: Direction,
    ) -> bool {
        let role = match phase {
            Phase::Batch { .. } | Phase::Undo { .. } => Role::Rolling,
            Phase::Finish => Role::Bookkeeping,
            _ => Role::Prepare,
        };
        let host = pipeline.host.as_str();
        let started = Instant::now();
        let update = |f: &mut dyn FnMut(&mut HostRun)| {
            let mut book = book.lock().expect("host book");
            if let Some(run) = book.get_mut(host) {
                f(run);
            }
        };
        update(&mut |run| run.touched = true);
        let (stop, target) = match direction {
            Direction::Forward => (&self.cancel, Some(plan.release.clone())),
            Direction::Undo => (
                &self.hurry,
                book.lock().expect("host book")[host].before.clone(),
            ),
        };

        let mut failed: Option<(StepKind, Failure)> = None;
        let (mut switched, mut drained, mut restarted) = (false, false, false);
        // Journal entries not yet on the host: they ride along with the next
        // command sent there, or go in one write when the pipeline ends.
        let mut pending: Vec<journal::Entry> = Vec::new();
        for step in &pipeline.steps {
            if stop.is_cancelled() {
                failed = Some((
                    step.kind,
                    Failure::interrupted("interrupted before this step started"),
                ));
                break;
            }
            if step.kind == StepKind::Drain {
                // Written before draining: a run that dies from here on
                // leaves a journal saying the host may be out.
                pending.push(self.journal_entry(plan, "drained", None));
                self.flush_journal(plan, host, &mut pending).await;
            }
            let event = journal_event(step.kind).filter(|_| step.kind != StepKind::Drain);
            let on_host = matches!(step.action, Action::Remote { .. } | Action::Upload { .. });
            let chained = match (event, on_host) {
                (Some(event), true) => {
                    let mut entries = std::mem::take(&mut pending);
                    entries.push(self.journal_entry(plan, event, None));
                    Some(plan.bookkeeping.layout.journal(&entries))
                }
                _ => None,
            };
            let chained_now = chained.is_some();
            match self.step_then(host, step, chained).await {
                Err(failure) if step.kind == StepKind::Drain => {
                    // A drain that failed may have taken the host out of
                    // some load balancers already: put it back below.
                    drained = true;
                    update(&mut |run| run.drained = true);
                    failed = Some((step.kind, failure));
                    break;
                }
                Ok(()) => {
                    match step.kind {
                        StepKind::Drain => {
                            drained = true;
                            update(&mut |run| run.drained = true);
                        }
                        StepKind::Switch => {
                            switched = true;
                            update(&mut |run| run.now = target.clone());
                        }
                        StepKind::Restart => restarted = true,
                        StepKind::Enable => {
                            drained = false;
                            update(&mut |run| run.drained = false);
                        }
                        _ => {}
                    }
                    if let (Some(event), false) = (event, chained_now) {
                        pending.push(self.journal_entry(plan, event, None));
                    }
                }
                Err(failure) => {
                    failed = Some((step.kind, failure));
                    break;
                }
            }
        }

        if drained {
            let progress = Progress {
                switched,
                restarted,
                interrupted: failed.as_ref().is_some_and(|(_, f)| f.interrupted),
            };
            if self.put_back(pipeline, progress, target.as_ref()).await {
                update(&mut |run| run.drained = false);
                pending.push(self.journal_entry(plan, "enabled", None));
            }
        }
        if failed.is_none() && role == Role::Rolling {
            let event = match direction {
                Direction::Forward => "rolled-out",
                Direction::Undo => "rolled-back",
            };
            pending.push(self.journal_entry(plan, event, None));
        }
        self.flush_journal(plan, host, &mut pending).await;

        let elapsed = started.elapsed();
        let ok = failed.is_none();
        let still_drained = book
            .lock()
            .expect("host book")
            .get(host)
            .is_some_and(|run| run.drained);
        self.reporter.event(&Event::HostFinished {
            host: host.to_string(),
            phase,
            ok,
            duration: elapsed,
            step: failed.as_ref().map(|(step, _)| *step),
            error: failed.as_ref().map(|(_, f)| f.error.clone()),
            drained: still_drained,
        });
        if role == Role::Bookkeeping {
            // Cleanup or marking trouble is reported by its step, and does
            // not change what the host runs.
            update(&mut |run| run.elapsed += elapsed);
            return ok;
        }
        let rolling = role == Role::Rolling;
        update(&mut |run| {
            run.elapsed += elapsed;
            match (&failed, direction) {
                (Some((step, failure)), Direction::Forward) => {
                    run.result = Some(HostResult::Failed {
                        step: *step,
                        error: failure.error.clone(),
                        interrupted: failure.interrupted,
                    });
                }
                (Some((step, failure)), Direction::Undo) => {
                    run.result = Some(HostResult::Failed {
                        step: *step,
                        error: format!("rolling back: {}", failure.error),
                        interrupted: failure.interrupted,
                    });
                }
                (None, Direction::Forward) if rolling => run.result = Some(HostResult::Done),
                (None, Direction::Undo) if rolling => {
                    // A host that failed keeps its failure; one that had
                    // succeeded was rolled back because of others.
                    if !matches!(run.result, Some(HostResult::Failed { .. })) {
                        run.result = Some(HostResult::RolledBack);
                    }
                }
                (None, _) => {}
            }
        });
        ok
    }

    /// A pipeline stopped with its host drained: put it back if it serves a
    /// release known to be healthy. True if it is back.
    async fn put_back(
        &self,
        pipeline: &Pipeline,
        progress: Progress,
        target: Option<&ReleaseId>,
    ) -> bool {
        let host = pipeline.host.as_str();
        let Some(enable) = pipeline.steps.iter().find(|s| s.kind == StepKind::Enable) else {
            return false;
        };
        let healthy = if !progress.switched {
            // Still the release it served before it was drained.
            self.note(
                Some(host),
                "putting the host back: it still serves its previous release",
            );
            true
        } else if progress.interrupted && progress.restarted {
            // Stopped between restart and enable: one quick look decides.
            match pipeline.steps.iter().find(|s| s.kind == StepKind::Health) {
                Some(Step {
                    action: Action::Http { check },
                    ..
                }) => {
                    let mut quick = check.clone();
                    quick.timeout = check.request_timeout.max(check.interval) + check.interval;
                    let ok = health::wait_healthy(&self.http, &quick, &CancellationToken::new())
                        .await
                        .is_ok();
                    if ok {
                        self.note(
                            Some(host),
                            "putting the host back: its new release answers its health check",
                        );
                    }
                    ok
                }
                _ => true,
            }
        } else {
            false
        };
        if healthy {
            return self.step(host, enable).await.is_ok();
        }
        let release = target.map_or("its release".to_string(), ToString::to_string);
        self.note(
            Some(host),
            &format!(
                "left out of the load balancer: it runs {release}, which did not prove healthy"
            ),
        );
        false
    }

    async fn step(&self, host: &str, step: &Step) -> Result<(), Failure> {
        self.step_then(host, step, None).await
    }

    /// Runs a step; `then` (bookkeeping on the same host) is chained to its
    /// command when it has one, so both take one round trip.
    async fn step_then(
        &self,
        host: &str,
        step: &Step,
        then: Option<crate::shell::Cmd>,
    ) -> Result<(), Failure> {
        let started = Instant::now();
        let shown = match &step.action {
            Action::Remote { cmd } | Action::Upload { cmd } => cmd.display(),
            Action::Local { cmd } => format!("local: {}", cmd.display()),
            Action::Http { check } => format!("GET {}", check.url),
            Action::Lb { lb } => lb.summary(),
            Action::Nothing { reason } => reason.clone(),
        };
        self.reporter.event(&Event::StepStarted {
            host: host.to_string(),
            step: step.kind,
            action: shown.clone(),
        });
        let result = self.perform(host, step, &shown, then).await;
        let duration = started.elapsed();
        let event = match &result {
            Ok(success) => Event::StepFinished {
                host: host.to_string(),
                step: step.kind,
                ok: true,
                duration,
                result: success.result.clone(),
                exit_code: success.exit_code,
                stderr_tail: None,
                error: None,
            },
            Err(failure) => Event::StepFinished {
                host: host.to_string(),
                step: step.kind,
                ok: false,
                duration,
                result: failure.result.clone(),
                exit_code: failure.exit_code,
                stderr_tail: failure.stderr_tail.clone(),
                error: Some(failure.error.clone()),
            },
        };
        self.reporter.event(&event);
        result.map(|_| ())
    }

    async fn perform(
        &self,
        host: &str,
        step: &Step,
        shown: &str,
        then: Option<crate::shell::Cmd>,
    ) -> Result<Success, Failure> {
        let observer = StepObserver {
            reporter: self.reporter,
            host,
            step: step.kind,
            total: self.archive.as_ref().map_or(0, |a| a.len() as u64),
            partial: Mutex::default(),
        };
        let request = |cmd: &crate::shell::Cmd, stdin: Option<Bytes>| match stdin {
            // Secrets travel on stdin: a command line shows in `ps` on the host.
            None if cmd.has_secrets() => ExecRequest {
                command: "sh -s".into(),
                stdin: Some(Bytes::from(format!("{}\n", cmd.render()))),
                timeout: self.command_timeout,
            },
            stdin => ExecRequest {
                command: cmd.render(),
                stdin,
                timeout: self.command_timeout,
            },
        };
        let output = match &step.action {
            Action::Nothing { .. } => {
                return Ok(Success {
                    result: "skipped".into(),
                    exit_code: None,
                });
            }
            Action::Http { check } => {
                return match health::wait_healthy(&self.http, check, &self.hurry).await {
                    Ok(tries) => Ok(Success {
                        result: format!("ok ({tries} tr{})", if tries == 1 { "y" } else { "ies" }),
                        exit_code: None,
                    }),
                    Err(why) if self.hurry.is_cancelled() => Err(Failure::interrupted(&why)),
                    Err(why) => Err(Failure {
                        result: "unhealthy".into(),
                        error: why,
                        ..Failure::default()
                    }),
                };
            }
            Action::Lb { lb } => {
                let run = lb::LbRun {
                    transport: self.transport,
                    local: self.local,
                    observer: &observer,
                    command_timeout: self.command_timeout,
                    // Draining and waiting for UP are waits: a second
                    // Ctrl-C cuts them short.
                    cancel: &self.hurry,
                };
                let done = run.perform(lb).await?;
                for warning in &done.warnings {
                    self.note(Some(host), warning);
                }
                return Ok(Success {
                    result: done.result,
                    exit_code: None,
                });
            }
            Action::Remote { cmd } => {
                let cmd = chain(cmd, then);
                self.transport
                    .exec(host, request(&cmd, None), &observer)
                    .await
            }
            Action::Upload { cmd } => {
                let archive = self.archive.clone().unwrap_or_default();
                let cmd = chain(cmd, then);
                self.transport
                    .exec(host, request(&cmd, Some(archive)), &observer)
                    .await
            }
            Action::Local { cmd } => {
                self.local
                    .exec("local", request(cmd, None), &observer)
                    .await
            }
        };
        observer.flush();
        judge(shown, output)
    }

    async fn journal_started(&self, plan: &Plan) {
        let detail =
            serde_json::json!({ "by": plan.bookkeeping.by, "digest": plan.bookkeeping.digest })
                .to_string();
        let entry = self.journal_entry(plan, "started", Some(detail));
        let layout = &plan.bookkeeping.layout;
        let writes = plan.changing_hosts().map(|h| {
            self.quiet_exec(
                &h.name,
                layout.journal_start(&entry, plan.resume),
                "journal",
            )
        });
        join_all(writes).await;
    }

    async fn journal(&self, plan: &Plan, host: &str, event: &str, detail: Option<String>) {
        let mut entries = vec![self.journal_entry(plan, event, detail)];
        self.flush_journal(plan, host, &mut entries).await;
    }

    /// Writes `pending` entries to the host's journal in one command.
    async fn flush_journal(&self, plan: &Plan, host: &str, pending: &mut Vec<journal::Entry>) {
        if pending.is_empty() {
            return;
        }
        let entries = std::mem::take(pending);
        self.quiet_exec(host, plan.bookkeeping.layout.journal(&entries), "journal")
            .await;
    }

    fn journal_entry(&self, plan: &Plan, event: &str, detail: Option<String>) -> journal::Entry {
        journal::Entry {
            run: plan.run.clone(),
            time: now_utc(),
            op: plan.operation.as_str().to_string(),
            release: plan.release.to_string(),
            event: event.to_string(),
            detail,
        }
    }

    async fn journal_finished(&self, plan: &Plan, book: &Book, ok: bool) {
        let results: Vec<(String, String)> = {
            let book = book.lock().expect("host book");
            book.iter()
                .filter(|(_, r)| r.touched)
                .map(|(h, r)| (h.clone(), outcome(r, ok)))
                .collect()
        };
        join_all(results.into_iter().map(|(host, result)| async move {
            self.journal(plan, &host, "finished", Some(result)).await
        }))
        .await;
    }

    /// Appends the outcome to revisions.log on every host that took part.
    async fn revisions_log(&self, plan: &Plan, book: &Book, ok: bool) {
        let time = now_utc();
        let entries: Vec<(String, Entry)> = {
            let book = book.lock().expect("host book");
            book.iter()
                .filter(|(_, run)| run.touched)
                .map(|(host, run)| {
                    let entry = Entry {
                        time: time.clone(),
                        action: plan.operation.as_str().to_string(),
                        release: plan.release.to_string(),
                        previous: run.before.as_ref().map(ToString::to_string),
                        revision: plan.revision.clone(),
                        by: plan.bookkeeping.by.clone(),
                        result: outcome(run, ok),
                    };
                    (host.clone(), entry)
                })
                .collect()
        };
        let writes = entries.iter().map(|(host, entry)| {
            self.quiet_exec(
                host,
                plan.bookkeeping.layout.record(&entry.to_line()),
                "revisions.log",
            )
        });
        join_all(writes).await;
    }

    /// A bookkeeping command: failures are reported, never fatal.
    async fn quiet_exec(&self, host: &str, cmd: crate::shell::Cmd, what: &str) {
        let request = ExecRequest {
            command: cmd.render(),
            stdin: None,
            timeout: Some(Duration::from_secs(30)),
        };
        let result = self.transport.exec(host, request, &transport::Quiet).await;
        if let Err(e) = judge(what, result) {
            self.note(Some(host), &format!("could not write {what}: {}", e.error));
        }
    }

    /// Run-level local steps (hooks), one after another; false at the
    /// first failure.
    async fn local_steps(&self, steps: &[Step]) -> bool {
        for step in steps {
            if self.step("local", step).await.is_err() {
                return false;
            }
        }
        true
    }

    /// `on_failure` hooks, locally and on the hosts, with the failed hosts
    /// in SHIPIT_FAILED_HOSTS. Their own failures are only reported.
    async fn failure_hooks(&self, plan: &Plan, book: &Book) {
        let failed: Vec<String> = {
            let book = book.lock().expect("host book");
            book.iter()
                .filter(|(_, r)| matches!(r.result, Some(HostResult::Failed { .. })))
                .map(|(h, _)| h.clone())
                .collect()
        };
        let tag = |step: &Step| {
            let mut step = step.clone();
            if let Action::Local { cmd } | Action::Remote { cmd } = &mut step.action {
                cmd.env
                    .push(("SHIPIT_FAILED_HOSTS".into(), failed.join(" ").into()));
            }
            step
        };
        let local: Vec<Step> = plan.hooks.on_failure.iter().map(tag).collect();
        self.local_steps(&local).await;
        let hosts: Vec<Pipeline> = plan
            .on_failure_hosts
            .iter()
            .map(|p| Pipeline {
                host: p.host.clone(),
                steps: p.steps.iter().map(tag).collect(),
            })
            .collect();
        if !hosts.is_empty() {
            self.phase(plan, Phase::Finish, &hosts, book, Direction::Forward)
                .await;
        }
    }

    /// Runs stand-alone pipelines (repairs before a run) and returns the
    /// hosts whose pipeline succeeded.
    pub async fn run_pipelines(&self, phase: Phase, pipelines: &[Pipeline]) -> Vec<String> {
        if pipelines.is_empty() {
            return Vec::new();
        }
        self.reporter.event(&Event::PhaseStarted {
            phase,
            hosts: pipelines.iter().map(|p| p.host.clone()).collect(),
        });
        let results = join_all(pipelines.iter().map(|p| async move {
            for step in &p.steps {
                if self.step(&p.host, step).await.is_err() {
                    return None;
                }
            }
            Some(p.host.clone())
        }))
        .await;
        results.into_iter().flatten().collect()
    }

    fn note(&self, host: Option<&str>, message: &str) {
        self.reporter.event(&Event::Note {
            host: host.map(ToString::to_string),
            message: message.to_string(),
        });
    }
}

/// `cmd`, followed by `then` if there is one.
fn chain(cmd: &crate::shell::Cmd, then: Option<crate::shell::Cmd>) -> crate::shell::Cmd {
    match then {
        Some(next) => cmd.clone().then(next),
        None => cmd.clone(),
    }
}

/// The journal event recorded when a step of this kind succeeds.
fn journal_event(kind: StepKind) -> Option<&'static str> {
    Some(match kind {
        StepKind::Finish => "uploaded",
        StepKind::Drain => "drained",
        StepKind::Switch => "switched",
        StepKind::Restart => "restarted",
        StepKind::Health => "healthy",
        StepKind::Enable => "enabled",
        _ => return None,
    })
}

/// One host's outcome, for revisions.log and the journal.
fn outcome(run: &HostRun, ok: bool) -> String {
    match &run.result {
        Some(HostResult::Done) => "success".to_string(),
        Some(HostResult::RolledBack) => "rolled back".to_string(),
        Some(HostResult::Failed {
            step,
            interrupted: true,
            ..
        }) => format!("interrupted at {}", step.as_str()),
        Some(HostResult::Failed { step, .. }) if run.now == run.before => {
            format!("failed at {}; back on the previous release", step.as_str())
        }
        Some(HostResult::Failed { step, .. }) => format!("failed at {}", step.as_str()),
        Some(HostResult::Unchanged) => "unchanged".to_string(),
        None if ok => "success".to_string(),
        None | Some(HostResult::NotReached) => {
            "not switched: the run stopped before this host's turn".to_string()
        }
    }
}

fn now_utc() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// A command's outcome as a step result.
fn judge(shown: &str, output: Result<Output, TransportError>) -> Result<Success, Failure> {
    let exit_code = |out: &Output| match out.exit {
        transport::Exit::Code(code) => Some(code),
        _ => None,
    };
    match output {
        Ok(out) if out.exit.success() => Ok(Success {
            result: "ok".into(),
            exit_code: exit_code(&out),
        }),
        Ok(out) => {
            let tail = out.stderr_tail(8);
            let stdout = out.stdout_text();
            let mut error = format!("`{shown}` ended with {}", out.exit);
            if tail.is_empty() {
                let out_tail = transport::tail(stdout.as_bytes(), 4);
                if out_tail.is_empty() {
                    error.push_str(" (no output)");
                } else {
                    error.push_str(&format!("; stdout:\n{out_tail}"));
                }
            } else {
                error.push_str(&format!("; stderr:\n{tail}"));
            }
            Err(Failure {
                result: out.exit.to_string(),
                error,
                exit_code: exit_code(&out),
                stderr_tail: (!tail.is_empty()).then_some(tail),
                ..Failure::default()
            })
        }
        Err(e) => Err(Failure {
            result: match &e {
                TransportError::Timeout { .. } => "timed out".into(),
                TransportError::Disconnected { .. } => "connection lost".into(),
                _ => "error".into(),
            },
            error: match &e {
                // The transport names the rendered command line, which holds
                // secret values and whole scripts: name the shown one.
                TransportError::Timeout { host, after, .. } => format!(
                    "{host}: `{shown}` timed out after {}",
                    humantime::format_duration(*after)
                ),
                _ => e.to_string(),
            },
            ..Failure::default()
        }),
    }
}

/// Turns transport callbacks into events.
struct StepObserver<'a> {
    reporter: &'a dyn Reporter,
    host: &'a str,
    step: StepKind,
    total: u64,
    /// Per stream, the start of a line whose end has not arrived yet:
    /// output comes in chunks that may end mid-line.
    partial: Mutex<[Vec<u8>; 2]>,
}

/// A line longer than this is passed on in pieces rather than held.
const MAX_LINE: usize = 64 * 1024;

impl StepObserver<'_> {
    fn line(&self, stream: Stream, bytes: &[u8]) {
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        self.reporter.event(&Event::Output {
            host: self.host.to_string(),
            step: self.step,
            stream: match stream {
                Stream::Stdout => "stdout",
                Stream::Stderr => "stderr",
            },
            line: String::from_utf8_lossy(bytes).into_owned(),
        });
    }

    /// Passes on what is left of unterminated lines once the command ended.
    fn flush(&self) {
        let rest = std::mem::take(&mut *self.partial.lock().expect("output buffer"));
        for (stream, bytes) in [Stream::Stdout, Stream::Stderr].into_iter().zip(rest) {
            if !bytes.is_empty() {
                self.line(stream, &bytes);
            }
        }
    }
}

impl ExecObserver for StepObserver<'_> {
    fn stdin_progress(&self, sent: u64) {
        if self.step != StepKind::Upload {
            return;
        }
        self.reporter.event(&Event::UploadProgress {
            host: self.host.to_string(),
            sent,
            total: self.total,
        });
    }

    fn output(&self, stream: Stream, data: &[u8]) {
        let lines: Vec<Vec<u8>> = {
            let mut partial = self.partial.lock().expect("output buffer");
            let buffer = &mut partial[match stream {
                Stream::Stdout => 0,
                Stream::Stderr => 1,
            }];
            buffer.extend_from_slice(data);
            let mut lines = Vec::new();
            while let Some(end) = buffer.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = buffer.drain(..=end).collect();
                line.pop();
                lines.push(line);
            }
            if buffer.len() > MAX_LINE {
                lines.push(std::mem::take(buffer));
            }
            lines
        };
        for line in lines {
            self.line(stream, &line);
        }
    }
}

#[cfg(test)]
mod tests;
