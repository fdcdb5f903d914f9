//! Executor logic against a scripted transport: ordering, stopping, and
//! putting drained hosts back. Real hosts are in tests/integration.

use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::plan::{Action, DeployInput, Pipeline, Plan, Step, StepKind, deploy};
use crate::report::Recording;
use crate::report::{Event, HostResult, Phase};
use crate::testing::{self, facts, id, stage};
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
    plan_with(hosts, "")
}

/// `extra` goes into `[rollout]`.
fn plan_with(hosts: usize, extra: &str) -> Plan {
    let stage = stage(hosts, &format!("keep_releases = 1\n{STAGE}{extra}\n"));
    testing::deploy_plan(&stage, true, None).unwrap()
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
    let result = |h: &str| {
        report
            .hosts
            .iter()
            .find(|s| s.host == h)
            .unwrap()
            .result
            .clone()
    };
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
    let result = |h: &str| {
        report
            .hosts
            .iter()
            .find(|s| s.host == h)
            .unwrap()
            .result
            .clone()
    };
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
    let result = |h: &str| {
        report
            .hosts
            .iter()
            .find(|s| s.host == h)
            .unwrap()
            .result
            .clone()
    };
    assert_eq!(result("web3"), HostResult::NotReached);
}

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

#[tokio::test]
async fn secrets_travel_on_stdin_never_on_the_command_line() {
    let stage = stage(1, "restart = \"bin/restart\"");
    let f = facts(&stage, Some(2), &[1, 2]);
    let env = vec![(
        "TOKEN".to_string(),
        crate::shell::Word::Secret("s3cret".into()),
    )];
    let plan = deploy(&DeployInput {
        stage: &stage,
        hosts: &stage.hosts,
        release: id(3),
        revision: String::new(),
        facts: Some(&f),
        run: testing::run(),
        resume: false,
        digest: String::new(),
        env: &env,
        service: None,
    })
    .unwrap();
    let remote = FakeTransport::default();
    let (report, events) = run(&plan, &remote, &FakeTransport::default()).await;
    assert!(report.ok);
    let log = remote.log.lock().unwrap().clone();
    let restart = log.iter().find(|(_, c)| c.contains("bin/restart")).unwrap();
    let (line, script) = restart.1.split_once("\n<stdin>\n").expect("sent on stdin");
    assert_eq!(line, "sh -s");
    assert!(script.contains("TOKEN=s3cret"));
    let shown = serde_json::to_string(&events).unwrap();
    assert!(
        !shown.contains("s3cret") && shown.contains("TOKEN=[REDACTED]"),
        "{shown}"
    );
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
            stage: &stage,
            hosts: &stage.hosts,
            release: id(3),
            revision: String::new(),
            facts: Some(&f),
            run: testing::run(),
            resume: false,
            digest: String::new(),
            env: &[],
            service: None,
        })
        .unwrap()
    };
    let local = FakeTransport::default();
    let (report, _) = run(&make(), &FakeTransport::default(), &local).await;
    assert!(report.ok);
    let ran: Vec<String> = local
        .log
        .lock()
        .unwrap()
        .iter()
        .map(|(_, c)| c.clone())
        .collect();
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
    let ran: Vec<String> = local
        .log
        .lock()
        .unwrap()
        .iter()
        .map(|(_, c)| c.clone())
        .collect();
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

/// A secret given to commands shows up in no output at all: not in the
/// plan (text or JSON), and not in the plain, progress or JSON reporters,
/// even when the commands print it, fail with it on stderr, or time out.
/// Real commands run locally (the transport is the local one).
#[tokio::test]
async fn secrets_never_reach_any_output() {
    use crate::host::Layout;
    use crate::plan::{Bookkeeping, Operation, PlannedHost, render};
    use crate::report::json::{self, Json};
    use crate::report::plain::{Plain, Verbosity};
    use crate::report::progress::Progress;
    use crate::report::{Recording, Tee};
    use crate::shell::{Cmd, Word};
    use crate::testing::{Buffer, Screen};
    use crate::transport::local::LocalTransport;

    const SECRET: &str = "hunter2-s3cret";
    let token = || Word::Secret(SECRET.into());
    let dir = tempfile::tempdir().unwrap();
    let host = |name: &str| PlannedHost {
        name: name.into(),
        address: "127.0.0.1".into(),
        before: Some(id(2)),
        current: Some(id(2)),
        unchanged: false,
        zone: None,
        left_out: None,
        role: None,
    };
    let pipeline = |name: &str, steps: Vec<Step>| Pipeline {
        host: name.into(),
        steps,
    };
    let plan = Plan {
        run: "run-1".into(),
        operation: Operation::Deploy,
        app: "shop".into(),
        stage: "production".into(),
        release: id(3),
        revision: "abc".into(),
        hosts: vec![host("web1"), host("web2")],
        prepare: Vec::new(),
        batches: vec![crate::plan::Batch {
            bake: Duration::ZERO,
            zone: None,
            gates: Vec::new(),
            pipelines: vec![
                pipeline(
                    "web1",
                    vec![
                        Step {
                            kind: StepKind::Drain,
                            action: Action::Local {
                                cmd: Cmd::new([Word::from("echo"), token()]),
                            },
                            timeout: None,
                        },
                        Step {
                            kind: StepKind::Restart,
                            action: Action::Remote {
                                cmd: Cmd::shell(
                                    "echo \"token is $TOKEN\"; echo \"bad $TOKEN\" >&2; exit 3",
                                )
                                .env("TOKEN", token()),
                            },
                            timeout: None,
                        },
                    ],
                ),
                pipeline(
                    "web2",
                    vec![Step {
                        kind: StepKind::Restart,
                        action: Action::Remote {
                            cmd: Cmd::shell("sleep 5").env("TOKEN", token()),
                        },
                        timeout: None,
                    }],
                ),
            ],
        }],
        shape: crate::plan::Shape {
            ramp: vec![crate::config::BatchSize::Count(2)],
            bake: Vec::new(),
            by_zone: false,
            max_unavailable: 2,
            percent_of: 2,
        },
        parts: Vec::new(),
        undo_parts: Vec::new(),
        pools: crate::plan::Pools::single(["web1".to_string(), "web2".to_string()], 2),
        out_at_start: Default::default(),
        finish: Vec::new(),
        on_failure: crate::plan::FailurePolicy {
            action: crate::config::OnFailure::Pause,
            max_fail_percentage: 0,
            rollback_on_abort: false,
        },
        undo: Vec::new(),
        undo_finish: Vec::new(),
        hooks: Default::default(),
        on_failure_hosts: Vec::new(),
        resume: false,
        resumes: None,
        undoing: false,
        bookkeeping: Bookkeeping {
            layout: Layout::new(dir.path().to_str().unwrap()),
            by: "test".into(),
            digest: String::new(),
        },
        warnings: Vec::new(),
    };

    let dry_runs = [
        render(&plan, false),
        render(&plan, true),
        json::line(&Event::Plan {
            plan: Box::new(plan.clone()),
        }),
        format!("{plan:?}"),
    ];
    for text in &dry_runs {
        assert!(!text.contains(SECRET), "{text}");
    }
    assert!(dry_runs[0].contains("TOKEN=[REDACTED]"), "{}", dry_runs[0]);

    let plain = Buffer::default();
    let json_out = Buffer::default();
    let screen = Screen::new(120);
    let recording = std::sync::Arc::new(Recording::default());
    let tee = Tee(vec![
        Box::new(Plain::new(plain.clone(), Verbosity::Verbose)),
        Box::new(Plain::new(plain.clone(), Verbosity::Verbose).github(true)),
        Box::new(Json::new(json_out.clone())),
        Box::new(Progress::new(
            screen.target(),
            Verbosity::Verbose,
            false,
            false,
        )),
        Box::new(recording.clone()),
    ]);
    let report = Executor::with_local(&LocalTransport, &LocalTransport, &tee)
        .command_timeout(Some(Duration::from_millis(500)))
        .run(&plan)
        .await;
    assert!(!report.ok);

    let events = recording.events();
    // The commands did run with the secret, and said so.
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Output { line, .. } if line == "token is [REDACTED]"))
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::StepFinished { result, .. } if result == "timed out"))
    );
    let outputs = [
        ("plain", plain.text()),
        ("json", json_out.text()),
        ("progress", screen.text()),
        ("events", format!("{events:?}")),
    ];
    for (what, text) in &outputs {
        assert!(!text.contains(SECRET), "{what} shows the secret:\n{text}");
        assert!(text.contains("[REDACTED]"), "{what}:\n{text}");
    }
    assert!(outputs[0].1.contains("bad [REDACTED]"), "{}", outputs[0].1);
}

fn plan_with_lb(hosts: usize, lb: &str) -> Plan {
    let stage = stage(hosts, &format!("restart = \"restart-app\"\n{lb}"));
    testing::deploy_plan(&stage, true, None).unwrap()
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

/// A plan for `hosts` with the command driver and `rollout` (the whole
/// `[rollout]` table and what follows it).
fn gated_plan(hosts: usize, rollout: &str) -> Plan {
    let stage = stage(
        hosts,
        &format!(
            "keep_releases = 1\nrestart = \"restart-app\"\n[lb]\ndrain = \"lb-drain {{name}}\"\n\
             enable = \"lb-enable {{name}}\"\n[rollout]\n{rollout}\n"
        ),
    );
    let f = facts(&stage, Some(2), &[1, 2]);
    deploy(&DeployInput {
        stage: &stage,
        hosts: &stage.hosts,
        release: id(3),
        revision: "abc".into(),
        facts: Some(&f),
        run: testing::run(),
        env: &[],
        resume: false,
        digest: String::new(),
        service: None,
    })
    .unwrap()
}

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
