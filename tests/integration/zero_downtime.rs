//! Zero downtime, measured: a real HAProxy (no retries, no redispatch, so
//! a request sent to a stopped app fails visibly) in front of four real
//! hosts, a steady load of keep-alive requests through it for the whole
//! deploy or rollback, and every answer recorded (`support::load`).
//!
//! The apps take 2 s to boot (`APP_BOOT_DELAY`), so a host that is restarted
//! while still in rotation, or put back and the next one drained before
//! HAProxy sends it traffic again, costs requests. HAProxy's checks see
//! each restarting host DOWN, so every enable there is one that tells
//! HAProxy `health up` after shipit's own check passed. The negative control
//! (`driver = "none"`, same fleet shape and boot delay) must lose requests:
//! if it does not, the harness has lost its sensitivity and fails too.
//!
//! Each run prints its counts (`--nocapture` shows them).

use std::time::Duration;

use crate::support::fleet::{Fleet, FleetOptions, Haproxy, wait_for};
use crate::support::load::{self, Load, LoadOptions, Report};
use crate::support::shipit::{DEPLOY_TO, Project, Run, host_state, standard_config};

const HOSTS: usize = 4;
/// Requests per second through the load balancer, over `CONNECTIONS`.
const RATE: u32 = 200;
const CONNECTIONS: usize = 8;
/// Seconds each app sleeps before it listens.
pub(crate) const BOOT_DELAY: &str = "2";

fn fleet(haproxy: Haproxy) -> Fleet {
    Fleet::start(FleetOptions {
        hosts: HOSTS,
        haproxy,
        bastion: false,
    })
}

fn names(fleet: &Fleet) -> Vec<String> {
    fleet.hosts().into_iter().map(|h| h.name).collect()
}

/// `[lb]` for the fleet's own HAProxy, its admin socket reached directly.
fn local_haproxy(fleet: &Fleet) -> String {
    format!(
        "[lb]\ndriver = \"haproxy\"\nsocket = \"{}\"\nbackend = \"app\"\n",
        fleet.haproxy_socket().display()
    )
}

/// deploy.toml for the fleet, with `lb` as its `[lb]`. With `slow_boot`,
/// every app started from then on (whatever its release) sleeps
/// `BOOT_DELAY` seconds before it listens. The first deploy onto fresh
/// hosts skips that to save time: nothing is measured there.
pub(crate) fn config(fleet: &Fleet, lb: &str, slow_boot: bool, extra: &str) -> String {
    let slow = if slow_boot {
        format!("[stages.test.app]\nrestart = \"APP_BOOT_DELAY={BOOT_DELAY} bin/restart\"\n")
    } else {
        String::new()
    };
    standard_config(fleet, &format!("{lb}{slow}{extra}"))
}

/// Runs `shipit` while the load runs; returns the run, the load's report,
/// and when (on the load's clock) shipit finished. The load goes on for a
/// second after that, to see what the fleet serves at the end.
pub(crate) fn under_load(
    fleet: &Fleet,
    what: &str,
    shipit: impl FnOnce() -> Run,
) -> (Run, Report, Duration) {
    under_load_with(fleet, what, true, shipit)
}

/// [`under_load`], with `keep_alive` false opening a connection per request.
pub(crate) fn under_load_with(
    fleet: &Fleet,
    what: &str,
    keep_alive: bool,
    shipit: impl FnOnce() -> Run,
) -> (Run, Report, Duration) {
    let options = LoadOptions {
        connections: CONNECTIONS,
        rate: RATE,
        keep_alive,
        ..LoadOptions::default()
    };
    let load = Load::start_with(&fleet.lb_url(), options);
    // The stream is flowing (and answered) before shipit starts.
    std::thread::sleep(Duration::from_millis(500));
    let run = shipit();
    let finished = load.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let report = load.stop();
    println!("{what}: {}", report.summary());
    (run, report, finished)
}

/// No request failed, the old and the new version both answered while
/// shipit ran, only the new one once it was done, and the load really ran
/// throughout.
#[track_caller]
pub(crate) fn assert_zero_downtime(report: &Report, finished: Duration, old: &str, new: &str) {
    let failures = report.failures();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed:\n{}\n{}",
        failures.len(),
        report.total(),
        report.failure_list(20),
        report.timeline()
    );
    let during = report.versions(Duration::ZERO..finished);
    assert!(
        during.get(old).is_some_and(|n| *n > 0) && during.get(new).is_some_and(|n| *n > 0),
        "both {old} and {new} should answer during the roll: {during:?}\n{}",
        report.timeline()
    );
    let after = report.versions(finished..Duration::MAX);
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        [new],
        "only {new} once shipit is done: {after:?}"
    );
    assert_eq!(
        report.silent_seconds(),
        Vec::<u64>::new(),
        "seconds without a single request: the load stalled\n{}",
        report.timeline()
    );
}

/// HAProxy itself: every server UP, none left in drain or maintenance.
#[track_caller]
fn assert_all_in_service(fleet: &Fleet) {
    for host in names(fleet) {
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

/// Waits until HAProxy sees every server UP (after a deploy without an
/// LB driver, only HAProxy's own checks bring them back).
fn wait_all_up(fleet: &Fleet) {
    wait_for(
        Duration::from_secs(15),
        "every server UP in HAProxy",
        || {
            names(fleet)
                .iter()
                .all(|h| fleet.haproxy_server_status(h).as_deref() == Some("UP"))
        },
    );
}

pub(crate) fn versions_served(fleet: &Fleet) -> Vec<String> {
    names(fleet)
        .iter()
        .map(|h| {
            let (_, body) = host_state(fleet, h, DEPLOY_TO)
                .health
                .unwrap_or_else(|| panic!("{h} does not answer /health"));
            body.split("version=")
                .nth(1)
                .unwrap_or_default()
                .trim()
                .to_string()
        })
        .collect()
}

#[test]
fn rolling_deploys_and_a_rollback_drop_no_request() {
    let fleet = fleet(Haproxy::Local);
    let lb = local_haproxy(&fleet);
    let project = Project::new(&config(&fleet, &lb, false, ""));
    // v1 onto fresh hosts (HAProxy sees them all DOWN): no load yet.
    project.shipit(&["test", "deploy", "-q"]).success();
    assert_all_in_service(&fleet);

    project.write_config(&config(&fleet, &lb, true, ""));
    project.set_version("v2");
    let (run, report, finished) = under_load(&fleet, "deploy v2, batch size 1", || {
        project.shipit(&["test", "deploy"])
    });
    // A 2 s boot is longer than HAProxy's `fall` checks (2 × 500 ms): its
    // checks saw each host DOWN, and each enable told HAProxy `health up`
    // once shipit's own check had passed, before the next drain.
    run.success()
        .stderr_has("enable       ok (health up after shipit's check)");
    assert_zero_downtime(&report, finished, "v1", "v2");
    assert_all_in_service(&fleet);

    let (run, report, finished) = under_load(&fleet, "rollback to v1, batch size 1", || {
        project.shipit(&["test", "rollback"])
    });
    run.success();
    assert_zero_downtime(&report, finished, "v2", "v1");
    assert_all_in_service(&fleet);

    project.write_config(&config(
        &fleet,
        &lb,
        true,
        "[stages.test.rollout]\nrolling_batch_size = 2\n",
    ));
    project.set_version("v3");
    let (run, report, finished) = under_load(&fleet, "deploy v3, batch size 2", || {
        project.shipit(&["test", "deploy"])
    });
    run.success().stderr_has("2 batches");
    assert_zero_downtime(&report, finished, "v1", "v3");
    assert_all_in_service(&fleet);
    assert_eq!(versions_served(&fleet), ["v3"; HOSTS]);
}

/// The negative control: the same roll without a load balancer driver
/// must lose requests, or the load test above proves nothing.
#[test]
fn without_a_load_balancer_driver_requests_fail() {
    let fleet = fleet(Haproxy::Local);
    let none = "[lb]\ndriver = \"none\"\n";
    let project = Project::new(&config(&fleet, none, false, ""));
    project.shipit(&["test", "deploy", "-q"]).success();
    wait_all_up(&fleet);

    project.write_config(&config(&fleet, none, true, ""));
    project.set_version("v2");
    let (run, report, _) = under_load(&fleet, "deploy v2 with driver = \"none\"", || {
        project.shipit(&["test", "deploy"])
    });
    run.success()
        .stderr_has("warning: no load balancer configured");
    let failed = report.failures().len();
    println!(
        "negative control: {failed} failed requests, e.g.\n{}",
        report.failure_list(5)
    );
    assert!(
        failed > 0,
        "restarting every host in rotation with a {BOOT_DELAY} s boot lost no request: \
         the load test has lost its sensitivity\n{}",
        report.timeline()
    );
    assert_eq!(versions_served(&fleet), ["v2"; HOSTS]);
}

/// HAProxy on another machine: reached over SSH as `user@host` (UNIX
/// socket there), then through an inventory host (TCP admin socket).
#[test]
fn haproxy_reached_over_ssh_drops_no_request() {
    let fleet = fleet(Haproxy::Host);
    let lb = fleet
        .env("FLEET_LB_ADDR")
        .expect("the lb host's address")
        .to_string();
    let socket_on_lb = fleet
        .env("FLEET_HAPROXY_SOCKET_ON_LB")
        .expect("the admin socket's path on the lb")
        .to_string();
    let over_ssh = format!(
        "[lb]\ndriver = \"haproxy\"\nsocket = \"{socket_on_lb}\"\nvia = \"root@{lb}\"\nbackend = \"app\"\n"
    );
    let project = Project::new(&config(&fleet, &over_ssh, false, ""));
    project.shipit(&["test", "deploy", "-q"]).success();
    assert_all_in_service(&fleet);

    project.write_config(&config(&fleet, &over_ssh, true, ""));
    project.set_version("v2");
    let (run, report, finished) = under_load(&fleet, "deploy v2, HAProxy via root@lb", || {
        project.shipit(&["test", "deploy", "-v"])
    });
    run.success()
        .stderr_has(&format!("haproxy root@{lb}:{socket_on_lb}: drain app/web1"));
    assert_zero_downtime(&report, finished, "v1", "v2");
    assert_all_in_service(&fleet);

    // The lb's TCP admin socket, reached from web1 (socat on web1).
    let via_web1 = format!(
        "[lb]\ndriver = \"haproxy\"\nsocket = \"{lb}:9999\"\nvia = \"web1\"\nbackend = \"app\"\n"
    );
    project.write_config(&config(&fleet, &via_web1, true, ""));
    let (run, report, finished) = under_load(&fleet, "rollback to v1, HAProxy via web1", || {
        project.shipit(&["test", "rollback", "-v"])
    });
    run.success()
        .stderr_has(&format!("haproxy web1:{lb}:9999: enable app/web4"));
    assert_zero_downtime(&report, finished, "v2", "v1");
    assert_all_in_service(&fleet);
}

#[test]
fn a_server_missing_from_the_backend_is_refused_before_any_change() {
    let fleet = Fleet::start(FleetOptions {
        hosts: 3,
        haproxy: Haproxy::Local,
        bastion: false,
    });
    let project = Project::new(&standard_config(&fleet, &local_haproxy(&fleet)));
    project.shipit(&["test", "deploy", "-q"]).success();
    project.set_version("v2");
    project.shipit(&["test", "deploy", "-q"]).success();
    let before: Vec<_> = names(&fleet)
        .iter()
        .map(|h| {
            let s = host_state(&fleet, h, DEPLOY_TO);
            (s.current, s.releases, s.log.len())
        })
        .collect();

    // web3 leaves the backend.
    fleet.haproxy_delete_server("web3");

    project.set_version("v3");
    project
        .shipit(&["test", "deploy"])
        .code(1)
        .stderr_has("not deploying; nothing was changed on any host:")
        .stderr_has(&format!(
            "haproxy local:{}: backend app has no server web3 (it has web1, web2)",
            fleet.haproxy_socket().display()
        ));
    project
        .shipit(&["test", "rollback"])
        .code(1)
        .stderr_has("not rolling back; nothing was changed on any host:")
        .stderr_has("backend app has no server web3");
    let after: Vec<_> = names(&fleet)
        .iter()
        .map(|h| {
            let s = host_state(&fleet, h, DEPLOY_TO);
            (s.current, s.releases, s.log.len())
        })
        .collect();
    assert_eq!(before, after, "no host changed");
    for host in ["web1", "web2"] {
        assert_eq!(fleet.haproxy_server_status(host).as_deref(), Some("UP"));
    }
}

/// Long requests during a drain: `drain_timeout_action = "fail"` stops and
/// puts the host back; `"warn"` restarts anyway, and the app's graceful
/// SIGTERM handling still finishes the request.
#[test]
fn a_drain_that_times_out_fails_or_warns() {
    let fleet = Fleet::start(FleetOptions {
        hosts: 2,
        haproxy: Haproxy::Local,
        bastion: false,
    });
    let strict = format!(
        "{}drain_timeout = \"1s\"\ndrain_timeout_action = \"fail\"\n",
        local_haproxy(&fleet)
    );
    let project = Project::new(&standard_config(&fleet, &strict));
    project.shipit(&["test", "deploy", "-q"]).success();
    let r1 = host_state(&fleet, "web1", DEPLOY_TO).current;

    // Two slow requests: HAProxy's round robin gives each server one.
    let slow = |fleet: &Fleet| {
        let url = format!("{}/slow?seconds=4", fleet.lb_url());
        let requests: Vec<_> = (0..2)
            .map(|_| {
                let url = url.clone();
                let handle = std::thread::spawn(move || load::get(&url, Duration::from_secs(20)));
                std::thread::sleep(Duration::from_millis(100));
                handle
            })
            .collect();
        wait_for(Duration::from_secs(5), "a session on each server", || {
            let stat = fleet.haproxy_cmd("show stat -1 4 -1");
            stat.lines()
                .filter(|l| l.starts_with("app,web"))
                .all(|l| l.split(',').nth(4).is_some_and(|scur| scur != "0"))
        });
        requests
    };

    project.set_version("v2");
    let requests = slow(&fleet);
    project
        .shipit(&["test", "deploy"])
        .code(1)
        .stderr_has("still has 1 session(s) after 1s (lb.drain_timeout_action = \"fail\")")
        .stderr_has("putting the host back: it still serves its previous release")
        .stderr_has("deploy failed on web1 (drain); no host was switched");
    assert_eq!(host_state(&fleet, "web1", DEPLOY_TO).current, r1);
    for r in requests {
        let (status, body) = r.join().unwrap().expect("the slow request completes");
        assert_eq!((status, body.split_whitespace().next()), (200, Some("v1")));
    }
    assert_all_in_service(&fleet);

    project.write_config(&standard_config(
        &fleet,
        &format!("{}drain_timeout = \"1s\"\n", local_haproxy(&fleet)),
    ));
    let requests = slow(&fleet);
    project
        .shipit(&["test", "deploy"])
        .success()
        .stderr_has("restarting anyway (lb.drain_timeout_action = \"warn\")");
    // Restarted mid-request, the old app still finished it (SIGTERM: stop
    // accepting, finish what is in flight).
    for r in requests {
        let (status, body) = r.join().unwrap().expect("the slow request completes");
        assert_eq!((status, body.split_whitespace().next()), (200, Some("v1")));
    }
    assert_all_in_service(&fleet);
}
