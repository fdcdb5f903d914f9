//! `[lb]`: the load balancer driver, the keys every driver shares, and the
//! reader ([`LbSettings`]) through which each driver validates its own
//! keys in its own module (`crate::lb::haproxy`, `crate::lb::command`…).

use std::sync::Arc;
use std::time::Duration;

use super::super::{App, Host, OnTimeout, Ssh, Template, Var, Vars, Via};
use super::{At, StageCheck};
use crate::lb::{self, Driver, Shared};

pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_ENABLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A value from `[lb]` and the key path it came from.
#[derive(Debug, Clone)]
pub struct Setting<T> {
    pub value: T,
    pub key: String,
}

impl StageCheck<'_> {
    /// An `[lb]` key from the most specific layer that sets it.
    fn pick_lb(&self, key: &str) -> Option<At<toml::Value>> {
        self.layers.iter().find_map(|layer| {
            let value = layer.settings.lb.as_ref()?.get(key)?.clone();
            Some(At {
                value,
                key: format!("{}lb.{key}", layer.prefix),
            })
        })
    }

    /// Every `[lb]` key set in any layer, with its key path.
    fn lb_keys_set(&self) -> Vec<(String, String)> {
        self.layers
            .iter()
            .flat_map(|layer| {
                layer
                    .settings
                    .lb
                    .iter()
                    .flat_map(|t| t.0.keys())
                    .map(move |k| (k.clone(), format!("{}lb.{k}", layer.prefix)))
            })
            .collect()
    }

    /// `[lb]`: the driver, then its keys. Keys of another driver are an
    /// error, except those inherited from a less specific table (the shared
    /// `[lb]`) by one that picks a different driver for itself. `None`
    /// inside means no load balancer.
    pub(super) fn lb(
        &mut self,
        hosts: Option<&[Host]>,
        app: Option<&App>,
        ssh: Option<&Ssh>,
    ) -> Option<Option<Arc<dyn Driver>>> {
        let driver_at = self.pick_lb("driver");
        let names: Vec<&str> = lb::DRIVERS.iter().map(|d| d.name).collect();
        let explicit = match &driver_at {
            None => None,
            Some(At {
                value: toml::Value::String(name),
                ..
            }) if name == "none" => return Some(None),
            Some(at) => match at.value.as_str().and_then(lb::spec) {
                Some(spec) => Some(spec),
                None => {
                    let shown = match &at.value {
                        toml::Value::String(s) => format!("{s:?}"),
                        other => other.to_string(),
                    };
                    let list: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
                    return self.fail(
                        &at.key,
                        format!(
                            "{shown} is not allowed; use {} or \"none\" (no load balancer)",
                            list.join(", ")
                        ),
                    );
                }
            },
        };
        // Without a driver, lb.drain and lb.enable select the command driver.
        let implied = || {
            let commands = ["drain", "enable"];
            commands
                .iter()
                .any(|k| self.pick_lb(k).is_some())
                .then(|| lb::spec("command"))
                .flatten()
        };
        let spec = explicit.or_else(implied);
        let driver_depth = driver_at.as_ref().map(|a| self.depth(&a.key));
        let mut ok = true;
        for (name, key) in self.lb_keys_set() {
            let own = lb::SHARED_KEYS.contains(&name.as_str())
                || spec.is_some_and(|s| s.keys.contains(&name.as_str()));
            if own || driver_depth.is_some_and(|depth| self.depth(&key) > depth) {
                continue;
            }
            let owners: Vec<String> = lb::DRIVERS
                .iter()
                .filter(|d| d.keys.contains(&name.as_str()))
                .map(|d| format!("driver = \"{}\"", d.name))
                .collect();
            let owner = owners.join(" or ");
            let message = match (&driver_at, spec) {
                (Some(at), Some(spec)) => {
                    format!("only used by {owner}, but {} is \"{}\"", at.key, spec.name)
                }
                (None, Some(_)) => format!(
                    "only used by {owner}; without lb.driver, lb.drain and lb.enable select driver = \"command\""
                ),
                (_, None) => format!(
                    "only used by {owner}; set {} in [{}]",
                    owners.first().map_or("driver", String::as_str),
                    key.rsplit_once('.').map_or("lb", |(table, _)| table)
                ),
            };
            self.errors.add(&key, message);
            ok = false;
        }
        let shared = self.shared_lb();
        if !ok {
            return None;
        }
        let shared = shared?;
        let Some(spec) = spec else {
            return Some(None);
        };
        let mut settings = LbSettings {
            check: self,
            hosts,
            app,
            ssh,
        };
        (spec.parse)(&mut settings, shared).map(Some)
    }

    /// The keys every driver reads.
    fn shared_lb(&mut self) -> Option<Shared> {
        let drain_timeout = match self.pick_lb("drain_timeout") {
            None => Some(DEFAULT_DRAIN_TIMEOUT),
            Some(at) => self.lb_duration(at, true),
        };
        let drain_timeout_action = match self.pick_lb("drain_timeout_action") {
            None => Some(OnTimeout::Warn),
            Some(at) => match at.value.as_str() {
                Some("warn") => Some(OnTimeout::Warn),
                Some("fail") => Some(OnTimeout::Fail),
                _ => self.fail(
                    &at.key,
                    format!(
                        "{} is not allowed; use \"warn\" (default: say so and restart anyway) or \"fail\" (stop, and put the host back)",
                        shown(&at.value)
                    ),
                ),
            },
        };
        Some(Shared {
            drain_timeout: drain_timeout?,
            drain_timeout_action: drain_timeout_action?,
        })
    }

    fn lb_duration(&mut self, at: At<toml::Value>, positive: bool) -> Option<Duration> {
        let toml::Value::String(text) = at.value else {
            return self.fail(
                &at.key,
                format!(
                    "{} is not a duration; write a number and a unit, such as 500ms, 30s or 2m",
                    at.value
                ),
            );
        };
        let at = Some(At {
            value: text,
            key: at.key,
        });
        if positive {
            self.positive_duration(at).map(Option::unwrap_or_default)
        } else {
            self.duration(at).map(Option::unwrap_or_default)
        }
    }
}

/// What a driver reads its `[lb]` keys through: values from the most
/// specific table that sets them, named by their key path, and the checks
/// every section shares. Every method that returns `None` has recorded an
/// error naming the key.
pub struct LbSettings<'c, 'a> {
    check: &'c mut StageCheck<'a>,
    /// The stage's hosts, when they are valid.
    pub hosts: Option<&'c [Host]>,
    app: Option<&'c App>,
    ssh: Option<&'c Ssh>,
}

impl LbSettings<'_, '_> {
    pub fn stage(&self) -> &str {
        self.check.stage
    }

    /// `app.deploy_to`, when it is valid.
    pub fn deploy_to(&self) -> Option<&str> {
        self.app.map(|a| a.deploy_to.as_str())
    }

    /// The raw value of `key`, if a table sets it.
    pub fn get(&self, key: &str) -> Option<Setting<toml::Value>> {
        self.check.pick_lb(key).map(|at| Setting {
            value: at.value,
            key: at.key,
        })
    }

    /// Records an error about `key` (a key path from a [`Setting`]).
    pub fn fail<T>(&mut self, key: &str, message: impl Into<String>) -> Option<T> {
        self.check.fail(key, message)
    }

    /// Records that `lb.NAME` is required, saying where to set it.
    pub fn missing<T>(&mut self, name: &str, hint: &str) -> Option<T> {
        self.check.missing("lb", name, hint)
    }

    /// `key` as a string, if set.
    pub fn string(&mut self, key: &str) -> Option<Option<Setting<String>>> {
        match self.get(key) {
            None => Some(None),
            Some(Setting {
                value: toml::Value::String(value),
                key,
            }) => Some(Some(Setting { value, key })),
            Some(other) => self.fail(
                &other.key,
                format!("{} is not allowed; give a string", other.value),
            ),
        }
    }

    /// `key` as a template with placeholders, if set.
    pub fn template(&mut self, key: &str) -> Option<Option<Template>> {
        let at = self.string(key)?.map(|s| At {
            value: s.value,
            key: s.key,
        });
        self.check.template(at)
    }

    /// `key` as a duration longer than 0, or `default`.
    pub fn positive_duration(&mut self, key: &str, default: Duration) -> Option<Duration> {
        match self.check.pick_lb(key) {
            None => Some(default),
            Some(at) => self.check.lb_duration(at, true),
        }
    }

    /// A string, or a non-empty list of strings.
    pub fn one_or_many(&mut self, at: Setting<toml::Value>, what: &str) -> Option<Vec<String>> {
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

    /// `"local"`, an inventory host, or `user@host[:port]`: where a
    /// driver's commands run or its balancer is reached from.
    pub fn via(&mut self, key: &str, value: &str) -> Option<Via> {
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
        let hosts = self.hosts?;
        if hosts.iter().any(|h| h.name == value) {
            return Some(Via::Host {
                name: value.to_string(),
            });
        }
        let stage = self.stage().to_string();
        self.fail(
            key,
            format!(
                "{value:?} is not a host of stage `{stage}`; use \"local\", a host name from stages.{stage}.hosts, or user@host[:port] for another machine"
            ),
        )
    }

    /// `key` as a template naming each host in the balancer (default
    /// `default`), rendered here for every host so that a name the
    /// balancer cannot take (`valid` says why), or two hosts sharing one
    /// name, is an error before any run. `{release}` is refused: the name
    /// must stay the same from one release to the next.
    pub fn member_name(
        &mut self,
        key: &str,
        default: &str,
        valid: impl Fn(&str) -> Result<(), String>,
    ) -> Option<Template> {
        let at = match self.string(key)? {
            Some(s) => At {
                value: s.value,
                key: s.key,
            },
            None => At {
                value: default.to_string(),
                key: format!("lb.{key}"),
            },
        };
        let key = at.key.clone();
        let template = self.check.template(Some(at))??;
        if template.uses(Var::Release) {
            return self.fail(
                &key,
                "{release} is not allowed here: a host's server name must stay the same from one release to the next",
            );
        }
        let mut seen: std::collections::BTreeMap<String, String> = Default::default();
        for host in self.hosts.unwrap_or_default() {
            let name = template.render_plain(&self.vars(host));
            if let Err(why) = valid(&name) {
                return self.fail(
                    &key,
                    format!("renders to {name:?} for host {}; {why}", host.name),
                );
            }
            if let Some(other) = seen.insert(name.clone(), host.name.clone()) {
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

    /// Template values for `host` (its release not known yet).
    fn vars(&self, host: &Host) -> Vars {
        match (self.app, self.ssh) {
            (Some(app), Some(ssh)) => super::super::host_vars(self.stage(), app, ssh, host, ""),
            _ => Vars {
                name: host.name.clone(),
                address: host.address.clone(),
                ..Vars::default()
            },
        }
    }
}

/// `host:port` or `[v6]:port` → (host, port text); `None` without a port.
pub fn split_host_port(value: &str) -> Option<(&str, &str)> {
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

fn shown(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;

    fn driver(extra: &str) -> Option<&'static str> {
        check(extra).unwrap().stages["production"]
            .lb
            .as_ref()
            .map(|d| d.name())
    }

    /// Rules of `[lb]` itself, whatever the driver.
    #[test]
    fn bad_values_and_their_messages() {
        assert_messages(&[
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
        ]);
    }

    /// Messages that list every driver, or every key of every driver.
    #[test]
    fn unknown_drivers_and_keys_are_named_with_what_is_allowed() {
        let drivers: Vec<String> = crate::lb::DRIVERS
            .iter()
            .map(|d| format!("\"{}\"", d.name))
            .collect();
        assert_eq!(
            error("[lb]\ndriver = \"f5\""),
            format!(
                "/p/deploy.toml: lb.driver: \"f5\" is not allowed; use {} or \"none\" (no load balancer)",
                drivers.join(", ")
            )
        );
        let keys: Vec<String> = crate::lb::all_keys()
            .iter()
            .map(|k| format!("`{k}`"))
            .collect();
        assert!(keys.len() > 12, "every driver's keys: {keys:?}");
        assert_eq!(
            error("[lb]\ndriver = \"haproxy\"\nsockett = \"/a.sock\""),
            format!(
                "/p/deploy.toml:10: lb: unknown key `sockett`; allowed here: {}",
                keys.join(", ")
            )
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
        let name = |stage: &str| config.stages[stage].lb.as_ref().map(|d| d.name());
        assert_eq!(name("production"), Some("command"));
        assert_eq!(name("staging"), None);
        assert_eq!(name("qa"), Some("haproxy"));
        // Shared timeouts apply to stages without a load balancer harmlessly.
        assert_eq!(driver("[lb]\ndrain_timeout = \"1m\""), None);
        assert_eq!(driver(""), None);
        assert_eq!(
            driver("[lb]\ndrain = \"d {name}\"\nenable = \"e {name}\""),
            Some("command")
        );
    }
}
