//! `shipit STAGE pause | resume | promote | abort | tune`, and `rollback`
//! while a deploy runs: steer a deploy or rollback running elsewhere (a
//! laptop, a CI job) through its hosts.
//!
//! Find the run that holds the deploy lock on the stage's hosts (a live
//! deploy or rollback that takes requests), write the request on every
//! host holding that lock (`host::steer`), then wait for the run's answer
//! in the state it publishes there: taken, done, refused, or too late. A
//! `pause` waits until the run is paused; a `rollback` until the deploy
//! it stopped has rolled back, and ends as that did. Nothing is changed
//! when no run is going: the command says so and exits 1.

use std::fmt::Write as _;
use std::time::Duration;

use futures::future::join_all;
use tokio::time::Instant;

use super::lock::is_stale;
use super::{Context, Signals, fleet};
use crate::error::Error;
use crate::execute::{RunReport, Steered};
use crate::exit::Exit;
use crate::host::Layout;
use crate::host::lock::{HeldLock, LockInfo, LockKind};
use crate::host::steer::{self, Answer, Ask, Outcome, Request, Seen, State};
use crate::plan::Plan;
use crate::report::{Event, HostResult};
use crate::transport::ssh::SshTransport;
use crate::transport::{ExecRequest, Quiet, Transport};
use crate::{execute, who};

/// How long a run has to answer a request before the requester gives up
/// waiting (the run reads requests every half second).
const ANSWER_WAIT: Duration = Duration::from_secs(30);

/// How often the requester reads the run's state while it waits.
const READ_EVERY: Duration = Duration::from_millis(200);

/// How long a run that holds the lock but does not take requests yet (it
/// is still reading the hosts and planning) is given to start taking them.
const OPENING_WAIT: Duration = Duration::from_secs(15);

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

/// The run to steer.
struct Target {
    run: String,
    info: LockInfo,
    /// The hosts holding its lock (those reached), in name order.
    holders: Vec<String>,
    state: State,
}

/// Why there is no run to steer; `no_run`: none holds the lock at all.
struct NotSteerable {
    message: String,
    no_run: bool,
    /// The run holding the lock has ended (it is about to give the lock
    /// back), with this exit code.
    ended: Option<u8>,
}

/// Reads every reachable host: the one live deploy or rollback holding
/// the lock and taking requests, or why there is none.
async fn find_run(
    ctx: &Context,
    transport: &SshTransport,
    signals: &Signals,
) -> Result<Target, NotSteerable> {
    let stage = &ctx.stage.name;
    let layout = Layout::new(&ctx.stage.app.deploy_to);
    let names: Vec<String> = ctx.hosts.iter().map(|h| h.name.clone()).collect();
    let deadline = Instant::now() + OPENING_WAIT;
    let mut said_waiting = false;
    loop {
        let seen = read_all(transport, &layout, &names).await;
        let found = judge(stage, &seen);
        let (run, info, holders) = match found {
            Found::Run { run, info, holders } => (run, info, holders),
            Found::None(message) => {
                return Err(NotSteerable {
                    message,
                    no_run: true,
                    ended: None,
                });
            }
            Found::Refused(message) => {
                return Err(NotSteerable {
                    message,
                    no_run: false,
                    ended: None,
                });
            }
        };
        let ours = holders.iter().filter_map(|h| {
            seen.iter()
                .find(|(n, _)| n == h)
                .and_then(|(_, s)| s.as_ref().ok())
        });
        let open = ours
            .clone()
            .find(|s| s.open && s.state.as_ref().is_some_and(|st| st.run == run));
        if let Some(seen) = open {
            let state = seen.state.clone().expect("found with a state");
            return Ok(Target {
                run,
                info: *info,
                holders,
                state,
            });
        }
        let ended = ours
            .filter_map(|s| s.state.as_ref())
            .find(|st| st.run == run)
            .and_then(|st| st.ended.as_ref())
            .map(|e| e.exit_code);
        if ended.is_some() || Instant::now() >= deadline || signals.cancel.is_cancelled() {
            let why = match ended {
                Some(code) => format!("it has just ended (exit {code})"),
                None => "it is not taking requests: it is finishing, or a shipit without run control started it"
                    .to_string(),
            };
            return Err(NotSteerable {
                message: format!(
                    "the {} holding the lock of stage {stage} cannot be steered now: {why}; nothing was changed",
                    info.describe()
                ),
                no_run: false,
                ended,
            });
        }
        if !said_waiting {
            ctx.note(
                None,
                &format!(
                    "{} is starting (reading the hosts, planning); waiting for it to take requests",
                    info.describe()
                ),
            );
            said_waiting = true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

enum Found {
    Run {
        run: String,
        info: Box<LockInfo>,
        holders: Vec<String>,
    },
    /// No run holds the lock.
    None(String),
    /// A lock is held, by something that cannot be steered.
    Refused(String),
}

/// The live run holding the lock on the hosts `seen`, or why there is none.
fn judge(stage: &str, seen: &[(String, Result<Seen, String>)]) -> Found {
    let reached: Vec<&(String, Result<Seen, String>)> =
        seen.iter().filter(|(_, s)| s.is_ok()).collect();
    if reached.is_empty() {
        let why: Vec<String> = seen
            .iter()
            .filter_map(|(h, s)| s.as_ref().err().map(|e| format!("{h}: {e}")))
            .collect();
        return Found::Refused(format!(
            "cannot read any host of stage {stage}; nothing was changed:\n  {}",
            why.join("\n  ")
        ));
    }
    let locks: Vec<(&str, &HeldLock)> = reached
        .iter()
        .filter_map(|(h, s)| {
            s.as_ref()
                .ok()
                .and_then(|s| s.lock.as_ref())
                .map(|l| (h.as_str(), l))
        })
        .collect();
    if locks.is_empty() {
        return Found::None(format!(
            "no deploy or rollback is running on stage {stage}: the deploy lock is free; nothing was changed"
        ));
    }
    let steerable = |l: &HeldLock| {
        l.info
            .as_ref()
            .is_some_and(|i| matches!(i.kind, LockKind::Deploy | LockKind::Rollback))
            && !is_stale(l)
    };
    let mut live: Vec<&str> = locks
        .iter()
        .filter(|(_, l)| steerable(l))
        .map(|(_, l)| l.run.as_str())
        .collect();
    live.sort();
    live.dedup();
    match live.as_slice() {
        [] => {
            let (host, lock) = locks[0];
            let why = match &lock.info {
                Some(info) if info.kind == LockKind::Manual => format!(
                    "the lock on {host} is a {}, not a run; `shipit {stage} unlock` removes it",
                    info.describe()
                ),
                Some(info) if matches!(info.kind, LockKind::Cleanup | LockKind::Exec) => format!(
                    "the lock on {host} is held by a {}, which cannot be steered",
                    info.describe()
                ),
                _ => format!(
                    "the lock on {host} belongs to {}, which stopped refreshing it {}s ago: its run is gone. \
                     `shipit {stage} status` shows where it stopped; `deploy --resume` continues it, `rollback` \
                     returns it",
                    lock.describe(),
                    lock.age_secs
                ),
            };
            Found::None(format!(
                "no deploy or rollback is running on stage {stage}: {why}; nothing was changed"
            ))
        }
        [run] => {
            let holders: Vec<String> = locks
                .iter()
                .filter(|(_, l)| l.run == *run)
                .map(|(h, _)| h.to_string())
                .collect();
            let info = locks
                .iter()
                .find_map(|(_, l)| l.info.clone().filter(|_| l.run == *run))
                .expect("a steerable lock has its info");
            Found::Run {
                run: run.to_string(),
                info: Box::new(info),
                holders,
            }
        }
        runs => {
            let each: Vec<String> = runs
                .iter()
                .map(|run| {
                    let on: Vec<&str> = locks
                        .iter()
                        .filter(|(_, l)| l.run == *run)
                        .map(|(h, _)| *h)
                        .collect();
                    format!("run {run} on {}", on.join(", "))
                })
                .collect();
            Found::Refused(format!(
                "{} runs hold the lock on parts of stage {stage} ({}); choose one with --hosts; nothing was changed",
                runs.len(),
                each.join("; ")
            ))
        }
    }
}

async fn read_all(
    transport: &SshTransport,
    layout: &Layout,
    hosts: &[String],
) -> Vec<(String, Result<Seen, String>)> {
    let cmd = &layout.steer_read().render();
    join_all(hosts.iter().map(|h| async move {
        let seen = exec(transport, h, cmd.clone())
            .await
            .and_then(|out| Seen::parse(&out).map_err(|e| format!("{h}: {e}")));
        (h.clone(), seen)
    }))
    .await
}

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
                Outcome::Accepted
                    if !matches!(request.ask, Ask::Pause { .. } | Ask::Rollback { .. }) =>
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

/// Where a run stands, in a few words: `batch 2/4`, `bake 1/4, 25s left`,
/// `PAUSED …`.
fn where_is(state: &State) -> String {
    match state.stage {
        steer::Stage::Prepare => "preparing the hosts".into(),
        steer::Stage::Batch => format!("batch {}/{}", state.batch, state.of),
        steer::Stage::Bake => format!(
            "bake {}/{}{}",
            state.batch,
            state.of,
            state
                .bake_left_ms
                .map(|ms| format!(
                    ", {} left",
                    execute::control::whole(Duration::from_millis(ms))
                ))
                .unwrap_or_default()
        ),
        steer::Stage::Paused => format!("paused after batch {}/{}", state.batch, state.of),
        steer::Stage::Undo => "rolling back".into(),
        steer::Stage::Finish => "finishing".into(),
        steer::Stage::Ended => "ended".into(),
    }
}

/// The `status` lines of a running rollout: who runs it from where, where
/// it stands, who paused it and for how long, what waits for a safe
/// point. `age_secs`: how old the state is, by the host's clock.
pub fn describe(state: &State, age_secs: u64, stale: bool, stage: &str) -> String {
    let age = Duration::from_secs(age_secs);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "running: {} of {} by {} (pid {} on {}), since {}",
        state.op, state.release, state.by, state.pid, state.machine, state.since
    );
    let mut now = match state.stage {
        steer::Stage::Bake => format!(
            "bake {}/{}{}",
            state.batch,
            state.of,
            state
                .bake_left_ms
                .map(|ms| {
                    let left = Duration::from_millis(ms).saturating_sub(age);
                    format!(", {} left", execute::control::whole(left))
                })
                .unwrap_or_default()
        ),
        _ => where_is(state),
    };
    if let Some(paused) = &state.paused {
        let _ = write!(
            now,
            ": PAUSED by {} for {}{}; `shipit {stage} resume` continues",
            paused.by,
            execute::control::whole(Duration::from_millis(paused.for_ms) + age),
            paused
                .message
                .as_deref()
                .map(|m| format!(" ({m})"))
                .unwrap_or_default()
        );
    }
    let _ = writeln!(out, "  now: {now}");
    if !state.pending.is_empty() {
        let _ = writeln!(
            out,
            "  at the next safe point: {}",
            state.pending.join(", ")
        );
    }
    if let Some(by) = &state.skip_bakes {
        let _ = writeln!(out, "  no further bake (promote --all by {by})");
    }
    if stale {
        let _ = writeln!(
            out,
            "  this was its last word, {}s ago: its lock is STALE, so the run is gone",
            age_secs
        );
    } else {
        let _ = writeln!(
            out,
            "  steer it from any machine: shipit {stage} pause | resume | promote | abort | rollback | tune"
        );
    }
    out
}

/// The running rollout for `status`: the state published on the first
/// holder of a deploy's or rollback's lock, if there is one.
pub async fn running<T: Transport>(
    transport: &T,
    layout: &Layout,
    holders: &[&str],
) -> Option<(State, u64)> {
    let cmd = layout.steer_read().render();
    for host in holders {
        let Ok(out) = exec(transport, host, cmd.clone()).await else {
            continue;
        };
        let Ok(seen) = Seen::parse(&out) else {
            continue;
        };
        let Some(lock) = seen.lock else { continue };
        if let Some(state) = seen
            .state
            .filter(|s| s.run == lock.run && s.ended.is_none())
        {
            return Some((state, seen.state_age_secs));
        }
    }
    None
}

/// The verdict of a run that an `abort` or a `rollback` stopped.
pub fn stopped(plan: &Plan, report: &RunReport, steered: &Steered) -> Error {
    let operation = plan.operation.as_str();
    let release = &plan.release;
    let on_new = report
        .hosts
        .iter()
        .filter(|h| h.now.as_ref() == Some(release) && h.before.as_ref() != Some(release))
        .count();
    let changed = report.hosts.iter().any(|h| h.now != h.before || h.drained);
    let failed: Vec<&str> = report
        .hosts
        .iter()
        .filter(|h| matches!(h.result, HostResult::Failed { .. }))
        .map(|h| h.host.as_str())
        .collect();
    let by = format!("{} by {}", steered.verb(), steered.by);
    if report.undo_ran && report.undo_failed.is_empty() && !changed {
        return Error::Run {
            exit: Exit::RolledBack,
            message: format!(
                "{operation} of {release} stopped ({by}) and rolled back: every host runs the release it ran \
                 before, and {release} is marked bad"
            ),
        };
    }
    if report.undo_ran {
        return Error::Run {
            exit: Exit::Partial,
            message: format!(
                "{operation} of {release} stopped ({by}), and the rollback did not complete on {}; {on_new} host(s) \
                 still run {release}. Look at those hosts, then run `shipit {} rollback`",
                report.undo_failed.join(", "),
                plan.stage
            ),
        };
    }
    if !changed {
        return Error::Run {
            exit: Exit::FailedUnchanged,
            message: format!(
                "{operation} of {release} stopped ({by}) before any host was switched"
            ),
        };
    }
    let failed = if failed.is_empty() {
        String::new()
    } else {
        format!("; failed on {}", failed.join(", "))
    };
    Error::Run {
        exit: Exit::Partial,
        message: format!(
            "{operation} of {release} stopped ({by}){failed}; {on_new} of {} hosts now run {release}. Deploy again \
             to go on, or `shipit {} rollback` to return them",
            report.hosts.len(),
            plan.stage
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::lock::LockInfo;

    fn info(run: &str, kind: LockKind) -> LockInfo {
        LockInfo {
            run: run.into(),
            kind,
            stage: "production".into(),
            by: "bob@ci".into(),
            machine: "elsewhere".into(),
            pid: 42,
            since: "2026-11-22T10:15:00Z".into(),
            release: None,
            message: None,
            lease_secs: 60,
        }
    }

    fn seen(run: Option<(&str, LockKind, u64)>) -> Result<Seen, String> {
        Ok(Seen {
            lock: run.map(|(run, kind, age)| HeldLock {
                run: run.into(),
                info: Some(info(run, kind)),
                age_secs: age,
            }),
            ..Seen::default()
        })
    }

    fn message(found: Found) -> String {
        match found {
            Found::None(m) | Found::Refused(m) => m,
            Found::Run { run, .. } => panic!("found run {run}"),
        }
    }

    #[test]
    fn the_one_live_run_is_found_and_anything_else_is_said() {
        let hosts = |list: Vec<Result<Seen, String>>| -> Vec<(String, Result<Seen, String>)> {
            list.into_iter()
                .enumerate()
                .map(|(i, s)| (format!("web{}", i + 1), s))
                .collect()
        };
        let found = judge(
            "production",
            &hosts(vec![
                seen(Some(("r1", LockKind::Deploy, 2))),
                Err("connection lost".into()),
                seen(Some(("r1", LockKind::Deploy, 3))),
            ]),
        );
        let Found::Run { run, holders, .. } = found else {
            panic!()
        };
        assert_eq!(
            (run.as_str(), holders),
            ("r1", vec!["web1".to_string(), "web3".to_string()])
        );

        assert_eq!(
            message(judge("production", &hosts(vec![seen(None), seen(None)]))),
            "no deploy or rollback is running on stage production: the deploy lock is free; nothing was changed"
        );
        let manual = message(judge(
            "production",
            &hosts(vec![seen(Some(("m", LockKind::Manual, 999)))]),
        ));
        assert!(manual.contains("is a manual lock by bob@ci"), "{manual}");
        assert!(manual.contains("`shipit production unlock`"), "{manual}");
        let stale = message(judge(
            "production",
            &hosts(vec![seen(Some(("r1", LockKind::Deploy, 600)))]),
        ));
        assert!(stale.contains("stopped refreshing it 600s ago"), "{stale}");
        assert!(matches!(
            judge("production", &hosts(vec![seen(Some(("c", LockKind::Cleanup, 1)))])),
            Found::None(m) if m.contains("cannot be steered")
        ));
        let two = message(judge(
            "production",
            &hosts(vec![
                seen(Some(("r1", LockKind::Deploy, 1))),
                seen(Some(("r2", LockKind::Rollback, 1))),
            ]),
        ));
        assert!(
            two.contains("2 runs hold the lock on parts of stage production (run r1 on web1; run r2 on web2); choose one with --hosts"),
            "{two}"
        );
        assert!(matches!(
            judge("production", &hosts(vec![Err("down".into())])),
            Found::Refused(m) if m.contains("cannot read any host")
        ));
    }

    #[test]
    fn status_shows_who_where_and_how_long() {
        let mut state = State {
            run: "r1".into(),
            op: "deploy".into(),
            release: "20261122101500".into(),
            by: "bob@ci".into(),
            machine: "ci-7".into(),
            pid: 4242,
            since: "2026-11-22T10:15:00Z".into(),
            stage: steer::Stage::Bake,
            batch: 1,
            of: 4,
            bake_left_ms: Some(30_000),
            paused: None,
            pending: vec!["abort by carol@desk".into()],
            skip_bakes: None,
            answers: Vec::new(),
            ended: None,
        };
        assert_eq!(
            describe(&state, 5, false, "production"),
            "running: deploy of 20261122101500 by bob@ci (pid 4242 on ci-7), since 2026-11-22T10:15:00Z\n  \
             now: bake 1/4, 25s left\n  at the next safe point: abort by carol@desk\n  \
             steer it from any machine: shipit production pause | resume | promote | abort | rollback | tune\n"
        );
        state.stage = steer::Stage::Paused;
        state.pending.clear();
        state.paused = Some(steer::Paused {
            by: "alice@laptop".into(),
            message: Some("checking dashboards".into()),
            for_ms: 60_000,
        });
        let text = describe(&state, 20, true, "production");
        assert!(
            text.contains(
                "now: paused after batch 1/4: PAUSED by alice@laptop for 1m 20s (checking dashboards); \
                 `shipit production resume` continues"
            ),
            "{text}"
        );
        assert!(
            text.contains("its lock is STALE, so the run is gone"),
            "{text}"
        );
    }
}
