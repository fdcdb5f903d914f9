//! The capacity budget: the one place that says whether a host may be
//! taken out of service now. Every path that takes a host out (a deploy's
//! or a rollback's batch, the undo of a failed deploy, `exec --rolling`)
//! asks [`Budget::take`] first, and gives the room back once the host is
//! in service again.
//!
//! The budget counts every host of the stage that is out of service:
//! those found out when the run started (an operator's maintenance, a
//! server DOWN in the load balancer) for the whole run, and those shipit
//! took out until it puts them back. A host that cannot be put back keeps
//! its room. At most `max_unavailable` hosts are ever counted.
//!
//! With roles, hosts serve in pools (`plan::roles`): those behind one load
//! balancer, or the hosts of a role without one. Each pool has its own
//! `max_unavailable` and only its own hosts fill it: a worker restarting
//! takes no room from the web servers. The API stays by host; the budget
//! knows each host's pool.
//!
//! The planner already cuts batches that fit, so `take` normally answers
//! at once. It waits only when the room is held by hosts of the same run
//! that are still on their way back, and refuses when nothing will give
//! room back: the caller then stops instead of taking one more host out.

use std::collections::BTreeMap;
use std::sync::Mutex;

use tokio::sync::Notify;

use crate::lb::ServiceState;
use crate::plan::{OutOfService, Pools};

/// Why a host is counted out of service.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Out {
    /// It was out when the run started.
    Found(ServiceState),
    /// This run took it out, and its pipeline is still running.
    Taken,
    /// This run took it out and could not put it back.
    Stuck,
}

pub struct Budget {
    pools: Pools,
    out: Mutex<BTreeMap<String, Out>>,
    changed: Notify,
}

/// A refusal: taking the host out would break `max_unavailable`, and no
/// host is on its way back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub max_unavailable: usize,
    /// The hosts of its pool already out.
    pub out: Vec<String>,
    /// Its pool: `""` for the stage's, else the role it is named after.
    pub pool: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "not taken out of service: {} host{} already out ({}) and rollout.max_unavailable = {}",
            self.out.len(),
            if self.out.len() == 1 { " is" } else { "s are" },
            self.out.join(", "),
            self.max_unavailable
        )?;
        if !self.pool.is_empty() {
            write!(f, " for the pool of role {}", self.pool)?;
        }
        Ok(())
    }
}

impl Budget {
    /// One pool for every host. `found`: hosts out of service when the run
    /// started. Those that return with this run (an interrupted run left
    /// them out) free their room once back; the others keep it for the
    /// whole run.
    pub fn new(max_unavailable: usize, found: &BTreeMap<String, OutOfService>) -> Budget {
        Budget::pooled(Pools::single(std::iter::empty(), max_unavailable), found)
    }

    /// A budget per pool; a host `pools` does not list is in the pool `""`.
    pub fn pooled(pools: Pools, found: &BTreeMap<String, OutOfService>) -> Budget {
        Budget {
            pools,
            out: Mutex::new(
                found
                    .iter()
                    .map(|(h, o)| {
                        let why = if o.returns {
                            Out::Stuck
                        } else {
                            Out::Found(o.state)
                        };
                        (h.clone(), why)
                    })
                    .collect(),
            ),
            changed: Notify::new(),
        }
    }

    /// Room for `host` to go out of service: at once if it is already
    /// counted out or there is room; after a wait if hosts of this run are
    /// on their way back; refused if none is.
    pub async fn take(&self, host: &str) -> Result<(), Refused> {
        let pool = self.pools.pool(host);
        let max_unavailable = self.pools.limit(pool);
        loop {
            let notified = self.changed.notified();
            {
                let mut out = self.out.lock().expect("budget");
                if let Some(state) = out.get_mut(host) {
                    if *state == Out::Stuck {
                        *state = Out::Taken;
                    }
                    return Ok(());
                }
                let mine: Vec<(&String, &Out)> = out
                    .iter()
                    .filter(|(h, _)| self.pools.pool(h) == pool)
                    .collect();
                if mine.len() < max_unavailable {
                    out.insert(host.to_string(), Out::Taken);
                    return Ok(());
                }
                if !mine.iter().any(|(_, o)| **o == Out::Taken) {
                    return Err(Refused {
                        max_unavailable,
                        out: mine.iter().map(|(h, _)| (*h).clone()).collect(),
                        pool: pool.to_string(),
                    });
                }
            }
            notified.await;
        }
    }

    /// `host` is back in service: its room is free again. A host found
    /// out when the run started stays counted: shipit leaves it out.
    pub fn put_back(&self, host: &str) {
        let mut out = self.out.lock().expect("budget");
        if matches!(out.get(host), Some(Out::Taken | Out::Stuck)) {
            out.remove(host);
        }
        drop(out);
        self.changed.notify_waiters();
    }

    /// `host`'s pipeline ended with the host still out: it keeps its room,
    /// and nobody should wait for it.
    pub fn stuck(&self, host: &str) {
        if let Some(state) = self.out.lock().expect("budget").get_mut(host)
            && *state == Out::Taken
        {
            *state = Out::Stuck;
        }
        self.changed.notify_waiters();
    }

    /// Every host counted out of service now.
    pub fn out(&self) -> Vec<String> {
        self.out.lock().expect("budget").keys().cloned().collect()
    }

    pub fn is_out(&self, host: &str) -> bool {
        self.out.lock().expect("budget").contains_key(host)
    }

    /// The `max_unavailable` of `host`'s pool.
    pub fn max_unavailable(&self, host: &str) -> usize {
        self.pools.limit(self.pools.pool(host))
    }

    /// The pool `host` counts against.
    pub fn pool(&self, host: &str) -> &str {
        self.pools.pool(host)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    fn found(hosts: &[&str]) -> BTreeMap<String, OutOfService> {
        hosts
            .iter()
            .map(|h| {
                let out = OutOfService {
                    state: ServiceState::Maintenance,
                    returns: false,
                };
                (h.to_string(), out)
            })
            .collect()
    }

    #[tokio::test]
    async fn hosts_found_out_fill_room_for_the_whole_run() {
        let budget = Budget::new(2, &found(&["web9"]));
        assert_eq!(budget.take("web1").await, Ok(()));
        // web1 is still on its way back: web2 would wait, so try web9,
        // which is out already and needs no room.
        assert_eq!(budget.take("web9").await, Ok(()));
        budget.stuck("web1");
        assert_eq!(
            budget.take("web2").await,
            Err(Refused {
                max_unavailable: 2,
                out: vec!["web1".into(), "web9".into()],
                pool: String::new(),
            })
        );
        budget.put_back("web1");
        assert_eq!(budget.take("web2").await, Ok(()));
        // Putting back a host found out does not free its room.
        budget.put_back("web9");
        assert_eq!(budget.out(), ["web2", "web9"]);
    }

    #[tokio::test]
    async fn a_host_waits_for_one_on_its_way_back() {
        let budget = Arc::new(Budget::new(1, &BTreeMap::new()));
        budget.take("web1").await.unwrap();
        let waiting = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.take("web2").await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "web2 must wait while web1 is out");
        budget.put_back("web1");
        assert_eq!(waiting.await.unwrap(), Ok(()));
        assert_eq!(budget.out(), ["web2"]);
    }

    #[tokio::test]
    async fn a_waiting_host_is_refused_once_the_other_gets_stuck() {
        let budget = Arc::new(Budget::new(1, &BTreeMap::new()));
        budget.take("web1").await.unwrap();
        let waiting = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.take("web2").await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        budget.stuck("web1");
        assert_eq!(
            waiting.await.unwrap().unwrap_err().to_string(),
            "not taken out of service: 1 host is already out (web1) and rollout.max_unavailable = 1"
        );
        // A stuck host may try again: it needs no new room.
        assert_eq!(budget.take("web1").await, Ok(()));
        assert!(budget.is_out("web1"));
    }

    /// Each pool has its own room: a worker restarting takes none from the
    /// web servers, and a pool's refusal names only its own hosts.
    #[tokio::test]
    async fn pools_have_their_own_room() {
        let pools = Pools {
            of: [
                ("web1", ""),
                ("web2", ""),
                ("job1", "worker"),
                ("job2", "worker"),
            ]
            .into_iter()
            .map(|(h, p)| (h.to_string(), p.to_string()))
            .collect(),
            max_unavailable: [(String::new(), 1), ("worker".to_string(), 1)].into(),
        };
        let budget = Arc::new(Budget::pooled(pools, &found(&["job2"])));
        // job2 is in maintenance: the worker pool is full, the web pool is not.
        assert_eq!(budget.take("web1").await, Ok(()));
        assert_eq!(
            budget.take("job1").await.unwrap_err().to_string(),
            "not taken out of service: 1 host is already out (job2) and rollout.max_unavailable = 1 \
             for the pool of role worker"
        );
        assert_eq!(budget.max_unavailable("job1"), 1);
        // web2 waits for web1, not for the workers.
        let waiting = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.take("web2").await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        budget.put_back("web1");
        assert_eq!(waiting.await.unwrap(), Ok(()));
        assert_eq!(budget.out(), ["job2", "web2"]);
    }
}
