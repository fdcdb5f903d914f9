//! HAProxy's runtime API (the admin socket), as data: the request lines
//! shipit sends and the answers it reads. No I/O here; `socket` carries
//! the lines to a socket and hands the answers back.
//!
//! The API is line-based: one command per line, `;` separates commands,
//! and the answer ends when HAProxy closes the connection (shipit never
//! enters interactive "prompt" mode). So names put into a line are checked
//! against HAProxy's own identifier characters first; a name with a space,
//! a `;` or a newline never reaches the socket.
//!
//! Commands used, all available since HAProxy 1.8:
//!
//! - `set server B/S state drain|maint|ready`: answers nothing on success,
//!   an error text ("No such server.") otherwise;
//! - `set server B/S health up`: likewise (a server that tracks another's
//!   checks refuses it);
//! - `show servers state B`: a version line, a `#` header and one line per
//!   server (`srv_op_state`, `srv_admin_state`);
//! - `show stat -1 4 -1`: CSV of every server, with the current sessions
//!   (`scur`), queued requests (`qcur`), the `status` column ("UP",
//!   "UP 1/2" while a failed check counts down, "DOWN", "DRAIN", "MAINT",
//!   "no check") and the HTTP answers by status class (`hrsp_1xx` …
//!   `hrsp_5xx`, `hrsp_other`), counted since HAProxy started.

use std::collections::HashMap;
use std::fmt;

/// True if `name` may be used as a backend or server name: HAProxy's
/// identifier characters (letters, digits, `-`, `_`, `.`, `:`).
pub fn is_ident(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

/// What to say when [`is_ident`] fails.
pub const IDENT_RULE: &str =
    "use letters, digits, `-`, `_`, `.` and `:` (HAProxy's names; its runtime API is line-based)";

/// A server's administrative state, as `set server ... state` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Finish current sessions, take no new ones; health checks go on.
    Drain,
    /// Out of service; health checks stop.
    Maint,
    /// Back in service (once its health check agrees).
    Ready,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Drain => "drain",
            State::Maint => "maint",
            State::Ready => "ready",
        }
    }
}

/// One runtime API command, built from checked names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    SetState {
        backend: String,
        server: String,
        state: State,
    },
    /// `set server B/S health up`: HAProxy's check state set to fully up,
    /// as if `rise` checks had just passed.
    HealthUp {
        backend: String,
        server: String,
    },
    ServersState {
        backend: String,
    },
    /// `show stat` for the servers of every backend.
    ServerStats,
}

/// A backend or server name HAProxy's runtime API cannot carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadName(pub String);

impl fmt::Display for BadName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} is not an HAProxy name: {IDENT_RULE}", self.0)
    }
}

fn checked(name: &str) -> Result<String, BadName> {
    if is_ident(name) {
        Ok(name.to_string())
    } else {
        Err(BadName(name.to_string()))
    }
}

impl Request {
    pub fn set_state(backend: &str, server: &str, state: State) -> Result<Request, BadName> {
        Ok(Request::SetState {
            backend: checked(backend)?,
            server: checked(server)?,
            state,
        })
    }

    pub fn health_up(backend: &str, server: &str) -> Result<Request, BadName> {
        Ok(Request::HealthUp {
            backend: checked(backend)?,
            server: checked(server)?,
        })
    }

    pub fn servers_state(backend: &str) -> Result<Request, BadName> {
        Ok(Request::ServersState {
            backend: checked(backend)?,
        })
    }

    /// The line sent to the socket, newline included.
    pub fn line(&self) -> String {
        match self {
            Request::SetState {
                backend,
                server,
                state,
            } => format!("set server {backend}/{server} state {}\n", state.as_str()),
            Request::HealthUp { backend, server } => {
                format!("set server {backend}/{server} health up\n")
            }
            Request::ServersState { backend } => format!("show servers state {backend}\n"),
            Request::ServerStats => "show stat -1 4 -1\n".to_string(),
        }
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.line().trim_end())
    }
}

/// The answer to `set server`: empty on success, else HAProxy's complaint.
pub fn set_state_answer(answer: &str) -> Result<(), String> {
    match answer.trim() {
        "" => Ok(()),
        complaint => Err(first_lines(complaint)),
    }
}

/// Error answers can be a whole help screen ("Unknown command…"): keep
/// the first lines.
fn first_lines(text: &str) -> String {
    let lines: Vec<&str> = text.trim().lines().take(3).collect();
    lines.join(" / ")
}

/// A server line of `show servers state`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerState {
    pub backend: String,
    pub server: String,
    /// 0 stopped (DOWN), 1 starting, 2 running (UP), 3 stopping.
    pub op_state: u8,
    /// Bit field: 0x01 forced maint, 0x02 inherited maint, 0x04 maint by
    /// configuration (`disabled`), 0x08 forced drain, 0x10 inherited
    /// drain, 0x20 maint after a DNS failure.
    pub admin_state: u32,
}

impl ServerState {
    pub fn in_maint(&self) -> bool {
        self.admin_state & 0x27 != 0
    }

    pub fn draining(&self) -> bool {
        self.admin_state & 0x18 != 0
    }

    /// Whether HAProxy sends it traffic, and if not, why.
    pub fn service_state(&self) -> crate::lb::ServiceState {
        use crate::lb::ServiceState;
        if self.in_maint() {
            ServiceState::Maintenance
        } else if self.draining() {
            ServiceState::Draining
        } else if self.op_state == 2 {
            ServiceState::InService
        } else {
            ServiceState::Down
        }
    }
}

/// Parses the answer to `show servers state BACKEND`. An answer that is not
/// a servers table ("Can't find backend.", "Permission denied.") is the
/// error, as HAProxy worded it.
pub fn parse_servers_state(answer: &str) -> Result<Vec<ServerState>, String> {
    let mut lines = answer.lines().filter(|l| !l.trim().is_empty());
    let version = lines.next().unwrap_or_default().trim();
    let header = lines.next().unwrap_or_default();
    if version != "1" || !header.starts_with("# ") {
        return Err(if answer.trim().is_empty() {
            "empty answer to `show servers state`".to_string()
        } else {
            first_lines(answer)
        });
    }
    let names: Vec<&str> = header[2..].split_whitespace().collect();
    let col = |name: &str| {
        names
            .iter()
            .position(|n| *n == name)
            .ok_or_else(|| format!("`show servers state` has no {name} column"))
    };
    let (be, srv, op, admin) = (
        col("be_name")?,
        col("srv_name")?,
        col("srv_op_state")?,
        col("srv_admin_state")?,
    );
    lines
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let field = |i: usize| {
                fields
                    .get(i)
                    .copied()
                    .ok_or_else(|| format!("short `show servers state` line: {line:?}"))
            };
            let number = |i: usize| -> Result<u32, String> {
                field(i)?
                    .parse()
                    .map_err(|_| format!("unexpected `show servers state` line: {line:?}"))
            };
            Ok(ServerState {
                backend: field(be)?.to_string(),
                server: field(srv)?.to_string(),
                op_state: number(op)? as u8,
                admin_state: number(admin)?,
            })
        })
        .collect()
}

/// A server line of `show stat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerStat {
    pub backend: String,
    pub server: String,
    /// Current sessions.
    pub scur: u64,
    /// Requests queued for this server.
    pub qcur: u64,
    /// "UP", "UP 1/2", "DOWN", "DOWN 1/2", "DRAIN", "MAINT", "no check"…
    pub status: String,
    /// The last health check: "L7OK", "L4CON", "L7STS"… (empty if none).
    pub check_status: String,
    /// HAProxy's words for it: "Layer7 wrong status".
    pub check_desc: String,
    /// HTTP answers since HAProxy started (`None` in a TCP backend, or an
    /// HAProxy without the `hrsp_*` columns).
    pub answers: Option<crate::lb::Answers>,
}

impl ServerStat {
    /// The server takes traffic and HAProxy's own check agrees: plain "UP"
    /// (not "UP 1/2", which means a check failed or, just after leaving
    /// maintenance, none has passed yet), or "no check" when HAProxy does
    /// not check this server at all.
    pub fn is_up(&self) -> bool {
        self.status == "UP" || self.status == "no check"
    }

    /// Whether HAProxy sends it traffic now, from its status column. A
    /// server "UP 1/2" whose check just failed still takes traffic.
    pub fn service_state(&self) -> crate::lb::ServiceState {
        use crate::lb::ServiceState;
        let status = self.status.as_str();
        if status.starts_with("MAINT") {
            ServiceState::Maintenance
        } else if status.starts_with("DRAIN") || status.starts_with("NOLB") {
            ServiceState::Draining
        } else if status.starts_with("DOWN") {
            ServiceState::Down
        } else if status.starts_with("UP") || status == "no check" {
            ServiceState::InService
        } else {
            ServiceState::Unknown
        }
    }

    /// HAProxy's own checks hold the server back or count against it:
    /// "DOWN", "DOWN 1/2" (rising) or "UP 1/2" (a check failed). Not a
    /// server in maintenance or draining: that is an operator's state.
    pub fn held_by_checks(&self) -> bool {
        let status = self.status.as_str();
        status.starts_with("DOWN") || (status.starts_with("UP ") && status.contains('/'))
    }

    /// No session on the server and none queued for it.
    pub fn is_idle(&self) -> bool {
        self.scur == 0 && self.qcur == 0
    }

    /// "DOWN 1/2 (last check: L7STS, Layer7 wrong status)".
    pub fn describe(&self) -> String {
        let mut s = self.status.clone();
        if !self.check_status.is_empty() {
            s.push_str(&format!(" (last check: {}", self.check_status));
            if !self.check_desc.is_empty() {
                s.push_str(&format!(", {}", self.check_desc));
            }
            s.push(')');
        }
        s
    }
}

/// Parses the CSV answer to `show stat`, keeping server lines only.
pub fn parse_stat(answer: &str) -> Result<Vec<ServerStat>, String> {
    let mut lines = answer.lines().filter(|l| !l.trim().is_empty());
    let header = lines.next().unwrap_or_default();
    let Some(header) = header.strip_prefix("# ") else {
        return Err(if answer.trim().is_empty() {
            "empty answer to `show stat`".to_string()
        } else {
            first_lines(answer)
        });
    };
    let columns: HashMap<&str, usize> = header
        .split(',')
        .enumerate()
        .map(|(i, name)| (name, i))
        .collect();
    let col = |name: &str| {
        columns
            .get(name)
            .copied()
            .ok_or_else(|| format!("`show stat` has no {name} column"))
    };
    let (px, sv, scur, qcur, status) = (
        col("pxname")?,
        col("svname")?,
        col("scur")?,
        col("qcur")?,
        col("status")?,
    );
    let check_status = columns.get("check_status").copied();
    let check_desc = columns.get("check_desc").copied();
    let classes: Option<Vec<usize>> = [
        "hrsp_1xx",
        "hrsp_2xx",
        "hrsp_3xx",
        "hrsp_4xx",
        "hrsp_5xx",
        "hrsp_other",
    ]
    .iter()
    .map(|name| columns.get(name).copied())
    .collect();
    let mut servers = Vec::new();
    for line in lines {
        let fields: Vec<&str> = line.split(',').collect();
        let get = |i: usize| fields.get(i).copied().unwrap_or_default();
        let server = get(sv);
        if server.is_empty() || server == "FRONTEND" || server == "BACKEND" {
            continue;
        }
        let count = |i: usize| -> Result<u64, String> {
            match get(i) {
                "" => Ok(0),
                n => n
                    .parse()
                    .map_err(|_| format!("unexpected `show stat` line: {line:?}")),
            }
        };
        // Empty cells (a TCP backend) count nothing.
        let answers = match &classes {
            Some(columns) => {
                let counts: Vec<u64> = columns
                    .iter()
                    .map(|&i| count(i))
                    .collect::<Result<_, _>>()?;
                Some(crate::lb::Answers {
                    total: counts.iter().sum(),
                    errors: counts[4],
                })
            }
            None => None,
        };
        servers.push(ServerStat {
            backend: get(px).to_string(),
            server: server.to_string(),
            scur: count(scur)?,
            qcur: count(qcur)?,
            status: get(status).to_string(),
            check_status: check_status.map(get).unwrap_or_default().to_string(),
            check_desc: check_desc.map(get).unwrap_or_default().to_string(),
            answers,
        });
    }
    Ok(servers)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from HAProxy 2.6 (fleet.sh's configuration, abridged to
    /// the columns that matter plus a few around them).
    const SERVERS_STATE: &str = "1
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port
3 app 1 web1 10.201.1.11 2 8 1 1 0 15 3 3 6 0 0 0 - 8080 - 0 0 - - 0
3 app 2 web2 10.201.1.12 0 1 1 1 17 15 3 3 6 0 0 0 - 8080 - 0 0 - - 0

";

    const STAT: &str = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,tracked,type,rate,rate_lim,rate_max,check_status,check_code,check_duration,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,hrsp_other,hanafail,req_rate,req_rate_max,req_tot,cli_abrt,srv_abrt,comp_in,comp_out,comp_byp,comp_rsp,lastsess,last_chk,last_agt,qtime,ctime,rtime,ttime,agent_status,agent_code,agent_duration,check_desc,agent_desc,check_rise,check_fall,check_health
app,web1,0,0,2,3,,9,0,0,,0,,0,0,0,0,DRAIN,1,1,0,1,1,0,5,,1,3,1,,0,,2,0,,0,L7OK,200,1,0,90,3,2,5,0,,,,0,0,0,,,,,-1,,,0,0,0,0,,,,Layer7 check passed,,2,2,3
app,web2,0,0,0,0,,0,0,0,,0,,0,0,0,0,UP 1/2,1,1,0,1,1,0,5,,1,3,2,,0,,2,0,,0,L7STS,500,1,0,0,0,0,0,0,,,,0,0,0,,,,,-1,,,0,0,0,0,,,,Layer7 wrong status,,2,2,2
app,web3,0,0,0,0,,0,0,0,,0,,0,0,0,0,MAINT,1,1,0,1,1,0,5,,1,3,3,,0,,2,0,,0,,,,0,0,0,0,0,0,,,,0,0,0,,,,,-1,,,0,0,0,0,,,,,,2,2,
other,web1,1,0,0,0,,0,0,0,,0,,0,0,0,0,no check,1,1,0,,,0,5,,1,4,1,,0,,2,0,,0,,,,0,0,0,0,0,0,,,,0,0,0,,,,,-1,,,0,0,0,0,,,,,,,,
";

    #[test]
    fn requests_are_lines_built_from_checked_names() {
        let r = Request::set_state("app", "web1", State::Drain).unwrap();
        assert_eq!(r.line(), "set server app/web1 state drain\n");
        assert_eq!(r.to_string(), "set server app/web1 state drain");
        assert_eq!(
            Request::servers_state("be_1.x:y").unwrap().line(),
            "show servers state be_1.x:y\n"
        );
        assert_eq!(Request::ServerStats.line(), "show stat -1 4 -1\n");
        for bad in [
            "",
            "web 1",
            "web1\nshutdown sessions server app/web2",
            "a;b",
            "a/b",
            "wéb",
        ] {
            let err = Request::set_state("app", bad, State::Ready).unwrap_err();
            assert_eq!(err, BadName(bad.to_string()));
            assert!(Request::servers_state(bad).is_err());
        }
        assert_eq!(
            BadName("web 1".into()).to_string(),
            "\"web 1\" is not an HAProxy name: use letters, digits, `-`, `_`, `.` and `:` (HAProxy's names; its runtime API is line-based)"
        );
    }

    #[test]
    fn set_state_answers() {
        assert_eq!(set_state_answer("\n"), Ok(()));
        assert_eq!(
            set_state_answer("No such server.\n\n"),
            Err("No such server.".into())
        );
        assert_eq!(
            set_state_answer("Unknown command, but maybe:\n  a\n  b\n  c\n"),
            Err("Unknown command, but maybe: /   a /   b".into())
        );
    }

    #[test]
    fn servers_state_lines() {
        let servers = parse_servers_state(SERVERS_STATE).unwrap();
        assert_eq!(servers.len(), 2);
        assert_eq!(
            servers[0],
            ServerState {
                backend: "app".into(),
                server: "web1".into(),
                op_state: 2,
                admin_state: 8,
            }
        );
        assert!(servers[0].draining() && !servers[0].in_maint());
        assert!(servers[1].in_maint() && !servers[1].draining());
        assert_eq!(
            parse_servers_state("Can't find backend.\n\n"),
            Err("Can't find backend.".into())
        );
        assert_eq!(
            parse_servers_state(""),
            Err("empty answer to `show servers state`".into())
        );
        // A backend without servers.
        let empty = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state\n";
        assert_eq!(parse_servers_state(empty), Ok(vec![]));
    }

    #[test]
    fn stat_lines() {
        let servers = parse_stat(STAT).unwrap();
        let names: Vec<(&str, &str)> = servers
            .iter()
            .map(|s| (s.backend.as_str(), s.server.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("app", "web1"),
                ("app", "web2"),
                ("app", "web3"),
                ("other", "web1")
            ]
        );
        let web1 = &servers[0];
        assert_eq!((web1.scur, web1.qcur), (2, 0));
        assert_eq!(
            web1.answers,
            Some(crate::lb::Answers {
                total: 100,
                errors: 5
            })
        );
        assert_eq!(servers[1].answers, Some(crate::lb::Answers::default()));
        assert!(!web1.is_idle() && !web1.is_up());
        let web2 = &servers[1];
        assert!(web2.is_idle());
        assert!(!web2.is_up(), "UP 1/2 is not UP yet");
        assert_eq!(
            web2.describe(),
            "UP 1/2 (last check: L7STS, Layer7 wrong status)"
        );
        assert_eq!(servers[2].describe(), "MAINT");
        assert!(
            servers[3].is_up(),
            "no check: HAProxy has nothing to wait for"
        );
        assert_eq!(servers[3].qcur, 1);

        assert_eq!(
            parse_stat("Permission denied\n"),
            Err("Permission denied".into())
        );
        // An HAProxy without the answer columns counts nothing.
        let old = parse_stat("# pxname,svname,scur,qcur,status\napp,web1,0,0,UP\n").unwrap();
        assert_eq!(old[0].answers, None);
        assert!(
            parse_stat("# pxname,svname\napp,web1\n")
                .unwrap_err()
                .contains("no scur column")
        );
    }
}
