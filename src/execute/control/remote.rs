//! The running side of steering, over the hosts: while a run goes it
//! reads the requests on one host every [`POLL_EVERY`] (the first of its
//! mailboxes that answers, failing over to the next), and publishes its
//! state on its mailboxes whenever the state changes, together with the
//! revisions.log lines of the answers. Both are bookkeeping: trouble is
//! logged, never fatal.
//!
//! The mailboxes are the first [`MAILBOXES`] hosts of its lock in name
//! order, the ones requesters and `status` read first. Publishing on every
//! host at every batch cost 64 commands per batch at 64 hosts, and slowed
//! each batch by 0.4 s on the test fleet. Every other host of the lock
//! gets the run's end (and every answer's revisions.log line) with the
//! lock's release, in the same round trip.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use tokio_util::sync::CancellationToken;

use super::Control;
use crate::host::Layout;
use crate::host::steer::{self, Ended, Polled, Requests};
use crate::shell::Cmd;
use crate::transport::{ExecRequest, Quiet, Transport};

/// How often the run looks for requests: a request is picked up within
/// this, plus one round trip.
pub const POLL_EVERY: Duration = Duration::from_millis(500);

/// Hosts that take requests and carry the run's state while it runs.
pub const MAILBOXES: usize = 3;

/// How long one poll or publish may take on a host before it counts as
/// failed there.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Steering<'t, T: Transport> {
    transport: &'t T,
    layout: Layout,
    /// The run's mailboxes (see the module documentation): polled in turn.
    hosts: Vec<String>,
    control: Arc<Control>,
    /// Every revisions.log line of an answer published so far: the hosts
    /// that are not mailboxes get them at the end.
    answered: std::sync::Mutex<Vec<String>>,
}

impl<'t, T: Transport> Steering<'t, T> {
    /// `hosts`: those holding the run's lock, in name order.
    pub fn new(
        transport: &'t T,
        layout: Layout,
        mut hosts: Vec<String>,
        control: Arc<Control>,
    ) -> Steering<'t, T> {
        hosts.truncate(MAILBOXES);
        Steering {
            transport,
            layout,
            hosts,
            control,
            answered: std::sync::Mutex::default(),
        }
    }

    /// Runs `work` while taking requests and publishing the run's state.
    /// The first publication opens the hosts to requests.
    pub async fn alongside<F: Future>(&self, work: F) -> F::Output {
        let done = CancellationToken::new();
        let work = async {
            let out = work.await;
            done.cancel();
            out
        };
        let (out, (), ()) = tokio::join!(work, self.poll(&done), self.publish(&done));
        out
    }

    /// The run is over: per host of its lock, the command that publishes
    /// how it ended (requesters waiting for it read this) and closes it to
    /// requests; on a host that was not a mailbox, with every answer's
    /// revisions.log line. It goes ahead of the lock's release, in the
    /// same round trip.
    pub fn ended(&self, exit_code: u8, message: Option<String>) -> Ending {
        let (mut state, log) = self.control.publication();
        state.stage = steer::Stage::Ended;
        state.bake_left_ms = None;
        state.paused = None;
        state.pending.clear();
        state.ended = Some(Ended { exit_code, message });
        let mut all = self.answered.lock().expect("answered").clone();
        all.extend(log.iter().cloned());
        Ending {
            mailboxes: self.hosts.clone(),
            mailbox: self.layout.steer_publish(Requests::Close, &state, &log),
            other: self.layout.steer_publish(Requests::Close, &state, &all),
        }
    }

    /// Reads requests from one host until `done`.
    async fn poll(&self, done: &CancellationToken) {
        if self.hosts.is_empty() {
            return;
        }
        let cmd = self.layout.steer_poll().render();
        let mut at = 0;
        loop {
            tokio::select! {
                () = tokio::time::sleep(POLL_EVERY) => {}
                () = done.cancelled() => return,
            }
            let host = &self.hosts[at];
            match self.exec(host, cmd.clone()).await {
                Some(stdout) => {
                    let polled = Polled::parse(&stdout);
                    for (id, why) in polled.unreadable {
                        self.control.unreadable(&id, &why);
                    }
                    for request in polled.requests {
                        self.control.receive(request);
                    }
                }
                None => {
                    at = (at + 1) % self.hosts.len();
                    tracing::debug!(
                        "steering: {host} did not answer; reading requests on {} now",
                        self.hosts[at]
                    );
                }
            }
        }
    }

    /// Publishes the state on the mailboxes each time it changes, until
    /// `done`. A mailbox that missed the first publication (which opens it
    /// to requests) gets it again the next time.
    async fn publish(&self, done: &CancellationToken) {
        let mut changed = self.control.subscribe();
        let mut opened = vec![false; self.hosts.len()];
        loop {
            changed.borrow_and_update();
            let (state, log) = self.control.publication();
            let results = join_all(self.hosts.iter().zip(&opened).map(|(host, open)| {
                let mode = if *open {
                    Requests::Keep
                } else {
                    Requests::Open
                };
                let cmd = self.layout.steer_publish(mode, &state, &log).render();
                self.exec(host, cmd)
            }))
            .await;
            for (open, result) in opened.iter_mut().zip(&results) {
                *open |= result.is_some();
            }
            if results.iter().all(Option::is_none) && !log.is_empty() {
                // Not written anywhere: kept for the next publication.
                self.control.unwritten(log);
            } else {
                self.answered.lock().expect("answered").extend(log);
            }
            tokio::select! {
                r = changed.changed() => if r.is_err() { return },
                () = done.cancelled() => return,
            }
        }
    }

    /// Runs `command` on `host`; its stdout if it succeeded.
    async fn exec(&self, host: &str, command: String) -> Option<String> {
        let request = ExecRequest {
            command,
            stdin: None,
            timeout: Some(COMMAND_TIMEOUT),
        };
        match self.transport.exec(host, request, &Quiet).await {
            Ok(out) if out.exit.success() => Some(out.stdout_text()),
            Ok(out) => {
                tracing::debug!("steering on {host}: {} {}", out.exit, out.stderr_tail(3));
                None
            }
            Err(e) => {
                tracing::debug!("steering on {host}: {e}");
                None
            }
        }
    }
}

/// The run's last words on each host of its lock ([`Steering::ended`]).
pub struct Ending {
    mailboxes: Vec<String>,
    mailbox: Cmd,
    other: Cmd,
}

impl Ending {
    pub fn on(&self, host: &str) -> &Cmd {
        if self.mailboxes.iter().any(|m| m == host) {
            &self.mailbox
        } else {
            &self.other
        }
    }
}
