//! `[rollout]`: how many hosts change at once (a size or a ramp), how long
//! each batch is watched, how many hosts may be out of service at once,
//! zone order, what a failure does, and the deploy lock's lease.

use std::time::Duration;

use super::super::{BatchSize, Host, OnFailure, Rollout};
use super::{At, StageCheck, pick};
use crate::host::lock;

pub const DEFAULT_LOCK_LEASE: Duration = Duration::from_secs(60);

impl StageCheck<'_> {
    /// `hosts`, when they are valid, are checked against `by_zone`;
    /// `role_order` names roles of `stage_hosts` (the stage's hosts, of
    /// which a role's settings cover some).
    pub(super) fn rollout(
        &mut self,
        hosts: Option<&[Host]>,
        stage_hosts: Option<&[Host]>,
    ) -> Option<Rollout> {
        let ramp = match pick!(self, rollout, rolling_batch_size) {
            None => Some(vec![BatchSize::Count(1)]),
            Some(at) => self.ramp(at),
        };
        let bake = match pick!(self, rollout, bake) {
            None => Some(Vec::new()),
            Some(at) => self.bake(at),
        };
        let max_unavailable = match pick!(self, rollout, max_unavailable) {
            None => Some(None),
            Some(at) => self.max_unavailable(at).map(Some),
        };
        let by_zone = match pick!(self, rollout, by_zone) {
            Some(at) if at.value => self.zones(&at.key, hosts),
            _ => Some(false),
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
        let lock_lease = self.lock_lease();
        let role_order = match pick!(self, rollout, role_order) {
            None => Some(Vec::new()),
            Some(at) => self.role_order(at, stage_hosts),
        };
        Some(Rollout {
            ramp: ramp?,
            bake: bake?,
            max_unavailable: max_unavailable?,
            by_zone: by_zone?,
            on_failure: on_failure?,
            max_fail_percentage: max_fail_percentage?,
            lock_lease: lock_lease?,
            role_order: role_order?,
        })
    }

    /// `role_order`: roles of the stage's hosts, each once.
    fn role_order(&mut self, at: At<Vec<String>>, hosts: Option<&[Host]>) -> Option<Vec<String>> {
        let hosts = hosts?;
        let mut known: Vec<&str> = hosts
            .iter()
            .flat_map(|h| h.roles.iter().map(String::as_str))
            .collect();
        known.sort_unstable();
        known.dedup();
        if at.value.is_empty() {
            return self.fail(
                &at.key,
                "an empty list orders nothing; name roles, e.g. [\"web\", \"worker\"], or remove the key",
            );
        }
        for (i, role) in at.value.iter().enumerate() {
            if at.value[..i].contains(role) {
                return self.fail(&at.key, format!("{role:?} is listed twice"));
            }
            if !known.contains(&role.as_str()) {
                let stage = self.stage;
                return self.fail(
                    &at.key,
                    format!(
                        "no host of stage {stage} has role {role:?}; roles in stage {stage}: {}",
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                );
            }
        }
        Some(at.value)
    }

    /// `rolling_batch_size`: a number of hosts, a percentage, or a ramp:
    /// a list of those, each sizing the next batch, the last repeating.
    fn ramp(&mut self, at: At<toml::Value>) -> Option<Vec<BatchSize>> {
        let toml::Value::Array(list) = &at.value else {
            return self.batch_size(&at.key, &at.value).map(|b| vec![b]);
        };
        if list.is_empty() {
            return self.fail(
                &at.key,
                "an empty ramp sizes no batch; give at least one size, e.g. [1, 2, \"50%\"]",
            );
        }
        let mut ramp = Some(Vec::new());
        for (i, entry) in list.iter().enumerate() {
            let size = self.batch_size(&format!("{}[{i}]", at.key), entry);
            ramp = ramp.zip(size).map(|(mut r, s)| {
                r.push(s);
                r
            });
        }
        ramp
    }

    fn batch_size(&mut self, key: &str, value: &toml::Value) -> Option<BatchSize> {
        const ALLOWED: &str = "use a number of hosts (at least 1) or a percentage such as \"25%\"";
        match share(value) {
            Some(size) => Some(size),
            None => match value {
                toml::Value::String(s) => {
                    self.fail(key, format!("{s:?} is not allowed; {ALLOWED}"))
                }
                other => self.fail(key, format!("{other} is not allowed; {ALLOWED}")),
            },
        }
    }

    /// `bake`: a duration, or a list of them (the last repeats).
    fn bake(&mut self, at: At<toml::Value>) -> Option<Vec<Duration>> {
        const ALLOWED: &str =
            "use a duration such as \"30s\" or \"5m\", or a list of them such as [\"5m\", \"30s\"]";
        let list: Vec<(String, &toml::Value)> = match &at.value {
            toml::Value::Array(list) if list.is_empty() => {
                return self.fail(
                    &at.key,
                    format!("an empty list bakes nothing; {ALLOWED}, or remove the key"),
                );
            }
            toml::Value::Array(list) => list
                .iter()
                .enumerate()
                .map(|(i, v)| (format!("{}[{i}]", at.key), v))
                .collect(),
            single => vec![(at.key.clone(), single)],
        };
        let mut bakes = Some(Vec::new());
        for (key, value) in list {
            let bake = match value {
                toml::Value::String(text) => self.duration(Some(At {
                    value: text.clone(),
                    key,
                }))?,
                other => self.fail(&key, format!("{other} is not allowed; {ALLOWED}")),
            };
            bakes = bakes.zip(bake).map(|(mut b, d)| {
                b.push(d);
                b
            });
        }
        bakes
    }

    /// `max_unavailable`: a number of hosts (at least 1) or a share.
    fn max_unavailable(&mut self, at: At<toml::Value>) -> Option<BatchSize> {
        if let Some(limit) = share(&at.value) {
            return Some(limit);
        }
        let zero = match &at.value {
            toml::Value::Integer(0) => true,
            toml::Value::String(s) => s.trim().trim_end_matches('%').trim() == "0",
            _ => false,
        };
        let shown = match &at.value {
            toml::Value::String(s) => format!("{s:?}"),
            other => other.to_string(),
        };
        if zero {
            self.fail(
                &at.key,
                format!(
                    "{shown} would let no host out of service, so no host could ever be restarted; use at least 1, \
                     or a percentage such as \"25%\""
                ),
            )
        } else {
            self.fail(
                &at.key,
                format!(
                    "{shown} is not allowed; use a number of hosts (at least 1) or a percentage such as \"25%\""
                ),
            )
        }
    }

    /// `by_zone = true` needs every host of the stage in a zone.
    fn zones(&mut self, key: &str, hosts: Option<&[Host]>) -> Option<bool> {
        let hosts = hosts?;
        let without: Vec<&str> = hosts
            .iter()
            .filter(|h| h.zone.is_none())
            .map(|h| h.name.as_str())
            .collect();
        if without.is_empty() {
            return Some(true);
        }
        self.fail(
            key,
            format!(
                "is true, but {} of stage {} {} no zone; give every host one, e.g. {{ name = \"{}\", address = \"...\", zone = \"eu-1a\" }}",
                without.join(", "),
                self.stage,
                if without.len() == 1 { "has" } else { "have" },
                without[0]
            ),
        )
    }

    /// `lock_lease`: how long a lock stays valid without a heartbeat. It
    /// must outlast what the heartbeat itself may take (`host::lock`).
    fn lock_lease(&mut self) -> Option<Duration> {
        let at = pick!(self, rollout, lock_lease);
        let key = at.as_ref().map(|a| a.key.clone()).unwrap_or_default();
        match self.positive_duration(at)?.unwrap_or(DEFAULT_LOCK_LEASE) {
            d if d < lock::MIN_LEASE => self.fail(
                &key,
                format!(
                    "{} is too short; use at least {}: the lock is refreshed every quarter of its lease, \
                     and a round of refreshes may take {} when a host is slow to answer, so a shorter lease \
                     makes a live run's lock look stale",
                    humantime::format_duration(d),
                    humantime::format_duration(lock::MIN_LEASE),
                    humantime::format_duration(lock::COMMAND_TIMEOUT),
                ),
            ),
            d => Some(d),
        }
    }
}

/// A number of hosts (at least 1) or a percentage from 1% to 100%.
fn share(value: &toml::Value) -> Option<BatchSize> {
    match value {
        toml::Value::Integer(n) if *n >= 1 => Some(BatchSize::Count(*n as usize)),
        toml::Value::String(s) => {
            match s.trim().strip_suffix('%').map(|p| p.trim().parse::<u8>()) {
                Some(Ok(p)) if (1..=100).contains(&p) => Some(BatchSize::Percent(p)),
                _ => None,
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::BatchSize;
    use super::super::testing::*;

    #[test]
    fn bad_values_and_their_messages() {
        assert_messages(&[
            (
                "[rollout]\nrolling_batch_size = 0",
                "/p/deploy.toml: rollout.rolling_batch_size: 0 is not allowed; use a number of hosts (at least 1) or a percentage such as \"25%\"",
            ),
            (
                "[rollout]\nrolling_batch_size = \"150%\"",
                "/p/deploy.toml: rollout.rolling_batch_size: \"150%\" is not allowed; use a number of hosts (at least 1) or a percentage such as \"25%\"",
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
                "/p/deploy.toml: rollout.lock_lease: 1s is too short; use at least 48s: the lock is refreshed every \
                 quarter of its lease, and a round of refreshes may take 30s when a host is slow to answer, so a \
                 shorter lease makes a live run's lock look stale",
            ),
            (
                "[stages.production.rollout]\nlock_lease = \"47s\"",
                "/p/deploy.toml: stages.production.rollout.lock_lease: 47s is too short; use at least 48s: the lock is \
                 refreshed every quarter of its lease, and a round of refreshes may take 30s when a host is slow to \
                 answer, so a shorter lease makes a live run's lock look stale",
            ),
        ]);
        assert!(check("[rollout]\nlock_lease = \"48s\"").is_ok());
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
}
