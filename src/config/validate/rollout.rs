//! `[rollout]`: how many hosts change at once, what a failure does, and
//! the deploy lock's lease.

use std::time::Duration;

use super::super::{BatchSize, OnFailure, Rollout};
use super::{At, StageCheck, pick};
use crate::host::lock;

pub const DEFAULT_LOCK_LEASE: Duration = Duration::from_secs(60);

impl StageCheck<'_> {
    pub(super) fn rollout(&mut self) -> Option<Rollout> {
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
        let lock_lease = self.lock_lease();
        Some(Rollout {
            batch_size: batch_size?,
            on_failure: on_failure?,
            max_fail_percentage: max_fail_percentage?,
            lock_lease: lock_lease?,
        })
    }

    /// `rolling_batch_size`: a number of hosts or a percentage.
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
