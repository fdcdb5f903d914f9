//! Performing one step of a pipeline (a command on a host or on this
//! machine, an HTTP health check, a load balancer action) and judging how
//! it ended. Every step is announced and concluded by an event, and its
//! output is passed on line by line.

use std::sync::Mutex;

use bytes::Bytes;
use tokio::time::Instant;

use super::{Executor, health};
use crate::lb::{LbOp, Proof};
use crate::plan::{Action, Step, StepKind};
use crate::report::{Event, Reporter};
use crate::transport::{
    self, ExecObserver, ExecRequest, Output, Stdin, Stream, Transport, TransportError,
};

/// Why a step failed, for the event stream and the summary.
#[derive(Debug, Clone, Default)]
pub(super) struct Failure {
    /// Short: `exit status 3`, `timed out`, `connection lost`.
    pub result: String,
    /// Everything the user needs: command, status, stderr tail.
    pub error: String,
    pub interrupted: bool,
    /// The command's exit status, if it ran to the end.
    pub exit_code: Option<u32>,
    pub stderr_tail: Option<String>,
    /// The host could not be reached: its connection is gone.
    pub lost: bool,
}

impl Failure {
    pub fn interrupted(why: &str) -> Failure {
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
pub(super) struct Success {
    pub result: String,
    pub exit_code: Option<u32>,
}

impl<T: Transport, L: Transport> Executor<'_, T, L> {
    pub(super) async fn step(&self, host: &str, step: &Step) -> Result<(), Failure> {
        self.step_then(host, step, None, Proof::Unchecked).await
    }

    /// Runs a step; `first` (bookkeeping on the same host) goes ahead of
    /// its command when it has one (`( first ) && step`), so both take one
    /// round trip and the step runs only if `first` succeeded. `proof`
    /// tells an enable whether shipit's own health check just passed.
    pub(super) async fn step_then(
        &self,
        host: &str,
        step: &Step,
        first: Option<crate::shell::Cmd>,
        proof: Proof,
    ) -> Result<(), Failure> {
        let started = Instant::now();
        let shown = match &step.action {
            Action::Remote { cmd } | Action::Upload { cmd } => cmd.display(),
            Action::Local { cmd } => format!("local: {}", cmd.display()),
            Action::Health { check } => check.target(),
            Action::Lb { lb } => lb.summary(),
            Action::Nothing { reason } => reason.clone(),
        };
        self.reporter.event(&Event::StepStarted {
            host: host.to_string(),
            step: step.kind,
            action: shown.clone(),
        });
        let result = self.perform(host, step, &shown, first, proof).await;
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
        first: Option<crate::shell::Cmd>,
        proof: Proof,
    ) -> Result<Success, Failure> {
        let observer = StepObserver {
            reporter: self.reporter,
            host,
            step: step.kind,
            total: self.archive.as_ref().map_or(0, Stdin::len),
            partial: Mutex::default(),
        };
        // The step's own bound (`app.restart_timeout`) within the
        // overall `ssh.command_timeout`.
        let timeout = match (self.command_timeout, step.timeout) {
            (Some(all), Some(own)) => Some(all.min(own)),
            (all, own) => all.or(own),
        };
        let request =
            |cmd: &crate::shell::Cmd, stdin: Option<Stdin>| exec_request(cmd, stdin, timeout);
        let output = match &step.action {
            Action::Nothing { .. } => {
                return Ok(Success {
                    result: "skipped".into(),
                    exit_code: None,
                });
            }
            Action::Health { check } => {
                return match health::wait_healthy(&self.prober(), host, check, &self.hurry).await {
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
                let reach = super::lb::Reach {
                    transport: self.transport,
                    local: self.local,
                };
                let ctx = crate::lb::LbCtx {
                    remote: &reach,
                    observer: &observer,
                    command_timeout: self.command_timeout,
                    // Draining and waiting for a host to serve are waits: a
                    // second Ctrl-C cuts them short.
                    cancel: &self.hurry,
                };
                let done = match lb.op {
                    LbOp::Drain => lb.driver.drain(&ctx, &lb.member).await,
                    LbOp::Enable => lb.driver.enable(&ctx, &lb.member, proof).await,
                };
                observer.flush();
                let done = done.map_err(|e| Failure {
                    result: e.result,
                    error: e.error,
                    interrupted: e.interrupted,
                    ..Failure::default()
                })?;
                for warning in &done.warnings {
                    self.note(Some(host), warning);
                }
                return Ok(Success {
                    result: done.result,
                    exit_code: None,
                });
            }
            Action::Remote { cmd } => {
                let cmd = chain(first, cmd);
                let exec = self.transport.exec(host, request(&cmd, None), &observer);
                // A switch is one rename: its outcome must be known.
                if step.kind == StepKind::Switch {
                    exec.await
                } else {
                    self.unless_hurried(exec).await?
                }
            }
            Action::Upload { cmd } => {
                // Waiting for a turn is not part of the command's timeout.
                let _turn = tokio::select! {
                    turn = self.uploads.acquire() => turn.ok(),
                    () = self.cancel.cancelled() => {
                        return Err(Failure::interrupted("interrupted before the upload started"));
                    }
                };
                let archive = self
                    .archive
                    .clone()
                    .unwrap_or_else(|| Stdin::Bytes(Bytes::new()));
                let cmd = chain(first, cmd);
                self.unless_hurried(self.transport.exec(
                    host,
                    request(&cmd, Some(archive)),
                    &observer,
                ))
                .await?
            }
            Action::Local { cmd } => {
                self.unless_hurried(self.local.exec("local", request(cmd, None), &observer))
                    .await?
            }
        };
        observer.flush();
        judge(shown, output).map_err(|mut failure| {
            if step.kind == StepKind::Restart && failure.result == "timed out" {
                failure.error.push_str(
                    " (app.restart_timeout): a restart must return once the app is started; \
                     start a server in the background (`docker compose up -d`), or raise app.restart_timeout",
                );
            }
            failure
        })
    }
}

impl<T: Transport, L: Transport> Executor<'_, T, L> {
    /// Runs a command, unless a second signal (hurry) comes first: then the
    /// command is abandoned, which stops it on its host (TERM to its process
    /// group, KILL 5 s later), and the step fails as interrupted. A command
    /// started after that signal (switching a host back, say) is one of the
    /// essentials and runs to its end, within its timeout.
    async fn unless_hurried<F>(&self, command: F) -> Result<F::Output, Failure>
    where
        F: std::future::Future,
    {
        if self.hurry.is_cancelled() {
            return Ok(command.await);
        }
        tokio::select! {
            output = command => Ok(output),
            () = self.hurry.cancelled() => Err(Failure::interrupted(
                "stopped while it ran: the run was told to hurry (a second signal)",
            )),
        }
    }
}

/// How `cmd` is sent. Secrets travel on stdin: a command line shows in
/// `ps` on the host.
pub(super) fn exec_request(
    cmd: &crate::shell::Cmd,
    stdin: Option<Stdin>,
    timeout: Option<std::time::Duration>,
) -> ExecRequest {
    match stdin {
        None if cmd.has_secrets() => ExecRequest {
            command: "sh -s".into(),
            stdin: Some(Bytes::from(format!("{}\n", cmd.render())).into()),
            timeout,
        },
        stdin => ExecRequest {
            command: cmd.render(),
            stdin,
            timeout,
        },
    }
}

/// `cmd`, preceded by `first` if there is one.
fn chain(first: Option<crate::shell::Cmd>, cmd: &crate::shell::Cmd) -> crate::shell::Cmd {
    match first {
        Some(first) => first.then(cmd.clone()),
        None => cmd.clone(),
    }
}

/// A command's outcome as a step result.
pub(super) fn judge(
    shown: &str,
    output: Result<Output, TransportError>,
) -> Result<Success, Failure> {
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
            lost: matches!(
                e,
                TransportError::Disconnected { .. } | TransportError::NotConnected { .. }
            ),
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
mod tests {
    use super::*;
    use crate::report::Recording;

    #[test]
    fn output_is_passed_on_in_whole_lines() {
        let recording = Recording::default();
        let observer = StepObserver {
            reporter: &recording,
            host: "web1",
            step: StepKind::Restart,
            total: 0,
            partial: Mutex::default(),
        };
        observer.output(Stream::Stdout, b"one\ntw");
        observer.output(Stream::Stderr, b"err\r\n");
        observer.output(Stream::Stdout, b"o\n\nthr");
        observer.output(Stream::Stdout, b"ee");
        observer.flush();
        let lines: Vec<(&str, String)> = recording
            .events()
            .into_iter()
            .map(|e| match e {
                Event::Output { stream, line, .. } => (stream, line),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            lines,
            [
                ("stdout", "one".to_string()),
                ("stderr", "err".to_string()),
                ("stdout", "two".to_string()),
                ("stdout", String::new()),
                ("stdout", "three".to_string()),
            ]
        );
    }
}
