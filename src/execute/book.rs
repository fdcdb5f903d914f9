//! The run's book: where each host stands while the run goes on (what it
//! ran before, what it runs now, whether it is out of the load balancer,
//! its result), and the per-host summary it becomes at the end.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::host::ReleaseId;
use crate::lb::ServiceState;
use crate::plan::Plan;
use crate::report::{HostResult, HostSummary};

/// One host's state while the run goes on.
#[derive(Debug, Clone)]
pub(super) struct HostRun {
    pub before: Option<ReleaseId>,
    pub now: Option<ReleaseId>,
    /// Out of the load balancer because of this run.
    pub drained: bool,
    pub result: Option<HostResult>,
    /// The host took part (a pipeline started), so it logs the outcome.
    pub touched: bool,
    /// Rolling batch it was in (0-based), for undo order.
    pub batch: Option<usize>,
    /// An operator took it out before the run: it stays out.
    pub left_out: Option<ServiceState>,
    /// Its last failure was a lost connection.
    pub lost: bool,
    pub elapsed: Duration,
    /// When this run last restarted it (or switched it, without a
    /// restart): `health.start_period` counts from here.
    pub restarted: Option<tokio::time::Instant>,
    /// When its rolling pipeline put it back in service:
    /// `health.min_healthy_time` counts from here.
    pub in_service: Option<tokio::time::Instant>,
}

pub(super) struct Book(Mutex<BTreeMap<String, HostRun>>);

impl Book {
    pub fn new(plan: &Plan) -> Book {
        Book(Mutex::new(
            plan.hosts
                .iter()
                .map(|h| {
                    let run = HostRun {
                        before: h.before.clone(),
                        now: h.current.clone(),
                        drained: false,
                        result: h.unchanged.then_some(HostResult::Unchanged),
                        touched: false,
                        batch: None,
                        left_out: h.left_out,
                        lost: false,
                        elapsed: Duration::ZERO,
                        restarted: None,
                        in_service: None,
                    };
                    (h.name.clone(), run)
                })
                .collect(),
        ))
    }

    /// Changes `host`'s entry, if it has one.
    pub fn update(&self, host: &str, f: impl FnOnce(&mut HostRun)) {
        if let Some(run) = self.0.lock().expect("host book").get_mut(host) {
            f(run);
        }
    }

    pub fn get(&self, host: &str) -> Option<HostRun> {
        self.0.lock().expect("host book").get(host).cloned()
    }

    /// A snapshot of every host, in name order.
    pub fn all(&self) -> Vec<(String, HostRun)> {
        self.0
            .lock()
            .expect("host book")
            .iter()
            .map(|(h, r)| (h.clone(), r.clone()))
            .collect()
    }

    /// Hosts this run moved to `release` from something else.
    pub fn switched_to(&self, release: &ReleaseId) -> Vec<(String, HostRun)> {
        self.all()
            .into_iter()
            .filter(|(_, r)| r.now.as_ref() == Some(release) && r.before.as_ref() != Some(release))
            .collect()
    }

    /// How many of `hosts` failed for a reason other than an interruption.
    pub fn failed_among<'a>(&self, hosts: impl Iterator<Item = &'a str>) -> usize {
        let book = self.0.lock().expect("host book");
        hosts
            .filter(|h| {
                matches!(
                    book.get(*h).and_then(|r| r.result.as_ref()),
                    Some(HostResult::Failed {
                        interrupted: false,
                        ..
                    })
                )
            })
            .count()
    }

    /// The end-of-run table, in plan order.
    pub fn summaries(&self, plan: &Plan) -> Vec<HostSummary> {
        let book = self.0.lock().expect("host book");
        plan.hosts
            .iter()
            .map(|h| {
                let run = &book[&h.name];
                HostSummary {
                    host: h.name.clone(),
                    before: run.before.clone(),
                    now: run.now.clone(),
                    result: run.result.clone().unwrap_or(HostResult::NotReached),
                    drained: run.drained,
                    left_out: run.left_out,
                    duration: run.elapsed,
                }
            })
            .collect()
    }
}

/// One host's outcome, for revisions.log and the journal.
pub(super) fn outcome(run: &HostRun, ok: bool) -> String {
    match &run.result {
        Some(HostResult::Done) => "success".to_string(),
        Some(HostResult::RolledBack) => "rolled back".to_string(),
        Some(HostResult::Failed {
            step,
            interrupted: true,
            ..
        }) => format!("interrupted at {}", step.as_str()),
        Some(HostResult::Failed { step, .. }) if run.now == run.before => {
            format!("failed at {}; back on the previous release", step.as_str())
        }
        Some(HostResult::Failed { step, .. }) => format!("failed at {}", step.as_str()),
        Some(HostResult::Unchanged) => "unchanged".to_string(),
        None if ok => "success".to_string(),
        None | Some(HostResult::NotReached) => {
            "not switched: the run stopped before this host's turn".to_string()
        }
    }
}
