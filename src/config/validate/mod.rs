//! From the raw file to typed stages: stage overrides applied, defaults
//! filled in, every value checked. Each error names the key the bad value
//! came from (`stages.production.health.timeout` when the stage set it,
//! `health.timeout` when it came from the shared section) and what is allowed.
//!
//! This file holds the entry point, the machinery every section uses
//! ([`StageCheck`], [`pick!`]) and the value checks they share (durations,
//! templates, paths, names, ports). Each table's own rules sit in a file
//! named after it: `app.rs` for `[app]`, `lb.rs` for `[lb]`, and so on.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::raw::{Overlay as _, RawFile, RawSettings};
use super::template::Template;
use super::{Config, ConfigError, ConfigErrors, Stage};

mod app;
mod env;
mod gates;
mod health;
mod hooks;
mod hosts;
pub mod lb;
mod roles;
mod rollout;
mod ssh;

/// The longest duration any key or option may give. Longer ones make no
/// sense for anything shipit waits for, and a deadline that far off
/// overflows the clock.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 60 * 60);

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
    for (role, table) in raw.roles.iter().flatten() {
        roles::refuse_run_wide(&mut errors, &format!("roles.{role}."), table);
    }
    let mut all_roles = BTreeSet::new();

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
                let own = raw_stage.settings();
                let layers = vec![
                    Layer {
                        prefix: format!("stages.{name}."),
                        settings: &own,
                    },
                    Layer {
                        prefix: String::new(),
                        settings: &global,
                    },
                ];
                let mut stage = StageCheck::new(name, &base, layers, &mut errors);
                stage.stage_name();
                // Every section is checked, so one run reports every problem.
                let hosts = stage.hosts(raw_stage.hosts.as_deref());
                let app = stage.app();
                let ssh = stage.ssh();
                let rollout = stage.rollout(hosts.as_deref(), hosts.as_deref());
                let health = stage.health();
                let lb = stage.lb(hosts.as_deref(), hosts.as_deref(), app.as_ref(), ssh.as_ref());
                let env = stage.env();
                let hooks = stage.hooks();
                let gates = stage.gates(lb.as_ref(), rollout.as_ref());
                let apart = match (&hosts, &app, &ssh) {
                    (Some(hosts), Some(app), Some(ssh)) => stage.hosts_apart(hosts, app, ssh),
                    _ => true,
                };
                if let Some(hosts) = &hosts {
                    all_roles.extend(hosts.iter().flat_map(|h| h.roles.iter().cloned()));
                }
                if let (true, Some(app), Some(ssh), Some(rollout), Some(health), Some(lb), Some(env), Some(hooks), Some(gates), Some(hosts)) =
                    (apart, app, ssh, rollout, health, lb, env, hooks, gates, hosts)
                {
                    let mut built = Stage {
                        name: name.clone(),
                        app,
                        ssh,
                        rollout,
                        health,
                        lb,
                        env,
                        hooks,
                        gates,
                        hosts,
                        roles: BTreeMap::new(),
                    };
                    let tables = roles::RoleTables {
                        file: raw.roles.as_ref(),
                        stage: raw_stage.roles.as_ref(),
                    };
                    if let Some(own) =
                        roles::role_stages(&built, &tables, &own, &global, &base, &mut errors)
                    {
                        built.roles = own;
                        stages.insert(name.clone(), built);
                    }
                }
            }
        }
    }

    if raw.stages.as_ref().is_some_and(|s| !s.is_empty()) {
        roles::unknown_roles(raw.roles.as_ref(), &all_roles, &mut errors);
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

/// Every problem found so far in one file.
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

/// One table of settings that applies to what is being checked, and the
/// prefix of the keys it sets: `""` for the shared sections,
/// `"stages.production."` for a stage's own.
struct Layer<'a> {
    prefix: String,
    settings: &'a RawSettings,
}

/// The checks of one stage: its layers of settings, most specific first
/// (the stage's own tables, then the shared ones). A value is taken from
/// the first layer that sets it, and named by that layer's key.
///
/// The section checks (`app`, `ssh`, `rollout`, `health`, `lb`, `env`,
/// `hooks`) read only the layers, so the same checks serve any stack of
/// tables that overrides sections key by key, such as per-role tables
/// placed in front of a stage's.
struct StageCheck<'a> {
    stage: &'a str,
    base: &'a Path,
    layers: Vec<Layer<'a>>,
    /// All layers overlaid, for rules about a section as a whole.
    merged: RawSettings,
    errors: &'a mut Errors,
}

/// `pick!(self, health, timeout)`: the value of the most specific layer
/// that sets it (the stage's, else the shared one), with the key path of
/// whichever was used.
macro_rules! pick {
    ($self:ident, $section:ident, $field:ident) => {
        $self.pick(stringify!($section), stringify!($field), |settings| {
            settings
                .$section
                .as_ref()
                .and_then(|table| table.$field.clone())
        })
    };
}
use pick;

impl<'a> StageCheck<'a> {
    /// `layers`: most specific first.
    fn new(stage: &'a str, base: &'a Path, layers: Vec<Layer<'a>>, errors: &'a mut Errors) -> Self {
        let merged = layers
            .iter()
            .rev()
            .fold(RawSettings::default(), |merged, layer| {
                merged.overlay(layer.settings.clone())
            });
        StageCheck {
            stage,
            base,
            layers,
            merged,
            errors,
        }
    }

    /// What [`pick!`] expands to.
    fn pick<T>(
        &self,
        section: &str,
        field: &str,
        get: impl Fn(&RawSettings) -> Option<T>,
    ) -> Option<At<T>> {
        self.layers.iter().find_map(|layer| {
            get(layer.settings).map(|value| At {
                value,
                key: format!("{}{section}.{field}", layer.prefix),
            })
        })
    }

    /// The layer a key from [`pick!`] came from: 0 for the most specific.
    /// (A more specific layer's prefix always extends a less specific
    /// one's, or is unrelated to it, so the first match is the layer.)
    fn depth(&self, key: &str) -> usize {
        self.layers
            .iter()
            .position(|layer| key.starts_with(&layer.prefix))
            .unwrap_or(self.layers.len())
    }

    fn fail<T>(&mut self, key: &str, message: impl Into<String>) -> Option<T> {
        self.errors.add(key, message);
        None
    }

    /// Where to set a required key, for "missing" messages.
    fn missing<T>(&mut self, section: &str, field: &str, hint: &str) -> Option<T> {
        let key = format!("{section}.{field}");
        let mut tables: Vec<String> = self
            .layers
            .iter()
            .rev()
            .map(|layer| format!("[{}{section}]", layer.prefix))
            .collect();
        let last = tables.pop().unwrap_or_default();
        let tables = if tables.is_empty() {
            last
        } else {
            format!("{} or {last}", tables.join(", "))
        };
        self.fail(
            &key,
            format!("missing (stage `{}`); set it in {tables}{hint}", self.stage),
        )
    }

    /// The stage's own name: it names locks and commands.
    fn stage_name(&mut self) {
        let name = self.stage;
        if !is_name(name) {
            self.errors.add(
                &format!("stages.{name}"),
                "a stage name may contain only letters, digits, `-` and `_`",
            );
        } else if RESERVED_STAGE_NAMES.contains(&name) {
            self.errors.add(
                &format!("stages.{name}"),
                format!(
                    "`{name}` is a shipit command (`shipit {name}`), so it cannot name a stage; \
                     reserved: {}",
                    RESERVED_STAGE_NAMES.join(", ")
                ),
            );
        }
    }

    // ---- value checks shared by the sections ----

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
            Some(d) if d > MAX_DURATION => self.fail(
                &at.key,
                format!(
                    "{:?} is too long; shipit's durations are at most {} days",
                    at.value,
                    MAX_DURATION.as_secs() / 86_400
                ),
            ),
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

/// What the section tests share: a small valid file to add to, and the
/// message the user would see.
#[cfg(test)]
mod testing {
    use std::path::Path;

    use super::super::Config;
    use super::super::load::parse;

    pub const BASE: &str = r#"
[app]
name = "shop"
deploy_to = "/srv/shop"
source = "dist/"

[stages.production]
hosts = [ { name = "web1", address = "10.0.0.11" }, { name = "web2", address = "10.0.0.12", port = 2222 } ]
"#;

    /// BASE plus `extra`, validated as /p/deploy.toml.
    pub fn check(extra: &str) -> Result<Config, String> {
        let text = format!("{BASE}\n{extra}");
        let raw = parse(Path::new("/p/deploy.toml"), &text).map_err(|e| e.to_string())?;
        super::validate(Path::new("/p/deploy.toml"), raw).map_err(|e| e.to_string())
    }

    pub fn error(extra: &str) -> String {
        match check(extra) {
            Ok(_) => panic!("expected an error for:\n{extra}"),
            Err(e) => e,
        }
    }

    /// Bad input and the exact message the user sees.
    pub fn assert_messages(cases: &[(&str, &str)]) {
        for (extra, expected) in cases {
            assert_eq!(&error(extra), expected, "for:\n{extra}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::load::parse;
    use super::super::{BatchSize, OnFailure, Source};
    use super::rollout::DEFAULT_LOCK_LEASE;
    use super::testing::*;
    use super::*;

    #[test]
    fn minimal_file_gets_defaults() {
        let config = check("").unwrap();
        let stage = &config.stages["production"];
        assert_eq!(stage.app.keep_releases, 5);
        assert_eq!(stage.app.source, Source::Directory("/p/dist/".into()));
        assert_eq!(stage.rollout.ramp, [BatchSize::Count(1)]);
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
        let super::super::HealthKind::Http { url, .. } = &health.check else {
            panic!("an HTTP check")
        };
        assert_eq!(url.source(), "http://{address}:8080/health");
        assert_eq!(health.interval, Duration::from_millis(500));
        assert_eq!(stage.rollout.ramp, [BatchSize::Percent(50)]);
    }

    /// Bad input and the exact message the user sees.
    #[test]
    fn bad_values_and_their_messages() {
        assert_messages(&[(
            "[stages.init]\nhosts = [ { name = \"a\" } ]",
            "/p/deploy.toml: stages.init: `init` is a shipit command (`shipit init`), so it cannot name a stage; reserved: init, completions, man, help",
        )]);
    }

    /// A duration so long that adding it to a clock overflows (a panic
    /// mid-run) is refused with the others.
    #[test]
    fn durations_have_a_ceiling() {
        assert_messages(&[
            (
                "[health]\nurl = \"http://{address}/\"\ntimeout = \"500000000000y\"",
                "/p/deploy.toml: health.timeout: \"500000000000y\" is too long; shipit's durations are at most 365 days",
            ),
            (
                "[ssh]\nconnect_timeout = \"366d\"",
                "/p/deploy.toml: ssh.connect_timeout: \"366d\" is too long; shipit's durations are at most 365 days",
            ),
        ]);
        assert!(check("[ssh]\ncommand_timeout = \"365d\"").is_ok());
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
    fn unknown_stage_lists_the_known_ones() {
        let config = check("").unwrap();
        let err = config.stage("prod").unwrap_err().to_string();
        assert_eq!(
            err,
            "/p/deploy.toml: stages.prod: there is no stage `prod`; stages defined: production"
        );
    }

    /// The section checks read only the layers: a stack with a third,
    /// more specific table (as per-role tables will be) names its keys.
    #[test]
    fn a_more_specific_layer_wins_and_names_its_keys() {
        let text =
            format!("{BASE}\n[stages.production.app]\nrestart = \"stage\"\n[ssh]\nport = 2222\n");
        let raw = parse(Path::new("/p/deploy.toml"), &text).unwrap();
        let global = raw.settings();
        let stage = raw.stages.as_ref().unwrap()["production"].settings();
        let role = RawSettings {
            app: Some(super::super::raw::RawApp {
                restart: Some("restart {nope}".into()),
                ..Default::default()
            }),
            health: Some(Default::default()),
            ..Default::default()
        };
        let layer = |prefix: &str, settings| Layer {
            prefix: prefix.to_string(),
            settings,
        };
        let mut errors = Errors {
            file: "/p/deploy.toml".into(),
            list: Vec::new(),
        };
        let mut check = StageCheck::new(
            "production",
            Path::new("/p"),
            vec![
                layer("roles.worker.", &role),
                layer("stages.production.", &stage),
                layer("", &global),
            ],
            &mut errors,
        );
        assert_eq!(
            check.ssh().unwrap().port,
            Some(2222),
            "from the shared [ssh]"
        );
        assert!(check.app().is_none());
        assert!(check.health().is_none());
        let said: Vec<String> = errors
            .list
            .iter()
            .map(|e| format!("{}: {}", e.key, e.message))
            .collect();
        assert_eq!(said.len(), 2, "{said:?}");
        assert!(
            said[0].starts_with("roles.worker.app.restart: unknown placeholder {nope}"),
            "{}",
            said[0]
        );
        assert_eq!(
            said[1],
            "health.url: missing (stage `production`); set it in [health], [stages.production.health] \
             or [roles.worker.health], e.g. url = \"http://{address}:8080/health\""
        );
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
        let text = include_str!("../../../deploy.toml.example");
        let config = super::super::from_str(std::path::Path::new("deploy.toml.example"), text)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.stages.len(), 2);
        assert_eq!(config.stages["production"].hosts[1].roles, ["web", "db"]);
        let worker = &config.stages["production"].roles["worker"];
        assert!(worker.lb.is_none(), "the worker role has no load balancer");
        assert!(
            config.stages["staging"].roles.is_empty(),
            "staging has no worker"
        );
        let staging = &config.stages["staging"];
        assert_eq!(
            staging.health.as_ref().unwrap().timeout,
            std::time::Duration::from_secs(120)
        );
        assert!(staging.lb.is_none());
        let lb = config.stages["production"].lb.as_ref().expect("HAProxy");
        assert_eq!(lb.name(), "haproxy");
        assert_eq!(
            lb.settings()["balancers"][0]["via"]["spec"],
            "deploy@lb1.example.com"
        );
        assert_eq!(config.stages["production"].gates.len(), 1);
        assert!(staging.gates.is_empty());
    }

    /// The gates shown commented out are valid too.
    #[test]
    fn the_example_gates_are_valid() {
        let text = include_str!("../../../deploy.toml.example");
        let start = text.find("\n[[gates]]").expect("gates in the example");
        let end = text.find("[stages.production]").expect("stages");
        let gates: String = text[start..end]
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest)
                    if rest == "[[gates]]"
                        || rest.split_once(" = ").is_some_and(|(key, _)| {
                            key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                        }) =>
                {
                    rest
                }
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let text = format!("{}{gates}\n{}", &text[..start], &text[end..]);
        let config = super::super::from_str(std::path::Path::new("deploy.toml.example"), &text)
            .unwrap_or_else(|e| panic!("{e}\n{gates}"));
        let kinds: Vec<&str> = config.stages["production"]
            .gates
            .iter()
            .map(|g| g.check.kind())
            .collect();
        assert_eq!(kinds, ["haproxy", "prometheus", "command"]);
    }
}
