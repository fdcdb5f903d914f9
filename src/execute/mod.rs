//! Runs a [`Plan`] over a [`Transport`] and reports [`Event`]s.
//!
//! The executor decides nothing about *what* to run: that is the plan. It
//! owns *how*: phases in order, the hosts of a phase at the same time, each
//! host's steps in order, and the safety rules that hold whatever fails:
//!
//! - a failure in the prepare phase stops the run before any host switches;
//! - a batch starts only when every host of the previous one is done;
//! - when a host fails, its batch still finishes (no host is abandoned
//!   mid-step), then no further batch starts;
//! - a host that was drained (or whose drain failed halfway) is enabled
//!   again unless it was switched to a release that did not become healthy:
//!   no healthy host stays out of the load balancer because shipit stopped.

pub mod health;
pub mod lb;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::host::ReleaseId;
use crate::host::revlog::Entry;
use crate::plan::{Action, Pipeline, Plan, Step, StepKind};
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
    pub hosts: Vec<HostSummary>,
}

impl RunReport {
    pub fn failed_hosts(&self) -> Vec<&str> {
        self.hosts
            .iter()
            .filter(|h| matches!(h.result, HostResult::Failed { .. }))
            .map(|h| h.host.as_str())
            .collect()
    }
}

pub struct Executor<'a, T: Transport, L: Transport = LocalTransport> {
    transport: &'a T,
    local: &'a L,
    reporter: &'a dyn Reporter,
    archive: Option<Bytes>,
    http: reqwest::Client,
    command_timeout: Option<Duration>,
    cancel: CancellationToken,
}

/// Why a step failed, for the event stream and the summary.
#[derive(Debug, Clone)]
struct Failure {
    /// Short: `exit status 3`, `timed out`, `connection lost`.
    result: String,
    /// Everything the user needs: command, status, stderr tail.
    error: String,
}

/// One host's state while the run goes on.
#[derive(Debug, Clone)]
struct HostRun {
    before: Option<ReleaseId>,
    now: Option<ReleaseId>,
    drained: bool,
    result: Option<HostResult>,
    /// The host took part (its pipeline started), so it logs the outcome.
    touched: bool,
    elapsed: Duration,
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

    /// Cancelling the token stops the run at the next step boundary; steps
    /// already running finish, and drained hosts are put back.
    pub fn cancel_on(mut self, token: CancellationToken) -> Self {
        self.cancel = token;
        self
    }

    pub async fn run(&self, plan: &Plan) -> RunReport {
        let book: Mutex<BTreeMap<String, HostRun>> = Mutex::new(
            plan.hosts
                .iter()
                .map(|h| {
                    let run = HostRun {
                        before: h.before.clone(),
                        now: h.before.clone(),
                        drained: false,
                        result: h.unchanged.then_some(HostResult::Unchanged),
                        touched: false,
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
        });

        let mut ok = true;
        if !plan.prepare.is_empty() {
            ok = self.phase(plan, Phase::Prepare, &plan.prepare, &book).await;
            if !ok {
                self.note(
                    None,
                    "prepare failed: no host was switched; the new release stays marked unfinished",
                );
            }
        }
        let total = plan.batches.len();
        for (i, batch) in plan.batches.iter().enumerate() {
            if !ok || self.cancel.is_cancelled() {
                break;
            }
            ok = self
                .phase(
                    plan,
                    Phase::Batch {
                        number: i + 1,
                        of: total,
                    },
                    batch,
                    &book,
                )
                .await;
            if !ok && i + 1 < total {
                self.note(
                    None,
                    &format!("batch {} failed: not starting batch {}", i + 1, i + 2),
                );
            }
        }
        let interrupted = self.cancel.is_cancelled();
        if interrupted {
            ok = false;
        }
        if ok && !plan.finish.is_empty() {
            // Cleanup trouble does not undo a good deploy; it is reported.
            self.phase(plan, Phase::Finish, &plan.finish, &book).await;
        }
        self.bookkeeping(plan, &book, ok).await;

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
        let ok = ok
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
            hosts,
        }
    }

    /// Runs every pipeline of a phase at once; true if all succeeded.
    async fn phase(
        &self,
        plan: &Plan,
        phase: Phase,
        pipelines: &[Pipeline],
        book: &Mutex<BTreeMap<String, HostRun>>,
    ) -> bool {
        self.reporter.event(&Event::PhaseStarted {
            phase,
            hosts: pipelines.iter().map(|p| p.host.clone()).collect(),
        });
        let rolling = matches!(phase, Phase::Batch { .. });
        let results = join_all(
            pipelines
                .iter()
                .map(|p| self.pipeline(plan, p, book, rolling)),
        )
        .await;
        results.into_iter().all(|ok| ok)
    }

    async fn pipeline(
        &self,
        plan: &Plan,
        pipeline: &Pipeline,
        book: &Mutex<BTreeMap<String, HostRun>>,
        rolling: bool,
    ) -> bool {
        let host = pipeline.host.as_str();
        let started = Instant::now();
        let update = |f: &mut dyn FnMut(&mut HostRun)| {
            let mut book = book.lock().expect("host book");
            if let Some(run) = book.get_mut(host) {
                f(run);
            }
        };
        update(&mut |run| run.touched = true);

        let mut failed: Option<(StepKind, Failure)> = None;
        let mut switched = false;
        let mut drained = false;
        for step in &pipeline.steps {
            if self.cancel.is_cancelled() {
                failed = Some((
                    step.kind,
                    Failure {
                        result: "interrupted".into(),
                        error: "interrupted before this step started".into(),
                    },
                ));
                break;
            }
            match self.step(host, step).await {
                Err(failure) if step.kind == StepKind::Drain => {
                    // A drain that failed may have taken the host out of
                    // some load balancers already: put it back below.
                    drained = true;
                    update(&mut |run| run.drained = true);
                    failed = Some((step.kind, failure));
                    break;
                }
                Ok(()) => match step.kind {
                    StepKind::Drain => {
                        drained = true;
                        update(&mut |run| run.drained = true);
                    }
                    StepKind::Switch => {
                        switched = true;
                        update(&mut |run| run.now = Some(plan.release.clone()));
                    }
                    StepKind::Enable => {
                        drained = false;
                        update(&mut |run| run.drained = false);
                    }
                    _ => {}
                },
                Err(failure) => {
                    failed = Some((step.kind, failure));
                    break;
                }
            }
        }

        // A drained host that still serves the release it served before is
        // healthy: put it back, whatever went wrong.
        if drained && !switched {
            if let Some(enable) = pipeline.steps.iter().find(|s| s.kind == StepKind::Enable) {
                self.note(Some(host), "putting the host back into the load balancer: it still serves its previous release");
                if self.step(host, enable).await.is_ok() {
                    update(&mut |run| run.drained = false);
                }
            }
        } else if drained && switched {
            self.note(
                Some(host),
                &format!("left out of the load balancer: it was switched to {} which did not become healthy", plan.release),
            );
        }

        let elapsed = started.elapsed();
        let ok = failed.is_none();
        update(&mut |run| {
            run.elapsed += elapsed;
            match &failed {
                Some((step, failure)) => {
                    run.result = Some(HostResult::Failed {
                        step: *step,
                        error: failure.error.clone(),
                    });
                }
                None if rolling => run.result = Some(HostResult::Done),
                None => {}
            }
        });
        ok
    }

    async fn step(&self, host: &str, step: &Step) -> Result<(), Failure> {
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
        let result = self.perform(host, step, &shown).await;
        let duration = started.elapsed();
        let (ok, result_text, error) = match &result {
            Ok(text) => (true, text.clone(), None),
            Err(failure) => (false, failure.result.clone(), Some(failure.error.clone())),
        };
        self.reporter.event(&Event::StepFinished {
            host: host.to_string(),
            step: step.kind,
            ok,
            duration,
            result: result_text,
            error,
        });
        result.map(|_| ())
    }

    async fn perform(&self, host: &str, step: &Step, shown: &str) -> Result<String, Failure> {
        let observer = StepObserver {
            reporter: self.reporter,
            host,
            step: step.kind,
            total: self.archive.as_ref().map_or(0, |a| a.len() as u64),
        };
        let output = match &step.action {
            Action::Nothing { .. } => return Ok("skipped".into()),
            Action::Http { check } => {
                return match health::wait_healthy(&self.http, check).await {
                    Ok(tries) => Ok(format!(
                        "ok ({tries} tr{})",
                        if tries == 1 { "y" } else { "ies" }
                    )),
                    Err(why) => Err(Failure {
                        result: "unhealthy".into(),
                        error: why,
                    }),
                };
            }
            Action::Lb { lb } => {
                let run = lb::LbRun {
                    transport: self.transport,
                    local: self.local,
                    observer: &observer,
                    command_timeout: self.command_timeout,
                    cancel: &self.cancel,
                };
                let done = run.perform(lb).await?;
                for warning in &done.warnings {
                    self.note(Some(host), warning);
                }
                return Ok(done.result);
            }
            Action::Remote { cmd } => {
                let request = ExecRequest {
                    command: cmd.render(),
                    stdin: None,
                    timeout: self.command_timeout,
                };
                self.transport.exec(host, request, &observer).await
            }
            Action::Upload { cmd } => {
                let request = ExecRequest {
                    command: cmd.render(),
                    stdin: Some(self.archive.clone().unwrap_or_default()),
                    timeout: self.command_timeout,
                };
                self.transport.exec(host, request, &observer).await
            }
            Action::Local { cmd } => {
                let request = ExecRequest {
                    command: cmd.render(),
                    stdin: None,
                    timeout: self.command_timeout,
                };
                self.local.exec("local", request, &observer).await
            }
        };
        judge(shown, output)
    }

    /// Appends the outcome to revisions.log on every host that took part.
    async fn bookkeeping(&self, plan: &Plan, book: &Mutex<BTreeMap<String, HostRun>>, ok: bool) {
        let time = jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        let entries: Vec<(String, Entry)> = {
            let book = book.lock().expect("host book");
            book.iter()
                .filter(|(_, run)| run.touched)
                .map(|(host, run)| {
                    let result = match &run.result {
                        Some(HostResult::Done) => "success".to_string(),
                        Some(HostResult::Failed { step, .. }) => {
                            format!("failed at {}", step.as_str())
                        }
                        Some(HostResult::Unchanged) => "unchanged".to_string(),
                        None if ok => "success".to_string(),
                        None | Some(HostResult::NotReached) => {
                            "not switched: the run stopped before this host's turn".to_string()
                        }
                    };
                    let entry = Entry {
                        time: time.clone(),
                        action: plan.operation.as_str().to_string(),
                        release: plan.release.to_string(),
                        previous: run.before.as_ref().map(ToString::to_string),
                        revision: plan.revision.clone(),
                        by: plan.bookkeeping.by.clone(),
                        result,
                    };
                    (host.clone(), entry)
                })
                .collect()
        };
        let writes = entries.iter().map(|(host, entry)| async move {
            let cmd = plan.bookkeeping.layout.record(&entry.to_line());
            let request = ExecRequest {
                command: cmd.render(),
                stdin: None,
                timeout: Some(Duration::from_secs(30)),
            };
            let result = self.transport.exec(host, request, &transport::Quiet).await;
            if let Err(e) = judge("record", result) {
                self.note(
                    Some(host),
                    &format!("could not append to revisions.log: {}", e.error),
                );
            }
        });
        join_all(writes).await;
    }

    fn note(&self, host: Option<&str>, message: &str) {
        self.reporter.event(&Event::Note {
            host: host.map(ToString::to_string),
            message: message.to_string(),
        });
    }
}

/// A command's outcome as a step result.
fn judge(shown: &str, output: Result<Output, TransportError>) -> Result<String, Failure> {
    match output {
        Ok(out) if out.exit.success() => Ok("ok".into()),
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
            })
        }
        Err(e) => Err(Failure {
            result: match &e {
                TransportError::Timeout { .. } => "timed out".into(),
                TransportError::Disconnected { .. } => "connection lost".into(),
                _ => "error".into(),
            },
            error: e.to_string(),
        }),
    }
}

/// Turns transport callbacks into events.
struct StepObserver<'a> {
    reporter: &'a dyn Reporter,
    host: &'a str,
    step: StepKind,
    total: u64,
}

impl ExecObserver for StepObserver<'_> {
    fn stdin_progress(&self, sent: u64) {
        self.reporter.event(&Event::UploadProgress {
            host: self.host.to_string(),
            sent,
            total: self.total,
        });
    }

    fn output(&self, stream: Stream, data: &[u8]) {
        for line in String::from_utf8_lossy(data).lines() {
            self.reporter.event(&Event::Output {
                host: self.host.to_string(),
                step: self.step,
                stream: match stream {
                    Stream::Stdout => "stdout",
                    Stream::Stderr => "stderr",
                },
                line: line.to_string(),
            });
        }
    }
}

#[cfg(test)]
mod tests;
