//! What steering shows: where a running rollout stands (for `status` and
//! the requester), and the verdict of a run an `abort` or a `rollback`
//! stopped.

use std::fmt::Write as _;
use std::time::Duration;

use super::exec;
use crate::error::Error;
use crate::execute::{self, RunReport, Steered};
use crate::exit::Exit;
use crate::host::Layout;
use crate::host::steer::{self, Seen, State};
use crate::plan::Plan;
use crate::report::HostResult;
use crate::transport::Transport;

/// Where a run stands, in a few words: `batch 2/4`, `bake 1/4, 25s left`,
/// `PAUSED …`.
pub(super) fn where_is(state: &State) -> String {
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
