//! Which release a rollback goes to and which releases cleanup deletes.
//! Pure functions over probe facts, so the rules are tested without hosts.

use std::collections::BTreeSet;
use std::fmt;

use super::{Current, HostFacts, ReleaseId, ReleaseInfo};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RollbackError {
    NoCurrent,
    NothingOlder {
        current: ReleaseId,
    },
    MissingOn {
        release: ReleaseId,
        hosts: Vec<String>,
    },
    AlreadyCurrent {
        release: ReleaseId,
    },
    /// Some hosts' `current` leads to no release, so "the release before
    /// the current one" cannot be worked out (one line per host).
    CurrentUnknown {
        hosts: Vec<String>,
    },
}

impl fmt::Display for RollbackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RollbackError::NoCurrent => {
                write!(f, "nothing to roll back: no host has a current release")
            }
            RollbackError::NothingOlder { current } => write!(
                f,
                "nothing to roll back to: no finished release older than {current} that is not marked bad; \
                 `shipit STAGE releases` lists what each host has"
            ),
            RollbackError::MissingOn { release, hosts } => write!(
                f,
                "release {release} is not on every host (missing or unfinished on {}); \
                 refusing to roll back to it. Pick one every host has with --to ID (see `shipit STAGE releases`)",
                hosts.join(", ")
            ),
            RollbackError::AlreadyCurrent { release } => {
                write!(f, "every host already runs {release}; nothing to do")
            }
            RollbackError::CurrentUnknown { hosts } => write!(
                f,
                "cannot tell which release to roll back from: {}. Name the target with --to ID \
                 (see `shipit STAGE releases`), or point current at a release first",
                hosts.join("; ")
            ),
        }
    }
}

/// What a rollback will do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollbackChoice {
    pub target: ReleaseId,
    /// Releases being left that are newer than the target: marked bad so a
    /// later rollback skips them.
    pub abandoned: Vec<ReleaseId>,
}

/// Picks the rollback target for a fleet. Without `to`, it is the newest
/// finished, not-bad release older than the newest release any host runs;
/// with `to`, that release. Either way it must be finished on every host.
pub fn rollback_target(
    fleet: &[(&str, &HostFacts)],
    to: Option<&ReleaseId>,
) -> Result<RollbackChoice, RollbackError> {
    let currents: BTreeSet<&ReleaseId> = fleet
        .iter()
        .filter_map(|(_, f)| f.current.release())
        .collect();
    let newest_current = currents.iter().next_back().copied();

    let target = match to {
        Some(id) => id.clone(),
        None => {
            let unknown: Vec<String> = fleet
                .iter()
                .filter(|(_, f)| matches!(f.current, Current::Elsewhere { .. }))
                .map(|(host, f)| format!("{host}: {}", f.current.describe()))
                .collect();
            if !unknown.is_empty() {
                return Err(RollbackError::CurrentUnknown { hosts: unknown });
            }
            let newest_current = newest_current.ok_or(RollbackError::NoCurrent)?;
            let bad: BTreeSet<&ReleaseId> = fleet
                .iter()
                .flat_map(|(_, f)| f.releases.iter().filter(|r| r.bad).map(|r| &r.id))
                .collect();
            fleet
                .iter()
                .flat_map(|(_, f)| f.releases.iter())
                .filter(|r| r.finished && !bad.contains(&r.id) && &r.id < newest_current)
                .map(|r| r.id.clone())
                .max()
                .ok_or_else(|| RollbackError::NothingOlder {
                    current: newest_current.clone(),
                })?
        }
    };

    let missing: Vec<String> = fleet
        .iter()
        .filter(|(_, f)| !f.release(&target).is_some_and(|r| r.finished))
        .map(|(host, _)| host.to_string())
        .collect();
    if !missing.is_empty() {
        return Err(RollbackError::MissingOn {
            release: target,
            hosts: missing,
        });
    }
    if currents.iter().all(|c| **c == target)
        && fleet.iter().all(|(_, f)| f.current.release().is_some())
    {
        return Err(RollbackError::AlreadyCurrent { release: target });
    }
    let abandoned = currents
        .into_iter()
        .filter(|c| **c > target)
        .cloned()
        .collect();
    Ok(RollbackChoice { target, abandoned })
}

/// Why cleanup must leave a host alone, if it must: it acts only where
/// `current` leads to a release, since otherwise it cannot know which
/// release the host serves from (or would roll back to).
pub fn cleanup_refused(current: &Current) -> Option<String> {
    match current {
        Current::Missing | Current::Release(_) => None,
        Current::Elsewhere { .. } | Current::NotALink => Some(format!(
            "{}; nothing is removed on this host until current leads to a release",
            current.describe()
        )),
    }
}

/// Releases cleanup removes from one host, given what is there after the
/// run. Keeps the newest `keep` finished good releases, failed (bad)
/// releases newer than the oldest one kept (evidence of recent failures),
/// everything in `protect` (current, the release it replaced, this run's),
/// and the rollback target of `current`. Unfinished leftovers of earlier
/// runs go.
pub fn cleanup(
    releases: &[ReleaseInfo],
    current: Option<&ReleaseId>,
    keep: usize,
    protect: &[&ReleaseId],
) -> Vec<ReleaseId> {
    let mut good: Vec<&ReleaseInfo> = releases.iter().filter(|r| r.finished && !r.bad).collect();
    good.sort_by(|a, b| b.id.cmp(&a.id));
    let kept: Vec<&ReleaseId> = good.iter().take(keep).map(|r| &r.id).collect();
    let oldest_kept = kept.last().copied();
    let rollback_target = current.and_then(|c| good.iter().map(|r| &r.id).find(|id| *id < c));

    releases
        .iter()
        .filter(|r| {
            let id = &r.id;
            let keep_it = protect.contains(&id)
                || Some(id) == current
                || Some(id) == rollback_target
                || (r.finished && !r.bad && kept.contains(&id))
                || (r.finished && r.bad && oldest_kept.is_some_and(|o| id > o));
            !keep_it
        })
        .map(|r| r.id.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> ReleaseId {
        format!("2026112210{n:04}").parse().unwrap()
    }

    fn rel(n: u32, finished: bool, bad: bool) -> ReleaseInfo {
        ReleaseInfo {
            id: id(n),
            finished,
            bad,
            revision: String::new(),
        }
    }

    fn host(current: Option<u32>, releases: &[(u32, bool, bool)]) -> HostFacts {
        HostFacts {
            deploy_to_exists: true,
            deploy_to_writable: true,
            current: current.map_or(Current::Missing, |n| Current::Release(id(n))),
            releases: releases.iter().map(|&(n, f, b)| rel(n, f, b)).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn rollback_goes_to_the_newest_good_release_before_current() {
        let a = host(
            Some(3),
            &[(1, true, false), (2, true, false), (3, true, false)],
        );
        let b = a.clone();
        let choice = rollback_target(&[("a", &a), ("b", &b)], None).unwrap();
        assert_eq!(
            choice,
            RollbackChoice {
                target: id(2),
                abandoned: vec![id(3)]
            }
        );
    }

    #[test]
    fn rollback_skips_bad_and_unfinished_releases() {
        // 2 was rolled back from once (bad); 4 never finished uploading.
        let a = host(
            Some(3),
            &[
                (1, true, false),
                (2, true, true),
                (3, true, false),
                (4, false, false),
            ],
        );
        let choice = rollback_target(&[("a", &a)], None).unwrap();
        assert_eq!(choice.target, id(1));
        // Bad on one host is bad for the fleet.
        let b = host(
            Some(3),
            &[(1, true, false), (2, true, false), (3, true, false)],
        );
        assert_eq!(
            rollback_target(&[("a", &a), ("b", &b)], None)
                .unwrap()
                .target,
            id(1)
        );
    }

    #[test]
    fn rollback_of_a_half_deployed_fleet_returns_everyone_to_the_old_release() {
        let switched = host(Some(3), &[(2, true, false), (3, true, false)]);
        let waiting = host(Some(2), &[(2, true, false), (3, true, false)]);
        let choice = rollback_target(&[("a", &switched), ("b", &waiting)], None).unwrap();
        assert_eq!(
            choice,
            RollbackChoice {
                target: id(2),
                abandoned: vec![id(3)]
            }
        );
    }

    #[test]
    fn rollback_refuses_naming_the_hosts_that_lack_the_target() {
        let a = host(Some(3), &[(2, true, false), (3, true, false)]);
        let b = host(Some(3), &[(3, true, false)]);
        let c = host(Some(3), &[(2, false, false), (3, true, false)]);
        let err = rollback_target(&[("a", &a), ("b", &b), ("c", &c)], None).unwrap_err();
        assert_eq!(
            err,
            RollbackError::MissingOn {
                release: id(2),
                hosts: vec!["b".into(), "c".into()]
            }
        );
        assert!(err.to_string().contains("missing or unfinished on b, c"));
    }

    #[test]
    fn nothing_to_roll_back_to() {
        let a = host(Some(1), &[(1, true, false)]);
        assert_eq!(
            rollback_target(&[("a", &a)], None).unwrap_err(),
            RollbackError::NothingOlder { current: id(1) }
        );
        let fresh = host(None, &[]);
        assert_eq!(
            rollback_target(&[("a", &fresh)], None).unwrap_err(),
            RollbackError::NoCurrent
        );
    }

    #[test]
    fn rollback_to_a_named_release() {
        let a = host(
            Some(3),
            &[(1, true, false), (2, true, true), (3, true, false)],
        );
        let choice = rollback_target(&[("a", &a)], Some(&id(1))).unwrap();
        assert_eq!(
            choice,
            RollbackChoice {
                target: id(1),
                abandoned: vec![id(3)]
            }
        );
        assert_eq!(
            rollback_target(&[("a", &a)], Some(&id(3))).unwrap_err(),
            RollbackError::AlreadyCurrent { release: id(3) }
        );
        assert!(matches!(
            rollback_target(&[("a", &a)], Some(&id(9))),
            Err(RollbackError::MissingOn { .. })
        ));
    }

    #[test]
    fn cleanup_keeps_the_newest_and_never_current_or_previous() {
        let releases: Vec<ReleaseInfo> = (1..=7).map(|n| rel(n, true, false)).collect();
        assert_eq!(
            cleanup(&releases, Some(&id(7)), 3, &[]),
            vec![id(1), id(2), id(3), id(4)]
        );
        // keep = 1 still keeps the rollback target.
        assert_eq!(
            cleanup(&releases, Some(&id(7)), 1, &[]),
            vec![id(1), id(2), id(3), id(4), id(5)]
        );
        // Current rolled back to an old release: current and its predecessor stay.
        assert_eq!(
            cleanup(&releases, Some(&id(2)), 2, &[]),
            vec![id(3), id(4), id(5)]
        );
    }

    #[test]
    fn failed_releases_do_not_push_good_ones_out() {
        // Five failed deploys after good release 2 (the Deployer #814 trap).
        let mut releases = vec![rel(1, true, false), rel(2, true, false)];
        releases.extend((3..=7).map(|n| rel(n, true, true)));
        releases.push(rel(8, false, false));
        let removed = cleanup(&releases, Some(&id(2)), 2, &[]);
        // Both good releases stay; bad ones newer than the oldest kept stay
        // as evidence; the unfinished leftover goes.
        assert_eq!(removed, vec![id(8)]);
        let removed = cleanup(&releases, Some(&id(2)), 2, &[&id(8)]);
        assert!(removed.is_empty());
    }

    #[test]
    fn a_current_that_leads_to_no_release_needs_to_and_stops_cleanup() {
        let mut odd = host(
            None,
            &[(1, true, false), (2, true, false), (3, true, false)],
        );
        odd.current = Current::Elsewhere {
            link: "releases/20261122100002/public".into(),
            leads_to: Some("/srv/a/releases/20261122100002/public".into()),
        };
        let fine = host(
            Some(3),
            &[(1, true, false), (2, true, false), (3, true, false)],
        );
        let err = rollback_target(&[("a", &fine), ("b", &odd)], None).unwrap_err();
        assert!(matches!(err, RollbackError::CurrentUnknown { .. }));
        assert_eq!(
            err.to_string(),
            "cannot tell which release to roll back from: b: current -> releases/20261122100002/public, \
             which leads to /srv/a/releases/20261122100002/public, not to a release in releases/. \
             Name the target with --to ID (see `shipit STAGE releases`), or point current at a release first"
        );
        // Named, it goes ahead: the odd host is switched to the target too.
        let choice = rollback_target(&[("a", &fine), ("b", &odd)], Some(&id(1))).unwrap();
        assert_eq!(choice.target, id(1));

        assert!(
            cleanup_refused(&odd.current)
                .unwrap()
                .contains("nothing is removed")
        );
        assert!(cleanup_refused(&Current::NotALink).is_some());
        assert_eq!(cleanup_refused(&fine.current), None);
        assert_eq!(cleanup_refused(&Current::Missing), None);
    }
}
