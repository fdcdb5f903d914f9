//! `shipit STAGE releases`: what each host has, side by side.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use super::{Context, fleet};
use crate::error::Error;
use crate::exit::Exit;
use crate::host::{Current, HostFacts};

pub async fn run(ctx: &Context) -> Result<Exit, Error> {
    let stage = &ctx.stage;
    let transport = fleet::connect(stage, &ctx.hosts).await?;
    let facts = fleet::probe(&transport, stage, &ctx.hosts).await;
    transport.close().await;
    let facts = facts?;
    let hosts: Vec<(&str, &HostFacts)> = ctx
        .hosts
        .iter()
        .filter_map(|h| facts.get(&h.name).map(|f| (h.name.as_str(), f)))
        .collect();
    ctx.print(&render(&stage.app.deploy_to, &hosts));
    Ok(Exit::Success)
}

/// One block per host, newest release first; a closing line says whether
/// the hosts agree on what is live.
pub fn render(deploy_to: &str, hosts: &[(&str, &HostFacts)]) -> String {
    let mut out = String::new();
    for (name, facts) in hosts {
        let _ = writeln!(out, "{name}:");
        if !facts.deploy_to_exists {
            let _ = writeln!(out, "  (no {deploy_to} yet: never deployed)");
            continue;
        }
        match &facts.current {
            Current::Elsewhere { .. } | Current::NotALink => {
                let _ = writeln!(out, "  {}", facts.current.describe());
            }
            Current::Missing | Current::Release(_) => {}
        }
        if facts.releases.is_empty() {
            let _ = writeln!(out, "  (no releases)");
        }
        for release in facts.releases.iter().rev() {
            let mark = if facts.current.release() == Some(&release.id) {
                "*"
            } else {
                " "
            };
            let mut notes = Vec::new();
            if facts.current.release() == Some(&release.id) {
                notes.push("current");
            }
            if !release.finished {
                notes.push("unfinished");
            }
            if release.bad {
                notes.push("bad");
            }
            let line = format!(
                "  {mark} {}  {:<14} {}",
                release.id,
                release.revision,
                notes.join(", ")
            );
            let _ = writeln!(out, "{}", line.trim_end());
        }
    }
    let live: BTreeSet<String> = hosts
        .iter()
        .map(|(_, f)| {
            f.current
                .release()
                .map_or("none".to_string(), ToString::to_string)
        })
        .collect();
    if live.len() > 1 {
        let _ = writeln!(
            out,
            "\nHOSTS DISAGREE: current releases are {}",
            live.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    out
}
