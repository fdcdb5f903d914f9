//! From the raw file to typed stages: stage overrides applied, defaults
//! filled in, every value checked. Each error names the key the bad value
//! came from (`stages.production.health.timeout` when the stage set it,
//! `health.timeout` when it came from the shared section) and what is allowed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::raw::{Overlay as _, RawFile, RawHost, RawSettings};
use super::template::{Template, Var};
use super::{
    AdminSocket, App, Balancer, BatchSize, CommandLb, Config, ConfigError, ConfigErrors, EnvValue,
    EnvVar, HaproxyLb, Health, Hook, Hooks, Host, HostKeyChecking, Lb, OnFailure, OnTimeout,
    Rollout, RunOn, Source, Ssh, SshConfigFile, Stage, Via,
};
use crate::lb::haproxy;
use crate::shell;

pub const DEFAULT_KEEP_RELEASES: usize = 5;
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
pub const DEFAULT_LOCK_LEASE: Duration = Duration::from_secs(60);
pub const DEFAULT_MAX_CONCURRENT_CONNECTS: usize = 32;
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_millis(500);
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_ENABLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Commands that take no stage: `shipit init` must never mean a stage.
pub const RESERVED_STAGE_NAMES: [&str; 4] = ["init", "completions", "man", "help"];

pub(super) fn validate(file: &Path, raw: RawFile) -> Result<Config, ConfigErrors> {
    let base = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let mut errors = Errors {
        file: file.to_path_buf(),
        list: Vec::new(),
    };
    let global = raw.settings();
    let mut stages = BTreeMap::new();

    match &raw.stages {
        None => errors.add(
            "stages",
            "no stages defined; add one, e.g. [stages.production] with hosts = [{ name = \"web1\", address = \"10.0.0.11\" }]",
        ),
        Some(raw_stages) if raw_stages.is_empty() => {
            errors.add("stages", "no stages defined; add one, e.g. [stages.production]")
        }
        Some(raw_stages) => {
            for (name, raw_stage) in raw_stages {
                let mut stage = StageCheck {
                    stage: name,
                    base: &base,
                    global: &global,
                    over: &raw_stage.settings(),
                    merged: global.clone().overlay(raw_stage.settings()),
                    errors: &mut errors,
                };
                if !is_name(name) {
                    stage.errors.add(
                        &format!("stages.{name}"),
                        "a stage name may contain only letters, digits, `-` and `_`",
                    );
                } else if RESERVED_STAGE_NAMES.contains(&name.as_str()) {
                    stage.errors.add(
                        &format!("stages.{name}"),
                        format!(
                            "`{name}` is a shipit command (`shipit {name}`), so it cannot name a stage; \
                             reserved: {}",
                            RESERVED_STAGE_NAMES.join(", ")
                        ),
                    );
                }
                // Every section is checked, so one run reports every problem.
                let hosts = stage.hosts(raw_stage.hosts.as_deref());
                let app = stage.app();
                let ssh = stage.ssh();
                let rollout = stage.rollout();
                let health = stage.health();
                let lb = stage.lb(hosts.as_deref(), app.as_ref(), ssh.as_ref());
                let env = stage.env();
                let hooks = stage.hooks();
                if let (Some(app), Some(ssh), Some(rollout), Some(health), Some(lb), Some(env), Some(hooks), Some(hosts)) =
                    (app, ssh, rollout, health, lb, env, hooks, hosts)
                {
                    stages.insert(
                        name.clone(),
                        Stage {
                            name: name.clone(),
                            app,
                            ssh,
                            rollout,
                            health,
                            lb,
                            env,
                            hooks,
                            hosts,
                        },
                    );
                }
            }
        }
    }

    if errors.list.is_empty() {
        Ok(Config {
            file: file.to_path_buf(),
            stages,
        })
    } else {
        // A bad shared value is seen once per stage; say it once.
        let mut seen = BTreeSet::new();
        errors
            .list
            .retain(|e| seen.insert((e.key.clone(), e.message.clone())));
        Err(ConfigErrors(errors.list))
    }
}

struct Errors {
    file: PathBuf,
    list: Vec<ConfigError>,
}

impl Errors {
    fn add(&mut self, key: &str, message: impl Into<String>) {
        self.list.push(ConfigError {
            file: self.file.clone(),
            line: None,
            key: key.to_string(),
            message: message.into(),
        });
    }
}

/// A value and the key path it came from.
struct At<T> {
    value: T,
    key: String,
}

struct StageCheck<'a> {
    stage: &'a str,
    base: &'a Path,
    global: &'a RawSettings,
    over: &'a RawSettings,
    merged: RawSettings,
    errors: &'a mut Errors,
}

/// `pick!(self, health, timeout)`: the stage's value if it set one, else the
/// shared one, with the key path of whichever was used.
macro_rules! pick {
    ($self:ident, $section:ident, $field:ident) => {{
        let from_stage = $self.over.$section.as_ref().and_then(|s| s.$field.clone());
        match from_stage {
            Some(value) => Some(At {
                value,
                key: format!(
                    "stages.{}.{}.{}",
                    $self.stage,
                    stringify!($section),
                    stringify!($field)
                ),
            }),
            None => $self
                .global
                .$section
                .as_ref()
                .and_then(|s| s.$field.clone())
                .map(|value| At {
                    value,
                    key: format!("{}.{}", stringify!($section), stringify!($field)),
                }),
        }
    }};
}

impl StageCheck<'_> {
    fn fail<T>(&mut self, key: &str, message: impl Into<String>) -> Option<T> {
        self.errors.add(key, message);
        None
    }

    /// Where to set a required key, for "missing" messages.
    fn missing<T>(&mut self, section: &str, field: &str, hint: &str) -> Option<T> {
        let key = format!("{section}.{field}");
        self.fail(
            &key,
            format!(
                "missing (stage `{}`); set it in [{section}] or [stages.{}.{section}]{hint}",
                self.stage, self.stage
            ),
        )
    }

    fn app(&mut self) -> Option<App> {
        let name = match pick!(self, app, name) {
            Some(At { value, key }) if !is_name(&value) || value.starts_with(['.', '-']) => self
                .fail(
                    &key,
                    format!(
                        "{value:?}: use letters, digits, `.`, `-` and `_` (it names locks and logs)"
                    ),
                ),
            Some(at) => Some(at.value),
            None => self.missing("app", "name", ", e.g. name = \"shop\""),
        };
        let deploy_to = match pick!(self, app, deploy_to) {
            Some(at) => self.remote_dir(at),
            None => self.missing("app", "deploy_to", ", e.g. deploy_to = \"/srv/shop\""),
        };
        let source = match pick!(self, app, source) {
            Some(at) if at.value.trim().is_empty() => self.fail(&at.key, "must not be empty"),
            Some(at) => {
                let path = self.local_path(&at.value);
                let lower = at.value.to_ascii_lowercase();
                Some(if lower.ends_with(".tar.gz") || lower.ends_with(".tgz") {
                    Source::Archive(path)
                } else {
                    Source::Directory(path)
                })
            }
            None => self.missing(
                "app",
                "source",
                ": a directory to pack, or a .tar.gz/.tgz file",
            ),
        };
        let build = self.command_line(pick!(self, app, build));
        let revision = self.command_line(pick!(self, app, revision));
        let keep_releases = match pick!(self, app, keep_releases) {
            Some(At { value, key }) if value < 1 => self.fail(
                &key,
                format!("{value} is too small; keep at least 1 release (the current and the previous one are never deleted)"),
            ),
            Some(at) => Some(at.value as usize),
            None => Some(DEFAULT_KEEP_RELEASES),
        };
        let shared_dirs = self.relative_paths(pick!(self, app, shared_dirs));
        let shared_files = self.relative_paths(pick!(self, app, shared_files));
        if let (Some(dirs), Some(files)) = (&shared_dirs, &shared_files)
            && let Some(both) = dirs.iter().find(|d| files.contains(d))
        {
            let both = both.clone();
            self.fail::<()>(
                "app.shared_files",
                format!("{both:?} is also listed in app.shared_dirs; a shared path is either a directory or a file"),
            );
        }
        let restart = self.template(pick!(self, app, restart));
        Some(App {
            name: name?,
            deploy_to: deploy_to?,
            source: source?,
            build: build?,
            revision: revision?,
            keep_releases: keep_releases?,
            shared_dirs: shared_dirs?,
            shared_files: shared_files?,
            restart: restart?,
        })
    }

    fn ssh(&mut self) -> Option<Ssh> {
        let user = match pick!(self, ssh, user) {
            Some(at) => self.user_name(at).map(Some),
            None => Some(None),
        };
        let port = match pick!(self, ssh, port) {
            Some(at) => self.port(at).map(Some),
            None => Some(None),
        };
        let identity_file = pick!(self, ssh, identity_file).map(|at| self.local_path(&at.value));
        let known_hosts = pick!(self, ssh, known_hosts).map(|at| self.local_path(&at.value));
        let host_key_checking = match pick!(self, ssh, host_key_checking) {
            None => Some(None),
            Some(at) => match at.value.as_str() {
                "strict" => Some(Some(HostKeyChecking::Strict)),
                "accept-new" => Some(Some(HostKeyChecking::AcceptNew)),
                other => self.fail(
                    &at.key,
                    format!(
                        "{other:?} is not allowed; use \"strict\" (default) or \"accept-new\" \
                         (records unknown keys; a changed key is always refused)"
                    ),
                ),
            },
        };
        let config = match pick!(self, ssh, config) {
            None => Some(SshConfigFile::Default),
            Some(At { value: toml::Value::Boolean(false), .. }) => Some(SshConfigFile::Disabled),
            Some(At { value: toml::Value::Boolean(true), .. }) => Some(SshConfigFile::Default),
            Some(At { value: toml::Value::String(path), .. }) if !path.trim().is_empty() => {
                Some(SshConfigFile::Path(self.local_path(&path)))
            }
            Some(at) => self.fail(
                &at.key,
                format!("{} is not allowed; use a path to an ssh_config file, or false to ignore ~/.ssh/config", at.value),
            ),
        };
        let proxy_jump = match pick!(self, ssh, proxy_jump) {
            None => Some(None),
            Some(at) => self.proxy_jump(at).map(Some),
        };
        let connect_timeout = self
            .duration(pick!(self, ssh, connect_timeout))?
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        let command_timeout = self.positive_duration(pick!(self, ssh, command_timeout))?;
        let keepalive_interval = self
            .positive_duration(pick!(self, ssh, keepalive_interval))?
            .unwrap_or(DEFAULT_KEEPALIVE_INTERVAL);
        let max_concurrent_connects = match pick!(self, ssh, max_concurrent_connects) {
            None => Some(DEFAULT_MAX_CONCURRENT_CONNECTS),
            Some(At { value, key }) if value < 1 => {
                self.fail(&key, format!("{value} is too small; allow at least 1"))
            }
            Some(at) => Some(at.value as usize),
        };
        Some(Ssh {
            user: user?,
            port: port?,
            identity_file,
            known_hosts,
            host_key_checking: host_key_checking?,
            config: config?,
            proxy_jump: proxy_jump?,
            connect_timeout,
            command_timeout,
            keepalive_interval,
            max_concurrent_connects: max_concurrent_connects?,
        })
    }

    fn proxy_jump(&mut self, at: At<toml::Value>) -> Option<Vec<String>> {
        let hops: Vec<String> = match &at.value {
            toml::Value::String(s) if s.trim() == "none" => return Some(Vec::new()),
            toml::Value::String(s) => s.split(',').map(|h| h.trim().to_string()).collect(),
            toml::Value::Array(items) => {
                let mut hops = Vec::new();
                for item in items {
                    match item.as_str() {
                        Some(s) => hops.push(s.trim().to_string()),
                        None => {
                            return self.fail(
                                &at.key,
                                format!("{item} is not a string; list hops as \"user@host:port\""),
                            );
                        }
                    }
                }
                hops
            }
            other => {
                return self.fail(
                    &at.key,
                    format!("{other} is not allowed; use \"user@host:port\", a comma-separated list of hops, or \"none\""),
                );
            }
        };
        if hops
            .iter()
            .any(|h| h.is_empty() || h.contains(char::is_whitespace))
        {
            return self.fail(
                &at.key,
                "a hop is empty or contains spaces; write hops as \"user@host:port\"",
            );
        }
        Some(hops)
    }

    fn rollout(&mut self) -> Option<Rollout> {
        let batch_size = match pick!(self, rollout, rolling_batch_size) {
            None => Some(BatchSize::Count(1)),
            Some(at) => self.batch_size(at),
        };
        let on_failure = match pick!(self, rollout, on_failure) {
            None => Some(OnFailure::Rollback),
            Some(at) => match at.value.as_str() {
                "rollback" => Some(OnFailure::Rollback),
                "pause" => Some(OnFailure::Pause),
                "continue" => Some(OnFailure::Continue),
                other => self.fail(
                    &at.key,
                    format!("{other:?} is not allowed; use \"rollback\" (default), \"pause\" or \"continue\""),
                ),
            },
        };
        let max_fail_percentage = match pick!(self, rollout, max_fail_percentage) {
            None => Some(0),
            Some(At { value, .. }) if (0..=100).contains(&value) => Some(value as u8),
            Some(at) => self.fail(&at.key, format!("{} is not a percentage (0-100)", at.value)),
        };
        let lock_lease = self
            .positive_duration(pick!(self, rollout, lock_lease))
            .map(|d| d.unwrap_or(DEFAULT_LOCK_LEASE));
        let lock_lease = match lock_lease? {
            d if d < Duration::from_secs(2) => {
                let key = pick!(self, rollout, lock_lease)
                    .map(|a| a.key)
                    .unwrap_or_default();
                return self.fail(
                    &key,
                    "must be at least 2s: the lock is refreshed at a quarter of it",
                );
            }
            d => d,
        };
        Some(Rollout {
            batch_size: batch_size?,
            on_failure: on_failure?,
            max_fail_percentage: max_fail_percentage?,
            lock_lease,
        })
    }

    fn batch_size(&mut self, at: At<toml::Value>) -> Option<BatchSize> {
        const ALLOWED: &str = "use a number of hosts (at least 1) or a percentage such as \"25%\"";
        match &at.value {
            toml::Value::Integer(n) if *n >= 1 => Some(BatchSize::Count(*n as usize)),
            toml::Value::String(s) => {
                match s.trim().strip_suffix('%').map(|p| p.trim().parse::<u8>()) {
                    Some(Ok(p)) if (1..=100).contains(&p) => Some(BatchSize::Percent(p)),
                    _ => self.fail(&at.key, format!("{s:?} is not allowed; {ALLOWED}")),
                }
            }
            other => self.fail(&at.key, format!("{other} is not allowed; {ALLOWED}")),
        }
    }

    fn health(&mut self) -> Option<Option<Health>> {
        let Some(raw) = self.merged.health.clone() else {
            return Some(None);
        };
        let url = match pick!(self, health, url) {
            None => {
                return self.missing(
                    "health",
                    "url",
                    ", e.g. url = \"http://{address}:8080/health\"",
                );
            }
            Some(at) => {
                let template = self.template(Some(At {
                    value: at.value.clone(),
                    key: at.key.clone(),
                }))??;
                let probe = template.render_plain(&super::Vars {
                    address: "example.org".into(),
                    port: 22,
                    ..Default::default()
                });
                if !(probe.starts_with("http://") || probe.starts_with("https://"))
                    || reqwest::Url::parse(&probe).is_err()
                {
                    return self.fail(
                        &at.key,
                        format!("{:?} is not an http:// or https:// URL", at.value),
                    );
                }
                template
            }
        };
        let expect_status = match pick!(self, health, expect_status) {
            None => Some(200),
            Some(At { value, .. }) if (100..=599).contains(&value) => Some(value as u16),
            Some(at) => self.fail(
                &at.key,
                format!("{} is not an HTTP status (100-599)", at.value),
            ),
        };
        let expect_body = self.template(pick!(self, health, expect_body));
        let timeout = self
            .positive_duration(pick!(self, health, timeout))
            .map(|d| d.unwrap_or(DEFAULT_HEALTH_TIMEOUT));
        let interval = self
            .positive_duration(pick!(self, health, interval))
            .map(|d| d.unwrap_or(DEFAULT_HEALTH_INTERVAL));
        let request_timeout = self.positive_duration(pick!(self, health, request_timeout));
        let (timeout, interval, request_timeout) = (timeout?, interval?, request_timeout?);
        if interval >= timeout {
            let key = if raw.interval.is_some() {
                "health.interval"
            } else {
                "health.timeout"
            };
            return self.fail(
                key,
                format!(
                    "the interval ({}) must be shorter than the timeout ({}), or the check gets one try",
                    humantime::format_duration(interval),
                    humantime::format_duration(timeout)
                ),
            );
        }
        Some(Some(Health {
            url,
            expect_status: expect_status?,
            expect_body: expect_body?,
            timeout,
            interval,
            request_timeout: request_timeout.unwrap_or(DEFAULT_REQUEST_TIMEOUT.min(timeout)),
        }))
    }

    fn env(&mut self) -> Option<Vec<EnvVar>> {
        let merged = self.merged.env.clone().unwrap_or_default();
        let mut vars = Vec::new();
        let mut ok = true;
        for (name, value) in merged {
            let from_stage = self
                .over
                .env
                .as_ref()
                .is_some_and(|e| e.contains_key(&name));
            let key = if from_stage {
                format!("stages.{}.env.{name}", self.stage)
            } else {
                format!("env.{name}")
            };
            if !shell::valid_env_name(&name) || name.starts_with("SHIPIT_") {
                self.errors.add(
                    &key,
                    "not a usable variable name: letters, digits and `_`, not starting with a digit or SHIPIT_",
                );
                ok = false;
                continue;
            }
            match self.env_value(&key, value) {
                Some((value, secret)) => vars.push(EnvVar {
                    name,
                    value,
                    secret,
                }),
                None => ok = false,
            }
        }
        ok.then_some(vars)
    }

    fn env_value(&mut self, key: &str, value: toml::Value) -> Option<(EnvValue, bool)> {
        const ALLOWED: &str = "use a string, or a table with one of value / from_env / from_file and an optional secret = true";
        match value {
            toml::Value::String(s) if s.contains('\0') => {
                self.fail(key, "must not contain NUL bytes")
            }
            toml::Value::String(s) => Some((EnvValue::Literal(s), false)),
            toml::Value::Table(mut table) => {
                let secret = match table.remove("secret") {
                    None => None,
                    Some(toml::Value::Boolean(b)) => Some(b),
                    Some(other) => {
                        return self.fail(
                            key,
                            format!("secret = {other} is not allowed; use true or false"),
                        );
                    }
                };
                let mut sources: Vec<(String, toml::Value)> = table.into_iter().collect();
                if sources.len() != 1 {
                    return self.fail(key, format!("{} sources given; {ALLOWED}", sources.len()));
                }
                let (kind, source) = sources.remove(0);
                let Some(text) = source.as_str().map(str::to_string) else {
                    return self.fail(key, format!("{kind} = {source} is not a string"));
                };
                match kind.as_str() {
                    "value" => Some((EnvValue::Literal(text), secret.unwrap_or(false))),
                    // Values from outside the file are secrets unless said otherwise.
                    "from_env" if shell::valid_env_name(&text) => {
                        Some((EnvValue::FromEnv(text), secret.unwrap_or(true)))
                    }
                    "from_env" => {
                        self.fail(key, format!("from_env = {text:?} is not a variable name"))
                    }
                    "from_file" => Some((
                        EnvValue::FromFile(self.local_path(&text)),
                        secret.unwrap_or(true),
                    )),
                    other => self.fail(key, format!("unknown key `{other}`; {ALLOWED}")),
                }
            }
            other => self.fail(key, format!("{other} is not allowed; {ALLOWED}")),
        }
    }

    fn hooks(&mut self) -> Option<Hooks> {
        let raw = self.merged.hooks.clone().unwrap_or_default();
        let over = self.over.hooks.clone().unwrap_or_default();
        let mut ok = true;
        let mut list = |check: &mut Self,
                        name: &str,
                        entries: Option<Vec<toml::Value>>,
                        stage_set: bool,
                        default: RunOn| {
            let prefix = if stage_set {
                format!("stages.{}.hooks.{name}", check.stage)
            } else {
                format!("hooks.{name}")
            };
            let mut hooks = Vec::new();
            for (i, entry) in entries.unwrap_or_default().into_iter().enumerate() {
                let key = format!("{prefix}[{i}]");
                let (run, run_on) = match entry {
                    toml::Value::String(run) => (run, default),
                    toml::Value::Table(mut table) => {
                        let run_on = match table.remove("run_on") {
                            None => Some(default),
                            Some(toml::Value::String(s)) => match s.as_str() {
                                "local" => Some(RunOn::Local),
                                "hosts" => Some(RunOn::Hosts),
                                "once" => Some(RunOn::Once),
                                _ => check.fail(&key, format!("run_on = {s:?} is not allowed; use \"local\", \"hosts\" or \"once\"")),
                            },
                            Some(other) => check.fail(&key, format!("run_on = {other} is not a string")),
                        };
                        let run = match table.remove("run") {
                            Some(toml::Value::String(run)) => Some(run),
                            _ => check.fail(&key, "needs run = \"command\""),
                        };
                        if let Some(extra) = table.keys().next() {
                            check.fail::<()>(
                                &key,
                                format!("unknown key `{extra}`; a hook has `run` and `run_on`"),
                            );
                            ok = false;
                            continue;
                        }
                        match (run, run_on) {
                            (Some(run), Some(run_on)) => (run, run_on),
                            _ => {
                                ok = false;
                                continue;
                            }
                        }
                    }
                    other => {
                        check.fail::<()>(&key, format!("{other} is not allowed; use a command string or {{ run = \"...\", run_on = \"hosts\" }}"));
                        ok = false;
                        continue;
                    }
                };
                match check.template(Some(At { value: run, key })) {
                    Some(Some(run)) => hooks.push(Hook { run, run_on }),
                    _ => ok = false,
                }
            }
            hooks
        };
        let hooks = Hooks {
            before_deploy: list(
                self,
                "before_deploy",
                raw.before_deploy,
                over.before_deploy.is_some(),
                RunOn::Local,
            ),
            after_upload: list(
                self,
                "after_upload",
                raw.after_upload,
                over.after_upload.is_some(),
                RunOn::Hosts,
            ),
            before_switch: list(
                self,
                "before_switch",
                raw.before_switch,
                over.before_switch.is_some(),
                RunOn::Hosts,
            ),
            after_switch: list(
                self,
                "after_switch",
                raw.after_switch,
                over.after_switch.is_some(),
                RunOn::Hosts,
            ),
            after_deploy: list(
                self,
                "after_deploy",
                raw.after_deploy,
                over.after_deploy.is_some(),
                RunOn::Local,
            ),
            after_rollback: list(
                self,
                "after_rollback",
                raw.after_rollback,
                over.after_rollback.is_some(),
                RunOn::Local,
            ),
            on_failure: list(
                self,
                "on_failure",
                raw.on_failure,
                over.on_failure.is_some(),
                RunOn::Local,
            ),
        };
        ok.then_some(hooks)
    }

    /// `[lb]`: the driver, then its keys. Keys of another driver are an
    /// error, except those inherited from the shared `[lb]` by a stage that
    /// picks a different driver for itself.
    fn lb(&mut self, hosts: Option<&[Host]>, app: Option<&App>, ssh: Option<&Ssh>) -> Option<Lb> {
        let driver_at = pick!(self, lb, driver);
        let explicit = match &driver_at {
            None => None,
            Some(at) => match at.value.as_str() {
                // No load balancer, whatever else [lb] says.
                "none" => return Some(Lb::None),
                "command" => Some(Driver::Command),
                "haproxy" => Some(Driver::Haproxy),
                other => {
                    return self.fail(
                        &at.key,
                        format!(
                            "{other:?} is not allowed; use \"haproxy\", \"command\" or \"none\" (no load balancer)"
                        ),
                    );
                }
            },
        };
        let command_keys: Vec<String> = [
            pick!(self, lb, drain).map(|a| a.key),
            pick!(self, lb, enable).map(|a| a.key),
            pick!(self, lb, run_on).map(|a| a.key),
            pick!(self, lb, wait_drained).map(|a| a.key),
        ]
        .into_iter()
        .flatten()
        .collect();
        let haproxy_keys: Vec<String> = [
            pick!(self, lb, socket).map(|a| a.key),
            pick!(self, lb, via).map(|a| a.key),
            pick!(self, lb, backend).map(|a| a.key),
            pick!(self, lb, server).map(|a| a.key),
            pick!(self, lb, enable_timeout).map(|a| a.key),
        ]
        .into_iter()
        .flatten()
        .collect();
        let drain_or_enable = pick!(self, lb, drain).is_some() || pick!(self, lb, enable).is_some();
        let driver = explicit.unwrap_or(if drain_or_enable {
            Driver::Command
        } else {
            Driver::None
        });
        let driver_in_stage = driver_at
            .as_ref()
            .is_some_and(|a| a.key.starts_with("stages."));
        let foreign: Vec<(String, Driver)> = match driver {
            Driver::Command => haproxy_keys
                .into_iter()
                .map(|k| (k, Driver::Haproxy))
                .collect(),
            Driver::Haproxy => command_keys
                .into_iter()
                .map(|k| (k, Driver::Command))
                .collect(),
            Driver::None => haproxy_keys
                .into_iter()
                .map(|k| (k, Driver::Haproxy))
                .chain(command_keys.into_iter().map(|k| (k, Driver::Command)))
                .collect(),
        };
        let mut ok = true;
        for (key, owner) in foreign {
            if driver_in_stage && !key.starts_with("stages.") {
                continue;
            }
            let owner = owner.as_str();
            let message = match (&driver_at, driver) {
                (Some(at), _) => format!(
                    "only used by driver = \"{owner}\", but {} is \"{}\"",
                    at.key,
                    driver.as_str()
                ),
                (None, Driver::Command) => format!(
                    "only used by driver = \"{owner}\"; without lb.driver, lb.drain and lb.enable select driver = \"command\""
                ),
                (None, _) => format!(
                    "only used by driver = \"{owner}\"; set driver = \"{owner}\" in [{}]",
                    key.rsplit_once('.').map_or("lb", |(table, _)| table)
                ),
            };
            self.errors.add(&key, message);
            ok = false;
        }
        let drain_timeout = self
            .positive_duration(pick!(self, lb, drain_timeout))
            .map(|d| d.unwrap_or(DEFAULT_DRAIN_TIMEOUT));
        let drain_timeout_action = match pick!(self, lb, drain_timeout_action) {
            None => Some(OnTimeout::Warn),
            Some(at) => match at.value.as_str() {
                "warn" => Some(OnTimeout::Warn),
                "fail" => Some(OnTimeout::Fail),
                other => self.fail(
                    &at.key,
                    format!(
                        "{other:?} is not allowed; use \"warn\" (default: say so and restart anyway) or \"fail\" (stop, and put the host back)"
                    ),
                ),
            },
        };
        let (drain_timeout, drain_timeout_action) = (drain_timeout?, drain_timeout_action?);
        if !ok {
            return None;
        }
        match driver {
            Driver::None => Some(Lb::None),
            Driver::Command => {
                let drain = self.template(pick!(self, lb, drain));
                let enable = self.template(pick!(self, lb, enable));
                let run_on = match pick!(self, lb, run_on) {
                    None => Some(Via::Local),
                    Some(at) => self.via(&at.key, &at.value, hosts),
                };
                let wait_drained = self.template(pick!(self, lb, wait_drained));
                let (drain, enable, run_on, wait_drained) =
                    (drain?, enable?, run_on?, wait_drained?);
                let (drain, enable) = match (drain, enable) {
                    (Some(drain), Some(enable)) => (drain, enable),
                    (Some(_), None) => {
                        return self.fail(
                            "lb.enable",
                            "missing: with lb.drain set, shipit must also know how to put a host back",
                        );
                    }
                    (None, Some(_)) => {
                        return self.fail(
                            "lb.drain",
                            "missing: with lb.enable set, shipit must also know how to take a host out",
                        );
                    }
                    (None, None) => {
                        return self.missing(
                            "lb",
                            "drain",
                            ": driver = \"command\" needs lb.drain and lb.enable",
                        );
                    }
                };
                Some(Lb::Command(CommandLb {
                    drain,
                    enable,
                    run_on,
                    wait_drained,
                    drain_timeout,
                    drain_timeout_action,
                }))
            }
            Driver::Haproxy => {
                let backend = match pick!(self, lb, backend) {
                    None => self.missing(
                        "lb",
                        "backend",
                        ", e.g. backend = \"app\" (the HAProxy backend your hosts are servers of)",
                    ),
                    Some(at) if !haproxy::is_ident(&at.value) => self.fail(
                        &at.key,
                        format!(
                            "{:?} is not an HAProxy backend name: {}",
                            at.value,
                            haproxy::IDENT_RULE
                        ),
                    ),
                    Some(at) => Some(at.value),
                };
                let server = self.server_template(hosts, app, ssh);
                let balancers = self.balancers(hosts);
                let enable_timeout = self
                    .positive_duration(pick!(self, lb, enable_timeout))
                    .map(|d| d.unwrap_or(DEFAULT_ENABLE_TIMEOUT));
                Some(Lb::Haproxy(HaproxyLb {
                    balancers: balancers?,
                    backend: backend?,
                    server: server?,
                    drain_timeout,
                    drain_timeout_action,
                    enable_timeout: enable_timeout?,
                }))
            }
        }
    }

    /// `lb.server`: a template naming each host's server in the backend.
    /// Rendered here for every host, so a name HAProxy could not take, or
    /// two hosts sharing one server, is an error before any run.
    fn server_template(
        &mut self,
        hosts: Option<&[Host]>,
        app: Option<&App>,
        ssh: Option<&Ssh>,
    ) -> Option<Template> {
        let at = pick!(self, lb, server).unwrap_or(At {
            value: "{name}".to_string(),
            key: "lb.server".to_string(),
        });
        let key = at.key.clone();
        let template = self.template(Some(at))??;
        if template.uses(Var::Release) {
            return self.fail(
                &key,
                "{release} is not allowed here: a host's server name must stay the same from one release to the next",
            );
        }
        let (Some(hosts), Some(app), Some(ssh)) = (hosts, app, ssh) else {
            return Some(template);
        };
        let mut seen: BTreeMap<String, &str> = BTreeMap::new();
        for host in hosts {
            let vars = super::host_vars(self.stage, app, ssh, host, "");
            let name = template.render_plain(&vars);
            if !haproxy::is_ident(&name) {
                return self.fail(
                    &key,
                    format!(
                        "renders to {name:?} for host {}; {}",
                        host.name,
                        haproxy::IDENT_RULE
                    ),
                );
            }
            if let Some(other) = seen.insert(name.clone(), &host.name) {
                return self.fail(
                    &key,
                    format!(
                        "renders to {name:?} for both {other} and {}; each host needs its own server",
                        host.name
                    ),
                );
            }
        }
        Some(template)
    }

    /// `lb.socket` × `lb.via`: one load balancer per list entry.
    fn balancers(&mut self, hosts: Option<&[Host]>) -> Option<Vec<Balancer>> {
        let Some(socket_at) = pick!(self, lb, socket) else {
            return self.missing(
                "lb",
                "socket",
                ", e.g. socket = \"/run/haproxy/admin.sock\" (a `stats socket ... level admin` of HAProxy) or \"10.0.0.5:9999\"",
            );
        };
        let socket_key = socket_at.key.clone();
        let via_at = pick!(self, lb, via);
        let via_key = via_at
            .as_ref()
            .map_or_else(|| "lb.via".to_string(), |a| a.key.clone());
        let sockets = self.one_or_many(socket_at, "a socket path or host:port");
        let vias = match via_at {
            None => Some(vec!["local".to_string()]),
            Some(at) => self.one_or_many(at, "\"local\", a host name or user@host[:port]"),
        };
        let (sockets, vias) = (sockets?, vias?);
        let sockets: Vec<AdminSocket> = sockets
            .iter()
            .map(|s| self.admin_socket(&socket_key, s))
            .collect::<Option<_>>()?;
        let vias: Vec<Via> = vias
            .iter()
            .map(|v| self.via(&via_key, v, hosts))
            .collect::<Option<_>>()?;
        let balancers: Vec<Balancer> = match (sockets.as_slice(), vias.as_slice()) {
            ([socket], vias) => vias
                .iter()
                .map(|via| Balancer {
                    via: via.clone(),
                    socket: socket.clone(),
                })
                .collect(),
            (sockets, [via]) => sockets
                .iter()
                .map(|socket| Balancer {
                    via: via.clone(),
                    socket: socket.clone(),
                })
                .collect(),
            _ => {
                return self.fail(
                    &via_key,
                    format!(
                        "{socket_key} and {via_key} are both lists; list the load balancers in one of them and the other applies to each \
                         (e.g. via = [\"lb1\", \"lb2\"] with one socket path)"
                    ),
                );
            }
        };
        let mut seen = BTreeSet::new();
        for b in &balancers {
            if !seen.insert(b) {
                let key = if vias.len() > 1 {
                    &via_key
                } else {
                    &socket_key
                };
                return self.fail(key, format!("lists the load balancer {b} twice"));
            }
        }
        Some(balancers)
    }

    /// A string, or a non-empty list of strings.
    fn one_or_many(&mut self, at: At<toml::Value>, what: &str) -> Option<Vec<String>> {
        match at.value {
            toml::Value::String(s) => Some(vec![s]),
            toml::Value::Array(items) if items.is_empty() => {
                self.fail(&at.key, format!("is an empty list; give {what}"))
            }
            toml::Value::Array(items) => {
                let mut out = Vec::new();
                for item in items {
                    match item {
                        toml::Value::String(s) => out.push(s),
                        other => {
                            return self
                                .fail(&at.key, format!("{other} is not a string; give {what}"));
                        }
                    }
                }
                Some(out)
            }
            other => self.fail(
                &at.key,
                format!("{other} is not allowed; give {what}, or a list of them"),
            ),
        }
    }

    /// `"local"`, an inventory host, or `user@host[:port]`.
    fn via(&mut self, key: &str, value: &str, hosts: Option<&[Host]>) -> Option<Via> {
        if value == "local" {
            return Some(Via::Local);
        }
        if let Some((user, rest)) = value.split_once('@') {
            let (address, port) = match split_host_port(rest) {
                Some((host, port)) => match port.parse::<u16>() {
                    Ok(p) if p > 0 => (host, Some(p)),
                    _ => {
                        return self
                            .fail(key, format!("{value:?}: {port:?} is not a port (1-65535)"));
                    }
                },
                None => (rest.trim_start_matches('[').trim_end_matches(']'), None),
            };
            let bad_user =
                user.is_empty() || user.contains(|c: char| c.is_whitespace() || c == ':');
            let bad_host = address.is_empty()
                || address
                    .contains(|c: char| c.is_whitespace() || matches!(c, '@' | '/' | '[' | ']'));
            if bad_user || bad_host {
                return self.fail(key, format!("{value:?} is not user@host[:port]"));
            }
            return Some(Via::Ssh {
                spec: value.to_string(),
                user: user.to_string(),
                address: address.to_string(),
                port,
            });
        }
        let hosts = hosts?;
        if hosts.iter().any(|h| h.name == value) {
            return Some(Via::Host {
                name: value.to_string(),
            });
        }
        self.fail(
            key,
            format!(
                "{value:?} is not a host of stage `{stage}`; use \"local\", a host name from stages.{stage}.hosts, or user@host[:port] for another machine",
                stage = self.stage
            ),
        )
    }

    /// A UNIX socket path or `host:port`.
    fn admin_socket(&mut self, key: &str, value: &str) -> Option<AdminSocket> {
        if value.starts_with('/') {
            let plain = value.chars().all(|c| {
                c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '+' | '@' | '-')
            });
            if !plain {
                return self.fail(
                    key,
                    format!(
                        "{value:?}: a socket path may contain only letters, digits and `._/+@-` (socat, which carries commands to sockets on other hosts, gives other characters a meaning)"
                    ),
                );
            }
            if value.len() > 107 {
                return self.fail(
                    key,
                    format!("{value:?} is longer than a UNIX socket path may be (107 bytes)"),
                );
            }
            return Some(AdminSocket::Unix {
                path: value.to_string(),
            });
        }
        if let Some((host, port)) = split_host_port(value) {
            let host_ok = !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'));
            if let (true, Ok(port @ 1..)) = (host_ok, port.parse::<u16>()) {
                return Some(AdminSocket::Tcp {
                    host: host.to_string(),
                    port,
                });
            }
        }
        self.fail(
            key,
            format!(
                "{value:?} is neither the absolute path of a UNIX socket (/run/haproxy/admin.sock) nor host:port of a TCP admin socket (10.0.0.5:9999)"
            ),
        )
    }

    fn hosts(&mut self, raw: Option<&[RawHost]>) -> Option<Vec<Host>> {
        let stage = self.stage.to_string();
        let Some(raw) = raw else {
            return self.fail(
                &format!("stages.{stage}.hosts"),
                "missing; list the hosts, e.g. hosts = [{ name = \"web1\", address = \"10.0.0.11\" }]",
            );
        };
        if raw.is_empty() {
            return self.fail(
                &format!("stages.{stage}.hosts"),
                "is empty; list at least one host",
            );
        }
        let mut hosts = Vec::new();
        let mut names = BTreeSet::new();
        let mut ok = true;
        for (i, h) in raw.iter().enumerate() {
            let key = |field: &str| format!("stages.{stage}.hosts[{i}].{field}");
            let Some(name) = h.name.clone().or_else(|| h.address.clone()) else {
                self.errors.add(
                    &key("name"),
                    "missing; every host needs a name (and an address)",
                );
                ok = false;
                continue;
            };
            if !is_name(&name) {
                self.errors.add(
                    &key("name"),
                    format!("{name:?}: use letters, digits, `.`, `-` and `_`"),
                );
                ok = false;
            }
            if !names.insert(name.clone()) {
                self.errors.add(
                    &key("name"),
                    format!("{name:?} is listed twice in this stage; host names must be unique"),
                );
                ok = false;
            }
            let address = h.address.clone().unwrap_or_else(|| name.clone());
            if address.trim().is_empty()
                || address.contains(char::is_whitespace)
                || address.contains('/')
            {
                self.errors.add(
                    &key("address"),
                    format!("{address:?} is not a host name or IP address"),
                );
                ok = false;
            }
            let port = match h.port {
                Some(p) => self.port(At {
                    value: p,
                    key: key("port"),
                }),
                None => Some(0),
            };
            let user = match &h.user {
                Some(u) => self.user_name(At {
                    value: u.clone(),
                    key: key("user"),
                }),
                None => Some(String::new()),
            };
            let roles = h.roles.clone().unwrap_or_default();
            if let Some(bad) = roles.iter().find(|r| !is_name(r)) {
                self.errors.add(
                    &key("roles"),
                    format!("{bad:?}: a role may contain only letters, digits, `.`, `-` and `_`"),
                );
                ok = false;
            }
            let (Some(port), Some(user)) = (port, user) else {
                ok = false;
                continue;
            };
            hosts.push(Host {
                name,
                address,
                port: (port != 0).then_some(port),
                user: (!user.is_empty()).then_some(user),
                roles,
            });
        }
        ok.then_some(hosts)
    }

    // ---- value checks shared by the sections above ----

    fn port(&mut self, at: At<i64>) -> Option<u16> {
        match u16::try_from(at.value) {
            Ok(p) if p > 0 => Some(p),
            _ => self.fail(&at.key, format!("{} is not a port (1-65535)", at.value)),
        }
    }

    fn user_name(&mut self, at: At<String>) -> Option<String> {
        if at.value.is_empty()
            || at
                .value
                .contains(|c: char| c.is_whitespace() || c == '@' || c == ':')
        {
            return self.fail(&at.key, format!("{:?} is not a user name", at.value));
        }
        Some(at.value)
    }

    fn remote_dir(&mut self, at: At<String>) -> Option<String> {
        let value = at.value.trim_end_matches('/');
        if !at.value.starts_with('/') {
            return self.fail(
                &at.key,
                format!(
                    "{:?} must be an absolute path on the hosts, such as /srv/shop",
                    at.value
                ),
            );
        }
        if value.is_empty() {
            return self.fail(
                &at.key,
                "\"/\" is not a deploy directory; use a directory of its own, such as /srv/shop",
            );
        }
        if value.contains(['\n', '\r', '\0']) {
            return self.fail(&at.key, "must not contain line breaks or NUL bytes");
        }
        if value.split('/').any(|part| part == ".." || part == ".") {
            return self.fail(
                &at.key,
                format!("{:?} must not contain `.` or `..` components", at.value),
            );
        }
        Some(value.to_string())
    }

    fn relative_paths(&mut self, at: Option<At<Vec<String>>>) -> Option<Vec<String>> {
        let Some(at) = at else {
            return Some(Vec::new());
        };
        let mut out = Vec::new();
        for value in &at.value {
            let clean = value.trim_end_matches('/');
            let bad = clean.is_empty()
                || clean.starts_with('/')
                || clean.contains(['\n', '\r', '\0'])
                || clean
                    .split('/')
                    .any(|p| p.is_empty() || p == "." || p == "..");
            if bad {
                return self.fail(
                    &at.key,
                    format!("{value:?} must be a plain path relative to the release, such as \"log\" or \"config/.env\""),
                );
            }
            if out.iter().any(|o| o == clean) {
                return self.fail(&at.key, format!("{value:?} is listed twice"));
            }
            out.push(clean.to_string());
        }
        Some(out)
    }

    fn template(&mut self, at: Option<At<String>>) -> Option<Option<Template>> {
        let Some(at) = at else {
            return Some(None);
        };
        if at.value.trim().is_empty() {
            return self.fail(&at.key, "must not be empty; remove the key instead");
        }
        if at.value.contains('\0') {
            return self.fail(&at.key, "must not contain NUL bytes");
        }
        match Template::parse(&at.value) {
            Ok(t) => Some(Some(t)),
            Err(e) => self.fail(&at.key, e.to_string()),
        }
    }

    fn command_line(&mut self, at: Option<At<String>>) -> Option<Option<String>> {
        match at {
            Some(at) if at.value.trim().is_empty() => {
                self.fail(&at.key, "must not be empty; remove the key instead")
            }
            Some(at) if at.value.contains('\0') => self.fail(&at.key, "must not contain NUL bytes"),
            other => Some(other.map(|a| a.value)),
        }
    }

    fn duration(&mut self, at: Option<At<String>>) -> Option<Option<Duration>> {
        let Some(at) = at else {
            return Some(None);
        };
        match parse_duration(&at.value) {
            Some(d) => Some(Some(d)),
            None => self.fail(
                &at.key,
                format!(
                    "{:?} is not a duration; write a number and a unit, such as 500ms, 30s or 2m",
                    at.value
                ),
            ),
        }
    }

    fn positive_duration(&mut self, at: Option<At<String>>) -> Option<Option<Duration>> {
        let key = at.as_ref().map(|a| a.key.clone());
        match self.duration(at)? {
            Some(d) if d.is_zero() => self.fail(&key.unwrap_or_default(), "must be longer than 0"),
            other => Some(other),
        }
    }

    /// A local path from deploy.toml: `~` is the home directory, relative
    /// paths are relative to deploy.toml's directory (not the shell's).
    fn local_path(&self, value: &str) -> PathBuf {
        expand_local_path(self.base, value)
    }
}

/// The `[lb]` drivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Driver {
    None,
    Command,
    Haproxy,
}

impl Driver {
    fn as_str(self) -> &'static str {
        match self {
            Driver::None => "none",
            Driver::Command => "command",
            Driver::Haproxy => "haproxy",
        }
    }
}

/// `host:port` or `[v6]:port` → (host, port text); `None` without a port.
fn split_host_port(value: &str) -> Option<(&str, &str)> {
    if let Some(rest) = value.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return after.strip_prefix(':').map(|port| (host, port));
    }
    match value.rsplit_once(':') {
        // A bare IPv6 address has several colons and no port.
        Some((host, _)) if host.contains(':') => None,
        Some((host, port)) => Some((host, port)),
        None => None,
    }
}

pub fn expand_local_path(base: &Path, value: &str) -> PathBuf {
    if let Some(rest) = value.strip_prefix("~/")
        && let Some(home) = std::env::var_os("HOME")
    {
        return PathBuf::from(home).join(rest);
    }
    let path = PathBuf::from(value);
    if path.is_absolute() {
        path
    } else {
        base.join(path)
    }
}

/// `500ms`, `30s`, `2m`, `1h`, `1m 30s`.
pub fn parse_duration(value: &str) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() || !value.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    humantime::parse_duration(value).ok()
}

fn is_name(value: &str) -> bool {
    !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    use super::super::load::parse;
    use super::*;

    const BASE: &str = r#"
[app]
name = "shop"
deploy_to = "/srv/shop"
source = "dist/"

[stages.production]
hosts = [ { name = "web1", address = "10.0.0.11" }, { name = "web2", address = "10.0.0.12", port = 2222 } ]
"#;

    fn check(extra: &str) -> Result<Config, String> {
        let text = format!("{BASE}\n{extra}");
        let raw = parse(Path::new("/p/deploy.toml"), &text).map_err(|e| e.to_string())?;
        validate(Path::new("/p/deploy.toml"), raw).map_err(|e| e.to_string())
    }

    fn error(extra: &str) -> String {
        match check(extra) {
            Ok(_) => panic!("expected an error for:\n{extra}"),
            Err(e) => e,
        }
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let config = check("").unwrap();
        let stage = &config.stages["production"];
        assert_eq!(stage.app.keep_releases, 5);
        assert_eq!(stage.app.source, Source::Directory("/p/dist/".into()));
        assert_eq!(stage.rollout.batch_size, BatchSize::Count(1));
        assert_eq!(stage.rollout.on_failure, OnFailure::Rollback);
        assert_eq!(stage.rollout.lock_lease, DEFAULT_LOCK_LEASE);
        assert!(stage.health.is_none());
        assert_eq!(stage.hosts[1].port, Some(2222));
        assert_eq!(stage.ssh.connect_timeout, Duration::from_secs(10));
    }

    #[test]
    fn stage_overrides_win_key_by_key() {
        let config = check(
            r#"
[health]
url = "http://{address}:8080/health"
timeout = "30s"
[stages.production.health]
timeout = "2m"
[stages.production.rollout]
rolling_batch_size = "50%"
"#,
        )
        .unwrap();
        let stage = &config.stages["production"];
        let health = stage.health.as_ref().unwrap();
        assert_eq!(health.timeout, Duration::from_secs(120));
        assert_eq!(health.url.source(), "http://{address}:8080/health");
        assert_eq!(health.interval, Duration::from_millis(500));
        assert_eq!(stage.rollout.batch_size, BatchSize::Percent(50));
    }

    /// Bad input and the exact message the user sees.
    #[test]
    fn bad_values_and_their_messages() {
        let cases: &[(&str, &str)] = &[
            (
                "[rollout]\nrolling_batch_size = 0",
                "/p/deploy.toml: rollout.rolling_batch_size: 0 is not allowed; use a number of hosts (at least 1) or a percentage such as \"25%\"",
            ),
            (
                "[rollout]\nrolling_batch_size = \"150%\"",
                "/p/deploy.toml: rollout.rolling_batch_size: \"150%\" is not allowed; use a number of hosts (at least 1) or a percentage such as \"25%\"",
            ),
            (
                "[health]\nurl = \"http://{address}/\"\ntimeout = \"30 seconds please\"",
                "/p/deploy.toml: health.timeout: \"30 seconds please\" is not a duration; write a number and a unit, such as 500ms, 30s or 2m",
            ),
            (
                "[health]\nurl = \"http://{adress}/\"",
                "/p/deploy.toml: health.url: unknown placeholder {adress}; allowed: {app}, {name}, {address}, {port}, {user}, {stage}, {deploy_to}, {release} (write {{ and }} for literal braces)",
            ),
            (
                "[health]\nurl = \"ftp://{address}/\"",
                "/p/deploy.toml: health.url: \"ftp://{address}/\" is not an http:// or https:// URL",
            ),
            (
                "[health]\nurl = \"http://{address}/\"\ninterval = \"1m\"",
                "/p/deploy.toml: health.interval: the interval (1m) must be shorter than the timeout (30s), or the check gets one try",
            ),
            (
                "[health]\nexpect_status = 200",
                "/p/deploy.toml: health.url: missing (stage `production`); set it in [health] or [stages.production.health], e.g. url = \"http://{address}:8080/health\"",
            ),
            (
                "[ssh]\nhost_key_checking = \"no\"",
                "/p/deploy.toml: ssh.host_key_checking: \"no\" is not allowed; use \"strict\" (default) or \"accept-new\" (records unknown keys; a changed key is always refused)",
            ),
            (
                "[rollout]\non_failure = \"retry\"",
                "/p/deploy.toml: rollout.on_failure: \"retry\" is not allowed; use \"rollback\" (default), \"pause\" or \"continue\"",
            ),
            (
                "[rollout]\nmax_fail_percentage = 101",
                "/p/deploy.toml: rollout.max_fail_percentage: 101 is not a percentage (0-100)",
            ),
            (
                "[rollout]\nlock_lease = \"1s\"",
                "/p/deploy.toml: rollout.lock_lease: must be at least 2s: the lock is refreshed at a quarter of it",
            ),
            (
                "[env]\n\"1BAD\" = \"x\"",
                "/p/deploy.toml: env.1BAD: not a usable variable name: letters, digits and `_`, not starting with a digit or SHIPIT_",
            ),
            (
                "[env]\nTOKEN = { value = \"a\", from_env = \"B\" }",
                "/p/deploy.toml: env.TOKEN: 2 sources given; use a string, or a table with one of value / from_env / from_file and an optional secret = true",
            ),
            (
                "[stages.production.env]\nKEY = 3",
                "/p/deploy.toml: stages.production.env.KEY: 3 is not allowed; use a string, or a table with one of value / from_env / from_file and an optional secret = true",
            ),
            (
                "[hooks]\nafter_upload = [{ run = \"x\", run_on = \"all\" }]",
                "/p/deploy.toml: hooks.after_upload[0]: run_on = \"all\" is not allowed; use \"local\", \"hosts\" or \"once\"",
            ),
            (
                "[hooks]\nbefore_deploy = [{ run = \"x\", when = \"always\" }]",
                "/p/deploy.toml: hooks.before_deploy[0]: unknown key `when`; a hook has `run` and `run_on`",
            ),
            (
                "[hooks]\nbefore_switch = [\"notify {hots}\"]",
                "/p/deploy.toml: hooks.before_switch[0]: unknown placeholder {hots}; allowed: {app}, {name}, {address}, {port}, {user}, {stage}, {deploy_to}, {release} (write {{ and }} for literal braces)",
            ),
            (
                "[ssh]\nport = 70000",
                "/p/deploy.toml: ssh.port: 70000 is not a port (1-65535)",
            ),
            (
                "[lb]\ndrain = \"echo drain {name}\"",
                "/p/deploy.toml: lb.enable: missing: with lb.drain set, shipit must also know how to put a host back",
            ),
            (
                "[lb]\ndriver = \"f5\"",
                "/p/deploy.toml: lb.driver: \"f5\" is not allowed; use \"haproxy\", \"command\" or \"none\" (no load balancer)",
            ),
            (
                "[lb]\ndriver = \"haproxy\"\nbackend = \"app\"",
                "/p/deploy.toml: lb.socket: missing (stage `production`); set it in [lb] or [stages.production.lb], e.g. socket = \"/run/haproxy/admin.sock\" (a `stats socket ... level admin` of HAProxy) or \"10.0.0.5:9999\"",
            ),
            (
                "[lb]\ndriver = \"haproxy\"\nsocket = \"/run/haproxy/admin.sock\"",
                "/p/deploy.toml: lb.backend: missing (stage `production`); set it in [lb] or [stages.production.lb], e.g. backend = \"app\" (the HAProxy backend your hosts are servers of)",
            ),
            (
                "[lb]\ndriver = \"haproxy\"\nsocket = \"/run/haproxy/admin.sock\"\nbackend = \"my app\"",
                "/p/deploy.toml: lb.backend: \"my app\" is not an HAProxy backend name: use letters, digits, `-`, `_`, `.` and `:` (HAProxy's names; its runtime API is line-based)",
            ),
            (
                "[lb]\ndriver = \"haproxy\"\nsocket = \"/a.sock\"\nbackend = \"app\"\nserver = \"{name} x\"",
                "/p/deploy.toml: lb.server: renders to \"web1 x\" for host web1; use letters, digits, `-`, `_`, `.` and `:` (HAProxy's names; its runtime API is line-based)",
            ),
            (
                "[lb]\ndriver = \"haproxy\"\nsocket = \"/a.sock\"\nbackend = \"app\"\nserver = \"{release}\"",
                "/p/deploy.toml: lb.server: {release} is not allowed here: a host's server name must stay the same from one release to the next",
            ),
            (
                "[lb]\ndriver = \"haproxy\"\nsocket = \"/a.sock\"\nbackend = \"app\"\nserver = \"web\"",
                "/p/deploy.toml: lb.server: renders to \"web\" for both web1 and web2; each host needs its own server",
            ),
            (
                "[lb]\ndriver = \"haproxy\"\nsocket = \"run/haproxy.sock\"\nbackend = \"app\"",
                "/p/deploy.toml: lb.socket: \"run/haproxy.sock\" is neither the absolute path of a UNIX socket (/run/haproxy/admin.sock) nor host:port of a TCP admin socket (10.0.0.5:9999)",
            ),
            (
                "[lb]\ndriver = \"haproxy\"\nsocket = \"/run/ha proxy,x.sock\"\nbackend = \"app\"",
                "/p/deploy.toml: lb.socket: \"/run/ha proxy,x.sock\": a socket path may contain only letters, digits and `._/+@-` (socat, which carries commands to sockets on other hosts, gives other characters a meaning)",
            ),
            (
                "[lb]\ndriver = \"haproxy\"\nsocket = \"10.0.0.5:99999\"\nbackend = \"app\"",
                "/p/deploy.toml: lb.socket: \"10.0.0.5:99999\" is neither the absolute path of a UNIX socket (/run/haproxy/admin.sock) nor host:port of a TCP admin socket (10.0.0.5:9999)",
            ),
            (
                "[lb]\ndriver = \"haproxy\"\nsocket = [\"/a.sock\", \"/b.sock\"]\nvia = [\"web1\", \"web2\"]\nbackend = \"app\"",
                "/p/deploy.toml: lb.via: lb.socket and lb.via are both lists; list the load balancers in one of them and the other applies to each (e.g. via = [\"lb1\", \"lb2\"] with one socket path)",
            ),
            (
                "[lb]\ndriver = \"haproxy\"\nsocket = \"/a.sock\"\nvia = [\"web1\", \"web1\"]\nbackend = \"app\"",
                "/p/deploy.toml: lb.via: lists the load balancer web1:/a.sock twice",
            ),
            (
                "[lb]\ndriver = \"haproxy\"\nsocket = \"/a.sock\"\nvia = \"lb1\"\nbackend = \"app\"",
                "/p/deploy.toml: lb.via: \"lb1\" is not a host of stage `production`; use \"local\", a host name from stages.production.hosts, or user@host[:port] for another machine",
            ),
            (
                "[lb]\ndriver = \"haproxy\"\nsocket = \"/a.sock\"\nvia = \"ops@lb1:x\"\nbackend = \"app\"",
                "/p/deploy.toml: lb.via: \"ops@lb1:x\": \"x\" is not a port (1-65535)",
            ),
            (
                "[lb]\ndriver = \"haproxy\"\nsocket = []\nbackend = \"app\"",
                "/p/deploy.toml: lb.socket: is an empty list; give a socket path or host:port",
            ),
            (
                "[lb]\ndriver = \"haproxy\"\nsocket = 9999\nbackend = \"app\"",
                "/p/deploy.toml: lb.socket: 9999 is not allowed; give a socket path or host:port, or a list of them",
            ),
            (
                "[lb]\ndriver = \"haproxy\"\nsocket = \"/a.sock\"\nbackend = \"app\"\ndrain = \"x\"",
                "/p/deploy.toml: lb.drain: only used by driver = \"command\", but lb.driver is \"haproxy\"",
            ),
            (
                "[lb]\ndrain = \"x {name}\"\nenable = \"y {name}\"\nsocket = \"/a.sock\"",
                "/p/deploy.toml: lb.socket: only used by driver = \"haproxy\"; without lb.driver, lb.drain and lb.enable select driver = \"command\"",
            ),
            (
                "[lb]\nsocket = \"/a.sock\"",
                "/p/deploy.toml: lb.socket: only used by driver = \"haproxy\"; set driver = \"haproxy\" in [lb]",
            ),
            (
                "[lb]\ndriver = \"command\"",
                "/p/deploy.toml: lb.drain: missing (stage `production`); set it in [lb] or [stages.production.lb]: driver = \"command\" needs lb.drain and lb.enable",
            ),
            (
                "[lb]\ndrain = \"x\"\nenable = \"y\"\nrun_on = \"lb9\"",
                "/p/deploy.toml: lb.run_on: \"lb9\" is not a host of stage `production`; use \"local\", a host name from stages.production.hosts, or user@host[:port] for another machine",
            ),
            (
                "[lb]\ndrain = \"x\"\nenable = \"y\"\ndrain_timeout_action = \"ignore\"",
                "/p/deploy.toml: lb.drain_timeout_action: \"ignore\" is not allowed; use \"warn\" (default: say so and restart anyway) or \"fail\" (stop, and put the host back)",
            ),
            (
                "[lb]\ndrain = \"x\"\nenable = \"y\"\ndrain_timeout = \"0s\"",
                "/p/deploy.toml: lb.drain_timeout: must be longer than 0",
            ),
            (
                "[lb]\ndriver = \"haproxy\"\nsocket = \"/a.sock\"\nbackend = \"app\"\n[stages.production.lb]\nbackend = \"other\"\ndrain = \"x\"",
                "/p/deploy.toml: stages.production.lb.drain: only used by driver = \"command\", but lb.driver is \"haproxy\"",
            ),
            (
                "[stages.production.app]\ndeploy_to = \"srv/shop\"",
                "/p/deploy.toml: stages.production.app.deploy_to: \"srv/shop\" must be an absolute path on the hosts, such as /srv/shop",
            ),
            (
                "[stages.production.app]\nshared_dirs = [\"../etc\"]",
                "/p/deploy.toml: stages.production.app.shared_dirs: \"../etc\" must be a plain path relative to the release, such as \"log\" or \"config/.env\"",
            ),
            (
                "[stages.production.app]\nkeep_releases = 0",
                "/p/deploy.toml: stages.production.app.keep_releases: 0 is too small; keep at least 1 release (the current and the previous one are never deleted)",
            ),
            (
                "[stages.init]\nhosts = [ { name = \"a\" } ]",
                "/p/deploy.toml: stages.init: `init` is a shipit command (`shipit init`), so it cannot name a stage; reserved: init, completions, man, help",
            ),
            (
                "[stages.staging]\nhosts = []",
                "/p/deploy.toml: stages.staging.hosts: is empty; list at least one host",
            ),
            (
                "[stages.staging]\nhosts = [ { name = \"a\" }, { name = \"a\" } ]",
                "/p/deploy.toml: stages.staging.hosts[1].name: \"a\" is listed twice in this stage; host names must be unique",
            ),
        ];
        for (extra, expected) in cases {
            assert_eq!(&error(extra), expected, "for:\n{extra}");
        }
    }

    fn lb(extra: &str) -> Lb {
        check(extra).unwrap().stages["production"].lb.clone()
    }

    #[test]
    fn lb_drivers_and_their_defaults() {
        assert!(matches!(lb(""), Lb::None));
        // drain and enable without a driver: the command driver, as before.
        let Lb::Command(c) = lb("[lb]\ndrain = \"d {name}\"\nenable = \"e {name}\"") else {
            panic!()
        };
        assert_eq!(c.run_on, Via::Local);
        assert_eq!(c.drain_timeout, Duration::from_secs(30));
        assert_eq!(c.drain_timeout_action, OnTimeout::Warn);
        assert!(c.wait_drained.is_none());
        let Lb::Command(c) = lb(
            "[lb]\ndriver = \"command\"\ndrain = \"d\"\nenable = \"e\"\nrun_on = \"web2\"\nwait_drained = \"idle {name}\"\ndrain_timeout = \"5s\"\ndrain_timeout_action = \"fail\"",
        ) else {
            panic!()
        };
        assert_eq!(
            c.run_on,
            Via::Host {
                name: "web2".into()
            }
        );
        assert_eq!(c.wait_drained.unwrap().source(), "idle {name}");
        assert_eq!(c.drain_timeout_action, OnTimeout::Fail);

        let Lb::Haproxy(h) = lb(
            "[lb]\ndriver = \"haproxy\"\nsocket = \"/run/haproxy/admin.sock\"\nbackend = \"app\"",
        ) else {
            panic!()
        };
        assert_eq!(
            h.balancers,
            [Balancer {
                via: Via::Local,
                socket: AdminSocket::Unix {
                    path: "/run/haproxy/admin.sock".into()
                }
            }]
        );
        assert_eq!(h.server.source(), "{name}");
        assert_eq!(
            (h.drain_timeout, h.enable_timeout),
            (Duration::from_secs(30), Duration::from_secs(30))
        );
        // Several load balancers: a list in via or in socket.
        let Lb::Haproxy(h) = lb(
            "[lb]\ndriver = \"haproxy\"\nsocket = \"/run/a.sock\"\nvia = [\"web1\", \"ops@lb2:2222\", \"root@[fd00::5]\"]\nbackend = \"app\"\nserver = \"{app}-{name}\"\nenable_timeout = \"1m\"",
        ) else {
            panic!()
        };
        let vias: Vec<String> = h.balancers.iter().map(|b| b.to_string()).collect();
        assert_eq!(
            vias,
            [
                "web1:/run/a.sock",
                "ops@lb2:2222:/run/a.sock",
                "root@[fd00::5]:/run/a.sock"
            ]
        );
        assert_eq!(
            h.balancers[1].via,
            Via::Ssh {
                spec: "ops@lb2:2222".into(),
                user: "ops".into(),
                address: "lb2".into(),
                port: Some(2222)
            }
        );
        assert!(
            matches!(&h.balancers[2].via, Via::Ssh { address, port: None, .. } if address == "fd00::5")
        );
        assert_eq!(h.enable_timeout, Duration::from_secs(60));
        let Lb::Haproxy(h) = lb(
            "[lb]\ndriver = \"haproxy\"\nsocket = [\"10.0.0.5:9999\", \"[fd00::6]:9999\"]\nbackend = \"app\"",
        ) else {
            panic!()
        };
        assert_eq!(
            h.balancers
                .iter()
                .map(|b| b.socket.clone())
                .collect::<Vec<_>>(),
            [
                AdminSocket::Tcp {
                    host: "10.0.0.5".into(),
                    port: 9999
                },
                AdminSocket::Tcp {
                    host: "fd00::6".into(),
                    port: 9999
                }
            ]
        );
        assert_eq!(
            Lb::Haproxy(h).ssh_hosts().len(),
            0,
            "local sockets need no extra connection"
        );
    }

    #[test]
    fn a_stage_may_pick_another_driver_and_ignore_the_shared_one() {
        let shared = "[lb]\ndriver = \"haproxy\"\nsocket = \"/a.sock\"\nbackend = \"app\"\n";
        let config = check(&format!(
            "{shared}[stages.production.lb]\ndriver = \"command\"\ndrain = \"d\"\nenable = \"e\"\n\
             [stages.staging]\nhosts = [{{ name = \"s1\" }}]\n[stages.staging.lb]\ndriver = \"none\"\n\
             [stages.qa]\nhosts = [{{ name = \"q1\" }}]\n"
        ))
        .unwrap();
        assert!(matches!(config.stages["production"].lb, Lb::Command(_)));
        assert!(matches!(config.stages["staging"].lb, Lb::None));
        assert!(matches!(config.stages["qa"].lb, Lb::Haproxy(_)));
        // Shared timeouts apply to stages without a load balancer harmlessly.
        assert!(matches!(lb("[lb]\ndrain_timeout = \"1m\""), Lb::None));
    }

    #[test]
    fn env_values_and_their_secrecy() {
        let config = check(
            "[env]\nA = \"plain\"\nB = { value = \"v\", secret = true }\nC = { from_env = \"HOME\" }\n\
             D = { from_file = \"key.txt\", secret = false }\n[stages.production.env]\nA = \"override\"\n",
        )
        .unwrap();
        let env = &config.stages["production"].env;
        let get = |n: &str| env.iter().find(|v| v.name == n).unwrap().clone();
        assert_eq!(
            (get("A").value, get("A").secret),
            (EnvValue::Literal("override".into()), false)
        );
        assert!(get("B").secret);
        assert_eq!(
            (get("C").value, get("C").secret),
            (EnvValue::FromEnv("HOME".into()), true)
        );
        assert_eq!(get("D").value, EnvValue::FromFile("/p/key.txt".into()));
        assert!(!get("D").secret);
        let missing = EnvVar {
            name: "X".into(),
            value: EnvValue::FromEnv("SHIPIT_TEST_SURELY_UNSET".into()),
            secret: true,
        };
        assert_eq!(
            missing.resolve().unwrap_err(),
            "env.X: from_env = \"SHIPIT_TEST_SURELY_UNSET\" is not set in shipit's environment; export it (in CI, from the job's secrets)"
        );
    }

    #[test]
    fn hooks_take_strings_or_tables_and_stages_replace_lists() {
        let config = check(
            "[hooks]\nbefore_deploy = [\"make check\"]\nafter_upload = [{ run = \"bin/migrate\", run_on = \"once\" }]\n\
             [stages.production.hooks]\nbefore_deploy = [\"echo prod\", \"echo two\"]\n",
        )
        .unwrap();
        let hooks = &config.stages["production"].hooks;
        assert_eq!(hooks.before_deploy.len(), 2);
        assert_eq!(hooks.before_deploy[0].run_on, RunOn::Local);
        assert_eq!(hooks.after_upload[0].run_on, RunOn::Once);
        assert!(hooks.after_switch.is_empty());
    }

    #[test]
    fn every_section_is_checked_even_after_an_error() {
        let err = error(
            "[stages.production.app]\nkeep_releases = 0\n[ssh]\nport = 0\n[rollout]\nrolling_batch_size = 0\n",
        );
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 3, "{err}");
    }

    #[test]
    fn missing_required_keys_are_all_reported() {
        let raw = parse(
            Path::new("d.toml"),
            "[stages.p]\nhosts = [{ name = \"a\" }]\n",
        )
        .unwrap();
        let err = validate(Path::new("d.toml"), raw).unwrap_err();
        let keys: Vec<&str> = err.0.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["app.name", "app.deploy_to", "app.source"]);
    }

    #[test]
    fn hostile_paths_are_accepted_verbatim() {
        let config =
            check("[stages.production.app]\ndeploy_to = \"/srv/my shop; $(rm -rf ~)/'x'\"")
                .unwrap();
        assert_eq!(
            config.stages["production"].app.deploy_to,
            "/srv/my shop; $(rm -rf ~)/'x'"
        );
    }

    #[test]
    fn unknown_stage_lists_the_known_ones() {
        let config = check("").unwrap();
        let err = config.stage("prod").unwrap_err().to_string();
        assert_eq!(
            err,
            "/p/deploy.toml: stages.prod: there is no stage `prod`; stages defined: production"
        );
    }

    #[test]
    fn batch_sizes() {
        assert_eq!(BatchSize::Count(2).hosts_per_batch(5), 2);
        assert_eq!(BatchSize::Count(9).hosts_per_batch(3), 3);
        assert_eq!(BatchSize::Percent(25).hosts_per_batch(4), 1);
        assert_eq!(BatchSize::Percent(25).hosts_per_batch(3), 1);
        assert_eq!(BatchSize::Percent(50).hosts_per_batch(5), 2);
        assert_eq!(BatchSize::Percent(100).hosts_per_batch(5), 5);
        assert_eq!(BatchSize::Count(1).hosts_per_batch(1), 1);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("30"), None);
        assert_eq!(parse_duration("-1s"), None);
        assert_eq!(parse_duration("soon"), None);
    }
}

#[cfg(test)]
mod example {
    /// deploy.toml.example documents every key; it must stay valid.
    #[test]
    fn the_example_file_is_valid() {
        let text = include_str!("../../deploy.toml.example");
        let config = super::super::from_str(std::path::Path::new("deploy.toml.example"), text)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.stages.len(), 2);
        assert_eq!(config.stages["production"].hosts[1].roles, ["web", "db"]);
        let staging = &config.stages["staging"];
        assert_eq!(
            staging.health.as_ref().unwrap().timeout,
            std::time::Duration::from_secs(120)
        );
        assert!(matches!(staging.lb, super::Lb::None));
        let super::Lb::Haproxy(lb) = &config.stages["production"].lb else {
            panic!("the example configures HAProxy")
        };
        assert_eq!(
            lb.balancers[0].to_string(),
            "deploy@lb1.example.com:/run/haproxy/admin.sock"
        );
    }
}
