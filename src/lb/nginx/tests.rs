//! The nginx driver: its `[lb]` keys, what it shows, and how it reads the
//! host-side script's answers. The script itself: `script/tests.rs`;
//! against a real nginx: the integration tests.

use std::collections::VecDeque;
use std::sync::Mutex;

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::lb::{LbAction, Remote};
use crate::testing::{config_error, stage};
use crate::transport::{Exit, Quiet};

const LOCAL: &str = "[lb]\ndriver = \"nginx\"\nupstream_file = \"/etc/nginx/upstreams/shop.conf\"\nserver = \"{address}:8080\"";

fn action(extra: &str, op: LbOp) -> LbAction {
    crate::testing::lb_action(2, extra, op, 0)
}

#[test]
fn actions_read_as_what_they_do() {
    assert_eq!(
        action(LOCAL, LbOp::Drain).to_string(),
        "nginx local: mark down `server 10.0.0.11:8080` in /etc/nginx/upstreams/shop.conf, \
         `nginx -T` (the test), `nginx -s reload`, one edit at a time (the file is restored if the test or reload fails); \
         wait until nginx applied it (≤30s), then until its workers from before the reload have exited (≤30s, then warn)"
    );
    let sudo = format!(
        "{LOCAL}\nnginx = \"sudo -n nginx -c /etc/nginx/shop.conf\"\nvia = [\"web2\", \"ops@lb2:2222\"]\nenable_timeout = \"10s\""
    );
    assert_eq!(
        action(&sudo, LbOp::Enable).to_string(),
        "nginx web2, ops@lb2:2222: wait until 10.0.0.11:8080 accepts connections from there (≤10s); \
         remove `down` from `server 10.0.0.11:8080` in /etc/nginx/upstreams/shop.conf, \
         `sudo -n nginx -c /etc/nginx/shop.conf -T` (the test), `sudo -n nginx -c /etc/nginx/shop.conf -s reload`, \
         one edit at a time (the file is restored if the test or reload fails); wait until nginx applied it (≤30s)"
    );
    assert_eq!(
        action(&sudo, LbOp::Drain).summary(),
        "nginx web2, ops@lb2:2222: drain 10.0.0.11:8080 in /etc/nginx/upstreams/shop.conf"
    );
}

#[test]
fn settings_serialize_as_plain_data() {
    let json = serde_json::to_value(action(LOCAL, LbOp::Drain)).unwrap();
    assert_eq!(json["driver"], "nginx");
    assert_eq!(json["member"]["server"], "10.0.0.11:8080");
    assert_eq!(json["settings"]["balancers"][0]["type"], "local");
    assert_eq!(
        json["settings"]["upstream_file"],
        "/etc/nginx/upstreams/shop.conf"
    );
    assert_eq!(json["settings"]["nginx"], "nginx");
    assert_eq!(json["settings"]["drain_timeout"], 30000);
    assert_eq!(json["settings"]["enable_timeout"], 30000);
    let driver = stage(2, LOCAL).lb.unwrap();
    assert!(driver.ssh_hosts().is_empty());
    let two = stage(
        2,
        &format!("{LOCAL}\nvia = [\"web1\", \"root@[fd00::5]:22\"]"),
    )
    .lb
    .unwrap();
    assert_eq!(two.ssh_hosts().len(), 2);
}

#[test]
fn bad_values_and_their_messages() {
    for (extra, expected) in [
        (
            "[lb]\ndriver = \"nginx\"\nserver = \"{address}:8080\"",
            "/p/deploy.toml: lb.upstream_file: missing (stage `production`); set it in [lb] or [stages.production.lb], e.g. upstream_file = \"/etc/nginx/upstreams/shop.conf\" (a file of its own, with one `server ADDRESS;` line per host, that your nginx configuration includes inside the upstream block)",
        ),
        (
            "[lb]\ndriver = \"nginx\"\nupstream_file = \"/u.conf\"",
            "/p/deploy.toml: lb.server: missing (stage `production`); set it in [lb] or [stages.production.lb], e.g. server = \"{address}:8080\" (each host's address as its `server` line in the upstream names it)",
        ),
        (
            "[lb]\ndriver = \"nginx\"\nupstream_file = \"upstreams/shop.conf\"\nserver = \"{address}:8080\"",
            "/p/deploy.toml: lb.upstream_file: \"upstreams/shop.conf\" is not an absolute path; give the file's path as the nginx host sees it",
        ),
        (
            "[lb]\ndriver = \"nginx\"\nupstream_file = \"/u.conf\"\nserver = \"{address}:8080 weight=2\"",
            "/p/deploy.toml: lb.server: renders to \"10.0.0.11:8080 weight=2\" for host web1; give the address as nginx's `server` directive takes it: host:port, [v6]:port or unix:/path (letters, digits and `.-_:[]/`); parameters such as weight=2 belong in the upstream file, where shipit keeps them",
        ),
        (
            "[lb]\ndriver = \"nginx\"\nupstream_file = \"/u.conf\"\nserver = \"{address}:http\"",
            "/p/deploy.toml: lb.server: renders to \"10.0.0.11:http\" for host web1; \"10.0.0.11:http\": \"http\" is not a port (1-65535)",
        ),
        (
            "[lb]\ndriver = \"nginx\"\nupstream_file = \"/u.conf\"\nserver = \"app:8080\"",
            "/p/deploy.toml: lb.server: renders to \"app:8080\" for both web1 and web2; each host needs its own server",
        ),
        (
            "[lb]\ndriver = \"nginx\"\nupstream_file = \"/u.conf\"\nserver = \"{address}:{release}\"",
            "/p/deploy.toml: lb.server: {release} and {revision} are not allowed here: a host's server name must stay the same from one release to the next",
        ),
        (
            "[lb]\ndriver = \"nginx\"\nupstream_file = \"/u.conf\"\nserver = \"{address}:8080\"\nnginx = \"sudo 'nginx\"",
            "/p/deploy.toml: lb.nginx: \"sudo 'nginx\" is not a command; give how nginx is invoked on the nginx host, e.g. \"nginx\", \"sudo -n nginx\" or \"nginx -c /etc/nginx/custom.conf\" (shipit appends -T or -s reload)",
        ),
        (
            "[lb]\ndriver = \"nginx\"\nupstream_file = \"/u.conf\"\nserver = \"{address}:8080\"\nnginx = \"\"",
            "/p/deploy.toml: lb.nginx: \"\" is not a command; give how nginx is invoked on the nginx host, e.g. \"nginx\", \"sudo -n nginx\" or \"nginx -c /etc/nginx/custom.conf\" (shipit appends -T or -s reload)",
        ),
        (
            "[lb]\ndriver = \"nginx\"\nupstream_file = \"/u.conf\"\nserver = \"{address}:8080\"\nvia = [\"web1\", \"web1\"]",
            "/p/deploy.toml: lb.via: lists the nginx host web1 twice",
        ),
        (
            "[lb]\ndriver = \"nginx\"\nupstream_file = \"/u.conf\"\nserver = \"{address}:8080\"\nvia = \"lb1\"",
            "/p/deploy.toml: lb.via: \"lb1\" is not a host of stage `production`; use \"local\", a host name from stages.production.hosts, or user@host[:port] for another machine",
        ),
        (
            "[lb]\ndriver = \"nginx\"\nupstream_file = \"/u.conf\"\nserver = \"{address}:8080\"\nenable_timeout = \"0s\"",
            "/p/deploy.toml: lb.enable_timeout: must be longer than 0",
        ),
        (
            "[lb]\ndriver = \"nginx\"\nupstream_file = \"/u.conf\"\nserver = \"{address}:8080\"\nbackend = \"app\"",
            "/p/deploy.toml: lb.backend: only used by driver = \"haproxy\", but lb.driver is \"nginx\"",
        ),
    ] {
        assert_eq!(config_error(2, extra), expected, "for:\n{extra}");
    }
}

/// Canned answers of the script, one per exec, and what was asked.
struct Canned {
    /// An `Err` is a connection lost on the way.
    answers: Mutex<VecDeque<Result<Output, String>>>,
    asked: Mutex<Vec<(Via, String)>>,
}

impl Canned {
    fn new(answers: impl IntoIterator<Item = Result<Output, String>>) -> Canned {
        Canned {
            answers: Mutex::new(answers.into_iter().collect()),
            asked: Mutex::new(Vec::new()),
        }
    }
}

fn said(code: u32, stdout: &str, stderr: &str) -> Result<Output, String> {
    Ok(Output {
        exit: Exit::Code(code),
        stdout: stdout.as_bytes().to_vec(),
        stderr: stderr.as_bytes().to_vec(),
    })
}

impl Remote for Canned {
    fn exec<'a>(
        &'a self,
        via: &'a Via,
        request: ExecRequest,
        observer: &'a dyn ExecObserver,
    ) -> BoxFuture<'a, Result<Output, TransportError>> {
        Box::pin(async move {
            // The operation: the first word after the script's label.
            let op = request
                .command
                .split_once("shipit:nginx-upstream ")
                .map(|(_, rest)| rest.split(' ').next().unwrap_or_default().to_string())
                .unwrap_or_default();
            self.asked.lock().unwrap().push((via.clone(), op));
            let answer = self.answers.lock().unwrap().pop_front();
            let answer = answer.unwrap_or_else(|| said(2, "", "no more answers"));
            let out = answer.map_err(|detail| TransportError::Disconnected {
                host: via.to_string(),
                detail,
            })?;
            observer.output(Stream::Stdout, &out.stdout);
            Ok(out)
        })
    }
}

async fn perform(extra: &str, op: LbOp, remote: &Canned) -> Result<Done, LbError> {
    let action = action(extra, op);
    let never = CancellationToken::new();
    let ctx = LbCtx {
        remote,
        observer: &Quiet,
        command_timeout: None,
        cancel: &never,
    };
    match op {
        LbOp::Drain => action.driver.drain(&ctx, &action.member).await,
        LbOp::Enable => {
            action
                .driver
                .enable(&ctx, &action.member, crate::lb::Proof::Checked)
                .await
        }
    }
}

#[tokio::test]
async fn workers_left_after_the_drain_timeout_warn_or_fail() {
    let left = "reloaded\t40\t101 102\nleft\t1000\t102\n";
    let warn = format!("{LOCAL}\ndrain_timeout = \"1s\"");
    let done = perform(&warn, LbOp::Drain, &Canned::new([said(0, left, "")]))
        .await
        .unwrap();
    assert_eq!(done.result, "ok, requests left");
    assert_eq!(
        done.warnings,
        [
            "nginx local:/etc/nginx/upstreams/shop.conf: 1 nginx worker(s) from before the reload (pid 102) \
          still running after 1s, so requests through nginx were still in flight (to 10.0.0.11:8080 or another server); \
          restarting anyway (lb.drain_timeout_action = \"warn\")"
        ]
    );
    let fail = format!("{warn}\ndrain_timeout_action = \"fail\"");
    let err = perform(&fail, LbOp::Drain, &Canned::new([said(0, left, "")]))
        .await
        .unwrap_err();
    assert!(
        err.error.ends_with(
            "(to 10.0.0.11:8080 or another server) (lb.drain_timeout_action = \"fail\")"
        ),
        "{}",
        err.error
    );
    let drained = "reloaded\t40\t101 102\ndrained\t90\n";
    let done = perform(&fail, LbOp::Drain, &Canned::new([said(0, drained, "")])).await;
    assert_eq!(done, Ok(Done::ok()));
}

#[tokio::test]
async fn every_nginx_is_changed_and_a_refusal_is_named() {
    let two = format!("{LOCAL}\nvia = [\"web1\", \"web2\"]");
    let remote = Canned::new([
        said(0, "reloaded\t40\t101\n", ""),
        said(
            4,
            "",
            "`nginx -T` (the configuration test) refused the change, so /etc/nginx/upstreams/shop.conf is as it was: nginx: [emerg] host not found in upstream \"x\"\n",
        ),
    ]);
    let err = perform(&two, LbOp::Enable, &remote).await.unwrap_err();
    assert_eq!(
        err.error,
        "nginx web2:/etc/nginx/upstreams/shop.conf: `nginx -T` (the configuration test) refused the change, so /etc/nginx/upstreams/shop.conf \
         is as it was: nginx: [emerg] host not found in upstream \"x\""
    );
    let asked = remote.asked.lock().unwrap().clone();
    assert_eq!(
        asked,
        [
            (
                Via::Host {
                    name: "web1".into()
                },
                "up".to_string()
            ),
            (
                Via::Host {
                    name: "web2".into()
                },
                "up".to_string()
            )
        ]
    );
}

#[tokio::test]
async fn a_lost_connection_is_tried_again() {
    let via_web2 = format!("{LOCAL}\nvia = \"web2\"");
    let remote = Canned::new([
        Err("connection reset".to_string()),
        said(0, "reloaded\t40\t101\n", ""),
    ]);
    let done = perform(&via_web2, LbOp::Enable, &remote).await;
    assert_eq!(done, Ok(Done::ok()));
    assert_eq!(remote.asked.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn the_preflight_refuses_what_a_drain_could_not_do() {
    let check = |fields: &str, file: &str| {
        format!(
            "conf\t/etc/nginx/nginx.conf\nconf\t/etc/nginx/upstreams/shop.conf\n{fields}--- upstream file\n{file}"
        )
    };
    let good = "loaded\tyes\nwritable\tyes\nmaster\t100\nworkers\t101 102\n";
    let file = "server 10.0.0.11:8080;\nserver 10.0.0.12:8080 down;\n";
    let stage = stage(2, LOCAL);
    let driver = stage.lb.clone().unwrap();
    let members: Vec<Member> = stage
        .hosts
        .iter()
        .map(|h| {
            let vars = stage.vars(h, "");
            driver.member(&HostRef {
                vars: &vars,
                env: &[],
                local_dir: None,
            })
        })
        .collect();
    let never = CancellationToken::new();
    let preflight = |answer: Result<Output, String>| {
        let driver = driver.clone();
        let members = members.clone();
        let never = never.clone();
        async move {
            let remote = Canned::new([answer]);
            let ctx = LbCtx {
                remote: &remote,
                observer: &Quiet,
                command_timeout: None,
                cancel: &never,
            };
            driver.preflight(&ctx, &members).await
        }
    };

    let found = preflight(said(0, &check(good, file), "")).await;
    assert!(found.problems.is_empty(), "{:?}", found.problems);
    assert_eq!(
        found.states,
        BTreeMap::from([
            ("web1".to_string(), ServiceState::InService),
            ("web2".to_string(), ServiceState::Maintenance)
        ])
    );

    let at = "nginx local:/etc/nginx/upstreams/shop.conf";
    for (answer, expected) in [
        (
            said(0, &check(good, "server 10.0.0.11:8080;\n"), ""),
            format!(
                "{at}: no server 10.0.0.12:8080 (it has 10.0.0.11:8080); add a line `server ADDRESS;` for every host (lb.server renders each host's ADDRESS)"
            ),
        ),
        (
            said(
                0,
                &check(&good.replace("loaded\tyes", "loaded\tno"), file),
                "",
            ),
            format!(
                "{at}: nginx does not load this file (`nginx -T` read /etc/nginx/nginx.conf, /etc/nginx/upstreams/shop.conf); include it inside your upstream block: `include /etc/nginx/upstreams/shop.conf;`"
            ),
        ),
        (
            said(
                0,
                &check(&good.replace("writable\tyes", "writable\tno\tdeploy"), file),
                "",
            ),
            format!(
                "{at}: not writable by deploy; shipit edits this file (give that user write access to it)"
            ),
        ),
        (
            said(
                0,
                &check(
                    "loaded\tyes\nwritable\tyes\nmaster\t\tno pid in /run/nginx.pid (is nginx running?)\n",
                    file,
                ),
                "",
            ),
            format!(
                "{at}: cannot watch nginx's worker processes: no pid in /run/nginx.pid (is nginx running?)"
            ),
        ),
        (
            said(0, &check(&good.replace("101 102", ""), file), ""),
            format!(
                "{at}: nginx's master (pid 100) has no process titled `nginx: worker process`; shipit watches them to know when requests are done"
            ),
        ),
        (
            said(
                0,
                &check(good, "server 10.0.0.11:8080; server 10.0.0.12:8080;\n"),
                "",
            ),
            format!(
                "{at}: line 1 (\"server 10.0.0.11:8080; server 10.0.0.12:8080;\"): write each `server` directive on a line of its own, ending in `;`"
            ),
        ),
        (
            said(
                3,
                "",
                "/etc/nginx/upstreams/shop.conf does not exist on lb1\n",
            ),
            format!("{at}: /etc/nginx/upstreams/shop.conf does not exist on lb1"),
        ),
    ] {
        let found = preflight(answer).await;
        assert_eq!(found.problems, [expected]);
    }
}
