//! `[[gates]]`: checks on live traffic during each batch's bake. A stage's
//! `[[stages.NAME.gates]]` list replaces the shared list whole, and
//! `gates = []` in a stage turns the shared gates off there.
//!
//! Each entry has a `type` and the keys of that type; a key of another
//! type is an error (it would be silently ignored otherwise). Gates are
//! evaluated only while a batch bakes, so gates with no bake at all are
//! refused; a batch whose own bake is 0 (`bake = ["5m", "0s"]`: only the
//! canary bakes) is simply not gated.

use std::sync::Arc;
use std::time::Duration;

use super::super::raw::RawGate;
use super::super::{Gate, GateCheck, GateQuery, OnInconclusive, Rollout, RunOn};
use super::{At, StageCheck};
use crate::lb::Driver;

pub const DEFAULT_GATE_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_MIN_REQUESTS: u64 = 50;
pub const DEFAULT_PROMETHEUS_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

const TYPES: &str = "\"haproxy\", \"prometheus\" or \"command\"";
const COMMON_KEYS: &[&str] = &["type", "interval", "on_inconclusive"];

/// The keys each type takes besides [`COMMON_KEYS`].
fn own_keys(kind: &str) -> &'static [&'static str] {
    match kind {
        "haproxy" => &["max_error_rate", "min_requests", "window"],
        "prometheus" => &["url", "query", "max", "min", "timeout"],
        "command" => &["run", "run_on", "timeout"],
        _ => &[],
    }
}

/// The keys an entry sets, by name.
fn keys_set(raw: &RawGate) -> Vec<&'static str> {
    [
        ("interval", raw.interval.is_some()),
        ("on_inconclusive", raw.on_inconclusive.is_some()),
        ("max_error_rate", raw.max_error_rate.is_some()),
        ("min_requests", raw.min_requests.is_some()),
        ("window", raw.window.is_some()),
        ("url", raw.url.is_some()),
        ("query", raw.query.is_some()),
        ("max", raw.max.is_some()),
        ("min", raw.min.is_some()),
        ("run", raw.run.is_some()),
        ("run_on", raw.run_on.is_some()),
        ("timeout", raw.timeout.is_some()),
    ]
    .into_iter()
    .filter_map(|(key, set)| set.then_some(key))
    .collect()
}

impl StageCheck<'_> {
    /// `lb` and `rollout` are the stage's, when they are valid: a haproxy
    /// gate needs the HAProxy driver, and gates need a bake.
    pub(super) fn gates(
        &mut self,
        lb: Option<&Option<Arc<dyn Driver>>>,
        rollout: Option<&Rollout>,
    ) -> Option<Vec<Gate>> {
        let Some(At { value: list, key }) = self.layers.iter().find_map(|layer| {
            layer.settings.gates.clone().map(|value| At {
                value,
                key: format!("{}gates", layer.prefix),
            })
        }) else {
            return Some(Vec::new());
        };
        let mut gates = Some(Vec::new());
        for (i, raw) in list.iter().enumerate() {
            let gate = self.gate(&format!("{key}[{i}]"), raw, lb);
            gates = gates.zip(gate).map(|(mut all, g)| {
                all.push(g);
                all
            });
        }
        if let Some(rollout) = rollout
            && !list.is_empty()
            && rollout.bake.iter().all(Duration::is_zero)
        {
            return self.fail(
                &key,
                "gates are evaluated while a batch bakes, and rollout.bake is not set (or 0); \
                 set how long each batch is watched, e.g. bake = \"5m\" or [\"10m\", \"2m\"]",
            );
        }
        gates
    }

    fn gate(
        &mut self,
        key: &str,
        raw: &RawGate,
        lb: Option<&Option<Arc<dyn Driver>>>,
    ) -> Option<Gate> {
        let kind = match raw.kind.as_deref() {
            None => {
                return self.fail(&format!("{key}.type"), format!("missing; use {TYPES}"));
            }
            Some(kind @ ("haproxy" | "prometheus" | "command")) => kind,
            Some(other) => {
                return self.fail(
                    &format!("{key}.type"),
                    format!("{other:?} is not allowed; use {TYPES}"),
                );
            }
        };
        let own = own_keys(kind);
        let mut ok = true;
        for set in keys_set(raw) {
            if !COMMON_KEYS.contains(&set) && !own.contains(&set) {
                let takes: Vec<&str> = COMMON_KEYS.iter().chain(own).copied().collect();
                self.fail::<()>(
                    &format!("{key}.{set}"),
                    format!(
                        "not a key of a gate of type = \"{kind}\"; it takes {}",
                        takes.join(", ")
                    ),
                );
                ok = false;
            }
        }
        let at = |field: &str, value: &Option<String>| {
            value.clone().map(|value| At {
                value,
                key: format!("{key}.{field}"),
            })
        };
        let interval = self
            .positive_duration(at("interval", &raw.interval))
            .map(|d| d.unwrap_or(DEFAULT_GATE_INTERVAL));
        let on_inconclusive = match raw.on_inconclusive.as_deref() {
            None | Some("fail") => Some(OnInconclusive::Fail),
            Some("pass") => Some(OnInconclusive::Pass),
            Some(other) => self.fail(
                &format!("{key}.on_inconclusive"),
                format!("{other:?} is not allowed; use \"fail\" (default) or \"pass\""),
            ),
        };
        let check = match kind {
            "haproxy" => self.haproxy_gate(key, raw, lb),
            "prometheus" => self.prometheus_gate(key, raw),
            _ => self.command_gate(key, raw),
        };
        let gate = Gate {
            check: check?,
            interval: interval?,
            on_inconclusive: on_inconclusive?,
        };
        ok.then_some(gate)
    }

    fn haproxy_gate(
        &mut self,
        key: &str,
        raw: &RawGate,
        lb: Option<&Option<Arc<dyn Driver>>>,
    ) -> Option<GateCheck> {
        let driver_ok = match lb {
            // [lb] itself is invalid: that error is reported already.
            None => true,
            Some(Some(driver)) if driver.name() == "haproxy" => true,
            Some(found) => {
                let has = match found {
                    Some(driver) => format!("lb.driver is \"{}\"", driver.name()),
                    None => "it has no load balancer".to_string(),
                };
                self.fail::<()>(
                    &format!("{key}.type"),
                    format!(
                        "type = \"haproxy\" reads HAProxy's counters through [lb], but in stage `{}` {has}; \
                         set [lb] driver = \"haproxy\", or use a gate of type \"prometheus\" or \"command\"",
                        self.stage
                    ),
                );
                false
            }
        };
        let max_error_rate = match &raw.max_error_rate {
            None => self.fail(
                &format!("{key}.max_error_rate"),
                "missing; a haproxy gate needs its limit, e.g. max_error_rate = \"1%\"",
            ),
            Some(value) => self.error_rate(&format!("{key}.max_error_rate"), value),
        };
        let min_requests = match raw.min_requests {
            None => Some(DEFAULT_MIN_REQUESTS),
            Some(n) if n >= 1 => Some(n as u64),
            Some(n) => self.fail(
                &format!("{key}.min_requests"),
                format!(
                    "{n} is not allowed; use at least 1 (fewer answers than this make an evaluation inconclusive)"
                ),
            ),
        };
        let window = self.positive_duration(raw.window.clone().map(|value| At {
            value,
            key: format!("{key}.window"),
        }));
        let check = GateCheck::Haproxy {
            max_error_rate: max_error_rate?,
            min_requests: min_requests?,
            window: window?,
        };
        driver_ok.then_some(check)
    }

    /// `"5%"`, `"0.5%"`, or a share from 0 to 1 such as `0.05`.
    fn error_rate(&mut self, key: &str, value: &toml::Value) -> Option<f64> {
        const ALLOWED: &str =
            "use a percentage such as \"1%\" or \"0.5%\", or a share from 0 to 1 such as 0.01";
        let share = match value {
            toml::Value::String(s) => s
                .trim()
                .strip_suffix('%')
                .and_then(|p| p.trim().parse::<f64>().ok())
                .map(|p| p / 100.0),
            toml::Value::Float(f) => Some(*f),
            toml::Value::Integer(n @ (0 | 1)) => Some(*n as f64),
            _ => None,
        };
        match share {
            Some(share) if share.is_finite() && (0.0..1.0).contains(&share) => Some(share),
            Some(share) if share >= 1.0 && share.is_finite() => self.fail(
                key,
                format!("{value} lets every answer fail, so the gate could never fail; {ALLOWED}"),
            ),
            _ => self.fail(key, format!("{value} is not allowed; {ALLOWED}")),
        }
    }

    fn prometheus_gate(&mut self, key: &str, raw: &RawGate) -> Option<GateCheck> {
        let url = match &raw.url {
            None => self.fail(
                &format!("{key}.url"),
                "missing; the Prometheus server's base URL, e.g. url = \"http://127.0.0.1:9090\"",
            ),
            Some(url)
                if (url.starts_with("http://") || url.starts_with("https://"))
                    && reqwest::Url::parse(url).is_ok() =>
            {
                Some(url.trim_end_matches('/').to_string())
            }
            Some(url) => self.fail(
                &format!("{key}.url"),
                format!("{url:?} is not an http:// or https:// URL"),
            ),
        };
        let query = match &raw.query {
            None => self.fail(
                &format!("{key}.query"),
                "missing; a PromQL expression, e.g. query = 'sum(rate(haproxy_server_http_responses_total{code=\"5xx\",server=~\"{servers_regex}\"}[1m]))'",
            ),
            Some(q) if q.trim().is_empty() => self.fail(
                &format!("{key}.query"),
                "must not be empty; a PromQL expression",
            ),
            Some(q) => match GateQuery::parse(q) {
                Ok(q) => Some(q),
                Err(e) => self.fail(&format!("{key}.query"), e.to_string()),
            },
        };
        let max = self.number(&format!("{key}.max"), raw.max.as_ref());
        let min = self.number(&format!("{key}.min"), raw.min.as_ref());
        let timeout = self
            .positive_duration(raw.timeout.clone().map(|value| At {
                value,
                key: format!("{key}.timeout"),
            }))
            .map(|d| d.unwrap_or(DEFAULT_PROMETHEUS_TIMEOUT));
        let (max, min) = (max?, min?);
        match (min, max) {
            (None, None) => {
                return self.fail(
                    &format!("{key}.max"),
                    "missing; a prometheus gate needs max = ... and/or min = ... (the query's value must stay within them)",
                );
            }
            (Some(lo), Some(hi)) if lo > hi => {
                return self.fail(
                    &format!("{key}.min"),
                    format!("{lo} is above max = {hi}, so no value could pass"),
                );
            }
            _ => {}
        }
        Some(GateCheck::Prometheus {
            url: url?,
            query: query?,
            max,
            min,
            timeout: timeout?,
        })
    }

    /// An optional number (integer or float) that must be finite.
    fn number(&mut self, key: &str, value: Option<&toml::Value>) -> Option<Option<f64>> {
        match value {
            None => Some(None),
            Some(toml::Value::Integer(n)) => Some(Some(*n as f64)),
            Some(toml::Value::Float(f)) if f.is_finite() => Some(Some(*f)),
            Some(other) => self.fail(key, format!("{other} is not allowed; use a number")),
        }
    }

    fn command_gate(&mut self, key: &str, raw: &RawGate) -> Option<GateCheck> {
        let run = match &raw.run {
            None => self.fail(
                &format!("{key}.run"),
                "missing; the command to run, e.g. run = \"./scripts/slo-ok {release}\" (exit 0 passes)",
            ),
            Some(run) => self
                .template(Some(At {
                    value: run.clone(),
                    key: format!("{key}.run"),
                }))
                .flatten(),
        };
        let run_on = match raw.run_on.as_deref() {
            None | Some("local") => Some(RunOn::Local),
            Some("once") => Some(RunOn::Once),
            Some("hosts") => Some(RunOn::Hosts),
            Some(other) => self.fail(
                &format!("{key}.run_on"),
                format!(
                    "{other:?} is not allowed; use \"local\" (default, on this machine), \"once\" (on the first measured host) \
                     or \"hosts\" (on every measured host)"
                ),
            ),
        };
        let timeout = self
            .positive_duration(raw.timeout.clone().map(|value| At {
                value,
                key: format!("{key}.timeout"),
            }))
            .map(|d| d.unwrap_or(DEFAULT_COMMAND_TIMEOUT));
        Some(GateCheck::Command {
            run: run?,
            run_on: run_on?,
            timeout: timeout?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::{GateCheck, OnInconclusive, RunOn};
    use super::super::testing::*;
    use std::time::Duration;

    const HAPROXY: &str =
        "[lb]\ndriver = \"haproxy\"\nsocket = \"/run/haproxy/admin.sock\"\nbackend = \"app\"\n";

    #[test]
    fn every_type_with_its_defaults() {
        let config = check(&format!(
            "{HAPROXY}[rollout]\nbake = \"1m\"\n\
             [[gates]]\ntype = \"haproxy\"\nmax_error_rate = \"2.5%\"\n\
             [[gates]]\ntype = \"prometheus\"\nurl = \"http://127.0.0.1:9090/\"\nquery = 'sum(x{{server=~\"{{servers_regex}}\"}})'\nmax = 1\n\
             [[gates]]\ntype = \"command\"\nrun = \"./slo-ok {{release}}\"\nrun_on = \"hosts\"\ninterval = \"30s\"\non_inconclusive = \"pass\"\n"
        ))
        .unwrap();
        let gates = &config.stages["production"].gates;
        assert_eq!(gates.len(), 3);
        match &gates[0].check {
            GateCheck::Haproxy {
                max_error_rate,
                min_requests,
                window,
            } => {
                assert!((max_error_rate - 0.025).abs() < 1e-12);
                assert_eq!(*min_requests, 50);
                assert_eq!(*window, None);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(gates[0].interval, Duration::from_secs(5));
        assert_eq!(gates[0].on_inconclusive, OnInconclusive::Fail);
        match &gates[1].check {
            GateCheck::Prometheus { url, max, min, .. } => {
                assert_eq!(url, "http://127.0.0.1:9090");
                assert_eq!((*max, *min), (Some(1.0), None));
            }
            other => panic!("{other:?}"),
        }
        match &gates[2].check {
            GateCheck::Command { run_on, .. } => assert_eq!(*run_on, RunOn::Hosts),
            other => panic!("{other:?}"),
        }
        assert_eq!(gates[2].on_inconclusive, OnInconclusive::Pass);
        assert_eq!(gates[2].interval, Duration::from_secs(30));
    }

    #[test]
    fn a_stage_list_replaces_the_shared_one() {
        let text = "[app]\nname = \"shop\"\ndeploy_to = \"/srv/shop\"\nsource = \"dist\"\n\
                    [rollout]\nbake = \"1m\"\n[[gates]]\ntype = \"command\"\nrun = \"true\"\n\
                    [stages.production]\nhosts = [{ name = \"web1\" }]\ngates = []\n\
                    [stages.staging]\nhosts = [{ name = \"web9\" }]\n\
                    [stages.canary]\nhosts = [{ name = \"web5\" }]\n\
                    [[stages.canary.gates]]\ntype = \"command\"\nrun = \"false\"\n\
                    [[stages.canary.gates]]\ntype = \"command\"\nrun = \"true\"\n";
        let config = crate::config::from_str(std::path::Path::new("/p/deploy.toml"), text).unwrap();
        assert!(config.stages["production"].gates.is_empty());
        assert_eq!(config.stages["staging"].gates.len(), 1);
        assert_eq!(config.stages["canary"].gates.len(), 2);
    }

    #[test]
    fn bad_values_and_their_messages() {
        let bake = "[rollout]\nbake = \"1m\"\n";
        assert_messages(&[
            (
                &format!("{bake}[[gates]]\nmax_error_rate = \"5%\""),
                "/p/deploy.toml: gates[0].type: missing; use \"haproxy\", \"prometheus\" or \"command\"",
            ),
            (
                &format!("{bake}[[gates]]\ntype = \"datadog\""),
                "/p/deploy.toml: gates[0].type: \"datadog\" is not allowed; use \"haproxy\", \"prometheus\" or \"command\"",
            ),
            (
                &format!("{HAPROXY}{bake}[[gates]]\ntype = \"haproxy\""),
                "/p/deploy.toml: gates[0].max_error_rate: missing; a haproxy gate needs its limit, e.g. max_error_rate = \"1%\"",
            ),
            (
                &format!("{bake}[[gates]]\ntype = \"haproxy\"\nmax_error_rate = \"5%\""),
                "/p/deploy.toml: gates[0].type: type = \"haproxy\" reads HAProxy's counters through [lb], but in stage \
                 `production` it has no load balancer; set [lb] driver = \"haproxy\", or use a gate of type \"prometheus\" or \"command\"",
            ),
            (
                &format!(
                    "[lb]\ndrain = \"x\"\nenable = \"y\"\n{bake}[[gates]]\ntype = \"haproxy\"\nmax_error_rate = \"5%\""
                ),
                "/p/deploy.toml: gates[0].type: type = \"haproxy\" reads HAProxy's counters through [lb], but in stage \
                 `production` lb.driver is \"command\"; set [lb] driver = \"haproxy\", or use a gate of type \"prometheus\" or \"command\"",
            ),
            (
                &format!("{HAPROXY}{bake}[[gates]]\ntype = \"haproxy\"\nmax_error_rate = 5"),
                "/p/deploy.toml: gates[0].max_error_rate: 5 is not allowed; use a percentage such as \"1%\" or \"0.5%\", or a share from 0 to 1 such as 0.01",
            ),
            (
                &format!("{HAPROXY}{bake}[[gates]]\ntype = \"haproxy\"\nmax_error_rate = \"100%\""),
                "/p/deploy.toml: gates[0].max_error_rate: \"100%\" lets every answer fail, so the gate could never fail; use a percentage such as \"1%\" or \"0.5%\", or a share from 0 to 1 such as 0.01",
            ),
            (
                &format!(
                    "{HAPROXY}{bake}[[gates]]\ntype = \"haproxy\"\nmax_error_rate = \"1%\"\nmin_requests = 0"
                ),
                "/p/deploy.toml: gates[0].min_requests: 0 is not allowed; use at least 1 (fewer answers than this make an evaluation inconclusive)",
            ),
            (
                &format!(
                    "{HAPROXY}{bake}[[gates]]\ntype = \"haproxy\"\nmax_error_rate = \"1%\"\nquery = \"up\""
                ),
                "/p/deploy.toml: gates[0].query: not a key of a gate of type = \"haproxy\"; it takes type, interval, on_inconclusive, max_error_rate, min_requests, window",
            ),
            (
                &format!(
                    "{bake}[[gates]]\ntype = \"prometheus\"\nurl = \"http://p:9090\"\nquery = \"up\""
                ),
                "/p/deploy.toml: gates[0].max: missing; a prometheus gate needs max = ... and/or min = ... (the query's value must stay within them)",
            ),
            (
                &format!("{bake}[[gates]]\ntype = \"prometheus\"\nquery = \"up\"\nmax = 1"),
                "/p/deploy.toml: gates[0].url: missing; the Prometheus server's base URL, e.g. url = \"http://127.0.0.1:9090\"",
            ),
            (
                &format!(
                    "{bake}[[gates]]\ntype = \"prometheus\"\nurl = \"p:9090\"\nquery = \"up\"\nmax = 1"
                ),
                "/p/deploy.toml: gates[0].url: \"p:9090\" is not an http:// or https:// URL",
            ),
            (
                &format!(
                    "{bake}[[gates]]\ntype = \"prometheus\"\nurl = \"http://p\"\nquery = \"up{{{{x}}}} {{instance}}\"\nmax = 1"
                ),
                "/p/deploy.toml: gates[0].query: unknown placeholder {instance}; allowed in a query: {servers_regex}, {hosts_regex}, \
                 {app}, {stage}, {release} (write {{ and }} for literal braces)",
            ),
            (
                &format!(
                    "{bake}[[gates]]\ntype = \"prometheus\"\nurl = \"http://p\"\nquery = \"up\"\nmax = 1\nmin = 2"
                ),
                "/p/deploy.toml: gates[0].min: 2 is above max = 1, so no value could pass",
            ),
            (
                &format!("{bake}[[gates]]\ntype = \"command\""),
                "/p/deploy.toml: gates[0].run: missing; the command to run, e.g. run = \"./scripts/slo-ok {release}\" (exit 0 passes)",
            ),
            (
                &format!("{bake}[[gates]]\ntype = \"command\"\nrun = \"x\"\nrun_on = \"all\""),
                "/p/deploy.toml: gates[0].run_on: \"all\" is not allowed; use \"local\" (default, on this machine), \"once\" \
                 (on the first measured host) or \"hosts\" (on every measured host)",
            ),
            (
                &format!(
                    "{bake}[[gates]]\ntype = \"command\"\nrun = \"x\"\non_inconclusive = \"retry\""
                ),
                "/p/deploy.toml: gates[0].on_inconclusive: \"retry\" is not allowed; use \"fail\" (default) or \"pass\"",
            ),
            (
                &format!("{bake}[[gates]]\ntype = \"command\"\nrun = \"x\"\ninterval = \"0s\""),
                "/p/deploy.toml: gates[0].interval: must be longer than 0",
            ),
            (
                "[[gates]]\ntype = \"command\"\nrun = \"x\"",
                "/p/deploy.toml: gates: gates are evaluated while a batch bakes, and rollout.bake is not set (or 0); \
                 set how long each batch is watched, e.g. bake = \"5m\" or [\"10m\", \"2m\"]",
            ),
            (
                "[rollout]\nbake = [\"0s\"]\n[[gates]]\ntype = \"command\"\nrun = \"x\"",
                "/p/deploy.toml: gates: gates are evaluated while a batch bakes, and rollout.bake is not set (or 0); \
                 set how long each batch is watched, e.g. bake = \"5m\" or [\"10m\", \"2m\"]",
            ),
        ]);
        // Only the canary bakes: later batches are simply not gated.
        assert!(
            check("[rollout]\nbake = [\"5m\", \"0s\"]\n[[gates]]\ntype = \"command\"\nrun = \"x\"")
                .is_ok()
        );
        // An unknown key is refused with its line, like everywhere.
        assert!(
            error(
                "[rollout]\nbake = \"1m\"\n[[gates]]\ntype = \"command\"\nrun = \"x\"\nrunn = \"y\""
            )
            .contains("gates[0].runn: unknown key `runn`")
        );
    }
}
