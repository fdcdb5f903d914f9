//! The plan as text, for `--dry-run`: hosts per batch, the release, and
//! every step with the exact command it runs (secrets redacted).

use std::fmt::Write as _;

use super::{Action, CheckKind, HealthCheck, Operation, Pipeline, Plan};
use crate::config::CheckFrom;

/// `full` shows shipit's own scripts in full instead of by label.
pub fn render(plan: &Plan, full: bool) -> String {
    let mut out = String::new();
    let changing: Vec<&str> = plan.changing_hosts().map(|h| h.name.as_str()).collect();
    let _ = match plan.operation {
        Operation::Deploy => writeln!(
            out,
            "Plan: deploy {} release {} to {}",
            plan.app, plan.release, plan.stage
        ),
        Operation::Rollback => writeln!(
            out,
            "Plan: roll {} on {} back to release {}",
            plan.app, plan.stage, plan.release
        ),
    };
    if !plan.revision.is_empty() {
        let _ = writeln!(out, "  revision  {}", plan.revision);
    }
    let _ = writeln!(
        out,
        "  hosts     {} in {} batch{}: {}",
        changing.len(),
        plan.batches.len(),
        if plan.batches.len() == 1 { "" } else { "es" },
        plan.batches
            .iter()
            .map(|b| b.hosts().collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    roles(&mut out, plan);
    let _ = writeln!(
        out,
        "  capacity  {}{}",
        capacity(plan),
        if plan.out_at_start.is_empty() {
            String::new()
        } else {
            format!(
                "; already out: {}",
                plan.out_at_start
                    .iter()
                    .map(|(h, o)| format!("{h} ({})", o.state.as_str()))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    );
    let _ = writeln!(out, "  rollout   {}", rollout(plan));
    for host in &plan.hosts {
        let before = host.before.as_ref().map_or_else(
            || "unknown (a dry run does not connect)".to_string(),
            ToString::to_string,
        );
        let mut note = match (host.unchanged, host.left_out) {
            (true, _) => "   (already there; left alone)".to_string(),
            (false, Some(state)) => format!(
                "   (in {} on the load balancer: gets the release, stays out)",
                state.as_str()
            ),
            (false, None) => String::new(),
        };
        if let Some(role) = &host.role {
            let _ = write!(note, "   [role {role}]");
        }
        let _ = writeln!(
            out,
            "  {:<8}  {} now runs {before}{note}",
            host.name, host.address
        );
    }
    for warning in &plan.warnings {
        let _ = writeln!(out, "warning: {warning}");
    }

    local(
        &mut out,
        "Before anything changes, on this machine:",
        &plan.hooks.before,
        full,
    );
    if !plan.prepare.is_empty() {
        let _ = writeln!(
            out,
            "\nPrepare, on all hosts at once (nothing switches until every host has the release):"
        );
        section(&mut out, &plan.prepare, full);
    }
    local(
        &mut out,
        "Once every host has the release, on this machine:",
        &plan.hooks.after_upload,
        full,
    );
    let total = plan.batches.len();
    for (i, batch) in plan.batches.iter().enumerate() {
        let names: Vec<&str> = batch.hosts().collect();
        let zone = batch
            .zone
            .as_ref()
            .map_or(String::new(), |z| format!(", zone {z}"));
        // The watch lasts the bake, or its hosts' min_healthy_time.
        let watch = batch
            .pipelines
            .iter()
            .flat_map(|p| &p.steps)
            .filter_map(|s| match &s.action {
                Action::Health { check } => Some(check.min_healthy_time),
                _ => None,
            })
            .fold(batch.bake, std::time::Duration::max);
        let then = if watch.is_zero() {
            "the next batch starts when all are healthy".to_string()
        } else {
            format!(
                "then watched for {} (health checks and the load balancer's state keep being polled{}) before the next batch",
                humantime::format_duration(watch),
                if batch.gates.is_empty() {
                    ""
                } else {
                    ", gates evaluated"
                }
            )
        };
        let _ = writeln!(
            out,
            "\nBatch {} of {total}: {}{zone} (hosts of a batch in parallel; {then})",
            i + 1,
            names.join(", ")
        );
        section(&mut out, &batch.pipelines, full);
        // The gates measure the batch as a whole, during its bake.
        for gate in &batch.gates {
            let _ = writeln!(out, "  {:<8}  {:<13}  {}", "batch", "gate", gate.describe());
        }
    }
    if !plan.finish.is_empty() {
        let _ = writeln!(out, "\nAfter every batch succeeded:");
        section(&mut out, &plan.finish, full);
    }
    local(&mut out, "Then, on this machine:", &plan.hooks.after, full);
    if !plan.hooks.on_failure.is_empty() || !plan.on_failure_hosts.is_empty() {
        let _ = writeln!(out, "\nIf the run fails:");
        let whole = Pipeline {
            host: "local".into(),
            steps: plan.hooks.on_failure.clone(),
        };
        section(&mut out, std::slice::from_ref(&whole), full);
        section(&mut out, &plan.on_failure_hosts, full);
    }
    let _ = writeln!(
        out,
        "\nEach host then appends the outcome to {}.",
        plan.bookkeeping.layout.revisions_log()
    );
    out
}

/// With roles of their own or a role order: which hosts follow which
/// settings, and in what order the roles go.
fn roles(out: &mut String, plan: &Plan) {
    if plan.parts.iter().all(|p| p.role.is_none() && p.step == 0) {
        return;
    }
    let mut by_role: Vec<(Option<&str>, Vec<&str>)> = Vec::new();
    for part in &plan.parts {
        let role = part.role.as_deref();
        let hosts = part.hosts.iter().map(String::as_str);
        match by_role.iter_mut().find(|(r, _)| *r == role) {
            Some((_, list)) => list.extend(hosts),
            None => by_role.push((role, hosts.collect())),
        }
    }
    let listed: Vec<String> = by_role
        .iter()
        .map(|(role, hosts)| match role {
            Some(role) => format!("role {role}'s own settings: {}", hosts.join(", ")),
            None => format!("the stage's settings: {}", hosts.join(", ")),
        })
        .collect();
    let _ = writeln!(out, "  roles     {}", listed.join("; "));
    let steps: std::collections::BTreeSet<usize> = plan.parts.iter().map(|p| p.step).collect();
    if steps.len() > 1 {
        let order: Vec<String> = steps
            .iter()
            .map(|step| {
                let hosts: Vec<&str> = plan
                    .parts
                    .iter()
                    .filter(|p| p.step == *step)
                    .flat_map(|p| p.hosts.iter().map(String::as_str))
                    .collect();
                hosts.join(" ")
            })
            .collect();
        let _ = writeln!(
            out,
            "  order     one role after another (rollout.role_order): {}",
            order.join(", then ")
        );
    }
}

/// At most how many hosts are out of service at once, per pool.
fn capacity(plan: &Plan) -> String {
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    if plan.pools.max_unavailable.len() <= 1 {
        let n = plan
            .pools
            .max_unavailable
            .values()
            .next()
            .copied()
            .unwrap_or(plan.shape.max_unavailable);
        return format!("at most {n} host{} out of service at once", plural(n));
    }
    let pools: Vec<String> = plan
        .pools
        .max_unavailable
        .iter()
        .map(|(pool, n)| {
            let hosts: Vec<&str> = plan
                .pools
                .of
                .iter()
                .filter(|(_, p)| *p == pool)
                .map(|(h, _)| h.as_str())
                .collect();
            format!("at most {n} of {} at once", hosts.join(", "))
        })
        .collect();
    format!("out of service, per pool: {}", pools.join("; "))
}

/// The shape in one line: `ramp 1, 2, 50% (the last repeats); bake 5m,
/// then 30s; zone by zone`.
fn rollout(plan: &Plan) -> String {
    let shape = &plan.shape;
    let ramp: Vec<String> = shape.ramp.iter().map(ToString::to_string).collect();
    let mut text = match ramp.as_slice() {
        [one] => format!("batches of {one}"),
        _ => format!("ramp {} (the last repeats)", ramp.join(", ")),
    };
    let bakes: Vec<String> = shape
        .bake
        .iter()
        .map(|d| humantime::format_duration(*d).to_string())
        .collect();
    match bakes.as_slice() {
        [] => text.push_str("; no bake"),
        [one] => {
            let _ = write!(text, "; bake {one} after every batch");
        }
        [first @ .., last] => {
            let _ = write!(text, "; bake {}, then {last}", first.join(", "));
        }
    }
    if shape.by_zone {
        text.push_str("; zone by zone");
    }
    let gated = plan.batches.iter().filter(|b| !b.gates.is_empty()).count();
    if gated > 0 {
        let kinds: Vec<String> = plan
            .batches
            .iter()
            .find(|b| !b.gates.is_empty())
            .map(|b| {
                b.gates
                    .iter()
                    .map(|g| format!("gates[{}] {}", g.index, g.kind()))
                    .collect()
            })
            .unwrap_or_default();
        let _ = write!(
            text,
            "; {} gated by {} during their bake",
            if gated == plan.batches.len() {
                "every batch".to_string()
            } else {
                format!("{gated} of {} batches", plan.batches.len())
            },
            kinds.join(", ")
        );
    }
    text
}

/// Run-level steps on the machine running shipit, under a heading.
fn local(out: &mut String, heading: &str, steps: &[super::Step], full: bool) {
    if steps.is_empty() {
        return;
    }
    let _ = writeln!(out, "\n{heading}");
    let whole = Pipeline {
        host: "local".into(),
        steps: steps.to_vec(),
    };
    section(out, std::slice::from_ref(&whole), full);
}

fn section(out: &mut String, pipelines: &[Pipeline], full: bool) {
    for pipeline in pipelines {
        for (i, step) in pipeline.steps.iter().enumerate() {
            let host = if i == 0 { pipeline.host.as_str() } else { "" };
            let _ = writeln!(
                out,
                "  {host:<8}  {:<13}  {}",
                step.kind.as_str(),
                action(&step.action, full)
            );
        }
    }
}

fn action(action: &Action, full: bool) -> String {
    let show = |cmd: &crate::shell::Cmd| {
        if full {
            cmd.display_full()
        } else {
            cmd.display()
        }
    };
    match action {
        Action::Remote { cmd } => show(cmd),
        Action::Upload { cmd } => format!("{}  < release archive", show(cmd)),
        Action::Local { cmd } => format!("local: {}", show(cmd)),
        Action::Health { check } => health(check),
        Action::Lb { lb } => lb.to_string(),
        Action::Nothing { reason } => format!("({reason})"),
    }
}

/// A health step: what each try asks, how often, and for how long.
fn health(check: &HealthCheck) -> String {
    let mut s = match &check.kind {
        CheckKind::Http {
            url,
            expect_status,
            expect_body,
            from,
        } => {
            let mut s = format!("GET {url}");
            if *from == CheckFrom::Host {
                s.push_str(" on the host");
            }
            let _ = write!(s, " until status {expect_status}");
            if let Some(body) = expect_body {
                let _ = write!(s, " and body contains {body:?}");
            }
            s
        }
        CheckKind::Command { cmd } => format!(
            "run `{}` on the host until it exits 0",
            super::command_line(cmd)
        ),
    };
    if check.healthy_threshold > 1 {
        let _ = write!(s, ", {} times in a row", check.healthy_threshold);
    }
    let _ = write!(
        s,
        " (every {}, up to {})",
        humantime::format_duration(check.interval),
        humantime::format_duration(check.timeout)
    );
    if !check.min_healthy_time.is_zero() {
        let _ = write!(
            s,
            "; then watched for {} once back in service",
            humantime::format_duration(check.min_healthy_time)
        );
        if !check.start_period.is_zero() {
            let _ = write!(
                s,
                " (failures in the first {} after the restart do not count)",
                humantime::format_duration(check.start_period)
            );
        }
    }
    s
}
