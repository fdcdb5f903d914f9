//! Batches and their order, a failing host, what is put back, and the failure policies.

use super::*;

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
    let (report, events) = run(&plan_with(3, "on_failure = \"pause\""), &remote, &local).await;
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
        .cancel_on(token, CancellationToken::new())
        .run(&plan)
        .await;
    assert!(report.interrupted && !report.ok);
    let log = remote.steps(STEPS);
    // web2 (not delayed) got through before the cancel; web1 was mid-drain
    // and stops there; batch 2 (web3) never starts.
    assert!(!log.contains(&"web1:switch".to_string()), "{log:?}");
    assert!(!log.contains(&"web3:switch".to_string()), "{log:?}");
    let local_log: Vec<String> = local.commands();
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

#[tokio::test]
async fn rollback_policy_returns_every_switched_host_failed_batch_first() {
    // Batch 1: web1, web2 succeed. Batch 2: web3 fails to restart the new
    // release (its old one restarts fine), web4 succeeds.
    let remote = FakeTransport::default().fail("web3", "SHIPIT_RELEASE=20261122100003", 1);
    let local = FakeTransport::default();
    let (report, events) = run(&plan(4), &remote, &local).await;
    assert!(!report.ok && report.undo_ran && report.undo_failed.is_empty());
    for h in &report.hosts {
        assert_eq!(
            h.now,
            Some(id(2)),
            "{} is back on its previous release",
            h.host
        );
        assert!(!h.drained, "{} is in the load balancer", h.host);
    }
    let result = |h: &str| result_of(&report, h);
    assert!(matches!(
        result("web3"),
        HostResult::Failed {
            step: StepKind::Restart,
            ..
        }
    ));
    for h in ["web1", "web2", "web4"] {
        assert_eq!(result(h), HostResult::RolledBack);
    }
    // Undo phases: the failed batch (web3, web4) first, then web1, web2.
    let undo: Vec<Vec<String>> = events
        .iter()
        .filter_map(|e| match e {
            Event::PhaseStarted {
                phase: Phase::Undo { .. },
                hosts,
            } => Some(hosts.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(undo, [vec!["web3", "web4"], vec!["web1", "web2"]]);
    // The release is marked bad everywhere; no cleanup ran.
    let log = remote.steps(&["shipit:mark-bad", "shipit:remove-releases"]);
    assert_eq!(
        log.iter().filter(|e| e.ends_with("mark-bad")).count(),
        4,
        "{log:?}"
    );
    assert!(!log.iter().any(|e| e.ends_with("remove-releases")));
}

#[tokio::test]
async fn continue_policy_goes_on_within_the_allowed_share() {
    let remote = FakeTransport::default()
        .fail("web1", "restart-app", 1)
        .fail("web3", "restart-app", 1);
    let local = FakeTransport::default();
    // Failed hosts stay out of service: room for them, and for a batch.
    let plan = plan_with(
        4,
        "on_failure = \"continue\"\nmax_fail_percentage = 50\nmax_unavailable = 4",
    );
    let (report, _) = run(&plan, &remote, &local).await;
    assert!(!report.ok && !report.undo_ran);
    // 1 of 2 per batch is 50%: not exceeded, so batch 2 ran.
    let result = |h: &str| result_of(&report, h);
    assert_eq!(result("web4"), HostResult::Done);
    assert!(matches!(result("web3"), HostResult::Failed { .. }));

    // With the default room (the batch size), web1 stays out and fills a
    // place: web3 goes out, then web4 finds no room once web3 failed
    // too. It is never touched, and the run stops there.
    let remote = FakeTransport::default()
        .fail("web1", "restart-app", 1)
        .fail("web3", "restart-app", 1);
    let plan = plan_with(4, "on_failure = \"continue\"\nmax_fail_percentage = 50");
    let (report, events) = run(&plan, &remote, &FakeTransport::default()).await;
    let web4 = report.hosts.iter().find(|s| s.host == "web4").unwrap();
    assert_eq!(web4.result, HostResult::NotReached);
    assert!(
        !remote
            .steps(STEPS)
            .iter()
            .any(|s| s.starts_with("web4:switch"))
    );
    assert!(events.iter().any(|e| matches!(e, Event::Note { host: Some(h), message }
        if h == "web4" && message.starts_with("not taken out of service: 2 hosts are already out (web1, web3)"))));

    // 25% allowed: the first failure stops the rollout.
    let remote = FakeTransport::default().fail("web1", "restart-app", 1);
    let plan = plan_with(4, "on_failure = \"continue\"\nmax_fail_percentage = 25");
    let (report, _) = run(&plan, &remote, &FakeTransport::default()).await;
    let result = |h: &str| result_of(&report, h);
    assert_eq!(result("web3"), HostResult::NotReached);
}

#[tokio::test]
async fn hooks_run_at_their_points_and_a_failing_before_hook_changes_nothing() {
    let stage = stage(
        2,
        "[hooks]\nbefore_deploy = [\"hook-before\"]\nafter_deploy = [\"hook-after\"]\non_failure = [\"hook-failed\"]\n",
    );
    let f = facts(&stage, Some(2), &[1, 2]);
    let make = || {
        deploy(&DeployInput {
            revision: String::new(),
            ..testing::deploy_input(&stage, &f)
        })
        .unwrap()
    };
    let local = FakeTransport::default();
    let (report, _) = run(&make(), &FakeTransport::default(), &local).await;
    assert!(report.ok);
    let ran: Vec<String> = local.commands();
    assert!(
        ran[0].contains("hook-before") && ran.last().unwrap().contains("hook-after"),
        "{ran:?}"
    );
    assert!(!ran.iter().any(|c| c.contains("hook-failed")));

    let local = FakeTransport::default().fail("*", "hook-before", 1);
    let remote = FakeTransport::default();
    let (report, _) = run(&make(), &remote, &local).await;
    assert!(!report.ok);
    assert_eq!(
        report.stopped_by.as_deref(),
        Some("a before_deploy hook failed; nothing was changed")
    );
    assert!(remote.steps(&["shipit:unpack", "shipit:switch"]).is_empty());
    let ran: Vec<String> = local.commands();
    assert!(
        ran.iter()
            .any(|c| c.contains("hook-failed") && c.contains("SHIPIT_FAILED_HOSTS")),
        "{ran:?}"
    );
}

#[tokio::test]
async fn every_host_reports_how_each_phase_ended() {
    let remote = FakeTransport::default().fail("web1", "restart-app", 1);
    let plan = plan_with(2, "on_failure = \"pause\"");
    let (_, events) = run(&plan, &remote, &FakeTransport::default()).await;
    let finished: Vec<(String, Phase, bool, Option<StepKind>, bool)> = events
        .iter()
        .filter_map(|e| match e {
            Event::HostFinished {
                host,
                phase,
                ok,
                step,
                drained,
                ..
            } => Some((host.clone(), *phase, *ok, *step, *drained)),
            _ => None,
        })
        .collect();
    let batch = Phase::Batch { number: 1, of: 1 };
    assert!(finished.contains(&("web1".into(), Phase::Prepare, true, None, false)));
    assert!(finished.contains(&("web2".into(), Phase::Prepare, true, None, false)));
    assert!(finished.contains(&("web1".into(), batch, false, Some(StepKind::Restart), true)));
    assert!(finished.contains(&("web2".into(), batch, true, None, false)));
    assert_eq!(finished.len(), 4, "no finish phase after a failure");
    // Every step that started finished, and a host's phase ends after its
    // last step.
    for (i, e) in events.iter().enumerate() {
        if let Event::StepStarted { host, step, .. } = e {
            let end = events[i..].iter().position(|f| {
                matches!(f, Event::StepFinished { host: h, step: s, .. } if h == host && s == step)
            });
            assert!(end.is_some(), "{host} {step:?} never finished");
        }
    }
    let failed = events.iter().find_map(|e| match e {
        Event::StepFinished {
            ok: false,
            exit_code,
            stderr_tail,
            ..
        } => Some((*exit_code, stderr_tail.clone())),
        _ => None,
    });
    assert_eq!(
        failed,
        Some((Some(1), Some("scripted failure".to_string())))
    );
}
