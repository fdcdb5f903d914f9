//! The HAProxy driver: its `[lb]` keys, what it shows, and how it carries
//! requests when a relay fails now and then. Against a real HAProxy: the
//! integration tests.

use std::collections::VecDeque;
use std::sync::Mutex;

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::lb::{LbAction, Remote};
use crate::testing::{config_error, stage};
use crate::transport::{ExecObserver, ExecRequest, Exit, Output, Quiet, TransportError};

const LOCAL: &str = "[lb]\ndriver = \"haproxy\"\nsocket = \"/run/haproxy/admin.sock\"\nbackend = \"app\"\nenable_timeout = \"20s\"";

fn action(extra: &str, op: LbOp) -> LbAction {
    crate::testing::lb_action(2, extra, op, 0)
}

#[test]
fn actions_read_as_what_they_do() {
    assert_eq!(
        action(LOCAL, LbOp::Drain).to_string(),
        "haproxy local:/run/haproxy/admin.sock: set server app/web1 state drain; \
         wait until 0 sessions (≤30s, then warn)"
    );
    assert_eq!(
        action(LOCAL, LbOp::Enable).to_string(),
        "haproxy local:/run/haproxy/admin.sock: set server app/web1 state ready \
         (and health up, after shipit's own check passed); wait until HAProxy reports UP (≤20s)"
    );
    let pair = "[lb]\ndriver = \"haproxy\"\nsocket = \"/run/a.sock\"\nvia = [\"web2\", \"ops@lb2:2222\"]\nbackend = \"app\"";
    assert_eq!(
        action(pair, LbOp::Enable).summary(),
        "haproxy web2:/run/a.sock, ops@lb2:2222:/run/a.sock: enable app/web1"
    );
}

#[test]
fn actions_serialize_as_plain_data() {
    let json = serde_json::to_value(action(LOCAL, LbOp::Drain)).unwrap();
    assert_eq!(json["driver"], "haproxy");
    assert_eq!(json["op"], "drain");
    assert_eq!(json["member"]["server"], "web1");
    assert_eq!(json["settings"]["balancers"][0]["via"]["type"], "local");
    assert_eq!(
        json["settings"]["balancers"][0]["socket"]["path"],
        "/run/haproxy/admin.sock"
    );
    assert_eq!(json["settings"]["drain_timeout"], 30000);
}

#[test]
fn defaults_and_several_balancers() {
    let settings = |extra: &str| stage(2, extra).lb.unwrap().settings();
    let one = settings(LOCAL);
    assert_eq!(one["backend"], "app");
    assert_eq!(one["enable_timeout"], 20000);
    assert_eq!(one["drain_timeout_action"], "warn");
    let three = settings(
        "[lb]\ndriver = \"haproxy\"\nsocket = \"/run/a.sock\"\nvia = [\"web1\", \"ops@lb2:2222\", \"root@[fd00::5]\"]\nbackend = \"app\"\nserver = \"{app}-{name}\"",
    );
    let vias: Vec<&str> = three["balancers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["via"]["type"].as_str().unwrap())
        .collect();
    assert_eq!(vias, ["host", "ssh", "ssh"]);
    assert_eq!(three["balancers"][2]["via"]["address"], "fd00::5");
    let tcp = settings(
        "[lb]\ndriver = \"haproxy\"\nsocket = [\"10.0.0.5:9999\", \"[fd00::6]:9999\"]\nbackend = \"app\"",
    );
    assert_eq!(tcp["balancers"][1]["socket"]["host"], "fd00::6");
    let driver = stage(2, LOCAL).lb.unwrap();
    assert!(
        driver.ssh_hosts().is_empty(),
        "local sockets need no extra connection"
    );
    assert_eq!(
        action("[lb]\ndriver = \"haproxy\"\nsocket = \"/a.sock\"\nbackend = \"app\"\nserver = \"{app}-{name}\"", LbOp::Drain)
            .member
            .server,
        "shop-web1"
    );
}

#[test]
fn bad_values_and_their_messages() {
    for (extra, expected) in [
        (
            "[lb]\ndriver = \"haproxy\"\nbackend = \"app\"",
            "/p/deploy.toml: lb.socket: missing (stage `production`); set it in [lb] or [stages.production.lb], e.g. socket = \"/run/haproxy/admin.sock\" (a `stats socket ... level admin` of HAProxy) or \"10.0.0.5:9999\"",
        ),
        (
            "[lb]\ndriver = \"haproxy\"\nsocket = \"/run/haproxy/admin.sock\"",
            "/p/deploy.toml: lb.backend: missing (stage `production`); set it in [lb] or [stages.production.lb], e.g. backend = \"app\" (the HAProxy backend your hosts are servers of)",
        ),
        (
            "[lb]\ndriver = \"haproxy\"\nsocket = \"/run/haproxy/admin.sock\"\nbackend = \"my app\"",
            "/p/deploy.toml: lb.backend: \"my app\" is not an HAProxy backend name: use letters, digits, `-`, `_`, `.` and `:` (HAProxy's names; its runtime API is line-based)",
        ),
        (
            "[lb]\ndriver = \"haproxy\"\nsocket = \"/a.sock\"\nbackend = \"app\"\nserver = \"{name} x\"",
            "/p/deploy.toml: lb.server: renders to \"web1 x\" for host web1; use letters, digits, `-`, `_`, `.` and `:` (HAProxy's names; its runtime API is line-based)",
        ),
        (
            "[lb]\ndriver = \"haproxy\"\nsocket = \"/a.sock\"\nbackend = \"app\"\nserver = \"{release}\"",
            "/p/deploy.toml: lb.server: {release} and {revision} are not allowed here: a host's server name must stay the same from one release to the next",
        ),
        (
            "[lb]\ndriver = \"haproxy\"\nsocket = \"/a.sock\"\nbackend = \"app\"\nserver = \"web\"",
            "/p/deploy.toml: lb.server: renders to \"web\" for both web1 and web2; each host needs its own server",
        ),
        (
            "[lb]\ndriver = \"haproxy\"\nsocket = \"run/haproxy.sock\"\nbackend = \"app\"",
            "/p/deploy.toml: lb.socket: \"run/haproxy.sock\" is neither the absolute path of a UNIX socket (/run/haproxy/admin.sock) nor host:port of a TCP admin socket (10.0.0.5:9999)",
        ),
        (
            "[lb]\ndriver = \"haproxy\"\nsocket = \"/run/ha proxy,x.sock\"\nbackend = \"app\"",
            "/p/deploy.toml: lb.socket: \"/run/ha proxy,x.sock\": a socket path may contain only letters, digits and `._/+@-` (socat, which carries commands to sockets on other hosts, gives other characters a meaning)",
        ),
        (
            "[lb]\ndriver = \"haproxy\"\nsocket = \"10.0.0.5:99999\"\nbackend = \"app\"",
            "/p/deploy.toml: lb.socket: \"10.0.0.5:99999\" is neither the absolute path of a UNIX socket (/run/haproxy/admin.sock) nor host:port of a TCP admin socket (10.0.0.5:9999)",
        ),
        (
            "[lb]\ndriver = \"haproxy\"\nsocket = [\"/a.sock\", \"/b.sock\"]\nvia = [\"web1\", \"web2\"]\nbackend = \"app\"",
            "/p/deploy.toml: lb.via: lb.socket and lb.via are both lists; list the load balancers in one of them and the other applies to each (e.g. via = [\"lb1\", \"lb2\"] with one socket path)",
        ),
        (
            "[lb]\ndriver = \"haproxy\"\nsocket = \"/a.sock\"\nvia = [\"web1\", \"web1\"]\nbackend = \"app\"",
            "/p/deploy.toml: lb.via: lists the load balancer web1:/a.sock twice",
        ),
        (
            "[lb]\ndriver = \"haproxy\"\nsocket = \"/a.sock\"\nvia = \"lb1\"\nbackend = \"app\"",
            "/p/deploy.toml: lb.via: \"lb1\" is not a host of stage `production`; use \"local\", a host name from stages.production.hosts, or user@host[:port] for another machine",
        ),
        (
            "[lb]\ndriver = \"haproxy\"\nsocket = \"/a.sock\"\nvia = \"ops@lb1:x\"\nbackend = \"app\"",
            "/p/deploy.toml: lb.via: \"ops@lb1:x\": \"x\" is not a port (1-65535)",
        ),
        (
            "[lb]\ndriver = \"haproxy\"\nsocket = []\nbackend = \"app\"",
            "/p/deploy.toml: lb.socket: is an empty list; give a socket path or host:port",
        ),
        (
            "[lb]\ndriver = \"haproxy\"\nsocket = 9999\nbackend = \"app\"",
            "/p/deploy.toml: lb.socket: 9999 is not allowed; give a socket path or host:port, or a list of them",
        ),
    ] {
        assert_eq!(config_error(2, extra), expected, "for:\n{extra}");
    }
}

/// A relay host whose first answers are lost: the request is carried
/// again until the step's timeout, and the run never sees the blip.
struct Flaky {
    answers: Mutex<VecDeque<Result<String, String>>>,
    asked: Mutex<Vec<String>>,
}

impl Remote for Flaky {
    fn exec<'a>(
        &'a self,
        _via: &'a Via,
        request: ExecRequest,
        _observer: &'a dyn ExecObserver,
    ) -> BoxFuture<'a, Result<Output, TransportError>> {
        Box::pin(async move {
            let line = String::from_utf8_lossy(
                request
                    .stdin
                    .as_ref()
                    .and_then(|s| s.as_bytes())
                    .unwrap_or_default(),
            )
            .trim()
            .to_string();
            self.asked.lock().unwrap().push(line);
            match self.answers.lock().unwrap().pop_front() {
                Some(Ok(stdout)) => Ok(Output {
                    exit: Exit::Code(0),
                    stdout: stdout.into_bytes(),
                    stderr: Vec::new(),
                }),
                Some(Err(detail)) => Err(TransportError::Disconnected {
                    host: "lb1".into(),
                    detail,
                }),
                None => Ok(Output {
                    exit: Exit::Code(1),
                    stdout: Vec::new(),
                    stderr: b"no more answers".to_vec(),
                }),
            }
        })
    }
}

const UP_STAT: &str =
    "# pxname,svname,qcur,scur,status,check_status,check_desc\napp,web1,0,0,UP,L7OK,ok\n";

#[tokio::test]
async fn an_enable_carries_a_lost_request_again() {
    let remote = Flaky {
        answers: Mutex::new(VecDeque::from([
            Err("connection reset".to_string()),
            // HAProxy answers a `set server` it carried out with an empty line.
            Ok("\n".to_string()),
            Err("connection reset".to_string()),
            Ok(UP_STAT.to_string()),
        ])),
        asked: Mutex::new(Vec::new()),
    };
    let via_lb =
        "[lb]\ndriver = \"haproxy\"\nsocket = \"/run/a.sock\"\nvia = \"web2\"\nbackend = \"app\"";
    let action = action(via_lb, LbOp::Enable);
    let never = CancellationToken::new();
    let ctx = LbCtx {
        remote: &remote,
        observer: &Quiet,
        command_timeout: None,
        cancel: &never,
    };
    let done = action
        .driver
        .enable(&ctx, &action.member, crate::lb::Proof::Checked)
        .await;
    assert_eq!(done, Ok(Done::ok()));
    assert_eq!(
        *remote.asked.lock().unwrap(),
        [
            "set server app/web1 state ready",
            "set server app/web1 state ready",
            "show stat -1 4 -1",
            "show stat -1 4 -1"
        ]
    );
}

#[tokio::test]
async fn a_refusal_from_haproxy_is_final() {
    let remote = Flaky {
        answers: Mutex::new(VecDeque::from([Ok("No such server.\n".to_string())])),
        asked: Mutex::new(Vec::new()),
    };
    let via_lb =
        "[lb]\ndriver = \"haproxy\"\nsocket = \"/run/a.sock\"\nvia = \"web2\"\nbackend = \"app\"";
    let action = action(via_lb, LbOp::Drain);
    let never = CancellationToken::new();
    let ctx = LbCtx {
        remote: &remote,
        observer: &Quiet,
        command_timeout: None,
        cancel: &never,
    };
    let err = action.driver.drain(&ctx, &action.member).await.unwrap_err();
    assert_eq!(
        err.error,
        "haproxy web2:/run/a.sock: `set server app/web1 state drain`: No such server."
    );
    assert_eq!(remote.asked.lock().unwrap().len(), 1);
}

/// `show stat` with web1 in `status`, its last check `check`.
fn stat(status: &str, check: &str) -> String {
    format!(
        "# pxname,svname,qcur,scur,status,check_status,check_desc\napp,web1,0,0,{status},{check},x\n"
    )
}

/// An enable whose server HAProxy's checks still hold back: told `health
/// up` only when shipit's own check passed, and only from a state the
/// checks made (never from maintenance).
#[tokio::test]
async fn health_up_only_after_shipits_own_check() {
    use crate::lb::Proof;
    let run = |answers: Vec<String>, proof: Proof| async move {
        let remote = Flaky {
            answers: Mutex::new(answers.into_iter().map(Ok).collect()),
            asked: Mutex::new(Vec::new()),
        };
        let via_lb = "[lb]\ndriver = \"haproxy\"\nsocket = \"/run/a.sock\"\nvia = \"web2\"\nbackend = \"app\"";
        let action = action(via_lb, LbOp::Enable);
        let never = CancellationToken::new();
        let ctx = LbCtx {
            remote: &remote,
            observer: &Quiet,
            command_timeout: None,
            cancel: &never,
        };
        let done = action.driver.enable(&ctx, &action.member, proof).await;
        (done, remote.asked.into_inner().unwrap())
    };
    for held in ["UP 1/2", "DOWN", "DOWN 1/2"] {
        let (done, asked) = run(
            vec![
                "\n".into(),
                stat(held, "L4CON"),
                "\n".into(),
                stat("UP", "L4CON"),
            ],
            Proof::Checked,
        )
        .await;
        assert_eq!(
            done.unwrap().result,
            "ok (health up after shipit's check)",
            "{held}"
        );
        assert_eq!(
            asked,
            [
                "set server app/web1 state ready",
                "show stat -1 4 -1",
                "set server app/web1 health up",
                "show stat -1 4 -1"
            ],
            "{held}"
        );
    }
    // HAProxy's own check decides: without a passed check of shipit's, for
    // a server in maintenance (an operator's state, not a check's), and
    // when a server tracking another's checks refuses `health up`.
    let cases: [(&str, Vec<String>, Proof, usize); 3] = [
        (
            "unchecked",
            vec!["\n".into(), stat("UP 1/2", "L4CON"), stat("UP", "L7OK")],
            Proof::Unchecked,
            0,
        ),
        (
            "maintenance",
            vec!["\n".into(), stat("MAINT", "L7OK"), stat("UP", "L7OK")],
            Proof::Checked,
            0,
        ),
        (
            "tracking",
            vec![
                "\n".into(),
                stat("UP 1/2", "L4CON"),
                "cannot change health on a tracking server.\n".into(),
                stat("UP", "L7OK"),
            ],
            Proof::Checked,
            1,
        ),
    ];
    for (why, answers, proof, told) in cases {
        let (done, asked) = run(answers, proof).await;
        assert_eq!(done, Ok(Done::ok()), "{why}");
        let ups = asked.iter().filter(|a| a.contains("health up")).count();
        assert_eq!(ups, told, "{why}: {asked:?}");
    }
}
