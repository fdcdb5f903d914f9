//! The shape of deploy.toml exactly as written: every key optional, unknown
//! keys rejected. Defaults and rules across keys belong to `validate`, so
//! this file is the one place that lists which keys exist.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFile {
    pub app: Option<RawApp>,
    pub ssh: Option<RawSsh>,
    pub rollout: Option<RawRollout>,
    pub health: Option<RawHealth>,
    pub lb: Option<RawLb>,
    pub env: Option<BTreeMap<String, toml::Value>>,
    pub hooks: Option<RawHooks>,
    pub gates: Option<Vec<RawGate>>,
    /// `[roles.NAME.SECTION]`: settings for the hosts with that role.
    pub roles: Option<BTreeMap<String, RawRole>>,
    pub stages: Option<BTreeMap<String, RawStage>>,
}

/// The sections that apply to every stage and that a stage may override.
/// (Spelled out in both tables above because serde cannot combine
/// `flatten` with `deny_unknown_fields`.)
#[derive(Debug, Default, Clone)]
pub struct RawSettings {
    pub app: Option<RawApp>,
    pub ssh: Option<RawSsh>,
    pub rollout: Option<RawRollout>,
    pub health: Option<RawHealth>,
    pub lb: Option<RawLb>,
    pub env: Option<BTreeMap<String, toml::Value>>,
    pub hooks: Option<RawHooks>,
    /// `[[gates]]`: a stage's list replaces the shared one whole.
    pub gates: Option<Vec<RawGate>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStage {
    pub hosts: Option<Vec<RawHost>>,
    pub app: Option<RawApp>,
    pub ssh: Option<RawSsh>,
    pub rollout: Option<RawRollout>,
    pub health: Option<RawHealth>,
    pub lb: Option<RawLb>,
    pub env: Option<BTreeMap<String, toml::Value>>,
    pub hooks: Option<RawHooks>,
    pub gates: Option<Vec<RawGate>>,
    /// `[stages.NAME.roles.ROLE.SECTION]`: a role's settings in this stage.
    pub roles: Option<BTreeMap<String, RawRole>>,
}

/// `[roles.NAME]`: the sections a role may set for its hosts. `[ssh]` and
/// `[env]` are the stage's: one connection and one environment per host.
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawRole {
    pub app: Option<RawApp>,
    pub rollout: Option<RawRollout>,
    pub health: Option<RawHealth>,
    pub lb: Option<RawLb>,
    pub hooks: Option<RawHooks>,
}

impl RawRole {
    pub fn settings(&self) -> RawSettings {
        RawSettings {
            app: self.app.clone(),
            rollout: self.rollout.clone(),
            health: self.health.clone(),
            lb: self.lb.clone(),
            hooks: self.hooks.clone(),
            ..RawSettings::default()
        }
    }

    /// The sections it sets, as `app`, `lb`…, in file order of the struct.
    pub fn sections(&self) -> Vec<&'static str> {
        [
            ("app", self.app.is_some()),
            ("rollout", self.rollout.is_some()),
            ("health", self.health.is_some()),
            ("lb", self.lb.is_some()),
            ("hooks", self.hooks.is_some()),
        ]
        .into_iter()
        .filter(|(_, set)| *set)
        .map(|(name, _)| name)
        .collect()
    }
}

impl RawFile {
    pub fn settings(&self) -> RawSettings {
        RawSettings {
            app: self.app.clone(),
            ssh: self.ssh.clone(),
            rollout: self.rollout.clone(),
            health: self.health.clone(),
            lb: self.lb.clone(),
            env: self.env.clone(),
            hooks: self.hooks.clone(),
            gates: self.gates.clone(),
        }
    }
}

impl RawStage {
    pub fn settings(&self) -> RawSettings {
        RawSettings {
            app: self.app.clone(),
            ssh: self.ssh.clone(),
            rollout: self.rollout.clone(),
            health: self.health.clone(),
            lb: self.lb.clone(),
            env: self.env.clone(),
            hooks: self.hooks.clone(),
            gates: self.gates.clone(),
        }
    }
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawHost {
    pub name: Option<String>,
    pub address: Option<String>,
    pub port: Option<i64>,
    pub user: Option<String>,
    pub roles: Option<Vec<String>>,
    pub zone: Option<String>,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawApp {
    pub name: Option<String>,
    pub deploy_to: Option<String>,
    pub source: Option<String>,
    pub build: Option<String>,
    pub revision: Option<String>,
    pub keep_releases: Option<i64>,
    pub shared_dirs: Option<Vec<String>>,
    pub shared_files: Option<Vec<String>>,
    pub restart: Option<String>,
    pub restart_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawSsh {
    pub user: Option<String>,
    pub port: Option<i64>,
    pub identity_file: Option<String>,
    pub known_hosts: Option<String>,
    pub host_key_checking: Option<String>,
    pub connect_timeout: Option<String>,
    pub command_timeout: Option<String>,
    pub keepalive_interval: Option<String>,
    pub max_concurrent_connects: Option<i64>,
    /// A path, or `false` to ignore ~/.ssh/config.
    pub config: Option<toml::Value>,
    /// `"user@host:port"`, a comma list of hops, or an array of hops.
    pub proxy_jump: Option<toml::Value>,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawRollout {
    /// A number, a percentage string such as `"25%"`, or a list of them.
    pub rolling_batch_size: Option<toml::Value>,
    /// A duration, or a list of them.
    pub bake: Option<toml::Value>,
    /// A number or a percentage string.
    pub max_unavailable: Option<toml::Value>,
    pub by_zone: Option<bool>,
    pub on_failure: Option<String>,
    pub max_fail_percentage: Option<i64>,
    pub lock_lease: Option<String>,
    /// Roles that roll one after another, in this order.
    pub role_order: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub url: Option<String>,
    pub expect_status: Option<i64>,
    pub expect_body: Option<String>,
    pub timeout: Option<String>,
    pub interval: Option<String>,
    pub request_timeout: Option<String>,
    /// `"http"` (default) or `"command"`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// `"controller"` (default) or `"host"`.
    pub from: Option<String>,
    /// `type = "command"`: the command; exit 0 = healthy.
    pub run: Option<String>,
    pub healthy_threshold: Option<i64>,
    pub start_period: Option<String>,
    pub min_healthy_time: Option<String>,
}

/// `[lb]`: `driver` and the keys of the drivers (each load balancer driver
/// owns its keys, see `crate::lb`). A key that no driver knows is refused
/// here, with its line; which keys the chosen driver takes is checked by
/// `validate`.
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(try_from = "toml::Table")]
pub struct RawLb(pub toml::Table);

impl TryFrom<toml::Table> for RawLb {
    type Error = String;

    fn try_from(table: toml::Table) -> Result<Self, String> {
        let known = crate::lb::all_keys();
        if let Some(unknown) = table.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(format!(
                "unknown field `{unknown}`, expected one of {}",
                known
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        Ok(RawLb(table))
    }
}

impl RawLb {
    pub fn get(&self, key: &str) -> Option<&toml::Value> {
        self.0.get(key)
    }
}

/// One `[[gates]]` entry: the keys of every gate type; which ones the
/// entry's `type` takes is checked by `validate`.
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawGate {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub interval: Option<String>,
    pub on_inconclusive: Option<String>,
    // type = "haproxy"
    /// `"5%"` or a share such as `0.05`.
    pub max_error_rate: Option<toml::Value>,
    pub min_requests: Option<i64>,
    pub window: Option<String>,
    // type = "prometheus"
    pub url: Option<String>,
    pub query: Option<String>,
    /// A number (integer or float).
    pub max: Option<toml::Value>,
    pub min: Option<toml::Value>,
    // type = "command"
    pub run: Option<String>,
    pub run_on: Option<String>,
    // prometheus and command
    pub timeout: Option<String>,
}

/// `[hooks]`: each a list of commands, each a string or a table
/// `{ run = "...", run_on = "local" | "hosts" | "once" }`.
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawHooks {
    pub before_deploy: Option<Vec<toml::Value>>,
    pub after_upload: Option<Vec<toml::Value>>,
    pub before_switch: Option<Vec<toml::Value>>,
    pub after_switch: Option<Vec<toml::Value>>,
    pub after_deploy: Option<Vec<toml::Value>>,
    pub after_rollback: Option<Vec<toml::Value>>,
    pub on_failure: Option<Vec<toml::Value>>,
}

/// Field-by-field overlay: a value set in the stage wins.
pub trait Overlay {
    fn overlay(self, stage: Self) -> Self;
}

macro_rules! overlay_fields {
    ($ty:ty { $($field:ident),* $(,)? }) => {
        impl Overlay for $ty {
            fn overlay(self, stage: Self) -> Self {
                Self { $($field: stage.$field.or(self.$field)),* }
            }
        }
    };
}

overlay_fields!(RawApp {
    name,
    deploy_to,
    source,
    build,
    revision,
    keep_releases,
    shared_dirs,
    shared_files,
    restart,
    restart_timeout
});
overlay_fields!(RawSsh {
    user,
    port,
    identity_file,
    known_hosts,
    host_key_checking,
    connect_timeout,
    command_timeout,
    keepalive_interval,
    max_concurrent_connects,
    config,
    proxy_jump,
});
overlay_fields!(RawRollout {
    rolling_batch_size,
    bake,
    max_unavailable,
    by_zone,
    on_failure,
    max_fail_percentage,
    lock_lease,
    role_order,
});
overlay_fields!(RawHealth {
    kind,
    url,
    from,
    run,
    expect_status,
    expect_body,
    timeout,
    interval,
    request_timeout,
    healthy_threshold,
    start_period,
    min_healthy_time,
});
overlay_fields!(RawHooks {
    before_deploy,
    after_upload,
    before_switch,
    after_switch,
    after_deploy,
    after_rollback,
    on_failure,
});
impl Overlay for RawLb {
    /// Key by key: a key set in the more specific table wins.
    fn overlay(mut self, stage: Self) -> Self {
        self.0.extend(stage.0);
        self
    }
}

impl<T: Overlay> Overlay for Option<T> {
    fn overlay(self, stage: Self) -> Self {
        match (self, stage) {
            (Some(base), Some(over)) => Some(base.overlay(over)),
            (base, over) => over.or(base),
        }
    }
}

impl Overlay for BTreeMap<String, toml::Value> {
    /// `[env]`: the stage's variables are added to, and replace, the shared ones.
    fn overlay(mut self, stage: Self) -> Self {
        self.extend(stage);
        self
    }
}

impl Overlay for RawSettings {
    fn overlay(self, stage: Self) -> Self {
        RawSettings {
            env: self.env.overlay(stage.env),
            hooks: self.hooks.overlay(stage.hooks),
            app: self.app.overlay(stage.app),
            ssh: self.ssh.overlay(stage.ssh),
            rollout: self.rollout.overlay(stage.rollout),
            health: self.health.overlay(stage.health),
            lb: self.lb.overlay(stage.lb),
            // A stage's gates replace the shared list whole (`gates = []`
            // turns them off for the stage).
            gates: stage.gates.or(self.gates),
        }
    }
}
