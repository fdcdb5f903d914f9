//! Secrets: on stdin only, and in no output at all.

use super::*;

#[tokio::test]
async fn secrets_travel_on_stdin_never_on_the_command_line() {
    let stage = stage(1, "restart = \"bin/restart\"");
    let f = facts(&stage, Some(2), &[1, 2]);
    let env = vec![(
        "TOKEN".to_string(),
        crate::shell::Word::Secret("s3cret".into()),
    )];
    let plan = deploy(&DeployInput {
        revision: String::new(),
        env: &env,
        ..testing::deploy_input(&stage, &f)
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
