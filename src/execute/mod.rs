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
//! - a host that was drained is enabled again unless it was switched to a
//!   release that did not become healthy: no healthy host stays out of the
//!   load balancer because shipit stopped.

pub mod health;

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
#[derive(Debug, Clone, Default)]
struct Failure {
    /// Short: `exit status 3`, `timed out`, `connection lost`.
    result: String,
    /// Everything the user needs: command, status, stderr tail.
    error: String,
    /// The command's exit status, if it ran to the end.
    exit_code: Option<u32>,
    stderr_tail: Option<String>,
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
        }
        .run_plan(plan)
        .await
    }

    async fn run_plan(&self, plan: &Plan) -> RunReport {
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
            before: plan
                .hosts
                .iter()
                .map(|h| (h.name.clone(), h.before.clone()))
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
        let results = join_all(
            pipelines
                .iter()
                .map(|p| self.pipeline(plan, p, book, phase)),
        )
        .await;
        results.into_iter().all(|ok| ok)
    }

    async fn pipeline(
        &self,
        plan: &Plan,
        pipeline: &Pipeline,
        book: &Mutex<BTreeMap<String, HostRun>>,
        phase: Phase,
    ) -> bool {
        let rolling = matches!(phase, Phase::Batch { .. });
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
                        ..Failure::default()
                    },
                ));
                break;
            }
            match self.step(host, step).await {
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
        let still_drained = {
            let book = book.lock().expect("host book");
            book.get(host).is_some_and(|run| run.drained)
        };
        self.reporter.event(&Event::HostFinished {
            host: host.to_string(),
            phase,
            ok,
            duration: elapsed,
            step: failed.as_ref().map(|(step, _)| *step),
            error: failed.as_ref().map(|(_, f)| f.error.clone()),
            drained: still_drained,
        });
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
            Action::Nothing { reason } => reason.clone(),
        };
        self.reporter.event(&Event::StepStarted {
            host: host.to_string(),
            step: step.kind,
            action: shown.clone(),
        });
        let result = self.perform(host, step, &shown).await;
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

    async fn perform(&self, host: &str, step: &Step, shown: &str) -> Result<Success, Failure> {
        let observer = StepObserver {
            reporter: self.reporter,
            host,
            step: step.kind,
            total: self.archive.as_ref().map_or(0, |a| a.len() as u64),
            partial: Mutex::default(),
        };
        let output = match &step.action {
            Action::Nothing { .. } => {
                return Ok(Success {
                    result: "skipped".into(),
                    exit_code: None,
                });
            }
            Action::Http { check } => {
                return match health::wait_healthy(&self.http, check).await {
                    Ok(tries) => Ok(Success {
                        result: format!("ok ({tries} tr{})", if tries == 1 { "y" } else { "ies" }),
                        exit_code: None,
                    }),
                    Err(why) => Err(Failure {
                        result: "unhealthy".into(),
                        error: why,
                        ..Failure::default()
                    }),
                };
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
        observer.flush();
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

/// A command's outcome as a step result. `shown` is the command as people
/// see it (secrets redacted, scripts by label); messages never use the
/// rendered line.
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
