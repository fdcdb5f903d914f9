//! A deploy: prepare everywhere, then batches; exact commands, cleanup, the dry run, and what is refused before anything changes.

use super::*;

#[test]
fn deploy_prepares_everywhere_then_rolls_in_batches() {
    let plan = deploy_plan(5, &format!("keep_releases = 2\n{LB_AND_HEALTH}"), true);
    assert_eq!(
        hosts(&plan.prepare),
        ["web1", "web2", "web3", "web4", "web5"]
    );
    assert_eq!(kinds(&plan.prepare[0]), ["upload", "link-shared", "finish"]);
    let batches: Vec<Vec<&str>> = plan.batches.iter().map(|b| hosts(&b.pipelines)).collect();
    assert_eq!(
        batches,
        [vec!["web1", "web2"], vec!["web3", "web4"], vec!["web5"]]
    );
    assert_eq!(
        kinds(&plan.batches[0].pipelines[0]),
        ["drain", "switch", "restart", "health", "enable"]
    );
    assert!(plan.warnings.is_empty());
    assert_eq!(plan.hosts[0].before, Some(id(2)));
}

#[test]
fn steps_carry_exact_commands_and_checks() {
    let plan = deploy_plan(1, &format!("keep_releases = 2\n{LB_AND_HEALTH}"), true);
    let steps = &plan.batches[0].pipelines[0].steps;
    let Action::Lb { lb } = &steps[0].action else {
        panic!("{:?}", steps[0].action)
    };
    assert_eq!((lb.driver.name(), lb.op), ("command", LbOp::Drain));
    assert!(!lb.member.commands.contains_key("wait_drained"));
    let cmd = &lb.member.commands["drain"];
    assert!(
        cmd.render().ends_with("sh -c 'lbctl drain web1'"),
        "{}",
        cmd.render()
    );
    assert!(cmd.render().contains("SHIPIT_RELEASE=20261122100003"));
    assert!(
        cmd.render()
            .contains("SHIPIT_PREVIOUS_RELEASE=20261122100002")
    );
    let Action::Remote { cmd } = &steps[2].action else {
        panic!()
    };
    assert!(
        cmd.render()
            .starts_with("cd /srv/shop/releases/20261122100003 && ")
    );
    assert!(cmd.render().ends_with("sh -c 'bin/restart web1'"));
    let Action::Health { check } = &steps[3].action else {
        panic!()
    };
    let CheckKind::Http {
        url, expect_body, ..
    } = &check.kind
    else {
        panic!()
    };
    assert_eq!(url, "http://10.0.0.11:8080/health");
    assert_eq!(expect_body.as_deref(), Some("20261122100003"));
}

#[test]
fn cleanup_is_planned_from_facts() {
    let plan = deploy_plan(1, "keep_releases = 1", true);
    // After the deploy: 1, 2 (previous) and 3 (new). keep 1 → only 1 goes.
    let Action::Remote { cmd } = &plan.finish[0].steps[0].action else {
        panic!("{:?}", plan.finish)
    };
    assert_eq!(
        cmd.display(),
        "shipit:remove-releases /srv/shop 20261122100001"
    );
    let plan = deploy_plan(1, "keep_releases = 5", true);
    assert!(matches!(
        plan.finish[0].steps[0].action,
        Action::Nothing { .. }
    ));
}

#[test]
fn a_dry_run_plan_says_what_it_does_not_know() {
    let plan = deploy_plan(3, "", false);
    assert_eq!(plan.hosts[0].before, None);
    assert_eq!(plan.batches.len(), 3);
    assert_eq!(kinds(&plan.batches[0].pipelines[0]), ["switch"]);
    assert_eq!(plan.warnings.len(), 2);
    let text = render(&plan, false);
    assert!(
        text.contains("web1      10.0.0.11 now runs unknown (a dry run does not connect)"),
        "{text}"
    );
    assert!(
        text.contains("warning: no load balancer configured"),
        "{text}"
    );
}

#[test]
fn percentages_and_oversized_batches() {
    let plan = deploy_plan(4, "[rollout]\nrolling_batch_size = \"50%\"", false);
    assert_eq!(plan.batches.len(), 2);
    let plan = deploy_plan(3, "[rollout]\nrolling_batch_size = 10", false);
    assert_eq!(plan.batches.len(), 1);
    let plan = deploy_plan(1, "[rollout]\nrolling_batch_size = \"25%\"", false);
    assert_eq!(plan.batches.len(), 1);
}

#[test]
fn preflight_refuses_before_changing_anything() {
    let stage = stage(2, "shared_files = [\".env\"]");
    let mut f = facts(&stage, Some(2), &[1, 2]);
    f.get_mut("web2")
        .unwrap()
        .missing_shared
        .push(".env".into());
    f.get_mut("web1").unwrap().current = crate::host::Current::NotALink;
    let err = deploy(&DeployInput {
        revision: String::new(),
        ..testing::deploy_input(&stage, &f)
    })
    .unwrap_err()
    .to_string();
    assert_eq!(
        err,
        "not deploying; nothing was changed on any host:\n  \
         web1: /srv/shop/current is a real directory, not a symlink; move it away (shipit will not delete it)\n  \
         web2: shared file /srv/shop/shared/.env is missing; create it on the host (shipit never creates shared files)"
    );
}

#[test]
fn dry_run_text() {
    let plan = deploy_plan(2, LB_AND_HEALTH, true);
    let text = render(&plan, false);
    let expected = "\
Plan: deploy shop release 20261122100003 to production
  revision  abc
  hosts     2 in 1 batch: web1 web2
  capacity  at most 2 hosts out of service at once
  rollout   batches of 2; no bake
  web1      10.0.0.11 now runs 20261122100002
  web2      10.0.0.12 now runs 20261122100002

Prepare, on all hosts at once (nothing switches until every host has the release):
  web1      upload         shipit:unpack /srv/shop 20261122100003  < release archive
            link-shared    shipit:link-shared /srv/shop 20261122100003 dlog f.env
            finish         shipit:finish /srv/shop 20261122100003 abc
  web2      upload         shipit:unpack /srv/shop 20261122100003  < release archive
            link-shared    shipit:link-shared /srv/shop 20261122100003 dlog f.env
            finish         shipit:finish /srv/shop 20261122100003 abc
";
    assert!(text.starts_with(expected), "{text}");
    assert!(text.contains(
        "            health         GET http://10.0.0.12:8080/health until status 200 and body contains \"20261122100003\" (every 500ms, up to 30s)\n"
    ), "{text}");
    assert!(text.contains("Each host then appends the outcome to /srv/shop/revisions.log."));
}
