//! Rollout shapes on the fleet behind a real HAProxy: ramps with bakes, the
//! capacity floor (also while a failed deploy is rolled back), zones, and
//! gates on the error rate live traffic sees (HAProxy's counters, a real
//! Prometheus scraping HAProxy's exporter, a command).
//!
//! Times are taken from the hosts' journals (when each host was drained,
//! switched and put back, to the millisecond), never from sleeps; what
//! HAProxy reports is sampled from its admin socket all through a run.
//! Each gate test prints what its gates measured and how long the deploy
//! took (`--nocapture` shows them).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::support::fleet::{Fleet, FleetSpec, Lb, wait_for};
use crate::support::load::{Load, Report};
use crate::support::shipit::{DEPLOY_TO, Project, Run, host_state, standard_config};

/// `[lb]` for the fleet's own HAProxy, its admin socket reached directly.
fn haproxy(fleet: &Fleet) -> String {
    format!(
        "[lb]\ndriver = \"haproxy\"\nsocket = \"{}\"\nbackend = \"app\"\n",
        fleet.haproxy_socket().display()
    )
}

fn fleet(hosts: usize) -> Fleet {
    Fleet::start(FleetSpec {
        hosts,
        lb: Lb::Haproxy(crate::support::fleet::At::Local),
        ..Default::default()
    })
}

fn names(fleet: &Fleet) -> Vec<String> {
    fleet.hosts().into_iter().map(|h| h.name).collect()
}

/// The release `current` points to on each host, in host order.
fn currents(fleet: &Fleet) -> Vec<String> {
    names(fleet)
        .iter()
        .map(|h| host_state(fleet, h, DEPLOY_TO).current.unwrap_or_default())
        .collect()
}

/// The first deploy onto fresh hosts (HAProxy sees them DOWN until then):
/// nothing measured. Returns the release.
fn deploy_v1(project: &Project, fleet: &Fleet) -> String {
    project.shipit(&["test", "deploy", "-q"]).success();
    wait_all_up(fleet);
    currents(fleet)[0].clone()
}

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

/// One host's journal entry of the last run: what happened, and when.
#[derive(Debug, Clone)]
struct Entry {
    event: String,
    time: jiff::Timestamp,
}

fn journal(fleet: &Fleet, host: &str) -> Vec<Entry> {
    let text = fleet
        .read_file(host, &format!("{DEPLOY_TO}/.shipit/journal"))
        .unwrap_or_else(|| panic!("{host} has no journal"));
    text.lines()
        .map(|line| {
            let v: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{host}: {line}: {e}"));
            Entry {
                event: v["event"].as_str().unwrap_or_default().to_string(),
                time: v["time"]
                    .as_str()
                    .and_then(|t| t.parse().ok())
                    .unwrap_or_else(|| panic!("{host}: no time in {line}")),
            }
        })
        .collect()
}

/// When `host` logged `event` in its journal (the first time).
fn at(fleet: &Fleet, host: &str, event: &str) -> jiff::Timestamp {
    journal(fleet, host)
        .into_iter()
        .find(|e| e.event == event)
        .unwrap_or_else(|| {
            panic!(
                "{host}'s journal has no {event}: {:?}",
                journal(fleet, host)
            )
        })
        .time
}

fn gap(from: jiff::Timestamp, to: jiff::Timestamp) -> Duration {
    let d = to.duration_since(from);
    assert!(!d.is_negative(), "{to} is before {from}");
    d.unsigned_abs()
}

/// `run-started`'s batches, from `--json` output.
fn batches(run: &Run) -> Vec<Vec<String>> {
    let started = run
        .events()
        .into_iter()
        .find(|e| e["event"] == "run-started")
        .unwrap_or_else(|| panic!("no run-started event:\n{run}"));
    serde_json::from_value(started["batches"].clone()).expect("batches")
}

/// HAProxy's `show stat` status of every server of backend `app`, sampled
/// from the admin socket every 20 ms until stopped.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<(Duration, BTreeMap<String, String>)>>,
}

impl Sampler {
    fn start(fleet: &Fleet) -> Sampler {
        let socket = fleet.haproxy_socket();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                let mut samples = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    samples.push((started.elapsed(), statuses(&socket)));
                    std::thread::sleep(Duration::from_millis(20));
                }
                samples
            })
        };
        // The first sample is in before anything happens.
        std::thread::sleep(Duration::from_millis(100));
        Sampler { stop, thread }
    }

    fn stop(self) -> Samples {
        self.stop.store(true, Ordering::SeqCst);
        Samples(self.thread.join().expect("sampler"))
    }
}

struct Samples(Vec<(Duration, BTreeMap<String, String>)>);

impl Samples {
    /// Servers HAProxy sends traffic to at each sample: UP (a failed check
    /// counting down, "UP 1/2", still takes traffic).
    fn in_service(&self) -> Vec<(Duration, usize)> {
        self.0
            .iter()
            .map(|(t, s)| (*t, s.values().filter(|st| st.starts_with("UP")).count()))
            .collect()
    }

    fn fewest_in_service(&self) -> usize {
        self.in_service().iter().map(|(_, n)| *n).min().unwrap_or(0)
    }

    /// Each change of any server's status, for failure messages.
    fn changes(&self) -> String {
        let mut out = String::new();
        let mut last: Option<&BTreeMap<String, String>> = None;
        for (t, s) in &self.0 {
            if last != Some(s) {
                let row: Vec<String> = s.iter().map(|(k, v)| format!("{k}={v}")).collect();
                out.push_str(&format!("{:>7.2}s  {}\n", t.as_secs_f64(), row.join(" ")));
                last = Some(s);
            }
        }
        out
    }
}

/// `show stat` over the admin socket: status per server of backend `app`.
fn statuses(socket: &PathBuf) -> BTreeMap<String, String> {
    let ask = || -> std::io::Result<String> {
        let mut sock = UnixStream::connect(socket)?;
        sock.set_read_timeout(Some(Duration::from_secs(2)))?;
        sock.write_all(b"show stat\n")?;
        let mut answer = String::new();
        sock.read_to_string(&mut answer)?;
        Ok(answer)
    };
    let Ok(answer) = ask() else {
        return BTreeMap::new();
    };
    let mut lines = answer.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .trim_start_matches("# ")
        .split(',')
        .collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap_or(0);
    let (px, sv, status) = (col("pxname"), col("svname"), col("status"));
    lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f.get(px) == Some(&"app") && f.get(sv).is_some_and(|s| s.starts_with("web")))
        .map(|f| (f[sv].to_string(), f[status].to_string()))
        .collect()
}

/// Puts `server` in maintenance, as an operator would.
fn maint(fleet: &Fleet, server: &str) {
    let answer = fleet.haproxy_cmd(&format!("set server app/{server} state maint"));
    assert!(answer.trim().is_empty(), "set maint: {answer}");
    assert_eq!(
        fleet.haproxy_server_status(server).as_deref(),
        Some("MAINT")
    );
}

/// The ramp `[1, 2, "50%"]` on 8 hosts: batches of 1, 2, 4 and 1, each
/// drained only once the bake after the previous batch is over, as the
/// hosts' journals record it.
#[test]
fn a_ramp_rolls_batches_of_1_2_4_1_each_a_bake_after_the_last() {
    const BAKE: Duration = Duration::from_secs(2);
    let fleet = fleet(8);
    let lb = haproxy(&fleet);
    let project = Project::new(&standard_config(&fleet, &lb));
    deploy_v1(&project, &fleet);

    project.write_config(&standard_config(
        &fleet,
        &format!(
            "{lb}[stages.test.rollout]\nrolling_batch_size = [1, 2, \"50%\"]\nbake = \"{}s\"\n",
            BAKE.as_secs()
        ),
    ));
    project.set_version("v2");
    let run = project.shipit(&["test", "deploy", "--json"]);
    run.success();
    let expected = [
        vec!["web1"],
        vec!["web2", "web3"],
        vec!["web4", "web5", "web6", "web7"],
        vec!["web8"],
    ];
    assert_eq!(batches(&run), expected);
    assert_eq!(
        run.stderr.matches("== bake ").count(),
        8,
        "a bake started and passed after every batch:\n{run}"
    );
    for (i, pair) in expected.windows(2).enumerate() {
        let back = pair[0]
            .iter()
            .map(|h| at(&fleet, h, "enabled"))
            .max()
            .unwrap();
        let last_switch = pair[0]
            .iter()
            .map(|h| at(&fleet, h, "switched"))
            .max()
            .unwrap();
        let next = pair[1]
            .iter()
            .map(|h| at(&fleet, h, "drained"))
            .min()
            .unwrap();
        let waited = gap(back, next);
        println!(
            "batch {} back in service at {back}, batch {} drained at {next}: {waited:?} later",
            i + 1,
            i + 2
        );
        assert!(
            waited >= BAKE,
            "batch {} started {waited:?} after batch {} was back in service, less than the {BAKE:?} bake",
            i + 2,
            i + 1
        );
        assert!(last_switch < next);
        // Hosts of one batch switch together: within the batch, well before the bake.
        let first_switch = pair[0]
            .iter()
            .map(|h| at(&fleet, h, "switched"))
            .min()
            .unwrap();
        assert!(
            gap(first_switch, last_switch) < BAKE,
            "batch {} switched together",
            i + 1
        );
    }
    assert_eq!(
        currents(&fleet),
        vec![currents(&fleet)[0].clone(); 8],
        "every host on the new release"
    );
}

/// Every host's release directories and whether the deploy lock is held.
fn releases_and_lock(fleet: &Fleet) -> Vec<(Vec<String>, bool)> {
    names(fleet)
        .iter()
        .map(|h| {
            (
                host_state(fleet, h, DEPLOY_TO).releases,
                fleet.exists(h, &format!("{DEPLOY_TO}/.shipit/lock")),
            )
        })
        .collect()
}

/// With web2 in maintenance before the run and `max_unavailable = 2` of 4,
/// HAProxy never has fewer than 2 servers in service; web2 gets the release
/// and is still in maintenance at the end. The negative control (a floor
/// of 3) shows the sampling sees a drop below it.
#[test]
fn max_unavailable_holds_with_a_host_in_maint_which_stays_there() {
    let fleet = fleet(4);
    let lb = haproxy(&fleet);
    let project = Project::new(&standard_config(&fleet, &lb));
    deploy_v1(&project, &fleet);
    maint(&fleet, "web2");

    let shape = |size: usize, max: usize| {
        standard_config(
            &fleet,
            &format!(
                "{lb}[stages.test.rollout]\nrolling_batch_size = {size}\nmax_unavailable = {max}\n"
            ),
        )
    };
    project.write_config(&shape(2, 2));
    project.set_version("v2");
    let sampler = Sampler::start(&fleet);
    let run = project.shipit(&["test", "deploy"]);
    let samples = sampler.stop();
    run.success()
        .stderr_has("left in maint as found")
        .stderr_has("web2: in maint on the load balancer");
    let fewest = samples.fewest_in_service();
    println!("max_unavailable = 2 of 4, web2 in maint: at least {fewest} in service");
    assert_eq!(
        fewest,
        2,
        "never fewer than 2 in service, and the run did use its room:\n{}",
        samples.changes()
    );
    assert_eq!(
        fleet.haproxy_server_status("web2").as_deref(),
        Some("MAINT"),
        "web2 still in maintenance"
    );
    let v2 = currents(&fleet)[0].clone();
    assert_eq!(
        currents(&fleet),
        vec![v2.clone(); 4],
        "web2 got the release too"
    );

    // The negative control: a floor of 3 lets HAProxy drop to 1.
    project.write_config(&shape(3, 3));
    project.set_version("v3");
    let sampler = Sampler::start(&fleet);
    let run = project.shipit(&["test", "deploy"]);
    let samples = sampler.stop();
    run.success();
    let fewest = samples.fewest_in_service();
    println!("negative control, max_unavailable = 3: down to {fewest} in service");
    assert_eq!(fewest, 1, "{}", samples.changes());
    assert_eq!(
        fleet.haproxy_server_status("web2").as_deref(),
        Some("MAINT")
    );
}

/// A floor that can never be kept (one host of three in maintenance,
/// `max_unavailable = 1`) is refused before anything changes.
#[test]
fn an_impossible_floor_is_refused_with_nothing_changed() {
    let fleet = fleet(3);
    let lb = haproxy(&fleet);
    let project = Project::new(&standard_config(&fleet, &lb));
    let v1 = deploy_v1(&project, &fleet);
    maint(&fleet, "web3");
    let before = releases_and_lock(&fleet);

    project.write_config(&standard_config(
        &fleet,
        &format!("{lb}[stages.test.rollout]\nmax_unavailable = 1\n"),
    ));
    project.set_version("v2");
    project
        .shipit(&["test", "deploy"])
        .code(1)
        .stderr_has(
            "not starting; nothing was changed on any host: rollout.max_unavailable = 1 and 1 host is already \
             out of service (web3), so web1, web2 can never be taken out",
        );
    assert_eq!(currents(&fleet), vec![v1; 3]);
    assert_eq!(
        releases_and_lock(&fleet),
        before,
        "no release unpacked, no lock left"
    );
    for (host, status) in [("web1", "UP"), ("web2", "UP"), ("web3", "MAINT")] {
        assert_eq!(fleet.haproxy_server_status(host).as_deref(), Some(status));
    }
}

/// The case of the issue: 4 hosts, batches of 2, HAProxy. The new release
/// cannot boot on web3 (batch 2), so the deploy is rolled back, and the
/// rollback's health check cannot pass either (`expect_body` is a literal
/// the old release does not answer). At no moment, during the run or
/// after it, are more than 2 servers out of service.
#[test]
fn a_failed_rollback_never_takes_more_than_max_unavailable_out() {
    let fleet = fleet(4);
    let lb = haproxy(&fleet);
    let project = Project::new(&standard_config(&fleet, &lb));
    let v1 = deploy_v1(&project, &fleet);

    fleet.write_file("web3", &format!("{DEPLOY_TO}/shared/health-fail"), "v2");
    project.write_config(&standard_config(
        &fleet,
        &format!(
            "{lb}[stages.test.rollout]\nrolling_batch_size = 2\n\
             [stages.test.health]\nexpect_body = \"version=v2\"\n"
        ),
    ));
    project.set_version("v2");
    let sampler = Sampler::start(&fleet);
    let run = project.shipit(&["test", "deploy"]);
    // After the run too: nothing shipit left behind takes hosts out later.
    std::thread::sleep(Duration::from_secs(3));
    let samples = sampler.stop();
    run.code(5)
        .stderr_has("no further host is taken out of service");
    let fewest = samples.fewest_in_service();
    println!("failed rollback: at least {fewest} of 4 in service");
    assert_eq!(
        fewest,
        2,
        "never more than max_unavailable = 2 out of service (and the batches did take 2 out):\n{}",
        samples.changes()
    );
    // Nobody is left in maintenance: the rolled-back hosts run v1 again,
    // which HAProxy's own check finds healthy.
    wait_all_up(&fleet);
    let current = currents(&fleet);
    assert_eq!(current[2], v1, "web3 back on v1");
    assert_eq!(current[3], v1, "web4 back on v1");
    assert_ne!(
        current[0], v1,
        "web1 was never drained again: it still runs v2"
    );
    assert_eq!(current[0], current[1]);
}

/// Zones interleaved in the host list go one after another, in the order
/// they first appear, and no batch spans two.
#[test]
fn by_zone_rolls_zone_after_zone() {
    let fleet = fleet(6);
    let lb = haproxy(&fleet);
    let zones = ["a", "b", "a", "b", "c", "a"];
    let zoned = |extra: &str| {
        let mut text = standard_config(&fleet, extra);
        for (host, zone) in fleet.hosts().iter().zip(zones) {
            let plain = format!(
                "name = \"{}\", address = \"{}\" }}",
                host.name, host.address
            );
            let with_zone = format!(
                "name = \"{}\", address = \"{}\", zone = \"{zone}\" }}",
                host.name, host.address
            );
            assert!(text.contains(&plain), "{text}");
            text = text.replace(&plain, &with_zone);
        }
        text
    };
    let project = Project::new(&zoned(&lb));
    deploy_v1(&project, &fleet);
    project.write_config(&zoned(&format!(
        "{lb}[stages.test.rollout]\nrolling_batch_size = 2\nby_zone = true\n"
    )));
    project.set_version("v2");
    let run = project.shipit(&["test", "deploy", "--json"]);
    run.success();
    let expected = [
        vec!["web1", "web3"],
        vec!["web6"],
        vec!["web2", "web4"],
        vec!["web5"],
    ];
    assert_eq!(batches(&run), expected);
    // By the hosts' own records: every host of a zone was back in service
    // before the first host of the next zone was drained.
    let zone_hosts = |z: &str| -> Vec<String> {
        fleet
            .hosts()
            .iter()
            .zip(zones)
            .filter(|(_, zone)| *zone == z)
            .map(|(h, _)| h.name.clone())
            .collect()
    };
    for pair in [["a", "b"], ["b", "c"]] {
        let done = zone_hosts(pair[0])
            .iter()
            .map(|h| at(&fleet, h, "enabled"))
            .max()
            .unwrap();
        let next = zone_hosts(pair[1])
            .iter()
            .map(|h| at(&fleet, h, "drained"))
            .min()
            .unwrap();
        assert!(
            done < next,
            "zone {} was done at {done}, zone {} started at {next}",
            pair[0],
            pair[1]
        );
    }
}

/// `rollback` after a `rollback` goes one more release back: its target is
/// the newest good release older than what runs now, and the release left
/// is marked bad, so a third goes further still until there is nothing
/// older; bad releases are skipped by later rollbacks.
#[test]
fn rolling_back_twice_goes_two_releases_back_and_marks_both_bad() {
    let fleet = Fleet::start(FleetSpec {
        hosts: 2,
        ..Default::default()
    });
    let project = Project::new(&standard_config(&fleet, ""));
    let mut releases = Vec::new();
    for version in ["v1", "v2", "v3"] {
        project.set_version(version);
        project.shipit(&["test", "deploy", "-q"]).success();
        releases.push(currents(&fleet)[0].clone());
        // Release ids are per second.
        std::thread::sleep(Duration::from_millis(1100));
    }
    let (r1, r2, r3) = (&releases[0], &releases[1], &releases[2]);
    let bad = |host: &str| host_state(&fleet, host, DEPLOY_TO).bad;

    project
        .shipit(&["test", "rollback"])
        .success()
        .stderr_has(&format!("back to {r2}"));
    assert_eq!(currents(&fleet), vec![r2.clone(); 2]);
    assert_eq!(bad("web1"), std::slice::from_ref(r3));

    project
        .shipit(&["test", "rollback"])
        .success()
        .stderr_has(&format!("back to {r1}"));
    assert_eq!(currents(&fleet), vec![r1.clone(); 2]);
    assert_eq!(bad("web1"), [r2.clone(), r3.clone()]);

    let third = project.shipit(&["test", "rollback"]);
    third.code(1);
    assert_eq!(currents(&fleet), vec![r1.clone(); 2], "nothing changed");

    // A new deploy, then a rollback: the bad releases are skipped.
    project.set_version("v4");
    project.shipit(&["test", "deploy", "-q"]).success();
    project
        .shipit(&["test", "rollback"])
        .success()
        .stderr_has(&format!("back to {r1}"));
    assert_eq!(currents(&fleet), vec![r1.clone(); 2]);
    // Still reachable by name.
    project.shipit(&["test", "rollback", "--to", r3]).success();
    assert_eq!(currents(&fleet), vec![r3.clone(); 2]);
}

/// `gate-evaluated` events of a `--json` run.
fn gate_events(run: &Run) -> Vec<serde_json::Value> {
    run.events()
        .into_iter()
        .filter(|e| e["event"] == "gate-evaluated")
        .collect()
}

/// The evaluations that decided a gate, as `(batch, outcome, what it
/// measured)`; printed with how far into the bake each came.
fn decisions(run: &Run) -> Vec<(u64, String, serde_json::Value)> {
    gate_events(run)
        .into_iter()
        .filter(|e| e.get("outcome").is_some())
        .map(|e| {
            println!(
                "MEASURED   batch {} decided {} ms into its bake: {}",
                e["batch"], e["elapsed"], e["message"]
            );
            (
                e["batch"].as_u64().unwrap(),
                e["outcome"].as_str().unwrap().to_string(),
                e["measured"].clone(),
            )
        })
        .collect()
}

/// Makes the next release answer 500 to a share of `GET /` (its health
/// stays fine), or not (`None`).
fn error_rate(project: &Project, share: Option<&str>) {
    let file = project.path().join("dist/ERROR_RATE");
    match share {
        Some(share) => std::fs::write(file, share).expect("write ERROR_RATE"),
        None => {
            let _ = std::fs::remove_file(file);
        }
    }
}

/// Runs shipit while a steady load goes through HAProxy; the run, the
/// load's report and how long the run took.
fn with_load(fleet: &Fleet, shipit: impl FnOnce() -> Run) -> (Run, Report, Duration) {
    let load = Load::start(&fleet.lb_url(), 8, 200);
    wait_for(Duration::from_secs(10), "the load to flow", || {
        load.sent() > 100
    });
    let started = Instant::now();
    let run = shipit();
    let took = started.elapsed();
    let report = load.stop();
    (run, report, took)
}

/// No host but the canary ever drained or switched in the last run.
#[track_caller]
fn only_the_canary_switched(fleet: &Fleet) {
    for host in names(fleet).iter().skip(1) {
        let events: Vec<String> = journal(fleet, host).into_iter().map(|e| e.event).collect();
        assert!(
            !events.iter().any(|e| e == "drained" || e == "switched"),
            "{host} was touched beyond the upload: {events:?}"
        );
    }
}

/// Every server UP and none left drained or in maintenance.
#[track_caller]
fn none_drained(fleet: &Fleet) {
    wait_all_up(fleet);
    let state = fleet.haproxy_cmd("show servers state app");
    let servers: Vec<Vec<&str>> = state
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() > 6 && f[0].starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    assert_eq!(servers.len(), names(fleet).len(), "{state}");
    for fields in servers {
        assert_eq!(
            fields[6], "0",
            "admin state (drain/maint flags): {fields:?}"
        );
    }
}

const GATED_ROLLOUT: &str =
    "[stages.test.rollout]\nrolling_batch_size = [1, \"100%\"]\nbake = [\"6s\", \"2s\"]\n";

/// The haproxy gate on a canary under load: a release answering 500 to
/// half of `GET /` fails it (exit 4, no other host ever switched, every
/// host back on the previous release, none drained); the same release
/// without the gate goes everywhere (the negative control: the load sees
/// its errors); a good release passes.
#[test]
fn an_error_rate_gate_stops_a_bad_canary_and_passes_a_good_release() {
    let fleet = fleet(4);
    let lb = haproxy(&fleet);
    let project = Project::new(&standard_config(&fleet, &lb));
    let v1 = deploy_v1(&project, &fleet);
    let gated = standard_config(
        &fleet,
        &format!(
            "{lb}{GATED_ROLLOUT}[[stages.test.gates]]\ntype = \"haproxy\"\nmax_error_rate = \"5%\"\n\
             min_requests = 20\ninterval = \"1s\"\n"
        ),
    );

    project.write_config(&gated);
    project.set_version("v2");
    error_rate(&project, Some("50%"));
    let (run, report, took) = with_load(&fleet, || project.shipit(&["test", "deploy", "--json"]));
    run.code(4).stderr_has("FAILED at gate");
    let decided = decisions(&run);
    println!(
        "MEASURED haproxy gate, bad canary: {:?}; deploy took {took:.1?}",
        decided
    );
    assert_eq!(decided.len(), 1, "{decided:?}");
    assert_eq!(decided[0].1, "fail");
    let rate = decided[0].2["error_rate"].as_f64().unwrap();
    assert!(rate > 0.05, "{rate}");
    only_the_canary_switched(&fleet);
    assert_eq!(
        currents(&fleet),
        vec![v1.clone(); 4],
        "every host back on v1"
    );
    none_drained(&fleet);
    let by_host = report.count_by(Duration::ZERO..Duration::MAX, |s| {
        s.answer
            .as_ref()
            .filter(|a| a.version == "v2")
            .map(|a| a.host.clone())
    });
    assert_eq!(
        by_host.keys().collect::<Vec<_>>(),
        ["web1"],
        "only the canary ever answered with v2"
    );
    let canary = report.count_by(Duration::ZERO..Duration::MAX, |s| {
        s.answer
            .as_ref()
            .filter(|a| a.version == "v2")
            .map(|_| format!("{:?}", s.status))
    });
    println!("MEASURED load generator, v2 answers on the canary by status: {canary:?}");

    // The negative control: without the gate the same release goes
    // everywhere, and the load sees its errors.
    project.write_config(&standard_config(&fleet, &format!("{lb}{GATED_ROLLOUT}")));
    let (run, report, took) = with_load(&fleet, || project.shipit(&["test", "deploy"]));
    run.success();
    let (failed, total) = report.failed_of(Duration::ZERO..Duration::MAX);
    println!(
        "MEASURED negative control (no gate): {failed} of {total} requests failed; deploy took {took:.1?}"
    );
    assert!(
        failed * 10 > total,
        "the bad release failed {failed} of {total}"
    );

    // A good release passes the gate on every bake.
    project.write_config(&gated);
    project.set_version("v3");
    error_rate(&project, None);
    let (run, _, took) = with_load(&fleet, || project.shipit(&["test", "deploy", "--json"]));
    run.success();
    let decided = decisions(&run);
    println!(
        "MEASURED haproxy gate, good release: {:?}; deploy took {took:.1?}",
        decided
    );
    let outcomes: Vec<(u64, &str)> = decided.iter().map(|(b, o, _)| (*b, o.as_str())).collect();
    assert_eq!(outcomes, [(1, "pass"), (2, "pass")]);
    for (_, _, measured) in &decided {
        assert!(measured["answers"].as_u64().unwrap() >= 20, "{measured}");
        assert_eq!(measured["errors"], 0, "{measured}");
    }
    assert!(
        run.stderr.contains("BATCH  GATE"),
        "the final table:\n{run}"
    );
    none_drained(&fleet);
}

/// Without traffic the haproxy gate cannot judge: the outcome is what
/// `on_inconclusive` says, and the output says so.
#[test]
fn without_traffic_the_gate_is_inconclusive_and_on_inconclusive_decides() {
    let fleet = fleet(2);
    let lb = haproxy(&fleet);
    let project = Project::new(&standard_config(&fleet, &lb));
    let v1 = deploy_v1(&project, &fleet);
    let gated = |outcome: &str| {
        standard_config(
            &fleet,
            &format!(
                "{lb}[stages.test.rollout]\nbake = \"3s\"\n[[stages.test.gates]]\ntype = \"haproxy\"\n\
                 max_error_rate = \"1%\"\nmin_requests = 10\ninterval = \"1s\"\non_inconclusive = \"{outcome}\"\n"
            ),
        )
    };
    project.write_config(&gated("fail"));
    project.set_version("v2");
    let started = Instant::now();
    let run = project.shipit(&["test", "deploy", "--json"]);
    let took = started.elapsed();
    run.code(4)
        .stderr_has("still inconclusive at the end of the bake, and on_inconclusive = \"fail\"");
    let decided = decisions(&run);
    println!("MEASURED no traffic, on_inconclusive = fail: {decided:?}; deploy took {took:.1?}");
    assert_eq!(decided.len(), 1);
    assert_eq!(decided[0].1, "fail");
    assert_eq!(
        decided[0].2["answers"], 0,
        "HAProxy's health checks are no answers"
    );
    assert_eq!(currents(&fleet), vec![v1.clone(); 2]);
    none_drained(&fleet);

    project.write_config(&gated("pass"));
    let started = Instant::now();
    let run = project.shipit(&["test", "deploy", "--json"]);
    let took = started.elapsed();
    run.success()
        .stderr_has("inconclusive at the end of the bake: passing, as on_inconclusive = \"pass\"");
    let decided = decisions(&run);
    println!("MEASURED no traffic, on_inconclusive = pass: {decided:?}; deploy took {took:.1?}");
    assert!(decided.iter().all(|(_, o, _)| o == "pass"), "{decided:?}");
    assert_eq!(
        decided.len(),
        2,
        "both batches baked and passed: {decided:?}"
    );
}

/// A command gate run on every measured host: its own probe of the app.
/// The bad canary fails it; the good release passes.
#[test]
fn a_command_gate_stops_a_bad_canary() {
    let fleet = fleet(3);
    let lb = haproxy(&fleet);
    let project = Project::new(&standard_config(&fleet, &lb));
    let v1 = deploy_v1(&project, &fleet);
    // Ten requests to the app on the host itself must all answer 200.
    let probe = "for i in 1 2 3 4 5 6 7 8 9 10; do curl -fsS -o /dev/null http://127.0.0.1:8080/ || exit 1; done";
    project.write_config(&standard_config(
        &fleet,
        &format!(
            "{lb}[stages.test.rollout]\nrolling_batch_size = [1, \"100%\"]\nbake = [\"3s\", \"1s\"]\n\
             [[stages.test.gates]]\ntype = \"command\"\nrun = '{probe}'\nrun_on = \"hosts\"\ninterval = \"1s\"\n"
        ),
    ));
    project.set_version("v2");
    error_rate(&project, Some("50%"));
    let started = Instant::now();
    let run = project.shipit(&["test", "deploy", "--json"]);
    let took = started.elapsed();
    run.code(4).stderr_has("FAILED at gate");
    let decided = decisions(&run);
    println!("MEASURED command gate, bad canary: {decided:?}; deploy took {took:.1?}");
    assert_eq!(decided[0].1, "fail");
    assert_eq!(decided[0].2["runs"][0]["host"], "web1");
    assert_eq!(decided[0].2["runs"][0]["exit_code"], 1);
    only_the_canary_switched(&fleet);
    assert_eq!(currents(&fleet), vec![v1; 3]);
    none_drained(&fleet);

    project.set_version("v3");
    error_rate(&project, None);
    let started = Instant::now();
    let run = project.shipit(&["test", "deploy", "--json"]);
    let took = started.elapsed();
    run.success();
    let decided = decisions(&run);
    println!("MEASURED command gate, good release: {decided:?}; deploy took {took:.1?}");
    let outcomes: Vec<&str> = decided.iter().map(|(_, o, _)| o.as_str()).collect();
    assert_eq!(outcomes, ["pass", "pass"]);
    // The second bake measured every host, each with its own command.
    assert_eq!(decided[1].2["runs"].as_array().unwrap().len(), 3);
}

/// A Prometheus gate against Debian's Prometheus scraping HAProxy's
/// exporter every second: the 5xx share of the measured servers over the
/// last 5 s. The bad canary fails it; the good release passes.
#[test]
fn a_prometheus_gate_stops_a_bad_canary_and_passes_a_good_release() {
    let fleet = Fleet::start(FleetSpec {
        hosts: 3,
        lb: Lb::Haproxy(crate::support::fleet::At::Local),
        prometheus: true,
        ..Default::default()
    });
    let lb = haproxy(&fleet);
    let project = Project::new(&standard_config(&fleet, &lb));
    let v1 = deploy_v1(&project, &fleet);
    let query = "sum(rate(haproxy_server_http_responses_total{proxy=\"app\",code=\"5xx\",server=~\"{servers_regex}\"}[5s])) \
                 / sum(rate(haproxy_server_http_responses_total{proxy=\"app\",server=~\"{servers_regex}\"}[5s]))";
    let gate = format!(
        "[[stages.test.gates]]\ntype = \"prometheus\"\nurl = \"{}\"\nquery = '{query}'\nmax = 0.05\ninterval = \"2s\"\n",
        fleet.prometheus_url()
    );
    let rollout =
        "[stages.test.rollout]\nrolling_batch_size = [1, \"100%\"]\nbake = [\"8s\", \"4s\"]\n";
    // A query Prometheus refuses is found before anything changes.
    let typo = gate.replace("[5s]))", "[5s])");
    project.write_config(&standard_config(&fleet, &format!("{lb}{rollout}{typo}")));
    project.set_version("v2");
    project
        .shipit(&["test", "deploy"])
        .code(1)
        .stderr_has("a gate cannot measure, so no batch could pass it: gates[0] prometheus")
        .stderr_has("bad_data");
    assert_eq!(currents(&fleet), vec![v1.clone(); 3]);

    project.write_config(&standard_config(&fleet, &format!("{lb}{rollout}{gate}")));
    error_rate(&project, Some("50%"));
    let (run, _, took) = with_load(&fleet, || project.shipit(&["test", "deploy", "--json"]));
    run.code(4).stderr_has("FAILED at gate");
    let decided = decisions(&run);
    println!("MEASURED prometheus gate, bad canary: {decided:?}; deploy took {took:.1?}");
    assert_eq!(decided.len(), 1);
    assert_eq!(decided[0].1, "fail");
    assert!(
        decided[0].2["value"].as_f64().unwrap() > 0.05,
        "{decided:?}"
    );
    only_the_canary_switched(&fleet);
    assert_eq!(currents(&fleet), vec![v1; 3]);
    none_drained(&fleet);
    // The query as sent names the canary's server exactly.
    let first = &gate_events(&run)[0];
    assert_eq!(first["hosts"], serde_json::json!(["web1"]));

    // The gate's 5 s range must not still hold the bad canary's answers:
    // wait until Prometheus has scraped a window without any 5xx.
    let window = "sum(rate(haproxy_server_http_responses_total{proxy=\"app\",code=\"5xx\"}[5s]))";
    wait_for(
        Duration::from_secs(30),
        "Prometheus's 5 s window to hold no 5xx of the bad canary",
        || {
            fleet.prometheus_query(window).iter().all(|series| {
                series["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok())
                    == Some(0.0)
            })
        },
    );
    project.set_version("v3");
    error_rate(&project, None);
    let (run, _, took) = with_load(&fleet, || project.shipit(&["test", "deploy", "--json"]));
    run.success();
    let decided = decisions(&run);
    println!("MEASURED prometheus gate, good release: {decided:?}; deploy took {took:.1?}");
    let outcomes: Vec<&str> = decided.iter().map(|(_, o, _)| o.as_str()).collect();
    assert_eq!(outcomes, ["pass", "pass"]);
    for (_, _, measured) in &decided {
        assert_eq!(measured["value"].as_f64(), Some(0.0), "{measured}");
    }
}

/// During the bake the load balancer must keep the batch in service: HAProxy
/// reporting the canary DOWN (its checks stopped and the server forced down,
/// while shipit's own health check still passes) fails the batch, and the
/// canary is rolled back.
#[test]
fn a_host_the_load_balancer_takes_out_during_the_bake_fails_its_batch() {
    let fleet = fleet(3);
    let lb = haproxy(&fleet);
    let project = Project::new(&standard_config(&fleet, &lb));
    let v1 = deploy_v1(&project, &fleet);
    project.write_config(&standard_config(
        &fleet,
        &format!(
            "{lb}[stages.test.rollout]\nrolling_batch_size = [1, 2]\nbake = [\"30s\", \"1s\"]\n"
        ),
    ));
    project.set_version("v2");
    let mut running = project.spawn(&["test", "deploy"]);
    running.wait_for("== bake 1/2: watching web1", Duration::from_secs(60));
    for command in ["disable health app/web1", "set server app/web1 health down"] {
        let answer = fleet.haproxy_cmd(command);
        assert!(answer.trim().is_empty(), "{command}: {answer}");
    }
    running.wait_for(
        "the load balancer reported it out of service (DOWN) at 2 polls in a row",
        Duration::from_secs(20),
    );
    // HAProxy's checks resume, so the rollback's enable sees web1 UP again.
    fleet.haproxy_cmd("enable health app/web1");
    let run = running.finish();
    run.code(4).stderr_has("FAILED at bake");
    assert_eq!(currents(&fleet), vec![v1; 3]);
    only_the_canary_switched(&fleet);
    none_drained(&fleet);
}
