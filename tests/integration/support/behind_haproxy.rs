//! A fleet behind the controller's own HAProxy, driven through its runtime
//! API, as the fault tests (failures, resume, signals) use it: the fleet,
//! its deploy.toml, what HAProxy says of each server, and a load that no
//! request of may fail.

use std::path::Path;
use std::time::Duration;

use super::fleet::{Fleet, FleetOptions, Haproxy, wait_for};
use super::load::Load;
use super::shipit::{DEPLOY_TO, Project, host_state, standard_config};

pub fn fleet(hosts: usize) -> Fleet {
    Fleet::start(FleetOptions {
        hosts,
        haproxy: Haproxy::Local,
        bastion: false,
    })
}

/// The standard config behind the fleet's HAProxy, plus `extra` TOML.
pub fn config(fleet: &Fleet, extra: &str) -> String {
    config_at(fleet, &fleet.haproxy_socket(), extra)
}

/// [`config`] with the admin socket at `socket` (a proxy in front of it).
pub fn config_at(fleet: &Fleet, socket: &Path, extra: &str) -> String {
    let lb = format!(
        "[stages.test.lb]\ndriver = \"haproxy\"\nsocket = \"{}\"\nbackend = \"app\"\n",
        socket.display()
    );
    standard_config(fleet, &format!("{lb}\n{extra}"))
}

pub fn names(fleet: &Fleet) -> Vec<String> {
    fleet.hosts().into_iter().map(|h| h.name).collect()
}

pub fn current(fleet: &Fleet, host: &str) -> Option<String> {
    host_state(fleet, host, DEPLOY_TO).current
}

/// `srv_admin_state` of every server of backend `app`: a bit field where 0
/// means ready (neither drained nor in maintenance).
pub fn admin_states(fleet: &Fleet) -> Vec<(String, String)> {
    let state = fleet.haproxy_cmd("show servers state app");
    let mut lines = state.lines().skip(1);
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .trim_start_matches("# ")
        .split(' ')
        .collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (name, admin) = (col("srv_name"), col("srv_admin_state"));
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            (fields[name].to_string(), fields[admin].to_string())
        })
        .collect()
}

/// HAProxy has no server of the fleet drained or in maintenance (its admin
/// state, whatever its checks say now).
#[track_caller]
pub fn assert_no_host_drained(fleet: &Fleet) {
    for (server, state) in admin_states(fleet) {
        assert_eq!(state, "0", "{server} is drained or in maintenance");
    }
}

/// No host holds the deploy lock.
#[track_caller]
pub fn assert_unlocked(fleet: &Fleet) {
    for host in names(fleet) {
        assert!(
            !fleet.exists(&host, &format!("{DEPLOY_TO}/.shipit/lock")),
            "{host} still locked"
        );
    }
}

/// Deploys v1 everywhere, waits for HAProxy to see every host UP, and
/// returns the release id.
pub fn deploy_v1(project: &Project, fleet: &Fleet) -> String {
    project.shipit(&["test", "deploy", "-q"]).success();
    let r1 = current(fleet, "web1").unwrap();
    for host in names(fleet) {
        wait_for(
            Duration::from_secs(10),
            &format!("HAProxy to see {host} UP"),
            || fleet.haproxy_server_status(&host).as_deref() == Some("UP"),
        );
    }
    r1
}

/// Requests through HAProxy while `f` runs: none may fail, whatever went
/// wrong with the run itself.
pub fn no_request_fails<T>(fleet: &Fleet, what: &str, f: impl FnOnce() -> T) -> T {
    let load = Load::start(&fleet.lb_url(), 4, 100);
    std::thread::sleep(Duration::from_millis(300));
    let out = f();
    std::thread::sleep(Duration::from_millis(500));
    let report = load.stop();
    println!("{what}: {}", report.summary());
    assert!(
        report.total() > 100,
        "{what}: the load did not run: {}",
        report.summary()
    );
    assert!(
        report.failures().is_empty(),
        "{what}: {} request(s) failed:\n{}",
        report.failures().len(),
        report.failure_list(10)
    );
    out
}
