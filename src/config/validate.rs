//! From the raw file to typed stages: stage overrides applied, defaults
//! filled in, every value checked. Each error names the key the bad value
//! came from (`stages.production.health.timeout` when the stage set it,
//! `health.timeout` when it came from the shared section) and what is allowed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::raw::{Overlay as _, RawFile, RawHost, RawSettings};
use super::template::Template;
use super::{
    App, BatchSize, Config, ConfigError, ConfigErrors, Health, Host, HostKeyChecking, Lb,
    OnFailure, Rollout, Source, Ssh, SshConfigFile, Stage,
};

pub const DEFAULT_KEEP_RELEASES: usize = 5;
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
pub const DEFAULT_LOCK_LEASE: Duration = Duration::from_secs(60);
pub const DEFAULT_MAX_CONCURRENT_CONNECTS: usize = 32;
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_millis(500);
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
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
                let hosts = stage.hosts(raw_stage.hosts.as_deref());
                let built = (|| {
                    Some(Stage {
                        name: name.clone(),
                        app: stage.app()?,
                        ssh: stage.ssh()?,
                        rollout: stage.rollout()?,
                        health: stage.health()?,
                        lb: stage.lb()?,
                        hosts: hosts?,
                    })
                })();
                if let Some(built) = built {
                    stages.insert(name.clone(), built);
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

    fn lb(&mut self) -> Option<Lb> {
        let drain = self.template(pick!(self, lb, drain))?;
        let enable = self.template(pick!(self, lb, enable))?;
        match (&drain, &enable) {
            (Some(_), None) => self.fail(
                "lb.enable",
                "missing: with lb.drain set, shipit must also know how to put a host back",
            ),
            (None, Some(_)) => self.fail(
                "lb.drain",
                "missing: with lb.enable set, shipit must also know how to take a host out",
            ),
            _ => Some(Lb { drain, enable }),
        }
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
                "[ssh]\nport = 70000",
                "/p/deploy.toml: ssh.port: 70000 is not a port (1-65535)",
            ),
            (
                "[lb]\ndrain = \"echo drain {name}\"",
                "/p/deploy.toml: lb.enable: missing: with lb.drain set, shipit must also know how to put a host back",
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
    }
}
