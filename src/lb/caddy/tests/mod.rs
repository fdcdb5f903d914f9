//! The Caddy driver against a fake admin API that keeps a config, answers
//! with ETags and refuses stale `If-Match` with 412, as Caddy 2.6 does:
//! its `[lb]` keys, what it shows, the moves, concurrent drains, conflicts
//! with other writers, lost answers and the waits. Against a real Caddy:
//! the integration tests (tests/integration/lb_caddy.rs). The fake and the
//! tests of the keys are here; the drains, and the preflight and enable, in
//! the files beside it.

use std::collections::{BTreeMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use futures::future::BoxFuture;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::lb::{LbAction, Remote};
use crate::testing::{config_error, stage};
use crate::transport::{ExecObserver, ExecRequest, Exit, Output, Quiet, TransportError};

mod drain;
mod preflight;

const LOCAL: &str = "[lb]\ndriver = \"caddy\"\nroute_id = \"shop\"\nserver = \"{address}:8080\"\nenable_timeout = \"20s\"";

/// Through host web3, so that requests go through the fake's [`Remote`].
fn via(extra: &str) -> String {
    format!(
        "[lb]\ndriver = \"caddy\"\nroute_id = \"shop\"\nserver = \"{{address}}:8080\"\nvia = \"web3\"\n{extra}"
    )
}

fn action(extra: &str, op: LbOp, host: usize) -> LbAction {
    crate::testing::lb_action(3, extra, op, host)
}

#[test]
fn actions_read_as_what_they_do() {
    assert_eq!(
        action(LOCAL, LbOp::Drain, 0).to_string(),
        "caddy local:localhost:2019: DELETE /id/shop/upstreams/N (10.0.0.11:8080; If-Match, after making sure \
         server shipit_tracked_shop lists it); wait until /reverse_proxy/upstreams counts 0 requests to it (≤30s, then warn)"
    );
    assert_eq!(
        action(LOCAL, LbOp::Enable, 0).to_string(),
        "caddy local:localhost:2019: POST /id/shop/upstreams (10.0.0.11:8080 as shipit_tracked_shop lists it; If-Match); \
         wait until Caddy's pool lists it, with fewer failures than max_fails if counted (≤20s)"
    );
    let pair = "[lb]\ndriver = \"caddy\"\nroute_id = \"shop\"\nserver = \"{address}:8080\"\nvia = [\"web2\", \"ops@lb2:2222\"]";
    assert_eq!(
        action(pair, LbOp::Enable, 0).summary(),
        "caddy web2:localhost:2019, ops@lb2:2222:localhost:2019: enable shop/10.0.0.11:8080"
    );
}

#[test]
fn settings_and_several_balancers() {
    let json = serde_json::to_value(action(LOCAL, LbOp::Drain, 0)).unwrap();
    assert_eq!(json["driver"], "caddy");
    assert_eq!(json["member"]["server"], "10.0.0.11:8080");
    assert_eq!(json["settings"]["route_id"], "shop");
    assert_eq!(json["settings"]["balancers"][0]["via"]["type"], "local");
    assert_eq!(
        json["settings"]["balancers"][0]["admin"]["host"],
        "localhost"
    );
    assert_eq!(json["settings"]["balancers"][0]["admin"]["port"], 2019);
    assert_eq!(json["settings"]["enable_timeout"], 20000);
    assert_eq!(json["settings"]["drain_timeout_action"], "warn");

    let settings = |extra: &str| stage(3, extra).lb.unwrap().settings();
    let two = settings(
        "[lb]\ndriver = \"caddy\"\nroute_id = \"shop\"\nserver = \"{name}.internal:80\"\nadmin = [\"10.0.0.5:2019\", \"[fd00::6]:2019\"]",
    );
    assert_eq!(two["balancers"][1]["admin"]["host"], "fd00::6");
    assert_eq!(two["balancers"][1]["via"]["type"], "local");
    let driver = stage(3, LOCAL).lb.unwrap();
    assert!(driver.ssh_hosts().is_empty());
    assert_eq!(stage(3, &via("")).lb.unwrap().ssh_hosts().len(), 1);
}

#[test]
fn bad_values_and_their_messages() {
    let base = "[lb]\ndriver = \"caddy\"\nroute_id = \"shop\"\nserver = \"{address}:8080\"\n";
    for (extra, expected) in [
        (
            "[lb]\ndriver = \"caddy\"\nserver = \"{address}:8080\"".to_string(),
            "/p/deploy.toml: lb.route_id: missing (stage `production`); set it in [lb] or [stages.production.lb], e.g. route_id = \"shop\" (the \"@id\" of the reverse_proxy handler whose upstreams shipit manages)",
        ),
        (
            "[lb]\ndriver = \"caddy\"\nroute_id = \"shop\"".to_string(),
            "/p/deploy.toml: lb.server: missing (stage `production`); set it in [lb] or [stages.production.lb], e.g. server = \"{address}:8080\" (each host's `dial` address, as the handler's upstreams list it)",
        ),
        (
            "[lb]\ndriver = \"caddy\"\nroute_id = \"my shop\"\nserver = \"{address}:8080\"".to_string(),
            "/p/deploy.toml: lb.route_id: \"my shop\" is not an @id shipit can use: use letters, digits, `-`, `_`, `.` and `~` (it goes into admin API paths as it is)",
        ),
        (
            "[lb]\ndriver = \"caddy\"\nroute_id = \"shop\"\nserver = \"{address}\"".to_string(),
            "/p/deploy.toml: lb.server: renders to \"10.0.0.11\" for host web1; give host:port, as the upstream's `dial` in Caddy's config (e.g. \"{address}:8080\")",
        ),
        (
            "[lb]\ndriver = \"caddy\"\nroute_id = \"shop\"\nserver = \"app:8080\"".to_string(),
            "/p/deploy.toml: lb.server: renders to \"app:8080\" for both web1 and web2; each host needs its own server",
        ),
        (
            "[lb]\ndriver = \"caddy\"\nroute_id = \"shop\"\nserver = \"{name} :80\"".to_string(),
            "/p/deploy.toml: lb.server: renders to \"web1 :80\" for host web1; a dial address has no spaces, quotes, backslashes or braces",
        ),
        (
            format!("{base}admin = \"http://localhost:2019\""),
            "/p/deploy.toml: lb.admin: \"http://localhost:2019\" is not host:port of Caddy's admin API; give it without a scheme as Caddy's `admin.listen` has it, e.g. \"localhost:2019\"",
        ),
        (
            format!("{base}admin = \"localhost\""),
            "/p/deploy.toml: lb.admin: \"localhost\" is not host:port of Caddy's admin API; give it as Caddy's `admin.listen` has it, e.g. \"localhost:2019\"",
        ),
        (
            format!("{base}admin = \"unix//run/caddy/admin.sock\""),
            "/p/deploy.toml: lb.admin: \"unix//run/caddy/admin.sock\": shipit reaches Caddy's admin API over TCP only; give host:port (Caddy's default is \"localhost:2019\")",
        ),
        (
            format!("{base}admin = [\"a:1\", \"b:2\"]\nvia = [\"web1\", \"web2\"]"),
            "/p/deploy.toml: lb.via: lb.admin and lb.via are both lists; list the Caddy instances in one of them and the other applies to each (e.g. via = [\"lb1\", \"lb2\"] with one admin address)",
        ),
        (
            format!("{base}via = [\"web1\", \"web1\"]"),
            "/p/deploy.toml: lb.via: lists the Caddy web1:localhost:2019 twice",
        ),
        (
            format!("{base}via = \"lb1\""),
            "/p/deploy.toml: lb.via: \"lb1\" is not a host of stage `production`; use \"local\", a host name from stages.production.hosts, or user@host[:port] for another machine",
        ),
        (
            "[lb]\ndriver = \"caddy\"\nroute_id = \"shop\"\nserver = \"{address}:8080\"\nsocket = \"/a.sock\"".to_string(),
            "/p/deploy.toml: lb.socket: only used by driver = \"haproxy\", but lb.driver is \"caddy\"",
        ),
    ] {
        assert_eq!(config_error(3, &extra), expected, "for:\n{extra}");
    }
}

type Interloper = Box<dyn FnOnce(&mut Value) + Send>;

/// A fake Caddy admin API: a config with the managed handler, the config
/// API's paths (`/id/...`, `/config/...`), ETags as `"<path> <hash>"` sent
/// as a trailer, `If-Match` checked before a change, and the upstream pool
/// derived from the config with scripted in-flight counts.
struct FakeCaddy {
    state: Mutex<State>,
}

struct State {
    config: Value,
    /// Per address, the `num_requests` of the next pool reads (the last
    /// one repeats).
    in_flight: BTreeMap<String, VecDeque<u64>>,
    fails: BTreeMap<String, u64>,
    /// Applied to the config just before the next change is checked: some
    /// other writer got there first.
    interloper: Option<Interloper>,
    /// The next change is made, but its answer is lost on the way back.
    lose_next_answer: bool,
    /// `METHOD PATH STATUS` of every request.
    log: Vec<String>,
}

impl FakeCaddy {
    fn new(upstreams: Value) -> FakeCaddy {
        let config = json!({"apps": {"http": {"servers": {"www": {
            "listen": [":80"],
            "routes": [{"handle": [{
                "@id": "shop",
                "handler": "reverse_proxy",
                "upstreams": upstreams,
            }]}],
        }}}}});
        FakeCaddy {
            state: Mutex::new(State {
                config,
                in_flight: BTreeMap::new(),
                fails: BTreeMap::new(),
                interloper: None,
                lose_next_answer: false,
                log: Vec::new(),
            }),
        }
    }

    fn three() -> FakeCaddy {
        FakeCaddy::new(json!([
            {"dial": "10.0.0.11:8080"},
            {"dial": "10.0.0.12:8080", "max_requests": 100},
            {"dial": "10.0.0.13:8080"},
        ]))
    }

    fn at(&self, pointer: &str) -> Value {
        self.state
            .lock()
            .unwrap()
            .config
            .pointer(pointer)
            .cloned()
            .unwrap_or(Value::Null)
    }

    fn route(&self) -> Vec<String> {
        dials(&self.at("/apps/http/servers/www/routes/0/handle/0/upstreams"))
    }

    fn tracked(&self) -> Option<Vec<String>> {
        let server = self.at("/apps/http/servers/shipit_tracked_shop");
        (!server.is_null()).then(|| dials(&server["routes"][0]["handle"][0]["upstreams"]))
    }

    /// Config changes so far (each one a reload of Caddy).
    fn changes(&self) -> usize {
        self.log()
            .iter()
            .filter(|l| !l.starts_with("GET") && l.ends_with(" 200"))
            .count()
    }

    fn log(&self) -> Vec<String> {
        self.state.lock().unwrap().log.clone()
    }

    fn count(&self, what: &str) -> usize {
        self.log().iter().filter(|l| l.contains(what)).count()
    }
}

fn dials(list: &Value) -> Vec<String> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|u| u["dial"].as_str().map(str::to_string))
        .collect()
}

fn hash(value: &Value) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    value.to_string().hash(&mut h);
    format!("{:08x}", h.finish() as u32)
}

/// The JSON pointer of the object with `"@id": id`.
fn find_id(value: &Value, id: &str, at: &str) -> Option<String> {
    match value {
        Value::Object(map) => {
            if map.get("@id").and_then(Value::as_str) == Some(id) {
                return Some(at.to_string());
            }
            map.iter()
                .find_map(|(k, v)| find_id(v, id, &format!("{at}/{k}")))
        }
        Value::Array(list) => list
            .iter()
            .enumerate()
            .find_map(|(i, v)| find_id(v, id, &format!("{at}/{i}"))),
        _ => None,
    }
}

/// Every upstream address any reverse_proxy handler lists.
fn referenced(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if map.get("handler") == Some(&json!("reverse_proxy")) {
                for d in dials(&map["upstreams"]) {
                    if !out.contains(&d) {
                        out.push(d);
                    }
                }
            }
            map.values().for_each(|v| referenced(v, out));
        }
        Value::Array(list) => list.iter().for_each(|v| referenced(v, out)),
        _ => {}
    }
}

impl State {
    fn handle(
        &mut self,
        method: &str,
        path: &str,
        if_match: Option<&str>,
        body: &[u8],
    ) -> (u16, String, Option<String>) {
        if path == "/reverse_proxy/upstreams" {
            let mut addresses = Vec::new();
            referenced(&self.config, &mut addresses);
            let list: Vec<Value> = addresses
                .iter()
                .map(|a| {
                    let queue = self.in_flight.entry(a.clone()).or_default();
                    let n = if queue.len() > 1 { queue.pop_front() } else { queue.front().copied() };
                    json!({"address": a, "num_requests": n.unwrap_or(0), "fails": self.fails.get(a).copied().unwrap_or(0)})
                })
                .collect();
            return (200, Value::Array(list).to_string(), None);
        }
        // `/id/ID/rest` → `/config/<where ID is>/rest`.
        let path = match path.strip_prefix("/id/") {
            Some(rest) => {
                let (id, tail) = rest.split_once('/').map_or((rest, ""), |(a, b)| (a, b));
                let Some(at) = find_id(&self.config, id, "") else {
                    return (
                        404,
                        format!("{{\"error\":\"unknown object ID '{id}'\"}}"),
                        None,
                    );
                };
                if tail.is_empty() {
                    format!("/config{at}")
                } else {
                    format!("/config{at}/{tail}")
                }
            }
            None => path.trim_end_matches('/').to_string(),
        };
        let pointer = path.strip_prefix("/config").unwrap_or_default().to_string();
        if method != "GET"
            && let Some(change) = self.interloper.take()
        {
            change(&mut self.config);
        }
        if let Some(tag) = if_match {
            let inner = tag.trim_matches('"');
            let (at, expected) = inner.split_once(' ').unwrap();
            let current = self
                .config
                .pointer(at.strip_prefix("/config").unwrap())
                .cloned()
                .unwrap_or(Value::Null);
            if hash(&current) != expected {
                return (
                    412,
                    "{\"error\":\"If-Match header did not match current config hash\"}".into(),
                    None,
                );
            }
        }
        let (parent, last) = pointer.rsplit_once('/').unwrap();
        match method {
            "GET" => match self.config.pointer(&pointer) {
                Some(v) => (200, v.to_string(), Some(format!("\"{path} {}\"", hash(v)))),
                None if self.config.pointer(parent).is_some_and(Value::is_object) => (
                    200,
                    "null".into(),
                    Some(format!("\"{path} {}\"", hash(&Value::Null))),
                ),
                None => (
                    400,
                    format!("{{\"error\":\"invalid traversal path at: {path}\"}}"),
                    None,
                ),
            },
            "POST" => {
                let value: Value = serde_json::from_slice(body).unwrap();
                match self.config.pointer_mut(&pointer) {
                    Some(Value::Array(list)) => list.push(value),
                    _ => match self.config.pointer_mut(parent) {
                        Some(Value::Object(map)) => {
                            map.insert(last.to_string(), value);
                        }
                        _ => return (400, "{\"error\":\"bad path\"}".into(), None),
                    },
                }
                (200, String::new(), None)
            }
            "PATCH" => {
                let value: Value = serde_json::from_slice(body).unwrap();
                match self.config.pointer_mut(&pointer) {
                    Some(slot) => *slot = value,
                    None => return (400, "{\"error\":\"no such path\"}".into(), None),
                }
                (200, String::new(), None)
            }
            "DELETE" => {
                match self.config.pointer_mut(parent) {
                    Some(Value::Array(list)) => {
                        let i: usize = last.parse().unwrap();
                        if i >= list.len() {
                            return (400, "{\"error\":\"index out of bounds\"}".into(), None);
                        }
                        list.remove(i);
                    }
                    Some(Value::Object(map)) => {
                        map.remove(last);
                    }
                    _ => return (400, "{\"error\":\"bad path\"}".into(), None),
                }
                (200, String::new(), None)
            }
            other => (
                405,
                format!("{{\"error\":\"method {other} not allowed\"}}"),
                None,
            ),
        }
    }
}

impl Remote for FakeCaddy {
    fn exec<'a>(
        &'a self,
        _via: &'a Via,
        request: ExecRequest,
        _observer: &'a dyn ExecObserver,
    ) -> BoxFuture<'a, Result<Output, TransportError>> {
        Box::pin(async move {
            // Let another drain of the batch run between two requests.
            tokio::task::yield_now().await;
            let raw = request
                .stdin
                .as_ref()
                .and_then(|s| s.as_bytes())
                .map(bytes::Bytes::copy_from_slice)
                .unwrap_or_default();
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut req = httparse::Request::new(&mut headers);
            let head = match req.parse(&raw).unwrap() {
                httparse::Status::Complete(n) => n,
                httparse::Status::Partial => panic!("partial request"),
            };
            let if_match = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("if-match"))
                .map(|h| String::from_utf8_lossy(h.value).into_owned());
            let (method, path) = (
                req.method.unwrap().to_string(),
                req.path.unwrap().to_string(),
            );
            let mut state = self.state.lock().unwrap();
            let (status, body, etag) =
                state.handle(&method, &path, if_match.as_deref(), &raw[head..]);
            state.log.push(format!("{method} {path} {status}"));
            if method != "GET" && status == 200 && std::mem::take(&mut state.lose_next_answer) {
                return Err(TransportError::Disconnected {
                    host: "web3".into(),
                    detail: "connection reset".into(),
                });
            }
            let bytes = match etag {
                Some(etag) => format!(
                    "HTTP/1.1 {status} X\r\nTrailer: ETag\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\n\r\n0\r\nEtag: {etag}\r\n\r\n",
                    body.len() + 1
                ),
                None => format!(
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                ),
            };
            Ok(Output {
                exit: Exit::Code(0),
                stdout: bytes.into_bytes(),
                stderr: Vec::new(),
            })
        })
    }
}

fn ctx<'a>(remote: &'a FakeCaddy, cancel: &'a CancellationToken) -> LbCtx<'a> {
    LbCtx {
        remote,
        observer: &Quiet,
        command_timeout: None,
        cancel,
    }
}
