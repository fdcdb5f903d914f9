//! Fixtures shared by unit tests.

use std::collections::BTreeMap;
use std::path::Path;

use crate::config::{self, Stage};
use crate::host::{Current, HostFacts, ReleaseId, ReleaseInfo};

/// A stage named `production` with `hosts` hosts (web1…), plus `extra` TOML.
pub fn stage(hosts: usize, extra: &str) -> Stage {
    let list: Vec<String> = (1..=hosts)
        .map(|i| format!("{{ name = \"web{i}\", address = \"10.0.0.{}\" }}", 10 + i))
        .collect();
    let text = format!(
        "[app]\nname = \"shop\"\ndeploy_to = \"/srv/shop\"\nsource = \"dist\"\n{extra}\n\
         [stages.production]\nhosts = [{}]\n",
        list.join(", ")
    );
    let config =
        config::from_str(Path::new("/p/deploy.toml"), &text).unwrap_or_else(|e| panic!("{e}"));
    config.stages["production"].clone()
}

pub fn id(n: u32) -> ReleaseId {
    format!("2026112210{n:04}").parse().unwrap()
}

/// Facts for hosts that all run release `current` out of `releases`.
pub fn facts(stage: &Stage, current: Option<u32>, releases: &[u32]) -> BTreeMap<String, HostFacts> {
    stage
        .hosts
        .iter()
        .map(|h| {
            let f = HostFacts {
                deploy_to_exists: true,
                deploy_to_writable: true,
                current: current.map_or(Current::Missing, |n| Current::Release(id(n))),
                releases: releases
                    .iter()
                    .map(|&n| ReleaseInfo {
                        id: id(n),
                        finished: true,
                        bad: false,
                        revision: format!("rev{n}"),
                    })
                    .collect(),
                ..Default::default()
            };
            (h.name.clone(), f)
        })
        .collect()
}

pub fn run() -> crate::plan::Run {
    crate::plan::Run {
        id: "run-1".into(),
        by: "ana@laptop".into(),
        rollback_on_abort: false,
    }
}
