//! Roles with their own pipeline, and health checks that mean it, on real
//! fleets: web servers behind a real HAProxy and a worker outside it (the
//! demo app's worker mode), checks from the host, consecutive passes,
//! min_healthy_time and `{revision}`.
//!
//! Each misbehaving release is the demo app with a knob file in it
//! (demo/app/README.md), so the same test fleet runs a good and a bad
//! release side by side; every failure test has the control that shows the
//! key in question is what catches it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::behind_haproxy;
use crate::support::fleet::{Fleet, FleetOptions, Haproxy, http_get, wait_for};
use crate::support::load::Load;
use crate::support::shipit::{DEPLOY_TO, Project, Run, host_state};

fn fleet(hosts: usize, haproxy: Haproxy) -> Fleet {
    Fleet::start(FleetOptions {
        hosts,
        haproxy,
        bastion: false,
    })
}

/// deploy.toml for the demo app on `hosts` (TOML host entries), with
/// `extra` appended.
fn config(fleet: &Fleet, hosts: &[String], extra: &str) -> String {
    format!(
        r#"[app]
name = "demo"
deploy_to = "{DEPLOY_TO}"
source = "dist"
keep_releases = 3
shared_dirs = ["log"]
restart = "bin/restart"

[ssh]
user = "root"
identity_file = "{identity}"
known_hosts = "{known_hosts}"
config = false

[stages.test]
hosts = [
  {hosts}
]

{extra}
"#,
        identity = fleet.identity().display(),
        known_hosts = fleet.known_hosts().display(),
        hosts = hosts.join(",\n  "),
    )
}

fn entry(fleet: &Fleet, name: &str, host: &str, roles: &[&str]) -> String {
    let roles: Vec<String> = roles.iter().map(|r| format!("{r:?}")).collect();
    format!(
        "{{ name = \"{name}\", address = \"{}\", roles = [{}] }}",
        fleet.address(host),
        roles.join(", ")
    )
}

fn current(fleet: &Fleet, host: &str) -> Option<String> {
    host_state(fleet, host, DEPLOY_TO).current
}

/// The lstat mtime of `current` on `host` (when it was last switched), as
/// the host's clock recorded it.
fn switched_at(fleet: &Fleet, host: &str) -> f64 {
    let out = fleet.exec_ok(host, &format!("stat -c %.9Y {DEPLOY_TO}/current"));
    out.trim()
        .parse()
        .unwrap_or_else(|e| panic!("{host}: stat said {out:?}: {e}"))
}

/// `srv_admin_state` per server of backend `app` (0: ready; else drained
/// or in maintenance).
fn admin_states(fleet: &Fleet) -> BTreeMap<String, String> {
    behind_haproxy::admin_states(fleet).into_iter().collect()
}

/// Samples HAProxy's runtime API every 50 ms while a run goes on.
struct Sampler {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<BTreeMap<String, String>>>>,
    thread: std::thread::JoinHandle<()>,
}

impl Sampler {
    fn start(fleet: &Fleet) -> Sampler {
        let socket = fleet.haproxy_socket();
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, samples) = (stop.clone(), samples.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(states) = sample(&socket) {
                        samples.lock().unwrap().push(states);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        Sampler {
            stop,
            samples,
            thread,
        }
    }

    fn stop(self) -> Vec<BTreeMap<String, String>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
        Arc::try_unwrap(self.samples).unwrap().into_inner().unwrap()
    }
}

/// One `show servers state app` on the admin socket: admin state by server.
fn sample(socket: &std::path::Path) -> Option<BTreeMap<String, String>> {
    use std::io::{Read, Write};
    let mut sock = std::os::unix::net::UnixStream::connect(socket).ok()?;
    sock.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    sock.write_all(b"show servers state app\n").ok()?;
    let mut answer = String::new();
    sock.read_to_string(&mut answer).ok()?;
    let mut lines = answer.lines().skip(1);
    let header: Vec<&str> = lines.next()?.trim_start_matches("# ").split(' ').collect();
    let name = header.iter().position(|h| *h == "srv_name")?;
    let admin = header.iter().position(|h| *h == "srv_admin_state")?;
    Some(
        lines
            .filter(|l| !l.trim().is_empty())
            .filter_map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                Some((f.get(name)?.to_string(), f.get(admin)?.to_string()))
            })
            .collect(),
    )
}

/// The JSON events of `host`'s steps, in order: (event, step, action or result).
fn steps_of(run: &Run, host: &str) -> Vec<(String, String, String)> {
    run.events()
        .into_iter()
        .filter(|e| {
            e["host"] == host && (e["event"] == "step-started" || e["event"] == "step-finished")
        })
        .map(|e| {
            let what = e["action"]
                .as_str()
                .or(e["result"].as_str())
                .unwrap_or_default()
                .to_string();
            (
                e["event"].as_str().unwrap().to_string(),
                e["step"].as_str().unwrap().to_string(),
                what,
            )
        })
        .collect()
}

/// Index in the event stream of the first event matching `f`.
fn position(run: &Run, f: impl Fn(&serde_json::Value) -> bool) -> usize {
    run.events()
        .iter()
        .position(f)
        .unwrap_or_else(|| panic!("no such event:\n{run}"))
}

const WEBS: [&str; 3] = ["web1", "web2", "web3"];

/// Three web servers in HAProxy's backend and a worker (the fleet's web4,
/// named jobs1) that is not in it: its server is deleted from the backend.
fn web_and_worker(extra: &str) -> (Fleet, Project) {
    let fleet = fleet(4, Haproxy::Local);
    fleet.haproxy_delete_server("web4");
    assert!(!admin_states(&fleet).contains_key("web4"));
    let project = Project::new(&web_and_worker_config(&fleet, extra));
    (fleet, project)
}

/// The web servers with the stage's settings, the worker with its role's.
fn web_and_worker_config(fleet: &Fleet, extra: &str) -> String {
    let mut hosts: Vec<String> = WEBS.iter().map(|h| entry(fleet, h, h, &["web"])).collect();
    hosts.push(entry(fleet, "jobs1", "web4", &["worker"]));
    let roles = format!(
        r#"[health]
url = "http://{{address}}:8080/health"
expect_body = "release={{release}}"
timeout = "10s"
interval = "200ms"

[lb]
driver = "haproxy"
socket = "{socket}"
backend = "app"

[roles.worker.app]
restart = "APP_MODE=worker bin/restart"

[roles.worker.lb]
driver = "none"

[roles.worker.health]
type = "command"
run = "./app.py worker-health 3 release={{release}}"
timeout = "6s"

{extra}
"#,
        socket = fleet.haproxy_socket().display()
    );
    config(fleet, &hosts, &roles)
}

/// Web servers that take a second to boot (the worker keeps its role's
/// restart: a role's key wins over a stage's).
const SLOW_WEB: &str = "[stages.test.app]\nrestart = \"APP_BOOT_DELAY=1 bin/restart\"\n";

fn wait_webs_up(fleet: &Fleet) {
    for host in WEBS {
        wait_for(
            Duration::from_secs(15),
            &format!("HAProxy to see {host} UP"),
            || fleet.haproxy_server_status(host).as_deref() == Some("UP"),
        );
    }
}

/// The worker's heartbeat, as its own process last wrote it.
fn heartbeat(fleet: &Fleet) -> String {
    fleet
        .read_file("web4", &format!("{DEPLOY_TO}/shared/worker.heartbeat"))
        .unwrap_or_default()
}

#[test]
fn a_web_and_worker_fleet_rolls_each_role_its_own_way() {
    const ORDER: &str = "[rollout]\nrole_order = [\"web\", \"worker\"]\n";
    let (fleet, project) = web_and_worker(ORDER);
    // The worker is in no backend: the load balancer preflight passes all
    // the same, because its role has no load balancer.
    project.shipit(&["test", "deploy", "-q"]).success();
    wait_webs_up(&fleet);
    let r1 = current(&fleet, "web1").unwrap();
    assert!(
        heartbeat(&fleet).contains(&format!("release={r1}")),
        "{}",
        heartbeat(&fleet)
    );

    project.write_config(&web_and_worker_config(
        &fleet,
        &format!("{ORDER}{SLOW_WEB}"),
    ));
    project.set_version("v2");
    // Under load, not one request failed, and the load really ran.
    let (run, samples) = behind_haproxy::no_request_fails(&fleet, "roles, deploy v2", || {
        let sampler = Sampler::start(&fleet);
        let run = project.shipit(&["test", "deploy", "--json"]);
        (run, sampler.stop())
    });
    run.success();
    let r2 = current(&fleet, "web4").unwrap();
    assert_ne!(r1, r2);

    // The runtime API, sampled throughout: each web server was drained in
    // turn, never two at once, and the worker never appeared at all.
    assert!(samples.len() > 10, "too few samples: {}", samples.len());
    for host in WEBS {
        assert!(
            samples
                .iter()
                .any(|s| s.get(host).is_some_and(|a| a != "0")),
            "{host} was never seen drained: the sampling would miss a drain"
        );
    }
    for s in &samples {
        assert!(
            !s.contains_key("web4"),
            "the worker showed up in the backend: {s:?}"
        );
        let out = s.values().filter(|a| *a != "0").count();
        assert!(out <= 1, "more than one web server out at once: {s:?}");
    }
    assert!(
        admin_states(&fleet).values().all(|a| a == "0"),
        "a web server was left drained"
    );

    // The worker ran its own pipeline: no drain or enable, its own restart
    // and its command health check, which passed on its new heartbeat.
    let worker = steps_of(&run, "jobs1");
    let kinds: Vec<&str> = worker
        .iter()
        .filter(|(e, _, _)| e == "step-finished")
        .map(|(_, s, _)| s.as_str())
        .collect();
    assert_eq!(
        kinds,
        [
            "upload",
            "link-shared",
            "finish",
            "switch",
            "restart",
            "health",
            "cleanup"
        ]
    );
    let action = |step: &str| -> String {
        worker
            .iter()
            .find(|(e, s, _)| e == "step-started" && s == step)
            .map(|(_, _, a)| a.clone())
            .unwrap()
    };
    assert!(
        action("restart").ends_with("sh -c 'APP_MODE=worker bin/restart'"),
        "{}",
        action("restart")
    );
    assert_eq!(
        action("health"),
        format!("`./app.py worker-health 3 release={r2}`")
    );
    assert!(
        heartbeat(&fleet).contains(&format!("release={r2}")),
        "{}",
        heartbeat(&fleet)
    );
    let web = steps_of(&run, "web1");
    assert!(web.iter().any(|(_, s, _)| s == "drain") && web.iter().any(|(_, s, _)| s == "enable"));

    // role_order: the worker switched after every web server was back, as
    // the event stream and the hosts' own clocks say.
    let worker_switch = position(&run, |e| {
        e["event"] == "step-started" && e["host"] == "jobs1" && e["step"] == "switch"
    });
    for host in WEBS {
        let enabled = position(&run, |e| {
            e["event"] == "step-finished" && e["host"] == host && e["step"] == "enable"
        });
        assert!(
            enabled < worker_switch,
            "{host} was enabled after the worker switched"
        );
        assert!(
            switched_at(&fleet, host) < switched_at(&fleet, "web4"),
            "{host} switched after the worker"
        );
    }

    // The negative control: the same roll with the web servers' load
    // balancer turned off loses requests, so the load above could see it.
    wait_webs_up(&fleet);
    let unbalanced = format!("{ORDER}{SLOW_WEB}[stages.test.lb]\ndriver = \"none\"\n");
    project.write_config(&web_and_worker_config(&fleet, &unbalanced));
    project.set_version("v3");
    let load = Load::start(&fleet.lb_url(), 4, 100);
    std::thread::sleep(Duration::from_millis(300));
    project.shipit(&["test", "deploy", "-q"]).success();
    std::thread::sleep(Duration::from_millis(500));
    let report = load.stop();
    println!("roles, deploy v3 without draining: {}", report.summary());
    assert!(
        !report.failures().is_empty(),
        "restarting web servers without draining lost no request: the load cannot tell\n{}",
        report.timeline()
    );
}

#[test]
fn a_worker_whose_health_check_fails_rolls_the_web_servers_back_too() {
    let (fleet, project) = web_and_worker("[rollout]\nrole_order = [\"web\", \"worker\"]\n");
    project.shipit(&["test", "deploy", "-q"]).success();
    wait_webs_up(&fleet);
    let r1 = current(&fleet, "web1").unwrap();

    project.write_config(&web_and_worker_config(
        &fleet,
        &format!("[rollout]\nrole_order = [\"web\", \"worker\"]\n{SLOW_WEB}"),
    ));
    // v2's worker gets stuck: it writes no heartbeat, so its check fails.
    fleet.write_file("web4", &format!("{DEPLOY_TO}/shared/health-fail"), "v2");
    project.set_version("v2");
    let load = Load::start(&fleet.lb_url(), 4, 100);
    std::thread::sleep(Duration::from_millis(300));
    let run = project.shipit(&["test", "deploy"]);
    std::thread::sleep(Duration::from_millis(500));
    let report = load.stop();
    println!("worker fails: {}", report.summary());
    run.code(4)
        .stderr_has("jobs1: health failed:\n  not healthy after 6s")
        .stderr_has("last run of `./app.py worker-health 3 release=");

    // Every web server switched earlier in the run is back on v1, and
    // serving: the failure policy spans the roles.
    for host in WEBS.iter().copied().chain(["web4"]) {
        assert_eq!(
            current(&fleet, host).as_deref(),
            Some(r1.as_str()),
            "{host}"
        );
    }
    for host in WEBS {
        let (_, body) = host_state(&fleet, host, DEPLOY_TO).health.unwrap();
        assert!(body.contains(&format!("release={r1}")), "{host}: {body}");
    }
    assert!(
        admin_states(&fleet).values().all(|a| a == "0"),
        "a web server was left drained"
    );
    assert!(report.failures().is_empty(), "{}", report.failure_list(10));
    let bad = host_state(&fleet, "web1", DEPLOY_TO).bad;
    assert_eq!(bad.len(), 1, "the new release is marked bad: {bad:?}");
}

/// A release whose /health passes for a moment after start and then
/// answers 503 for good (the demo app's HEALTHY_FOR).
const HEALTHY_FOR: &str = "1.5";

fn behind_haproxy(fleet: &Fleet, extra: &str) -> Project {
    Project::new(&haproxy_config(fleet, extra))
}

/// Every host of the fleet behind its HAProxy, health checked on /health,
/// `extra` added to `[health]`.
fn haproxy_config(fleet: &Fleet, extra: &str) -> String {
    let hosts: Vec<String> = fleet
        .hosts()
        .iter()
        .map(|h| entry(fleet, &h.name, &h.name, &[]))
        .collect();
    let settings = format!(
        r#"[health]
url = "http://{{address}}:8080/health"
expect_body = "release={{release}}"
timeout = "10s"
interval = "200ms"
{extra}

[lb]
driver = "haproxy"
socket = "{}"
backend = "app"
"#,
        fleet.haproxy_socket().display()
    );
    config(fleet, &hosts, &settings)
}

#[test]
fn min_healthy_time_catches_a_release_that_turns_unhealthy() {
    let fleet = fleet(3, Haproxy::Local);
    let project = behind_haproxy(&fleet, "min_healthy_time = \"8s\"");
    project.shipit(&["test", "deploy", "-q"]).success();
    for h in ["web1", "web2", "web3"] {
        wait_for(Duration::from_secs(15), &format!("{h} UP"), || {
            fleet.haproxy_server_status(h).as_deref() == Some("UP")
        });
    }
    let r1 = current(&fleet, "web1").unwrap();

    std::fs::write(project.path().join("dist/HEALTHY_FOR"), HEALTHY_FOR).unwrap();
    project.set_version("v2");
    let run = project.shipit(&["test", "deploy", "--json"]);
    println!("min_healthy_time, v2:\n{}", run.stderr);
    run.code(4)
        .stderr_has("within health.min_healthy_time (8s)")
        .stderr_has("FAILED at min_healthy_time");
    // Caught on the first batch: web2 and web3 were never switched.
    for h in ["web2", "web3"] {
        let steps = steps_of(&run, h);
        assert!(
            !steps.iter().any(|(_, s, _)| s == "drain" || s == "switch"),
            "{h} was touched: {steps:?}"
        );
    }
    for h in ["web1", "web2", "web3"] {
        assert_eq!(current(&fleet, h).as_deref(), Some(r1.as_str()), "{h}");
    }
    // Rolled back and nothing left drained.
    assert!(
        admin_states(&fleet).values().all(|a| a == "0"),
        "{:?}",
        admin_states(&fleet)
    );
    let (_, body) = host_state(&fleet, "web1", DEPLOY_TO).health.unwrap();
    assert!(body.contains(&format!("release={r1}")), "{body}");

    // The control: without the key, the very same release passes (and
    // then fails behind HAProxy's back): that is why the key exists.
    project.write_config(&haproxy_config(&fleet, ""));
    project.shipit(&["test", "deploy"]).success();
    assert_ne!(current(&fleet, "web1").as_deref(), Some(r1.as_str()));
}

/// Within min_healthy_time the load balancer is asked too: a release that
/// HAProxy's own check marks DOWN fails even while shipit's check (here
/// `GET /`, which keeps answering) passes.
#[test]
fn min_healthy_time_fails_a_host_its_load_balancer_marks_down() {
    let fleet = fleet(2, Haproxy::Local);
    let project = behind_haproxy(&fleet, "min_healthy_time = \"8s\"");
    project.shipit(&["test", "deploy", "-q"]).success();
    for h in ["web1", "web2"] {
        wait_for(Duration::from_secs(15), &format!("{h} UP"), || {
            fleet.haproxy_server_status(h).as_deref() == Some("UP")
        });
    }
    let r1 = current(&fleet, "web1").unwrap();
    // shipit checks GET / (always 200); HAProxy checks /health, which
    // turns 503 1.5 s after start.
    let root = haproxy_config(&fleet, "min_healthy_time = \"8s\"")
        .replace(
            "url = \"http://{address}:8080/health\"",
            "url = \"http://{address}:8080/\"",
        )
        .replace(
            "expect_body = \"release={release}\"",
            "expect_body = \"{release}\"",
        );
    project.write_config(&root);
    std::fs::write(project.path().join("dist/HEALTHY_FOR"), HEALTHY_FOR).unwrap();
    project.set_version("v2");
    let run = project.shipit(&["test", "deploy"]);
    println!("min_healthy_time, HAProxy says DOWN:\n{}", run.stderr);
    run.code(4)
        .stderr_has("the load balancer reported it out of service (DOWN)")
        .stderr_has("within health.min_healthy_time (8s)");
    for h in ["web1", "web2"] {
        assert_eq!(current(&fleet, h).as_deref(), Some(r1.as_str()), "{h}");
    }
    assert!(
        admin_states(&fleet).values().all(|a| a == "0"),
        "{:?}",
        admin_states(&fleet)
    );
}

/// No load balancer: the threshold and the check are all there is.
fn plain(fleet: &Fleet, health: &str) -> String {
    let hosts: Vec<String> = fleet
        .hosts()
        .iter()
        .map(|h| entry(fleet, &h.name, &h.name, &[]))
        .collect();
    config(fleet, &hosts, &format!("[health]\n{health}\n"))
}

#[test]
fn healthy_threshold_needs_passes_in_a_row() {
    let fleet = fleet(1, Haproxy::None);
    let health = |threshold: u32| {
        format!(
            "url = \"http://{{address}}:8080/health\"\nexpect_body = \"release={{release}}\"\n\
             timeout = \"4s\"\ninterval = \"200ms\"\nhealthy_threshold = {threshold}\n"
        )
    };
    let project = Project::new(&plain(&fleet, &health(3)));
    project.shipit(&["test", "deploy", "-q"]).success();
    let r1 = current(&fleet, "web1").unwrap();

    // Every other answer fails: never three passes in a row.
    std::fs::write(project.path().join("dist/HEALTH_FLAP"), "each").unwrap();
    project.set_version("v2");
    project.shipit(&["test", "deploy"]).code(4).stderr_has(
        "never passed 3 times in a row (health.healthy_threshold = 3; at best 1 in a row)",
    );
    assert_eq!(current(&fleet, "web1").as_deref(), Some(r1.as_str()));

    // The control: one pass is enough with the default threshold, and the
    // flapping release goes out.
    project.write_config(&plain(&fleet, &health(1)));
    project.shipit(&["test", "deploy"]).success();
    assert_ne!(current(&fleet, "web1").as_deref(), Some(r1.as_str()));
}

#[test]
fn a_check_from_the_host_reaches_an_app_on_loopback() {
    let fleet = fleet(2, Haproxy::None);
    let on_host = "url = \"http://127.0.0.1:8080/health\"\nfrom = \"host\"\n\
                   expect_body = \"release={release}\"\ntimeout = \"10s\"\ninterval = \"200ms\"";
    let project = Project::new(&plain(&fleet, on_host));
    // The app listens on 127.0.0.1 only: nothing outside its host reaches it.
    std::fs::write(project.path().join("dist/BIND"), "127.0.0.1").unwrap();
    let run = project.shipit(&["test", "deploy", "--json"]);
    run.success();
    let release = current(&fleet, "web1").unwrap();
    for host in ["web1", "web2"] {
        assert_eq!(
            http_get(&format!("http://{}:8080/health", fleet.address(host))),
            None,
            "{host}: the app answers from outside its host"
        );
        let on_it = fleet.exec_ok(
            host,
            "perl -MIO::Socket::IP -e '$s=IO::Socket::IP->new(\"127.0.0.1:8080\") or exit 1; print $s \"GET /health HTTP/1.0\\r\\n\\r\\n\"; print <$s>'",
        );
        assert!(
            on_it.contains(&format!("release={release}")),
            "{host}: {on_it}"
        );
        let health = steps_of(&run, host)
            .into_iter()
            .find(|(e, s, _)| e == "step-finished" && s == "health")
            .unwrap();
        assert_eq!(health.2, "ok (1 try)", "{host}");
    }

    // The same app checked from this machine, as by default: it fails, and
    // the message says what to do. (Going back, the old release fails the
    // same check, so the host is back on it but the run says so: exit 5.)
    let from_here = "url = \"http://{address}:8080/health\"\nexpect_body = \"release={release}\"\n\
                     timeout = \"2s\"\ninterval = \"200ms\"";
    project.write_config(&plain(&fleet, from_here));
    project.set_version("v2");
    project
        .shipit(&["test", "deploy"])
        .code(5)
        .stderr_has("Connection refused")
        .stderr_has(
            "if the app listens only on the host itself, such as on 127.0.0.1, or this machine cannot reach \
             its port, check from the host: health.from = \"host\"",
        );
    assert_eq!(current(&fleet, "web1").as_deref(), Some(release.as_str()));
}

#[test]
fn a_rollback_waits_for_the_revision_the_host_has() {
    let fleet = fleet(2, Haproxy::None);
    let health = "url = \"http://{address}:8080/health\"\nexpect_body = \"revision={revision}\"\n\
                  timeout = \"4s\"\ninterval = \"200ms\"\n[app]\nrevision = \"cat rev.txt\"";
    // [app] is already in the file: the revision command goes into a stage table.
    let health = health.replace("[app]\nrevision", "[stages.test.app]\nrevision");
    let project = Project::new(&plain(&fleet, &health));
    std::fs::write(project.path().join("rev.txt"), "aaa111\n").unwrap();
    project.shipit(&["test", "deploy", "-q"]).success();
    let r1 = current(&fleet, "web1").unwrap();
    std::fs::write(project.path().join("rev.txt"), "bbb222\n").unwrap();
    project.set_version("v2");
    project.shipit(&["test", "deploy", "-q"]).success();
    let (_, body) = host_state(&fleet, "web1", DEPLOY_TO).health.unwrap();
    assert!(body.contains("revision=bbb222"), "{body}");

    // The rollback's plan waits for v1's revision, read from each host's
    // REVISION file (deploy.toml's revision command says bbb222 by now).
    project
        .shipit(&["test", "rollback", "--dry-run"])
        .success()
        .stdout_has("and body contains \"revision=aaa111\"");
    project
        .shipit(&["test", "rollback", "--hosts", "web1"])
        .success();
    assert_eq!(current(&fleet, "web1").as_deref(), Some(r1.as_str()));
    let (_, body) = host_state(&fleet, "web1", DEPLOY_TO).health.unwrap();
    assert!(body.contains("revision=aaa111"), "{body}");

    // The check really waits for it: an app that comes back reporting
    // another revision fails the rollback's check.
    let stale = health.replace(
        "[stages.test.app]\n",
        "[stages.test.app]\nrestart = \"APP_REVISION=stale bin/restart\"\n",
    );
    project.write_config(&plain(&fleet, &stale));
    project
        .shipit(&["test", "rollback", "--hosts", "web2"])
        .code(5)
        .stderr_has("body lacks \"revision=aaa111\"; body: \"ok release=");
}
