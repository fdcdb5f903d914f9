//! Performing a plan's load balancer actions, and checking HAProxy before
//! a run.
//!
//! HAProxy (`driver = "haproxy"`): each request goes to the admin socket
//! of every load balancer of the action, all at once:
//!
//! - reached from the machine running shipit (`via = "local"`), shipit
//!   connects to the UNIX or TCP socket itself;
//! - reached through a host (`via = "lb1"` or `"user@lb1"`), the request
//!   is piped into `socat` (or `nc`) on that host over its SSH connection
//!   (`lb::haproxy::relay`).
//!
//! A drain sets the server to `drain`, polls `show stat` until HAProxy
//! counts no session and no queued request for it (or `drain_timeout`
//! passes: a warning, or a failure with `drain_timeout_action = "fail"`),
//! then sets `maint` so its health checks do not flap while it restarts.
//! An enable sets `ready` and polls until HAProxy's own health check
//! reports the server plain `UP` (after `maint`, HAProxy shows "UP 1/2"
//! until one check passed), bounded by `enable_timeout`. So traffic really
//! flows to a host again before the next batch drains the next one.
//!
//! The command driver runs the user's command where `run_on` says and,
//! for a drain, polls `wait_drained` until it exits 0.
//!
//! [`preflight`] runs after connecting and before anything changes: every
//! server the plan drains must exist in its backend on every HAProxy.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Failure, judge};
use crate::lb::haproxy::{self, Request, ServerStat, State};
use crate::lb::{
    AdminSocket, Balancer, CommandAction, HaproxyAction, LbAction, LbOp, OnTimeout, Via,
};
use crate::plan::{Action, Plan};
use crate::shell::Cmd;
use crate::transport::{ExecObserver, ExecRequest, Output, Quiet, Transport, TransportError};

/// How often HAProxy is asked about a server while shipit waits.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Longest one runtime API request may take, connection included.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// What a successful action reports.
pub(super) struct Done {
    pub result: String,
    /// Shown as notes: things that went on despite a problem.
    pub warnings: Vec<String>,
}

/// Everything an action needs from the executor.
pub(super) struct LbRun<'a, T: Transport, L: Transport> {
    pub transport: &'a T,
    pub local: &'a L,
    pub observer: &'a dyn ExecObserver,
    pub command_timeout: Option<Duration>,
    /// Ends the waiting of a drain early. An enable never stops early:
    /// putting a host back must finish.
    pub cancel: &'a CancellationToken,
}

impl<T: Transport, L: Transport> LbRun<'_, T, L> {
    pub async fn perform(&self, action: &LbAction) -> Result<Done, Failure> {
        match action {
            LbAction::Haproxy(a) => self.haproxy(a).await,
            LbAction::Command(c) => self.command(c).await,
        }
    }

    async fn haproxy(&self, a: &HaproxyAction) -> Result<Done, Failure> {
        let results = join_all(a.balancers.iter().map(|b| async move {
            match a.op {
                LbOp::Drain => self.drain_one(a, b).await,
                LbOp::Enable => self.enable_one(a, b).await.map(|()| None),
            }
        }))
        .await;
        let mut warnings = Vec::new();
        let mut errors = Vec::new();
        for result in results {
            match result {
                Ok(Some(warning)) => warnings.push(warning),
                Ok(None) => {}
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            let result = if warnings.is_empty() {
                "ok".to_string()
            } else {
                "ok, sessions left".to_string()
            };
            Ok(Done { result, warnings })
        } else {
            Err(Failure {
                result: "failed".into(),
                error: errors.join("\n"),
                ..Failure::default()
            })
        }
    }

    /// drain → wait for no sessions → maint, on one load balancer. Ok with a
    /// warning if sessions were left and that is allowed.
    async fn drain_one(&self, a: &HaproxyAction, b: &Balancer) -> Result<Option<String>, String> {
        let target = format!("{}/{}", a.backend, a.server);
        self.set_state(a, b, State::Drain).await?;
        let deadline = Instant::now() + a.drain_timeout;
        let mut warning = None;
        loop {
            let stat = self.server_stat(a, b).await?;
            if stat.is_idle() {
                break;
            }
            if self.cancel.is_cancelled() {
                return Err(format!(
                    "haproxy {b}: interrupted while {target} still had {} session(s)",
                    stat.scur + stat.qcur
                ));
            }
            if Instant::now() >= deadline {
                let left = format!(
                    "haproxy {b}: {target} still has {} session(s){} after {}",
                    stat.scur,
                    if stat.qcur > 0 {
                        format!(" and {} queued request(s)", stat.qcur)
                    } else {
                        String::new()
                    },
                    humantime::format_duration(a.drain_timeout)
                );
                match a.on_drain_timeout {
                    OnTimeout::Warn => {
                        warning = Some(format!(
                            "{left}; restarting anyway (lb.drain_timeout_action = \"warn\")"
                        ));
                        break;
                    }
                    OnTimeout::Fail => {
                        return Err(format!("{left} (lb.drain_timeout_action = \"fail\")"));
                    }
                }
            }
            tokio::select! {
                () = tokio::time::sleep(POLL_INTERVAL) => {}
                () = self.cancel.cancelled() => {}
            }
        }
        self.set_state(a, b, State::Maint).await?;
        Ok(warning)
    }

    /// ready → wait until HAProxy's own check says UP, on one load balancer.
    async fn enable_one(&self, a: &HaproxyAction, b: &Balancer) -> Result<(), String> {
        self.set_state(a, b, State::Ready).await?;
        let deadline = Instant::now() + a.enable_timeout;
        loop {
            let stat = self.server_stat(a, b).await?;
            if stat.is_up() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "haproxy {b}: {}/{} is {} after {}, not UP; check that HAProxy's health check reaches the host (lb.enable_timeout)",
                    a.backend,
                    a.server,
                    stat.describe(),
                    humantime::format_duration(a.enable_timeout)
                ));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    async fn set_state(&self, a: &HaproxyAction, b: &Balancer, state: State) -> Result<(), String> {
        let request = Request::set_state(&a.backend, &a.server, state)
            .map_err(|e| format!("haproxy {b}: {e}"))?;
        let answer = ask(self.transport, b, &request).await?;
        haproxy::set_state_answer(&answer).map_err(|e| format!("haproxy {b}: `{request}`: {e}"))
    }

    async fn server_stat(&self, a: &HaproxyAction, b: &Balancer) -> Result<ServerStat, String> {
        let answer = ask(self.transport, b, &Request::ServerStats).await?;
        let stats = haproxy::parse_stat(&answer)
            .map_err(|e| format!("haproxy {b}: `{}`: {e}", Request::ServerStats))?;
        stats
            .into_iter()
            .find(|s| s.backend == a.backend && s.server == a.server)
            .ok_or_else(|| {
                format!(
                    "haproxy {b}: backend {} has no server {} (any more)",
                    a.backend, a.server
                )
            })
    }

    async fn command(&self, c: &CommandAction) -> Result<Done, Failure> {
        let shown = crate::lb::LbAction::Command(c.clone()).summary();
        judge(
            &shown,
            self.exec(&c.run_on, &c.cmd, self.command_timeout).await,
        )?;
        let Some(wait) = &c.wait else {
            return Ok(Done {
                result: "ok".into(),
                warnings: Vec::new(),
            });
        };
        let deadline = Instant::now() + wait.timeout;
        let mut tries = 0;
        loop {
            tries += 1;
            let left = deadline.saturating_duration_since(Instant::now());
            let limit = self
                .command_timeout
                .unwrap_or(left)
                .max(Duration::from_secs(1));
            let out = self.exec(&c.run_on, &wait.cmd, Some(limit)).await;
            let last = match out {
                Ok(out) if out.exit.success() => {
                    return Ok(Done {
                        result: format!(
                            "ok ({tries} wait tr{})",
                            if tries == 1 { "y" } else { "ies" }
                        ),
                        warnings: Vec::new(),
                    });
                }
                Ok(out) => out.exit.to_string(),
                Err(TransportError::Timeout { .. }) => "timed out".to_string(),
                Err(e) => {
                    return Err(Failure {
                        result: "error".into(),
                        error: e.to_string(),
                        ..Failure::default()
                    });
                }
            };
            if self.cancel.is_cancelled() {
                return Err(Failure::interrupted(&format!(
                    "interrupted while waiting for `{}`",
                    wait.cmd.display()
                )));
            }
            if Instant::now() + wait.interval >= deadline {
                let what = format!(
                    "`{}` did not exit 0 within {} ({tries} tr{}, last: {last})",
                    wait.cmd.display(),
                    humantime::format_duration(wait.timeout),
                    if tries == 1 { "y" } else { "ies" }
                );
                return match wait.on_timeout {
                    OnTimeout::Warn => Ok(Done {
                        result: "ok, not drained".into(),
                        warnings: vec![format!(
                            "{what}; restarting anyway (lb.drain_timeout_action = \"warn\")"
                        )],
                    }),
                    OnTimeout::Fail => Err(Failure {
                        result: "not drained".into(),
                        error: format!("{what} (lb.drain_timeout_action = \"fail\")"),
                        ..Failure::default()
                    }),
                };
            }
            tokio::select! {
                () = tokio::time::sleep(wait.interval) => {}
                () = self.cancel.cancelled() => {}
            }
        }
    }

    async fn exec(
        &self,
        on: &Via,
        cmd: &Cmd,
        timeout: Option<Duration>,
    ) -> Result<Output, TransportError> {
        let request = ExecRequest {
            command: cmd.render(),
            stdin: None,
            timeout,
        };
        match on.connection() {
            None => self.local.exec("local", request, self.observer).await,
            Some(host) => self.transport.exec(host, request, self.observer).await,
        }
    }
}

/// What one load balancer says about one server of a backend, for
/// `shipit check`: its state, or why it cannot be asked or is unknown.
pub async fn server_state<T: Transport>(
    transport: &T,
    balancer: &Balancer,
    backend: &str,
    server: &str,
) -> Result<haproxy::ServerState, String> {
    let request =
        Request::servers_state(backend).map_err(|e| format!("haproxy {balancer}: {e}"))?;
    let answer = ask(transport, balancer, &request).await?;
    let known = haproxy::parse_servers_state(&answer)
        .map_err(|e| format!("haproxy {balancer}: `{request}`: {e}"))?;
    known
        .into_iter()
        .find(|k| k.server == server)
        .ok_or_else(|| format!("haproxy {balancer}: backend {backend} has no server {server}"))
}

/// Sends one request to a load balancer and returns its answer.
async fn ask<T: Transport>(
    transport: &T,
    balancer: &Balancer,
    request: &Request,
) -> Result<String, String> {
    let line = request.line();
    let Some(host) = balancer.via.connection() else {
        return local_socket(&balancer.socket, &line)
            .await
            .map_err(|e| format!("haproxy {balancer}: `{request}`: {e}"));
    };
    let relay = haproxy::relay(&balancer.socket);
    let exec = ExecRequest {
        command: relay.render(),
        stdin: Some(Bytes::from(line)),
        timeout: Some(ANSWER_TIMEOUT),
    };
    match transport.exec(host, exec, &Quiet).await {
        Ok(out) if out.exit.success() => Ok(out.stdout_text()),
        Ok(out) => Err(format!(
            "haproxy {balancer}: `{request}`: `{}` on {host} ended with {}: {}",
            relay.display(),
            out.exit,
            match out.stderr_tail(3) {
                tail if tail.is_empty() => "(no output)".to_string(),
                tail => tail,
            }
        )),
        Err(e) => Err(format!("haproxy {balancer}: `{request}`: {e}")),
    }
}

/// One exchange with a socket on this machine: the request, then the
/// answer until HAProxy closes the connection.
async fn local_socket(socket: &AdminSocket, line: &str) -> Result<String, String> {
    let exchange = async {
        match socket {
            AdminSocket::Unix { path } => {
                let mut stream = tokio::net::UnixStream::connect(path).await?;
                talk(&mut stream, line).await
            }
            AdminSocket::Tcp { host, port } => {
                let mut stream = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                talk(&mut stream, line).await
            }
        }
    };
    match tokio::time::timeout(ANSWER_TIMEOUT, exchange).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(e)) => Err(format!("cannot talk to the admin socket: {e}")),
        Err(_) => Err(format!(
            "no answer within {}",
            humantime::format_duration(ANSWER_TIMEOUT)
        )),
    }
}

async fn talk<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    line: &str,
) -> std::io::Result<String> {
    stream.write_all(line.as_bytes()).await?;
    // Like socat at the end of its input: HAProxy answers, then closes.
    stream.shutdown().await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// What [`preflight`] found.
#[derive(Debug, Default)]
pub struct Preflight {
    /// Reasons not to start: each names the load balancer, the backend
    /// and the servers.
    pub problems: Vec<String>,
    /// Worth knowing, not blocking.
    pub warnings: Vec<String>,
}

/// Checks, before anything changes, that every server the plan drains
/// exists in its backend on every HAProxy of the plan (`show servers
/// state`). Also warns about servers an operator already took out.
pub async fn preflight<T: Transport>(plan: &Plan, transport: &T) -> Preflight {
    // (load balancer, backend) → the (host, server) pairs drained there.
    let mut wanted: BTreeMap<(Balancer, String), Vec<(String, String)>> = BTreeMap::new();
    for pipeline in plan.batches.iter().flatten() {
        for step in &pipeline.steps {
            if let Action::Lb {
                lb: LbAction::Haproxy(a),
            } = &step.action
                && a.op == LbOp::Drain
            {
                for b in &a.balancers {
                    wanted
                        .entry((b.clone(), a.backend.clone()))
                        .or_default()
                        .push((pipeline.host.clone(), a.server.clone()));
                }
            }
        }
    }
    let answers = join_all(
        wanted
            .iter()
            .map(|((balancer, backend), servers)| async move {
                let result = match Request::servers_state(backend) {
                    Ok(request) => ask(transport, balancer, &request).await.and_then(|answer| {
                        haproxy::parse_servers_state(&answer)
                            .map_err(|e| format!("haproxy {balancer}: `{request}`: {e}"))
                    }),
                    Err(e) => Err(format!("haproxy {balancer}: {e}")),
                };
                (balancer, backend, servers, result)
            }),
    )
    .await;
    let mut out = Preflight::default();
    for (balancer, backend, servers, result) in answers {
        let known = match result {
            Ok(known) => known,
            Err(e) => {
                out.problems.push(e);
                continue;
            }
        };
        let missing: Vec<&str> = servers
            .iter()
            .filter(|(_, server)| !known.iter().any(|k| &k.server == server))
            .map(|(_, server)| server.as_str())
            .collect();
        if !missing.is_empty() {
            let has: Vec<&str> = known.iter().map(|k| k.server.as_str()).collect();
            out.problems.push(format!(
                "haproxy {balancer}: backend {backend} has no server {} (it has {}); check lb.server and the backend's `server` lines",
                missing.join(", "),
                if has.is_empty() {
                    "none".to_string()
                } else {
                    has.join(", ")
                }
            ));
        }
        for (host, server) in servers {
            if let Some(k) = known.iter().find(|k| &k.server == server)
                && (k.in_maint() || k.draining())
            {
                out.warnings.push(format!(
                    "{host}: {backend}/{server} is already in {} on haproxy {balancer}; shipit sets it ready once {host} is deployed",
                    if k.in_maint() { "maintenance" } else { "drain" }
                ));
            }
        }
    }
    out
}
