//! Hooks: where each kind runs.

use super::*;

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
        env: &env,
        ..testing::deploy_input(&stage, &f)
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
