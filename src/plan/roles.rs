//! Roles in a rollout: which hosts run with which settings, in what order
//! the roles go, and which hosts share a capacity budget.
//!
//! - A **part** is the rolling hosts that run with the same settings (a
//!   role's `[roles.NAME.*]`, or the stage's own) at the same place in
//!   `rollout.role_order`. Each part is cut into batches by its own shape,
//!   with the one batching function ([`shape::batches`]).
//! - Parts at the same place go **together**: batch *i* of the run is batch
//!   *i* of each of them. With `role_order`, places go one after another:
//!   every batch of `web` before the first of `worker`.
//! - A **pool** is the hosts that serve the same traffic: those behind the
//!   same load balancer (same driver and settings), or, without one, those
//!   with the same settings. Each pool has its own `max_unavailable`, so a
//!   worker restarting never takes room from the web servers, and two roles
//!   behind one backend never have more than its budget out together.
//!
//! Everything here is pure: the planner calls it, and the executor calls
//! [`combine`] again to cut an undo by the same rules.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::{Host, Stage};

use super::build::PlanError;
use super::shape::{self, BatchShape, Candidate, NoRoom, Shape};

/// Rolling hosts with one set of settings at one place in the role order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Part {
    /// The role whose settings these hosts run with; `None`: the stage's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Its place in `rollout.role_order` (0-based; hosts with none of the
    /// roles listed come last). 0 for every part without a role order.
    pub step: usize,
    /// In rollout order.
    pub hosts: Vec<String>,
    pub shape: Shape,
    /// The capacity pool its hosts count against.
    pub pool: String,
}

/// Capacity pools: every host of the stage by pool, and each pool's budget.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Pools {
    /// Host name → pool name. The stage's own settings make the pool `""`;
    /// a role's, the pool named after the role (or after the first set of
    /// settings that shares its load balancer).
    pub of: BTreeMap<String, String>,
    /// Pool name → at most this many of its hosts out of service at once.
    pub max_unavailable: BTreeMap<String, usize>,
}

impl Pools {
    /// One pool for every host.
    pub fn single(hosts: impl IntoIterator<Item = String>, max_unavailable: usize) -> Pools {
        Pools {
            of: hosts.into_iter().map(|h| (h, String::new())).collect(),
            max_unavailable: BTreeMap::from([(String::new(), max_unavailable)]),
        }
    }

    /// The pool of `host` (`""` for a host it does not list).
    pub fn pool(&self, host: &str) -> &str {
        self.of.get(host).map_or("", String::as_str)
    }

    /// The budget of `pool`.
    pub fn limit(&self, pool: &str) -> usize {
        self.max_unavailable.get(pool).copied().unwrap_or(1)
    }
}

/// One part's hosts to place, for [`combine`].
#[derive(Debug, Clone)]
pub struct Piece {
    pub step: usize,
    pub candidates: Vec<Candidate>,
    pub shape: Shape,
    /// Hosts of the same pool out of service and not among `candidates`.
    pub elsewhere: Vec<String>,
}

/// Cuts each piece by its own shape ([`shape::batches`]), runs pieces at
/// the same step together (batch *i* of each), and steps one after
/// another. A batch made of several pieces' batches is watched as long as
/// the longest of their bakes.
pub fn combine(mut pieces: Vec<Piece>) -> Result<Vec<BatchShape>, NoRoom> {
    pieces.sort_by_key(|p| p.step);
    let mut out = Vec::new();
    let mut i = 0;
    while i < pieces.len() {
        let step = pieces[i].step;
        let mut cut: Vec<Vec<BatchShape>> = Vec::new();
        while i < pieces.len() && pieces[i].step == step {
            let p = &pieces[i];
            cut.push(shape::batches(&p.candidates, &p.shape, &p.elsewhere)?);
            i += 1;
        }
        let rounds = cut.iter().map(Vec::len).max().unwrap_or(0);
        for round in 0..rounds {
            let mut batch: Option<BatchShape> = None;
            for b in cut.iter().filter_map(|c| c.get(round)) {
                batch = Some(match batch {
                    None => b.clone(),
                    Some(mut acc) => {
                        acc.hosts.extend(b.hosts.iter().cloned());
                        acc.bake = acc.bake.max(b.bake);
                        if acc.zone != b.zone {
                            acc.zone = None;
                        }
                        acc
                    }
                });
            }
            out.extend(batch);
        }
    }
    Ok(out)
}

/// The settings each host of the stage runs with (`None`: the stage's own)
/// and the pool it counts against.
fn pool_names(stage: &Stage) -> BTreeMap<Option<String>, String> {
    let mut groups: Vec<Option<String>> = vec![None];
    groups.extend(stage.roles.keys().cloned().map(Some));
    // The load balancer a set of settings drains through, if any.
    let balancer = |group: &Option<String>| {
        stage
            .for_role(group.as_deref())
            .lb
            .as_ref()
            .map(|d| (d.name(), d.settings().to_string()))
    };
    let mut names: BTreeMap<Option<String>, String> = BTreeMap::new();
    for (i, group) in groups.iter().enumerate() {
        let shared = balancer(group).and_then(|mine| {
            groups[..i]
                .iter()
                .find(|earlier| balancer(earlier).as_ref() == Some(&mine))
        });
        let name = match shared {
            Some(earlier) => names[earlier].clone(),
            None => group.clone().unwrap_or_default(),
        };
        names.insert(group.clone(), name);
    }
    names
}

/// Where `host` goes in `role_order`: the first listed role it has; hosts
/// with none of them after all listed roles.
fn step_of(stage: &Stage, host: &Host) -> usize {
    let order = &stage.rollout.role_order;
    order
        .iter()
        .position(|r| host.roles.contains(r))
        .unwrap_or(order.len())
}

/// The parts of a run that rolls `rolling` (in rollout order), each with
/// its shape, and the stage's pools with their budgets.
pub fn parts(stage: &Stage, rolling: &[&Host]) -> Result<(Vec<Part>, Pools), PlanError> {
    let names = pool_names(stage);
    let group_of = |h: &Host| stage.role_of(h).map(str::to_string);
    let mut pools = Pools::default();
    for h in &stage.hosts {
        pools.of.insert(h.name.clone(), names[&group_of(h)].clone());
    }
    let mut parts: Vec<Part> = Vec::new();
    for host in rolling {
        let (role, step) = (group_of(host), step_of(stage, host));
        match parts.iter_mut().find(|p| p.role == role && p.step == step) {
            Some(part) => part.hosts.push(host.name.clone()),
            None => {
                let rollout = &stage.for_role(role.as_deref()).rollout;
                parts.push(Part {
                    pool: names[&role].clone(),
                    role,
                    step,
                    hosts: vec![host.name.clone()],
                    shape: Shape {
                        ramp: rollout.ramp.clone(),
                        bake: rollout.bake.clone(),
                        by_zone: rollout.by_zone,
                        max_unavailable: 0,
                        percent_of: 0,
                    },
                });
            }
        }
    }
    for part in &mut parts {
        part.shape.percent_of = part.hosts.len();
    }
    parts.sort_by_key(|p| p.step);

    // Each pool's budget: the smallest any of its settings asks for; a
    // setting without max_unavailable asks for its largest batch.
    for (group, pool) in &names {
        let in_pool = pools.of.values().filter(|p| *p == pool).count();
        if in_pool == 0 {
            continue;
        }
        let settings = stage.for_role(group.as_deref());
        let asked = match settings.rollout.max_unavailable {
            Some(limit) => match limit.limit_of(in_pool) {
                0 => {
                    let whose = match group {
                        None => format!("the {in_pool} hosts of stage {}", stage.name),
                        Some(role) => format!(
                            "the {in_pool} hosts of stage {} that share role {role}'s pool",
                            stage.name
                        ),
                    };
                    return Err(PlanError::Capacity(format!(
                        "rollout.max_unavailable = {limit} of {whose} is 0 hosts, so no host could ever be taken \
                         out of service; raise it"
                    )));
                }
                n => n,
            },
            None => {
                let largest = parts
                    .iter()
                    .filter(|p| &p.role == group)
                    .map(|p| p.shape.largest())
                    .max();
                match largest {
                    Some(n) => n,
                    // Nothing of these settings rolls: they ask for nothing.
                    None => continue,
                }
            }
        };
        let limit = pools.max_unavailable.entry(pool.clone()).or_insert(asked);
        *limit = (*limit).min(asked);
    }
    for part in &mut parts {
        part.shape.max_unavailable = pools.limit(&part.pool);
    }
    Ok((parts, pools))
}

/// Cuts the run's parts into batches: `out` says which hosts of the stage
/// are out of service already (and whether they come back with the run);
/// `hosts` are the stage's, for their zones.
pub fn cut(
    parts: &[Part],
    pools: &Pools,
    out: &BTreeMap<String, super::OutOfService>,
    hosts: &[Host],
) -> Result<Vec<BatchShape>, PlanError> {
    let zone = |name: &str| {
        hosts
            .iter()
            .find(|h| h.name == name)
            .and_then(|h| h.zone.clone())
    };
    let pieces = parts
        .iter()
        .map(|part| Piece {
            step: part.step,
            candidates: part
                .hosts
                .iter()
                .map(|h| Candidate {
                    host: h.clone(),
                    zone: zone(h),
                    out: out.contains_key(h),
                    returns: out.get(h).is_some_and(|o| o.returns),
                })
                .collect(),
            shape: part.shape.clone(),
            elsewhere: out
                .keys()
                .filter(|h| pools.pool(h) == part.pool && !part.hosts.contains(h))
                .cloned()
                .collect(),
        })
        .collect();
    combine(pieces).map_err(|e| PlanError::Capacity(e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{self, BatchSize};
    use crate::plan::{Action, CheckKind, Pipeline, deploy, rollback};
    use crate::testing::{self, facts};

    /// Three web servers behind a load balancer, one worker outside it.
    fn stage(extra: &str) -> Stage {
        let text = format!(
            r#"
[app]
name = "shop"
deploy_to = "/srv/shop"
source = "dist/"
restart = "bin/restart"
[health]
url = "http://{{address}}:8080/health"
expect_body = "revision={{revision}}"
[lb]
drain = "lbctl drain {{name}}"
enable = "lbctl enable {{name}}"
[roles.worker.app]
restart = "bin/restart-worker"
[roles.worker.lb]
driver = "none"
[roles.worker.health]
type = "command"
run = "bin/worker-health 3 revision={{revision}}"
{extra}
[stages.production]
hosts = [
  {{ name = "web1", roles = ["web"] }},
  {{ name = "web2", roles = ["web"] }},
  {{ name = "web3", roles = ["web"] }},
  {{ name = "jobs1", roles = ["worker"] }},
]
"#
        );
        let config =
            config::from_str(Path::new("/p/deploy.toml"), &text).unwrap_or_else(|e| panic!("{e}"));
        config.stages["production"].clone()
    }

    fn plan(stage: &Stage) -> Plan {
        let f = facts(stage, Some(2), &[1, 2]);
        deploy(&testing::deploy_input(stage, &f)).unwrap_or_else(|e| panic!("{e}"))
    }

    use crate::plan::Plan;

    fn batches(plan: &Plan) -> Vec<Vec<&str>> {
        plan.batches
            .iter()
            .map(|b| b.pipelines.iter().map(|p| p.host.as_str()).collect())
            .collect()
    }

    fn kinds(p: &Pipeline) -> Vec<&'static str> {
        p.steps.iter().map(|s| s.kind.as_str()).collect()
    }

    fn check_of(p: &Pipeline) -> &CheckKind {
        p.steps
            .iter()
            .find_map(|s| match &s.action {
                Action::Health { check } => Some(&check.kind),
                _ => None,
            })
            .expect("a health step")
    }

    #[test]
    fn each_host_runs_its_roles_pipeline() {
        let plan = plan(&stage(""));
        let web = plan.rolling("web1").unwrap();
        let worker = plan.rolling("jobs1").unwrap();
        assert_eq!(
            kinds(web),
            ["drain", "switch", "restart", "health", "enable"]
        );
        assert_eq!(
            kinds(worker),
            ["switch", "restart", "health"],
            "no load balancer, no drain"
        );
        let Action::Remote { cmd } = &worker.steps[1].action else {
            panic!()
        };
        assert!(
            cmd.render().ends_with("sh -c bin/restart-worker"),
            "{}",
            cmd.render()
        );
        let CheckKind::Command { cmd } = check_of(worker) else {
            panic!("a command check")
        };
        assert!(
            cmd.render()
                .starts_with("cd /srv/shop/releases/20261122100003 && ")
        );
        assert!(
            cmd.render()
                .ends_with("sh -c 'bin/worker-health 3 revision=abc'"),
            "{}",
            cmd.render()
        );
        let CheckKind::Http { expect_body, .. } = check_of(web) else {
            panic!()
        };
        assert_eq!(expect_body.as_deref(), Some("revision=abc"));
        // The undo goes back to each host's own REVISION of its release.
        let undo = plan.undo.iter().find(|p| p.host == "jobs1").unwrap();
        let CheckKind::Command { cmd } = check_of(undo) else {
            panic!()
        };
        assert!(cmd.render().ends_with("revision=rev2'"), "{}", cmd.render());
        assert_eq!(plan.host("jobs1").unwrap().role.as_deref(), Some("worker"));
        assert_eq!(plan.host("web1").unwrap().role, None);
        // No warning about the worker's lack of a load balancer.
        assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
        let text = crate::plan::render(&plan, false);
        assert!(
            text.contains("  roles     the stage's settings: web1, web2, web3; role worker's own settings: jobs1\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "health         run `bin/worker-health 3 revision=abc` on the host until it exits 0"
            ),
            "{text}"
        );
    }

    /// Without a role order, roles go together: batch i of each; each role
    /// with its own load balancer (or none) has its own budget.
    #[test]
    fn roles_roll_together_each_in_its_own_pool() {
        let plan = plan(&stage(
            "[roles.worker.rollout]\nrolling_batch_size = 1\n[rollout]\nrolling_batch_size = 2\n",
        ));
        assert_eq!(
            batches(&plan),
            [vec!["web1", "web2", "jobs1"], vec!["web3"]]
        );
        assert_eq!(plan.pools.pool("web1"), "");
        assert_eq!(plan.pools.pool("jobs1"), "worker");
        assert_eq!(
            plan.pools.max_unavailable,
            BTreeMap::from([(String::new(), 2), ("worker".to_string(), 1)])
        );
        let text = crate::plan::render(&plan, false);
        assert!(
            text.contains("  capacity  out of service, per pool: at most 2 of web1, web2, web3 at once; at most 1 of jobs1 at once"),
            "{text}"
        );
    }

    /// `role_order`: one role finishes before the next starts, each cut by
    /// its own shape.
    #[test]
    fn role_order_rolls_one_role_after_another() {
        let plan = plan(&stage("[rollout]\nrole_order = [\"web\", \"worker\"]\n"));
        assert_eq!(
            batches(&plan),
            [vec!["web1"], vec!["web2"], vec!["web3"], vec!["jobs1"]]
        );
        let order = crate::plan::render(&plan, false);
        assert!(
            order.contains("  order     one role after another (rollout.role_order): web1 web2 web3, then jobs1\n"),
            "{order}"
        );
        let reversed = self::plan(&stage("[rollout]\nrole_order = [\"worker\", \"web\"]\n"));
        assert_eq!(
            batches(&reversed),
            [vec!["jobs1"], vec!["web1"], vec!["web2"], vec!["web3"]]
        );
    }

    /// Two sets of settings behind the same load balancer share its
    /// budget: the smaller max_unavailable holds for both.
    #[test]
    fn settings_behind_one_balancer_share_a_pool() {
        let stage = stage(
            "[roles.web.app]\nrestart = \"bin/restart-web\"\n[roles.web.rollout]\nrolling_batch_size = 3\n\
             [rollout]\nmax_unavailable = 1\n",
        );
        let plan = plan(&stage);
        assert_eq!(
            plan.pools.pool("web1"),
            "",
            "web shares the stage's load balancer"
        );
        assert_eq!(plan.pools.max_unavailable[""], 1);
        assert_eq!(
            batches(&plan),
            [vec!["web1", "jobs1"], vec!["web2"], vec!["web3"]]
        );
    }

    /// The pure combination: pieces at one step zip, steps chain, bakes
    /// take the longest.
    #[test]
    fn pieces_zip_within_a_step_and_chain_across_steps() {
        let candidates = |names: &[&str]| -> Vec<Candidate> {
            names
                .iter()
                .map(|h| Candidate {
                    host: h.to_string(),
                    zone: None,
                    out: false,
                    returns: false,
                })
                .collect()
        };
        let shape = |size: usize, bake: u64| Shape {
            ramp: vec![BatchSize::Count(size)],
            bake: vec![std::time::Duration::from_secs(bake)],
            by_zone: false,
            max_unavailable: size,
            percent_of: 4,
        };
        let cut = combine(vec![
            Piece {
                step: 1,
                candidates: candidates(&["w1"]),
                shape: shape(1, 0),
                elsewhere: vec![],
            },
            Piece {
                step: 0,
                candidates: candidates(&["a", "b", "c"]),
                shape: shape(2, 5),
                elsewhere: vec![],
            },
            Piece {
                step: 0,
                candidates: candidates(&["x"]),
                shape: shape(1, 9),
                elsewhere: vec![],
            },
        ])
        .unwrap();
        let hosts: Vec<Vec<&str>> = cut
            .iter()
            .map(|b| b.hosts.iter().map(String::as_str).collect())
            .collect();
        assert_eq!(hosts, [vec!["a", "b", "x"], vec!["c"], vec!["w1"]]);
        let bakes: Vec<u64> = cut.iter().map(|b| b.bake.as_secs()).collect();
        assert_eq!(bakes, [9, 5, 0]);
    }

    /// `once` hooks run on the first host with that list: the stage's on
    /// the first web server, the worker's own on the first worker.
    #[test]
    fn once_hooks_run_once_per_list() {
        let stage = stage(
            "[hooks]\nafter_upload = [{ run = \"bin/migrate\", run_on = \"once\" }]\n\
             [roles.worker.hooks]\nafter_upload = [{ run = \"bin/queues\", run_on = \"once\" }]\n",
        );
        let plan = plan(&stage);
        let hooks: Vec<(&str, usize)> = plan
            .prepare
            .iter()
            .map(|p| {
                (
                    p.host.as_str(),
                    p.steps.iter().filter(|s| s.kind.is_hook()).count(),
                )
            })
            .collect();
        assert_eq!(hooks, [("web1", 1), ("web2", 0), ("web3", 0), ("jobs1", 1)]);
    }

    /// A rollback waits for each host's own REVISION of the target.
    #[test]
    fn a_rollback_waits_for_each_hosts_revision() {
        let stage = stage("");
        let mut f = facts(&stage, Some(3), &[1, 2, 3]);
        f.get_mut("web2").unwrap().releases[1].revision = "other".into();
        let plan = rollback(&testing::rollback_input(&stage, &f)).unwrap();
        let body = |host: &str| match check_of(plan.rolling(host).unwrap()) {
            CheckKind::Http { expect_body, .. } => expect_body.clone().unwrap(),
            CheckKind::Command { cmd } => cmd.render(),
        };
        assert_eq!(body("web1"), "revision=rev2");
        assert_eq!(body("web2"), "revision=other");
        assert!(body("jobs1").ends_with("revision=rev2'"));
        // Without a revision there, the check could not tell: refused.
        f.get_mut("web3").unwrap().releases[1].revision.clear();
        let err = rollback(&testing::rollback_input(&stage, &f)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "not deploying; nothing was changed on any host:\n  web3: the health check uses {revision}, but release \
             20261122100002 has no revision in its REVISION file there"
        );
    }
}
