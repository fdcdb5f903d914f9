//! `shipit STAGE status`: what is live on each host, who holds the deploy
//! lock, how the last run went, as the hosts' journals tell it, and where
//! a running deploy or rollback stands (batch, bake, pause), as it
//! publishes it.

use std::fmt::Write as _;

use super::lock::is_stale;
use super::{Context, fleet, steer};
use crate::error::Error;
use crate::exit::Exit;
use crate::host::lock::LockKind;
use crate::host::{Current, HostFacts, Layout};

pub async fn run(ctx: &Context) -> Result<Exit, Error> {
    let stage = &ctx.stage;
    let transport = fleet::connect(stage, &ctx.hosts).await?;
    let facts = fleet::probe(&transport, stage, &ctx.hosts).await;
    // A deploy or rollback holding the lock says where it is.
    let holders: Vec<&str> = facts
        .iter()
        .flat_map(|f| f.iter())
        .filter(|(_, f)| {
            f.lock.as_ref().is_some_and(|l| {
                l.info
                    .as_ref()
                    .is_some_and(|i| matches!(i.kind, LockKind::Deploy | LockKind::Rollback))
            })
        })
        .map(|(h, _)| h.as_str())
        .collect();
    let layout = Layout::new(&stage.app.deploy_to);
    let running = steer::running(&transport, &layout, &holders).await;
    transport.close().await;
    let facts = facts?;
    let hosts: Vec<(&str, &HostFacts)> = ctx
        .hosts
        .iter()
        .filter_map(|h| facts.get(&h.name).map(|f| (h.name.as_str(), f)))
        .collect();
    let mut text = render(&stage.name, &hosts, is_stale);
    if let Some((state, age)) = running {
        let stale = hosts
            .iter()
            .filter_map(|(_, f)| f.lock.as_ref())
            .find(|l| l.run == state.run)
            .is_some_and(is_stale);
        text.push('\n');
        text.push_str(&steer::describe(&state, age, stale, &stage.name));
    }
    ctx.print(&text);
    Ok(Exit::Success)
}

pub fn render(
    stage: &str,
    hosts: &[(&str, &HostFacts)],
    stale: impl Fn(&crate::host::lock::HeldLock) -> bool,
) -> String {
    let mut out = String::new();
    let width = hosts.iter().map(|(h, _)| h.len()).max().unwrap_or(4).max(4);
    let _ = writeln!(out, "{:<width$}  {:<14}  LAST RUN", "HOST", "CURRENT");
    // A run whose lock is alive is going on, not interrupted.
    let live: Vec<&str> = hosts
        .iter()
        .filter_map(|(_, f)| f.lock.as_ref())
        .filter(|l| !stale(l))
        .map(|l| l.run.as_str())
        .collect();
    let mut resumable = false;
    for (name, facts) in hosts {
        let current = match &facts.current {
            Current::Release(id) => id.to_string(),
            Current::Missing => "-".to_string(),
            Current::Elsewhere { link, leads_to } => match leads_to {
                Some(path) if path != link => format!("-> {link} ({path}, not a release)"),
                Some(_) => format!("-> {link} (not a release)"),
                None => format!("-> {link} (dangling)"),
            },
            Current::NotALink => "(not a link)".to_string(),
        };
        let last = match &facts.last_run {
            None => "none recorded".to_string(),
            Some(run) => {
                let mut text = format!(
                    "{} of {} (run {}, started {})",
                    run.op, run.release, run.run, run.started
                );
                match &run.finished {
                    Some(result) => {
                        let _ = write!(text, ": finished, {result}");
                    }
                    None if live.contains(&run.run.as_str()) => {
                        let _ = write!(text, ": RUNNING, last {}", run.last_event());
                    }
                    None => {
                        resumable |= run.op == "deploy";
                        let _ = write!(text, ": INTERRUPTED after {}", run.last_event());
                        if run.left_drained() {
                            text.push_str(", left drained");
                        }
                    }
                }
                text
            }
        };
        let _ = writeln!(out, "{name:<width$}  {current:<14}  {last}");
    }
    let locks: Vec<(&str, &crate::host::lock::HeldLock)> = hosts
        .iter()
        .filter_map(|(h, f)| f.lock.as_ref().map(|l| (*h, l)))
        .collect();
    match locks.first() {
        None => {
            let _ = writeln!(out, "\nlock: free");
        }
        Some((_, lock)) => {
            let on: Vec<&str> = locks.iter().map(|(h, _)| *h).collect();
            let state = if stale(lock) {
                format!(
                    "STALE: no heartbeat for {}s; take it over with --break-stale-lock",
                    lock.age_secs
                )
            } else {
                format!("heartbeat {}s ago", lock.age_secs)
            };
            let _ = writeln!(
                out,
                "\nlock: held on {} by {}; {state}",
                on.join(", "),
                lock.describe()
            );
        }
    }
    if resumable {
        let _ = writeln!(
            out,
            "\nA deploy was interrupted: `shipit {stage} deploy --resume` continues it; a plain deploy or \
             rollback first puts back hosts it left drained."
        );
    }
    out
}
