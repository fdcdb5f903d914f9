//! The command load balancer driver: a failed drain, waiting for a host to drain.

use super::*;

#[tokio::test]
async fn a_failed_drain_is_undone_and_nothing_switches() {
    // A drain can fail halfway (one of two load balancers), so the host is
    // put back whatever the drain managed to do.
    let remote = FakeTransport::default();
    let local = FakeTransport::default().fail("*", "lb-drain web1", 4);
    let (report, events) = run(&plan(1), &remote, &local).await;
    let web1 = &report.hosts[0];
    assert!(matches!(
        web1.result,
        HostResult::Failed {
            step: StepKind::Drain,
            ..
        }
    ));
    assert!(!web1.drained, "put back");
    assert_eq!(web1.now, Some(id(2)));
    let local_log: Vec<String> = local.commands();
    assert!(
        local_log.iter().any(|c| c.contains("lb-enable web1")),
        "{local_log:?}"
    );
    assert!(!remote.steps(STEPS).contains(&"web1:switch".to_string()));
    assert!(events.iter().any(
        |e| matches!(e, Event::Note { message, .. } if message.contains("putting the host back"))
    ));
}

#[tokio::test]
async fn wait_drained_runs_where_run_on_says_and_a_timeout_warns() {
    // lb-idle never succeeds; the default action is to warn and go on.
    let remote = FakeTransport::default().fail("web2", "lb-idle", 1);
    let local = FakeTransport::default();
    let plan = plan_with_lb(2, WAITING_LB);
    let (report, events) = run(&plan, &remote, &local).await;
    assert!(report.ok, "{:?}", report.hosts);
    assert!(local.log.lock().unwrap().is_empty(), "nothing runs locally");
    let log = remote.log.lock().unwrap().clone();
    for name in ["web1", "web2"] {
        for cmd in ["lb-drain", "lb-idle", "lb-enable"] {
            assert!(
                log.iter()
                    .any(|(h, c)| h == "web2" && c.contains(&format!("{cmd} {name}"))),
                "{cmd} {name} on web2: {log:?}"
            );
        }
    }
    assert!(events.iter().any(|e| matches!(e, Event::Note { host: Some(h), message }
        if h == "web1" && message.contains("did not exit 0 within 1s") && message.contains("restarting anyway"))));
}

#[tokio::test]
async fn wait_drained_timeout_can_fail_the_host() {
    let remote = FakeTransport::default().fail("web2", "lb-idle web1", 1);
    let plan = plan_with_lb(2, &format!("{WAITING_LB}drain_timeout_action = \"fail\"\n"));
    let (report, _) = run(&plan, &remote, &FakeTransport::default()).await;
    assert!(!report.ok);
    let web1 = &report.hosts[0];
    let HostResult::Failed { step, error, .. } = &web1.result else {
        panic!("{web1:?}")
    };
    assert_eq!(*step, StepKind::Drain);
    assert!(
        error.contains("(lb.drain_timeout_action = \"fail\")"),
        "{error}"
    );
    assert!(!web1.drained);
    assert_eq!(web1.now, Some(id(2)));
    let log = remote.steps(&["lb-enable web1", "shipit:switch"]);
    assert_eq!(log, ["web2:lb-enable web1"], "put back, never switched");
}
