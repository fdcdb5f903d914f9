//! `[roles.NAME.SECTION]` and `[stages.STAGE.roles.NAME.SECTION]`: a role
//! with settings of its own runs its own pipeline on its hosts (its own
//! restart, health check, load balancer, batches and hooks).
//!
//! Precedence, most specific first: `[stages.STAGE.roles.NAME.SECTION]`,
//! `[roles.NAME.SECTION]`, `[stages.STAGE.SECTION]`, `[SECTION]`; key by
//! key, as for stages. A role's table says what kind of host it is (a
//! worker has no load balancer whatever the stage); a stage's table says
//! where it runs. So a role's key wins over a stage's, and a stage that
//! needs a role to differ says so in its own role table.
//!
//! A host runs one pipeline: two of its roles with settings are refused.
//! Settings that are the same for a whole run (what is shipped and where,
//! the failure policy, the lock, hooks run once on this machine) cannot be
//! set per role.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::super::raw::{RawRole, RawSettings};
use super::super::{Host, Stage};
use super::{Errors, Layer, StageCheck};

/// `[app]` keys a role may set: the rest describe the release, which is
/// one for the whole run.
const ROLE_APP_KEYS: [&str; 2] = ["restart", "restart_timeout"];

/// `[rollout]` keys that apply to the whole run.
const RUN_ROLLOUT_KEYS: [&str; 4] = [
    "on_failure",
    "max_fail_percentage",
    "lock_lease",
    "role_order",
];

/// The raw role tables that apply to one stage.
pub(super) struct RoleTables<'a> {
    pub file: Option<&'a BTreeMap<String, RawRole>>,
    pub stage: Option<&'a BTreeMap<String, RawRole>>,
}

impl RoleTables<'_> {
    /// Roles that set at least one section, for this stage.
    fn with_settings(&self) -> BTreeSet<&str> {
        self.file
            .into_iter()
            .chain(self.stage)
            .flatten()
            .filter(|(_, t)| !t.sections().is_empty())
            .map(|(name, _)| name.as_str())
            .collect()
    }

    /// `[roles.NAME.SECTION]` tables that apply to `role` in this stage,
    /// as shown in messages.
    fn tables_of(&self, stage: &str, role: &str) -> Vec<String> {
        let mut tables = Vec::new();
        if let Some(t) = self.file.and_then(|f| f.get(role)) {
            tables.extend(t.sections().iter().map(|s| format!("[roles.{role}.{s}]")));
        }
        if let Some(t) = self.stage.and_then(|f| f.get(role)) {
            tables.extend(
                t.sections()
                    .iter()
                    .map(|s| format!("[stages.{stage}.roles.{role}.{s}]")),
            );
        }
        tables
    }
}

/// Refuses keys a role's table cannot set; `prefix` is `roles.NAME.` or
/// `stages.STAGE.roles.NAME.`.
pub(super) fn refuse_run_wide(errors: &mut Errors, prefix: &str, role: &RawRole) {
    if let Some(app) = &role.app {
        let set = [
            ("name", app.name.is_some()),
            ("deploy_to", app.deploy_to.is_some()),
            ("source", app.source.is_some()),
            ("build", app.build.is_some()),
            ("revision", app.revision.is_some()),
            ("keep_releases", app.keep_releases.is_some()),
            ("shared_dirs", app.shared_dirs.is_some()),
            ("shared_files", app.shared_files.is_some()),
        ];
        for (key, _) in set.iter().filter(|(_, set)| *set) {
            errors.add(
                &format!("{prefix}app.{key}"),
                format!(
                    "a role's [app] sets only {}: `{key}` is the same for every host of a run (one release, \
                     one layout); set it in [app] or [stages.NAME.app]",
                    ROLE_APP_KEYS.map(|k| format!("`{k}`")).join(", ")
                ),
            );
        }
    }
    if let Some(rollout) = &role.rollout {
        let set = [
            rollout.on_failure.is_some(),
            rollout.max_fail_percentage.is_some(),
            rollout.lock_lease.is_some(),
            rollout.role_order.is_some(),
        ];
        for (key, _) in RUN_ROLLOUT_KEYS.iter().zip(set).filter(|(_, set)| *set) {
            errors.add(
                &format!("{prefix}rollout.{key}"),
                format!(
                    "`{key}` applies to the whole run, across roles; set it in [rollout] or [stages.NAME.rollout]"
                ),
            );
        }
    }
    if let Some(hooks) = &role.hooks {
        // Lists whose local hooks run once for the whole run, and where
        // their entries run by default.
        let lists = [
            ("before_deploy", &hooks.before_deploy, "local"),
            ("after_upload", &hooks.after_upload, "hosts"),
            ("after_deploy", &hooks.after_deploy, "local"),
            ("after_rollback", &hooks.after_rollback, "local"),
            ("on_failure", &hooks.on_failure, "local"),
        ];
        for (name, list, default) in lists {
            for (i, entry) in list.iter().flatten().enumerate() {
                let run_on = match entry {
                    toml::Value::Table(t) => t
                        .get("run_on")
                        .and_then(toml::Value::as_str)
                        .unwrap_or(default),
                    _ => default,
                };
                if run_on == "local" {
                    errors.add(
                        &format!("{prefix}hooks.{name}[{i}]"),
                        "runs on this machine once for the whole run (run_on = \"local\"), so it belongs in \
                         [hooks] or [stages.NAME.hooks]; in a role's table a hook runs on the role's hosts: \
                         write { run = \"...\", run_on = \"hosts\" } (or \"once\")",
                    );
                }
            }
        }
    }
}

/// The roles of `stage` with settings of their own, each resolved into a
/// stage of its own (the stage's hosts, ssh and env; the role's app,
/// rollout, health, lb and hooks). `None` if something was wrong (the
/// errors say what).
#[allow(clippy::too_many_arguments)]
pub(super) fn role_stages(
    stage: &Stage,
    tables: &RoleTables<'_>,
    stage_own: &RawSettings,
    global: &RawSettings,
    base: &Path,
    errors: &mut Errors,
) -> Option<BTreeMap<String, Stage>> {
    let name = stage.name.as_str();
    let mut ok = true;
    let roles_of_stage: BTreeSet<&str> = stage
        .hosts
        .iter()
        .flat_map(|h| h.roles.iter().map(String::as_str))
        .collect();
    if let Some(own) = tables.stage {
        for (role, table) in own {
            refuse_run_wide(errors, &format!("stages.{name}.roles.{role}."), table);
            if !roles_of_stage.contains(role.as_str()) {
                errors.add(
                    &format!("stages.{name}.roles.{role}"),
                    format!(
                        "no host of stage {name} has role {role:?}; roles in stage {name}: {}",
                        listed(&roles_of_stage)
                    ),
                );
                ok = false;
            }
        }
    }
    let with_settings = tables.with_settings();
    // A host runs one pipeline: one role's settings at most.
    for (i, host) in stage.hosts.iter().enumerate() {
        let own: Vec<&str> = host
            .roles
            .iter()
            .map(String::as_str)
            .filter(|r| with_settings.contains(r))
            .collect();
        if own.len() > 1 {
            let sections: Vec<String> =
                own.iter().flat_map(|r| tables.tables_of(name, r)).collect();
            errors.add(
                &format!("stages.{name}.hosts[{i}].roles"),
                format!(
                    "{} has roles {}, which each have settings of their own ({}); a host runs one role's \
                     pipeline: drop all but one of these roles from {}, or put the settings it needs into one role",
                    host.name,
                    and_list(&own),
                    sections.join(", "),
                    host.name
                ),
            );
            ok = false;
        }
    }
    if !ok {
        return None;
    }

    let mut stages = BTreeMap::new();
    for role in with_settings {
        let hosts: Vec<Host> = stage
            .hosts
            .iter()
            .filter(|h| h.roles.iter().any(|r| r == role))
            .cloned()
            .collect();
        if hosts.is_empty() {
            continue;
        }
        let file_role = tables
            .file
            .and_then(|f| f.get(role))
            .map(RawRole::settings)
            .unwrap_or_default();
        let stage_role = tables
            .stage
            .and_then(|f| f.get(role))
            .map(RawRole::settings)
            .unwrap_or_default();
        let layers = vec![
            Layer {
                prefix: format!("stages.{name}.roles.{role}."),
                settings: &stage_role,
            },
            Layer {
                prefix: format!("roles.{role}."),
                settings: &file_role,
            },
            Layer {
                prefix: format!("stages.{name}."),
                settings: stage_own,
            },
            Layer {
                prefix: String::new(),
                settings: global,
            },
        ];
        let mut check = StageCheck::new(name, base, layers, errors);
        let app = check.app();
        let rollout = check.rollout(Some(&hosts), Some(&stage.hosts));
        let health = check.health();
        let lb = check.lb(
            Some(&hosts),
            Some(&stage.hosts),
            app.as_ref(),
            Some(&stage.ssh),
        );
        let hooks = check.hooks();
        if let (Some(app), Some(rollout), Some(health), Some(lb), Some(hooks)) =
            (app, rollout, health, lb, hooks)
        {
            stages.insert(
                role.to_string(),
                Stage {
                    name: stage.name.clone(),
                    app,
                    ssh: stage.ssh.clone(),
                    rollout,
                    health,
                    lb,
                    env: stage.env.clone(),
                    hooks,
                    // Gates measure the run as a whole: the stage's.
                    gates: stage.gates.clone(),
                    hosts: stage.hosts.clone(),
                    roles: BTreeMap::new(),
                },
            );
        } else {
            ok = false;
        }
    }
    ok.then_some(stages)
}

/// Every `[roles.NAME]` must be a role of some host of some stage: a typo
/// would otherwise leave its hosts on the stage's pipeline.
pub(super) fn unknown_roles(
    file: Option<&BTreeMap<String, RawRole>>,
    all_roles: &BTreeSet<String>,
    errors: &mut Errors,
) {
    for role in file.into_iter().flat_map(BTreeMap::keys) {
        if !all_roles.contains(role) {
            let known: BTreeSet<&str> = all_roles.iter().map(String::as_str).collect();
            errors.add(
                &format!("roles.{role}"),
                format!(
                    "no host of any stage has role {role:?}; roles in use: {}",
                    listed(&known)
                ),
            );
        }
    }
}

fn listed(names: &BTreeSet<&str>) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.iter().copied().collect::<Vec<_>>().join(", ")
    }
}

/// `a`, `a and b`, `a, b and c`.
fn and_list(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [one] => one.to_string(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::super::super::{CheckFrom, Config, HealthKind, from_str};

    const FLEET: &str = r#"
[app]
name = "shop"
deploy_to = "/srv/shop"
source = "dist/"
restart = "bin/restart"

[health]
url = "http://{address}:8080/health"
timeout = "30s"

[lb]
driver = "command"
drain = "lbctl drain {name}"
enable = "lbctl enable {name}"

[stages.production]
hosts = [
  { name = "web1", roles = ["web"] },
  { name = "web2", roles = ["web", "db"] },
  { name = "jobs1", roles = ["worker"] },
]

[stages.staging]
hosts = [ { name = "s1", roles = ["web", "worker"] } ]
"#;

    fn check(extra: &str) -> Result<Config, String> {
        from_str(Path::new("/p/deploy.toml"), &format!("{FLEET}\n{extra}"))
            .map_err(|e| e.to_string())
    }

    fn error(extra: &str) -> String {
        check(extra).expect_err("expected an error")
    }

    fn run(health: &Option<super::super::super::Health>) -> String {
        match &health.as_ref().expect("a health check").check {
            HealthKind::Command { run } => run.source().to_string(),
            HealthKind::Http { url, .. } => url.source().to_string(),
        }
    }

    /// stage-role > role > stage > shared, key by key.
    #[test]
    fn the_most_specific_table_wins_key_by_key() {
        let config = check(
            r#"
[roles.worker.app]
restart = "bin/restart-worker"
[roles.worker.health]
type = "command"
run = "bin/worker-health"
[roles.worker.lb]
driver = "none"
[stages.production.health]
timeout = "2m"
interval = "1s"
[stages.production.roles.worker.health]
timeout = "20s"
"#,
        )
        .map_err(|e| panic!("{e}"))
        .unwrap();
        let prod = &config.stages["production"];
        // Hosts without a role of their own run with the stage's settings.
        assert_eq!(prod.role_of(&prod.hosts[0]), None);
        assert_eq!(
            prod.for_host(&prod.hosts[0])
                .health
                .as_ref()
                .unwrap()
                .timeout,
            Duration::from_secs(120)
        );
        let worker = prod.for_host(&prod.hosts[2]);
        assert_eq!(prod.role_of(&prod.hosts[2]), Some("worker"));
        assert_eq!(
            worker.app.restart.as_ref().unwrap().source(),
            "bin/restart-worker"
        );
        assert!(
            worker.lb.is_none(),
            "[roles.worker.lb] driver = \"none\" wins over the shared [lb]"
        );
        let health = worker.health.as_ref().unwrap();
        assert_eq!(run(&worker.health), "bin/worker-health");
        // [stages.production.roles.worker.health] > [stages.production.health]
        assert_eq!(health.timeout, Duration::from_secs(20));
        // A key only the stage sets still reaches the role's hosts.
        assert_eq!(health.interval, Duration::from_secs(1));
        // What a role cannot set comes from the stage.
        assert_eq!(worker.app.deploy_to, "/srv/shop");
        assert_eq!(prod.drivers().len(), 1);
    }

    #[test]
    fn a_host_with_two_roles_that_have_settings_is_refused() {
        let err = error(
            "[roles.worker.lb]\ndriver = \"none\"\n[roles.web.app]\nrestart = \"bin/web\"\n[roles.db.health]\ntimeout = \"1m\"\n",
        );
        assert_eq!(
            err,
            "/p/deploy.toml: stages.production.hosts[1].roles: web2 has roles web and db, which each have settings \
             of their own ([roles.web.app], [roles.db.health]); a host runs one role's pipeline: drop all but one \
             of these roles from web2, or put the settings it needs into one role\n\
             /p/deploy.toml: stages.staging.hosts[0].roles: s1 has roles web and worker, which each have settings \
             of their own ([roles.web.app], [roles.worker.lb]); a host runs one role's pipeline: drop all but one \
             of these roles from s1, or put the settings it needs into one role"
        );
    }

    #[test]
    fn run_wide_keys_and_unknown_roles_are_refused() {
        let cases = [
            (
                "[roles.worker.app]\ndeploy_to = \"/srv/jobs\"",
                "/p/deploy.toml: roles.worker.app.deploy_to: a role's [app] sets only `restart`, `restart_timeout`: `deploy_to` is the \
                 same for every host of a run (one release, one layout); set it in [app] or [stages.NAME.app]",
            ),
            (
                "[roles.worker.rollout]\non_failure = \"pause\"",
                "/p/deploy.toml: roles.worker.rollout.on_failure: `on_failure` applies to the whole run, across \
                 roles; set it in [rollout] or [stages.NAME.rollout]",
            ),
            (
                "[stages.production.roles.worker.hooks]\nafter_deploy = [\"notify\"]",
                "/p/deploy.toml: stages.production.roles.worker.hooks.after_deploy[0]: runs on this machine once for \
                 the whole run (run_on = \"local\"), so it belongs in [hooks] or [stages.NAME.hooks]; in a role's \
                 table a hook runs on the role's hosts: write { run = \"...\", run_on = \"hosts\" } (or \"once\")",
            ),
            (
                "[roles.wroker.lb]\ndriver = \"none\"",
                "/p/deploy.toml: roles.wroker: no host of any stage has role \"wroker\"; roles in use: db, web, worker",
            ),
            (
                "[stages.staging.roles.db.lb]\ndriver = \"none\"",
                "/p/deploy.toml: stages.staging.roles.db: no host of stage staging has role \"db\"; roles in stage \
                 staging: web, worker",
            ),
            (
                "[roles.worker.ssh]\nport = 2222",
                "/p/deploy.toml:27: roles.worker.ssh: unknown key `ssh`; allowed here: `app`, `rollout`, `health`, \
                 `lb`, `hooks`",
            ),
        ];
        for (extra, expected) in cases {
            assert_eq!(error(extra), expected, "for:\n{extra}");
        }
        // Hooks that run on the role's hosts are fine.
        let config = check(
            "[roles.worker.hooks]\nafter_deploy = [{ run = \"bin/warm\", run_on = \"hosts\" }]\nbefore_switch = [\"local-ok\"]\n",
        )
        .unwrap();
        let prod = &config.stages["production"];
        assert_eq!(prod.roles["worker"].hooks.after_deploy.len(), 1);
    }

    #[test]
    fn role_order_names_roles_of_the_stage() {
        let config =
            check("[stages.production.rollout]\nrole_order = [\"web\", \"worker\"]\n").unwrap();
        assert_eq!(
            config.stages["production"].rollout.role_order,
            ["web", "worker"]
        );
        assert_eq!(
            error("[rollout]\nrole_order = [\"web\", \"web\"]"),
            "/p/deploy.toml: rollout.role_order: \"web\" is listed twice"
        );
        assert_eq!(
            error("[stages.staging.rollout]\nrole_order = [\"db\"]"),
            "/p/deploy.toml: stages.staging.rollout.role_order: no host of stage staging has role \"db\"; roles in \
             stage staging: web, worker"
        );
    }

    /// A role's `type = "command"` leaves the shared `url` unused; keys of
    /// the other type set as specifically as `type` are mistakes.
    #[test]
    fn health_keys_of_the_other_type() {
        let config = check(
            "[roles.worker.health]\ntype = \"command\"\nrun = \"bin/worker-health {revision}\"\nhealthy_threshold = 2\n",
        )
        .unwrap();
        let worker = &config.stages["production"].roles["worker"];
        assert_eq!(run(&worker.health), "bin/worker-health {revision}");
        assert_eq!(worker.health.as_ref().unwrap().healthy_threshold, 2);
        let cases = [
            (
                "[roles.worker.health]\ntype = \"command\"\nrun = \"x\"\nexpect_status = 204",
                "/p/deploy.toml: roles.worker.health.expect_status: only used by type = \"http\", but \
                 roles.worker.health.type is \"command\"",
            ),
            (
                "[roles.worker.health]\nrun = \"x\"",
                "/p/deploy.toml: roles.worker.health.run: only used by type = \"command\"; add type = \"command\" to \
                 [roles.worker.health]",
            ),
            (
                "[roles.worker.health]\ntype = \"grpc\"",
                "/p/deploy.toml: roles.worker.health.type: \"grpc\" is not allowed; use \"http\" (default: GET url) \
                 or \"command\" (run a command on the host; exit 0 is healthy)",
            ),
            (
                "[roles.worker.health]\ntype = \"command\"",
                "/p/deploy.toml: health.run: missing (stage `production`); set it in [health], \
                 [stages.production.health], [roles.worker.health] or [stages.production.roles.worker.health]: \
                 type = \"command\" needs the command, e.g. run = \"systemctl is-active --quiet shop-worker\"\n\
                 /p/deploy.toml: health.run: missing (stage `staging`); set it in [health], [stages.staging.health], \
                 [roles.worker.health] or [stages.staging.roles.worker.health]: type = \"command\" needs the \
                 command, e.g. run = \"systemctl is-active --quiet shop-worker\"",
            ),
        ];
        for (extra, expected) in cases {
            assert_eq!(error(extra), expected, "for:\n{extra}");
        }
        let config = check("[stages.production.health]\nfrom = \"host\"\n").unwrap();
        let HealthKind::Http { from, .. } =
            config.stages["production"].health.as_ref().unwrap().check
        else {
            panic!()
        };
        assert_eq!(from, CheckFrom::Host);
    }
}
