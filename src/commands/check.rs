//! `shipit STAGE check`: can this stage be deployed to right now? Connects
//! to every host and runs read-only checks, then prints a table (host ×
//! check) and the reason for everything that is not ok. Changes nothing:
//! the probe and `Layout::check` only read, the health URL gets one GET,
//! and the load balancer commands are only syntax-checked (`sh -n`), never
//! run.
//!
//! Exit status: 0 if nothing failed, 1 if a check failed, 3 if a host could
//! not be reached (its other checks are skipped).

use std::fmt::Write as _;

use futures::future::join_all;

use super::lock::is_stale;
use super::{Context, fleet};
use crate::config::template::Var;
use crate::config::{CheckFrom, HealthKind};
use crate::config::{Host, Source, Stage};
use crate::error::Error;
use crate::execute::health;
use crate::exit::Exit;
use crate::host::check::{self, Found, Program, Readiness, Status, Verdict};
use crate::host::{HostFacts, Layout};
use crate::plan::{CheckKind, HealthCheck};
use crate::transport::ssh::SshTransport;
use crate::transport::{ExecRequest, Quiet, Transport, TransportError};

/// The columns of the table, in order.
pub const CHECKS: [&str; 7] = [
    "connect",
    "deploy_to",
    "shared_files",
    "restart",
    "health",
    "lb",
    "lock",
];

pub async fn run(ctx: &Context) -> Result<Exit, Error> {
    let stage = &ctx.stage;
    let (transport, errors) = fleet::connect_each(stage, &ctx.hosts).await;
    let client = health::client();
    let prober = health::Prober {
        client: &client,
        transport: &transport,
        command_timeout: stage.ssh.command_timeout,
    };
    let rows = join_all(
        ctx.hosts
            .iter()
            .map(|host| check_host(stage, host, &transport, &errors, &prober)),
    )
    .await;
    transport.close().await;

    let rows: Vec<(&str, Vec<Verdict>)> = ctx
        .hosts
        .iter()
        .map(|h| h.name.as_str())
        .zip(rows)
        .collect();
    print!("{}", render(&rows, ctx.global.verbose));

    let unreachable: Vec<&str> = rows
        .iter()
        .filter(|(_, cells)| cells[0].status == Status::Fail)
        .map(|(host, _)| *host)
        .collect();
    let failed: Vec<String> = rows
        .iter()
        .flat_map(|(host, cells)| {
            CHECKS
                .iter()
                .zip(cells)
                .skip(1)
                .filter(|(_, v)| v.status == Status::Fail)
                .map(move |(check, _)| format!("{host} {check}"))
        })
        .collect();
    if !unreachable.is_empty() {
        let mut message = format!(
            "check: cannot reach {} (its other checks were skipped)",
            unreachable.join(", ")
        );
        if !failed.is_empty() {
            let _ = write!(message, "; failed: {}", failed.join(", "));
        }
        return Err(Error::Run {
            exit: Exit::Connection,
            message,
        });
    }
    if !failed.is_empty() {
        return Err(Error::Run {
            exit: Exit::FailedUnchanged,
            message: format!("check failed: {}", failed.join(", ")),
        });
    }
    Ok(Exit::Success)
}

/// Every check on one host, in `CHECKS` order.
async fn check_host(
    stage: &Stage,
    host: &Host,
    transport: &SshTransport,
    errors: &[TransportError],
    prober: &health::Prober<'_, SshTransport>,
) -> Vec<Verdict> {
    let lb = check_lb(stage, host, transport);
    if !transport.is_connected(&host.name) {
        let prefix = format!("{}: ", host.name);
        let why = errors
            .iter()
            .map(ToString::to_string)
            .find(|e| e.starts_with(&prefix))
            .map(|e| e[prefix.len()..].to_string())
            .unwrap_or_else(|| "cannot connect".into());
        return partial_row(vec![Verdict::fail(why)], "not connected", lb.await);
    }

    let layout = Layout::new(&stage.app.deploy_to);
    let program = stage
        .app
        .restart
        .as_ref()
        .map(|t| Program::of(&t.render_shell(&stage.vars(host, "")), layout.deploy_to()));
    let probe = fleet::probe_host(transport, stage, &host.name);
    let readiness = read_readiness(transport, stage, &host.name, &layout, program.as_ref());
    let (facts, readiness, lb) = tokio::join!(probe, readiness, lb);
    let (facts, readiness) = match (facts, readiness) {
        (Ok(f), Ok(r)) => (f, r),
        (Err(e), _) | (_, Err(e)) => {
            let known = vec![
                Verdict::ok("connected"),
                Verdict::fail(format!("cannot read the host: {e}")),
            ];
            return partial_row(known, "the host could not be read", lb);
        }
    };
    vec![
        Verdict::ok("connected"),
        check::deploy_to(&layout, &readiness.deploy_to, &facts),
        check::shared_files(&layout, &stage.app.shared_files, &facts),
        check::restart(
            &layout,
            program.as_ref(),
            &readiness.restart,
            in_source(stage, program.as_ref()).as_ref(),
        ),
        check_health(stage, host, &facts, prober).await,
        lb,
        check::lock(&stage.name, &facts, is_stale),
    ]
}

/// A program inside the release, looked up where the next release is
/// made from: the local `app.source` directory. Unknown (`None`) for an
/// archive, or when `app.build` makes the source (it has not run).
fn in_source(stage: &Stage, program: Option<&Program>) -> Option<Found> {
    use std::os::unix::fs::PermissionsExt;
    let Some(Program::InRelease(path)) = program else {
        return None;
    };
    let Source::Directory(dir) = &stage.app.source else {
        return None;
    };
    if stage.app.build.is_some() || !dir.is_dir() {
        return None;
    }
    let file = dir.join(path);
    Some(match std::fs::metadata(&file) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => {
            Found::Yes(file.display().to_string())
        }
        Ok(_) => Found::NotExecutable,
        Err(_) => Found::Missing,
    })
}

/// A row of which only the first checks (`known`) and the local `lb`
/// check could run; the others are skipped for `why_not`.
fn partial_row(known: Vec<Verdict>, why_not: &str, lb: Verdict) -> Vec<Verdict> {
    let mut known = known.into_iter();
    CHECKS
        .iter()
        .map(|name| match known.next() {
            Some(v) => v,
            None if *name == "lb" => lb.clone(),
            None => Verdict::skip(why_not),
        })
        .collect()
}

async fn read_readiness(
    transport: &SshTransport,
    stage: &Stage,
    host: &str,
    layout: &Layout,
    program: Option<&Program>,
) -> Result<Readiness, String> {
    let request = ExecRequest {
        command: layout.check(program.unwrap_or(&Program::Unclear)).render(),
        stdin: None,
        timeout: Some(stage.ssh.connect_timeout * 3),
    };
    match transport.exec(host, request, &Quiet).await {
        Ok(out) if out.exit.success() => Readiness::parse(&out.stdout_text()),
        Ok(out) => Err(format!("{} {}", out.exit, out.stderr_tail(3))),
        Err(e) => Err(e.to_string()),
    }
}

/// One try of the host's health check (its role's, if it has one), as a
/// deploy would make it. On a host that runs no shipit release yet the
/// answer is shown but cannot fail the check. The body is judged only
/// where the expectation resolves for the live release (it names
/// `{release}` or `{revision}`); a literal `expect_body` describes the
/// release about to be deployed, so before a deploy only the status can be
/// judged. A command check runs in the live release, without `[env]`.
async fn check_health(
    stage: &Stage,
    host: &Host,
    facts: &HostFacts,
    prober: &health::Prober<'_, SshTransport>,
) -> Verdict {
    let settings = stage.for_host(host);
    let Some(h) = &settings.health else {
        return Verdict::skip("no [health]");
    };
    let live = facts.current.release();
    let Some(release) = live else {
        if let HealthKind::Command { .. } = h.check {
            return Verdict::skip(
                "no shipit release is current; the command check runs in the release",
            );
        }
        // Without a release there is nothing to expect in the body.
        let vars = stage.vars(host, "");
        let check = HealthCheck {
            kind: match &h.check {
                HealthKind::Http {
                    url,
                    from,
                    expect_status,
                    ..
                } => CheckKind::Http {
                    url: url.render_plain(&vars),
                    expect_status: *expect_status,
                    expect_body: None,
                    from: *from,
                },
                HealthKind::Command { .. } => unreachable!("skipped above"),
            },
            timeout: h.request_timeout,
            interval: h.interval,
            request_timeout: h.request_timeout,
            healthy_threshold: 1,
            start_period: std::time::Duration::ZERO,
            min_healthy_time: std::time::Duration::ZERO,
        };
        let seen = prober.probe(&host.name, &check).await;
        return health_verdict(&check, false, true, &seen);
    };
    let revision = facts
        .release(release)
        .map(|r| r.revision.clone())
        .unwrap_or_default();
    let Some(mut check) = crate::plan::health_check(stage, host, release, &revision) else {
        return Verdict::skip("no [health]");
    };
    check.timeout = check.request_timeout;
    let body_judged = match &h.check {
        HealthKind::Http { expect_body, .. } => expect_body
            .as_ref()
            .is_none_or(|b| b.uses(Var::Release) || b.uses(Var::Revision)),
        HealthKind::Command { .. } => true,
    };
    let seen = prober.probe(&host.name, &check).await;
    health_verdict(&check, true, body_judged, &seen)
}

/// The health cell, from what one try saw. `live`: the host runs a shipit
/// release; `body_judged`: `expect_body` (if any) resolves for it.
fn health_verdict(
    check: &HealthCheck,
    live: bool,
    body_judged: bool,
    seen: &health::Probe,
) -> Verdict {
    let (label, expect_status, expect_body) = match &check.kind {
        CheckKind::Http {
            url,
            from,
            expect_status,
            expect_body,
        } => (
            match from {
                CheckFrom::Controller => url.clone(),
                CheckFrom::Host => format!("{url} (on the host)"),
            },
            *expect_status,
            expect_body.clone(),
        ),
        CheckKind::Command { cmd } => (format!("`{}`", crate::plan::command_line(cmd)), 0, None),
    };
    let url = &label;
    let mut status_only = check.clone();
    if let CheckKind::Http { expect_body, .. } = &mut status_only.kind {
        *expect_body = None;
    }
    match seen {
        health::Probe::Healthy if live => Verdict::ok(format!("{url}: healthy")),
        health::Probe::Healthy => Verdict::skip(format!(
            "no shipit release is current; {url} answers: healthy"
        )),
        _ if !live => Verdict::skip(format!(
            "no shipit release is current; {url} answers: {}",
            seen.describe(&status_only)
        )),
        health::Probe::Unexpected { status, body } if !body_judged && *status == expect_status => {
            Verdict::ok_noted(format!(
                "{url}: status {status}; body not judged: expect_body {:?} is a literal, so it describes \
                 the release being deployed, not the live one (which answers {:?})",
                expect_body.as_deref().unwrap_or_default(),
                excerpt(body)
            ))
        }
        _ if !body_judged => Verdict::fail(format!("{url}: {}", seen.describe(&status_only))),
        _ => Verdict::fail(format!("{url}: {}", seen.describe(check))),
    }
}

/// The start of a response body, for a reason line.
fn excerpt(body: &str) -> String {
    let body = body.trim();
    match body.char_indices().nth(80) {
        Some((end, _)) => format!("{}…", &body[..end]),
        None => body.to_string(),
    }
}

/// The load balancer, for this host, as its driver judges it (asked,
/// never changed; commands are parsed, never run).
async fn check_lb<T: Transport>(stage: &Stage, host: &Host, transport: &T) -> Verdict {
    let stage = stage.for_host(host);
    let Some(driver) = &stage.lb else {
        return Verdict::skip("no [lb]");
    };
    let Some(member) = crate::execute::lb::members(stage, std::slice::from_ref(host), None)
        .into_iter()
        .next()
    else {
        return Verdict::skip("no [lb]");
    };
    let reach = crate::execute::lb::Reach {
        transport,
        local: &crate::transport::local::LocalTransport,
    };
    let never = tokio_util::sync::CancellationToken::new();
    let ctx = crate::lb::LbCtx {
        remote: &reach,
        observer: &Quiet,
        command_timeout: stage.ssh.command_timeout,
        cancel: &never,
    };
    driver.check(&ctx, &member).await
}

/// The table, then one line per cell that is not ok (every cell with
/// `verbose`). A reason shared by every host is printed once.
pub fn render(rows: &[(&str, Vec<Verdict>)], verbose: bool) -> String {
    let width = rows.iter().map(|(h, _)| h.len()).max().unwrap_or(4).max(4);
    let mut out = String::new();
    let _ = write!(out, "{:<width$}", "HOST");
    for name in CHECKS {
        let _ = write!(out, "  {:<w$}", name.to_uppercase(), w = name.len().max(4));
    }
    out.push('\n');
    for (host, cells) in rows {
        let mut line = format!("{host:<width$}");
        for (name, cell) in CHECKS.iter().zip(cells) {
            let _ = write!(
                line,
                "  {:<w$}",
                cell.status.as_str(),
                w = name.len().max(4)
            );
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }

    let mut details = Vec::new();
    for (i, check) in CHECKS.iter().enumerate() {
        let shown = |v: &Verdict| verbose || v.status != Status::Ok;
        let first = &rows.first().map(|(_, c)| &c[i]);
        if rows.len() > 1 && rows.iter().all(|(_, c)| Some(&c[i]) == *first) {
            if let Some(v) = first.filter(|v| shown(v)) {
                details.push(("(all)".to_string(), *check, v));
            }
            continue;
        }
        for (host, cells) in rows {
            if shown(&cells[i]) {
                details.push((host.to_string(), *check, &cells[i]));
            }
        }
    }
    if !details.is_empty() {
        out.push('\n');
        let hw = details.iter().map(|d| d.0.len()).max().unwrap_or(0);
        let cw = details.iter().map(|d| d.1.len()).max().unwrap_or(0);
        for (host, check, v) in details {
            let _ = writeln!(
                out,
                "{host:<hw$}  {check:<cw$}  {:<4}  {}",
                v.status.as_str(),
                v.reason
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_and_the_reasons() {
        let row = |deploy_to: Verdict| {
            vec![
                Verdict::ok("connected"),
                deploy_to,
                Verdict::skip("no app.shared_files"),
                Verdict::ok("bin/restart found"),
                Verdict::ok("healthy"),
                Verdict::skip("no [lb]"),
                Verdict::ok("free"),
            ]
        };
        let rows = vec![
            ("web1", row(Verdict::ok("/srv/a is writable"))),
            ("web22", row(Verdict::fail("/srv/a is not writable"))),
        ];
        assert_eq!(
            render(&rows, false),
            "HOST   CONNECT  DEPLOY_TO  SHARED_FILES  RESTART  HEALTH  LB    LOCK\n\
             web1   ok       ok         skip          ok       ok      skip  ok\n\
             web22  ok       FAIL       skip          ok       ok      skip  ok\n\
             \n\
             web22  deploy_to     FAIL  /srv/a is not writable\n\
             (all)  shared_files  skip  no app.shared_files\n\
             (all)  lb            skip  no [lb]\n"
        );
        assert!(render(&rows, true).contains("(all)  lock          ok    free\n"));
    }

    #[test]
    fn rows_of_hosts_that_could_not_be_read() {
        let row = partial_row(
            vec![Verdict::fail("refused")],
            "not connected",
            Verdict::ok("lb"),
        );
        let statuses: Vec<&str> = row.iter().map(|v| v.status.as_str()).collect();
        assert_eq!(
            statuses,
            ["FAIL", "skip", "skip", "skip", "skip", "ok", "skip"]
        );
        assert_eq!(row[6], Verdict::skip("not connected"));
    }

    #[tokio::test]
    async fn lb_commands_are_parsed_and_looked_up_but_never_run() {
        let tmp = tempfile::tempdir().unwrap();
        let marker = tmp.path().join("ran");
        let stage = |drain: &str| {
            crate::testing::stage(
                1,
                &format!(
                    "[lb]\ndrain = {}\nenable = \"echo enable {{name}}\"\n",
                    toml::Value::String(drain.into())
                ),
            )
        };
        let touch = format!("touch {}", marker.display());
        let s = stage(&touch);
        let v = check_lb(&s, &s.hosts[0], &crate::transport::local::LocalTransport).await;
        assert_eq!(
            v,
            Verdict::ok("drain and enable parse; `touch`, `echo` found (not run)")
        );
        assert!(!marker.exists());

        let s = stage("if then fi");
        let v = check_lb(&s, &s.hosts[0], &crate::transport::local::LocalTransport).await;
        assert_eq!(v.status, Status::Fail);
        assert!(
            v.reason.starts_with("lb.drain is not valid sh: "),
            "{}",
            v.reason
        );

        let s = stage("no-such-lb-tool drain {name}");
        let v = check_lb(&s, &s.hosts[0], &crate::transport::local::LocalTransport).await;
        assert_eq!(
            v,
            Verdict::fail("lb.drain: `no-such-lb-tool` not found on this machine")
        );
        let s = crate::testing::stage(1, "");
        assert_eq!(
            check_lb(&s, &s.hosts[0], &crate::transport::local::LocalTransport).await,
            Verdict::skip("no [lb]")
        );
    }

    #[test]
    fn health_judges_the_body_only_where_it_resolves_for_the_live_release() {
        let http = |body: &str| HealthCheck {
            kind: CheckKind::Http {
                url: "http://w/health".into(),
                expect_status: 200,
                expect_body: Some(body.into()),
                from: CheckFrom::Controller,
            },
            timeout: std::time::Duration::from_secs(1),
            interval: std::time::Duration::from_secs(1),
            request_timeout: std::time::Duration::from_secs(1),
            healthy_threshold: 1,
            start_period: std::time::Duration::ZERO,
            min_healthy_time: std::time::Duration::ZERO,
        };
        let answer = |status: u16, body: &str| health::Probe::Unexpected {
            status,
            body: body.into(),
        };
        // `release={release}`, rendered for the live release: judged.
        let live = http("release=20261122101500");
        assert_eq!(
            health_verdict(&live, true, true, &health::Probe::Healthy),
            Verdict::ok("http://w/health: healthy")
        );
        assert_eq!(
            health_verdict(&live, true, true, &answer(200, "release=20261121000000")),
            Verdict::fail(
                "http://w/health: body lacks \"release=20261122101500\"; body: \"release=20261121000000\""
            )
        );
        // A literal is for the next release: the status alone is judged.
        let next = http("version=v2");
        assert_eq!(
            health_verdict(&next, true, false, &answer(200, "version=v1")),
            Verdict::ok_noted(
                "http://w/health: status 200; body not judged: expect_body \"version=v2\" is a literal, \
                 so it describes the release being deployed, not the live one (which answers \"version=v1\")"
            )
        );
        assert_eq!(
            health_verdict(&next, true, false, &answer(503, "version=v1")),
            Verdict::fail("http://w/health: status 503 (want 200); body: \"version=v1\"")
        );
        assert_eq!(
            health_verdict(&next, true, false, &health::Probe::Healthy),
            Verdict::ok("http://w/health: healthy")
        );
        assert_eq!(
            health_verdict(&next, false, false, &answer(503, "")).status,
            Status::Skip
        );
        assert_eq!(
            health_verdict(&next, true, false, &health::Probe::Error("refused".into())),
            Verdict::fail("http://w/health: refused")
        );
    }
}
