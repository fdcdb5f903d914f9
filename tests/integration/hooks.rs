//! `[hooks]` at their points and `[env]` on the hosts, secrets included,
//! on a real fleet.

use crate::support::fleet::{Fleet, FleetOptions, Haproxy};
use crate::support::shipit::{DEPLOY_TO, Project, host_state, standard_config};

const SECRET: &str = "s3cret-token-Zq9";

fn config(fleet: &Fleet, log: &std::path::Path) -> String {
    let log = log.display();
    let extra = format!(
        r#"
[stages.test.app]
restart = "printf '%s %s' \"$GREETING\" \"$TOKEN\" > {DEPLOY_TO}/shared/env-seen && bin/restart"

[stages.test.env]
GREETING = "hello world"
TOKEN = {{ from_env = "DEPLOY_TOKEN" }}

[stages.test.hooks]
before_deploy = ["echo before_deploy $SHIPIT_RELEASE >> {log}"]
after_upload = [{{ run = "echo migrated > {DEPLOY_TO}/shared/migrated-on-$SHIPIT_HOST", run_on = "once" }}]
before_switch = [{{ run = "echo before_switch $SHIPIT_HOST batch=$SHIPIT_BATCH_HOSTS >> {log}", run_on = "local" }}]
after_deploy = ["echo after_deploy $SHIPIT_RELEASE >> {log}"]
on_failure = ["echo on_failure $SHIPIT_FAILED_HOSTS >> {log}"]
"#
    );
    standard_config(fleet, &extra)
}

#[test]
fn hooks_run_at_their_points_with_env_and_secrets() {
    let fleet = Fleet::start(FleetOptions {
        hosts: 2,
        haproxy: Haproxy::None,
        bastion: false,
    });
    let log = tempfile::NamedTempFile::new().unwrap();
    let project = Project::new(&config(&fleet, log.path()));

    // Without the secret in the environment: refused before anything runs.
    project
        .shipit(&["test", "deploy"])
        .code(2)
        .stderr_has("env.TOKEN: from_env = \"DEPLOY_TOKEN\" is not set in shipit's environment");
    assert_eq!(std::fs::read_to_string(log.path()).unwrap(), "");

    // The dry run shows the secret's place, never its value.
    let dry = project
        .command(&["test", "deploy", "--dry-run"])
        .env("DEPLOY_TOKEN", SECRET)
        .output()
        .unwrap();
    let dry_out = String::from_utf8_lossy(&dry.stdout);
    assert!(
        dry_out.contains("TOKEN=[REDACTED]") && !dry_out.contains(SECRET),
        "{dry_out}"
    );

    let out = project
        .command(&["test", "deploy", "-v"])
        .env("DEPLOY_TOKEN", SECRET)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stdout.contains(SECRET) && !stderr.contains(SECRET),
        "the secret leaked:\n{stderr}"
    );
    let release = host_state(&fleet, "web1", DEPLOY_TO).current.unwrap();

    for host in ["web1", "web2"] {
        assert_eq!(
            fleet
                .read_file(host, &format!("{DEPLOY_TO}/shared/env-seen"))
                .as_deref(),
            Some(format!("hello world {SECRET}").as_str()),
            "{host}: [env] reached the restart command"
        );
    }
    // The migration ran once, on the first host.
    assert!(fleet.exists("web1", &format!("{DEPLOY_TO}/shared/migrated-on-web1")));
    assert!(!fleet.exists("web2", &format!("{DEPLOY_TO}/shared/migrated-on-web2")));

    let lines: Vec<String> = std::fs::read_to_string(log.path())
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(
        lines,
        [
            format!("before_deploy {release}"),
            "before_switch web1 batch=web1".to_string(),
            "before_switch web2 batch=web2".to_string(),
            format!("after_deploy {release}"),
        ]
    );

    // A failing deploy runs on_failure with the failed hosts.
    std::fs::write(log.path(), "").unwrap();
    fleet.exec_ok("web2", &format!("echo v2 > {DEPLOY_TO}/shared/health-fail"));
    project.set_version("v2");
    let failed = project
        .command(&["test", "deploy"])
        .env("DEPLOY_TOKEN", SECRET)
        .output()
        .unwrap();
    assert_eq!(
        failed.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&failed.stderr)
    );
    let log_text = std::fs::read_to_string(log.path()).unwrap();
    assert!(log_text.ends_with("on_failure web2\n"), "{log_text}");
    assert!(!log_text.contains("after_deploy"), "{log_text}");
}
