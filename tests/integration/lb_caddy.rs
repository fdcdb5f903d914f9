//! The Caddy driver against Debian's Caddy 2.6 (fleet.sh `--caddy`): a
//! reverse_proxy handler `"@id": "app"` with round robin, active checks of
//! /health every 500 ms and no retries, so a request sent to a stopped app
//! fails visibly. Under the HAProxy test's load (200 requests/s over 8
//! keep-alive connections, every answer recorded) with apps that take 2 s
//! to boot, deploys and a rollback lose no request to the drain; the same
//! roll with `driver = "none"` must lose some, or the measurement proves
//! nothing. Each run prints its counts and how long each host's drain and
//! enable took (`--nocapture`).
//!
//! What Caddy 2.6 does to its clients at every config change, whoever
//! makes it: it reloads, opens a new listening socket (SO_REUSEPORT) and
//! closes the old one, which resets connections that socket had queued but
//! not yet accepted, and it closes the idle kept-alive connections of the
//! old config, so a request sent on one at that very moment gets no answer.
//! Measured on this fleet: 8 resets in 100 reloads under 200 new
//! connections/s. Those failures have no HTTP status (Caddy never answered)
//! and fall right at a config change; a request the drain lets through to a
//! stopped host is a 502 from Caddy. So the tests tell the two apart:
//! every failure with a status fails the test, and a failure without one
//! fails it too unless Caddy's log shows a config change within moments of
//! it. They are counted and printed (docs/load-balancers.md, "Caddy").

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::support::fleet::{At, Fleet, FleetSpec, Lb, http_get, wait_for};
use crate::support::load::{self, Load, Report, Sample};
use crate::support::shipit::{DEPLOY_TO, Project, Run, host_state, standard_config};

const RATE: u32 = 200;
const CONNECTIONS: usize = 8;
const BOOT_DELAY: &str = "2";

fn fleet(hosts: usize, at: At) -> Fleet {
    Fleet::start(FleetSpec {
        hosts,
        lb: Lb::Caddy(at),
        ..Default::default()
    })
}

fn names(fleet: &Fleet) -> Vec<String> {
    fleet.hosts().into_iter().map(|h| h.name).collect()
}

/// Every host's upstream, in fleet order.
fn dials(fleet: &Fleet) -> Vec<String> {
    fleet
        .hosts()
        .into_iter()
        .map(|h| format!("{}:8080", h.address))
        .collect()
}

/// `[lb]` for the fleet's Caddy, its admin API reached from here.
fn local_caddy(fleet: &Fleet) -> String {
    format!(
        "[lb]\ndriver = \"caddy\"\nadmin = \"{}\"\nroute_id = \"{}\"\nserver = \"{{address}}:8080\"\n",
        fleet.caddy_admin(),
        fleet.caddy_route_id()
    )
}

/// deploy.toml with `lb` as its `[lb]`; with `slow_boot` every app started
/// from then on sleeps `BOOT_DELAY` seconds before it listens.
fn config(fleet: &Fleet, lb: &str, slow_boot: bool, extra: &str) -> String {
    let slow = if slow_boot {
        format!("[stages.test.app]\nrestart = \"APP_BOOT_DELAY={BOOT_DELAY} bin/restart\"\n")
    } else {
        String::new()
    };
    standard_config(fleet, &format!("{lb}{slow}{extra}"))
}

/// A load run: its report, when (on its clock) shipit finished, and when
/// (on the wall clock) it started, to line its samples up with Caddy's log.
struct Loaded {
    report: Report,
    finished: Duration,
    started: SystemTime,
}

/// Runs `shipit` while the load runs. The load goes on for a second after,
/// to see what the fleet serves at the end.
fn under_load(fleet: &Fleet, what: &str, shipit: impl FnOnce() -> Run) -> (Run, Loaded) {
    let started = SystemTime::now();
    let load = Load::start(&fleet.lb_url(), CONNECTIONS, RATE);
    std::thread::sleep(Duration::from_millis(500));
    let run = shipit();
    let finished = load.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let report = load.stop();
    println!("{what}: {}", report.summary());
    (
        run,
        Loaded {
            report,
            finished,
            started,
        },
    )
}

/// When Caddy's config was changed (any admin API request that is not a
/// read), in seconds since the epoch, from its log.
fn config_changes(fleet: &Fleet) -> Vec<f64> {
    let dir = fleet.env("FLEET_CADDY_DIR").expect("Caddy's directory");
    let log = std::fs::read_to_string(format!("{dir}/caddy.log")).expect("Caddy's log");
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["logger"] == "admin.api" && e["msg"] == "received request")
        .filter(|e| e["method"].as_str().is_some_and(|m| m != "GET"))
        .filter_map(|e| e["ts"].as_f64())
        .collect()
}

/// A request Caddy never answered (reset, closed), within moments of a
/// config change: Caddy's reload, not a host taken out too late.
fn dropped_by_reload(sample: &Sample, started: SystemTime, changes: &[f64]) -> bool {
    let error = sample.outcome.as_ref().err().map_or("", String::as_str);
    let no_answer = sample.status.is_none()
        && (error.contains("reset") || error.contains("closed") || error.contains("Broken pipe"));
    let at = (started + sample.at)
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    no_answer && changes.iter().any(|c| at > c - 0.1 && at < c + 0.5)
}

/// No request was lost to the roll (see the module documentation for the
/// ones Caddy's reloads drop, which are counted), the old and the new
/// version both answered while shipit ran, only the new one once it was
/// done, and the load really ran throughout.
#[track_caller]
fn assert_zero_downtime(fleet: &Fleet, loaded: &Loaded, old: &str, new: &str) {
    let Loaded {
        report,
        finished,
        started,
    } = loaded;
    let finished = *finished;
    let changes = config_changes(fleet);
    let failures = report.failures();
    let (reloads, lost): (Vec<&Sample>, Vec<&Sample>) = failures
        .iter()
        .partition(|s| dropped_by_reload(s, *started, &changes));
    let list = |samples: &[&Sample]| {
        samples
            .iter()
            .take(20)
            .map(|s| {
                format!(
                    "  {:>7.3}s conn {}: {:?}",
                    s.at.as_secs_f64(),
                    s.connection,
                    s.outcome
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        lost.is_empty(),
        "{} of {} requests failed:\n{}\n{}",
        lost.len(),
        report.total(),
        list(&lost),
        report.timeline()
    );
    if !reloads.is_empty() {
        println!(
            "  {} request(s) got no answer at one of Caddy's config changes (its reload, not the drain):\n{}",
            reloads.len(),
            list(&reloads)
        );
    }
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

/// Waits until Caddy sends requests to every host (after a deploy without
/// a driver, only its active health checks bring them back).
fn wait_serving(fleet: &Fleet) {
    let url = format!("{}/", fleet.lb_url());
    let all = names(fleet);
    wait_for(
        Duration::from_secs(15),
        "Caddy serving from every host",
        || {
            let answered: std::collections::BTreeSet<String> = (0..3 * all.len())
                .map(|_| http_get(&url))
                .map(|a| match a {
                    Some((200, body)) => body.split_whitespace().nth(2).unwrap_or("").to_string(),
                    _ => String::new(),
                })
                .collect();
            all.iter().all(|h| answered.contains(h)) && !answered.contains("")
        },
    );
}

/// Caddy's handler lists every host, once.
#[track_caller]
fn assert_all_in_service(fleet: &Fleet) {
    let mut listed = fleet.caddy_upstreams();
    listed.sort();
    let mut all = dials(fleet);
    all.sort();
    assert_eq!(listed, all, "the handler's upstreams");
}

/// The upstreams shipit tracks (those it has taken out at least once).
fn tracked(fleet: &Fleet) -> Vec<String> {
    let (status, body) = fleet.caddy_api(
        "GET",
        &format!(
            "/config/apps/http/servers/shipit_tracked_{}/routes/0/handle/0/upstreams",
            fleet.caddy_route_id()
        ),
        None,
    );
    if status != 200 {
        return Vec::new();
    }
    let list: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let mut out: Vec<String> = list
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|u| u["dial"].as_str().map(str::to_string))
        .collect();
    out.sort();
    out
}

/// How long each host's drain and enable took, from the run's `--json`
/// events: `web1 drain 412 ms + enable 35 ms`.
fn lb_times(run: &Run) -> Vec<String> {
    let mut per_host: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    for e in run.events() {
        if e["event"] != "step-finished" {
            continue;
        }
        let host = e["host"].as_str().unwrap_or_default().to_string();
        let ms = e["duration"].as_u64().unwrap_or_default();
        match e["step"].as_str() {
            Some("drain") => per_host.entry(host).or_default().0 = ms,
            Some("enable") => per_host.entry(host).or_default().1 = ms,
            _ => {}
        }
    }
    per_host
        .into_iter()
        .map(|(h, (d, e))| format!("{h} drain {d} ms + enable {e} ms"))
        .collect()
}

fn versions_served(fleet: &Fleet) -> Vec<String> {
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

/// Watches Caddy's handler while a run goes on: the shortest upstream
/// list it had.
struct Watcher {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<String>>,
}

impl Watcher {
    fn start(fleet: &Fleet) -> Watcher {
        let url = format!(
            "{}/id/{}/upstreams",
            fleet.caddy_admin_url(),
            fleet.caddy_route_id()
        );
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut shortest: Option<Vec<String>> = None;
            while !flag.load(Ordering::Relaxed) {
                let listed = http_get(&url)
                    .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
                    .and_then(|v| {
                        v.as_array().map(|l| {
                            l.iter()
                                .filter_map(|u| u["dial"].as_str().map(str::to_string))
                                .collect::<Vec<_>>()
                        })
                    });
                if let Some(listed) = listed
                    && shortest.as_ref().is_none_or(|s| listed.len() < s.len())
                {
                    shortest = Some(listed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            shortest.unwrap_or_default()
        });
        Watcher { stop, thread }
    }

    fn stop(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("watcher")
    }
}

#[test]
fn rolling_deploys_and_a_rollback_through_caddy_drop_no_request() {
    let fleet = fleet(3, At::Local);
    let lb = local_caddy(&fleet);
    let project = Project::new(&config(&fleet, &lb, false, ""));
    project.shipit(&["test", "deploy", "-q"]).success();
    assert_all_in_service(&fleet);

    project.write_config(&config(&fleet, &lb, true, ""));
    project.set_version("v2");
    project
        .shipit(&["test", "deploy", "--dry-run"])
        .success()
        .stdout_has(&format!(
            "caddy local:{}: DELETE /id/app/upstreams/N ({}:8080; If-Match",
            fleet.caddy_admin(),
            fleet.address("web1")
        ));
    let (run, loaded) = under_load(&fleet, "caddy: deploy v2, batch size 1", || {
        project.shipit(&["test", "deploy", "--json"])
    });
    run.success();
    println!("  {}", lb_times(&run).join("\n  "));
    assert_zero_downtime(&fleet, &loaded, "v1", "v2");
    assert_all_in_service(&fleet);

    let (run, loaded) = under_load(&fleet, "caddy: rollback to v1, batch size 1", || {
        project.shipit(&["test", "rollback", "--json"])
    });
    run.success();
    println!("  {}", lb_times(&run).join("\n  "));
    assert_zero_downtime(&fleet, &loaded, "v2", "v1");
    assert_all_in_service(&fleet);

    // Two hosts drained at once: both edits stay (the handler is down to
    // the third host alone for a while), and both come back.
    project.write_config(&config(
        &fleet,
        &lb,
        true,
        "[stages.test.rollout]\nrolling_batch_size = 2\n",
    ));
    project.set_version("v3");
    let watcher = Watcher::start(&fleet);
    let (run, loaded) = under_load(&fleet, "caddy: deploy v3, batch size 2", || {
        project.shipit(&["test", "deploy", "--json"])
    });
    let shortest = watcher.stop();
    run.success().stderr_has("2 batches");
    println!("  {}", lb_times(&run).join("\n  "));
    assert_zero_downtime(&fleet, &loaded, "v1", "v3");
    assert_eq!(
        shortest,
        [dials(&fleet)[2].clone()],
        "with web1 and web2 out at once, the handler lists web3 alone"
    );
    assert_all_in_service(&fleet);
    let mut all = dials(&fleet);
    all.sort();
    assert_eq!(
        tracked(&fleet),
        all,
        "every host is tracked once it was out"
    );
    assert_eq!(versions_served(&fleet), ["v3"; 3]);

    // `check` finds each host in the handler.
    let check = project.shipit(&["test", "check", "-v"]);
    check.success();
    for dial in dials(&fleet) {
        check.stdout_has(&format!("@id app lists {dial}"));
    }
}

/// The negative control: the same roll without a load balancer driver
/// must lose requests, or the test above proves nothing.
#[test]
fn through_caddy_without_a_driver_requests_fail() {
    let fleet = fleet(3, At::Local);
    let none = "[lb]\ndriver = \"none\"\n";
    let project = Project::new(&config(&fleet, none, false, ""));
    project.shipit(&["test", "deploy", "-q"]).success();
    wait_serving(&fleet);

    project.write_config(&config(&fleet, none, true, ""));
    project.set_version("v2");
    let (run, loaded) = under_load(&fleet, "caddy: deploy v2 with driver = \"none\"", || {
        project.shipit(&["test", "deploy"])
    });
    run.success()
        .stderr_has("warning: no load balancer configured");
    let report = &loaded.report;
    // The kind the drain prevents: Caddy answered, with an error.
    let failed = report
        .failures()
        .iter()
        .filter(|s| s.status.is_some())
        .count();
    println!(
        "negative control (caddy): {failed} requests answered with an error ({} failed in all), e.g.\n{}",
        report.failures().len(),
        report.failure_list(5)
    );
    assert!(
        failed > 0,
        "restarting every host in rotation with a {BOOT_DELAY} s boot lost no request: \
         the load test has lost its sensitivity\n{}",
        report.timeline()
    );
    assert_eq!(versions_served(&fleet), ["v2"; 3]);
}

/// Caddy on another machine: its admin API (localhost:2019 there) reached
/// over SSH, the requests carried by bash on that machine.
#[test]
fn caddy_reached_over_ssh_drops_no_request() {
    let fleet = fleet(2, At::Host);
    let lb = fleet
        .env("FLEET_LB_ADDR")
        .expect("the lb host's address")
        .to_string();
    let over_ssh = format!(
        "[lb]\ndriver = \"caddy\"\nvia = \"root@{lb}\"\nroute_id = \"app\"\nserver = \"{{address}}:8080\"\n"
    );
    let project = Project::new(&config(&fleet, &over_ssh, false, ""));
    project.shipit(&["test", "deploy", "-q"]).success();
    assert_all_in_service(&fleet);

    project.write_config(&config(&fleet, &over_ssh, true, ""));
    project.set_version("v2");
    let (run, loaded) = under_load(&fleet, "caddy via root@lb: deploy v2", || {
        project.shipit(&["test", "deploy", "-v"])
    });
    run.success().stderr_has(&format!(
        "caddy root@{lb}:localhost:2019: drain app/{}:8080",
        fleet.address("web1")
    ));
    assert_zero_downtime(&fleet, &loaded, "v1", "v2");
    assert_all_in_service(&fleet);
}

#[test]
fn an_upstream_missing_from_the_handler_is_refused_before_any_change() {
    let fleet = fleet(3, At::Local);
    // The apps run (deployed without a load balancer driver); shipit has
    // never taken a host out of Caddy, so it tracks none.
    let project = Project::new(&standard_config(&fleet, "[lb]\ndriver = \"none\"\n"));
    project.shipit(&["test", "deploy", "-q"]).success();
    project.write_config(&standard_config(&fleet, &local_caddy(&fleet)));
    let before: Vec<_> = names(&fleet)
        .iter()
        .map(|h| {
            let s = host_state(&fleet, h, DEPLOY_TO);
            (s.current, s.releases, s.log.len())
        })
        .collect();

    // web3 leaves the handler: Caddy does not know it any more.
    let dials = dials(&fleet);
    let index = fleet
        .caddy_upstreams()
        .iter()
        .position(|d| *d == dials[2])
        .expect("web3 listed");
    let (status, body) = fleet.caddy_api("DELETE", &format!("/id/app/upstreams/{index}"), None);
    assert_eq!(status, 200, "{body}");

    project.set_version("v3");
    let problem = format!(
        "caddy local:{}: @id app has no upstream {} (it has {}, {})",
        fleet.caddy_admin(),
        dials[2],
        dials[0],
        dials[1]
    );
    project
        .shipit(&["test", "deploy"])
        .code(1)
        .stderr_has("not deploying; nothing was changed on any host:")
        .stderr_has(&problem);
    project
        .shipit(&["test", "rollback"])
        .code(1)
        .stderr_has("not rolling back; nothing was changed on any host:")
        .stderr_has(&problem);
    project.shipit(&["test", "check"]).stdout_has(&problem);
    let after: Vec<_> = names(&fleet)
        .iter()
        .map(|h| {
            let s = host_state(&fleet, h, DEPLOY_TO);
            (s.current, s.releases, s.log.len())
        })
        .collect();
    assert_eq!(before, after, "no host changed");
    assert_eq!(fleet.caddy_upstreams(), dials[..2], "Caddy unchanged");
    assert_eq!(tracked(&fleet), Vec::<String>::new(), "nothing tracked");

    // Back in the handler, web3 is deployed like the others, and tracked
    // from then on. An operator who takes it out of the handler now takes
    // it out of service: it gets the next release but stays out.
    let body = format!("{{\"dial\": \"{}\"}}", dials[2]);
    let (status, answer) = fleet.caddy_api("POST", "/id/app/upstreams", Some(&body));
    assert_eq!(status, 200, "{answer}");
    project.shipit(&["test", "deploy", "-q"]).success();
    let index = fleet
        .caddy_upstreams()
        .iter()
        .position(|d| *d == dials[2])
        .unwrap();
    let (status, answer) = fleet.caddy_api("DELETE", &format!("/id/app/upstreams/{index}"), None);
    assert_eq!(status, 200, "{answer}");
    project.write_config(&standard_config(
        &fleet,
        &format!(
            "{}[stages.test.rollout]\nmax_unavailable = 2\n",
            local_caddy(&fleet)
        ),
    ));
    project.set_version("v4");
    project
        .shipit(&["test", "deploy"])
        .success()
        .stderr_has("left in maint as found");
    assert_eq!(versions_served(&fleet), ["v4"; 3]);
    assert_eq!(fleet.caddy_upstreams(), dials[..2], "web3 left out");
}

/// Long requests during a drain: `drain_timeout_action = "fail"` stops and
/// puts the host back; `"warn"` restarts anyway, and the app's graceful
/// SIGTERM handling still finishes the request.
#[test]
fn a_drain_that_times_out_fails_or_warns() {
    let fleet = fleet(2, At::Local);
    let strict = format!(
        "{}drain_timeout = \"1s\"\ndrain_timeout_action = \"fail\"\n",
        local_caddy(&fleet)
    );
    let project = Project::new(&standard_config(&fleet, &strict));
    project.shipit(&["test", "deploy", "-q"]).success();
    let r1 = host_state(&fleet, "web1", DEPLOY_TO).current;

    // Two slow requests: round robin gives each upstream one.
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
        wait_for(
            Duration::from_secs(5),
            "a request in flight to each host",
            || {
                let stats = fleet.caddy_upstream_stats();
                stats.len() == 2 && stats.iter().all(|u| u.num_requests > 0)
            },
        );
        requests
    };

    project.set_version("v2");
    let requests = slow(&fleet);
    project
        .shipit(&["test", "deploy"])
        .code(1)
        .stderr_has(&format!(
            "{}:8080 still has 1 request(s) in flight after 1s (lb.drain_timeout_action = \"fail\")",
            fleet.address("web1")
        ))
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
        &format!("{}drain_timeout = \"1s\"\n", local_caddy(&fleet)),
    ));
    let requests = slow(&fleet);
    project
        .shipit(&["test", "deploy"])
        .success()
        .stderr_has("restarting anyway (lb.drain_timeout_action = \"warn\")");
    for r in requests {
        let (status, body) = r.join().unwrap().expect("the slow request completes");
        assert_eq!((status, body.split_whitespace().next()), (200, Some("v1")));
    }
    assert_all_in_service(&fleet);
}
