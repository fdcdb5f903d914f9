//! Bakes and gates.

use super::*;

/// A gate that fails on the canary fails its batch at the gate step: the
/// policy rolls it back and no other host is ever switched.
#[tokio::test]
async fn a_failing_gate_fails_the_canary_and_rolls_it_back() {
    let plan = gated_plan(
        3,
        "rolling_batch_size = [1, 2]\nbake = \"400ms\"\n\
         [[gates]]\ntype = \"command\"\nrun = \"slo-ok {release}\"\ninterval = \"100ms\"\n",
    );
    assert_eq!(plan.batches[0].gates.len(), 1);
    let remote = FakeTransport::default();
    let local = FakeTransport::default().fail("*", "slo-ok", 3);
    let (report, events) = run(&plan, &remote, &local).await;
    assert!(!report.ok);
    assert!(report.undo_ran);
    let log = remote.steps(&["shipit:switch"]);
    // web1 switched to the release and back; web2 and web3 never.
    assert_eq!(log, ["web1:switch", "web1:switch"]);
    let web1 = &report.hosts[0];
    assert!(
        matches!(&web1.result, HostResult::Failed { step: StepKind::Gate, error, .. }
            if error.starts_with("gates[0] command: local: exit status 3 (scripted failure)")),
        "{:?}",
        web1.result
    );
    assert_eq!(web1.now, Some(id(2)));
    let gate_events: Vec<&Event> = events
        .iter()
        .filter(|e| matches!(e, Event::GateEvaluated { .. }))
        .collect();
    // The first evaluation fails: the bake ends there.
    assert_eq!(gate_events.len(), 1, "{gate_events:?}");
    let Some(Event::RunFinished { gates, .. }) = events
        .iter()
        .find(|e| matches!(e, Event::RunFinished { .. }))
    else {
        panic!("no run-finished")
    };
    assert_eq!(gates.len(), 1);
    assert_eq!(gates[0].outcome, crate::report::Verdict::Fail);
    assert_eq!((gates[0].batch, gates[0].of), (1, 2));
}

/// A gate that passes is evaluated every interval and once more at the
/// end of the bake, which decides; every bake of a deploy is gated.
#[tokio::test]
async fn a_passing_gate_is_evaluated_through_each_bake() {
    let plan = gated_plan(
        2,
        "rolling_batch_size = 1\nbake = \"500ms\"\n\
         [[gates]]\ntype = \"command\"\nrun = \"slo-ok\"\ninterval = \"200ms\"\n",
    );
    let remote = FakeTransport::default();
    let local = FakeTransport::default();
    let (report, events) = run(&plan, &remote, &local).await;
    assert!(report.ok, "{:?}", report.hosts);
    let evaluations: Vec<(usize, Option<crate::report::Verdict>)> = events
        .iter()
        .filter_map(|e| match e {
            Event::GateEvaluated { batch, outcome, .. } => Some((*batch, *outcome)),
            _ => None,
        })
        .collect();
    use crate::report::Verdict::Pass;
    // At 200ms, 400ms, then the end (500ms), per batch.
    assert_eq!(
        evaluations,
        [
            (1, None),
            (1, None),
            (1, Some(Pass)),
            (2, None),
            (2, None),
            (2, Some(Pass))
        ]
    );
    let gate_runs = local
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, c)| c.contains("slo-ok"))
        .count();
    assert_eq!(gate_runs, 6);
}

/// A bake lasts its whole duration even when nothing is polled during it
/// (no health check, no gate) or the polls end early.
#[tokio::test]
async fn a_bake_lasts_its_whole_duration() {
    let plan = gated_plan(2, "rolling_batch_size = 1\nbake = \"300ms\"\n");
    let (report, events) = run(&plan, &FakeTransport::default(), &FakeTransport::default()).await;
    assert!(report.ok);
    let bakes: Vec<Duration> = events
        .iter()
        .filter_map(|e| match e {
            Event::BakeFinished { duration, ok, .. } => {
                assert!(ok);
                Some(*duration)
            }
            _ => None,
        })
        .collect();
    assert_eq!(bakes.len(), 2);
    assert!(
        bakes.iter().all(|d| *d >= Duration::from_millis(300)),
        "{bakes:?}"
    );
}
