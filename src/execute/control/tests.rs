//! The safe-point logic: what each request does when, alone and against a
//! run over a scripted transport.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::execute::{Executor, RunReport};
use crate::host::steer::{Ask, Outcome, Request};
use crate::plan::Plan;
use crate::report::{Event, HostResult, Phase, Recording};
use crate::testing::{self, id, stage};
use crate::transport::fake::FakeTransport;

const STAGE: &str = r#"
restart = "restart-app"
[lb]
drain = "lb-drain {name}"
enable = "lb-enable {name}"
[rollout]
"#;

/// A deploy plan of `hosts` hosts with `rollout` keys.
fn plan(hosts: usize, rollout: &str) -> Plan {
    let stage = stage(hosts, &format!("keep_releases = 1\n{STAGE}{rollout}\n"));
    testing::deploy_plan(&stage, true, None).unwrap()
}

fn ask(id: &str, plan: &Plan, ask: Ask) -> Request {
    Request {
        id: id.into(),
        run: plan.run.clone(),
        by: "alice@laptop".into(),
        machine: "laptop".into(),
        time: "2026-11-22T10:15:00.000Z".into(),
        ask,
    }
}

fn control(plan: &Plan) -> (Arc<Control>, Arc<Recording>) {
    let recording = Arc::new(Recording::default());
    let control = Arc::new(Control::new(plan, "bob@ci", "ci", 42, recording.clone()));
    (control, recording)
}

/// (outcome, detail) of every answer to request `id`, in order.
fn answers(recording: &Recording, id: &str) -> Vec<(Outcome, String)> {
    recording
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Steer {
                request,
                outcome,
                detail,
                ..
            } if request == id => Some((outcome, detail)),
            _ => None,
        })
        .collect()
}

fn last(recording: &Recording, id: &str) -> (Outcome, String) {
    answers(recording, id)
        .pop()
        .unwrap_or_else(|| panic!("no answer to {id}"))
}

#[test]
fn a_pause_waits_for_the_safe_point_and_a_resume_lets_the_run_go() {
    let p = plan(4, "rolling_batch_size = 1");
    let (c, rec) = control(&p);
    c.batch_started(0, 4, Tuning::for_plan(&p));
    c.receive(ask(
        "q1",
        &p,
        Ask::Pause {
            message: Some("checking dashboards".into()),
        },
    ));
    assert_eq!(
        last(&rec, "q1"),
        (
            Outcome::Accepted,
            "alice@laptop asks to pause (checking dashboards): pausing once batch 1/4 is back in service".into()
        )
    );
    // The same request read again (from another host): answered once.
    c.receive(ask("q1", &p, Ask::Pause { message: None }));
    assert_eq!(answers(&rec, "q1").len(), 1);

    assert_eq!(c.gate(1, 4), Gate::Wait);
    assert_eq!(
        last(&rec, "q1"),
        (
            Outcome::Done,
            "paused by alice@laptop before batch 2/4: checking dashboards; `shipit production resume` continues"
                .into()
        )
    );
    // Still paused: asking again changes nothing and wakes nobody.
    let mut changed = c.subscribe();
    changed.borrow_and_update();
    assert_eq!(c.gate(1, 4), Gate::Wait);
    assert!(!changed.has_changed().unwrap());
    let (state, mut log) = c.publication();
    assert_eq!(state.stage, steer::Stage::Paused);
    assert_eq!(state.paused.as_ref().unwrap().by, "alice@laptop");
    assert_eq!((state.batch, state.of), (1, 4));

    // A second pause is answered, and ignored.
    c.receive(ask("q2", &p, Ask::Pause { message: None }));
    assert_eq!(last(&rec, "q2").0, Outcome::Ignored);

    c.receive(ask("q3", &p, Ask::Resume));
    assert!(changed.has_changed().unwrap(), "the gate is woken");
    let (outcome, detail) = last(&rec, "q3");
    assert_eq!(outcome, Outcome::Done);
    assert!(
        detail.starts_with("resumed by alice@laptop after")
            && detail.ends_with("(paused by alice@laptop)"),
        "{detail}"
    );
    assert_eq!(c.gate(1, 4), Gate::Go);
    // Not paused: a resume is refused.
    c.receive(ask("q4", &p, Ask::Resume));
    assert_eq!(
        last(&rec, "q4"),
        (
            Outcome::Refused,
            "resume by alice@laptop refused: the run is not paused".into()
        )
    );
    // Every final answer is a revisions.log line naming who and the run.
    log.extend(c.publication().1);
    assert_eq!(log.len(), 4, "{log:?}");
    let entry: crate::host::revlog::Entry = serde_json::from_str(&log[0]).unwrap();
    assert_eq!(entry.action, "pause");
    assert_eq!(entry.by, "alice@laptop");
    assert_eq!(entry.run.as_deref(), Some(p.run.as_str()));
    assert_eq!(entry.message.as_deref(), Some("checking dashboards"));
    assert!(
        entry.result.starts_with("paused by alice@laptop"),
        "{}",
        entry.result
    );
    // Taken: not given again.
    assert!(c.publication().1.is_empty());
}

#[test]
fn a_resume_before_the_pause_took_effect_cancels_it() {
    let p = plan(3, "");
    let (c, rec) = control(&p);
    c.receive(ask("q1", &p, Ask::Pause { message: None }));
    assert!(
        last(&rec, "q1")
            .1
            .ends_with("pausing once every host has the release, before batch 1")
    );
    c.receive(ask("q2", &p, Ask::Resume));
    assert_eq!(last(&rec, "q1").0, Outcome::Ignored);
    assert_eq!(last(&rec, "q2").0, Outcome::Done);
    assert_eq!(c.gate(0, 3), Gate::Go);
}

#[tokio::test]
async fn a_promote_ends_the_bake_under_way_and_only_that() {
    let p = plan(3, "");
    let (c, rec) = control(&p);
    c.batch_started(0, 3, Tuning::for_plan(&p));
    // No bake under way: refused.
    c.receive(ask("q1", &p, Ask::Promote { all: false }));
    let (outcome, detail) = last(&rec, "q1");
    assert_eq!(outcome, Outcome::Refused);
    assert_eq!(
        detail,
        "promote by alice@laptop refused: no bake is under way (batch 1/3); `promote --all` skips every bake \
         still to come"
    );
    assert!(c.bake_begins(1, 3, Duration::from_secs(300)));
    let (state, _) = c.publication();
    assert_eq!(state.stage, steer::Stage::Bake);
    assert!(state.bake_left_ms.unwrap() > 290_000);
    let cut = {
        let c = c.clone();
        tokio::spawn(async move { c.bake_cut().await })
    };
    tokio::task::yield_now().await;
    assert!(!cut.is_finished());
    c.receive(ask("q2", &p, Ask::Promote { all: false }));
    tokio::time::timeout(Duration::from_secs(5), cut)
        .await
        .expect("the bake is cut")
        .unwrap();
    assert_eq!(
        c.bake_ended(1, 3, true).as_deref(),
        Some("promote by alice@laptop")
    );
    assert_eq!(
        last(&rec, "q2"),
        (
            Outcome::Done,
            "bake 1/3 ended by a promote from alice@laptop".into()
        )
    );
    // The next bake runs whole: the promote was for that one bake.
    assert!(c.bake_begins(2, 3, Duration::from_secs(1)));
    assert_eq!(c.bake_ended(2, 3, false), None);
}

#[test]
fn promote_all_skips_every_bake_still_to_come() {
    let p = plan(3, "");
    let (c, rec) = control(&p);
    c.receive(ask("q1", &p, Ask::Promote { all: true }));
    assert_eq!(last(&rec, "q1").0, Outcome::Done);
    assert!(!c.bake_begins(1, 3, Duration::from_secs(60)));
    assert!(rec.events().iter().any(|e| matches!(e,
        Event::Note { message, .. } if message == "bake 1/3 skipped: promote --all by alice@laptop")));
    assert_eq!(
        c.publication().0.skip_bakes.as_deref(),
        Some("alice@laptop")
    );
}

#[tokio::test]
async fn an_abort_ends_a_bake_at_once_and_stops_at_the_next_gate() {
    let p = plan(3, "");
    let (c, rec) = control(&p);
    c.batch_started(0, 3, Tuning::for_plan(&p));
    assert!(c.bake_begins(1, 3, Duration::from_secs(300)));
    c.receive(ask("q1", &p, Ask::Abort { message: None }));
    assert_eq!(
        last(&rec, "q1"),
        (
            Outcome::Accepted,
            "alice@laptop asks to abort: ending bake 1/3 now; then every switched host goes back to its previous \
             release"
                .into()
        )
    );
    tokio::time::timeout(Duration::from_secs(5), c.bake_cut())
        .await
        .expect("the bake is cut");
    assert_eq!(
        c.bake_ended(1, 3, true).as_deref(),
        Some("abort by alice@laptop")
    );
    // A second stop is answered and changes nothing.
    c.receive(ask("q2", &p, Ask::Rollback { message: None }));
    assert_eq!(last(&rec, "q2").0, Outcome::Ignored);
    assert_eq!(c.gate(1, 3), Gate::Stop);
    assert_eq!(last(&rec, "q1").0, Outcome::Done);
    assert_eq!(c.gate(1, 3), Gate::Stop);
    assert_eq!(
        c.rollout_over(),
        Some(Steered {
            rollback: false,
            by: "alice@laptop".into()
        })
    );
    // After the rollout, everything comes too late.
    c.receive(ask("q3", &p, Ask::Pause { message: None }));
    assert_eq!(
        last(&rec, "q3"),
        (
            Outcome::Ignored,
            "pause by alice@laptop comes too late: every batch is done (finishing)".into()
        )
    );
}

#[test]
fn a_stop_during_a_batch_skips_its_bake_and_a_late_one_still_counts() {
    let p = plan(2, "on_failure = \"pause\"");
    let (c, rec) = control(&p);
    c.batch_started(1, 2, Tuning::for_plan(&p));
    c.receive(ask("q1", &p, Ask::Abort { message: None }));
    assert!(last(&rec, "q1").1.ends_with(
        "stopping once batch 2/2 is back in service; then the hosts stay where they are (rollout.on_failure)"
    ));
    assert!(!c.bake_begins(2, 2, Duration::from_secs(60)));
    // The last batch: no gate comes, the end of the rollout takes it.
    assert_eq!(
        c.rollout_over(),
        Some(Steered {
            rollback: false,
            by: "alice@laptop".into()
        })
    );
    assert_eq!(last(&rec, "q1").0, Outcome::Done);
}

#[test]
fn requests_for_another_run_or_a_rollback_of_a_rollback_are_refused() {
    let p = plan(2, "");
    let (c, rec) = control(&p);
    let mut other = ask("q1", &p, Ask::Abort { message: None });
    other.run = "someone-else".into();
    c.receive(other);
    assert_eq!(last(&rec, "q1").0, Outcome::Refused);
    assert_eq!(c.gate(0, 2), Gate::Go);
    c.unreadable("q2", "not a request this shipit understands");
    assert_eq!(
        last(&rec, "q2"),
        (
            Outcome::Refused,
            "request q2 refused: not a request this shipit understands".into()
        )
    );

    let mut rollback = p.clone();
    rollback.operation = Operation::Rollback;
    let (c, rec) = control(&rollback);
    c.receive(ask("q3", &rollback, Ask::Rollback { message: None }));
    assert_eq!(
        last(&rec, "q3"),
        (
            Outcome::Refused,
            "rollback by alice@laptop refused: this run is a rollback itself".into()
        )
    );
    // An abort of a rollback stops it where it is.
    c.receive(ask("q4", &rollback, Ask::Abort { message: None }));
    assert!(
        last(&rec, "q4")
            .1
            .ends_with("then the hosts stay where they are")
    );
}

#[test]
fn a_tune_is_judged_when_it_comes_and_applied_at_the_gate() {
    let p = plan(4, "rolling_batch_size = 1\nmax_unavailable = 2");
    let (c, rec) = control(&p);
    c.receive(ask(
        "q1",
        &p,
        Ask::Tune {
            batch_size: Some("3".into()),
            bake_ms: None,
        },
    ));
    let (outcome, detail) = last(&rec, "q1");
    assert_eq!(outcome, Outcome::Refused);
    assert!(
        detail.contains("rollout.max_unavailable = 2 leaves room for 2"),
        "{detail}"
    );
    c.receive(ask(
        "q2",
        &p,
        Ask::Tune {
            batch_size: Some("2".into()),
            bake_ms: Some(0),
        },
    ));
    assert_eq!(
        last(&rec, "q2"),
        (
            Outcome::Accepted,
            "tune by alice@laptop taken: from batch 1 on, 2 batches: web1, web2 | web3, web4"
                .into()
        )
    );
    assert_eq!(c.publication().0.pending, ["tune by alice@laptop"]);
    let Gate::Tune(request) = c.gate(0, 4) else {
        panic!()
    };
    assert_eq!(request.id, "q2");
    c.tuned(&request, Ok("from batch 1 on, 2 batches".into()));
    assert_eq!(last(&rec, "q2").0, Outcome::Done);
    assert_eq!(c.gate(0, 2), Gate::Go);
}

async fn run(
    plan: &Plan,
    control: Arc<Control>,
    remote: &FakeTransport,
    local: &FakeTransport,
    recording: &Recording,
) -> RunReport {
    Executor::with_local(remote, local, recording)
        .archive(Bytes::from_static(b"archive"))
        .control(control)
        .run(plan)
        .await
}

fn phases(events: &[Event]) -> Vec<Vec<String>> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::PhaseStarted {
                phase: Phase::Batch { .. },
                hosts,
            } => Some(hosts.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_paused_run_starts_no_batch_until_resumed() {
    let p = plan(3, "rolling_batch_size = 1");
    let (c, recording) = control(&p);
    // Pausing while batch 1 is in flight (its drain takes a while).
    let local = FakeTransport::default().delay("*", "lb-drain web1", Duration::from_millis(100));
    let remote = FakeTransport::default();
    let steer = {
        let (c, p) = (c.clone(), p.clone());
        async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            c.receive(ask("q1", &p, Ask::Pause { message: None }));
            // Paused once batch 1 is done; nothing moves for a while.
            let mut changed = c.subscribe();
            while c.publication().0.stage != steer::Stage::Paused {
                changed.changed().await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            c.receive(ask("q2", &p, Ask::Resume));
        }
    };
    let (report, ()) = tokio::join!(run(&p, c.clone(), &remote, &local, &recording), steer);
    assert!(report.ok, "{report:?}");
    let events = recording.events();
    // Batch 2 started after the resume, never while paused.
    let paused = events
        .iter()
        .position(|e| matches!(e, Event::Steer { outcome: Outcome::Done, request, .. } if request == "q1"))
        .unwrap();
    let resumed = events
        .iter()
        .position(|e| matches!(e, Event::Steer { request, .. } if request == "q2"))
        .unwrap();
    let batch2 = events
        .iter()
        .position(|e| {
            matches!(
                e,
                Event::PhaseStarted {
                    phase: Phase::Batch { number: 2, .. },
                    ..
                }
            )
        })
        .unwrap();
    assert!(paused < resumed && resumed < batch2, "{events:#?}");
    assert_eq!(phases(&events).len(), 3);
}

#[tokio::test]
async fn an_abort_during_the_first_bake_rolls_back_at_once() {
    let p = plan(3, "rolling_batch_size = 1\nbake = \"300s\"");
    let (c, recording) = control(&p);
    let remote = FakeTransport::default();
    let local = FakeTransport::default();
    let steer = {
        let (c, p) = (c.clone(), p.clone());
        async move {
            let mut changed = c.subscribe();
            while c.publication().0.stage != steer::Stage::Bake {
                changed.changed().await.unwrap();
            }
            c.receive(ask("q1", &p, Ask::Abort { message: None }));
        }
    };
    let (report, ()) = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(run(&p, c.clone(), &remote, &local, &recording), steer)
    })
    .await
    .expect("the bake of 300s ends at once");
    assert_eq!(
        report.steered,
        Some(Steered {
            rollback: false,
            by: "alice@laptop".into()
        })
    );
    assert!(
        report.undo_ran && report.undo_failed.is_empty(),
        "{report:?}"
    );
    for h in &report.hosts {
        assert_eq!(h.now, Some(id(2)), "{} back on its release", h.host);
        assert!(!h.drained);
    }
    let web1 = report.hosts.iter().find(|h| h.host == "web1").unwrap();
    assert_eq!(web1.result, HostResult::RolledBack);
    let events = recording.events();
    assert!(
        events.iter().any(|e| matches!(e,
        Event::BakeFinished { batch: 1, ended_by: Some(by), .. } if by == "abort by alice@laptop"))
    );
    assert_eq!(
        phases(&events),
        [vec!["web1".to_string()]],
        "no batch after the abort"
    );
    // The release left behind is marked bad, as after any rollback.
    assert!(!remote.steps(&["shipit:mark-bad"]).is_empty());
}

#[tokio::test]
async fn a_rollback_asked_stops_a_deploy_whose_policy_is_pause() {
    let p = plan(2, "rolling_batch_size = 1\non_failure = \"pause\"");
    let (c, recording) = control(&p);
    c.receive(ask("q1", &p, Ask::Rollback { message: None }));
    let report = run(
        &p,
        c,
        &FakeTransport::default(),
        &FakeTransport::default(),
        &recording,
    )
    .await;
    // Asked before batch 1: nothing was switched, nothing to return.
    assert_eq!(report.steered.as_ref().map(|s| s.rollback), Some(true));
    assert!(phases(&recording.events()).is_empty());
    assert!(
        report
            .hosts
            .iter()
            .all(|h| h.result == HostResult::NotReached)
    );
}

#[tokio::test]
async fn a_tune_cuts_the_batches_left_and_each_host_learns_its_new_batch() {
    let p = plan(4, "rolling_batch_size = 1\nmax_unavailable = 3");
    let (c, recording) = control(&p);
    // web1's batch is in flight when the tune comes.
    let local = FakeTransport::default().delay("*", "lb-drain web1", Duration::from_millis(100));
    let remote = FakeTransport::default();
    let steer = {
        let (c, p) = (c.clone(), p.clone());
        async move {
            let mut changed = c.subscribe();
            while c.publication().0.stage != steer::Stage::Batch {
                changed.changed().await.unwrap();
            }
            c.receive(ask(
                "q1",
                &p,
                Ask::Tune {
                    batch_size: Some("3".into()),
                    bake_ms: None,
                },
            ));
        }
    };
    let (report, ()) = tokio::join!(run(&p, c, &remote, &local, &recording), steer);
    assert!(report.ok, "{report:?}");
    let events = recording.events();
    assert_eq!(
        phases(&events),
        [
            vec!["web1".to_string()],
            vec!["web2".to_string(), "web3".to_string(), "web4".to_string()]
        ]
    );
    assert!(events.iter().any(|e| matches!(
        e,
        Event::PhaseStarted {
            phase: Phase::Batch { number: 2, of: 2 },
            ..
        }
    )));
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Retuned { from: 2, batches } if batches.len() == 2))
    );
}
