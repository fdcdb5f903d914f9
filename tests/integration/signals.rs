//! Signals and stuck commands on a real fleet behind a real HAProxy: a
//! signal at every point between drain and enable, SIGHUP, the way CI
//! runners cancel a job (GitHub Actions: SIGINT, SIGTERM 7.5 s later,
//! SIGKILL 2.5 s after that), a restart that never returns, and an admin
//! socket that drops a request mid-enable. Whatever happens, every host
//! ends in service serving the release `current` names, and the lock is
//! free.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::support::behind_haproxy::{
    admin_states, config, config_at, fleet, names, no_request_fails,
};
use crate::support::fleet::{Fleet, wait_for};
use crate::support::shipit::{DEPLOY_TO, Project, Running, host_state};

/// What a run must leave, whatever stopped it: every server ready in
/// HAProxy, every host serving exactly the release its `current` names
/// (so no host was put back on a release it does not run), one of
/// `allowed`, and no lock. Returns each host's release.
#[track_caller]
fn every_host_back(fleet: &Fleet, allowed: &[&str], what: &str) -> Vec<String> {
    for (server, state) in admin_states(fleet) {
        assert_eq!(state, "0", "{what}: {server} is drained or in maintenance");
    }
    let mut releases = Vec::new();
    for host in names(fleet) {
        let state = host_state(fleet, &host, DEPLOY_TO);
        let current = state.current.unwrap_or_default();
        assert!(
            allowed.contains(&current.as_str()),
            "{what}: {host} is on {current}, not one of {allowed:?}"
        );
        let body = state.health.map(|h| h.1).unwrap_or_default();
        assert!(
            body.contains(&format!("release={current}")),
            "{what}: {host}'s current is {current}, but it serves {body:?}"
        );
        assert!(
            !fleet.exists(&host, &format!("{DEPLOY_TO}/.shipit/lock")),
            "{what}: {host} still locked"
        );
        releases.push(current);
    }
    releases
}

/// The `-v` line that announces `step` on `host`.
fn started(host: &str, step: &str) -> String {
    format!("{host:<8} {step:<12} $")
}

fn deploy_v1(project: &Project, fleet: &Fleet) -> String {
    project.set_version("v1");
    project.shipit(&["test", "deploy", "-q"]).success();
    host_state(fleet, "web1", DEPLOY_TO).current.unwrap()
}

/// The newest release on `host` (ids sort by time).
fn newest(fleet: &Fleet, host: &str) -> String {
    host_state(fleet, host, DEPLOY_TO)
        .releases
        .last()
        .cloned()
        .unwrap_or_default()
}

/// Sends `first`; after 7.5 s (GitHub Actions) or once the run says it is
/// stopping, `second`; then, like a CI runner, SIGKILL 2.5 s after that if
/// shipit is still running. Returns the run and how long it took to end
/// after the second signal.
fn cancel_like_a_runner(
    mut run: Running,
    first: &str,
    second: &str,
) -> (crate::support::shipit::Run, Duration) {
    run.signal(first);
    run.wait_for("stopping:", Duration::from_secs(10));
    run.signal(second);
    let sent = Instant::now();
    let ended = run.wait_exit(Duration::from_millis(2500));
    let took = sent.elapsed();
    if !ended {
        run.signal("KILL");
    }
    (run.finish(), took)
}

/// The scenario and every point around it: 4 hosts, batches of
/// 2, apps that take 2 s to boot, one SIGINT when batch 2 reaches a point
/// between its drain and its enable (found by the step's own `-v` line).
/// Hooks before and after the switch, and a restart that takes a second,
/// make each point a window rather than an instant.
#[test]
fn a_signal_at_every_point_between_drain_and_enable_puts_every_host_back() {
    let fleet = fleet(4);
    let extra = "[stages.test.app]\nrestart = \"sleep 1; bin/restart\"\n\
                 [stages.test.rollout]\nrolling_batch_size = 2\n\
                 [hooks]\nbefore_switch = [\"sleep 1\"]\nafter_switch = [\"sleep 1\"]\n";
    let project = Project::new(&config(&fleet, extra));
    let mut previous = vec![deploy_v1(&project, &fleet); 4];
    std::fs::write(project.path().join("dist/BOOT_DELAY"), "2").unwrap();
    let points = [
        ("drain", "during the drain"),
        ("before_switch", "after the drain, before the switch"),
        ("after_switch", "between the switch and the restart"),
        ("restart", "during the restart"),
        ("health", "during the health check"),
        ("enable", "during the enable"),
    ];
    for (n, (step, when)) in points.into_iter().enumerate() {
        project.set_version(&format!("v{}", n + 2));
        let run = no_request_fails(&fleet, when, || {
            let mut run = project.spawn(&["test", "deploy", "-v"]);
            run.wait_for(&started("web3", step), Duration::from_secs(90));
            run.signal("INT");
            run.finish()
        });
        run.code(130).stderr_has("interrupted");
        let new = newest(&fleet, "web1");
        let mut allowed: Vec<&str> = previous.iter().map(String::as_str).collect();
        allowed.push(&new);
        let now = every_host_back(&fleet, &allowed, when);
        // Batch 1 was done before the signal; batch 2 was not.
        assert_eq!(now[0], new, "{when}: {now:?}\n{run}");
        assert_eq!(now[1], new, "{when}: {now:?}\n{run}");
        if step == "after_switch" {
            // Switched, never restarted: current went back.
            assert_eq!(now[2], previous[2], "{when}: {now:?}\n{run}");
            run.stderr_has("switching current back");
        }
        if matches!(step, "restart" | "health" | "enable") {
            // Restarted: it finished its health check and enable.
            assert_eq!(now[2], new, "{when}: {now:?}\n{run}");
        }
        assert!(
            !run.stderr.contains("did not prove healthy"),
            "{when}: {run}"
        );
        previous = now;
    }
}

/// SIGHUP (a closed terminal, a dropped SSH session) stops a run like
/// SIGTERM: drained hosts go back, the lock is released, exit 130.
#[test]
fn sighup_mid_batch_puts_hosts_back_and_releases_the_lock() {
    let fleet = fleet(3);
    let extra = "[stages.test.app]\nrestart = \"sleep 1; bin/restart\"\n\
                 [stages.test.rollout]\nrolling_batch_size = 2\n";
    let project = Project::new(&config(&fleet, extra));
    let r1 = deploy_v1(&project, &fleet);
    project.set_version("v2");
    let run = no_request_fails(&fleet, "SIGHUP mid-batch", || {
        let mut run = project.spawn(&["test", "deploy", "-v"]);
        run.wait_for(&started("web2", "restart"), Duration::from_secs(60));
        run.signal("HUP");
        run.finish()
    });
    run.code(130)
        .stderr_has("stopping:")
        .stderr_has("interrupted");
    let new = newest(&fleet, "web1");
    let now = every_host_back(&fleet, &[&r1, &new], "SIGHUP");
    // web2 finished its running restart, health check and enable; web1,
    // a moment behind it, finished it too or went back before its
    // restart; web3 was never touched.
    assert_eq!(now[1], new, "{run}");
    assert_eq!(now[2], r1, "{run}");
}

/// A restart that hangs (a server started in the foreground). A second
/// signal, as GitHub Actions (SIGINT, then SIGTERM) or a user pressing
/// Ctrl-C twice sends it, stops the hanging command on the hosts, and
/// shipit puts the batch back (here `current` goes back: the app never
/// restarted) and releases the lock before a runner's SIGKILL 2.5 s later.
#[test]
fn a_second_signal_stops_a_hanging_restart_and_puts_hosts_back() {
    let fleet = fleet(3);
    // Only the new release hangs, before restarting anything.
    let extra = "[stages.test.app]\n\
                 restart = \"if [ -f HANG ]; then sleep 600; fi; bin/restart\"\n\
                 [stages.test.rollout]\nrolling_batch_size = 2\n";
    let project = Project::new(&config(&fleet, extra));
    let r1 = deploy_v1(&project, &fleet);
    std::fs::write(project.path().join("dist/HANG"), "").unwrap();
    for (first, second) in [("INT", "INT"), ("INT", "TERM")] {
        project.set_version(&format!("v-{first}-{second}"));
        let what = format!("SIG{first} then SIG{second} during a hanging restart");
        let (run, took) = no_request_fails(&fleet, &what, || {
            let mut run = project.spawn(&["test", "deploy", "-v"]);
            run.wait_for(&started("web2", "restart"), Duration::from_secs(60));
            cancel_like_a_runner(run, first, second)
        });
        println!("{what}: ended {took:?} after the second signal");
        run.code(130)
            .stderr_has("hurrying")
            .stderr_has("stopped while it ran")
            .stderr_has("so current points at")
            .stderr_has("putting it back");
        every_host_back(&fleet, &[&r1], &what);
        // The hanging commands were stopped on the hosts.
        for host in ["web1", "web2"] {
            wait_for(
                Duration::from_secs(10),
                &format!("{what}: the restart on {host} to be stopped"),
                || {
                    !fleet
                        .exec(host, "pgrep -f 'sleep 60[0]' >/dev/null")
                        .status
                        .success()
                },
            );
        }
    }
}

/// `restart = "... up"` without `-d` never returns: after
/// `app.restart_timeout` the host fails, the failure policy rolls it back
/// (the old release's restart returns), and every host serves the old
/// release again, in service.
#[test]
fn a_restart_that_never_returns_fails_after_restart_timeout_and_is_rolled_back() {
    let fleet = fleet(2);
    let extra = "[stages.test.app]\n\
                 restart = \"if [ -f HANG ]; then sleep 600; fi; bin/restart\"\n\
                 restart_timeout = \"2s\"\n";
    let project = Project::new(&config(&fleet, extra));
    let r1 = deploy_v1(&project, &fleet);
    std::fs::write(project.path().join("dist/HANG"), "").unwrap();
    project.set_version("v2");
    let run = no_request_fails(&fleet, "a restart that never returns", || {
        project.shipit(&["test", "deploy"])
    });
    run.code(4)
        .stderr_has("web1     restart      FAILED")
        .stderr_has("timed out after 2s (app.restart_timeout)")
        .stderr_has("rolled back");
    every_host_back(&fleet, &[&r1], "restart timeout");
    wait_for(
        Duration::from_secs(10),
        "the hanging restart on web1 to be stopped",
        || {
            !fleet
                .exec("web1", "pgrep -f 'sleep 60[0]' >/dev/null")
                .status
                .success()
        },
    );
}

/// A proxy in front of HAProxy's admin socket that passes every request
/// through, except the first `set server ... state ready` (an enable):
/// that connection it closes without an answer, as an HAProxy reloading
/// at that moment would.
struct DroppingProxy {
    path: PathBuf,
    dropped: Arc<AtomicUsize>,
    _dir: tempfile::TempDir,
}

impl DroppingProxy {
    fn start(real: PathBuf) -> DroppingProxy {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let dropped = Arc::new(AtomicUsize::new(0));
        let count = dropped.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(mut client) = client else { break };
                let mut request = Vec::new();
                if client.read_to_end(&mut request).is_err() {
                    continue;
                }
                let text = String::from_utf8_lossy(&request);
                if text.contains("state ready")
                    && count
                        .compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst)
                        .is_ok()
                {
                    drop(client);
                    continue;
                }
                let Ok(mut haproxy) = UnixStream::connect(&real) else {
                    continue;
                };
                let _ = haproxy.write_all(&request);
                let _ = haproxy.shutdown(std::net::Shutdown::Write);
                let mut answer = Vec::new();
                let _ = haproxy.read_to_end(&mut answer);
                let _ = client.write_all(&answer);
            }
        });
        DroppingProxy {
            path,
            dropped,
            _dir: dir,
        }
    }
}

/// HAProxy's admin socket drops the enable request of web1: shipit tries
/// it again within the step's timeout, web1 goes back into service, and
/// no request fails.
#[test]
fn an_admin_socket_that_drops_a_request_mid_enable_still_gets_the_host_back() {
    let fleet = fleet(2);
    let proxy = DroppingProxy::start(fleet.haproxy_socket());
    let project = Project::new(&config_at(&fleet, &proxy.path, ""));
    let r1 = deploy_v1(&project, &fleet);
    assert_eq!(proxy.dropped.load(Ordering::SeqCst), 1, "v1 had its drop");
    // Once more, with the drop during this deploy's first enable.
    proxy.dropped.store(0, Ordering::SeqCst);
    project.set_version("v2");
    let run = no_request_fails(&fleet, "a dropped enable request", || {
        project.shipit(&["test", "deploy"])
    });
    run.success();
    assert_eq!(
        proxy.dropped.load(Ordering::SeqCst),
        1,
        "one request dropped"
    );
    let r2 = host_state(&fleet, "web1", DEPLOY_TO).current.unwrap();
    assert_ne!(r1, r2);
    every_host_back(&fleet, &[&r2], "a dropped enable request");
}

/// A second signal while a restarted host's health check is still
/// counting its passes in a row: the wait is cut short, one look finds the
/// new release answering, and the host goes back in service on it.
#[test]
fn a_second_signal_during_a_health_check_puts_a_host_that_answers_back() {
    let fleet = fleet(2);
    let extra =
        "[stages.test.health]\nhealthy_threshold = 20\ninterval = \"500ms\"\ntimeout = \"30s\"\n";
    let project = Project::new(&config(&fleet, extra));
    let r1 = deploy_v1(&project, &fleet);
    project.set_version("v2");
    let (run, took) = no_request_fails(&fleet, "a second signal during a health check", || {
        let mut run = project.spawn(&["test", "deploy", "-v"]);
        run.wait_for(&started("web1", "health"), Duration::from_secs(60));
        cancel_like_a_runner(run, "INT", "INT")
    });
    println!("a second signal during a health check: ended {took:?} after it");
    run.code(130)
        .stderr_has("hurrying")
        .stderr_has("but it answers its health check for");
    let new = newest(&fleet, "web1");
    let now = every_host_back(&fleet, &[&r1, &new], "health cut short");
    assert_eq!(now, [new, r1], "{run}");
}
