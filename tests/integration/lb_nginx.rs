//! `driver = "nginx"` against Debian's nginx in the test fleet (on the
//! `lb` host over SSH, or in the test machine's namespace), in front of
//! real hosts whose app takes 2 s to boot, under the same load loop as the
//! HAProxy zero-downtime test (`zero_downtime::under_load_with`): nginx has
//! `proxy_next_upstream off`, so a request sent to a stopped app fails
//! visibly. The negative control (`driver = "none"`, same fleet, same
//! load) must lose requests.
//!
//! The load opens a connection per request. Every nginx reload (two per
//! host: drain and enable) closes the idle kept-alive client connections
//! of the old workers, and a request a client sends on one at that very
//! instant fails whatever the driver does (1 request in 72 reloads under
//! 8 kept-alive connections when measured; clients that retry a request
//! on a reused connection, as browsers, curl and Go do, do not see it).
//! That is nginx's, apart from the driver's work; docs/load-balancers.md
//! says so.
//!
//! Each run prints its counts and, from `--json` events, how long each
//! host's drain and enable took (`--nocapture` shows them).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::fleet::{At, Fleet, FleetSpec, Lb, wait_for};
use crate::support::load;
use crate::support::shipit::{DEPLOY_TO, Project, Run, host_state, standard_config};
use crate::zero_downtime::{
    BOOT_DELAY, assert_zero_downtime, config, under_load_with, versions_served,
};

const HOSTS: usize = 3;
/// `keep_alive` for the load: a connection per request (see above).
const NEW_CONNECTIONS: bool = false;

fn fleet(at: At, hosts: usize) -> Fleet {
    Fleet::start(FleetSpec {
        hosts,
        lb: Lb::Nginx(at),
        ..Default::default()
    })
}

fn names(fleet: &Fleet) -> Vec<String> {
    fleet.hosts().into_iter().map(|h| h.name).collect()
}

/// `[lb]` for the fleet's nginx, invoked as `nginx` (a command where nginx
/// runs), reached from `via`.
fn nginx_lb(fleet: &Fleet, nginx: &str, via: &str) -> String {
    format!(
        "[lb]\ndriver = \"nginx\"\nupstream_file = \"{}\"\nserver = \"{{address}}:8080\"\nnginx = \"{nginx}\"\nvia = \"{via}\"\n",
        fleet.nginx_upstream_file()
    )
}

fn via_lb(fleet: &Fleet) -> String {
    format!("root@{}", fleet.address("lb"))
}

/// The upstream file as nginx reads it.
fn upstream(fleet: &Fleet) -> String {
    std::fs::read_to_string(fleet.nginx_upstream_path()).expect("the upstream file")
}

/// Every host listed once and none marked down, and nginx sends requests
/// to every one of them.
#[track_caller]
fn assert_all_in_service(fleet: &Fleet) {
    let lines: Vec<String> = fleet
        .hosts()
        .iter()
        .map(|h| format!("server {}:8080;", h.address))
        .collect();
    assert_eq!(upstream(fleet), lines.join("\n") + "\n");
    let mut answered = BTreeMap::new();
    for _ in 0..4 * HOSTS {
        let (status, body) = load::get(&fleet.lb_url(), Duration::from_secs(5)).expect("nginx");
        assert_eq!(status, 200, "{body}");
        let host = body
            .split_whitespace()
            .nth(2)
            .unwrap_or_default()
            .to_string();
        *answered.entry(host).or_insert(0) += 1;
    }
    assert_eq!(
        answered.keys().cloned().collect::<Vec<_>>(),
        names(fleet),
        "every host answers through nginx: {answered:?}"
    );
}

/// Each host's drain and enable, in ms, from the run's `--json` events.
fn lb_times(run: &Run) -> BTreeMap<String, (u64, u64)> {
    let mut times: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for event in run.events() {
        if event["event"] != "step-finished" {
            continue;
        }
        let host = event["host"].as_str().unwrap_or_default().to_string();
        let ms = event["duration"].as_u64().unwrap_or_default();
        match event["step"].as_str() {
            Some("drain") => times.entry(host).or_default().0 += ms,
            Some("enable") => times.entry(host).or_default().1 += ms,
            _ => {}
        }
    }
    times
}

/// Prints drain + enable per batch (the slowest host of each).
fn print_lb_times(what: &str, run: &Run, batches: &[&[&str]]) {
    let times = lb_times(run);
    let per_batch: Vec<String> = batches
        .iter()
        .map(|batch| {
            let (drain, enable) = batch
                .iter()
                .filter_map(|h| times.get(*h))
                .fold((0, 0), |(d, e), (hd, he)| (d.max(*hd), e.max(*he)));
            format!(
                "{}: drain {drain} ms + enable {enable} ms = {} ms",
                batch.join("+"),
                drain + enable
            )
        })
        .collect();
    println!("{what}: {}", per_batch.join("; "));
}

#[test]
fn nginx_rolling_deploys_and_a_rollback_drop_no_request() {
    let fleet = fleet(At::Host, HOSTS);
    let lb = nginx_lb(&fleet, &fleet.nginx_cmd(), &via_lb(&fleet));
    let project = Project::new(&config(&fleet, &lb, false, ""));
    // v1 onto fresh hosts: no load yet (a request to a host without its app
    // would take that server out for nginx's fail_timeout).
    project.shipit(&["test", "deploy", "-q"]).success();
    assert_all_in_service(&fleet);

    project.write_config(&config(&fleet, &lb, true, ""));
    project.set_version("v2");
    let (run, report, finished) = under_load_with(
        &fleet,
        "nginx: deploy v2, batch size 1",
        NEW_CONNECTIONS,
        || project.shipit(&["test", "deploy", "--json"]),
    );
    run.success();
    let drain = format!(
        "nginx root@{}: drain {}:8080 in {}",
        fleet.address("lb"),
        fleet.address("web1"),
        fleet.nginx_upstream_file()
    );
    assert!(
        run.events()
            .iter()
            .any(|e| e["step"] == "drain" && e["action"] == drain.as_str()),
        "no step {drain:?}:\n{run}"
    );
    print_lb_times("nginx: deploy v2", &run, &[&["web1"], &["web2"], &["web3"]]);
    assert_zero_downtime(&report, finished, "v1", "v2");
    assert_all_in_service(&fleet);

    let (run, report, finished) = under_load_with(
        &fleet,
        "nginx: rollback to v1, batch size 1",
        NEW_CONNECTIONS,
        || project.shipit(&["test", "rollback", "--json"]),
    );
    run.success();
    print_lb_times("nginx: rollback", &run, &[&["web1"], &["web2"], &["web3"]]);
    assert_zero_downtime(&report, finished, "v2", "v1");
    assert_all_in_service(&fleet);

    // Batch size 2: web1 and web2 are drained at once. nginx is invoked
    // through a wrapper that records the upstream file at each reload.
    let dir = "/srv/nginx";
    fleet.write_file(
        "lb",
        &format!("{dir}/logging-nginx"),
        format!(
            "#!/bin/sh\ncase \" $* \" in *\" -s reload \"*) {{ echo ---; cat {}; }} >>{dir}/reloads.log ;; esac\nexec nginx \"$@\"\n",
            fleet.nginx_upstream_file()
        ),
    );
    fleet.exec_ok("lb", &format!("chmod +x {dir}/logging-nginx"));
    let logging = nginx_lb(
        &fleet,
        &fleet
            .nginx_cmd()
            .replacen("nginx", &format!("{dir}/logging-nginx"), 1),
        &via_lb(&fleet),
    );
    project.write_config(&config(
        &fleet,
        &logging,
        true,
        "[stages.test.rollout]\nrolling_batch_size = 2\n",
    ));
    project.set_version("v3");
    let (run, report, finished) = under_load_with(
        &fleet,
        "nginx: deploy v3, batch size 2",
        NEW_CONNECTIONS,
        || project.shipit(&["test", "deploy", "--json"]),
    );
    run.success().stderr_has("2 batches");
    print_lb_times("nginx: deploy v3", &run, &[&["web1", "web2"], &["web3"]]);
    assert_zero_downtime(&report, finished, "v1", "v3");
    assert_all_in_service(&fleet);
    assert_eq!(versions_served(&fleet), ["v3"; HOSTS]);

    // One edit per reload: each file nginx loaded differs from the one
    // before in one server's line only (an edit lost to a concurrent one
    // would show as a second line changing back), and both hosts of the
    // first batch were down at once.
    let log = std::fs::read_to_string(fleet.nginx_dir().join("reloads.log")).unwrap();
    let seen: Vec<Vec<String>> = log
        .split("---\n")
        .skip(1)
        .map(|f| f.lines().map(str::to_string).collect())
        .collect();
    assert_eq!(
        seen.len(),
        2 * HOSTS,
        "a reload per drain and enable:\n{log}"
    );
    let mut previous: Vec<String> = upstream(&fleet).lines().map(str::to_string).collect();
    for file in &seen {
        let changed = file.iter().zip(&previous).filter(|(a, b)| a != b).count();
        assert_eq!((file.len(), changed), (HOSTS, 1), "reloads:\n{log}");
        previous = file.clone();
    }
    let both =
        [fleet.address("web1"), fleet.address("web2")].map(|a| format!("server {a}:8080 down;"));
    assert!(
        seen.iter().any(|f| both.iter().all(|l| f.contains(l))),
        "web1 and web2 never down together:\n{log}"
    );
}

/// The negative control: the same roll through the same nginx without a
/// driver must lose requests, or the test above proves nothing.
#[test]
fn nginx_without_a_load_balancer_driver_requests_fail() {
    let fleet = fleet(At::Host, HOSTS);
    let none = "[lb]\ndriver = \"none\"\n";
    let project = Project::new(&config(&fleet, none, false, ""));
    project.shipit(&["test", "deploy", "-q"]).success();
    assert_all_in_service(&fleet);

    project.write_config(&config(&fleet, none, true, ""));
    project.set_version("v2");
    let (run, report, _) = under_load_with(
        &fleet,
        "nginx: deploy v2 with driver = \"none\"",
        NEW_CONNECTIONS,
        || project.shipit(&["test", "deploy"]),
    );
    run.success()
        .stderr_has("warning: no load balancer configured");
    let failed = report.failures().len();
    println!(
        "nginx negative control: {failed} of {} requests failed, e.g.\n{}",
        report.total(),
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

#[test]
fn nginx_preflight_refuses_a_server_missing_from_the_upstream_before_any_change() {
    let fleet = fleet(At::Local, HOSTS);
    let lb = nginx_lb(&fleet, &fleet.nginx_cmd(), "local");
    let project = Project::new(&standard_config(&fleet, &lb));
    project.shipit(&["test", "deploy", "-q"]).success();
    project.set_version("v2");
    project.shipit(&["test", "deploy", "-q"]).success();
    let hosts_now = || -> Vec<_> {
        names(&fleet)
            .iter()
            .map(|h| {
                let s = host_state(&fleet, h, DEPLOY_TO);
                (s.current, s.releases, s.log.len())
            })
            .collect()
    };
    let before = hosts_now();
    let file = fleet.nginx_upstream_file();
    let (web1, web2, web3) = (
        fleet.address("web1"),
        fleet.address("web2"),
        fleet.address("web3"),
    );

    // web3 leaves the upstream.
    let two = format!("server {web1}:8080;\nserver {web2}:8080;\n");
    std::fs::write(fleet.nginx_upstream_path(), &two).unwrap();
    fleet.nginx_reload();
    project.set_version("v3");
    let missing =
        format!("nginx local:{file}: no server {web3}:8080 (it has {web1}:8080, {web2}:8080)");
    project
        .shipit(&["test", "deploy"])
        .code(1)
        .stderr_has("not deploying; nothing was changed on any host:")
        .stderr_has(&missing);
    project
        .shipit(&["test", "rollback"])
        .code(1)
        .stderr_has("not rolling back; nothing was changed on any host:")
        .stderr_has(&missing);
    let check = project.shipit(&["test", "check", "-v"]);
    check.code(1).stdout_has(&missing).stdout_has(&format!(
        "nginx local: server {web1}:8080 in {file} (loaded by nginx): in service"
    ));
    assert_eq!(hosts_now(), before, "no host changed");
    assert_eq!(upstream(&fleet), two, "the upstream file is as it was");

    // A file nginx does not load is refused too, also when it lists every host.
    let all = format!("{two}server {web3}:8080;\n");
    std::fs::write(fleet.nginx_upstream_path(), &all).unwrap();
    fleet.nginx_reload();
    let elsewhere = fleet.nginx_dir().join("other.conf");
    std::fs::write(&elsewhere, &all).unwrap();
    project.write_config(&standard_config(
        &fleet,
        &lb.replace(&file, elsewhere.to_str().unwrap()),
    ));
    project
        .shipit(&["test", "deploy"])
        .code(1)
        .stderr_has(&format!(
            "nginx local:{}: nginx does not load this file",
            elsewhere.display()
        ));
    assert_eq!(hosts_now(), before, "no host changed");

    // A server an operator marked down is out of service: it gets the
    // release, and shipit leaves it down.
    let web2_down = all.replace(
        &format!("server {web2}:8080;"),
        &format!("server {web2}:8080 down;"),
    );
    std::fs::write(fleet.nginx_upstream_path(), &web2_down).unwrap();
    fleet.nginx_reload();
    project.write_config(&standard_config(
        &fleet,
        &format!("{lb}[stages.test.rollout]\nmax_unavailable = 2\n"),
    ));
    project
        .shipit(&["test", "deploy"])
        .success()
        .stderr_has("left in maint as found");
    assert_eq!(upstream(&fleet), web2_down);
    assert_eq!(versions_served(&fleet), ["v3"; HOSTS]);
}

/// A request held open longer than `drain_timeout` keeps an old nginx
/// worker alive: `drain_timeout_action = "fail"` stops and puts the host
/// back; `"warn"` restarts anyway, and the app's graceful stop still
/// finishes the request.
#[test]
fn nginx_drain_that_times_out_fails_or_warns() {
    let fleet = fleet(At::Local, 2);
    let lb = nginx_lb(&fleet, &fleet.nginx_cmd(), "local");
    let strict = format!("{lb}drain_timeout = \"1s\"\ndrain_timeout_action = \"fail\"\n");
    let project = Project::new(&standard_config(&fleet, &strict));
    project.shipit(&["test", "deploy", "-q"]).success();
    let r1 = host_state(&fleet, "web1", DEPLOY_TO).current;

    // One slow request, proxied by a worker that the drain's reload retires.
    let slow = |fleet: &Fleet| {
        let url = format!("{}/slow?seconds=5", fleet.lb_url());
        let request = std::thread::spawn(move || load::get(&url, Duration::from_secs(20)));
        // Connections to the fleet's apps from nginx's network namespace
        // (shared with other fleets when nginx runs locally: hence `dst`).
        let to_apps = format!(
            "ss -Htn state established '( dport = :8080 and dst {} )'",
            fleet.env("FLEET_SUBNET").expect("the fleet's subnet")
        );
        wait_for(
            Duration::from_secs(10),
            "nginx to hold the slow request",
            || {
                let out = fleet.lb_exec(&to_apps);
                String::from_utf8_lossy(&out.stdout).lines().count() == 1
            },
        );
        request
    };

    project.set_version("v2");
    let request = slow(&fleet);
    project
        .shipit(&["test", "deploy"])
        .code(1)
        .stderr_has("still running after 1s, so requests through nginx were still in flight")
        .stderr_has("(lb.drain_timeout_action = \"fail\")")
        .stderr_has("putting the host back: it still serves its previous release")
        .stderr_has("deploy failed on web1 (drain); no host was switched");
    assert_eq!(host_state(&fleet, "web1", DEPLOY_TO).current, r1);
    let (status, body) = request.join().unwrap().expect("the slow request completes");
    assert_eq!((status, body.split_whitespace().next()), (200, Some("v1")));
    assert_eq!(upstream(&fleet).matches(" down;").count(), 0, "put back");

    project.write_config(&standard_config(
        &fleet,
        &format!("{lb}drain_timeout = \"1s\"\n"),
    ));
    let request = slow(&fleet);
    project
        .shipit(&["test", "deploy"])
        .success()
        .stderr_has("restarting anyway (lb.drain_timeout_action = \"warn\")");
    // Restarted mid-request or not, the request finished (SIGTERM: the app
    // stops accepting and finishes what is in flight).
    let (status, body) = request.join().unwrap().expect("the slow request completes");
    assert_eq!((status, body.split_whitespace().next()), (200, Some("v1")));
    assert_eq!(upstream(&fleet).matches(" down;").count(), 0);
    assert_eq!(versions_served(&fleet), ["v2"; 2]);
}
