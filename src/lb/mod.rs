//! Load balancers: one interface, [`Driver`], and one module per kind of
//! balancer that implements it. A driver owns everything about its kind:
//! its `[lb]` keys and their validation, the preflight that every host is
//! known to the balancer (and in what state), the drain (take out, then
//! wait until no request is left), the enable (put back, then wait until
//! traffic flows), and what `--dry-run` and `check` show.
//!
//! Adding a driver means writing its module and adding one line to
//! [`DRIVERS`]. The drivers today:
//!
//! - `haproxy`: HAProxy's runtime API over its admin socket;
//! - `command`: the user's own drain / enable commands;
//! - `caddy`: Caddy's admin API, on one reverse_proxy handler's upstreams;
//! - `nginx`: a file of `server` lines nginx includes, edited and reloaded;
//! - `none` (no `[lb]`): no load balancer; a restarting host drops requests.
//!
//! The planner puts [`LbAction`]s (a driver, an operation and a
//! [`Member`]: one host as the balancer knows it) into plans as plain
//! data; the executor performs them through the driver with an [`LbCtx`].

pub mod caddy;
pub mod command;
pub mod haproxy;
pub mod nginx;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::LbSettings;
use crate::host::check::Verdict;
use crate::shell::{Cmd, Word};
use crate::transport::{ExecObserver, ExecRequest, Output, TransportError};

/// Every driver, by its `driver = "..."` name. A new driver is one line.
pub const DRIVERS: &[DriverSpec] = &[haproxy::SPEC, command::SPEC, caddy::SPEC, nginx::SPEC];

/// `[lb]` keys every driver understands (besides its own).
pub const SHARED_KEYS: &[&str] = &["driver", "drain_timeout", "drain_timeout_action"];

/// How `[lb] driver = "NAME"` becomes a driver.
pub struct DriverSpec {
    pub name: &'static str,
    /// The `[lb]` keys this driver reads, besides [`SHARED_KEYS`].
    pub keys: &'static [&'static str],
    /// Validates the driver's keys (errors name the key) and builds it.
    pub parse: fn(&mut LbSettings<'_, '_>, Shared) -> Option<Arc<dyn Driver>>,
}

/// The values of [`SHARED_KEYS`], checked before a driver's own keys.
#[derive(Debug, Clone, Copy)]
pub struct Shared {
    pub drain_timeout: Duration,
    pub drain_timeout_action: OnTimeout,
}

/// Every `[lb]` key some driver (or every driver) reads.
pub fn all_keys() -> Vec<&'static str> {
    let mut keys: Vec<&'static str> = SHARED_KEYS
        .iter()
        .chain(DRIVERS.iter().flat_map(|d| d.keys))
        .copied()
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// The spec of `driver = "NAME"`.
pub fn spec(name: &str) -> Option<&'static DriverSpec> {
    DRIVERS.iter().find(|d| d.name == name)
}

/// A kind of load balancer (see the module documentation).
#[async_trait::async_trait]
pub trait Driver: Send + Sync + fmt::Debug {
    /// The `driver = "..."` name.
    fn name(&self) -> &'static str;

    /// `host` as this balancer knows it, with what the driver needs to act
    /// on it (its server name, its commands rendered for it).
    fn member(&self, host: &HostRef<'_>) -> Member;

    /// The machines the driver reaches over SSH; shipit connects to them up
    /// front with the hosts.
    fn ssh_hosts(&self) -> Vec<&Via>;

    /// One line for logs and events: what `op` does to `member`, and where.
    fn summary(&self, op: LbOp, member: &Member) -> String;

    /// The dry-run text: every request or command, and what shipit waits for.
    fn describe(&self, op: LbOp, member: &Member) -> String;

    /// Before anything changes: each member is known to the balancer(s)
    /// (else a problem naming it), and the state it is in.
    async fn preflight(&self, ctx: &LbCtx<'_>, members: &[Member]) -> Preflight;

    /// Takes `member` out, then waits until it has no request left (within
    /// the driver's drain timeout, then warn or fail as configured).
    async fn drain(&self, ctx: &LbCtx<'_>, member: &Member) -> Result<Done, LbError>;

    /// Puts `member` back, then waits until the balancer sends it traffic
    /// again (within the driver's enable timeout). `proof` says whether
    /// shipit's own health check has just passed on it: a balancer that
    /// can be told so need not wait for its own next check.
    async fn enable(&self, ctx: &LbCtx<'_>, member: &Member, proof: Proof)
    -> Result<Done, LbError>;

    /// The state of each member now, as the balancer sees it; members it
    /// cannot tell about are [`ServiceState::Unknown`].
    async fn states(
        &self,
        ctx: &LbCtx<'_>,
        members: &[Member],
    ) -> Result<BTreeMap<String, ServiceState>, String>;

    /// What `shipit STAGE check` says about `member`: whether the balancer
    /// can be reached and knows it. The default asks [`Driver::preflight`].
    async fn check(&self, ctx: &LbCtx<'_>, member: &Member) -> Verdict {
        let found = self.preflight(ctx, std::slice::from_ref(member)).await;
        if let Some(problem) = found.problems.into_iter().next() {
            return Verdict::fail(problem);
        }
        let state = found
            .states
            .get(&member.host)
            .copied()
            .unwrap_or(ServiceState::Unknown);
        Verdict::ok(format!(
            "{} {}: {}",
            self.name(),
            member.server,
            state.as_str()
        ))
    }

    /// The driver's settings, for `--dry-run --json`.
    fn settings(&self) -> serde_json::Value;

    /// The HTTP answers each member gave, as the balancer counts them (one
    /// entry per balancer and member; the counts only grow until the
    /// balancer restarts): what error-rate gates measure. `None`: this kind
    /// of balancer does not count answers per server.
    async fn answers(
        &self,
        _ctx: &LbCtx<'_>,
        _members: &[Member],
    ) -> Option<Result<Vec<Counted>, String>> {
        None
    }
}

/// One member's answers as one balancer counted them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counted {
    /// Which balancer counted (an HA pair counts twice, apart).
    pub balancer: String,
    pub host: String,
    /// `None`: the balancer does not list the member (any more).
    pub answers: Option<Answers>,
}

/// HTTP answers a server gave since the balancer started counting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Answers {
    /// Every answer, whatever its status.
    pub total: u64,
    /// Answers with a 5xx status.
    pub errors: u64,
}

/// What a driver learns about a host to make a [`Member`] of it.
pub struct HostRef<'a> {
    pub vars: &'a crate::config::Vars,
    /// SHIPIT_* variables for commands about this host.
    pub env: &'a [(String, Word)],
    /// Where commands for the machine running shipit run.
    pub local_dir: Option<&'a str>,
}

/// One host as its load balancer knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    pub host: String,
    /// The balancer's name or address for it (a server name, `addr:port`).
    pub server: String,
    /// Commands rendered for this host, by purpose (the command driver's
    /// `drain`, `enable`, `wait_drained`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub commands: BTreeMap<&'static str, Cmd>,
}

/// A drain or an enable of one host, as a plan holds it.
#[derive(Debug, Clone)]
pub struct LbAction {
    pub op: LbOp,
    pub driver: Arc<dyn Driver>,
    pub member: Member,
}

impl LbAction {
    pub fn summary(&self) -> String {
        self.driver.summary(self.op, &self.member)
    }
}

impl fmt::Display for LbAction {
    /// The dry-run text.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.driver.describe(self.op, &self.member))
    }
}

impl Serialize for LbAction {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Shown<'a> {
            driver: &'static str,
            op: LbOp,
            member: &'a Member,
            settings: serde_json::Value,
            text: String,
        }
        Shown {
            driver: self.driver.name(),
            op: self.op,
            member: &self.member,
            settings: self.driver.settings(),
            text: self.to_string(),
        }
        .serialize(s)
    }
}

/// Everything an action needs from the run.
pub struct LbCtx<'a> {
    pub remote: &'a dyn Remote,
    /// Sees the output of commands run for the action (`-v`).
    pub observer: &'a dyn ExecObserver,
    pub command_timeout: Option<Duration>,
    /// Ends a drain's waiting early (a second Ctrl-C). An enable never
    /// stops early: putting a host back must finish.
    pub cancel: &'a CancellationToken,
}

/// What shipit knows about a host it puts back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proof {
    /// shipit's own health check has just passed on it, for the release it
    /// runs now.
    Checked,
    /// Nothing: no health check is configured, or it failed or was cut
    /// short. Only the balancer's own check may judge the host.
    Unchecked,
}

/// Runs a command where a driver says: on this machine or over SSH.
pub trait Remote: Send + Sync {
    fn exec<'a>(
        &'a self,
        via: &'a Via,
        request: ExecRequest,
        observer: &'a dyn ExecObserver,
    ) -> BoxFuture<'a, Result<Output, TransportError>>;
}

/// What a successful drain or enable reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Done {
    /// Short: `ok`, `ok, sessions left`.
    pub result: String,
    /// Shown as notes: things that went on despite a problem.
    pub warnings: Vec<String>,
}

impl Done {
    pub fn ok() -> Done {
        Done {
            result: "ok".into(),
            warnings: Vec::new(),
        }
    }
}

/// Why a drain or enable failed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LbError {
    /// Short: `failed`, `not drained`, `interrupted`.
    pub result: String,
    /// Everything the user needs: which balancer, what it said.
    pub error: String,
    /// Cut short by a second Ctrl-C rather than failed.
    pub interrupted: bool,
}

impl LbError {
    pub fn failed(error: impl Into<String>) -> LbError {
        LbError {
            result: "failed".into(),
            error: error.into(),
            interrupted: false,
        }
    }
}

/// What a preflight found.
#[derive(Debug, Default, Clone)]
pub struct Preflight {
    /// Reasons not to start: each names the balancer and the servers.
    pub problems: Vec<String>,
    /// Worth knowing, not blocking.
    pub warnings: Vec<String>,
    /// Each member's state, by host name.
    pub states: BTreeMap<String, ServiceState>,
}

/// Where a load balancer command runs, or its admin socket is reached from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Via {
    /// The machine running shipit.
    Local,
    /// A host of the stage's inventory, over its SSH connection.
    Host { name: String },
    /// Another machine, reached over SSH with the stage's `[ssh]` settings:
    /// `user@host[:port]`, kept as written in `spec` (which also names the
    /// connection in messages).
    Ssh {
        spec: String,
        user: String,
        address: String,
        port: Option<u16>,
    },
}

impl Via {
    /// The name of the SSH connection commands go through; `None` for local.
    pub fn connection(&self) -> Option<&str> {
        match self {
            Via::Local => None,
            Via::Host { name } => Some(name),
            Via::Ssh { spec, .. } => Some(spec),
        }
    }
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Via::Local => f.write_str("local"),
            Via::Host { name } => f.write_str(name),
            Via::Ssh { spec, .. } => f.write_str(spec),
        }
    }
}

/// What happens when `drain_timeout` passes with sessions left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnTimeout {
    /// Say so in the output and go on with the restart.
    #[default]
    Warn,
    /// Fail the host's drain step; the host is put back.
    Fail,
}

impl OnTimeout {
    pub fn as_str(self) -> &'static str {
        match self {
            OnTimeout::Warn => "warn",
            OnTimeout::Fail => "fail",
        }
    }
}

/// Whether a load balancer sends a host traffic, as the balancer reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceState {
    /// Taking traffic: ready, and its health check passes.
    InService,
    /// Set to drain by someone: finishing what it has, taking nothing new.
    Draining,
    /// Set to maintenance by someone: no traffic.
    Maintenance,
    /// Ready, but failing the balancer's own health check: no traffic.
    Down,
    /// The driver cannot tell (a `command` driver); counted as in service.
    Unknown,
}

impl ServiceState {
    /// Not taking traffic: it fills room under `max_unavailable`.
    pub fn is_out(self) -> bool {
        matches!(
            self,
            ServiceState::Draining | ServiceState::Maintenance | ServiceState::Down
        )
    }

    /// Taken out on purpose, by someone: shipit leaves it out.
    pub fn set_by_operator(self) -> bool {
        matches!(self, ServiceState::Draining | ServiceState::Maintenance)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ServiceState::InService => "in service",
            ServiceState::Draining => "drain",
            ServiceState::Maintenance => "maint",
            ServiceState::Down => "DOWN",
            ServiceState::Unknown => "unknown",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LbOp {
    /// Take the host out of the load balancer.
    Drain,
    /// Put it back.
    Enable,
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

/// A duration as people read it, to the millisecond.
pub fn human(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_millis(d.as_millis() as u64))
}
