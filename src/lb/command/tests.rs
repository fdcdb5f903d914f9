//! The command driver: its `[lb]` keys and what it shows. Running the
//! commands: the executor's tests and the integration tests.

use super::*;
use crate::lb::LbAction;
use crate::testing::{config_error, stage};

fn action(extra: &str, op: LbOp) -> LbAction {
    let stage = stage(2, extra);
    let driver = stage.lb.clone().expect("command");
    let vars = stage.vars(&stage.hosts[0], "");
    let env = vec![("SHIPIT_HOST".to_string(), "web1".into())];
    let member = driver.member(&HostRef {
        vars: &vars,
        env: &env,
        local_dir: Some("/p"),
    });
    LbAction { op, driver, member }
}

#[test]
fn actions_show_where_they_run_and_what_they_wait_for() {
    let on_host = "[lb]\ndrain = \"lbctl drain {name}\"\nenable = \"lbctl enable {name}\"\nrun_on = \"web2\"\nwait_drained = \"lbctl idle {name}\"\ndrain_timeout_action = \"fail\"";
    assert_eq!(
        action(on_host, LbOp::Drain).to_string(),
        "on web2: SHIPIT_HOST=web1 sh -c 'lbctl drain web1'; then every 1s, with the same environment: \
         sh -c 'lbctl idle web1' until it exits 0 (≤30s, then fail)"
    );
    assert_eq!(
        action(on_host, LbOp::Enable).to_string(),
        "on web2: SHIPIT_HOST=web1 sh -c 'lbctl enable web1'"
    );
    // Run here: in deploy.toml's directory.
    let local = "[lb]\ndrain = \"lbctl drain {name}\"\nenable = \"lbctl enable {name}\"";
    assert_eq!(
        action(local, LbOp::Drain).summary(),
        "local: cd /p && SHIPIT_HOST=web1 sh -c 'lbctl drain web1'"
    );
    let driver = stage(2, on_host).lb.unwrap();
    assert_eq!(
        driver.ssh_hosts(),
        [&Via::Host {
            name: "web2".into()
        }]
    );
}

#[test]
fn defaults() {
    let settings = stage(2, "[lb]\ndrain = \"d {name}\"\nenable = \"e {name}\"")
        .lb
        .unwrap()
        .settings();
    assert_eq!(settings["run_on"]["type"], "local");
    assert_eq!(settings["drain_timeout"], 30000);
    assert_eq!(settings["drain_timeout_action"], "warn");
}

#[test]
fn bad_values_and_their_messages() {
    for (extra, expected) in [
        (
            "[lb]\ndrain = \"echo drain {name}\"",
            "/p/deploy.toml: lb.enable: missing: with lb.drain set, shipit must also know how to put a host back",
        ),
        (
            "[lb]\ndriver = \"command\"",
            "/p/deploy.toml: lb.drain: missing (stage `production`); set it in [lb] or [stages.production.lb]: driver = \"command\" needs lb.drain and lb.enable",
        ),
        (
            "[lb]\ndrain = \"x\"\nenable = \"y\"\nrun_on = \"lb9\"",
            "/p/deploy.toml: lb.run_on: \"lb9\" is not a host of stage `production`; use \"local\", a host name from stages.production.hosts, or user@host[:port] for another machine",
        ),
    ] {
        assert_eq!(config_error(2, extra), expected, "for:\n{extra}");
    }
}
