//! `shipit STAGE pause | resume | promote | abort | tune`, and `rollback`
//! while a deploy runs: steer a deploy or rollback running elsewhere (a
//! laptop, a CI job) through its hosts.
//!
//! Find the run that holds the deploy lock on the stage's hosts (a live
//! deploy or rollback that takes requests), write the request on every
//! host holding that lock that takes it (the run's mailboxes, see
//! `execute::control::remote`), then wait for the run's answer in the
//! state it publishes there: taken, done, refused, or too late. A
//! `pause` waits until the run is paused; a `rollback` until the deploy
//! it stopped has rolled back, and ends as that did. Nothing is changed
//! when no run is going: the command says so and exits 1.
//!
//! `find` picks the run; `show` says where a run stands (also for
//! `status`) and words the verdict of a run that was stopped.

use std::time::Duration;

use futures::future::join_all;
use tokio::time::Instant;

use super::lock::is_stale;
use super::{Context, Signals, fleet};
use crate::error::Error;
use crate::exit::Exit;
use crate::host::Layout;
use crate::host::lock::LockKind;
use crate::host::steer::{self, Answer, Ask, Outcome, Request, Seen};
use crate::report::Event;
use crate::transport::ssh::SshTransport;
use crate::transport::{ExecRequest, Quiet, Transport};
use crate::who;

/// How long a run has to answer a request before the requester gives up
/// waiting (the run reads requests every half second).
const ANSWER_WAIT: Duration = Duration::from_secs(30);

/// How often the requester reads the run's state while it waits.
const READ_EVERY: Duration = Duration::from_millis(200);

/// `shipit STAGE pause|resume|promote|abort|tune`.
pub async fn run(ctx: &Context, ask: Ask, signals: &Signals) -> Result<Exit, Error> {
    let (transport, unreachable) = fleet::connect_some(&ctx.stage, &ctx.hosts).await?;
    for e in &unreachable {
        ctx.note(None, &format!("{e}; asking the other hosts"));
    }
    let result = async {
        let target = find_run(ctx, &transport, signals)
            .await
            .map_err(|e| Error::Unchanged(e.message))?;
        match request(ctx, &transport, &target, ask, signals).await? {
            Waited::Exit(exit) => Ok(exit),
            Waited::TooLate(code) => Err(Error::Unchanged(format!(
                "the run ended (exit {code}) before it could act on the request"
            ))),
        }
    }
    .await;
    transport.close().await;
    result
}

/// `shipit STAGE rollback` found the lock held by a live deploy: asks it
/// to roll back and waits for the outcome. `None`: no run is going any
/// more (it ended meanwhile), so a plain rollback can go ahead.
pub async fn rollback_running(
    ctx: &Context,
    transport: &SshTransport,
    message: Option<String>,
    signals: &Signals,
) -> Result<Option<Exit>, Error> {
    let target = match find_run(ctx, transport, signals).await {
        Ok(target) => target,
        Err(NotSteerable { no_run: true, .. }) => return Ok(None),
        Err(NotSteerable {
            ended: Some(code), ..
        }) => return after_the_deploy(ctx, code),
        Err(e) => return Err(Error::Unchanged(e.message)),
    };
    if target.info.kind != LockKind::Deploy {
        return Err(Error::Unchanged(format!(
            "a rollback is running already ({}); wait for it with --lock-wait",
            target.info.describe()
        )));
    }
    match request(ctx, transport, &target, Ask::Rollback { message }, signals).await? {
        Waited::Exit(exit) => Ok(Some(exit)),
        Waited::TooLate(code) => after_the_deploy(ctx, code),
    }
}

/// A deploy that ended (exit `code`) before it could roll back on request:
/// `None` when it deployed, so a rollback of its own undoes it; done when
/// it changed nothing or rolled back by itself.
fn after_the_deploy(ctx: &Context, code: u8) -> Result<Option<Exit>, Error> {
    match code {
        0 => {
            ctx.note(
                None,
                "the deploy finished before it could roll back on request; rolling back what it deployed",
            );
            Ok(None)
        }
        1 | 4 => {
            ctx.note(
                None,
                &format!(
                    "the deploy ended by itself (exit {code}) with every host on the release it ran before; \
                     nothing to roll back"
                ),
            );
            Ok(Some(Exit::Success))
        }
        _ => Err(Error::Run {
            exit: Exit::Partial,
            message: format!(
                "the deploy ended (exit {code}) before it could roll back on request, with hosts left changed; \
                 look at `shipit {} status`, then roll back",
                ctx.stage.name
            ),
        }),
    }
}

/// How waiting for an answer ended.
enum Waited {
    Exit(Exit),
    /// A rollback came too late: the deploy finished its rollout and
    /// ended with this exit code.
    TooLate(u8),
}

mod find;
mod show;

pub use show::{describe, running, stopped};

use find::{NotSteerable, Target, find_run};
use show::where_is;

async fn exec<T: Transport>(transport: &T, host: &str, command: String) -> Result<String, String> {
    let request = ExecRequest {
        command,
        stdin: None,
        timeout: Some(Duration::from_secs(10)),
    };
    match transport.exec(host, request, &Quiet).await {
        Ok(out) if out.exit.success() => Ok(out.stdout_text()),
        Ok(out) => Err(format!("{} {}", out.exit, out.stderr_tail(2))),
        Err(e) => Err(e.to_string()),
    }
}

/// Writes `ask` for `target` and waits for the answer.
async fn request(
    ctx: &Context,
    transport: &SshTransport,
    target: &Target,
    ask: Ask,
    signals: &Signals,
) -> Result<Waited, Error> {
    let now = jiff::Timestamp::now();
    let request = Request {
        id: steer::request_id(now, std::process::id()),
        run: target.run.clone(),
        by: who::who(),
        machine: who::machine(),
        time: format!("{now:.3}"),
        ask,
    };
    let layout = Layout::new(&ctx.stage.app.deploy_to);
    let cmd = layout.steer_request(&request).render();
    let results = join_all(
        target
            .holders
            .iter()
            .map(|h| exec(transport, h, cmd.clone())),
    )
    .await;
    let written: Vec<String> = target
        .holders
        .iter()
        .zip(&results)
        .filter(|(_, r)| r.is_ok())
        .map(|(h, _)| h.clone())
        .collect();
    if written.is_empty() {
        let why: Vec<String> = target
            .holders
            .iter()
            .zip(&results)
            .filter_map(|(h, r)| r.as_ref().err().map(|e| format!("{h}: {e}")))
            .collect();
        return Err(Error::Unchanged(format!(
            "could not hand the request to {}; nothing was changed:\n  {}",
            target.info.describe(),
            why.join("\n  ")
        )));
    }
    let state = &target.state;
    ctx.note(
        None,
        &format!(
            "asking the {} of {} by {} (run {}, {}) to {}",
            state.op,
            state.release,
            state.by,
            target.run,
            where_is(state),
            request.ask.verb()
        ),
    );
    wait(ctx, transport, &layout, &written, &request, signals).await
}

/// Waits for the run's answer (and for a `pause`, for the pause; for a
/// `rollback`, for the end of the run) and turns it into an exit.
async fn wait(
    ctx: &Context,
    transport: &SshTransport,
    layout: &Layout,
    hosts: &[String],
    request: &Request,
    signals: &Signals,
) -> Result<Waited, Error> {
    let asked = Instant::now();
    let cmd = layout.steer_read().render();
    let mut at = 0;
    let mut shown: Option<Answer> = None;
    let mut last_stage = None;
    loop {
        tokio::select! {
            () = tokio::time::sleep(READ_EVERY) => {}
            () = signals.cancel.cancelled() => {
                return Err(Error::Run {
                    exit: Exit::Interrupted,
                    message: format!(
                        "stopped waiting; the {} request stays with the run, which acts on it as if you had waited",
                        request.ask.name()
                    ),
                });
            }
        }
        let host = &hosts[at];
        let seen = match exec(transport, host, cmd.clone())
            .await
            .and_then(|out| Seen::parse(&out))
        {
            Ok(seen) => seen,
            Err(e) => {
                tracing::debug!("reading the run's answer on {host}: {e}");
                at = (at + 1) % hosts.len();
                continue;
            }
        };
        let state = seen.state.as_ref().filter(|s| s.run == request.run);
        let answer = state.and_then(|s| s.answer(&request.id));
        if let Some(answer) = answer
            && shown.as_ref() != Some(answer)
        {
            let first = shown.is_none();
            ctx.event(&Event::Steer {
                request: answer.id.clone(),
                action: answer.action.clone(),
                by: answer.by.clone(),
                message: request.message().map(str::to_string),
                asked: request.time.clone(),
                outcome: answer.outcome,
                detail: answer.detail.clone(),
            });
            if first {
                tracing::debug!("answered after {:?}", asked.elapsed());
            }
            shown = Some(answer.clone());
        }
        // A rollback that comes too late waits for the deploy's end: what
        // to do then depends on how it ended.
        let too_late =
            request.is_rollback() && answer.is_some_and(|a| a.outcome == Outcome::Ignored);
        if let Some(answer) = answer.filter(|_| !too_late) {
            match answer.outcome {
                Outcome::Refused | Outcome::Ignored => {
                    return Err(Error::Unchanged(answer.detail.clone()));
                }
                Outcome::Done if !request.is_rollback() => return Ok(Waited::Exit(Exit::Success)),
                // A pause waits for the pause, a promote for the bake's end, a
                // rollback for the end of the run.
                Outcome::Accepted
                    if !matches!(
                        request.ask,
                        Ask::Pause { .. } | Ask::Promote { .. } | Ask::Rollback { .. }
                    ) =>
                {
                    return Ok(Waited::Exit(Exit::Success));
                }
                _ => {}
            }
        }
        if let Some(state) = state {
            if request.is_rollback() && last_stage != Some(state.stage) {
                if matches!(state.stage, steer::Stage::Undo) {
                    ctx.note(
                        None,
                        "the deploy is returning every switched host to its previous release",
                    );
                }
                last_stage = Some(state.stage);
            }
            if let Some(ended) = &state.ended {
                if too_late || (answer.is_none() && request.is_rollback()) {
                    return Ok(Waited::TooLate(ended.exit_code));
                }
                return ended_as(request, answer.is_some(), ended).map(Waited::Exit);
            }
        }
        let ours = seen.lock.as_ref().is_some_and(|l| l.run == request.run);
        if !ours && state.is_none_or(|s| s.ended.is_none()) {
            return Err(gone(request, "it no longer holds the deploy lock"));
        }
        if let Some(lock) = seen.lock.as_ref().filter(|_| ours)
            && is_stale(lock)
        {
            return Err(gone(
                request,
                &format!("it stopped refreshing its lock {}s ago", lock.age_secs),
            ));
        }
        if answer.is_none() && asked.elapsed() > ANSWER_WAIT {
            return Err(Error::Unchanged(format!(
                "run {} has not answered the {} request within {}s; the request stays on the hosts, and the run \
                 acts on it if it reads it (`shipit {} status` shows the run)",
                request.run,
                request.ask.name(),
                ANSWER_WAIT.as_secs(),
                ctx.stage.name
            )));
        }
    }
}

/// The run ended; what that means for the request.
fn ended_as(request: &Request, answered: bool, ended: &steer::Ended) -> Result<Exit, Error> {
    let how = ended
        .message
        .as_deref()
        .map(|m| format!(": {m}"))
        .unwrap_or_default();
    if !answered {
        return Err(Error::Unchanged(format!(
            "run {} ended (exit {}{how}) before it read the {} request; nothing was changed by it",
            request.run,
            ended.exit_code,
            request.ask.name()
        )));
    }
    if !request.is_rollback() {
        return Ok(Exit::Success);
    }
    // The deploy's exit: 4 rolled back, 1 stopped before any host switched.
    match ended.exit_code {
        4 | 1 => Ok(Exit::Success),
        code => Err(Error::Run {
            exit: Exit::Partial,
            message: format!(
                "the deploy did not get every host back (it ended with exit {code}{how}); look at `status` and the hosts"
            ),
        }),
    }
}

fn gone(request: &Request, why: &str) -> Error {
    let exit = if request.is_rollback() {
        Exit::Partial
    } else {
        Exit::FailedUnchanged
    };
    Error::Run {
        exit,
        message: format!(
            "run {} is gone without saying how it ended ({why}); `status` shows where it stopped",
            request.run
        ),
    }
}
