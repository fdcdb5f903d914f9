//! deploy.toml, parsed and validated into typed values.
//!
//! `raw` mirrors the file; `load` reads it and reports syntax and shape
//! errors with line numbers; `validate` applies stage overrides, defaults and
//! rules, naming the exact key of every bad value. Nothing past this module
//! ever sees an unchecked string where a duration, path or template belongs.

pub mod gates;
mod load;
pub mod raw;
pub mod select;
pub mod starter;
pub mod template;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use gates::{Gate, GateCheck, GateQuery, OnInconclusive};
pub use load::{from_str, load};
pub use template::{Template, Var, Vars};
pub use validate::lb::{DEFAULT_DRAIN_TIMEOUT, DEFAULT_ENABLE_TIMEOUT};
pub use validate::{MAX_DURATION, RESERVED_STAGE_NAMES, parse_duration};

pub use crate::lb::{OnTimeout, Via};
pub use validate::lb::{LbSettings, Setting, split_host_port};

/// Every stage of one deploy.toml, all validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub file: PathBuf,
    pub stages: BTreeMap<String, Stage>,
}

impl Config {
    pub fn stage(&self, name: &str) -> Result<&Stage, ConfigErrors> {
        self.stages.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.stages.keys().map(String::as_str).collect();
            ConfigErrors::one(ConfigError {
                file: self.file.clone(),
                line: None,
                key: format!("stages.{name}"),
                message: format!(
                    "there is no stage `{name}`; stages defined: {}",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            })
        })
    }
}

/// Everything one stage needs: the `[app]`, `[ssh]`, … sections with this
/// stage's overrides applied, and its hosts.
#[derive(Debug, Clone)]
pub struct Stage {
    pub name: String,
    pub app: App,
    pub ssh: Ssh,
    pub rollout: Rollout,
    pub health: Option<Health>,
    /// `[lb]`: how a host is taken out of the load balancer before its
    /// restart and put back once healthy; `None`: no load balancer.
    pub lb: Option<std::sync::Arc<dyn crate::lb::Driver>>,
    pub env: Vec<EnvVar>,
    pub hooks: Hooks,
    /// `[[gates]]`: checked on live traffic while each batch of a deploy bakes.
    pub gates: Vec<Gate>,
    pub hosts: Vec<Host>,
    /// Roles with settings of their own (`[roles.NAME.*]`), each resolved
    /// into the stage its hosts run with: this stage with the role's
    /// app, rollout, health, lb and hooks. Empty in those stages themselves.
    pub roles: BTreeMap<String, Stage>,
}

impl Stage {
    /// The role whose settings `host` runs with, if one of its roles has
    /// settings of its own (validation allows at most one).
    pub fn role_of(&self, host: &Host) -> Option<&str> {
        host.roles
            .iter()
            .find_map(|r| self.roles.get_key_value(r.as_str()))
            .map(|(name, _)| name.as_str())
    }

    /// The settings `host` runs with: its role's, or the stage's own.
    pub fn for_host(&self, host: &Host) -> &Stage {
        self.for_role(self.role_of(host))
    }

    /// The settings of `role` (`None`: the stage's own).
    pub fn for_role(&self, role: Option<&str>) -> &Stage {
        role.and_then(|r| self.roles.get(r)).unwrap_or(self)
    }

    /// Every load balancer driver of the stage, its roles' included, each once.
    pub fn drivers(&self) -> Vec<&std::sync::Arc<dyn crate::lb::Driver>> {
        let mut all: Vec<&std::sync::Arc<dyn crate::lb::Driver>> = Vec::new();
        for driver in self
            .lb
            .iter()
            .chain(self.roles.values().filter_map(|s| s.lb.as_ref()))
        {
            if !all
                .iter()
                .any(|d| std::sync::Arc::ptr_eq(d, driver) || same_driver(d, driver))
            {
                all.push(driver);
            }
        }
        all
    }
}

/// Two drivers that talk to the same balancer the same way.
fn same_driver(
    a: &std::sync::Arc<dyn crate::lb::Driver>,
    b: &std::sync::Arc<dyn crate::lb::Driver>,
) -> bool {
    a.name() == b.name() && a.settings() == b.settings()
}

#[derive(Debug, Clone)]
pub struct App {
    pub name: String,
    /// Absolute path on every host.
    pub deploy_to: String,
    pub source: Source,
    pub build: Option<String>,
    /// Local command whose output names the revision being shipped.
    pub revision: Option<String>,
    pub keep_releases: usize,
    pub shared_dirs: Vec<String>,
    pub shared_files: Vec<String>,
    pub restart: Option<Template>,
    /// The longest `restart` may run: one that never returns (a server
    /// started in the foreground) fails its host instead of keeping it out
    /// of service, and the lock held, forever.
    pub restart_timeout: Duration,
}

/// What gets shipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A local directory, packed by shipit.
    Directory(PathBuf),
    /// A ready `.tar.gz` / `.tgz`, shipped as it is.
    Archive(PathBuf),
}

impl Source {
    pub fn path(&self) -> &Path {
        match self {
            Source::Directory(p) | Source::Archive(p) => p,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKeyChecking {
    Strict,
    AcceptNew,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SshConfigFile {
    /// `~/.ssh/config`, if it exists.
    Default,
    Path(PathBuf),
    Disabled,
}

/// `[ssh]`. `None` means "not set in deploy.toml": ssh_config or the
/// built-in default decides, in that order.
#[derive(Debug, Clone)]
pub struct Ssh {
    pub user: Option<String>,
    pub port: Option<u16>,
    pub identity_file: Option<PathBuf>,
    pub known_hosts: Option<PathBuf>,
    pub host_key_checking: Option<HostKeyChecking>,
    pub config: SshConfigFile,
    pub proxy_jump: Option<Vec<String>>,
    pub connect_timeout: Duration,
    pub command_timeout: Option<Duration>,
    pub keepalive_interval: Duration,
    pub max_concurrent_connects: usize,
}

#[derive(Debug, Clone)]
pub struct Rollout {
    /// `rolling_batch_size`: a size per batch, the last repeating. Never empty.
    pub ramp: Vec<BatchSize>,
    /// `bake`: how long each batch is watched once back in service; the
    /// last repeats. Empty: not watched.
    pub bake: Vec<Duration>,
    /// At most this many hosts of the stage out of service at any moment;
    /// `None`: the largest batch of the ramp.
    pub max_unavailable: Option<BatchSize>,
    /// Batches never span two zones; zones go one after another.
    pub by_zone: bool,
    pub on_failure: OnFailure,
    /// Share of a batch's hosts that may fail before `on_failure` applies
    /// (only with `OnFailure::Continue`; must be exceeded).
    pub max_fail_percentage: u8,
    /// How long a deploy lock stays valid without a heartbeat from its run.
    pub lock_lease: Duration,
    /// `role_order`: roles that roll one after another, in this order;
    /// empty: every role rolls together.
    pub role_order: Vec<String>,
}

/// `rollout.on_failure`: what happens when a host fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnFailure {
    /// Return every host switched in this run to its previous release.
    Rollback,
    /// Stop; leave healthy hosts serving, switched hosts where they are.
    Pause,
    /// Skip failed hosts while each batch's failed share stays within
    /// `max_fail_percentage`; stop (as with pause) once it does not.
    Continue,
}

/// A number of hosts, or a share of them: an entry of `rolling_batch_size`,
/// or `max_unavailable`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchSize {
    Count(usize),
    /// 1–100; the share of the stage's selected hosts, rounded down, at least 1.
    Percent(u8),
}

impl BatchSize {
    pub fn hosts_per_batch(self, hosts: usize) -> usize {
        let n = match self {
            BatchSize::Count(n) => n,
            BatchSize::Percent(p) => hosts * usize::from(p) / 100,
        };
        n.clamp(1, hosts.max(1))
    }

    /// As a limit on `hosts`: a share rounds down and may be 0.
    pub fn limit_of(self, hosts: usize) -> usize {
        match self {
            BatchSize::Count(n) => n,
            BatchSize::Percent(p) => hosts * usize::from(p) / 100,
        }
    }
}

impl std::str::FromStr for BatchSize {
    type Err = String;

    /// `3` or `25%`, as `rolling_batch_size` takes them (the command line
    /// of `shipit STAGE tune`).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let parsed = match text.strip_suffix('%') {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| (1..=100).contains(p))
                .map(BatchSize::Percent),
            None => text
                .parse::<usize>()
                .ok()
                .filter(|n| *n >= 1)
                .map(BatchSize::Count),
        };
        parsed.ok_or_else(|| {
            format!(
                "{text:?} is not a batch size; use a number of hosts (at least 1) or a percentage such as \"25%\""
            )
        })
    }
}

impl serde::Serialize for BatchSize {
    /// `2` or `"50%"`, as written in deploy.toml.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            BatchSize::Count(n) => s.serialize_u64(*n as u64),
            BatchSize::Percent(_) => s.serialize_str(&self.to_string()),
        }
    }
}

impl fmt::Display for BatchSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BatchSize::Count(n) => write!(f, "{n}"),
            BatchSize::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// `[health]`: how shipit knows a restarted host serves its release.
#[derive(Debug, Clone)]
pub struct Health {
    pub check: HealthKind,
    /// How long a host may take to become healthy.
    pub timeout: Duration,
    pub interval: Duration,
    /// How long one request (or one run of the command) may take.
    pub request_timeout: Duration,
    /// Passing checks in a row needed.
    pub healthy_threshold: u32,
    /// Failures this soon after the restart do not count while the host is
    /// watched after it is back in service.
    pub start_period: Duration,
    /// Once back in service, the host must stay healthy (and in service in
    /// its load balancer) this long, or it fails.
    pub min_healthy_time: Duration,
}

/// What a health check asks.
#[derive(Debug, Clone)]
pub enum HealthKind {
    /// `GET url`, from the machine running shipit or on the host.
    Http {
        url: Template,
        from: CheckFrom,
        expect_status: u16,
        expect_body: Option<Template>,
    },
    /// A command run on the host (in the release, with `[env]`); exit 0 is
    /// healthy.
    Command { run: Template },
}

/// Where an HTTP health check runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckFrom {
    /// The machine running shipit.
    Controller,
    /// The host itself, over the connection shipit holds to it.
    Host,
}

impl Health {
    /// The templates of the check, for "does it use {placeholder}" questions.
    pub fn templates(&self) -> Vec<&Template> {
        match &self.check {
            HealthKind::Http {
                url, expect_body, ..
            } => std::iter::once(url).chain(expect_body).collect(),
            HealthKind::Command { run } => vec![run],
        }
    }
}

impl Stage {
    /// Template values for `host` in this stage; `release` may be empty
    /// when it is not known (yet).
    pub fn vars(&self, host: &Host, release: &str) -> Vars {
        host_vars(&self.name, &self.app, &self.ssh, host, release)
    }
}

pub(crate) fn host_vars(stage: &str, app: &App, ssh: &Ssh, host: &Host, release: &str) -> Vars {
    Vars {
        app: app.name.clone(),
        name: host.name.clone(),
        address: host.address.clone(),
        port: host.port.or(ssh.port).unwrap_or(22),
        user: host
            .user
            .clone()
            .or_else(|| ssh.user.clone())
            .unwrap_or_default(),
        stage: stage.to_string(),
        deploy_to: app.deploy_to.clone(),
        release: release.to_string(),
        revision: String::new(),
    }
}

/// One `[env]` variable: set for `restart` and for hooks run on the hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvVar {
    pub name: String,
    pub value: EnvValue,
    /// Shown as `[REDACTED]` everywhere and sent to hosts over stdin, never
    /// on a command line.
    pub secret: bool,
}

impl EnvVar {
    /// The value to send, read from shipit's environment or a local file if
    /// the variable says so; secrets come back marked. Errors name the key.
    pub fn resolve(&self) -> Result<crate::shell::Word, String> {
        let value = match &self.value {
            EnvValue::Literal(text) => text.clone(),
            EnvValue::FromEnv(var) => std::env::var(var).map_err(|_| {
                format!(
                    "env.{}: from_env = {var:?} is not set in shipit's environment; export it (in CI, from the job's secrets)",
                    self.name
                )
            })?,
            EnvValue::FromFile(path) => {
                let mut text = std::fs::read_to_string(path)
                    .map_err(|e| format!("env.{}: from_file {}: {e}", self.name, path.display()))?;
                if text.ends_with('\n') {
                    text.pop();
                }
                text
            }
        };
        if value.contains('\0') {
            let source = match &self.value {
                EnvValue::FromFile(path) => format!("from_file {}", path.display()),
                EnvValue::FromEnv(var) => format!("from_env = {var:?}"),
                EnvValue::Literal(_) => "the value".to_string(),
            };
            return Err(format!(
                "env.{}: {source} contains a NUL byte, which no environment variable can carry",
                self.name
            ));
        }
        Ok(if self.secret {
            crate::shell::Word::Secret(value)
        } else {
            crate::shell::Word::Plain(value)
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvValue {
    Literal(String),
    /// Read from shipit's own environment when the run starts (CI secrets).
    FromEnv(String),
    /// Read from a local file when the run starts; one trailing newline is
    /// dropped.
    FromFile(PathBuf),
}

/// `[hooks]`: commands run at fixed points of a deploy or rollback.
#[derive(Debug, Clone, Default)]
pub struct Hooks {
    pub before_deploy: Vec<Hook>,
    pub after_upload: Vec<Hook>,
    pub before_switch: Vec<Hook>,
    pub after_switch: Vec<Hook>,
    pub after_deploy: Vec<Hook>,
    pub after_rollback: Vec<Hook>,
    pub on_failure: Vec<Hook>,
}

#[derive(Debug, Clone)]
pub struct Hook {
    pub run: Template,
    pub run_on: RunOn,
}

/// Where a hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOn {
    /// On the machine running shipit.
    Local,
    /// On every host taking part.
    Hosts,
    /// On the first host taking part only (database migrations).
    Once,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub name: String,
    pub address: String,
    pub port: Option<u16>,
    pub user: Option<String>,
    pub roles: Vec<String>,
    /// Failure domain (`zone = "eu-1a"`), for `rollout.by_zone`.
    pub zone: Option<String>,
}

/// One problem in deploy.toml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    /// Dotted key path, such as `stages.production.health.timeout`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// All problems found in one file, reported together so one run fixes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn one(error: ConfigError) -> Self {
        ConfigErrors(vec![error])
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}
