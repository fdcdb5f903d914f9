//! Load balancers, as plain data: where a load balancer is reached, and
//! the drain / enable actions a plan holds for each host.
//!
//! Three drivers exist (`[lb] driver` in deploy.toml, see
//! docs/load-balancers.md):
//!
//! - `haproxy`: shipit talks to HAProxy's runtime API itself. A drain sets
//!   the server to `drain`, waits until HAProxy reports no session on it,
//!   then sets `maint`; an enable sets `ready` and waits until HAProxy's own
//!   health check reports the server `UP`. [`haproxy`] builds the runtime
//!   API lines and reads the answers.
//! - `command`: the user's `drain` / `enable` command lines, run locally or
//!   on a host, optionally followed by a `wait_drained` command polled until
//!   it exits 0.
//! - `none`: no load balancer.
//!
//! Nothing here does I/O: the planner puts [`LbAction`]s into plans,
//! `--dry-run` prints them, and `execute::lb` performs them.

pub mod haproxy;

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::shell::Cmd;

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

/// An HAProxy admin socket (`stats socket ... level admin`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum AdminSocket {
    /// A UNIX socket path on the machine it is reached from.
    Unix { path: String },
    /// A TCP admin socket (`stats socket ipv4@10.0.0.5:9999 level admin`).
    Tcp { host: String, port: u16 },
}

impl fmt::Display for AdminSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdminSocket::Unix { path } => f.write_str(path),
            AdminSocket::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            AdminSocket::Tcp { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// One HAProxy instance: its admin socket and where it is reached from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Balancer {
    pub via: Via,
    pub socket: AdminSocket,
}

impl fmt::Display for Balancer {
    /// `local:/run/haproxy/admin.sock`, `lb1:/run/haproxy/admin.sock`,
    /// `local:10.0.0.5:9999`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.via, self.socket)
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LbOp {
    /// Take the host out of the load balancer.
    Drain,
    /// Put it back.
    Enable,
}

/// A drain or enable for one host, with everything resolved for it.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "driver", rename_all = "kebab-case")]
pub enum LbAction {
    Haproxy(HaproxyAction),
    Command(CommandAction),
}

#[derive(Debug, Clone, Serialize)]
pub struct HaproxyAction {
    pub op: LbOp,
    /// Every load balancer the server must be drained on / enabled on.
    pub balancers: Vec<Balancer>,
    pub backend: String,
    /// The server's name in the backend (`lb.server` rendered for the host).
    pub server: String,
    #[serde(serialize_with = "millis")]
    pub drain_timeout: Duration,
    pub on_drain_timeout: OnTimeout,
    #[serde(serialize_with = "millis")]
    pub enable_timeout: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct CommandAction {
    pub op: LbOp,
    pub run_on: Via,
    pub cmd: Cmd,
    /// Drain only: polled after `cmd` until it exits 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait: Option<Box<WaitUntil>>,
}

/// A command polled until it exits 0.
#[derive(Debug, Clone, Serialize)]
pub struct WaitUntil {
    pub cmd: Cmd,
    #[serde(serialize_with = "millis")]
    pub timeout: Duration,
    #[serde(serialize_with = "millis")]
    pub interval: Duration,
    pub on_timeout: OnTimeout,
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

fn human(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_millis(d.as_millis() as u64))
}

impl HaproxyAction {
    /// `local:/run/haproxy/admin.sock` or `lb1:/run/a.sock, lb2:/run/a.sock`.
    pub fn balancer_list(&self) -> String {
        self.balancers
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl LbAction {
    /// One line for logs and events: what is done to which server where.
    pub fn summary(&self) -> String {
        match self {
            LbAction::Haproxy(a) => format!(
                "haproxy {}: {} {}/{}",
                a.balancer_list(),
                match a.op {
                    LbOp::Drain => "drain",
                    LbOp::Enable => "enable",
                },
                a.backend,
                a.server
            ),
            LbAction::Command(c) => match &c.run_on {
                Via::Local => format!("local: {}", c.cmd.display()),
                other => format!("on {other}: {}", c.cmd.display()),
            },
        }
    }
}

impl fmt::Display for LbAction {
    /// The dry-run text: every runtime API command or shell command, and
    /// what shipit waits for.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LbAction::Haproxy(a) => {
                write!(f, "haproxy {}: ", a.balancer_list())?;
                let target = format!("{}/{}", a.backend, a.server);
                match a.op {
                    LbOp::Drain => write!(
                        f,
                        "set server {target} state drain; wait until 0 sessions (≤{}, then {}); set state maint",
                        human(a.drain_timeout),
                        a.on_drain_timeout.as_str()
                    ),
                    LbOp::Enable => write!(
                        f,
                        "set server {target} state ready; wait until HAProxy's check reports UP (≤{})",
                        human(a.enable_timeout)
                    ),
                }
            }
            LbAction::Command(c) => {
                f.write_str(&self.summary())?;
                if let Some(wait) = &c.wait {
                    // Its environment is the drain command's, shown just before.
                    let bare = Cmd {
                        env: Vec::new(),
                        ..wait.cmd.clone()
                    };
                    write!(
                        f,
                        "; then every {}{}: {} until it exits 0 (≤{}, then {})",
                        human(wait.interval),
                        if wait.cmd.env.is_empty() {
                            ""
                        } else {
                            ", with the same environment"
                        },
                        bare.display(),
                        human(wait.timeout),
                        wait.on_timeout.as_str()
                    )?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn haproxy(op: LbOp, balancers: Vec<Balancer>) -> LbAction {
        LbAction::Haproxy(HaproxyAction {
            op,
            balancers,
            backend: "app".into(),
            server: "web1".into(),
            drain_timeout: Duration::from_secs(30),
            on_drain_timeout: OnTimeout::Warn,
            enable_timeout: Duration::from_secs(20),
        })
    }

    fn unix(via: Via, path: &str) -> Balancer {
        Balancer {
            via,
            socket: AdminSocket::Unix { path: path.into() },
        }
    }

    #[test]
    fn haproxy_actions_read_as_what_they_do() {
        let local = unix(Via::Local, "/run/haproxy/admin.sock");
        assert_eq!(
            haproxy(LbOp::Drain, vec![local.clone()]).to_string(),
            "haproxy local:/run/haproxy/admin.sock: set server app/web1 state drain; \
             wait until 0 sessions (≤30s, then warn); set state maint"
        );
        assert_eq!(
            haproxy(LbOp::Enable, vec![local]).to_string(),
            "haproxy local:/run/haproxy/admin.sock: set server app/web1 state ready; \
             wait until HAProxy's check reports UP (≤20s)"
        );
        let pair = vec![
            unix(Via::Host { name: "lb1".into() }, "/run/a.sock"),
            Balancer {
                via: Via::Ssh {
                    spec: "ops@lb2:2222".into(),
                    user: "ops".into(),
                    address: "lb2".into(),
                    port: Some(2222),
                },
                socket: AdminSocket::Tcp {
                    host: "::1".into(),
                    port: 9999,
                },
            },
        ];
        assert_eq!(
            haproxy(LbOp::Enable, pair.clone()).summary(),
            "haproxy lb1:/run/a.sock, ops@lb2:2222:[::1]:9999: enable app/web1"
        );
    }

    #[test]
    fn command_actions_show_where_they_run_and_what_they_wait_for() {
        let action = LbAction::Command(CommandAction {
            op: LbOp::Drain,
            run_on: Via::Host { name: "lb1".into() },
            cmd: Cmd::shell("lbctl drain web1"),
            wait: Some(Box::new(WaitUntil {
                cmd: Cmd::shell("lbctl idle web1"),
                timeout: Duration::from_secs(30),
                interval: Duration::from_secs(1),
                on_timeout: OnTimeout::Fail,
            })),
        });
        assert_eq!(
            action.to_string(),
            "on lb1: sh -c 'lbctl drain web1'; then every 1s: sh -c 'lbctl idle web1' \
             until it exits 0 (≤30s, then fail)"
        );
    }

    #[test]
    fn actions_serialize_as_plain_data() {
        let json = serde_json::to_value(haproxy(
            LbOp::Drain,
            vec![unix(Via::Local, "/run/haproxy/admin.sock")],
        ))
        .unwrap();
        assert_eq!(json["driver"], "haproxy");
        assert_eq!(json["op"], "drain");
        assert_eq!(json["balancers"][0]["via"]["type"], "local");
        assert_eq!(
            json["balancers"][0]["socket"]["path"],
            "/run/haproxy/admin.sock"
        );
        assert_eq!(json["drain_timeout"], 30000);
    }
}
