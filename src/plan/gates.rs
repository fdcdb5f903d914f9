//! Each batch's gates, as plain data: what the stage's `[[gates]]` measure
//! while that batch bakes, on which hosts, against what limit.
//!
//! A gate measures the hosts switched to the release in this run by the end
//! of its batch (the canary alone during the first bake, the canary and the
//! second batch during the second, …) that take traffic: a host an operator
//! keeps out of the load balancer gets the release but no requests. Only a
//! deploy is gated, and only a batch that bakes: a rollback is the way back
//! to a release that served before, and stopping it halfway on a gate would
//! leave the fleet split between two releases.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::config::gates::{QueryVar, exact_regex};
use crate::config::{Gate, GateCheck, GateQuery, Hook, OnInconclusive, RunOn, Stage};
use crate::host::ReleaseId;
use crate::lb::{Driver, LbOp, Member};
use crate::shell::Cmd;

use super::steps::{HostSteps, RunEnv};
use super::{Action, Batch, Operation, PlannedHost, StepKind};

/// A gate as one batch runs it.
#[derive(Debug, Clone, Serialize)]
pub struct BatchGate {
    /// Its place in the stage's `[[gates]]`, 0-based (`gates[0]`).
    pub index: usize,
    #[serde(with = "super::humantime_serde_ms")]
    pub interval: Duration,
    pub on_inconclusive: OnInconclusive,
    /// The hosts measured, as the load balancer names them (`server`; the
    /// host's name without one).
    pub hosts: Vec<Member>,
    pub measure: Measure,
}

/// What a gate measures, and its limit.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Measure {
    /// 5xx answers / all answers of the measured servers, from the load
    /// balancer's own per-server counters.
    Haproxy {
        max_error_rate: f64,
        min_requests: u64,
        /// Only the last this long counts (ms); absent: the whole bake.
        #[serde(skip_serializing_if = "Option::is_none", serialize_with = "opt_ms")]
        window: Option<Duration>,
        #[serde(skip)]
        lb: Arc<dyn Driver>,
    },
    /// A PromQL query; every value must lie within `min`..=`max`.
    Prometheus {
        url: String,
        /// As it is sent for `hosts`.
        query: String,
        /// As written, to render again for the hosts actually measured.
        #[serde(skip)]
        template: GateQuery,
        #[serde(skip_serializing_if = "Option::is_none")]
        max: Option<f64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        min: Option<f64>,
        #[serde(with = "super::humantime_serde_ms")]
        timeout: Duration,
    },
    /// Commands that must exit 0: one on this machine (`run_on = "local"`),
    /// on the first measured host (`"once"`) or on each (`"hosts"`).
    Command {
        commands: Vec<GateCommand>,
        #[serde(with = "super::humantime_serde_ms")]
        timeout: Duration,
    },
}

/// One command of a command gate.
#[derive(Debug, Clone, Serialize)]
pub struct GateCommand {
    /// The host it runs on; absent: the machine running shipit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub cmd: Cmd,
}

impl BatchGate {
    pub fn kind(&self) -> &'static str {
        match self.measure {
            Measure::Haproxy { .. } => "haproxy",
            Measure::Prometheus { .. } => "prometheus",
            Measure::Command { .. } => "command",
        }
    }

    /// What passes, in words: `5xx ≤ 1% of at least 50 answers`.
    pub fn limit(&self) -> String {
        match &self.measure {
            Measure::Haproxy {
                max_error_rate,
                min_requests,
                window,
                ..
            } => format!(
                "5xx ≤ {} of at least {min_requests} answers{}",
                percent(*max_error_rate),
                window.map_or(String::new(), |w| format!(
                    " in the last {}",
                    humantime::format_duration(w)
                ))
            ),
            Measure::Prometheus { max, min, .. } => match (min, max) {
                (Some(lo), Some(hi)) => format!("{lo} ≤ value ≤ {hi}"),
                (Some(lo), None) => format!("value ≥ {lo}"),
                (None, Some(hi)) => format!("value ≤ {hi}"),
                (None, None) => "any value".to_string(),
            },
            Measure::Command { .. } => "exit 0".to_string(),
        }
    }

    /// One line for `--dry-run`.
    pub fn describe(&self) -> String {
        let hosts: Vec<&str> = self.hosts.iter().map(|m| m.host.as_str()).collect();
        let what = match &self.measure {
            Measure::Haproxy { .. } => format!(
                "haproxy: share of 5xx in the answers of {} ({})",
                hosts.join(" "),
                self.limit()
            ),
            Measure::Prometheus { url, query, .. } => {
                format!("prometheus {url}: {query} ({})", self.limit())
            }
            Measure::Command { commands, .. } => {
                let list: Vec<String> = commands
                    .iter()
                    .map(|c| match &c.host {
                        Some(host) => format!("{host}: {}", c.cmd.display()),
                        None => format!("local: {}", c.cmd.display()),
                    })
                    .collect();
                format!("command, must exit 0: {}", list.join("; "))
            }
        };
        format!(
            "gates[{}] {what}; every {}, inconclusive at the end = {}",
            self.index,
            humantime::format_duration(self.interval),
            self.on_inconclusive.as_str()
        )
    }
}

/// `0.05` as `5%`, `0.005` as `0.5%`.
pub fn percent(share: f64) -> String {
    let p = share * 100.0;
    let text = format!("{p:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}%")
}

fn opt_ms<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_u128(d.as_millis()),
        None => s.serialize_none(),
    }
}

/// What building a batch's gates needs from the deploy's plan.
pub(super) struct GateInput<'a> {
    pub stage: &'a Stage,
    pub release: &'a ReleaseId,
    pub run: RunEnv<'a>,
    pub hosts: &'a [PlannedHost],
}

/// Gives every batch that bakes the stage's gates, measuring the hosts
/// switched by the end of it.
pub(super) fn attach(input: &GateInput<'_>, batches: &mut [Batch]) {
    if input.stage.gates.is_empty() {
        return;
    }
    let mut measured: Vec<Member> = Vec::new();
    for batch in batches.iter_mut() {
        measured.extend(
            batch
                .pipelines
                .iter()
                .filter_map(|p| in_service_member(input.stage, p)),
        );
        if batch.bake.is_zero() || measured.is_empty() {
            continue;
        }
        let batch_hosts: Vec<String> = batch.hosts().map(str::to_string).collect();
        batch.gates = input
            .stage
            .gates
            .iter()
            .enumerate()
            .map(|(index, gate)| build(input, index, gate, &measured, &batch_hosts))
            .collect();
    }
}

/// How the load balancer knows the pipeline's host, if the pipeline puts
/// it back in service (it enables it); without a load balancer every host
/// serves, under its own name.
fn in_service_member(stage: &Stage, pipeline: &super::Pipeline) -> Option<Member> {
    if stage.lb.is_none() {
        return Some(Member {
            host: pipeline.host.clone(),
            server: pipeline.host.clone(),
            commands: Default::default(),
        });
    }
    pipeline.steps.iter().find_map(|s| match &s.action {
        Action::Lb { lb } if lb.op == LbOp::Enable => Some(lb.member.clone()),
        _ => None,
    })
}

fn build(
    input: &GateInput<'_>,
    index: usize,
    gate: &Gate,
    measured: &[Member],
    batch_hosts: &[String],
) -> BatchGate {
    let measure = match &gate.check {
        GateCheck::Haproxy {
            max_error_rate,
            min_requests,
            window,
        } => Measure::Haproxy {
            max_error_rate: *max_error_rate,
            min_requests: *min_requests,
            window: *window,
            lb: input
                .stage
                .lb
                .clone()
                .expect("a haproxy gate is refused without [lb] when the file is loaded"),
        },
        GateCheck::Prometheus {
            url,
            query,
            max,
            min,
            timeout,
        } => Measure::Prometheus {
            url: url.clone(),
            query: render_query(
                query,
                &input.stage.app.name,
                &input.stage.name,
                input.release,
                measured,
            ),
            template: query.clone(),
            max: *max,
            min: *min,
            timeout: *timeout,
        },
        GateCheck::Command {
            run,
            run_on,
            timeout,
        } => Measure::Command {
            commands: commands(input, run, *run_on, measured, batch_hosts),
            timeout: *timeout,
        },
    };
    BatchGate {
        index,
        interval: gate.interval,
        on_inconclusive: gate.on_inconclusive,
        hosts: measured.to_vec(),
        measure,
    }
}

/// The query for `measured`: `{servers_regex}` matches their names in the
/// load balancer, `{hosts_regex}` their host names.
pub fn render_query(
    query: &GateQuery,
    app: &str,
    stage: &str,
    release: &ReleaseId,
    measured: &[Member],
) -> String {
    let servers: Vec<String> = measured.iter().map(|m| m.server.clone()).collect();
    let hosts: Vec<String> = measured.iter().map(|m| m.host.clone()).collect();
    query.render(|var| match var {
        QueryVar::ServersRegex => exact_regex(&servers),
        QueryVar::HostsRegex => exact_regex(&hosts),
        QueryVar::App => app.to_string(),
        QueryVar::Stage => stage.to_string(),
        QueryVar::Release => release.to_string(),
    })
}

/// A command gate's commands, with the variables of a hook at this point
/// plus `SHIPIT_GATE_HOSTS` (the measured hosts).
fn commands(
    input: &GateInput<'_>,
    run: &crate::config::Template,
    run_on: RunOn,
    measured: &[Member],
    batch_hosts: &[String],
) -> Vec<GateCommand> {
    let names: Vec<String> = measured.iter().map(|m| m.host.clone()).collect();
    let hook = Hook {
        run: run.clone(),
        run_on,
    };
    let on = |host: Option<&str>| -> Option<GateCommand> {
        let config_host = match host {
            Some(name) => Some(input.stage.hosts.iter().find(|h| h.name == name)?),
            None => None,
        };
        let before = host
            .and_then(|name| input.hosts.iter().find(|h| h.name == name))
            .and_then(|h| h.before.clone());
        let steps = HostSteps::new(
            input.stage,
            config_host,
            input.release,
            before.as_ref(),
            Operation::Deploy,
            input.run,
        )
        .in_batch(batch_hosts);
        let cwd = host.map(|_| steps.release_dir());
        let cmd = match steps.hook(StepKind::Gate, &hook, cwd).action {
            Action::Local { cmd } | Action::Remote { cmd } => cmd,
            _ => return None,
        };
        Some(GateCommand {
            host: host.map(str::to_string),
            cmd: cmd.env("SHIPIT_GATE_HOSTS", names.join(" ")),
        })
    };
    match run_on {
        RunOn::Local => on(None).into_iter().collect(),
        RunOn::Once => on(names.first().map(String::as_str)).into_iter().collect(),
        RunOn::Hosts => names.iter().filter_map(|h| on(Some(h))).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_read_as_percentages() {
        assert_eq!(percent(0.05), "5%");
        assert_eq!(percent(0.005), "0.5%");
        assert_eq!(percent(0.0), "0%");
        assert_eq!(percent(0.125), "12.5%");
    }
}
