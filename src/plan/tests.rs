//! Planner tests: configuration and facts in, plan out.

use super::*;
use crate::lb::LbOp;
use crate::testing::{self, facts, id, run, stage};

const LB_AND_HEALTH: &str = r#"
restart = "bin/restart {name}"
shared_dirs = ["log"]
shared_files = [".env"]
[health]
url = "http://{address}:8080/health"
expect_body = "{release}"
[lb]
drain = "lbctl drain {name}"
enable = "lbctl enable {name}"
[rollout]
rolling_batch_size = 2
"#;

fn deploy_plan(hosts: usize, extra: &str, with_facts: bool) -> Plan {
    testing::deploy_plan(&stage(hosts, extra), with_facts, None).unwrap()
}

fn kinds(p: &Pipeline) -> Vec<&'static str> {
    p.steps.iter().map(|s| s.kind.as_str()).collect()
}

fn hosts(batch: &[Pipeline]) -> Vec<&str> {
    batch.iter().map(|p| p.host.as_str()).collect()
}

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
        stage: &stage,
        hosts: &stage.hosts,
        release: id(3),
        revision: String::new(),
        facts: Some(&f),
        run: run(),
        env: &[],
        resume: false,
        digest: String::new(),
        service: None,
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
fn rollback_rolls_the_hosts_not_yet_on_the_target() {
    let stage = stage(3, LB_AND_HEALTH);
    let mut f = facts(&stage, Some(3), &[1, 2, 3]);
    // web3 was never switched to 3 (a deploy that stopped early).
    f.get_mut("web3").unwrap().current = crate::host::Current::Release(id(2));
    let plan = rollback(&RollbackInput {
        stage: &stage,
        hosts: &stage.hosts,
        to: None,
        facts: &f,
        run: run(),
        env: &[],
        service: None,
    })
    .unwrap();
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
    let err = rollback(&RollbackInput {
        stage: &stage,
        hosts: &stage.hosts,
        to: None,
        facts: &f,
        run: run(),
        env: &[],
        service: None,
    })
    .unwrap_err();
    assert!(
        err.to_string().starts_with("nothing to roll back to"),
        "{err}"
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

const HOOKS: &str = r#"
restart = "bin/restart"
[env]
RAILS_ENV = "production"
[hooks]
before_deploy = ["notify start", { run = "mkdir -p /tmp/x", run_on = "hosts" }]
after_upload = [{ run = "bin/migrate", run_on = "once" }]
before_switch = ["warm {name}"]
after_switch = [{ run = "log switch", run_on = "local" }]
after_deploy = ["notify done"]
on_failure = ["notify failed", { run = "collect logs", run_on = "hosts" }]
[rollout]
rolling_batch_size = 2
"#;

#[test]
fn hooks_go_where_they_belong() {
    let stage = stage(3, HOOKS);
    let f = facts(&stage, Some(2), &[1, 2]);
    let env = vec![
        (
            "RAILS_ENV".to_string(),
            crate::shell::Word::Plain("production".into()),
        ),
        (
            "TOKEN".to_string(),
            crate::shell::Word::Secret("s3cret".into()),
        ),
    ];
    let plan = deploy(&DeployInput {
        stage: &stage,
        hosts: &stage.hosts,
        release: id(3),
        revision: "abc".into(),
        facts: Some(&f),
        run: run(),
        resume: false,
        digest: String::new(),
        env: &env,
        service: None,
    })
    .unwrap();
    let kinds_of = |steps: &[Step]| steps.iter().map(|s| s.kind.as_str()).collect::<Vec<_>>();
    // Run-level local hooks.
    assert_eq!(kinds_of(&plan.hooks.before), ["before_deploy"]);
    assert_eq!(kinds_of(&plan.hooks.after), ["after_deploy"]);
    assert_eq!(kinds_of(&plan.hooks.on_failure), ["on_failure"]);
    // Host hooks: before_deploy on every host before the upload; the
    // migration only on the first host, after its release is complete.
    assert_eq!(
        kinds(&plan.prepare[0]),
        ["before_deploy", "upload", "finish", "after_upload"]
    );
    assert_eq!(
        kinds(&plan.prepare[1]),
        ["before_deploy", "upload", "finish"]
    );
    let Action::Remote { cmd } = &plan.prepare[0].steps[3].action else {
        panic!()
    };
    assert_eq!(
        cmd.cwd.as_deref(),
        Some("/srv/shop/releases/20261122100003")
    );
    assert!(
        cmd.render().ends_with("sh -c bin/migrate"),
        "{}",
        cmd.render()
    );
    // Per-host hooks around the switch; after_switch runs locally.
    assert_eq!(
        kinds(&plan.batches[0].pipelines[0]),
        ["before_switch", "switch", "after_switch", "restart"]
    );
    assert!(matches!(
        plan.batches[0].pipelines[0].steps[2].action,
        Action::Local { .. }
    ));
    let Action::Remote { cmd } = &plan.batches[0].pipelines[1].steps[0].action else {
        panic!()
    };
    let line = cmd.render();
    assert!(line.contains("SHIPIT_BATCH_HOSTS='web1 web2'"), "{line}");
    assert!(line.contains("SHIPIT_HOSTS='web1 web2 web3'"), "{line}");
    assert!(line.ends_with("sh -c 'warm web2'"), "{line}");
    // [env] reaches commands on hosts, secrets redacted when shown, and
    // not local ones.
    let Action::Remote { cmd } = &plan.batches[0].pipelines[0].steps[3].action else {
        panic!()
    };
    assert!(cmd.render().contains("RAILS_ENV=production TOKEN=s3cret"));
    assert!(cmd.display().contains("TOKEN=[REDACTED]") && !cmd.display().contains("s3cret"));
    let Action::Local { cmd } = &plan.batches[0].pipelines[0].steps[2].action else {
        panic!()
    };
    assert!(!cmd.render().contains("RAILS_ENV"));
    assert!(!render(&plan, true).contains("s3cret"));
    // on_failure hooks on hosts, for every host.
    assert_eq!(plan.on_failure_hosts.len(), 3);
    // Finish: cleanup then nothing else (after_deploy is local).
    assert_eq!(kinds(&plan.finish[0]), ["cleanup"]);
}

const HAPROXY: &str = r#"
restart = "bin/restart"
[lb]
driver = "haproxy"
socket = "/run/haproxy/admin.sock"
via = ["web1", "ops@lb2"]
backend = "shop"
server = "{app}_{name}"
drain_timeout = "10s"
"#;

#[test]
fn haproxy_steps_are_resolved_per_host() {
    let plan = deploy_plan(2, HAPROXY, true);
    assert_eq!(
        plan.warnings.len(),
        1,
        "only the missing [health]: {:?}",
        plan.warnings
    );
    let steps = &plan.batches[1].pipelines[0].steps;
    assert_eq!(
        steps.iter().map(|s| s.kind.as_str()).collect::<Vec<_>>(),
        ["drain", "switch", "restart", "enable"]
    );
    let Action::Lb { lb: drain } = &steps[0].action else {
        panic!("{:?}", steps[0].action)
    };
    assert_eq!(drain.member.server, "shop_web2");
    let settings = drain.driver.settings();
    assert_eq!(settings["backend"], "shop");
    assert_eq!(settings["balancers"].as_array().unwrap().len(), 2);
    assert_eq!(settings["drain_timeout"], 10000);
    let text = render(&plan, false);
    assert!(text.contains(
        "  web2      drain          haproxy web1:/run/haproxy/admin.sock, ops@lb2:/run/haproxy/admin.sock: \
         set server shop/shop_web2 state drain; wait until 0 sessions (≤10s, then warn)\n"
    ), "{text}");
    assert!(text.contains(
        "            enable         haproxy web1:/run/haproxy/admin.sock, ops@lb2:/run/haproxy/admin.sock: \
         set server shop/shop_web2 state ready (and health up, after shipit's own check passed); \
         wait until HAProxy reports UP (≤30s)\n"
    ), "{text}");
}

#[test]
fn command_driver_waits_are_rendered() {
    let plan = deploy_plan(
        1,
        "[lb]\ndrain = \"lbctl drain {name}\"\nenable = \"lbctl enable {name}\"\nwait_drained = \"lbctl idle {name}\"",
        false,
    );
    let text = render(&plan, false);
    assert!(text.contains(
        "SHIPIT_BATCH_HOSTS=web1 sh -c 'lbctl drain web1'; \
         then every 1s, with the same environment: sh -c 'lbctl idle web1' until it exits 0 (≤30s, then warn)\n"
    ), "{text}");
    // Exactly one warning left: no health check. The load balancer is set.
    assert_eq!(plan.warnings.len(), 1, "{:?}", plan.warnings);
}

#[test]
fn driver_none_warns_that_requests_fail() {
    let plan = deploy_plan(1, "[lb]\ndriver = \"none\"\ndrain = \"ignored\"", false);
    assert!(
        kinds(&plan.batches[0].pipelines[0])
            .iter()
            .all(|k| *k != "drain")
    );
    let text = render(&plan, false);
    assert!(text.contains(
        "warning: no load balancer configured ([lb] driver = \"none\" or no [lb]): requests sent to a host while it restarts will fail"
    ), "{text}");
}

fn deploy_with_service(hosts: usize, extra: &str, service: &Service) -> Result<Plan, PlanError> {
    testing::deploy_plan(&stage(hosts, extra), true, Some(service))
}

const DRAINING: &str = "[lb]\ndrain = \"lbctl drain {name}\"\nenable = \"lbctl enable {name}\"\n";

#[test]
fn a_ramp_sizes_batches_and_bakes_follow_them() {
    let plan = deploy_plan(
        8,
        "[rollout]\nrolling_batch_size = [1, 2, \"50%\"]\nbake = [\"5m\", \"30s\"]",
        false,
    );
    let sizes: Vec<usize> = plan.batches.iter().map(|b| b.pipelines.len()).collect();
    assert_eq!(sizes, [1, 2, 4, 1]);
    let bakes: Vec<u64> = plan.batches.iter().map(|b| b.bake.as_secs()).collect();
    assert_eq!(bakes, [300, 30, 30, 30]);
    // The room defaults to the largest batch.
    assert_eq!(plan.shape.max_unavailable, 4);
    let text = render(&plan, false);
    assert!(
        text.contains("Batch 1 of 4: web1 (hosts of a batch in parallel; then watched for 5m"),
        "{text}"
    );
    assert!(
        text.contains("capacity  at most 4 hosts out of service at once\n"),
        "{text}"
    );
}

#[test]
fn hosts_found_out_stay_out_and_fill_room() {
    use crate::lb::ServiceState;
    let service: Service = [
        ("web2".to_string(), ServiceState::Maintenance),
        ("web1".to_string(), ServiceState::InService),
    ]
    .into();
    let plan = deploy_with_service(
        4,
        &format!("{DRAINING}[rollout]\nrolling_batch_size = 2"),
        &service,
    )
    .unwrap();
    // web2 gets the release but is neither drained nor enabled.
    let web2 = plan.batches[0]
        .pipelines
        .iter()
        .find(|p| p.host == "web2")
        .unwrap();
    assert_eq!(kinds(web2), ["switch"]);
    assert_eq!(
        plan.host("web2").unwrap().left_out,
        Some(ServiceState::Maintenance)
    );
    // It fills one of the two places: the rest go one by one.
    let batches: Vec<Vec<&str>> = plan.batches.iter().map(|b| hosts(&b.pipelines)).collect();
    assert_eq!(batches, [vec!["web1", "web2"], vec!["web3"], vec!["web4"]]);
    assert_eq!(plan.out_at_start.len(), 1);
    let text = render(&plan, false);
    assert!(text.contains("already out: web2 (maint)"), "{text}");
    assert!(
        text.contains("(in maint on the load balancer: gets the release, stays out)"),
        "{text}"
    );
}

#[test]
fn a_floor_that_can_never_be_kept_is_refused_before_anything_changes() {
    use crate::lb::ServiceState;
    let service: Service = [("web3".to_string(), ServiceState::Down)].into();
    let err = deploy_with_service(
        3,
        &format!("{DRAINING}[rollout]\nmax_unavailable = 1"),
        &service,
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "not starting; nothing was changed on any host: rollout.max_unavailable = 1 and 1 host is already out \
         of service (web3), so web1, web2 can never be taken out; bring a host back into service first, or raise \
         rollout.max_unavailable"
    );
    // A share that rounds down to no host at all.
    let err = deploy_with_service(
        3,
        &format!("{DRAINING}[rollout]\nmax_unavailable = \"25%\""),
        &Service::new(),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "not starting; nothing was changed on any host: rollout.max_unavailable = 25% of the 3 hosts of stage \
         production is 0 hosts, so no host could ever be taken out of service; raise it"
    );
}

#[test]
fn zones_go_one_after_another() {
    let stage_text =
        |by_zone: bool| format!("[rollout]\nrolling_batch_size = 2\nby_zone = {by_zone}\n");
    let zoned = |extra: &str| {
        let text = format!(
            "[app]\nname = \"shop\"\ndeploy_to = \"/srv/shop\"\nsource = \"dist\"\n{extra}\n\
             [stages.production]\nhosts = [{{ name = \"a1\", zone = \"a\" }}, {{ name = \"b1\", zone = \"b\" }}, \
             {{ name = \"a2\", zone = \"a\" }}, {{ name = \"b2\", zone = \"b\" }}, {{ name = \"a3\", zone = \"a\" }}]\n"
        );
        crate::config::from_str(std::path::Path::new("/p/deploy.toml"), &text)
            .unwrap()
            .stages["production"]
            .clone()
    };
    let plan = testing::deploy_plan(&zoned(&stage_text(true)), true, None).unwrap();
    let batches: Vec<Vec<&str>> = plan.batches.iter().map(|b| hosts(&b.pipelines)).collect();
    assert_eq!(batches, [vec!["a1", "a2"], vec!["a3"], vec!["b1", "b2"]]);
    let zones: Vec<&str> = plan
        .batches
        .iter()
        .map(|b| b.zone.as_deref().unwrap())
        .collect();
    assert_eq!(zones, ["a", "a", "b"]);
    assert!(render(&plan, false).contains("Batch 3 of 3: b1, b2, zone b"));
}

const GATED: &str = r#"
restart = "bin/restart"
[env]
TOKEN = { value = "s3cret", secret = true }
[health]
url = "http://{address}:8080/health"
[lb]
driver = "haproxy"
socket = "/run/haproxy/admin.sock"
backend = "app"
server = "srv-{name}"
[rollout]
rolling_batch_size = [1, 2, "50%"]
bake = ["5m", "30s", "0s"]
[[gates]]
type = "haproxy"
max_error_rate = "5%"
interval = "1s"
[[gates]]
type = "prometheus"
url = "http://127.0.0.1:9090"
query = 'sum(rate(haproxy_server_http_responses_total{code="5xx",server=~"{servers_regex}"}[30s])) / {release}'
max = 0.5
[[gates]]
type = "command"
run = "slo-ok {name} $TOKEN"
run_on = "hosts"
"#;

#[test]
fn gates_measure_every_host_switched_so_far_during_each_bake() {
    let stage = stage(8, GATED);
    let f = facts(&stage, Some(2), &[1, 2]);
    let env = [(
        "TOKEN".to_string(),
        crate::shell::Word::Secret("s3cret".into()),
    )];
    let plan = deploy(&DeployInput {
        stage: &stage,
        hosts: &stage.hosts,
        release: id(3),
        revision: "abc".into(),
        facts: Some(&f),
        run: run(),
        env: &env,
        resume: false,
        digest: String::new(),
        service: None,
    })
    .unwrap();
    let measured: Vec<Vec<&str>> = plan
        .batches
        .iter()
        .map(|b| {
            b.gates
                .first()
                .map(|g| g.hosts.iter().map(|m| m.host.as_str()).collect())
                .unwrap_or_default()
        })
        .collect();
    // Batch 3 bakes 0s (the last entry repeats): neither it nor batch 4 is gated.
    assert_eq!(
        measured,
        [
            vec!["web1"],
            vec!["web1", "web2", "web3"],
            Vec::new(),
            Vec::new()
        ]
    );
    let gates = &plan.batches[1].gates;
    assert_eq!(gates.len(), 3);
    assert_eq!(gates[0].hosts[1].server, "srv-web2");
    assert_eq!(gates[0].interval, Duration::from_secs(1));
    assert_eq!(gates[0].limit(), "5xx ≤ 5% of at least 50 answers");
    match &gates[1].measure {
        Measure::Prometheus { query, .. } => assert_eq!(
            query,
            r#"sum(rate(haproxy_server_http_responses_total{code="5xx",server=~"(?:srv-web1|srv-web2|srv-web3)"}[30s])) / 20261122100003"#
        ),
        other => panic!("{other:?}"),
    }
    match &gates[2].measure {
        Measure::Command { commands, .. } => {
            let on: Vec<Option<&str>> = commands.iter().map(|c| c.host.as_deref()).collect();
            assert_eq!(on, [Some("web1"), Some("web2"), Some("web3")]);
            let cmd = commands[1].cmd.render();
            assert!(cmd.contains("'slo-ok web2 $TOKEN'"), "{cmd}");
            assert!(cmd.contains("SHIPIT_GATE_HOSTS='web1 web2 web3'"), "{cmd}");
            assert!(cmd.contains("SHIPIT_BATCH_HOSTS='web2 web3'"), "{cmd}");
            assert!(
                cmd.contains("cd /srv/shop/releases/20261122100003"),
                "{cmd}"
            );
        }
        other => panic!("{other:?}"),
    }
    // The [env] secret its command gets is masked like any other.
    assert!(plan.secrets().contains(&"s3cret".to_string()));
    let text = render(&plan, false);
    assert!(
        text.contains(
            "  rollout   ramp 1, 2, 50% (the last repeats); bake 5m, 30s, then 0s; 2 of 4 batches gated by \
             gates[0] haproxy, gates[1] prometheus, gates[2] command during their bake\n"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "  batch     gate           gates[0] haproxy: share of 5xx in the answers of web1 web2 web3 \
             (5xx ≤ 5% of at least 50 answers); every 1s, inconclusive at the end = fail\n"
        ),
        "{text}"
    );
    let json = serde_json::to_value(&plan).unwrap();
    let gate = &json["batches"][0]["gates"][0];
    assert_eq!(gate["measure"]["type"], "haproxy");
    assert_eq!(gate["measure"]["max_error_rate"], 0.05);
    assert_eq!(gate["interval"], 1000);
    assert_eq!(gate["on_inconclusive"], "fail");
    assert_eq!(gate["hosts"][0]["server"], "srv-web1");
    assert_eq!(json["batches"][3]["gates"], serde_json::json!([]));
}

#[test]
fn hosts_kept_out_are_not_measured_and_rollbacks_are_not_gated() {
    use crate::lb::ServiceState;
    let service: Service = [("web1".to_string(), ServiceState::Maintenance)].into();
    let plan = deploy_with_service(3, GATED, &service).unwrap();
    // web1 (the canary) takes no traffic: the first bake has nothing to
    // measure, so only from the second batch on is anything gated.
    let measured: Vec<Vec<&str>> = plan
        .batches
        .iter()
        .map(|b| {
            b.gates
                .first()
                .map(|g| g.hosts.iter().map(|m| m.host.as_str()).collect())
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(measured, [Vec::<&str>::new(), vec!["web2"], vec![]]);

    let stage = stage(2, GATED);
    let f = facts(&stage, Some(3), &[1, 2, 3]);
    let plan = rollback(&RollbackInput {
        stage: &stage,
        hosts: &stage.hosts,
        to: None,
        facts: &f,
        run: run(),
        env: &[],
        service: None,
    })
    .unwrap();
    assert!(!plan.batches.is_empty());
    assert!(plan.batches.iter().all(|b| b.gates.is_empty()));
}

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
        stage: &stage,
        hosts: &stage.hosts,
        release: id(3),
        revision: "abc".into(),
        facts: Some(&f),
        run,
        env: &[],
        resume: true,
        digest: String::new(),
        service: None,
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
