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
    wait_for(Duration::from_secs(15), "every server UP in HAProxy", || {
        names(fleet)
            .iter()
            .all(|h| fleet.haproxy_server_status(h).as_deref() == Some("UP"))
    });
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
        .unwrap_or_else(|| panic!("{host}'s journal has no {event}: {:?}", journal(fleet, host)))
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
        assert!(gap(first_switch, last_switch) < BAKE, "batch {} switched together", i + 1);
    }
    assert_eq!(
        currents(&fleet),
        vec![currents(&fleet)[0].clone(); 8],
        "every host on the new release"
    );
}
