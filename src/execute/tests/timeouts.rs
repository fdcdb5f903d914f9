//! Bounded waits: restart and load balancer timeouts, and a second signal.

use super::*;

#[tokio::test]
async fn a_restart_that_never_returns_fails_after_restart_timeout() {
    let remote = FakeTransport::default().delay("web1", "restart-app", Duration::from_secs(3600));
    let stage = stage(
        2,
        &format!("restart_timeout = \"200ms\"\nkeep_releases = 1\n{STAGE}"),
    );
    let plan = testing::deploy_plan(&stage, true, None).unwrap();
    let (report, _) = run(&plan, &remote, &FakeTransport::default()).await;
    assert!(!report.ok);
    let web1 = &report.hosts[0];
    let HostResult::Failed { step, error, .. } = &web1.result else {
        panic!("{web1:?}")
    };
    assert_eq!(*step, StepKind::Restart);
    assert!(
        error.contains("timed out after 200ms (app.restart_timeout)"),
        "{error}"
    );
}

#[tokio::test]
async fn command_lb_drain_and_enable_are_bounded_by_their_timeouts() {
    let lb = "[lb]\ndrain = \"lb-drain {name}\"\nenable = \"lb-enable {name}\"\ndrain_timeout = \"200ms\"\nenable_timeout = \"300ms\"\n";
    for (needle, step, after) in [
        ("lb-drain web1", StepKind::Drain, "200ms"),
        ("lb-enable web1", StepKind::Enable, "300ms"),
    ] {
        let local = FakeTransport::default().delay("*", needle, Duration::from_secs(3600));
        let plan = plan_with_lb(1, lb);
        let (report, events) = run(&plan, &FakeTransport::default(), &local).await;
        assert!(!report.ok);
        let failed = events.iter().find_map(|e| match e {
            Event::StepFinished {
                step: s,
                ok: false,
                error,
                ..
            } if *s == step => error.clone(),
            _ => None,
        });
        let error = failed.unwrap_or_else(|| panic!("{step:?} did not fail: {events:?}"));
        assert!(
            error.contains(&format!("timed out after {after}")),
            "{error}"
        );
    }
}

#[tokio::test]
async fn a_second_signal_stops_a_running_restart() {
    // The restart of web1 would take an hour; the first signal lets it
    // run, the second stops it.
    let remote = FakeTransport::default().delay("web1", "restart-app", Duration::from_secs(3600));
    let plan = plan(1);
    let recording = Recording::default();
    let (cancel, hurry) = (CancellationToken::new(), CancellationToken::new());
    let (c, h) = (cancel.clone(), hurry.clone());
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        c.cancel();
        tokio::time::sleep(Duration::from_millis(100)).await;
        h.cancel();
    });
    let report = tokio::time::timeout(
        Duration::from_secs(60),
        Executor::with_local(&remote, &FakeTransport::default(), &recording)
            .archive(Bytes::from_static(b"x"))
            .cancel_on(cancel, hurry)
            .run(&plan),
    )
    .await
    .expect("the second signal stops the restart");
    assert!(report.interrupted && !report.ok);
    let events = recording.events();
    assert!(events.iter().any(|e| matches!(e, Event::StepFinished { host, step: StepKind::Restart, result, error: Some(error), .. }
        if host == "web1" && result == "interrupted" && error.contains("stopped while it ran"))), "{events:?}");
    // Without a health check nothing tells what it runs: it stays out, and
    // the run says why.
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Note { host: Some(h), message }
        if h == "web1" && message.contains("without a health check nothing tells what it runs"))),
        "{events:?}"
    );
}
