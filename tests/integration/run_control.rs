//! Steering a running deploy from a second shipit process: pause and
//! resume, promote, abort, rollback and tune, on four hosts behind a real
//! HAProxy with a steady load through it, and every command refused with
//! nothing changed when no run is going.
//!
//! Moments are the deploy's own output lines (`== bake 1/4`, `paused by`),
//! never sleeps; what happened is read on the hosts: each host's switch
//! time is the time `current` was last replaced (the link's own mtime, set
//! by the switch's rename), HAProxy's server states, and revisions.log.
//! Each test prints the delay between a request and the running deploy
//! answering it (`--nocapture` shows them).

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use crate::support::fleet::{Fleet, FleetOptions, Haproxy, wait_for};
use crate::support::load::{Load, Report};
use crate::support::shipit::{DEPLOY_TO, Project, Run, Running, host_state, standard_config};

const HOSTS: usize = 4;
const RATE: u32 = 200;
const CONNECTIONS: usize = 8;
/// Generous: a slow, shared machine must not fail a test by its pace.
const WAIT: Duration = Duration::from_secs(90);

fn fleet() -> Fleet {
    Fleet::start(FleetOptions {
        hosts: HOSTS,
        haproxy: Haproxy::Local,
        bastion: false,
    })
}

fn names() -> Vec<String> {
    (1..=HOSTS).map(|i| format!("web{i}")).collect()
}

/// The fleet's HAProxy, driven through its admin socket.
fn haproxy(fleet: &Fleet) -> String {
    format!(
        "[lb]\ndriver = \"haproxy\"\nsocket = \"{}\"\nbackend = \"app\"\n",
        fleet.haproxy_socket().display()
    )
}

/// deploy.toml with `lb` as its `[lb]`; `rollout` and `extra` are added
/// to the stage.
fn config_with(fleet: &Fleet, lb: &str, rollout: &str, extra: &str) -> String {
    standard_config(
        fleet,
        &format!("{lb}\n[stages.test.rollout]\n{rollout}\n{extra}"),
    )
}

fn config(fleet: &Fleet, rollout: &str, extra: &str) -> String {
    config_with(fleet, &haproxy(fleet), rollout, extra)
}

/// A project whose hosts all run v1 (deployed before any load), with
/// `rollout` for the next deploys, which ship v2.
fn project(fleet: &Fleet, rollout: &str, extra: &str) -> (Project, String) {
    project_with(fleet, &haproxy(fleet), rollout, extra)
}

fn project_with(fleet: &Fleet, lb: &str, rollout: &str, extra: &str) -> (Project, String) {
    let project = Project::new(&config_with(fleet, lb, "", ""));
    project.shipit(&["test", "deploy", "-q"]).success();
    wait_for(
        Duration::from_secs(30),
        "every server UP in HAProxy",
        || {
            names()
                .iter()
                .all(|h| fleet.haproxy_server_status(h).as_deref() == Some("UP"))
        },
    );
    let v1 = host_state(fleet, "web1", DEPLOY_TO)
        .current
        .expect("web1 runs v1");
    project.write_config(&config_with(fleet, lb, rollout, extra));
    project.set_version("v2");
    (project, v1)
}

/// Apps started from now on take 2 s to listen: a host restarted while
/// it is still sent requests loses some.
const SLOW_BOOT: &str = "[stages.test.app]\nrestart = \"APP_BOOT_DELAY=2 bin/restart\"\n";

/// When `host` last switched: `current`'s own mtime (the switch renames a
/// fresh link over it).
fn switched_at(fleet: &Fleet, host: &str) -> SystemTime {
    let link: PathBuf = fleet.srv_dir(host).join("demo/current");
    std::fs::symlink_metadata(&link)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("{}: {e}", link.display()))
}

fn current(fleet: &Fleet, host: &str) -> String {
    host_state(fleet, host, DEPLOY_TO)
        .current
        .unwrap_or_else(|| panic!("{host} has no current"))
}

/// Every server UP in HAProxy, none left in drain or maintenance.
#[track_caller]
fn assert_all_in_service(fleet: &Fleet) {
    for host in names() {
        assert_eq!(
            fleet.haproxy_server_status(&host).as_deref(),
            Some("UP"),
            "{host} in HAProxy"
        );
    }
    let state = fleet.haproxy_cmd("show servers state app");
    for line in state
        .lines()
        .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()))
    {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() > 6 {
            assert_eq!(fields[6], "0", "admin state (drain/maint flags): {line}");
        }
    }
}

#[track_caller]
fn assert_no_failed_request(report: &Report) {
    let failures = report.failures();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed:\n{}\n{}",
        failures.len(),
        report.total(),
        report.failure_list(20),
        report.timeline()
    );
    assert!(report.total() > 100, "the load ran: {}", report.summary());
}

/// Starts the load and the deploy (with `--json`), once the load flows.
fn deploy_under_load(fleet: &Fleet, project: &Project) -> (Load, Running) {
    let load = Load::start(&fleet.lb_url(), CONNECTIONS, RATE);
    std::thread::sleep(Duration::from_millis(500));
    let deploy = project.spawn(&["test", "deploy", "--json"]);
    (load, deploy)
}

/// The deploy's events named `event`.
fn events(run: &Run, event: &str) -> Vec<serde_json::Value> {
    run.events()
        .into_iter()
        .filter(|e| e["event"] == event)
        .collect()
}

/// Seconds from a request to the running deploy's first answer to it,
/// both stamped on this machine's clock.
fn answer_delays(run: &Run) -> Vec<(String, f64)> {
    let mut seen = Vec::new();
    let mut delays = Vec::new();
    for e in events(run, "steer") {
        let id = e["request"].as_str().unwrap().to_string();
        if seen.contains(&id) {
            continue;
        }
        let at = |field: &str| -> jiff::Timestamp { e[field].as_str().unwrap().parse().unwrap() };
        let delay = at("ts").duration_since(at("asked")).as_secs_f64();
        delays.push((e["action"].as_str().unwrap().to_string(), delay));
        seen.push(id);
    }
    println!("request -> answer by the running deploy: {delays:?}");
    delays
}

/// The revisions.log lines of steering requests on `host`.
fn steering_log(fleet: &Fleet, host: &str) -> Vec<serde_json::Value> {
    host_state(fleet, host, DEPLOY_TO)
        .log
        .into_iter()
        .filter(|e| e.get("run").is_some())
        .collect()
}

/// What a pause from another process and a resume 5 s later did: the
/// deploy's run, the load's report, and when the deploy said it paused and
/// when the resume was asked.
struct Paused {
    run: Run,
    report: Report,
    paused: SystemTime,
    resumed: SystemTime,
}

fn pause_and_resume(fleet: &Fleet, lb: &str) -> (Paused, String) {
    // Batch 1 bakes for 10 s: time enough to ask for the pause while it
    // is in flight, which then takes effect once the bake is over.
    let (project, v1) = project_with(fleet, lb, "bake = [\"10s\", \"0s\"]", SLOW_BOOT);
    let (load, mut deploy) = deploy_under_load(fleet, &project);
    deploy.wait_for("== bake 1/4", WAIT);

    let pause = project.shipit(&["test", "pause", "-m", "checking dashboards"]);
    pause.success().stderr_has("paused by ");
    deploy.wait_for("paused by ", WAIT);
    let paused = SystemTime::now();
    // The deploy said who paused it and why, and status shows it.
    let status = project.shipit(&["test", "status"]);
    status
        .success()
        .stdout_has("running: deploy of ")
        .stdout_has("PAUSED by ")
        .stdout_has("(checking dashboards)")
        .stdout_has("RUNNING, last rolled-out");
    assert!(!status.stdout.contains("INTERRUPTED"), "{status}");

    // Five seconds of pause: the deploy holds still (the hosts say so).
    std::thread::sleep(Duration::from_secs(5));
    let resumed = SystemTime::now();
    project
        .shipit(&["test", "resume"])
        .success()
        .stderr_has("resumed by ");
    let run = deploy.finish();
    std::thread::sleep(Duration::from_millis(500));
    let report = load.stop();
    (
        Paused {
            run,
            report,
            paused,
            resumed,
        },
        v1,
    )
}

#[test]
fn a_deploy_paused_from_another_process_switches_no_host_until_resumed() {
    let fleet = fleet();
    let (p, v1) = pause_and_resume(&fleet, &haproxy(&fleet));
    println!("pause/resume: {}", p.report.summary());
    p.run
        .success()
        .stderr_has("asks to pause (checking dashboards): pausing once bake 1/4 ends")
        .stderr_has("paused by ")
        .stderr_has("resumed by ");
    assert_no_failed_request(&p.report);
    assert_all_in_service(&fleet);

    // web1 switched before the pause; no host switched while paused: the
    // others all switched after the resume was asked, 5 s or more later.
    assert!(switched_at(&fleet, "web1") < p.paused);
    for host in ["web2", "web3", "web4"] {
        let at = switched_at(&fleet, host);
        assert!(
            at > p.resumed,
            "{host} switched at {at:?}, before the resume at {:?}",
            p.resumed
        );
        assert!(at.duration_since(p.paused).unwrap() >= Duration::from_secs(5));
        assert_ne!(current(&fleet, host), v1);
    }
    // Who paused and resumed is on record on every host: on the run's
    // mailboxes (web1..web3) as it answered, on web4 with the lock's release.
    for host in names() {
        let log = steering_log(&fleet, &host);
        let actions: Vec<&str> = log.iter().map(|e| e["action"].as_str().unwrap()).collect();
        assert_eq!(actions, ["pause", "resume"], "{host}: {log:?}");
        assert_eq!(log[0]["message"], "checking dashboards");
        assert!(log[0]["by"].as_str().unwrap().contains('@'));
    }
    answer_delays(&p.run);
}

/// The negative control: the same paused deploy without a load balancer
/// driver restarts hosts in rotation and must lose requests, or the load
/// above proves nothing.
#[test]
fn a_paused_deploy_without_a_load_balancer_driver_loses_requests() {
    let fleet = fleet();
    let (p, _) = pause_and_resume(&fleet, "[lb]\ndriver = \"none\"\n");
    p.run.success();
    let failed = p.report.failures().len();
    println!(
        "negative control: {failed} failed requests, e.g.\n{}",
        p.report.failure_list(5)
    );
    assert!(
        failed > 0,
        "restarting hosts in rotation with a 2 s boot lost no request: the load has lost its sensitivity\n{}",
        p.report.timeline()
    );
}

#[test]
fn a_promote_ends_a_30s_bake_at_once() {
    let fleet = fleet();
    let (project, _) = project(&fleet, "bake = [\"30s\", \"0s\"]", "");
    let (load, mut deploy) = deploy_under_load(&fleet, &project);
    deploy.wait_for("== bake 1/4", WAIT);
    // The answer read last: taken ("ending bake 1/4 now"), or done already.
    project
        .shipit(&["test", "promote"])
        .success()
        .stderr_has("bake 1/4 ended by a promote from ");
    let run = deploy.finish();
    let report = load.stop();
    println!("promote: {}", report.summary());
    run.success();
    assert_no_failed_request(&report);

    let bake = &events(&run, "bake-finished")[0];
    assert_eq!(bake["batch"], 1);
    assert!(
        bake["ended_by"]
            .as_str()
            .unwrap()
            .starts_with("promote by "),
        "{bake}"
    );
    // On the hosts: web2 switched well before the 30 s bake would have let it.
    let gap = switched_at(&fleet, "web2")
        .duration_since(switched_at(&fleet, "web1"))
        .unwrap();
    assert!(
        gap < Duration::from_secs(20),
        "web2 switched {gap:?} after web1"
    );
    let delays = answer_delays(&run);
    assert_eq!(delays.len(), 1, "{delays:?}");
    // From the request to the end of the bake, on this machine's clock.
    let promote = &events(&run, "steer")[0];
    let at = |e: &serde_json::Value, field: &str| -> jiff::Timestamp {
        e[field].as_str().unwrap().parse().unwrap()
    };
    println!(
        "promote -> bake ended: {:.3}s",
        at(bake, "ts")
            .duration_since(at(promote, "asked"))
            .as_secs_f64()
    );
}

#[test]
fn an_abort_during_the_first_bake_returns_every_host() {
    let fleet = fleet();
    let (project, v1) = project(&fleet, "bake = \"30s\"", "");
    let (load, mut deploy) = deploy_under_load(&fleet, &project);
    deploy.wait_for("== bake 1/4", WAIT);
    project.shipit(&["test", "abort"]).success();
    let run = deploy.finish();
    let report = load.stop();
    println!("abort: {}", report.summary());
    run.code(4)
        .stderr_has("asks to abort: ending bake 1/4 now; then every switched host goes back")
        .stderr_has("== bake 1/4: ended early (abort by ")
        .stderr_has("stopped (aborted by ");
    assert_no_failed_request(&report);
    assert_all_in_service(&fleet);
    for host in names() {
        assert_eq!(current(&fleet, &host), v1, "{host} is back on v1");
    }
    // Only web1 was ever switched: the abort ended its bake, no batch followed.
    let batches: Vec<serde_json::Value> = events(&run, "phase-started")
        .into_iter()
        .filter(|e| e["phase"]["name"] == "batch")
        .collect();
    assert_eq!(batches.len(), 1, "{batches:?}");
    assert_eq!(steering_log(&fleet, "web3")[0]["action"], "abort");
    answer_delays(&run);
}

#[test]
fn a_rollback_from_another_process_ends_the_deploy_and_waits_for_the_fleet() {
    let fleet = fleet();
    // Batch 2 bakes: two hosts run v2 when the rollback is asked.
    let (project, v1) = project(&fleet, "bake = [\"0s\", \"30s\"]", "");
    let (load, mut deploy) = deploy_under_load(&fleet, &project);
    deploy.wait_for("== bake 2/4", WAIT);
    let rollback = project.shipit(&["test", "rollback"]);
    // The rollback command returns once the fleet is back.
    let back: Vec<String> = names().iter().map(|h| current(&fleet, h)).collect();
    assert_all_in_service(&fleet);
    rollback
        .success()
        .stderr_has("(rollback); then every switched host goes back to its previous release");
    assert_eq!(back, vec![v1.clone(); HOSTS], "every host back on v1");
    let run = deploy.finish();
    let report = load.stop();
    println!("rollback while deploying: {}", report.summary());
    run.code(4).stderr_has("stopped (rollback asked by ");
    assert_no_failed_request(&report);
    // The release left behind is marked bad: a later rollback skips it.
    let state = host_state(&fleet, "web1", DEPLOY_TO);
    assert_eq!(state.bad.len(), 1, "{:?}", state.bad);
    answer_delays(&run);
}

#[test]
fn a_tune_from_1_to_3_switches_the_remaining_hosts_3_at_a_time() {
    let fleet = fleet();
    // Apps take 2 s to boot: hosts in separate batches switch 2 s or more
    // apart, hosts of one batch together.
    let (project, _) = project(
        &fleet,
        "rolling_batch_size = 1\nmax_unavailable = 3\nbake = [\"15s\", \"0s\"]",
        SLOW_BOOT,
    );
    let (load, mut deploy) = deploy_under_load(&fleet, &project);
    deploy.wait_for("== bake 1/4", WAIT);
    // Beyond max_unavailable: refused, with the reason, nothing changed.
    project
        .shipit(&["test", "tune", "--batch-size", "4"])
        .code(1)
        .stderr_has("rollout.max_unavailable = 3 leaves room for 3");
    project
        .shipit(&["test", "tune", "--batch-size", "3"])
        .success()
        .stderr_has("from batch 2 on, 1 batch: web2, web3, web4");
    // The bake under way goes on: end it now.
    project.shipit(&["test", "promote"]).success();
    let run = deploy.finish();
    let report = load.stop();
    println!("tune: {}", report.summary());
    run.success();
    assert_no_failed_request(&report);
    let batches: Vec<Vec<String>> = events(&run, "phase-started")
        .into_iter()
        .filter(|e| e["phase"]["name"] == "batch")
        .map(|e| serde_json::from_value(e["hosts"].clone()).unwrap())
        .collect();
    assert_eq!(batches, [vec!["web1"], vec!["web2", "web3", "web4"]]);
    // On the hosts: the three switched together, within one boot time.
    let times: Vec<SystemTime> = ["web2", "web3", "web4"]
        .iter()
        .map(|h| switched_at(&fleet, h))
        .collect();
    let first = *times.iter().min().unwrap();
    let spread = times.iter().max().unwrap().duration_since(first).unwrap();
    assert!(
        spread < Duration::from_secs(2),
        "web2..web4 switched {spread:?} apart: not one batch"
    );
    assert!(first > switched_at(&fleet, "web1"));
    answer_delays(&run);
}

#[test]
fn with_no_run_going_every_steering_command_says_so_and_changes_nothing() {
    let fleet = fleet();
    let project = Project::new(&config(&fleet, "", ""));
    project.shipit(&["test", "deploy", "-q"]).success();
    // Every name under deploy_to, where current leads, revisions.log; not
    // times: the manual lock below, taken and given back, touches .shipit.
    let snapshot = || -> Vec<String> {
        names()
            .iter()
            .map(|h| {
                fleet.exec_ok(
                    h,
                    &format!("cd {DEPLOY_TO} && ls -AR . && readlink current && cat revisions.log"),
                )
            })
            .collect()
    };
    let before = snapshot();
    let commands: [&[&str]; 6] = [
        &["test", "pause", "-m", "x"],
        &["test", "resume"],
        &["test", "promote"],
        &["test", "promote", "--all"],
        &["test", "abort"],
        &["test", "tune", "--batch-size", "2"],
    ];
    for args in commands {
        project
            .shipit(args)
            .code(1)
            .stderr_has("no deploy or rollback is running on stage test: the deploy lock is free");
    }
    // A manual lock is no run either.
    project
        .shipit(&["test", "lock", "-m", "db migration"])
        .success();
    project
        .shipit(&["test", "pause"])
        .code(1)
        .stderr_has("is a manual lock by ");
    project.shipit(&["test", "unlock"]).success();
    assert_eq!(snapshot(), before, "nothing changed on the hosts");
}

#[test]
fn a_rollback_too_late_to_stop_the_deploy_waits_for_it_and_undoes_it() {
    let fleet = fleet();
    // The deploy's after_deploy hook (after the last batch and cleanup)
    // holds it while a file exists: the rollback comes while it finishes.
    let dir = tempfile::tempdir().unwrap();
    let (hold, finishing) = (dir.path().join("hold"), dir.path().join("finishing"));
    std::fs::write(&hold, "").unwrap();
    let hook = format!(
        "[stages.test.hooks]\nafter_deploy = [\"touch {} && while [ -e {} ]; do sleep 0.1; done\"]\n",
        finishing.display(),
        hold.display()
    );
    let (project, v1) = project(&fleet, "", &hook);
    let deploy = project.spawn(&["test", "deploy"]);
    wait_for(WAIT, "the deploy to reach its after_deploy hook", || {
        finishing.exists()
    });
    let mut rollback = project.spawn(&["test", "rollback"]);
    rollback.wait_for("comes too late: every batch is done", WAIT);
    std::fs::remove_file(&hold).unwrap();
    deploy.finish().success();
    rollback.finish().success().stderr_has(
        "the deploy finished before it could roll back on request; rolling back what it deployed",
    );
    for host in names() {
        assert_eq!(current(&fleet, &host), v1, "{host} is back on v1");
    }
    assert_all_in_service(&fleet);
}

#[test]
fn a_paused_run_whose_machine_dies_is_stale_and_resumes_unpaused() {
    let fleet = fleet();
    let (project, v1) = project(&fleet, "", "");
    let mut deploy = project.spawn(&["test", "deploy"]);
    deploy.wait_for("== batch 1/4", WAIT);
    project.shipit(&["test", "pause"]).success();
    deploy.wait_for("paused by ", WAIT);
    deploy.signal("KILL");
    assert_eq!(deploy.finish().code, -1, "killed");

    // Paused between batches: every host is in service.
    assert_all_in_service(&fleet);
    let status = project.shipit(&["test", "status"]);
    status
        .success()
        .stdout_has("PAUSED by ")
        .stdout_has("its lock is STALE, so the run is gone")
        .stdout_has("deploy --resume");
    project
        .shipit(&["test", "resume"])
        .code(1)
        .stderr_has("stopped refreshing it");
    // --resume goes on from where it stopped, not paused.
    let resumed = project.shipit(&["test", "deploy", "--resume"]);
    resumed.success().stderr_has("resuming run");
    assert!(!resumed.stderr.contains("paused by"), "{resumed}");
    let new = current(&fleet, "web1");
    assert_ne!(new, v1);
    for host in names() {
        assert_eq!(current(&fleet, &host), new, "{host}");
    }
    assert_all_in_service(&fleet);
}
