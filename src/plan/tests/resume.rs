//! Resuming a dead run: what it undoes, and a rollback that died.

use super::*;

/// Journal entries of the dead run `dead` of release 3 on one host, which
/// ran release 2 before it.
fn dead_run(events: &[&str]) -> Option<crate::host::journal::RunTrace> {
    let entries: Vec<crate::host::journal::Entry> = events
        .iter()
        .map(|event| crate::host::journal::Entry {
            run: "dead".into(),
            time: "t".into(),
            op: "deploy".into(),
            release: id(3).to_string(),
            event: event.to_string(),
            detail: (*event == "started")
                .then(|| format!(r#"{{"by":"ana","digest":"","before":"{}"}}"#, id(2))),
        })
        .collect();
    crate::host::journal::last_run(&entries)
}

fn resumed_plan(undoing: bool, journals: [&[&str]; 3], currents: [u32; 3]) -> Plan {
    let stage = stage(3, LB_AND_HEALTH);
    let mut f = facts(&stage, Some(2), &[1, 2, 3]);
    for (i, (events, current)) in journals.iter().zip(currents).enumerate() {
        let host = f.get_mut(&format!("web{}", i + 1)).unwrap();
        host.last_run = dead_run(events);
        host.current = crate::host::Current::Release(id(current));
    }
    let mut run = run();
    run.resumes = Some(Resumes {
        run: "dead".into(),
        undoing,
    });
    deploy(&DeployInput {
        run,
        resume: true,
        ..testing::deploy_input(&stage, &f)
    })
    .unwrap()
}

/// A resumed deploy rolls out what the dead run left, but knows what every
/// host ran before the whole run: an undo takes back the hosts the dead
/// run switched and finished too, and the journal keeps the dead run's id.
#[test]
fn a_resumed_deploy_undoes_what_the_dead_run_switched() {
    let done: &[&str] = &["started", "drained", "switched", "restarted", "rolled-out"];
    let plan = resumed_plan(
        false,
        [done, &["started", "drained", "switched"], &["started"]],
        [3, 3, 2],
    );
    assert_eq!(plan.journal_run(), "dead");
    assert_ne!(plan.run, "dead", "a run id of its own");
    let web1 = plan.host("web1").unwrap();
    assert!(web1.unchanged);
    assert_eq!(
        (web1.before.clone(), web1.current.clone()),
        (Some(id(2)), Some(id(3)))
    );
    let rolling: Vec<&str> = plan.batches.iter().flat_map(|b| b.hosts()).collect();
    assert_eq!(rolling, ["web2", "web3"]);
    assert_eq!(hosts(&plan.undo), ["web1", "web2", "web3"]);
    let undo_hosts: Vec<&str> = plan
        .undo_parts
        .iter()
        .flat_map(|p| p.hosts.iter().map(String::as_str))
        .collect();
    assert_eq!(undo_hosts, ["web1", "web2", "web3"]);
}

/// The dead run was rolling back: nothing is rolled out; a host whose undo
/// had begun counts as still on the release being rolled back, whatever
/// `current` says.
#[test]
fn a_deploy_that_died_rolling_back_resumes_as_a_rollback() {
    let plan = resumed_plan(
        true,
        [
            &["started", "switched", "rolled-out", "undoing"],
            &[
                "started",
                "switched",
                "rolled-out",
                "undoing",
                "drained",
                "switched",
            ],
            &[
                "started",
                "switched",
                "undoing",
                "drained",
                "switched",
                "rolled-back",
            ],
        ],
        [3, 2, 2],
    );
    assert!(plan.undoing);
    assert!(plan.batches.is_empty() && plan.prepare.is_empty());
    let current = |h: &str| plan.host(h).unwrap().current.clone();
    assert_eq!(current("web1"), Some(id(3)));
    assert_eq!(current("web2"), Some(id(3)), "its undo had begun");
    assert_eq!(current("web3"), Some(id(2)), "rolled back already");
    assert_eq!(hosts(&plan.undo), ["web1", "web2", "web3"]);
}
