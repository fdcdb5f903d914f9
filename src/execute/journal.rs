//! Bookkeeping on the hosts: the journal each host keeps of its
//! transitions (so that a run whose machine died can be shown, repaired
//! and resumed) and the line each appends to revisions.log at the end.
//! Bookkeeping never fails a run: trouble writing it is reported.

use std::time::Duration;

use futures::future::join_all;

use super::Executor;
use super::book::{Book, outcome};
use super::step::{Failure, judge};
use crate::host::journal;
use crate::host::revlog::Entry;
use crate::plan::{Plan, StepKind};
use crate::shell;
use crate::transport::{self, ExecRequest, Transport};

impl<T: Transport, L: Transport> Executor<'_, T, L> {
    /// Opens the journal on every host the run changes. Each host's
    /// `started` entry records what it ran before the run (for a resumed
    /// run, what it ran before the dead one began), so an undo, however
    /// many processes later, knows where to take it back; a resumed run
    /// also records its own lock id.
    pub(super) async fn journal_started(&self, plan: &Plan) {
        let layout = &plan.bookkeeping.layout;
        let writes = plan
            .hosts
            .iter()
            .filter(|h| !h.unchanged || plan.undoing)
            .map(|h| {
                let mut detail = serde_json::json!({
                    "by": plan.bookkeeping.by,
                    "digest": plan.bookkeeping.digest,
                    "before": h.before.as_ref().map(ToString::to_string),
                });
                if plan.resumes.is_some() {
                    detail["lock"] = plan.run.clone().into();
                }
                let entry = self.journal_entry(plan, "started", Some(detail.to_string()));
                self.quiet_exec(
                    &h.name,
                    layout.journal_start(&entry, plan.resume),
                    "journal",
                )
            });
        join_all(writes).await;
    }

    /// Writes `pending` entries to the host's journal in one command.
    pub(super) async fn flush_journal(
        &self,
        plan: &Plan,
        host: &str,
        pending: &mut Vec<journal::Entry>,
    ) {
        if pending.is_empty() {
            return;
        }
        let entries = std::mem::take(pending);
        self.quiet_exec(host, plan.bookkeeping.layout.journal(&entries), "journal")
            .await;
    }

    pub(super) fn journal_entry(
        &self,
        plan: &Plan,
        event: &str,
        detail: Option<String>,
    ) -> journal::Entry {
        journal::Entry {
            run: plan.journal_run().to_string(),
            time: now_utc_ms(),
            op: plan.operation.as_str().to_string(),
            release: plan.release.to_string(),
            event: event.to_string(),
            detail,
        }
    }

    /// Closes the books on every host that took part, in one round trip
    /// each: the journal's `finished` entry and the outcome appended to
    /// revisions.log. Each is written even if the other cannot be.
    pub(super) async fn close_books(&self, plan: &Plan, book: &Book, ok: bool) {
        let time = now_utc();
        let layout = &plan.bookkeeping.layout;
        let writes: Vec<(String, String)> = book
            .all()
            .into_iter()
            .filter(|(_, run)| run.touched)
            .map(|(host, run)| {
                let result = outcome(&run, ok);
                let finished = self.journal_entry(plan, "finished", Some(result.clone()));
                let entry = Entry {
                    time: time.clone(),
                    action: plan.operation.as_str().to_string(),
                    release: plan.release.to_string(),
                    previous: run.before.as_ref().map(ToString::to_string),
                    revision: plan.revision.clone(),
                    by: plan.bookkeeping.by.clone(),
                    result,
                    message: None,
                    run: None,
                };
                let line =
                    shell::each(&[layout.journal(&[finished]), layout.record(&entry.to_line())]);
                (host, line)
            })
            .collect();
        join_all(writes.into_iter().map(|(host, line)| async move {
            if let Err(e) = self
                .exec_line(&host, line, "the journal or revisions.log")
                .await
            {
                self.note(
                    Some(&host),
                    &format!("could not write the journal or revisions.log: {e}"),
                );
            }
        }))
        .await;
    }

    /// Writes `pending` entries before a step that must not start
    /// unless they are on the host; Err says why they are not (a lost
    /// connection is the host's failure, not the journal's).
    pub(super) async fn write_journal(
        &self,
        plan: &Plan,
        host: &str,
        pending: &mut Vec<journal::Entry>,
    ) -> Result<(), Failure> {
        let entries = std::mem::take(pending);
        let request = ExecRequest {
            command: plan.bookkeeping.layout.journal(&entries).render(),
            stdin: None,
            timeout: Some(Duration::from_secs(30)),
        };
        let result = self.transport.exec(host, request, &transport::Quiet).await;
        judge("journal", result).map(|_| ())
    }

    /// A bookkeeping command: failures are reported, never fatal.
    async fn quiet_exec(&self, host: &str, cmd: crate::shell::Cmd, what: &str) {
        if let Err(e) = self.exec_bookkeeping(host, cmd, what).await {
            self.note(Some(host), &format!("could not write {what}: {e}"));
        }
    }

    async fn exec_bookkeeping(
        &self,
        host: &str,
        cmd: crate::shell::Cmd,
        what: &str,
    ) -> Result<(), String> {
        self.exec_line(host, cmd.render(), what).await
    }

    /// Runs a rendered bookkeeping line on `host`.
    async fn exec_line(&self, host: &str, command: String, what: &str) -> Result<(), String> {
        let request = ExecRequest {
            command,
            stdin: None,
            timeout: Some(Duration::from_secs(30)),
        };
        let result = self.transport.exec(host, request, &transport::Quiet).await;
        judge(what, result).map(|_| ()).map_err(|e| e.error)
    }
}

/// The journal event recorded when a step of this kind succeeds.
pub(super) fn journal_event(kind: StepKind) -> Option<&'static str> {
    Some(match kind {
        StepKind::Finish => "uploaded",
        StepKind::Drain => "drained",
        StepKind::Switch => "switched",
        StepKind::Restart => "restarted",
        StepKind::Health => "healthy",
        StepKind::Enable => "enabled",
        _ => return None,
    })
}

pub(super) fn now_utc() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// For journal entries, to the millisecond: transitions a few
/// milliseconds apart keep their order, and a journal tells how long
/// each step took.
fn now_utc_ms() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}
