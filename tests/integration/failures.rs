//! What shipit leaves behind when things go wrong, on a real fleet behind a
//! real HAProxy: which release each host serves, that no host is left
//! drained, the lock state and the exit code, and that no release needed
//! by `current` or a rollback was deleted.

use std::time::Duration;

use crate::support::behind_haproxy::{
    admin_states, assert_no_host_drained, assert_unlocked, config, current, deploy_v1, fleet,
    names, no_request_fails,
};
use crate::support::fleet::{Fleet, wait_for};
use crate::support::shipit::{DEPLOY_TO, Project, host_state};

/// Every host serves `release` and HAProxy has none of them drained or in
/// maintenance (the admin state, whatever its checks currently say).
#[track_caller]
fn all_serve_and_none_drained(fleet: &Fleet, release: &str) {
    for host in names(fleet) {
        let state = host_state(fleet, &host, DEPLOY_TO);
        assert_eq!(state.current.as_deref(), Some(release), "{host} current");
        let body = state.health.map(|h| h.1).unwrap_or_default();
        assert!(
            body.contains(&format!("release={release}")),
            "{host} serves {body:?}"
        );
    }
    assert_no_host_drained(fleet);
}

fn admin_state(fleet: &Fleet, server: &str) -> String {
    admin_states(fleet)
        .into_iter()
        .find(|(n, _)| n == server)
        .map(|(_, s)| s)
        .unwrap_or_default()
}

#[test]
fn health_failing_on_host_3_of_4_rolls_everything_back() {
    let fleet = fleet(4);
    let project = Project::new(&config(
        &fleet,
        "[stages.test.rollout]\nrolling_batch_size = 2\n[stages.test.health]\ntimeout = \"3s\"\n",
    ));
    let r1 = deploy_v1(&project, &fleet);
    fleet.exec_ok("web3", &format!("echo v2 > {DEPLOY_TO}/shared/health-fail"));
    project.set_version("v2");
    no_request_fails(&fleet, "health failing on web3, rolled back", || {
        project.shipit(&["test", "deploy"])
    })
    .code(4)
    .stderr_has("web3     health       FAILED")
    .stderr_has("and was rolled back");
    all_serve_and_none_drained(&fleet, &r1);
    assert_unlocked(&fleet);
    for host in names(&fleet) {
        let state = host_state(&fleet, &host, DEPLOY_TO);
        assert_eq!(state.releases.len(), 2, "{host}: nothing deleted");
        assert_eq!(state.bad.len(), 1, "{host}: the new release is marked bad");
        assert_ne!(state.bad[0], r1);
    }
}

#[test]
fn a_failing_restart_is_rolled_back() {
    let fleet = fleet(3);
    let project = Project::new(&config(&fleet, ""));
    let r1 = deploy_v1(&project, &fleet);
    // v2's restart fails on web2 only: its restart script checks for this file.
    project.set_version("v2");
    let restart = "if [ -e /srv/demo/shared/no-restart ] && grep -q v2 VERSION; then echo 'cannot start' >&2; exit 9; fi; bin/restart";
    project.write_config(&config(&fleet, "").replace(
        "restart = \"bin/restart\"",
        &format!("restart = {restart:?}"),
    ));
    fleet.exec_ok("web2", &format!("touch {DEPLOY_TO}/shared/no-restart"));
    no_request_fails(&fleet, "restart failing on web2, rolled back", || {
        project.shipit(&["test", "deploy"])
    })
    .code(4)
    .stderr_has("ended with exit status 9; stderr:")
    .stderr_has("    cannot start");
    all_serve_and_none_drained(&fleet, &r1);
    assert_unlocked(&fleet);
}

#[test]
fn sshd_killed_during_upload_switches_nothing() {
    let fleet = fleet(3);
    let project = Project::new(&config(&fleet, ""));
    let r1 = deploy_v1(&project, &fleet);
    // A release big enough that the upload takes a moment.
    let big: Vec<u8> = (0..48 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(project.path().join("dist/blob.bin"), big).unwrap();
    project.set_version("v2");
    let mut run = project.spawn(&["test", "deploy", "-v"]);
    run.wait_for("web2     upload", Duration::from_secs(60));
    fleet.stop_sshd("web2");
    let run = run.finish();
    run.code(1).stderr_has("no host was switched");
    all_serve_and_none_drained(&fleet, &r1);
    // The hosts that could be reached were unlocked; web2 keeps the lock
    // until its lease expires (it cannot be reached to release it).
    for host in ["web1", "web3"] {
        assert!(
            !fleet.exists(host, &format!("{DEPLOY_TO}/.shipit/lock")),
            "{host} still locked"
        );
    }
    fleet.start_sshd("web2");
}

#[test]
fn a_host_cut_off_mid_batch_fails_alone_and_the_rest_is_rolled_back() {
    let fleet = fleet(3);
    let project = Project::new(&config(
        &fleet,
        "[stages.test.app]\nrestart = \"sleep 1; bin/restart\"\n\
         [stages.test.ssh]\nkeepalive_interval = \"1s\"\n[stages.test.health]\ntimeout = \"3s\"\n\
         [stages.test.rollout]\nmax_unavailable = 2\n",
    ));
    let r1 = deploy_v1(&project, &fleet);
    project.set_version("v2");
    let mut run = project.spawn(&["test", "deploy", "-v"]);
    // web2 is switched and restarting when its network goes. It stays out
    // of service, unreachable, so rolling web1 back takes a second place
    // out of service: max_unavailable = 2 allows it.
    run.wait_for("web2     restart      $", Duration::from_secs(60));
    fleet.link_down("web2");
    let run = run.finish();
    // web2 cannot be rolled back while unreachable: exit 5, naming it;
    // web1 (switched in batch 1) is back, web3 was never touched.
    run.code(5)
        .stderr_has("web2     restart      FAILED")
        .stderr_has("web2 cannot be reached and stays out of service; rolling back the others")
        .stderr_has("the rollback did not complete on web2");
    for host in ["web1", "web3"] {
        assert_eq!(
            current(&fleet, host).as_deref(),
            Some(r1.as_str()),
            "{host}"
        );
        assert!(
            !fleet.exists(host, &format!("{DEPLOY_TO}/.shipit/lock")),
            "{host} still locked"
        );
    }
    // Back online, web2 still holds the dead run's lock and runs the bad
    // release. A rollback that takes over the stale lock fixes it.
    fleet.link_up("web2");
    assert_ne!(current(&fleet, "web2").as_deref(), Some(r1.as_str()));
    project
        .shipit(&["test", "rollback"])
        .code(6)
        .stderr_has("--break-stale-lock");
    project
        .shipit(&["test", "rollback", "--break-stale-lock"])
        .success();
    all_serve_and_none_drained(&fleet, &r1);
    assert_unlocked(&fleet);
}

#[test]
fn disk_full_during_upload_is_a_clean_error() {
    let fleet = fleet(2);
    let project = Project::new(&config(&fleet, ""));
    let r1 = deploy_v1(&project, &fleet);
    // web2's deploy_to becomes a 1 MiB disk holding a copy of what it had.
    fleet.exec_ok(
        "web2",
        &format!("cp -a {DEPLOY_TO} /tmp/keep && rm -rf {DEPLOY_TO}/*"),
    );
    fleet.fill("web2", DEPLOY_TO, "1m");
    fleet.exec_ok(
        "web2",
        &format!("cp -a /tmp/keep/. {DEPLOY_TO}/ && rm -rf /tmp/keep"),
    );
    let noise: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    std::fs::write(project.path().join("dist/blob.bin"), noise).unwrap();
    project.set_version("v2");
    project
        .shipit(&["test", "deploy"])
        .code(1)
        .stderr_has("web2     upload       FAILED")
        .stderr_has("No space left on device")
        .stderr_has("no host was switched");
    all_serve_and_none_drained(&fleet, &r1);
    assert_unlocked(&fleet);
    let web2 = host_state(&fleet, "web2", DEPLOY_TO);
    assert_eq!(
        web2.unfinished.len(),
        1,
        "the partial release is marked unfinished"
    );
    let releases = project.shipit(&["test", "releases"]);
    releases.success().stdout_has("unfinished");
    // Rollback never picks the partial release; nothing older than r1.
    project
        .shipit(&["test", "rollback"])
        .code(1)
        .stderr_has("nothing to roll back to");
}

#[test]
fn ctrl_c_mid_batch_puts_every_host_back_and_releases_the_lock() {
    let fleet = fleet(3);
    let slow = "[stages.test.app]\nrestart = \"sleep 1; bin/restart\"\n";
    let project = Project::new(&config(&fleet, slow));
    let r1 = deploy_v1(&project, &fleet);
    for (signal, rollback_on_abort) in [("INT", false), ("TERM", true)] {
        project.set_version(&format!("v-{signal}"));
        let mut args = vec!["test", "deploy", "-v"];
        if rollback_on_abort {
            args.push("--rollback-on-abort");
        }
        let run = no_request_fails(&fleet, &format!("SIG{signal} mid-batch"), || {
            let mut run = project.spawn(&args);
            // web2 is drained and restarting when the signal arrives.
            run.wait_for("web2     restart      $", Duration::from_secs(60));
            run.signal(signal);
            run.finish()
        });
        run.code(130).stderr_has("interrupted");
        assert_no_host_drained(&fleet);
        assert_unlocked(&fleet);
        let now: Vec<Option<String>> = names(&fleet).iter().map(|h| current(&fleet, h)).collect();
        if rollback_on_abort {
            assert!(
                now.iter().all(|c| c.as_deref() == Some(r1.as_str())),
                "{now:?}"
            );
        } else {
            // web1 finished before the signal; web2 finished its running
            // steps; web3 was never reached.
            assert_eq!(now[2].as_deref(), Some(r1.as_str()), "{now:?}");
            assert_ne!(now[0].as_deref(), Some(r1.as_str()), "{now:?}");
            // Bring everyone back in line for the next round.
            project.shipit(&["test", "rollback", "-q"]).success();
        }
    }
}

#[test]
fn a_killed_run_is_shown_repaired_and_resumed() {
    let fleet = fleet(3);
    let slow = "[stages.test.app]\nrestart = \"sleep 1; bin/restart\"\n[stages.test.rollout]\nlock_lease = \"60s\"\n";
    let project = Project::new(&config(&fleet, slow));
    deploy_v1(&project, &fleet);
    project.set_version("v2");
    let mut run = project.spawn(&["test", "deploy", "-v"]);
    run.wait_for("web2     restart      $", Duration::from_secs(60));
    run.signal("KILL");
    let killed = run.finish();
    assert_eq!(killed.code, -1, "killed by a signal");

    // status: the interrupted run, per host, and the lock it left.
    let status = project.shipit(&["test", "status"]);
    status
        .success()
        .stdout_has("INTERRUPTED after")
        .stdout_has("left drained")
        .stdout_has("STALE")
        .stdout_has("deploy --resume");
    // A plain deploy refuses: the lock is stale but not broken by default.
    project
        .shipit(&["test", "deploy"])
        .code(6)
        .stderr_has("take it over with --break-stale-lock");

    // --resume finishes the interrupted run: same release everywhere.
    let resumed = project.shipit(&["test", "deploy", "--resume"]);
    resumed.success().stderr_has("resuming run");
    let r2 = current(&fleet, "web1").unwrap();
    all_serve_and_none_drained(&fleet, &r2);
    assert_unlocked(&fleet);
    let status = project.shipit(&["test", "status"]);
    status.success().stdout_has("lock: free");
    assert!(!status.stdout.contains("INTERRUPTED"), "{status}");
}

#[test]
fn a_plain_deploy_after_a_killed_run_repairs_drained_hosts_first() {
    let fleet = fleet(2);
    let project = Project::new(&config(&fleet, ""));
    deploy_v1(&project, &fleet);
    // v2 takes 2 s to boot, so the run is sure to be waiting on web1's
    // health check (web1 switched, restarted, drained) when it is killed.
    project.set_version("v2");
    std::fs::write(project.path().join("dist/BOOT_DELAY"), "2").unwrap();
    let mut run = project.spawn(&["test", "deploy", "-v"]);
    run.wait_for("web1     health       $", Duration::from_secs(60));
    run.signal("KILL");
    run.finish();
    let r2 = current(&fleet, "web1").unwrap();
    wait_for(
        Duration::from_secs(10),
        "web1's v2 to finish booting",
        || {
            host_state(&fleet, "web1", DEPLOY_TO)
                .health
                .is_some_and(|(_, body)| body.contains(&format!("release={r2}")))
        },
    );
    assert_ne!(
        admin_state(&fleet, "web1"),
        "0",
        "the killed run left web1 drained"
    );
    std::fs::remove_file(project.path().join("dist/BOOT_DELAY")).unwrap();
    project.set_version("v3");
    project
        .shipit(&["test", "deploy", "--break-stale-lock"])
        .success()
        .stderr_has("left drained by the interrupted deploy")
        .stderr_has("put back into the load balancer");
    let r3 = current(&fleet, "web1").unwrap();
    all_serve_and_none_drained(&fleet, &r3);
}

#[test]
fn two_deploys_at_once_exactly_one_runs() {
    let fleet = fleet(2);
    let slow = "[stages.test.app]\nrestart = \"sleep 2; bin/restart\"\n";
    let project = Project::new(&config(&fleet, slow));
    deploy_v1(&project, &fleet);
    project.set_version("v2");
    let mut first = project.spawn(&["test", "deploy", "-m", "first one"]);
    first.wait_for("== prepare", Duration::from_secs(60));
    let second = project.shipit(&["test", "deploy"]);
    second
        .code(6)
        .stderr_has("stage test is locked")
        .stderr_has("\"first one\"")
        .stderr_has("wait for it with --lock-wait");
    // Waiting instead: it runs once the first one is done.
    let waiting = project.spawn(&["test", "deploy", "--lock-wait", "2m"]);
    first.finish().success();
    let waited = waiting.finish();
    waited.success().stderr_has("waiting for the deploy lock");
    assert_unlocked(&fleet);
}

#[test]
fn manual_lock_blocks_deploys_until_unlock() {
    let fleet = fleet(2);
    let project = Project::new(&config(&fleet, ""));
    project
        .shipit(&["test", "lock", "-m", "db migration running"])
        .success();
    project
        .shipit(&["test", "deploy"])
        .code(6)
        .stderr_has("manual lock")
        .stderr_has("db migration running")
        .stderr_has("shipit test unlock");
    project
        .shipit(&["test", "status"])
        .success()
        .stdout_has("manual lock");
    project.shipit(&["test", "unlock"]).success();
    project.shipit(&["test", "deploy", "-q"]).success();
    assert_unlocked(&fleet);
}

/// Two runs asking for the lock in the same instant, over and over, with
/// the same hosts and with overlapping `--hosts` selections: each time one
/// gets it (on every host it asked for) and the other is told who holds it,
/// never both refused, never both holding part of the fleet.
#[test]
fn racing_runs_never_both_lose_or_split_the_lock() {
    let fleet = fleet(4);
    let project = Project::new(&config(&fleet, ""));
    let rounds: [(&[&str], &[&str]); 6] = [
        (&[], &[]),
        (&[], &[]),
        (&[], &[]),
        (
            &["--hosts", "web2,web3,web4"],
            &["--hosts", "web1,web2,web3"],
        ),
        (&["--hosts", "web3,web4"], &[]),
        (&["--hosts", "web1,web4"], &["--hosts", "web2,web4"]),
    ];
    for (round, (a, b)) in rounds.iter().enumerate() {
        let args = |who: &str, select: &[&str]| -> Vec<String> {
            let mut args = vec!["test".to_string(), "lock".into(), "-m".into(), who.into()];
            args.extend(select.iter().map(|s| s.to_string()));
            args
        };
        let (args_a, args_b) = (args("racer a", a), args("racer b", b));
        let first = project.spawn(&args_a.iter().map(String::as_str).collect::<Vec<_>>());
        let second = project.spawn(&args_b.iter().map(String::as_str).collect::<Vec<_>>());
        let (first, second) = (first.finish(), second.finish());
        let codes = [first.code, second.code];
        let (winner, loser, winner_hosts) = match codes {
            [0, 6] => (&first, &second, *a),
            [6, 0] => (&second, &first, *b),
            _ => panic!("round {round}: want one 0 and one 6, got {codes:?}\n{first}\n{second}"),
        };
        winner.stderr_has("locked stage test");
        loser.stderr_has("stage test is locked");
        // The winner holds the lock on every host it asked for and on no
        // other; nothing of the loser's attempt is left behind.
        let wanted: Vec<String> = match winner_hosts {
            [] => names(&fleet),
            [_, list] => list.split(',').map(str::to_string).collect(),
            other => panic!("unexpected selection {other:?}"),
        };
        for host in names(&fleet) {
            let held = fleet
                .read_file(&host, &format!("{DEPLOY_TO}/.shipit/lock/info"))
                .unwrap_or_default();
            if wanted.contains(&host) {
                let who = if std::ptr::eq(winner, &first) {
                    "racer a"
                } else {
                    "racer b"
                };
                assert!(held.contains(who), "round {round}: {host} lock: {held:?}");
            } else {
                assert!(
                    held.is_empty(),
                    "round {round}: {host} should be free: {held:?}"
                );
            }
        }
        project.shipit(&["test", "unlock"]).success();
        assert_unlocked(&fleet);
    }
}
