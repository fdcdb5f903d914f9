//! Executor logic against a scripted transport: ordering, stopping, and
//! putting drained hosts back. Real hosts are in tests/integration.

use std::time::Duration;

use super::*;
use crate::plan::{DeployInput, deploy};
use crate::report::Recording;
use crate::testing::{facts, id, stage};
use crate::transport::fake::FakeTransport;

const STAGE: &str = r#"
restart = "restart-app"
[lb]
drain = "lb-drain {name}"
enable = "lb-enable {name}"
[rollout]
rolling_batch_size = 2
"#;

const STEPS: &[&str] = &[
    "shipit:unpack",
    "shipit:switch",
    "lb-drain",
    "lb-enable",
    "restart-app",
    "shipit:remove-releases",
    "shipit:record",
];

fn plan(hosts: usize) -> Plan {
    let stage = stage(hosts, &format!("keep_releases = 1\n{STAGE}"));
    let f = facts(&stage, Some(2), &[1, 2]);
    deploy(&DeployInput {
        stage: &stage,
        hosts: &stage.hosts,
        release: id(3),
        revision: "abc".into(),
        facts: Some(&f),
        by: "test".into(),
    })
    .unwrap()
}

async fn run(
    plan: &Plan,
    remote: &FakeTransport,
    local: &FakeTransport,
) -> (RunReport, Vec<Event>) {
    let recording = Recording::default();
    let report = Executor::with_local(remote, local, &recording)
        .archive(Bytes::from_static(b"archive"))
        .run(plan)
        .await;
    (report, recording.events())
}

fn position(log: &[String], entry: &str) -> usize {
    log.iter()
        .position(|e| e == entry)
        .unwrap_or_else(|| panic!("{entry} not in {log:?}"))
}

#[tokio::test]
async fn every_host_uploads_before_any_switch_and_batches_wait_for_each_other() {
    let remote = FakeTransport::default().delay("web1", "shipit:unpack", Duration::from_millis(50));
    let local = FakeTransport::default().delay("*", "lb-enable web2", Duration::from_millis(50));
    let plan = plan(3);
    let (report, _) = run(&plan, &remote, &local).await;
    assert!(report.ok);
    let log = remote.steps(STEPS);
    let first_switch = log.iter().position(|e| e.ends_with(":switch")).unwrap();
    for host in ["web1", "web2", "web3"] {
        assert!(
            position(&log, &format!("{host}:unpack")) < first_switch,
            "{log:?}"
        );
    }
    // web3 (batch 2) switches only after web2 (batch 1) was enabled, which
    // the local fake delays on purpose.
    let local_log = local.log.lock().unwrap().clone();
    assert!(local_log.iter().any(|(_, c)| c.contains("lb-enable web2")));
    let all: Vec<String> = {
        let mut merged = Vec::new();
        merged.extend(log.iter().cloned());
        merged
    };
    assert!(position(&all, "web3:switch") > position(&all, "web2:switch"));
    // Cleanup ran (release 1 goes) and every host recorded the outcome.
    assert_eq!(
        log.iter()
            .filter(|e| e.ends_with(":remove-releases"))
            .count(),
        3
    );
    assert_eq!(log.iter().filter(|e| e.ends_with(":record")).count(), 3);
    for h in &report.hosts {
        assert_eq!(h.result, HostResult::Done);
        assert_eq!(h.now, Some(id(3)));
        assert!(!h.drained);
    }
}

#[tokio::test]
async fn a_failed_host_finishes_its_batch_and_stops_the_next() {
    // web1 fails its restart; web2 (same batch) still completes.
    let remote = FakeTransport::default().fail("web1", "restart-app", 1);
    let local = FakeTransport::default();
    let (report, events) = run(&plan(3), &remote, &local).await;
    assert!(!report.ok);
    let log = remote.steps(STEPS);
    assert!(log.contains(&"web2:restart-app".to_string()));
    assert!(!log.contains(&"web3:switch".to_string()), "{log:?}");
    assert!(
        !log.iter().any(|e| e.ends_with(":remove-releases")),
        "no cleanup after a failure"
    );
    let by_host = |h: &str| report.hosts.iter().find(|s| s.host == h).unwrap().clone();
    assert!(matches!(
        by_host("web1").result,
        HostResult::Failed {
            step: StepKind::Restart,
            ..
        }
    ));
    // Switched to a release that failed: left drained, and said so.
    assert!(by_host("web1").drained);
    assert_eq!(by_host("web1").now, Some(id(3)));
    assert_eq!(by_host("web2").result, HostResult::Done);
    assert_eq!(by_host("web3").result, HostResult::NotReached);
    assert_eq!(by_host("web3").now, Some(id(2)));
    let local_log = local.log.lock().unwrap().clone();
    assert!(!local_log.iter().any(|(_, c)| c.contains("lb-enable web1")));
    assert!(events.iter().any(|e| matches!(e, Event::Note { message, .. } if message.contains("left out of the load balancer"))));
    // Every host that uploaded records the outcome, web3 included.
    assert_eq!(log.iter().filter(|e| e.ends_with(":record")).count(), 3);
}

#[tokio::test]
async fn a_host_that_fails_before_switching_is_put_back() {
    let remote = FakeTransport::default().fail("web2", "shipit:switch", 3);
    let local = FakeTransport::default();
    let (report, _) = run(&plan(2), &remote, &local).await;
    let web2 = report.hosts.iter().find(|s| s.host == "web2").unwrap();
    assert!(matches!(
        web2.result,
        HostResult::Failed {
            step: StepKind::Switch,
            ..
        }
    ));
    assert!(
        !web2.drained,
        "web2 still serves its old release and must be enabled again"
    );
    assert_eq!(web2.now, Some(id(2)));
    let local_log = local.log.lock().unwrap().clone();
    assert!(local_log.iter().any(|(_, c)| c.contains("lb-enable web2")));
}

#[tokio::test]
async fn a_failed_upload_switches_nothing() {
    let remote = FakeTransport::default().fail("web3", "shipit:unpack", 2);
    let local = FakeTransport::default();
    let (report, _) = run(&plan(3), &remote, &local).await;
    assert!(!report.ok);
    let log = remote.steps(STEPS);
    assert!(!log.iter().any(|e| e.ends_with(":switch")), "{log:?}");
    assert!(local.log.lock().unwrap().is_empty(), "nothing drained");
    for h in &report.hosts {
        assert_eq!(h.now, Some(id(2)));
    }
}

#[tokio::test]
async fn cancelling_stops_at_the_next_step_and_puts_drained_hosts_back() {
    let remote = FakeTransport::default();
    // The drain of web1 takes a while; cancel while it runs.
    let local = FakeTransport::default().delay("*", "lb-drain web1", Duration::from_millis(200));
    let plan = plan(3);
    let recording = Recording::default();
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        cancel.cancel();
    });
    let report = Executor::with_local(&remote, &local, &recording)
        .archive(Bytes::from_static(b"x"))
        .cancel_on(token)
        .run(&plan)
        .await;
    assert!(report.interrupted && !report.ok);
    let log = remote.steps(STEPS);
    // web2 (not delayed) got through before the cancel; web1 was mid-drain
    // and stops there; batch 2 (web3) never starts.
    assert!(!log.contains(&"web1:switch".to_string()), "{log:?}");
    assert!(!log.contains(&"web3:switch".to_string()), "{log:?}");
    let local_log: Vec<String> = local
        .log
        .lock()
        .unwrap()
        .iter()
        .map(|(_, c)| c.clone())
        .collect();
    assert!(
        local_log.iter().any(|c| c.contains("lb-enable web1")),
        "{local_log:?}"
    );
    assert!(report.hosts.iter().all(|h| !h.drained));
}

#[tokio::test]
async fn failures_name_the_command_status_and_stderr() {
    let remote = FakeTransport::default().fail("web1", "restart-app", 7);
    let (report, _) = run(&plan(1), &remote, &FakeTransport::default()).await;
    let HostResult::Failed { error, .. } = &report.hosts[0].result else {
        panic!()
    };
    assert!(error.contains("restart-app"), "{error}");
    assert!(
        error.contains("ended with exit status 7; stderr:\nscripted failure"),
        "{error}"
    );
}

fn plan_with(hosts: usize, lb: &str) -> Plan {
    let stage = stage(hosts, &format!("restart = \"restart-app\"\n{lb}"));
    let f = facts(&stage, Some(2), &[1, 2]);
    deploy(&DeployInput {
        stage: &stage,
        hosts: &stage.hosts,
        release: id(3),
        revision: "abc".into(),
        facts: Some(&f),
        by: "test".into(),
    })
    .unwrap()
}

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
    let local_log: Vec<String> = local
        .log
        .lock()
        .unwrap()
        .iter()
        .map(|(_, c)| c.clone())
        .collect();
    assert!(
        local_log.iter().any(|c| c.contains("lb-enable web1")),
        "{local_log:?}"
    );
    assert!(!remote.steps(STEPS).contains(&"web1:switch".to_string()));
    assert!(events.iter().any(
        |e| matches!(e, Event::Note { message, .. } if message.contains("putting the host back"))
    ));
}

const WAITING_LB: &str = r#"
[lb]
drain = "lb-drain {name}"
enable = "lb-enable {name}"
run_on = "web2"
wait_drained = "lb-idle {name}"
drain_timeout = "1s"
"#;

#[tokio::test]
async fn wait_drained_runs_where_run_on_says_and_a_timeout_warns() {
    // lb-idle never succeeds; the default action is to warn and go on.
    let remote = FakeTransport::default().fail("web2", "lb-idle", 1);
    let local = FakeTransport::default();
    let plan = plan_with(2, WAITING_LB);
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
    let plan = plan_with(2, &format!("{WAITING_LB}drain_timeout_action = \"fail\"\n"));
    let (report, _) = run(&plan, &remote, &FakeTransport::default()).await;
    assert!(!report.ok);
    let web1 = &report.hosts[0];
    let HostResult::Failed { step, error } = &web1.result else {
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
