//! The journal: every transition on record, ahead of the step that follows it.

use super::*;

#[tokio::test]
async fn every_transition_goes_to_the_journal() {
    let remote = FakeTransport::default();
    let (report, _) = run(&plan(1), &remote, &FakeTransport::default()).await;
    assert!(report.ok);
    let log = remote.log.lock().unwrap().clone();
    let journal_lines = |c: &str| -> Vec<String> {
        shlex::split(c)
            .unwrap()
            .iter()
            .filter_map(|w| serde_json::from_str::<serde_json::Value>(w).ok())
            .filter_map(|v| v["event"].as_str().map(str::to_string))
            .collect()
    };
    let events: Vec<String> = log
        .iter()
        .filter(|(_, c)| c.contains("shipit:journal"))
        .flat_map(|(_, c)| journal_lines(c))
        .collect();
    // Entries ride ahead of the next step on the host, in its round trip:
    // the restart's command writes "switched" first, and runs only if it
    // was written.
    let restart = log.iter().find(|(_, c)| c.contains("restart-app")).unwrap();
    assert_eq!(journal_lines(&restart.1), ["switched"]);
    assert!(
        restart.1.find("shipit:journal") < restart.1.find("restart-app"),
        "{}",
        restart.1
    );
    let round_trips = log
        .iter()
        .filter(|(_, c)| c.contains("shipit:journal"))
        .count();
    assert_eq!(round_trips, 6, "{log:#?}");
    assert_eq!(
        events,
        [
            "started",
            "uploaded",
            "drained",
            "switched",
            "restarted",
            "enabled",
            "rolled-out",
            "finished"
        ]
    );
}

/// The journal entries ahead of the restart could not be written (a full
/// disk): the restart never started, so the host, switched but still
/// running its old app, is switched back and put back, and the summary
/// says it runs the release it ran before.
#[tokio::test]
async fn a_journal_that_cannot_be_written_is_not_taken_for_a_failed_step() {
    let plan = plan(1);
    let remote = FakeTransport::default().fail_saying(
        "web1",
        "restart-app",
        crate::host::journal::UNWRITTEN,
        "shipit: could not write the journal (/srv/shop/.shipit/journal: disk full or read-only?), so this step was not started",
    );
    let local = FakeTransport::default();
    let (report, _) = run(&plan, &remote, &local).await;
    assert!(!report.ok);
    let host = &report.hosts[0];
    assert_eq!(host.now, host.before, "switched back: {host:?}");
    assert!(!host.drained, "put back: {host:?}");
    match &host.result {
        HostResult::Failed { step, error, .. } => {
            assert_eq!(*step, StepKind::Restart);
            assert!(error.contains("journal"), "{error}");
            assert!(error.contains("was not started"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        remote.steps(&["shipit:switch"]),
        ["web1:switch", "web1:switch"],
        "switched, then back"
    );
}
