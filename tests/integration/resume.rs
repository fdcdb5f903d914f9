//! `deploy --resume` and the journal it relies on, on a real fleet behind a
//! real HAProxy: two resumes at once, a resumed run that fails and must
//! undo what the dead run switched, a run killed while rolling back, and a
//! journal that cannot be written.

use std::time::Duration;

use crate::support::behind_haproxy::{
    assert_no_host_drained, assert_unlocked, config, current, deploy_v1, fleet, names,
};
use crate::support::fleet::Fleet;
use crate::support::shipit::{DEPLOY_TO, Project, host_state};

const WAIT: Duration = Duration::from_secs(90);

/// Restarts take a second (so a run can be caught mid-way), batches of
/// `batch`, health checks give up after 3 s.
fn slow(batch: usize) -> String {
    format!(
        "[stages.test.app]\nrestart = \"sleep 1; bin/restart\"\n\
         [stages.test.rollout]\nrolling_batch_size = {batch}\nlock_lease = \"60s\"\n\
         [stages.test.health]\ntimeout = \"3s\"\n"
    )
}

/// Every host's `current` is `release` and its app answers as `release`;
/// HAProxy has none of them drained or in maintenance; no lock is left.
#[track_caller]
fn all_serve(fleet: &Fleet, release: &str) {
    for host in names(fleet) {
        let state = host_state(fleet, &host, DEPLOY_TO);
        assert_eq!(state.current.as_deref(), Some(release), "{host} current");
        let body = state.health.map(|h| h.1).unwrap_or_default();
        assert!(
            body.contains(&format!("release={release}")),
            "{host} serves {body:?}"
        );
    }
    assert_no_host_drained(fleet);
    assert_unlocked(fleet);
}

/// Two `deploy --resume` of the same dead run, started at once on the same
/// machine: exactly one takes the lock over and finishes the run; the
/// other exits with the lock-held code, naming the one that won.
#[test]
fn two_resumes_at_once_exactly_one_proceeds() {
    let fleet = fleet(2);
    let project = Project::new(&config(&fleet, &slow(1)));
    deploy_v1(&project, &fleet);
    project.set_version("v2");
    let mut run = project.spawn(&["test", "deploy", "-v"]);
    run.wait_for("web2     restart      $", WAIT);
    run.signal("KILL");
    assert_eq!(run.finish().code, -1, "killed by a signal");
    let dead = fleet
        .read_file("web1", &format!("{DEPLOY_TO}/.shipit/lock/run"))
        .expect("the dead run's lock");

    let first = project.spawn(&["test", "deploy", "--resume"]);
    let second = project.spawn(&["test", "deploy", "--resume"]);
    let (first, second) = (first.finish(), second.finish());
    let (winner, loser) = match [first.code, second.code] {
        [0, 6] => (&first, &second),
        [6, 0] => (&second, &first),
        codes => panic!("want one 0 and one 6, got {codes:?}\n{first}\n{second}"),
    };
    winner.stderr_has("resuming run");
    loser
        .stderr_has("stage test is locked")
        .stderr_has("nothing was changed");
    assert!(!loser.stderr.contains("resuming run"), "{loser}");
    let r2 = current(&fleet, "web1").unwrap();
    all_serve(&fleet, &r2);
    // The resumed run had an id of its own, recorded in its `started`
    // entry; its entries keep the dead run's id.
    let journal = fleet
        .read_file("web2", &format!("{DEPLOY_TO}/.shipit/journal"))
        .unwrap();
    let entries: Vec<serde_json::Value> = journal
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(entries.iter().all(|e| e["run"] == dead.trim()), "{journal}");
    let locks: Vec<String> = entries
        .iter()
        .filter(|e| e["event"] == "started")
        .filter_map(|e| serde_json::from_str::<serde_json::Value>(e["detail"].as_str()?).ok())
        .filter_map(|d| d["lock"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        locks.len(),
        1,
        "one resumed run wrote the journal: {journal}"
    );
    assert_ne!(locks[0], dead.trim());
}

/// A deploy killed after its first batch, resumed, and failing on a later
/// host: the hosts the dead run had switched go back too, and exit 4's
/// "every host runs the release it ran before" is true.
#[test]
fn a_resumed_run_that_fails_rolls_back_what_the_dead_run_switched() {
    let fleet = fleet(4);
    let project = Project::new(&config(&fleet, &slow(2)));
    let r1 = deploy_v1(&project, &fleet);
    fleet.exec_ok("web3", &format!("echo v2 > {DEPLOY_TO}/shared/health-fail"));
    project.set_version("v2");
    let mut run = project.spawn(&["test", "deploy", "-v"]);
    run.wait_for("== batch 2/2", WAIT);
    run.signal("KILL");
    assert_eq!(run.finish().code, -1, "killed by a signal");
    let r2 = current(&fleet, "web1").unwrap();
    assert_ne!(r2, r1);
    assert_eq!(current(&fleet, "web2").as_deref(), Some(r2.as_str()));

    let resumed = project.shipit(&["test", "deploy", "--resume"]);
    resumed
        .code(4)
        .stderr_has("resuming run")
        .stderr_has("every host runs the release it ran before");
    all_serve(&fleet, &r1);
    for host in names(&fleet) {
        let state = host_state(&fleet, &host, DEPLOY_TO);
        assert_eq!(state.bad, vec![r2.clone()], "{host}: {r2} is marked bad");
    }
}

/// A deploy killed while it was rolling back: `--resume` finishes the
/// rollback, never rolls the failed release out again.
#[test]
fn a_run_killed_while_rolling_back_is_resumed_as_a_rollback() {
    let fleet = fleet(3);
    let project = Project::new(&config(&fleet, &slow(1)));
    let r1 = deploy_v1(&project, &fleet);
    fleet.exec_ok("web3", &format!("echo v2 > {DEPLOY_TO}/shared/health-fail"));
    project.set_version("v2");
    let mut run = project.spawn(&["test", "deploy", "-v"]);
    run.wait_for("== rollback 2/3", WAIT);
    run.signal("KILL");
    assert_eq!(run.finish().code, -1, "killed by a signal");
    assert_ne!(current(&fleet, "web1").as_deref(), Some(r1.as_str()));

    let resumed = project.shipit(&["test", "deploy", "--resume", "-v"]);
    resumed
        .code(4)
        .stderr_has("finishing that rollback")
        .stderr_has("every host runs the release it ran before");
    assert!(
        !resumed.stderr.contains("== batch"),
        "rolled the failed release out again:\n{resumed}"
    );
    assert!(!resumed.stderr.contains("web3     health"), "{resumed}");
    all_serve(&fleet, &r1);
    for host in names(&fleet) {
        let state = host_state(&fleet, &host, DEPLOY_TO);
        assert_eq!(
            state.bad.len(),
            1,
            "{host}: the failed release is marked bad"
        );
    }
}

/// web1's journal is read-only (a read-only bind mount over it in the
/// host's mount namespace). Its entries go ahead of each step, so the step
/// they precede never starts: web1 is not taken out or switched, and the
/// summary says so. (Before, the switch ran with its entry chained after
/// it: the failed write was taken for a failed switch, and web1 was put
/// back pointing at the new release while the run said it had the old.)
#[test]
fn an_unwritable_journal_stops_the_step_and_the_summary_tells_the_truth() {
    let fleet = fleet(2);
    let project = Project::new(&config(&fleet, ""));
    let r1 = deploy_v1(&project, &fleet);
    let journal = format!("{DEPLOY_TO}/.shipit/journal");
    fleet.exec_ok(
        "web1",
        &format!("mount --bind {journal} {journal} && mount -o remount,bind,ro {journal}"),
    );
    assert!(
        !fleet
            .exec("web1", &format!("echo x >> {journal}"))
            .status
            .success(),
        "the journal should be read-only"
    );
    project.set_version("v2");
    let run = project.shipit(&["test", "deploy"]);
    run.code(1)
        .stderr_has("could not be written, so this step was not started")
        .stderr_has("no host was switched");
    all_serve(&fleet, &r1);
    let log = host_state(&fleet, "web1", DEPLOY_TO).log;
    let last = log.last().unwrap();
    assert_eq!(last["previous"].as_str(), Some(r1.as_str()), "{last}");
    assert_ne!(last["release"].as_str(), Some(r1.as_str()), "{last}");
}
