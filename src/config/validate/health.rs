//! `[health]`: how shipit knows a restarted host serves the new release.

use std::time::Duration;

use super::super::{Health, Vars};
use super::{At, StageCheck, pick};

pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_millis(500);
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

impl StageCheck<'_> {
    /// `None` when no layer has a `[health]` table: no health check.
    pub(super) fn health(&mut self) -> Option<Option<Health>> {
        if self.merged.health.is_none() {
            return Some(None);
        }
        let url = match pick!(self, health, url) {
            None => {
                return self.missing(
                    "health",
                    "url",
                    ", e.g. url = \"http://{address}:8080/health\"",
                );
            }
            Some(at) => self.health_url(at)?,
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
            // Named after the key that was set (the interval if both were).
            let key = pick!(self, health, interval)
                .or_else(|| pick!(self, health, timeout))
                .map_or_else(|| "health.interval".to_string(), |at| at.key);
            return self.fail(
                &key,
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

    /// `url`: a template that renders to an http(s) URL.
    fn health_url(&mut self, at: At<String>) -> Option<super::super::Template> {
        let template = self.template(Some(At {
            value: at.value.clone(),
            key: at.key.clone(),
        }))??;
        let probe = template.render_plain(&Vars {
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
        Some(template)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;

    #[test]
    fn bad_values_and_their_messages() {
        assert_messages(&[
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
                "[health]\nurl = \"http://{address}/\"\n[stages.production.health]\ninterval = \"1m\"",
                "/p/deploy.toml: stages.production.health.interval: the interval (1m) must be shorter than the timeout (30s), or the check gets one try",
            ),
            (
                "[health]\nurl = \"http://{address}/\"\n[stages.production.health]\ntimeout = \"400ms\"",
                "/p/deploy.toml: stages.production.health.timeout: the interval (500ms) must be shorter than the timeout (400ms), or the check gets one try",
            ),
            (
                "[health]\nexpect_status = 200",
                "/p/deploy.toml: health.url: missing (stage `production`); set it in [health] or [stages.production.health], e.g. url = \"http://{address}:8080/health\"",
            ),
        ]);
    }
}
