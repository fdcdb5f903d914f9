//! The shape of a rollout: which hosts go together, in which order, and
//! how long each batch is watched once it is back in service.
//!
//! One function, [`batches`], decides it for every path that takes hosts
//! out of service in turn: a deploy, a rollback, the undo of a failed
//! deploy, a rollout retuned while it runs, and `exec --rolling`. It is
//! pure, so the planner calls it for `--dry-run` and the executor calls it
//! again, with the same [`Shape`], when the hosts left to do change.
//!
//! The rules:
//! - each entry of the ramp sizes the next batch and the last one repeats
//!   (Ansible's `serial`): `[1, 2, "50%"]` on 8 hosts gives 1, 2, 4, 1;
//!   a share is of the hosts the run started with;
//! - with `by_zone`, a batch never spans two zones and a zone finishes
//!   before the next starts; zones go in the order they first appear;
//! - a batch never takes more hosts out of service than the capacity
//!   budget has room for: `max_unavailable`, less the hosts already out.
//!   A host already out needs no new room; one that stays out (an
//!   operator's maintenance) fills its room for the whole run, one that
//!   comes back with its batch (a host an undo returns) only until then.
//!   Batches shrink to fit; a run that can never fit is refused.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::config::BatchSize;

/// A rollout's settings, resolved for one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Shape {
    /// Sizes of successive batches; the last repeats. Never empty.
    pub ramp: Vec<BatchSize>,
    /// How long each batch is watched once back in service; the last
    /// repeats. Empty means no watch.
    #[serde(serialize_with = "millis_list")]
    pub bake: Vec<Duration>,
    pub by_zone: bool,
    /// At most this many hosts of the pool out of service at any moment.
    pub max_unavailable: usize,
    /// What a share in the ramp is a share of: the hosts the run rolls.
    pub percent_of: usize,
}

/// A host to place in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub host: String,
    pub zone: Option<String>,
    /// Already out of service: placing it takes no room from the budget.
    pub out: bool,
    /// An out host that is back in service once its batch is done (an
    /// undo returns it); otherwise it stays out for the whole run.
    pub returns: bool,
}

/// One batch as the shape decides it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchShape {
    pub hosts: Vec<String>,
    pub bake: Duration,
    pub zone: Option<String>,
}

/// Why no batch can be made: there is no room to take any host out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoRoom {
    pub max_unavailable: usize,
    /// The hosts already out of service, which fill the budget.
    pub out: Vec<String>,
    /// The hosts that would need to be taken out.
    pub waiting: Vec<String>,
}

impl fmt::Display for NoRoom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rollout.max_unavailable = {} and {} host{} already out of service ({}), so {} can never be taken out; \
             bring a host back into service first, or raise rollout.max_unavailable",
            self.max_unavailable,
            self.out.len(),
            if self.out.len() == 1 { " is" } else { "s are" },
            self.out.join(", "),
            self.waiting.join(", ")
        )
    }
}

impl Shape {
    /// The size the ramp gives batch `index` (0-based), at least 1.
    pub fn size(&self, index: usize) -> usize {
        let entry = self.ramp[index.min(self.ramp.len() - 1)];
        entry.hosts_per_batch(self.percent_of)
    }

    /// How long batch `index` (0-based) is watched.
    pub fn bake(&self, index: usize) -> Duration {
        match self.bake.len() {
            0 => Duration::ZERO,
            n => self.bake[index.min(n - 1)],
        }
    }

    /// The largest batch the ramp ever asks for: the default room.
    pub fn largest(&self) -> usize {
        (0..self.ramp.len())
            .map(|i| self.size(i))
            .max()
            .unwrap_or(1)
    }

    /// The shape for returning hosts to their previous release: steady
    /// batches (the ramp's last size, no canary) and no watch, within the
    /// same room and zones.
    pub fn for_undo(&self) -> Shape {
        Shape {
            ramp: vec![*self.ramp.last().expect("a ramp is never empty")],
            bake: Vec::new(),
            ..self.clone()
        }
    }
}

/// Cuts `hosts` into batches. `out_elsewhere` counts hosts of the same
/// pool that are out of service and not among `hosts`: they fill room too.
pub fn batches(
    hosts: &[Candidate],
    shape: &Shape,
    out_elsewhere: &[String],
) -> Result<Vec<BatchShape>, NoRoom> {
    let order = ordered(hosts, shape.by_zone);
    let staying = out_elsewhere.len() + order.iter().filter(|c| c.out && !c.returns).count();
    let mut returning = order.iter().filter(|c| c.out && c.returns).count();
    let waiting: Vec<String> = order
        .iter()
        .filter(|c| !c.out)
        .map(|c| c.host.clone())
        .collect();
    if shape.max_unavailable <= staying && !waiting.is_empty() {
        let mut out: Vec<String> = out_elsewhere.to_vec();
        out.extend(order.iter().filter(|c| c.out).map(|c| c.host.clone()));
        return Err(NoRoom {
            max_unavailable: shape.max_unavailable,
            out,
            waiting,
        });
    }
    let mut batches = Vec::new();
    let mut rest = order.as_slice();
    while let Some(first) = rest.first() {
        let index = batches.len();
        let size = shape.size(index);
        // Hosts still to return fill room until their batch is done; at
        // least one host always fits (the budget waits for room if need be).
        let room = shape
            .max_unavailable
            .saturating_sub(staying + returning)
            .max(1);
        let mut taken = 0;
        let mut needing_room = 0;
        for c in rest {
            if taken == size
                || (shape.by_zone && c.zone != first.zone)
                || (!c.out && needing_room == room)
            {
                break;
            }
            taken += 1;
            needing_room += usize::from(!c.out);
        }
        let (batch, after) = rest.split_at(taken);
        returning -= batch.iter().filter(|c| c.out && c.returns).count();
        batches.push(BatchShape {
            hosts: batch.iter().map(|c| c.host.clone()).collect(),
            bake: shape.bake(index),
            zone: first.zone.clone(),
        });
        rest = after;
    }
    Ok(batches)
}

/// Hosts in rollout order: as given, or grouped by zone in the order the
/// zones first appear (hosts keep their order within a zone).
fn ordered(hosts: &[Candidate], by_zone: bool) -> Vec<&Candidate> {
    if !by_zone {
        return hosts.iter().collect();
    }
    let mut zones: Vec<&Option<String>> = Vec::new();
    for c in hosts {
        if !zones.contains(&&c.zone) {
            zones.push(&c.zone);
        }
    }
    zones
        .into_iter()
        .flat_map(|z| hosts.iter().filter(move |c| &c.zone == z))
        .collect()
}

fn millis_list<S: serde::Serializer>(list: &[Duration], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(list.iter().map(|d| d.as_millis() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use BatchSize::{Count, Percent};

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

    fn shape(ramp: &[BatchSize], max_unavailable: usize, percent_of: usize) -> Shape {
        Shape {
            ramp: ramp.to_vec(),
            bake: Vec::new(),
            by_zone: false,
            max_unavailable,
            percent_of,
        }
    }

    fn sizes(batches: &[BatchShape]) -> Vec<usize> {
        batches.iter().map(|b| b.hosts.len()).collect()
    }

    fn names(batches: &[BatchShape]) -> Vec<Vec<&str>> {
        batches
            .iter()
            .map(|b| b.hosts.iter().map(String::as_str).collect())
            .collect()
    }

    #[test]
    fn a_ramp_sizes_batches_and_its_last_entry_repeats() {
        let s = shape(&[Count(1), Count(2), Percent(50)], 4, 8);
        assert_eq!(s.largest(), 4);
        assert_eq!(sizes(&batches(&hosts(8), &s, &[]).unwrap()), [1, 2, 4, 1]);
        let s = shape(&[Count(2)], 2, 5);
        assert_eq!(sizes(&batches(&hosts(5), &s, &[]).unwrap()), [2, 2, 1]);
        // A share rounds down but is at least one host.
        let s = shape(&[Percent(10)], 1, 5);
        assert_eq!(sizes(&batches(&hosts(5), &s, &[]).unwrap()), [1; 5]);
        assert!(batches(&[], &s, &[]).unwrap().is_empty());
    }

    #[test]
    fn bakes_follow_the_batches_and_the_last_repeats() {
        let mut s = shape(&[Count(1), Count(2)], 2, 5);
        s.bake = vec![Duration::from_secs(300), Duration::from_secs(30)];
        let b = batches(&hosts(5), &s, &[]).unwrap();
        let bakes: Vec<u64> = b.iter().map(|b| b.bake.as_secs()).collect();
        assert_eq!(bakes, [300, 30, 30]);
        s.bake.clear();
        assert_eq!(s.bake(7), Duration::ZERO);
    }

    #[test]
    fn batches_shrink_to_the_room_left_by_hosts_already_out() {
        // web2 is in maintenance: it needs no room, but fills one.
        let mut list = hosts(5);
        list[1].out = true;
        let s = shape(&[Count(2)], 2, 5);
        let b = batches(&list, &s, &[]).unwrap();
        assert_eq!(
            names(&b),
            [
                vec!["web1", "web2"],
                vec!["web3"],
                vec!["web4"],
                vec!["web5"]
            ]
        );
        // A host out elsewhere (not in this run) fills room as well.
        let b = batches(&hosts(3), &s, &["web9".to_string()]).unwrap();
        assert_eq!(sizes(&b), [1, 1, 1]);
    }

    #[test]
    fn a_floor_that_can_never_be_kept_is_refused() {
        let s = shape(&[Count(2)], 1, 3);
        let err = batches(&hosts(3), &s, &["web9".to_string()]).unwrap_err();
        assert_eq!(err.out, ["web9"]);
        assert_eq!(err.waiting, ["web1", "web2", "web3"]);
        assert_eq!(
            err.to_string(),
            "rollout.max_unavailable = 1 and 1 host is already out of service (web9), so web1, web2, web3 \
             can never be taken out; bring a host back into service first, or raise rollout.max_unavailable"
        );
        // Only hosts that are out themselves: nothing needs room, no refusal.
        let mut list = hosts(2);
        list.iter_mut().for_each(|c| c.out = true);
        assert_eq!(sizes(&batches(&list, &s, &[]).unwrap()), [2]);
    }

    #[test]
    fn zones_finish_in_order_of_first_appearance_and_batches_never_span_two() {
        let zoned = |spec: &[(&str, &str)]| -> Vec<Candidate> {
            spec.iter()
                .map(|(h, z)| Candidate {
                    host: h.to_string(),
                    zone: Some(z.to_string()),
                    out: false,
                    returns: false,
                })
                .collect()
        };
        let list = zoned(&[
            ("web1", "b"),
            ("web2", "a"),
            ("web3", "b"),
            ("web4", "a"),
            ("web5", "b"),
        ]);
        let mut s = shape(&[Count(2)], 2, 5);
        s.by_zone = true;
        let b = batches(&list, &s, &[]).unwrap();
        assert_eq!(
            names(&b),
            [vec!["web1", "web3"], vec!["web5"], vec!["web2", "web4"]]
        );
        let zones: Vec<&str> = b.iter().map(|b| b.zone.as_deref().unwrap()).collect();
        assert_eq!(zones, ["b", "b", "a"]);
        // Without by_zone the list order stands.
        s.by_zone = false;
        assert_eq!(sizes(&batches(&list, &s, &[]).unwrap()), [2, 2, 1]);
    }

    #[test]
    fn hosts_that_come_back_with_their_batch_fill_room_only_until_then() {
        // An undo: web3 is out (it failed) and comes back with its batch.
        let mut list = hosts(4);
        list.rotate_left(2);
        list[0].out = true;
        list[0].returns = true;
        let s = shape(&[Count(2)], 2, 4);
        let b = batches(&list, &s, &[]).unwrap();
        assert_eq!(names(&b), [vec!["web3", "web4"], vec!["web1", "web2"]]);
        // Staying out, it would fill its room for the whole run.
        list[0].returns = false;
        let b = batches(&list, &s, &[]).unwrap();
        assert_eq!(
            names(&b),
            [vec!["web3", "web4"], vec!["web1"], vec!["web2"]]
        );
    }

    #[test]
    fn undo_uses_steady_batches_without_a_watch() {
        let mut s = shape(&[Count(1), Count(3)], 3, 6);
        s.bake = vec![Duration::from_secs(60)];
        let undo = s.for_undo();
        assert_eq!(undo.ramp, [Count(3)]);
        let b = batches(&hosts(4), &undo, &[]).unwrap();
        assert_eq!(sizes(&b), [3, 1]);
        assert!(b.iter().all(|b| b.bake.is_zero()));
    }
}
