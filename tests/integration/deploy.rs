//! Deploy and rollback on a real fleet: after every run, the hosts
//! themselves are inspected: where `current` points, which releases exist,
//! what revisions.log says and what `/health` serves.

use crate::support::fleet::{Fleet, FleetOptions, Haproxy};
use crate::support::shipit::{DEPLOY_TO, Project, host_state, standard_config};

fn fleet(hosts: usize) -> Fleet {
    Fleet::start(FleetOptions {
        hosts,
        haproxy: Haproxy::None,
        bastion: false,
    })
}

fn names(fleet: &Fleet) -> Vec<String> {
    fleet.hosts().into_iter().map(|h| h.name).collect()
}

/// The release every host runs; panics if they disagree.
fn fleet_release(fleet: &Fleet) -> String {
    let currents: Vec<Option<String>> = names(fleet)
        .iter()
        .map(|h| host_state(fleet, h, DEPLOY_TO).current)
        .collect();
    assert!(
        currents.windows(2).all(|w| w[0] == w[1]),
        "hosts disagree: {currents:?}"
    );
    currents[0].clone().expect("a current release")
}

#[test]
fn deploy_twice_roll_back_twice() {
    let fleet = fleet(3);
    let project = Project::new(&standard_config(&fleet, ""));

    project
        .shipit(&["test", "deploy"])
        .success()
        .stderr_has("deploy demo");
    let r1 = fleet_release(&fleet);
    for host in names(&fleet) {
        let state = host_state(&fleet, &host, DEPLOY_TO);
        assert_eq!(state.releases, std::slice::from_ref(&r1));
        assert!(state.unfinished.is_empty());
        let (status, body) = state.health.expect("health answers");
        assert_eq!(
            (status, body.trim()),
            (200, format!("ok release={r1} version=v1").as_str())
        );
        assert_eq!(state.log.len(), 1);
        assert_eq!(state.log[0]["action"], "deploy");
        assert_eq!(state.log[0]["release"], r1.as_str());
        assert_eq!(state.log[0]["result"], "success");
        // shared_dirs are links into shared/.
        assert_eq!(
            fleet
                .read_link(&host, &format!("{DEPLOY_TO}/releases/{r1}/log"))
                .as_deref(),
            Some(format!("{DEPLOY_TO}/shared/log").as_str())
        );
        assert!(fleet.exists(&host, &format!("{DEPLOY_TO}/releases/{r1}/REVISION")));
    }

    project.set_version("v2");
    project.shipit(&["test", "deploy"]).success();
    let r2 = fleet_release(&fleet);
    assert!(r2 > r1, "release ids sort in time order: {r1} then {r2}");
    for host in names(&fleet) {
        let state = host_state(&fleet, &host, DEPLOY_TO);
        assert_eq!(state.releases, [r1.clone(), r2.clone()]);
        assert!(
            state
                .health
                .unwrap()
                .1
                .contains(&format!("release={r2} version=v2"))
        );
        assert_eq!(state.log[1]["previous"], r1.as_str());
    }

    let run = project.shipit(&["test", "releases"]);
    run.success()
        .stdout_has(&format!("* {r2}"))
        .stdout_has("current");

    project.shipit(&["test", "rollback"]).success();
    assert_eq!(fleet_release(&fleet), r1);
    for host in names(&fleet) {
        let state = host_state(&fleet, &host, DEPLOY_TO);
        assert!(
            state
                .health
                .unwrap()
                .1
                .contains(&format!("release={r1} version=v1"))
        );
        assert_eq!(
            state.bad,
            std::slice::from_ref(&r2),
            "the abandoned release is marked bad"
        );
        assert_eq!(
            state.releases,
            [r1.clone(), r2.clone()],
            "rollback deletes nothing"
        );
        let last = state.log.last().unwrap();
        assert_eq!(
            (last["action"].as_str(), last["release"].as_str()),
            (Some("rollback"), Some(r1.as_str()))
        );
    }

    // Nothing older than r1: a clear error, non-zero, nothing touched.
    project
        .shipit(&["test", "rollback"])
        .code(1)
        .stderr_has("nothing to roll back to");
    assert_eq!(fleet_release(&fleet), r1);

    // A new deploy, then rollback: it skips the bad r2 and returns to r1.
    project.set_version("v3");
    project.shipit(&["test", "deploy"]).success();
    let r3 = fleet_release(&fleet);
    project.shipit(&["test", "rollback"]).success();
    assert_eq!(fleet_release(&fleet), r1);
    // And --to picks a release explicitly, even back to one marked bad.
    project.shipit(&["test", "rollback", "--to", &r3]).success();
    assert_eq!(fleet_release(&fleet), r3);
    let state = host_state(&fleet, "web1", DEPLOY_TO);
    assert!(state.health.unwrap().1.contains("version=v3"));
}

#[test]
fn cleanup_keeps_releases_and_never_the_previous_one() {
    let fleet = fleet(1);
    let project = Project::new(&standard_config(
        &fleet,
        "[stages.test.app]\nkeep_releases = 2\n",
    ));
    let mut ids = Vec::new();
    for v in 1..=4 {
        project.set_version(&format!("v{v}"));
        project.shipit(&["test", "deploy", "-q"]).success();
        ids.push(fleet_release(&fleet));
    }
    let state = host_state(&fleet, "web1", DEPLOY_TO);
    assert_eq!(state.releases, ids[2..].to_vec());
    // An unfinished leftover from a crashed run is removed too, and never
    // counted as a release to keep.
    fleet.exec_ok("web1", &format!("mkdir -p {DEPLOY_TO}/releases/20200101000000 && touch {DEPLOY_TO}/.shipit/unfinished/20200101000000"));
    project.set_version("v5");
    project.shipit(&["test", "deploy", "-q"]).success();
    let state = host_state(&fleet, "web1", DEPLOY_TO);
    assert_eq!(state.releases, vec![ids[3].clone(), fleet_release(&fleet)]);
    assert!(state.unfinished.is_empty());
}

#[test]
fn health_that_never_passes_stops_after_the_first_batch() {
    let fleet = fleet(3);
    // With on_failure = "pause" the failed host stays where it is.
    let project = Project::new(&standard_config(
        &fleet,
        "[stages.test.health]\ntimeout = \"2s\"\n[stages.test.rollout]\non_failure = \"pause\"\n",
    ));
    project.shipit(&["test", "deploy", "-q"]).success();
    let r1 = fleet_release(&fleet);

    // web1 (batch 1) answers 500 from now on.
    fleet.exec_ok("web1", &format!("touch {DEPLOY_TO}/shared/health-fail"));
    project.set_version("v2");
    let run = project.shipit(&["test", "deploy"]);
    run.code(5)
        .stderr_has("web1     health       FAILED")
        .stderr_has("not healthy after 2s")
        .stderr_has("status 500 (want 200)")
        .stderr_has("deploy failed on web1 (health)")
        .stderr_has("deploy --resume");
    let web1 = host_state(&fleet, "web1", DEPLOY_TO);
    assert_ne!(
        web1.current.as_deref(),
        Some(r1.as_str()),
        "web1 was switched"
    );
    for host in ["web2", "web3"] {
        let state = host_state(&fleet, host, DEPLOY_TO);
        assert_eq!(
            state.current.as_deref(),
            Some(r1.as_str()),
            "{host} untouched"
        );
        assert!(state.health.unwrap().1.contains("version=v1"));
        let last = state.log.last().unwrap();
        assert!(
            last["result"].as_str().unwrap().starts_with("not switched"),
            "{last}"
        );
    }
    assert!(
        web1.log.last().unwrap()["result"]
            .as_str()
            .unwrap()
            .starts_with("failed at health")
    );
}

#[test]
fn health_that_never_passes_is_rolled_back_by_default() {
    let fleet = fleet(3);
    let project = Project::new(&standard_config(
        &fleet,
        "[stages.test.health]\ntimeout = \"2s\"\n",
    ));
    project.shipit(&["test", "deploy", "-q"]).success();
    let r1 = fleet_release(&fleet);
    // Only v2 fails its health check on web2; v1 stays healthy there.
    fleet.exec_ok("web2", &format!("echo v2 > {DEPLOY_TO}/shared/health-fail"));
    project.set_version("v2");
    let run = project.shipit(&["test", "deploy"]);
    run.code(4)
        .stderr_has("failed on web2 (health) and was rolled back");
    let r2 = host_state(&fleet, "web1", DEPLOY_TO)
        .releases
        .last()
        .cloned()
        .unwrap();
    assert_ne!(r1, r2);
    // web1 (batch 1) had switched and is back; web2 is back; web3 untouched.
    for host in ["web1", "web3"] {
        let state = host_state(&fleet, host, DEPLOY_TO);
        assert_eq!(state.current.as_deref(), Some(r1.as_str()), "{host}");
        assert!(state.health.unwrap().1.contains("version=v1"), "{host}");
        assert_eq!(
            state.bad,
            std::slice::from_ref(&r2),
            "{host}: the failed release is marked bad"
        );
    }
    let web2 = host_state(&fleet, "web2", DEPLOY_TO);
    assert_eq!(web2.current.as_deref(), Some(r1.as_str()));
    assert!(
        web2.log.last().unwrap()["result"]
            .as_str()
            .unwrap()
            .contains("back on the previous release")
    );
    let web1 = host_state(&fleet, "web1", DEPLOY_TO);
    assert_eq!(web1.log.last().unwrap()["result"], "rolled back");
    // A later rollback skips the bad release: nothing older than r1 exists.
    project
        .shipit(&["test", "rollback"])
        .code(1)
        .stderr_has("nothing to roll back to");
}

#[test]
fn unreachable_host_fails_before_any_change() {
    let fleet = fleet(3);
    let project = Project::new(&standard_config(&fleet, ""));
    fleet.stop_sshd("web2");
    let run = project.shipit(&["test", "deploy"]);
    run.code(3)
        .stderr_has("cannot connect to 1 host; nothing was changed on any host")
        .stderr_has("web2: cannot connect to");
    for host in names(&fleet) {
        let state = host_state(&fleet, &host, DEPLOY_TO);
        assert!(
            state.releases.is_empty() && state.current.is_none(),
            "{host} was changed"
        );
    }
}

#[test]
fn a_changed_host_key_is_refused() {
    let fleet = fleet(2);
    // A known_hosts where web2's keys belong to web1.
    let web1 = fleet.address("web1");
    let web2 = fleet.address("web2");
    let original = std::fs::read_to_string(fleet.known_hosts()).unwrap();
    let forged: String = original
        .lines()
        .filter(|l| !l.starts_with(&format!("{web2} ")))
        .flat_map(|l| {
            if l.starts_with(&format!("{web1} ")) {
                vec![l.to_string(), l.replacen(&web1, &web2, 1)]
            } else {
                vec![l.to_string()]
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let project = Project::new(&standard_config(&fleet, ""));
    let known_hosts = project.path().join("known_hosts");
    std::fs::write(&known_hosts, forged + "\n").unwrap();
    let config = standard_config(&fleet, "").replace(
        &fleet.known_hosts().display().to_string(),
        &known_hosts.display().to_string(),
    );
    project.write_config(&config);
    for checking in ["strict", "accept-new"] {
        project.write_config(&format!(
            "{config}\n[stages.test.ssh]\nhost_key_checking = \"{checking}\"\n"
        ));
        project
            .shipit(&["test", "deploy"])
            .code(3)
            .stderr_has("web2: HOST KEY FOR")
            .stderr_has("HAS CHANGED");
    }
    assert!(host_state(&fleet, "web1", DEPLOY_TO).releases.is_empty());
}

#[test]
fn dry_run_prints_the_plan_and_connects_to_nothing() {
    let fleet = fleet(3);
    let project = Project::new(&standard_config(
        &fleet,
        "[stages.test.rollout]\nrolling_batch_size = 2\n",
    ));
    // With every sshd stopped, any connection attempt would fail the run.
    for host in names(&fleet) {
        fleet.stop_sshd(&host);
    }
    let run = project.shipit(&["test", "deploy", "--dry-run"]);
    run.success()
        .stdout_has("Plan: deploy demo release ")
        .stdout_has("hosts     3 in 2 batches: web1 web2 | web3")
        .stdout_has("upload         shipit:unpack /srv/demo ")
        .stdout_has("restart        cd /srv/demo/releases/")
        .stdout_has("health         GET http://");
    assert!(run.stderr.is_empty(), "{run}");
}

#[test]
fn missing_shared_file_refuses_naming_host_and_file() {
    let fleet = fleet(2);
    let project = Project::new(&standard_config(
        &fleet,
        "[stages.test.app]\nshared_files = [\"config/app.env\"]\n",
    ));
    fleet.exec_ok(
        "web1",
        &format!("mkdir -p {DEPLOY_TO}/shared/config && touch {DEPLOY_TO}/shared/config/app.env"),
    );
    project
        .shipit(&["test", "deploy"])
        .code(1)
        .stderr_has("web2: shared file /srv/demo/shared/config/app.env is missing");
    assert!(host_state(&fleet, "web1", DEPLOY_TO).releases.is_empty());
}

#[test]
fn hostile_paths_do_what_they_say_and_nothing_else() {
    let fleet = fleet(1);
    let deploy_to = "/srv/my app; $(touch /tmp/shipit-pwned) 'q\"";
    let config = standard_config(&fleet, "")
        .replace(
            &format!("deploy_to = \"{DEPLOY_TO}\""),
            &format!("deploy_to = {deploy_to:?}"),
        )
        .replace(
            "shared_dirs = [\"log\"]",
            "shared_dirs = [\"log\", \"data dir/$(x)\"]",
        );
    let project = Project::new(&config);
    project.shipit(&["test", "deploy"]).success();
    let state = host_state(&fleet, "web1", deploy_to);
    assert_eq!(state.releases.len(), 1);
    assert!(state.health.unwrap().1.contains("version=v1"));
    assert!(fleet.exists("web1", &format!("{deploy_to}/shared/data dir/$(x)")));
    assert!(!fleet.exists("web1", "/tmp/shipit-pwned"));
    assert!(!std::path::Path::new("/tmp/shipit-pwned").exists());
}

#[test]
fn bad_config_exits_2_naming_file_and_key() {
    let fleet = fleet(1);
    let project = Project::new(&standard_config(
        &fleet,
        "[stages.test.health]\ntimout = \"5s\"\n",
    ));
    project
        .shipit(&["test", "deploy"])
        .code(2)
        .stderr_has("deploy.toml:")
        .stderr_has("stages.test.health.timout: unknown key `timout`");
    project.write_config("[app\nname = 1");
    project
        .shipit(&["test", "deploy"])
        .code(2)
        .stderr_has("deploy.toml:1: not valid TOML");
    project.write_config(&standard_config(&fleet, ""));
    project
        .shipit(&["nostage", "deploy"])
        .code(2)
        .stderr_has("there is no stage `nostage`");
}

/// An operator puts a host back on an old release by hand during an
/// incident, with a relative link. shipit must see that release as live:
/// `status`, `cleanup` and the cleanup at the end of the next deploy keep
/// it, and a rollback after that deploy returns to it.
#[test]
fn a_current_switched_by_hand_with_a_relative_link_is_live_for_every_command() {
    let fleet = fleet(1);
    let project = Project::new(&standard_config(&fleet, ""));
    let mut ids = Vec::new();
    for v in 1..=3 {
        project.set_version(&format!("v{v}"));
        project.shipit(&["test", "deploy", "-q"]).success();
        ids.push(fleet_release(&fleet));
    }
    let (r1, r2, r3) = (ids[0].clone(), ids[1].clone(), ids[2].clone());
    let back_to_r1_by_hand = || {
        fleet.exec_ok(
            "web1",
            &format!(
                "cd {DEPLOY_TO} && ln -sfn releases/{r1} current && {DEPLOY_TO}/current/bin/restart"
            ),
        );
        assert_eq!(
            fleet.read_link("web1", &format!("{DEPLOY_TO}/current")),
            Some(format!("releases/{r1}"))
        );
        crate::support::fleet::wait_for(
            std::time::Duration::from_secs(10),
            "web1 to serve r1",
            || {
                host_state(&fleet, "web1", DEPLOY_TO)
                    .health
                    .is_some_and(|(_, body)| body.contains(&format!("release={r1} ")))
            },
        );
    };
    back_to_r1_by_hand();
    project
        .shipit(&["test", "status"])
        .success()
        .stdout_has(&format!("web1  {r1}"));
    project
        .shipit(&["test", "releases"])
        .success()
        .stdout_has(&format!("* {r1}"));

    // keep_releases = 1: the newest stays, and so does the live r1.
    project.write_config(&standard_config(
        &fleet,
        "[stages.test.app]\nkeep_releases = 1\n",
    ));
    project
        .shipit(&["test", "cleanup"])
        .success()
        .stdout_has(&format!("web1  removed {r2}; kept {r1} {r3}\n"));
    let state = host_state(&fleet, "web1", DEPLOY_TO);
    assert_eq!(state.releases, [r1.clone(), r3.clone()]);
    assert!(state.health.unwrap().1.contains(&format!("release={r1} ")));

    // The next deploy replaces r1; its cleanup keeps r1 (the release the
    // host ran before, which old workers may still run from) as well as
    // r3 (the release before r4, where a rollback goes).
    project.set_version("v4");
    project.shipit(&["test", "deploy", "-q"]).success();
    let r4 = fleet_release(&fleet);
    let state = host_state(&fleet, "web1", DEPLOY_TO);
    assert_eq!(state.releases, [r1.clone(), r3.clone(), r4.clone()]);
    assert_eq!(state.log.last().unwrap()["previous"], r1.as_str());

    // current set by hand to r4, relative: a rollback still knows it
    // leaves r4, and goes to the release before it.
    fleet.exec_ok(
        "web1",
        &format!("cd {DEPLOY_TO} && ln -sfn ./releases/../releases/{r4} current"),
    );
    project.shipit(&["test", "rollback", "-q"]).success();
    assert_eq!(fleet_release(&fleet), r3);
    let state = host_state(&fleet, "web1", DEPLOY_TO);
    assert_eq!(state.bad, std::slice::from_ref(&r4));
    assert!(state.health.unwrap().1.contains(&format!("release={r3} ")));
}

/// A release that ships `tmp -> /srv/demo/victim` with `shared_dirs =
/// ["tmp/pids"]` must not make shipit delete `/srv/demo/victim/pids`: the
/// link step refuses, naming host, release and path, before any host is
/// switched.
#[test]
fn a_release_cannot_make_shared_dirs_delete_outside_it() {
    let fleet = fleet(2);
    let project = Project::new(&standard_config(&fleet, "").replace(
        "shared_dirs = [\"log\"]",
        "shared_dirs = [\"log\", \"tmp/pids\"]",
    ));
    project.shipit(&["test", "deploy", "-q"]).success();
    let r1 = fleet_release(&fleet);
    let victim = format!("{DEPLOY_TO}/victim");
    for host in names(&fleet) {
        fleet.write_file(&host, &format!("{victim}/pids/keep"), "precious");
    }
    std::os::unix::fs::symlink(&victim, project.path().join("dist/tmp")).unwrap();
    project.set_version("v2");
    let run = project.shipit(&["test", "deploy"]);
    run.code(1).stderr_has("no host was switched");
    for host in names(&fleet) {
        let state = host_state(&fleet, &host, DEPLOY_TO);
        let [r2] = state.unfinished.as_slice() else {
            panic!(
                "{host}: one unfinished release expected: {:?}",
                state.unfinished
            )
        };
        run.stderr_has(&format!("{host}     link-shared  FAILED"))
            .stderr_has(&format!(
                "release {r2}: refusing to link shared path tmp/pids: tmp in the release is a symlink (to {victim})"
            ));
        assert_eq!(
            fleet
                .read_file(&host, &format!("{victim}/pids/keep"))
                .as_deref(),
            Some("precious"),
            "{host}: the victim survives"
        );
        assert_eq!(state.current.as_deref(), Some(r1.as_str()), "{host}");
        assert!(state.health.unwrap().1.contains(&format!("release={r1} ")));
    }
}
