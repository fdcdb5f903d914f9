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
    assert_eq!(bad("web1"), [r3.clone()]);

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
