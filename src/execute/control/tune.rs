//! `shipit STAGE tune`: the batches not started yet, cut anew by the one
//! batching function (`plan::shape::batches`) with a new batch size or
//! bake. A batch in flight and the batches done stay as they were; the
//! order of the hosts left, and so the zone order, never changes. A size
//! that would take more hosts out at once than `rollout.max_unavailable`
//! leaves room for is refused, with the reason.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::BatchSize;
use crate::plan::shape::{self, BatchShape, Candidate, Shape};
use crate::plan::{Action, Batch, BatchGate, Pipeline, Plan};
use crate::shell::{Cmd, Word};

/// What a tune is judged against: the batches not started yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tuning {
    /// The hosts of those batches, in rollout order.
    pub remaining: Vec<Candidate>,
    /// Hosts out of service that are not among `remaining`, and stay so.
    pub out_elsewhere: Vec<String>,
    /// The run's shape.
    pub shape: Shape,
    /// Index (0-based) of the first batch not started.
    pub next: usize,
    /// Sets of hosts that each roll with their own shape (roles with their
    /// own `[rollout]`, or `rollout.role_order`); a tune needs one.
    pub parts: usize,
}

impl Tuning {
    /// Before the first batch: every batch of the plan.
    pub fn for_plan(plan: &Plan) -> Tuning {
        let remaining: Vec<Candidate> = plan
            .batches
            .iter()
            .flat_map(|b| b.hosts())
            .map(|h| {
                let found = plan.out_at_start.get(h);
                Candidate {
                    host: h.to_string(),
                    zone: plan.host(h).and_then(|p| p.zone.clone()),
                    out: found.is_some(),
                    returns: found.is_some_and(|o| o.returns),
                }
            })
            .collect();
        let out_elsewhere = plan
            .out_at_start
            .keys()
            .filter(|h| !remaining.iter().any(|c| &c.host == *h))
            .cloned()
            .collect();
        Tuning {
            remaining,
            out_elsewhere,
            shape: plan.shape.clone(),
            next: 0,
            parts: plan.parts.len(),
        }
    }
}

/// The shape that goes on from batch `next` as `shape` would have: its
/// ramp and bakes from that batch on.
pub fn continued(shape: &Shape, next: usize) -> Shape {
    let from = |len: usize| next..(next + 1).max(len);
    Shape {
        ramp: from(shape.ramp.len())
            .map(|i| shape.ramp[i.min(shape.ramp.len() - 1)])
            .collect(),
        bake: if shape.bake.is_empty() {
            Vec::new()
        } else {
            from(shape.bake.len()).map(|i| shape.bake(i)).collect()
        },
        ..shape.clone()
    }
}

/// The batches left, cut with `batch_size` (as `rolling_batch_size`
/// takes it) and `bake`; or why not.
pub fn recut(
    tuning: &Tuning,
    batch_size: Option<&str>,
    bake: Option<Duration>,
) -> Result<Vec<BatchShape>, String> {
    if batch_size.is_none() && bake.is_none() {
        return Err("nothing to change: give --batch-size, --bake or both".into());
    }
    if tuning.remaining.is_empty() {
        return Err("no batch is left to retune: the last batch has started".into());
    }
    if tuning.parts > 1 {
        return Err(format!(
            "this run rolls {} sets of hosts each with its own batches (roles with their own [rollout], or \
             rollout.role_order); tune changes a rollout with one; change the role's settings in deploy.toml for \
             later runs",
            tuning.parts
        ));
    }
    let mut shape = continued(&tuning.shape, tuning.next);
    if let Some(size) = batch_size {
        let size: BatchSize = size.parse()?;
        shape.ramp = vec![size];
        let hosts = shape.size(0);
        let staying = tuning.out_elsewhere.len()
            + tuning
                .remaining
                .iter()
                .filter(|c| c.out && !c.returns)
                .count();
        let room = shape.max_unavailable.saturating_sub(staying);
        if hosts > room {
            let out = if staying == 0 {
                String::new()
            } else {
                format!(
                    " with {staying} host{} staying out of service",
                    if staying == 1 { "" } else { "s" }
                )
            };
            return Err(format!(
                "--batch-size {size} would take {hosts} hosts out of service at once, and rollout.max_unavailable = {}{out} \
                 leaves room for {room}; ask for at most {room}, or raise rollout.max_unavailable in deploy.toml for \
                 later runs (unset, it is the largest batch of rolling_batch_size)",
                shape.max_unavailable
            ));
        }
    }
    if let Some(bake) = bake {
        shape.bake = vec![bake];
    }
    shape::batches(&tuning.remaining, &shape, &tuning.out_elsewhere).map_err(|e| e.to_string())
}

/// The batches as people read them: `from batch 2 on: web2, web3, web4
/// (bake 10s)`.
pub fn describe(shaped: &[BatchShape], next: usize) -> String {
    let batches: Vec<String> = shaped
        .iter()
        .map(|b| {
            let bake = if b.bake.is_zero() {
                String::new()
            } else {
                format!(" (bake {})", humantime::format_duration(b.bake))
            };
            format!("{}{bake}", b.hosts.join(", "))
        })
        .collect();
    format!(
        "from batch {} on, {} batch{}: {}",
        next + 1,
        shaped.len(),
        if shaped.len() == 1 { "" } else { "es" },
        batches.join(" | ")
    )
}

/// The pipelines of `old` regrouped as `shaped` says. Each host's
/// commands carry the hosts of its batch (SHIPIT_BATCH_HOSTS): they get
/// the new ones.
pub fn regroup(old: &[Batch], shaped: &[BatchShape]) -> Vec<Batch> {
    let mut pipelines: BTreeMap<&str, &Pipeline> = old
        .iter()
        .flat_map(|b| &b.pipelines)
        .map(|p| (p.host.as_str(), p))
        .collect();
    // Each gate as the batch that measured the most hosts ran it: it names
    // every host a gate may measure, and the watch measures those switched
    // so far.
    let mut gates: BTreeMap<usize, &BatchGate> = BTreeMap::new();
    for gate in old.iter().flat_map(|b| &b.gates) {
        let widest = gates.entry(gate.index).or_insert(gate);
        if gate.hosts.len() > widest.hosts.len() {
            *widest = gate;
        }
    }
    shaped
        .iter()
        .map(|b| {
            let members = b.hosts.join(" ");
            Batch {
                pipelines: b
                    .hosts
                    .iter()
                    .filter_map(|h| pipelines.remove(h.as_str()))
                    .map(|p| in_batch(p, &members))
                    .collect(),
                bake: b.bake,
                zone: b.zone.clone(),
                gates: if b.bake.is_zero() {
                    Vec::new()
                } else {
                    gates.values().map(|g| (*g).clone()).collect()
                },
            }
        })
        .collect()
}

const BATCH_HOSTS: &str = "SHIPIT_BATCH_HOSTS";

fn in_batch(pipeline: &Pipeline, members: &str) -> Pipeline {
    let mut pipeline = pipeline.clone();
    for step in &mut pipeline.steps {
        match &mut step.action {
            Action::Remote { cmd } | Action::Upload { cmd } | Action::Local { cmd } => {
                set_members(cmd, members);
            }
            Action::Lb { lb } => lb
                .member
                .commands
                .values_mut()
                .for_each(|cmd| set_members(cmd, members)),
            Action::Health { check } => {
                if let crate::plan::CheckKind::Command { cmd } = &mut check.kind {
                    set_members(cmd, members);
                }
            }
            Action::Nothing { .. } => {}
        }
    }
    pipeline
}

fn set_members(cmd: &mut Cmd, members: &str) {
    for (name, value) in &mut cmd.env {
        if name == BATCH_HOSTS {
            *value = Word::Plain(members.to_string());
        }
    }
    if let Some(next) = &mut cmd.then {
        set_members(next, members);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use BatchSize::Count;

    fn hosts(n: usize) -> Vec<Candidate> {
        (1..=n)
            .map(|i| Candidate {
                host: format!("web{i}"),
                zone: None,
                out: false,
                returns: false,
            })
            .collect()
    }

    fn tuning(remaining: Vec<Candidate>, max_unavailable: usize, next: usize) -> Tuning {
        Tuning {
            remaining,
            out_elsewhere: Vec::new(),
            shape: Shape {
                ramp: vec![Count(1)],
                bake: vec![Duration::from_secs(30), Duration::from_secs(5)],
                by_zone: false,
                max_unavailable,
                percent_of: 6,
            },
            parts: 1,
            next,
        }
    }

    fn names(shaped: &[BatchShape]) -> Vec<Vec<&str>> {
        shaped
            .iter()
            .map(|b| b.hosts.iter().map(String::as_str).collect())
            .collect()
    }

    #[test]
    fn batch_sizes_parse_as_in_deploy_toml() {
        assert_eq!("3".parse::<BatchSize>(), Ok(Count(3)));
        assert_eq!(" 25% ".parse::<BatchSize>(), Ok(BatchSize::Percent(25)));
        for bad in ["0", "0%", "101%", "-1", "three", ""] {
            let err = bad.parse::<BatchSize>().unwrap_err();
            assert!(err.contains("not a batch size"), "{err}");
        }
    }

    #[test]
    fn the_hosts_left_are_cut_anew_with_the_bakes_that_were_to_come() {
        let t = tuning(hosts(5), 3, 1);
        let shaped = recut(&t, Some("3"), None).unwrap();
        assert_eq!(
            names(&shaped),
            [vec!["web1", "web2", "web3"], vec!["web4", "web5"]]
        );
        // Batch 2 on would have baked 5s: so do the new batches.
        assert!(shaped.iter().all(|b| b.bake == Duration::from_secs(5)));
        assert_eq!(
            describe(&shaped, 1),
            "from batch 2 on, 2 batches: web1, web2, web3 (bake 5s) | web4, web5 (bake 5s)"
        );
        // A bake alone keeps the ramp.
        let shaped = recut(&t, None, Some(Duration::ZERO)).unwrap();
        assert_eq!(shaped.len(), 5);
        assert!(shaped.iter().all(|b| b.bake.is_zero()));
        // A share is of the hosts the run started with (6): 50% is 3.
        assert_eq!(recut(&t, Some("50%"), None).unwrap().len(), 2);
    }

    #[test]
    fn a_size_beyond_the_room_left_is_refused_with_the_reason() {
        let t = tuning(hosts(4), 2, 1);
        let err = recut(&t, Some("3"), None).unwrap_err();
        assert_eq!(
            err,
            "--batch-size 3 would take 3 hosts out of service at once, and rollout.max_unavailable = 2 leaves \
             room for 2; ask for at most 2, or raise rollout.max_unavailable in deploy.toml for later runs \
             (unset, it is the largest batch of rolling_batch_size)"
        );
        // A host staying out (an operator's maintenance) fills room.
        let mut t = tuning(hosts(4), 3, 1);
        t.out_elsewhere = vec!["web9".into()];
        let err = recut(&t, Some("3"), None).unwrap_err();
        assert!(
            err.contains(
                "rollout.max_unavailable = 3 with 1 host staying out of service leaves room for 2"
            ),
            "{err}"
        );
        assert_eq!(recut(&t, Some("2"), None).unwrap().len(), 2);
        // Nothing asked, nothing left: said so.
        assert!(
            recut(&t, None, None)
                .unwrap_err()
                .contains("nothing to change")
        );
        let empty = tuning(Vec::new(), 3, 4);
        assert!(
            recut(&empty, Some("2"), None)
                .unwrap_err()
                .contains("the last batch has started")
        );
        assert!(
            recut(&t, Some("0"), None)
                .unwrap_err()
                .contains("not a batch size")
        );
    }

    #[test]
    fn zones_keep_their_order_and_batches_never_span_two() {
        let mut list = hosts(5);
        for (c, z) in list.iter_mut().zip(["b", "b", "a", "a", "a"]) {
            c.zone = Some(z.into());
        }
        let mut t = tuning(list, 3, 1);
        t.shape.by_zone = true;
        let shaped = recut(&t, Some("3"), None).unwrap();
        assert_eq!(
            names(&shaped),
            [vec!["web1", "web2"], vec!["web3", "web4", "web5"]]
        );
    }

    #[test]
    fn a_ramp_goes_on_from_the_batch_it_had_reached() {
        let shape = Shape {
            ramp: vec![Count(1), Count(2), Count(4)],
            bake: vec![Duration::from_secs(60)],
            by_zone: false,
            max_unavailable: 4,
            percent_of: 10,
        };
        let c = continued(&shape, 1);
        assert_eq!(c.ramp, [Count(2), Count(4)]);
        assert_eq!(c.bake, [Duration::from_secs(60)]);
        let c = continued(&shape, 7);
        assert_eq!(c.ramp, [Count(4)]);
        let none = Shape {
            bake: Vec::new(),
            ..shape
        };
        assert!(continued(&none, 2).bake.is_empty());
    }

    #[test]
    fn regrouped_hosts_carry_their_new_batch() {
        let hook = |host: &str, members: &str| Pipeline {
            host: host.into(),
            steps: vec![crate::plan::Step {
                kind: crate::plan::StepKind::AfterSwitch,
                action: Action::Remote {
                    cmd: Cmd::shell("notify")
                        .env(BATCH_HOSTS, members)
                        .then(Cmd::shell("more").env(BATCH_HOSTS, members)),
                },
                timeout: None,
            }],
        };
        let old: Vec<Batch> = ["web2", "web3"]
            .iter()
            .map(|h| Batch {
                pipelines: vec![hook(h, h)],
                bake: Duration::ZERO,
                zone: None,
                gates: Vec::new(),
            })
            .collect();
        let shaped = vec![BatchShape {
            hosts: vec!["web2".into(), "web3".into()],
            bake: Duration::from_secs(1),
            zone: None,
        }];
        let new = regroup(&old, &shaped);
        assert_eq!(new.len(), 1);
        assert_eq!(new[0].bake, Duration::from_secs(1));
        for p in &new[0].pipelines {
            let Action::Remote { cmd } = &p.steps[0].action else {
                panic!()
            };
            assert!(
                cmd.render()
                    .contains("SHIPIT_BATCH_HOSTS='web2 web3' sh -c notify")
            );
            assert!(
                cmd.render()
                    .contains("SHIPIT_BATCH_HOSTS='web2 web3' sh -c more")
            );
        }
    }
}
