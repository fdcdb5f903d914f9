//! `[lb]`: the load balancer driver, then its keys. The rules every driver
//! shares come first; each driver's own rules sit in a part of their own
//! below (`driver = "command"`, `driver = "haproxy"`), so that they can
//! move next to the driver itself.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::super::{
    AdminSocket, App, Balancer, CommandLb, HaproxyLb, Host, Lb, OnTimeout, Ssh, Template, Var, Via,
};
use super::{At, StageCheck, pick};
use crate::lb::haproxy;

pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_ENABLE_TIMEOUT: Duration = Duration::from_secs(30);

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

/// The keys every driver reads, checked before the driver's own.
struct Shared {
    drain_timeout: Duration,
    drain_timeout_action: OnTimeout,
}

impl StageCheck<'_> {
    /// `[lb]`: the driver, then its keys. Keys of another driver are an
    /// error, except those inherited from a less specific table (the shared
    /// `[lb]`) by one that picks a different driver for itself.
    pub(super) fn lb(
        &mut self,
        hosts: Option<&[Host]>,
        app: Option<&App>,
        ssh: Option<&Ssh>,
    ) -> Option<Lb> {
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
        let command_keys = self.command_keys();
        let haproxy_keys = self.haproxy_keys();
        let drain_or_enable = pick!(self, lb, drain).is_some() || pick!(self, lb, enable).is_some();
        let driver = explicit.unwrap_or(if drain_or_enable {
            Driver::Command
        } else {
            Driver::None
        });
        let driver_depth = driver_at.as_ref().map(|a| self.depth(&a.key));
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
            if driver_depth.is_some_and(|depth| self.depth(&key) > depth) {
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
        let shared = Shared {
            drain_timeout: drain_timeout?,
            drain_timeout_action: drain_timeout_action?,
        };
        if !ok {
            return None;
        }
        match driver {
            Driver::None => Some(Lb::None),
            Driver::Command => self.command_lb(shared, hosts).map(Lb::Command),
            Driver::Haproxy => self.haproxy_lb(shared, hosts, app, ssh).map(Lb::Haproxy),
        }
    }

    /// `"local"`, an inventory host, or `user@host[:port]`: where a
    /// driver's commands run or its sockets are reached from.
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

// ---- driver = "command": the user's own drain and enable commands ----

impl StageCheck<'_> {
    /// The keys only this driver reads, where they are set.
    fn command_keys(&self) -> Vec<String> {
        [
            pick!(self, lb, drain).map(|a| a.key),
            pick!(self, lb, enable).map(|a| a.key),
            pick!(self, lb, run_on).map(|a| a.key),
            pick!(self, lb, wait_drained).map(|a| a.key),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    fn command_lb(&mut self, shared: Shared, hosts: Option<&[Host]>) -> Option<CommandLb> {
        let drain = self.template(pick!(self, lb, drain));
        let enable = self.template(pick!(self, lb, enable));
        let run_on = match pick!(self, lb, run_on) {
            None => Some(Via::Local),
            Some(at) => self.via(&at.key, &at.value, hosts),
        };
        let wait_drained = self.template(pick!(self, lb, wait_drained));
        let (drain, enable, run_on, wait_drained) = (drain?, enable?, run_on?, wait_drained?);
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
        Some(CommandLb {
            drain,
            enable,
            run_on,
            wait_drained,
            drain_timeout: shared.drain_timeout,
            drain_timeout_action: shared.drain_timeout_action,
        })
    }
}

// ---- driver = "haproxy": HAProxy's runtime API, spoken by shipit ----

impl StageCheck<'_> {
    /// The keys only this driver reads, where they are set.
    fn haproxy_keys(&self) -> Vec<String> {
        [
            pick!(self, lb, socket).map(|a| a.key),
            pick!(self, lb, via).map(|a| a.key),
            pick!(self, lb, backend).map(|a| a.key),
            pick!(self, lb, server).map(|a| a.key),
            pick!(self, lb, enable_timeout).map(|a| a.key),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    fn haproxy_lb(
        &mut self,
        shared: Shared,
        hosts: Option<&[Host]>,
        app: Option<&App>,
        ssh: Option<&Ssh>,
    ) -> Option<HaproxyLb> {
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
        Some(HaproxyLb {
            balancers: balancers?,
            backend: backend?,
            server: server?,
            drain_timeout: shared.drain_timeout,
            drain_timeout_action: shared.drain_timeout_action,
            enable_timeout: enable_timeout?,
        })
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
            let vars = super::super::host_vars(self.stage, app, ssh, host, "");
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
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::super::{AdminSocket, Balancer, Lb, OnTimeout, Via};
    use super::super::testing::*;

    fn lb(extra: &str) -> Lb {
        check(extra).unwrap().stages["production"].lb.clone()
    }

    /// Rules of `[lb]` itself, whatever the driver.
    #[test]
    fn bad_values_and_their_messages() {
        assert_messages(&[
            (
                "[lb]\ndriver = \"f5\"",
                "/p/deploy.toml: lb.driver: \"f5\" is not allowed; use \"haproxy\", \"command\" or \"none\" (no load balancer)",
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

    #[test]
    fn bad_command_values_and_their_messages() {
        assert_messages(&[
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
        ]);
    }

    #[test]
    fn bad_haproxy_values_and_their_messages() {
        assert_messages(&[
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
        ]);
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
}
