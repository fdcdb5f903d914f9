//! A rollback: which hosts, to which release.

use super::*;

#[test]
fn rollback_rolls_the_hosts_not_yet_on_the_target() {
    let stage = stage(3, LB_AND_HEALTH);
    let mut f = facts(&stage, Some(3), &[1, 2, 3]);
    // web3 was never switched to 3 (a deploy that stopped early).
    f.get_mut("web3").unwrap().current = crate::host::Current::Release(id(2));
    let plan = rollback(&testing::rollback_input(&stage, &f)).unwrap();
    assert_eq!(plan.release, id(2));
    assert_eq!(plan.revision, "rev2");
    let batches: Vec<Vec<&str>> = plan.batches.iter().map(|b| hosts(&b.pipelines)).collect();
    assert_eq!(batches, [vec!["web1", "web2"]]);
    assert!(plan.hosts[2].unchanged);
    assert_eq!(
        kinds(&plan.batches[0].pipelines[0]),
        ["drain", "switch", "restart", "health", "enable"]
    );
    let Action::Health { check } = &plan.batches[0].pipelines[0].steps[3].action else {
        panic!()
    };
    let CheckKind::Http { expect_body, .. } = &check.kind else {
        panic!()
    };
    assert_eq!(expect_body.as_deref(), Some("20261122100002"));
    // Release 3 is marked bad on every host that has it.
    assert_eq!(hosts(&plan.finish), ["web1", "web2", "web3"]);
    let Action::Remote { cmd } = &plan.finish[0].steps[0].action else {
        panic!()
    };
    assert!(
        cmd.display()
            .starts_with("shipit:mark-bad /srv/shop 20261122100003")
    );
}

#[test]
fn rollback_with_nothing_older_is_an_error() {
    let stage = stage(1, "");
    let f = facts(&stage, Some(1), &[1]);
    let err = rollback(&testing::rollback_input(&stage, &f)).unwrap_err();
    assert!(
        err.to_string().starts_with("nothing to roll back to"),
        "{err}"
    );
}
