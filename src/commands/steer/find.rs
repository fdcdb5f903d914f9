//! Which run to steer: the one live deploy or rollback holding the
//! stage's lock and taking requests, read on every host reached; or why
//! there is none (a free lock, a manual one, a run that died, two runs on
//! parts of the stage).

use std::time::Duration;

use futures::future::join_all;
use tokio::time::Instant;

use super::exec;
use crate::commands::lock::is_stale;
use crate::commands::{Context, Signals};
use crate::host::Layout;
use crate::host::lock::{HeldLock, LockInfo, LockKind};
use crate::host::steer::{Seen, State};
use crate::transport::ssh::SshTransport;

/// How long a run that holds the lock but does not take requests yet (it
/// is still reading the hosts and planning) is given to start taking them.
const OPENING_WAIT: Duration = Duration::from_secs(15);

/// The run to steer.
pub(super) struct Target {
    pub run: String,
    pub info: LockInfo,
    /// The hosts holding its lock (those reached), in name order.
    pub holders: Vec<String>,
    pub state: State,
}

/// Why there is no run to steer; `no_run`: none holds the lock at all.
pub(super) struct NotSteerable {
    pub message: String,
    pub no_run: bool,
    /// The run holding the lock has ended (it is about to give the lock
    /// back), with this exit code.
    pub ended: Option<u8>,
}

/// Reads every reachable host: the one live deploy or rollback holding
/// the lock and taking requests, or why there is none.
pub(super) async fn find_run(
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
}
