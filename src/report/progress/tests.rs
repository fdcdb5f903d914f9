//! The progress reporter drawing into an in-memory terminal: what a person
//! would see on the screen at each moment of a run.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{ProgressDrawTarget, TermLike};

use super::*;
use crate::exit::Exit;
use crate::plan::Operation;
use crate::report::HostSummary;
use crate::testing::Screen;

fn id(n: u32) -> ReleaseId {
    format!("2026112210{n:04}").parse().unwrap()
}

fn progress(verbosity: Verbosity, colors: bool) -> (Progress, Screen) {
    let screen = Screen::new(100);
    (
        Progress::new(screen.target(), verbosity, colors, false),
        screen,
    )
}

fn run_started() -> Event {
    Event::RunStarted {
        operation: Operation::Deploy,
        app: "shop".into(),
        stage: "production".into(),
        release: id(3),
        revision: "abc".into(),
        hosts: vec!["web1".into(), "web2".into()],
        batches: vec![vec!["web1".into()], vec!["web2".into()]],
        before: BTreeMap::from([
            ("web1".to_string(), Some(id(2))),
            ("web2".to_string(), Some(id(2))),
        ]),
    }
}

fn step(host: &str, step: StepKind, action: &str) -> Event {
    Event::StepStarted {
        host: host.into(),
        step,
        action: action.into(),
    }
}

fn done(host: &str, step: StepKind, ok: bool, error: Option<&str>) -> Event {
    Event::StepFinished {
        host: host.into(),
        step,
        ok,
        duration: Duration::from_millis(300),
        result: if ok { "ok".into() } else { "unhealthy".into() },
        exit_code: None,
        stderr_tail: None,
        error: error.map(str::to_string),
    }
}

fn host_done(host: &str, phase: Phase, failed: Option<StepKind>) -> Event {
    Event::HostFinished {
        host: host.into(),
        phase,
        ok: failed.is_none(),
        duration: Duration::from_millis(1500),
        step: failed,
        error: failed.map(|_| "not healthy after 2s".to_string()),
        drained: false,
    }
}

fn summary(host: &str, now: ReleaseId, result: HostResult) -> HostSummary {
    HostSummary {
        host: host.into(),
        before: Some(id(2)),
        now: Some(now),
        result,
        drained: false,
        left_out: None,
        duration: Duration::from_millis(1500),
    }
}

/// Feeds a two-host deploy where web2 fails its health check, returning
/// the screen after each named moment.
fn failing_run(p: &Progress, screen: &Screen) -> BTreeMap<&'static str, String> {
    let mut shots = BTreeMap::new();
    let batch = |n| Phase::Batch { number: n, of: 2 };
    p.event(&Event::Warning {
        message: "no load balancer configured".into(),
    });
    p.event(&run_started());
    p.event(&Event::PhaseStarted {
        phase: Phase::Prepare,
        hosts: vec!["web1".into(), "web2".into()],
    });
    p.event(&step("web1", StepKind::Upload, "shipit:unpack /srv/shop"));
    p.event(&step("web2", StepKind::Upload, "shipit:unpack /srv/shop"));
    p.event(&Event::UploadProgress {
        host: "web1".into(),
        sent: 512,
        total: 1024,
    });
    shots.insert("uploading", screen.text());
    p.event(&Event::UploadProgress {
        host: "web1".into(),
        sent: 1024,
        total: 1024,
    });
    p.event(&done("web1", StepKind::Upload, true, None));
    p.event(&host_done("web1", Phase::Prepare, None));
    p.event(&Event::UploadProgress {
        host: "web2".into(),
        sent: 1024,
        total: 1024,
    });
    p.event(&done("web2", StepKind::Upload, true, None));
    p.event(&host_done("web2", Phase::Prepare, None));
    p.event(&Event::PhaseStarted {
        phase: batch(1),
        hosts: vec!["web1".into()],
    });
    p.event(&step("web1", StepKind::Restart, "sh -c bin/restart"));
    p.event(&Event::Output {
        host: "web1".into(),
        step: StepKind::Restart,
        stream: "stdout",
        line: "restart: app started".into(),
    });
    shots.insert("restarting", screen.text());
    p.event(&done("web1", StepKind::Restart, true, None));
    p.event(&host_done("web1", batch(1), None));
    p.event(&Event::PhaseStarted {
        phase: batch(2),
        hosts: vec!["web2".into()],
    });
    p.event(&step("web2", StepKind::Health, "GET http://web2/health"));
    shots.insert("batch 2", screen.text());
    p.event(&done(
        "web2",
        StepKind::Health,
        false,
        Some("not healthy after 2s:\nstatus 500"),
    ));
    p.event(&host_done("web2", batch(2), Some(StepKind::Health)));
    p.event(&Event::Note {
        host: Some("web2".into()),
        message: "left out of the load balancer".into(),
    });
    p.event(&Event::RunFinished {
        gates: Vec::new(),
        ok: false,
        hosts: vec![
            summary("web1", id(3), HostResult::Done),
            summary(
                "web2",
                id(3),
                HostResult::Failed {
                    step: StepKind::Health,
                    error: "not healthy after 2s:\nstatus 500".into(),
                    interrupted: false,
                },
            ),
        ],
    });
    p.event(&Event::Result {
        ok: false,
        exit_code: 5,
        exit: Exit::Partial,
        message: Some("deploy failed on web2 (health)".into()),
    });
    shots.insert("end", screen.text());
    shots
}

fn line_with<'a>(screen: &'a str, needle: &str) -> &'a str {
    screen
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} on screen:\n{screen}"))
}

#[test]
fn hosts_show_their_step_and_collapse_when_done() {
    let (p, screen) = progress(Verbosity::Normal, false);
    let shots = failing_run(&p, &screen);

    let up = &shots["uploading"];
    let web1 = line_with(up, "web1");
    assert!(web1.contains("upload ["), "{up}");
    assert!(web1.contains("512 B/1.00 KiB"), "{up}");
    assert!(
        line_with(up, "web2").contains("upload · shipit:unpack /srv/shop"),
        "{up}"
    );
    assert!(line_with(up, "· prepare").contains("0/2"), "{up}");
    assert!(
        up.starts_with("warning: no load balancer configured\n"),
        "{up}"
    );

    let restarting = &shots["restarting"];
    assert!(
        restarting.contains("✓ web1     prepared, 1.0 KiB uploaded  (1.5s)"),
        "{restarting}"
    );
    assert!(
        line_with(restarting, "· batch 1/2").contains("0/2"),
        "{restarting}"
    );
    assert!(
        line_with(restarting, "restart ·").contains("web1"),
        "{restarting}"
    );
    // Output is for -v only.
    assert!(!restarting.contains("app started"), "{restarting}");

    let batch2 = &shots["batch 2"];
    assert!(
        batch2.contains(&format!("✓ web1     {} → {}  (1.5s)", id(2), id(3))),
        "{batch2}"
    );
    assert!(line_with(batch2, "· batch 2/2").contains("1/2"), "{batch2}");
    assert!(line_with(batch2, "health ·").contains("web2"), "{batch2}");

    let end = &shots["end"];
    assert!(
        end.contains(
            "✗ web2     health       FAILED  (0.3s)  not healthy after 2s:\n    status 500"
        ),
        "{end}"
    );
    assert!(end.contains("✗ web2     FAILED at health  (1.5s)"), "{end}");
    assert!(
        end.contains("web2     left out of the load balancer"),
        "{end}"
    );
    let table = &end[end.find("HOST").expect("a table")..];
    assert_eq!(
        table,
        format!(
            "HOST  RELEASE                          RESULT            TIME\n\
             web1  {0} → {1}  ok                1.5s\n\
             web2  {0} → {1}  FAILED at health  1.5s\n\
             \n\
             web2: health failed:\n  not healthy after 2s:\n  status 500\n\
             error: deploy failed on web2 (health)",
            id(2),
            id(3)
        )
    );
    // Every bar is gone: nothing live is left below the error.
    assert!(!end.contains("waiting") && !end.contains(" · "), "{end}");
}

#[test]
fn verbose_shows_commands_and_output_quiet_only_errors_and_summary() {
    let (p, screen) = progress(Verbosity::Verbose, false);
    let shots = failing_run(&p, &screen);
    let end = &shots["end"];
    assert!(
        end.contains("web1     restart      $ sh -c bin/restart"),
        "{end}"
    );
    assert!(
        end.contains("web1     restart      | restart: app started"),
        "{end}"
    );
    assert!(end.contains("web1     restart      ok  (0.3s)"), "{end}");

    let (p, screen) = progress(Verbosity::Quiet, false);
    let shots = failing_run(&p, &screen);
    assert_eq!(shots["uploading"], "", "no bars with -q");
    let end = &shots["end"];
    assert!(end.starts_with("✗ web2     health       FAILED"), "{end}");
    assert!(!end.contains("warning") && !end.contains("✓"), "{end}");
    assert!(end.contains("HOST  RELEASE"), "{end}");
    assert!(
        end.ends_with("error: deploy failed on web2 (health)"),
        "{end}"
    );
}

#[test]
fn colours_only_when_asked() {
    let raw = |colors: bool| {
        let out = Arc::new(Mutex::new(String::new()));
        #[derive(Debug)]
        struct Raw(Arc<Mutex<String>>);
        impl TermLike for Raw {
            fn width(&self) -> u16 {
                100
            }
            fn move_cursor_up(&self, _: usize) -> io::Result<()> {
                Ok(())
            }
            fn move_cursor_down(&self, _: usize) -> io::Result<()> {
                Ok(())
            }
            fn move_cursor_right(&self, _: usize) -> io::Result<()> {
                Ok(())
            }
            fn move_cursor_left(&self, _: usize) -> io::Result<()> {
                Ok(())
            }
            fn write_line(&self, s: &str) -> io::Result<()> {
                self.0.lock().unwrap().push_str(s);
                Ok(())
            }
            fn write_str(&self, s: &str) -> io::Result<()> {
                self.0.lock().unwrap().push_str(s);
                Ok(())
            }
            fn clear_line(&self) -> io::Result<()> {
                Ok(())
            }
            fn flush(&self) -> io::Result<()> {
                Ok(())
            }
        }
        let p = Progress::new(
            ProgressDrawTarget::term_like(Box::new(Raw(out.clone()))),
            Verbosity::Normal,
            colors,
            false,
        );
        let screen = Screen::new(100);
        failing_run(&p, &screen);
        drop(p);
        out.lock().unwrap().clone()
    };
    assert!(raw(true).contains("\x1b[31m"));
    assert!(!raw(false).contains('\x1b'));
}

#[test]
fn host_lines_show_the_command_without_shipits_prefixes() {
    assert_eq!(
        short_action("cd /srv/a/releases/1 && SHIPIT_HOST=web1 X='a b' sh -c 'bin/restart --now'"),
        "bin/restart --now"
    );
    assert_eq!(
        short_action("local: SHIPIT_HOST=web1 TOKEN=[REDACTED] sh -c 'lb drain web1'"),
        "local: lb drain web1"
    );
    assert_eq!(
        short_action("shipit:unpack /srv/a 20261122101500"),
        "shipit:unpack /srv/a 20261122101500"
    );
    assert_eq!(short_action("GET http://x/health"), "GET http://x/health");
    assert_eq!(short_action("unbalanced 'quote"), "unbalanced 'quote");
}

#[test]
fn a_bake_counts_down_and_shows_each_gates_latest_value() {
    use crate::report::{Measured, Verdict};
    let (p, screen) = progress(Verbosity::Normal, false);
    p.event(&run_started());
    p.event(&Event::BakeStarted {
        batch: 1,
        of: 2,
        hosts: vec!["web1".into()],
        duration: Duration::from_secs(300),
    });
    let baking = screen.text();
    let line = line_with(&baking, "bake 1/2");
    assert!(line.contains("bake 1/2 · web1 · 4m 5"), "{baking}");
    assert!(line.contains("left"), "{baking}");
    let gate = |outcome: Option<Verdict>, errors: u64, message: &str| Event::GateEvaluated {
        batch: 1,
        of: 2,
        gate: 0,
        kind: "haproxy".into(),
        hosts: vec!["web1".into()],
        verdict: outcome.unwrap_or(Verdict::Pass),
        outcome,
        measured: Measured::Haproxy {
            answers: 200,
            errors,
            error_rate: Some(errors as f64 / 200.0),
            window: Duration::from_secs(4),
            missing: Vec::new(),
            resets: Vec::new(),
        },
        limit: "5xx ≤ 5% of at least 50 answers".into(),
        message: message.into(),
        elapsed: Duration::from_secs(4),
    };
    p.event(&gate(None, 1, "5xx 0.5%"));
    let measuring = screen.text();
    assert!(
        line_with(&measuring, "bake 1/2").contains("· gates[0] haproxy 5xx 0.5% of 200"),
        "{measuring}"
    );
    p.event(&gate(
        Some(Verdict::Fail),
        40,
        "5xx 20% (40 of 200 answers from web1 in 4s) > max_error_rate 5%",
    ));
    p.event(&Event::BakeFinished {
        batch: 1,
        of: 2,
        ok: false,
        duration: Duration::from_secs(4),
        interrupted: false,
        ended_by: None,
    });
    let after = screen.text();
    assert!(
        after.contains(
            "✗ gate 1/2 gates[0] haproxy FAILED: 5xx 20% (40 of 200 answers from web1 in 4s) > max_error_rate 5%"
        ),
        "{after}"
    );
    assert!(
        !after.contains("left ·"),
        "the bake's line is gone:\n{after}"
    );
}
