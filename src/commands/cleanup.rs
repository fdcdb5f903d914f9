//! `shipit STAGE cleanup`: applies `keep_releases` now, with the same rule a
//! deploy applies at its end (`host::releases::cleanup`), under the deploy
//! lock. `--dry-run` reads the hosts and shows what would go.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use futures::future::join_all;

use super::lock::{self, LockOptions};
use super::{Context, Signals, fleet};
use crate::cli::CleanupArgs;
use crate::config::Host;
use crate::error::Error;
use crate::exit::Exit;
use crate::host::lock::LockKind;
use crate::host::{HostFacts, Layout, ReleaseId, releases};
use crate::transport::ssh::SshTransport;
use crate::transport::{ExecRequest, Quiet, Transport};

pub async fn run(ctx: &Context, args: &CleanupArgs, signals: &Signals) -> Result<Exit, Error> {
    let stage = &ctx.stage;
    let transport = fleet::connect(stage, &ctx.hosts).await?;
    let result = async {
        if args.dry_run {
            let facts = fleet::probe(&transport, stage, &ctx.hosts).await?;
            let plan = removals(&ctx.hosts, &facts, stage.app.keep_releases);
            print!("{}", render(&plan, true));
            return Ok(Exit::Success);
        }
        let options = LockOptions {
            wait: args.lock.lock_wait,
            break_stale: args.lock.break_stale_lock,
        };
        let work = remove(ctx, &transport);
        lock::holding(
            ctx,
            &transport,
            LockKind::Cleanup,
            &options,
            args.lock.message.clone(),
            &signals.cancel,
            work,
        )
        .await
    }
    .await;
    transport.close().await;
    result
}

async fn remove(ctx: &Context, transport: &SshTransport) -> Result<Exit, Error> {
    let stage = &ctx.stage;
    // Read under the lock: what no run can change meanwhile.
    let facts = fleet::probe(transport, stage, &ctx.hosts).await?;
    let plan = removals(&ctx.hosts, &facts, stage.app.keep_releases);
    let refused: Vec<String> = plan
        .iter()
        .filter_map(|h| h.refused.as_ref().map(|why| format!("{}: {why}", h.host)))
        .collect();
    let layout = Layout::new(&stage.app.deploy_to);
    let results = join_all(plan.iter().filter(|h| !h.remove.is_empty()).map(|h| {
        let request = ExecRequest {
            command: layout.remove_releases(&h.remove).render(),
            stdin: None,
            timeout: stage.ssh.command_timeout,
        };
        async move {
            let problem = match transport.exec(&h.host, request, &Quiet).await {
                Ok(out) if out.exit.success() => None,
                Ok(out) => Some(format!("{} ({}): {}", h.host, out.exit, out.stderr_tail(3))),
                Err(e) => Some(e.to_string()),
            };
            (h.host.clone(), problem)
        }
    }))
    .await;
    let failed: BTreeMap<String, String> = results
        .into_iter()
        .filter_map(|(host, problem)| problem.map(|p| (host, p)))
        .collect();
    let done: Vec<Removal> = plan
        .into_iter()
        .filter(|h| !failed.contains_key(&h.host))
        .collect();
    print!("{}", render(&done, false));
    if failed.is_empty() && refused.is_empty() {
        return Ok(Exit::Success);
    }
    let mut problems: Vec<String> = refused;
    problems.extend(failed.into_values());
    Err(Error::Run {
        exit: Exit::FailedUnchanged,
        message: format!(
            "cleanup did not run everywhere:\n  {}",
            problems.join("\n  ")
        ),
    })
}

/// What cleanup does on one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removal {
    pub host: String,
    pub remove: Vec<ReleaseId>,
    pub keep: Vec<ReleaseId>,
    /// Why nothing is removed on this host (`current` leads to no release).
    pub refused: Option<String>,
}

/// Per host, in `hosts` order: the releases `keep_releases` lets go. Also
/// kept: the release of an interrupted deploy, so `deploy --resume` still
/// finds what it uploaded.
pub fn removals(
    hosts: &[Host],
    facts: &BTreeMap<String, HostFacts>,
    keep_releases: usize,
) -> Vec<Removal> {
    hosts
        .iter()
        .filter_map(|h| {
            let f = facts.get(&h.name)?;
            let resumable: Option<ReleaseId> = f
                .last_run
                .as_ref()
                .filter(|r| r.interrupted() && r.op == "deploy")
                .and_then(|r| r.release.parse().ok());
            let protect: Vec<&ReleaseId> = resumable.iter().collect();
            let refused = releases::cleanup_refused(&f.current);
            let remove = if refused.is_some() {
                Vec::new()
            } else {
                releases::cleanup(&f.releases, f.current.release(), keep_releases, &protect)
            };
            let keep = f
                .releases
                .iter()
                .map(|r| r.id.clone())
                .filter(|id| !remove.contains(id))
                .collect();
            Some(Removal {
                host: h.name.clone(),
                remove,
                keep,
                refused,
            })
        })
        .collect()
}

pub fn render(plan: &[Removal], dry_run: bool) -> String {
    let width = plan.iter().map(|h| h.host.len()).max().unwrap_or(0);
    let mut out = String::new();
    for h in plan {
        let ids = |list: &[ReleaseId]| {
            list.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        };
        if let Some(why) = &h.refused {
            let _ = writeln!(out, "{:<width$}  nothing removed: {why}", h.host);
            continue;
        }
        if h.remove.is_empty() && h.keep.is_empty() {
            let _ = writeln!(out, "{:<width$}  no releases", h.host);
            continue;
        }
        let action = match (h.remove.is_empty(), dry_run) {
            (true, _) => "nothing to remove".to_string(),
            (false, true) => format!("would remove {}", ids(&h.remove)),
            (false, false) => format!("removed {}", ids(&h.remove)),
        };
        let _ = writeln!(out, "{:<width$}  {action}; kept {}", h.host, ids(&h.keep));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{facts, id, stage};

    #[test]
    fn keeps_what_keep_releases_says_and_shows_it() {
        let stage = stage(2, "keep_releases = 2");
        let mut facts = facts(&stage, Some(5), &[1, 2, 3, 4, 5]);
        facts.get_mut("web2").unwrap().releases.truncate(3);
        facts.get_mut("web2").unwrap().current = crate::host::Current::Release(id(3));
        let plan = removals(&stage.hosts, &facts, 2);
        assert_eq!(
            plan,
            [
                Removal {
                    host: "web1".into(),
                    remove: vec![id(1), id(2), id(3)],
                    keep: vec![id(4), id(5)],
                    refused: None,
                },
                Removal {
                    host: "web2".into(),
                    remove: vec![id(1)],
                    keep: vec![id(2), id(3)],
                    refused: None,
                },
            ]
        );
        assert_eq!(
            render(&plan, true),
            "web1  would remove 20261122100001 20261122100002 20261122100003; kept 20261122100004 20261122100005\n\
             web2  would remove 20261122100001; kept 20261122100002 20261122100003\n"
        );
        // Only the hosts asked about.
        assert_eq!(removals(&stage.hosts[1..], &facts, 2).len(), 1);
    }

    #[test]
    fn the_release_of_an_interrupted_deploy_stays() {
        let stage = stage(1, "");
        let mut facts = facts(&stage, Some(1), &[1]);
        facts
            .get_mut("web1")
            .unwrap()
            .releases
            .push(crate::host::ReleaseInfo {
                id: id(2),
                finished: false,
                bad: false,
                revision: String::new(),
            });
        assert_eq!(removals(&stage.hosts, &facts, 1)[0].remove, [id(2)]);
        let f = facts.get_mut("web1").unwrap();
        let journal = format!(
            "deploy_to writable\njournal follows\n{{\"run\":\"r1\",\"time\":\"t\",\"op\":\"deploy\",\"release\":\"{}\",\"event\":\"started\"}}\n",
            id(2)
        );
        f.last_run = HostFacts::parse("/srv/shop", &journal).unwrap().last_run;
        assert!(f.last_run.as_ref().unwrap().interrupted());
        assert!(removals(&stage.hosts, &facts, 1)[0].remove.is_empty());
    }

    #[test]
    fn a_host_whose_current_leads_to_no_release_is_left_alone() {
        let stage = stage(2, "");
        let mut facts = facts(&stage, Some(3), &[1, 2, 3]);
        facts.get_mut("web2").unwrap().current = crate::host::Current::Elsewhere {
            link: "/opt/hotfix".into(),
            leads_to: Some("/opt/hotfix".into()),
        };
        let plan = removals(&stage.hosts, &facts, 1);
        assert_eq!(plan[0].remove, [id(1)]);
        assert!(plan[1].remove.is_empty());
        assert_eq!(
            render(&plan, true).lines().nth(1).unwrap(),
            "web2  nothing removed: current -> /opt/hotfix, which is not a release in releases/; \
             nothing is removed on this host until current leads to a release"
        );
    }
}
