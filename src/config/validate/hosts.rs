//! `stages.NAME.hosts`: the inventory of one stage.

use std::collections::{BTreeMap, BTreeSet};

use super::super::raw::RawHost;
use super::super::{App, Host, Ssh, SshConfigFile};
use super::{At, StageCheck, is_name};

impl StageCheck<'_> {
    pub(super) fn hosts(&mut self, raw: Option<&[RawHost]>) -> Option<Vec<Host>> {
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
            let zone = h.zone.clone();
            if let Some(bad) = zone.as_ref().filter(|z| !is_name(z)) {
                self.errors.add(
                    &key("zone"),
                    format!("{bad:?}: a zone may contain only letters, digits, `.`, `-` and `_`"),
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
                zone,
            });
        }
        ok.then_some(hosts)
    }

    /// No two hosts of the stage may be one machine and directory: their
    /// pipelines would unpack into the same release directory at once.
    /// A port left to ssh_config is only known to equal another unset one.
    pub(super) fn hosts_apart(&mut self, hosts: &[Host], app: &App, ssh: &Ssh) -> bool {
        let default_port = match ssh.config {
            SshConfigFile::Disabled => Some(22),
            _ => None,
        };
        let mut seen: BTreeMap<(String, Option<u16>, &str), &str> = BTreeMap::new();
        let mut ok = true;
        for (i, host) in hosts.iter().enumerate() {
            let address = host
                .address
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_ascii_lowercase();
            let port = host.port.or(ssh.port).or(default_port);
            let deploy_to = app.deploy_to.as_str();
            if let Some(other) = seen.insert((address.clone(), port, deploy_to), &host.name) {
                self.errors.add(
                    &format!("stages.{}.hosts[{i}]", self.stage),
                    format!(
                        "{} and {other} are the same machine and directory ({address} port {}, {deploy_to}): \
                         both would unpack into the same release directory at once; list the machine once \
                         (a host may have several roles)",
                        host.name,
                        port.unwrap_or(22),
                    ),
                );
                ok = false;
            }
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;

    #[test]
    fn bad_values_and_their_messages() {
        assert_messages(&[
            (
                "[stages.staging]\nhosts = []",
                "/p/deploy.toml: stages.staging.hosts: is empty; list at least one host",
            ),
            (
                "[stages.staging]\nhosts = [ { name = \"a\" }, { name = \"a\" } ]",
                "/p/deploy.toml: stages.staging.hosts[1].name: \"a\" is listed twice in this stage; host names must be unique",
            ),
            (
                "[stages.staging]\nhosts = [ { name = \"a\", address = \"10.0.0.5\" }, { name = \"b\", address = \"10.0.0.5\", user = \"ops\" } ]",
                "/p/deploy.toml: stages.staging.hosts[1]: b and a are the same machine and directory (10.0.0.5 port 22, /srv/shop): \
                 both would unpack into the same release directory at once; list the machine once (a host may have several roles)",
            ),
            (
                "[ssh]\nport = 2222\n[stages.staging]\nhosts = [ { name = \"a\", address = \"Box.example\" }, { name = \"b\", address = \"box.example\", port = 2222 } ]",
                "/p/deploy.toml: stages.staging.hosts[1]: b and a are the same machine and directory (box.example port 2222, /srv/shop): \
                 both would unpack into the same release directory at once; list the machine once (a host may have several roles)",
            ),
        ]);
    }

    /// One address may hold several hosts when something tells them apart.
    #[test]
    fn one_address_with_other_ports() {
        // Ports forwarded by one gateway to different machines.
        check(
            "[stages.staging]\nhosts = [ { name = \"a\", address = \"gw\", port = 2201 }, { name = \"b\", address = \"gw\", port = 2202 } ]",
        )
        .unwrap();
        // No port in deploy.toml: ssh_config may give each its own. With
        // ssh_config ignored, an unset port is 22.
        check(
            "[stages.staging]\nhosts = [ { name = \"a\", address = \"gw\" }, { name = \"b\", address = \"gw\", port = 22 } ]",
        )
        .unwrap();
        let err = error(
            "[ssh]\nconfig = false\n[stages.staging]\nhosts = [ { name = \"a\", address = \"gw\" }, { name = \"b\", address = \"gw\", port = 22 } ]",
        );
        assert!(err.contains("b and a are the same machine"), "{err}");
    }
}
