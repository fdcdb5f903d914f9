//! `[health]`: how shipit knows a restarted host serves the new release.

use std::time::Duration;

use super::super::{CheckFrom, Health, HealthKind, Vars};
use super::{At, StageCheck, pick};

pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_millis(500);
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The keys only an HTTP check reads, and those only a command check reads.
const HTTP_KEYS: [&str; 4] = ["url", "from", "expect_status", "expect_body"];
const COMMAND_KEYS: [&str; 1] = ["run"];

impl StageCheck<'_> {
    /// `None` when no layer has a `[health]` table: no health check.
    pub(super) fn health(&mut self) -> Option<Option<Health>> {
        if self.merged.health.is_none() {
            return Some(None);
        }
        // `type` is `kind` in Rust: named by hand.
        let kind_at = self.pick("health", "type", |settings| {
            settings.health.as_ref().and_then(|h| h.kind.clone())
        });
        let command = match &kind_at {
            None => false,
            Some(at) => match at.value.as_str() {
                "http" => false,
                "command" => true,
                other => {
                    let key = at.key.clone();
                    return self.fail(
                        &key,
                        format!(
                            "{other:?} is not allowed; use \"http\" (default: GET url) or \"command\" (run a command on the host; exit 0 is healthy)"
                        ),
                    );
                }
            },
        };
        if !self.health_keys_fit(kind_at.as_ref(), command) {
            return None;
        }
        let check = if command {
            self.health_command()
        } else {
            self.health_http()
        };
        let timeout = self
            .positive_duration(pick!(self, health, timeout))
            .map(|d| d.unwrap_or(DEFAULT_HEALTH_TIMEOUT));
        let interval = self
            .positive_duration(pick!(self, health, interval))
            .map(|d| d.unwrap_or(DEFAULT_HEALTH_INTERVAL));
        let request_timeout = self.positive_duration(pick!(self, health, request_timeout));
        let healthy_threshold = match pick!(self, health, healthy_threshold) {
            None => Some(1),
            Some(At { value, .. }) if (1..=1000).contains(&value) => Some(value as u32),
            Some(at) => self.fail(
                &at.key,
                format!(
                    "{} is not allowed; use the number of passing checks in a row needed, at least 1",
                    at.value
                ),
            ),
        };
        let start_period = self
            .duration(pick!(self, health, start_period))
            .map(Option::unwrap_or_default);
        let min_healthy_time = self
            .duration(pick!(self, health, min_healthy_time))
            .map(Option::unwrap_or_default);
        let (timeout, interval, request_timeout) = (timeout?, interval?, request_timeout?);
        let (healthy_threshold, start_period) = (healthy_threshold?, start_period?);
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
        let needed = start_period + interval * healthy_threshold;
        if timeout < needed {
            let key = pick!(self, health, timeout)
                .map(|at| at.key)
                .or_else(|| pick!(self, health, healthy_threshold).map(|at| at.key))
                .or_else(|| pick!(self, health, start_period).map(|at| at.key))
                .unwrap_or_else(|| "health.timeout".to_string());
            return self.fail(
                &key,
                format!(
                    "the check could never pass: timeout ({}) is shorter than start_period ({}) + interval ({}) \
                     × healthy_threshold ({}) = {}; raise health.timeout or lower the others",
                    humantime::format_duration(timeout),
                    humantime::format_duration(start_period),
                    humantime::format_duration(interval),
                    healthy_threshold,
                    humantime::format_duration(needed)
                ),
            );
        }
        Some(Some(Health {
            check: check?,
            timeout,
            interval,
            request_timeout: request_timeout.unwrap_or(DEFAULT_REQUEST_TIMEOUT.min(timeout)),
            healthy_threshold,
            start_period,
            min_healthy_time: min_healthy_time?,
        }))
    }

    /// Keys of the other type of check are an error where they are set as
    /// specifically as `type` (or more); a less specific table's (an
    /// inherited shared `url` under a role's `type = "command"`) are unused.
    fn health_keys_fit(&mut self, kind_at: Option<&At<String>>, command: bool) -> bool {
        let kind_depth = kind_at.map_or(self.layers.len(), |at| self.depth(&at.key));
        let (foreign, wanted): (&[&str], &str) = if command {
            (&HTTP_KEYS, "\"http\"")
        } else {
            (&COMMAND_KEYS, "\"command\"")
        };
        let mut ok = true;
        for (i, layer) in self.layers.iter().enumerate() {
            let Some(table) = &layer.settings.health else {
                continue;
            };
            for key in foreign {
                let set = match *key {
                    "url" => table.url.is_some(),
                    "from" => table.from.is_some(),
                    "expect_status" => table.expect_status.is_some(),
                    "expect_body" => table.expect_body.is_some(),
                    "run" => table.run.is_some(),
                    _ => false,
                };
                if set && (i <= kind_depth || kind_at.is_none()) {
                    let why = match kind_at {
                        Some(at) => format!(
                            "only used by type = {wanted}, but {} is {:?}",
                            at.key, at.value
                        ),
                        None => format!(
                            "only used by type = {wanted}; add type = {wanted} to [{}health]",
                            layer.prefix
                        ),
                    };
                    self.errors
                        .add(&format!("{}health.{key}", layer.prefix), why);
                    ok = false;
                }
            }
        }
        ok
    }

    /// `type = "http"`: `url`, where it is asked from, and what it must answer.
    fn health_http(&mut self) -> Option<HealthKind> {
        let url = match pick!(self, health, url) {
            None => {
                return self.missing(
                    "health",
                    "url",
                    ", e.g. url = \"http://{address}:8080/health\"",
                );
            }
            Some(at) => self.health_url(at),
        };
        let from = match pick!(self, health, from) {
            None => Some(CheckFrom::Controller),
            Some(at) => match at.value.as_str() {
                "controller" => Some(CheckFrom::Controller),
                "host" => Some(CheckFrom::Host),
                other => self.fail(
                    &at.key,
                    format!(
                        "{other:?} is not allowed; use \"controller\" (default: from the machine running shipit) \
                         or \"host\" (on the host itself, over its SSH connection)"
                    ),
                ),
            },
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
        Some(HealthKind::Http {
            url: url?,
            from: from?,
            expect_status: expect_status?,
            expect_body: expect_body?,
        })
    }

    /// `type = "command"`: `run`, a command line run on the host.
    fn health_command(&mut self) -> Option<HealthKind> {
        match pick!(self, health, run) {
            None => self.missing(
                "health",
                "run",
                ": type = \"command\" needs the command, e.g. run = \"systemctl is-active --quiet shop-worker\"",
            ),
            Some(at) => {
                let run = self.template(Some(at))??;
                Some(HealthKind::Command { run })
            }
        }
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
                "/p/deploy.toml: health.url: unknown placeholder {adress}; allowed: {app}, {name}, {address}, {port}, {user}, {stage}, {deploy_to}, {release}, {revision} (write {{ and }} for literal braces)",
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

#[cfg(test)]
mod threshold_tests {
    use super::super::testing::*;

    /// A check that could never pass is refused, naming the keys.
    #[test]
    fn a_check_that_could_never_pass_is_refused() {
        assert_messages(&[
            (
                "[health]\nurl = \"http://{address}/\"\ntimeout = \"10s\"\ninterval = \"1s\"\nstart_period = \"8s\"\nhealthy_threshold = 3",
                "/p/deploy.toml: health.timeout: the check could never pass: timeout (10s) is shorter than \
                 start_period (8s) + interval (1s) × healthy_threshold (3) = 11s; raise health.timeout or lower the others",
            ),
            (
                "[health]\nurl = \"http://{address}/\"\n[stages.production.health]\nhealthy_threshold = 100",
                "/p/deploy.toml: stages.production.health.healthy_threshold: the check could never pass: timeout \
                 (30s) is shorter than start_period (0s) + interval (500ms) × healthy_threshold (100) = 50s; raise \
                 health.timeout or lower the others",
            ),
            (
                "[health]\nurl = \"http://{address}/\"\nhealthy_threshold = 0",
                "/p/deploy.toml: health.healthy_threshold: 0 is not allowed; use the number of passing checks in a \
                 row needed, at least 1",
            ),
            (
                "[health]\nurl = \"http://{address}/\"\nfrom = \"lb\"",
                "/p/deploy.toml: health.from: \"lb\" is not allowed; use \"controller\" (default: from the machine \
                 running shipit) or \"host\" (on the host itself, over its SSH connection)",
            ),
            (
                "[health]\nurl = \"http://{address}/\"\nmin_healthy_time = \"soon\"",
                "/p/deploy.toml: health.min_healthy_time: \"soon\" is not a duration; write a number and a unit, \
                 such as 500ms, 30s or 2m",
            ),
        ]);
        let config = check(
            "[health]\nurl = \"http://{address}/\"\nexpect_body = \"revision={revision}\"\nhealthy_threshold = 3\nstart_period = \"5s\"\nmin_healthy_time = \"10s\"",
        )
        .unwrap();
        let health = config.stages["production"].health.clone().unwrap();
        assert_eq!(health.healthy_threshold, 3);
        assert_eq!(health.start_period, std::time::Duration::from_secs(5));
        assert_eq!(health.min_healthy_time, std::time::Duration::from_secs(10));
    }
}
