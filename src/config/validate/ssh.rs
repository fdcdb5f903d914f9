//! `[ssh]`: how shipit reaches the hosts. Unset keys stay `None` so that
//! ssh_config, then the built-in default, decides.

use std::time::Duration;

use super::super::{HostKeyChecking, Ssh, SshConfigFile};
use super::{At, StageCheck, pick};

pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
pub const DEFAULT_MAX_CONCURRENT_CONNECTS: usize = 32;

impl StageCheck<'_> {
    pub(super) fn ssh(&mut self) -> Option<Ssh> {
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
            .positive_duration(pick!(self, ssh, connect_timeout))?
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
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;

    #[test]
    fn bad_values_and_their_messages() {
        assert_messages(&[
            (
                "[ssh]\nhost_key_checking = \"no\"",
                "/p/deploy.toml: ssh.host_key_checking: \"no\" is not allowed; use \"strict\" (default) or \"accept-new\" (records unknown keys; a changed key is always refused)",
            ),
            (
                "[ssh]\nport = 70000",
                "/p/deploy.toml: ssh.port: 70000 is not a port (1-65535)",
            ),
            (
                "[ssh]\nconnect_timeout = \"0s\"",
                "/p/deploy.toml: ssh.connect_timeout: must be longer than 0",
            ),
            (
                "[stages.production.ssh]\ncommand_timeout = \"0ms\"",
                "/p/deploy.toml: stages.production.ssh.command_timeout: must be longer than 0",
            ),
            (
                "[ssh]\nkeepalive_interval = \"0s\"",
                "/p/deploy.toml: ssh.keepalive_interval: must be longer than 0",
            ),
        ]);
    }
}
