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
use crate::config::{Host, Stage};
use crate::error::Error;
use crate::execute::health;
use crate::exit::Exit;
use crate::host::check::{self, Program, Readiness, Status, Verdict};
use crate::host::{Current, HostFacts, Layout};
use crate::plan::HttpCheck;
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
    let rows = join_all(
        ctx.hosts
            .iter()
            .map(|host| check_host(stage, host, &transport, &errors, &client)),
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
    client: &reqwest::Client,
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
        check::restart(&layout, program.as_ref(), &readiness.restart),
        check_health(stage, host, &facts, client).await,
        lb,
        check::lock(&stage.name, &facts, is_stale),
    ]
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

/// One GET of the health URL. On a host that runs no shipit release yet
/// the answer is shown but cannot fail the check.
async fn check_health(
    stage: &Stage,
    host: &Host,
    facts: &HostFacts,
    client: &reqwest::Client,
) -> Verdict {
    let Some(h) = &stage.health else {
        return Verdict::skip("no [health]");
    };
    let release = match &facts.current {
        Current::Release(id) => Some(id.to_string()),
        _ => None,
    };
    let vars = stage.vars(host, release.as_deref().unwrap_or(""));
    let http = HttpCheck {
        url: h.url.render_plain(&vars),
        expect_status: h.expect_status,
        // Without a release there is nothing to expect in the body.
        expect_body: release
            .as_ref()
            .and(h.expect_body.as_ref())
            .map(|b| b.render_plain(&vars)),
        timeout: h.request_timeout,
        interval: h.interval,
        request_timeout: h.request_timeout,
    };
    let seen = health::probe(client, &http).await;
    let answer = match &seen {
        health::Probe::Healthy => "healthy".to_string(),
        other => other.describe(&http),
    };
    match (release, seen) {
        (Some(_), health::Probe::Healthy) => Verdict::ok(format!("{}: healthy", http.url)),
        (Some(_), _) => Verdict::fail(format!("{}: {answer}", http.url)),
        (None, _) => Verdict::skip(format!(
            "no shipit release is current; {} answers: {answer}",
            http.url
        )),
    }
}

/// The load balancer, for this host, as its driver judges it (asked,
/// never changed; commands are parsed, never run).
async fn check_lb<T: Transport>(stage: &Stage, host: &Host, transport: &T) -> Verdict {
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
}
