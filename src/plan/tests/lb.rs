//! Load balancer steps, per driver.

use super::*;

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
