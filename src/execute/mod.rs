//! Runs a [`Plan`] over a [`Transport`] and reports [`Event`]s.
//!
//! The executor decides nothing about *what* to run: that is the plan. It
//! owns *how*: phases in order, the hosts of a phase at the same time, each
//! host's steps in order, and the safety rules that hold whatever fails:
//!
//! - a failure in the prepare phase stops the run before any host switches;
//! - a batch starts only when every host of the previous one is done;
//! - when a host fails, its batch still finishes (no host is abandoned
//!   mid-step); then the plan's failure policy decides: roll every switched
//!   host back (the plan's `undo` pipelines), stop, or go on within the
//!   allowed share of failures;
//! - no host is taken out of service without room in the capacity budget
//!   (`capacity`): at most `max_unavailable` hosts are out at any moment,
//!   counting those found out before the run;
//! - once a batch is back in service it is watched for its bake (`watch`)
//!   before the next batch starts: health, the load balancer's state and
//!   the batch's gates (`gates`);
//! - a host that was drained (or whose drain failed halfway) is put back
//!   unless it runs a release that did not prove healthy (`pipeline`): no
//!   healthy host stays out of the load balancer because shipit stopped;
//! - on a cancel (Ctrl-C) no new step starts and running steps finish; on a
//!   second one (hurry) waits are cut short and only the essentials run.
//!
//! Every host keeps a journal of its transitions (`journal`) so that a run
//! whose machine died can be shown, repaired and resumed.
//!
//! The files follow a run: `run` (the phases in order) → `rollout` (batch
//! after batch, the failure policy) → `pipeline` (one host's steps, putting
//! it back) → `step` (one step, judged); beside them `undo`, `watch`,
//! `gates`, `capacity`, `journal`, `hooks`, `book` (where each host
//! stands), `health` and `lb`; and `control`, which steers a run while it
//! goes (pause, resume, promote, abort, rollback, tune) at its safe points.

mod book;
mod capacity;
pub mod control;
mod gates;
pub mod health;
mod hooks;
mod journal;
pub mod lb;
mod pipeline;
mod rollout;
mod run;
mod step;
mod undo;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::plan::Plan;
use crate::report::redact::Redact;
use crate::report::{Event, HostSummary, Reporter};
use crate::transport::local::LocalTransport;
use crate::transport::{Stdin, Transport};

pub use capacity::{Budget, Refused};
pub use control::{Control, Steered};

/// How a run ended, host by host.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub ok: bool,
    pub interrupted: bool,
    /// The failure policy (or `--rollback-on-abort`) returned hosts to
    /// their previous release.
    pub undo_ran: bool,
    /// Hosts that could not be returned to their previous release.
    pub undo_failed: Vec<String>,
    /// A run-level reason the run stopped (a failing hook), if no host did.
    pub stopped_by: Option<String>,
    /// Stopped by an `abort` or a `rollback` from someone.
    pub steered: Option<Steered>,
    pub hosts: Vec<HostSummary>,
}

pub struct Executor<'a, T: Transport, L: Transport = LocalTransport> {
    transport: &'a T,
    local: &'a L,
    reporter: &'a dyn Reporter,
    archive: Option<Stdin>,
    /// Uploads running at once: as many as the transport carries well
    /// ([`Transport::bulk_at_once`]).
    uploads: Arc<tokio::sync::Semaphore>,
    http: reqwest::Client,
    command_timeout: Option<Duration>,
    cancel: CancellationToken,
    hurry: CancellationToken,
    control: Option<Arc<Control>>,
}

impl<'a, T: Transport> Executor<'a, T> {
    pub fn new(transport: &'a T, reporter: &'a dyn Reporter) -> Self {
        Executor::with_local(transport, &LocalTransport, reporter)
    }
}

impl<'a, T: Transport, L: Transport> Executor<'a, T, L> {
    /// `local` runs the plan's commands for the machine running shipit.
    pub fn with_local(transport: &'a T, local: &'a L, reporter: &'a dyn Reporter) -> Self {
        Executor {
            transport,
            local,
            reporter,
            archive: None,
            uploads: Arc::new(tokio::sync::Semaphore::new(transport.bulk_at_once().max(1))),
            http: health::client(),
            command_timeout: None,
            cancel: CancellationToken::new(),
            hurry: CancellationToken::new(),
            control: None,
        }
    }

    /// The release archive streamed by `Upload` steps.
    pub fn archive(mut self, archive: impl Into<Stdin>) -> Self {
        self.archive = Some(archive.into());
        self
    }

    pub fn command_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// `cancel`: stop at the next step boundary, let running steps finish,
    /// put drained hosts back. `hurry`: also cut waits short and skip the
    /// undo of switched hosts.
    pub fn cancel_on(mut self, cancel: CancellationToken, hurry: CancellationToken) -> Self {
        self.cancel = cancel;
        self.hurry = hurry;
        self
    }

    /// Requests from `shipit STAGE pause` and the like reach the run
    /// through `control`, which it asks at its safe points.
    pub fn control(mut self, control: Arc<Control>) -> Self {
        self.control = Some(control);
        self
    }

    pub async fn run(&self, plan: &Plan) -> RunReport {
        // Every event of the run goes through the mask: a command may print
        // a secret it was given, and its output and errors reach the user.
        let redact = Redact::new(self.reporter, plan.secrets());
        if redact.is_empty() {
            return self.run_plan(plan).await;
        }
        Executor {
            transport: self.transport,
            local: self.local,
            reporter: &redact,
            archive: self.archive.clone(),
            uploads: self.uploads.clone(),
            http: self.http.clone(),
            command_timeout: self.command_timeout,
            cancel: self.cancel.clone(),
            hurry: self.hurry.clone(),
            control: self.control.clone(),
        }
        .run_plan(plan)
        .await
    }

    fn note(&self, host: Option<&str>, message: &str) {
        self.reporter.event(&Event::Note {
            host: host.map(ToString::to_string),
            message: message.to_string(),
        });
    }
}

#[cfg(test)]
mod tests;
