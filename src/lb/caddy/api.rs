//! Caddy's admin API as shipit uses it, as data: the requests (config API
//! paths and `@id`s, never a load of the whole config) and what the answers
//! mean. No I/O here; `admin` carries the requests.
//!
//! Two places list a host's upstream (its `dial` address):
//!
//! - the managed handler, `GET /id/<route_id>`: a `reverse_proxy` whose
//!   `upstreams` are the hosts in service;
//! - shipit's tracking server, `/config/apps/http/servers/shipit_tracked_<route_id>`:
//!   an HTTP server with no listener (it never receives a request) whose one
//!   `reverse_proxy` lists every upstream shipit has taken out at least once.
//!
//! Why track: Caddy 2.6 counts in-flight requests per upstream address
//! (`GET /reverse_proxy/upstreams`, `num_requests`), but drops an address
//! from that count the moment no handler of the running config lists it,
//! although requests to it are still in flight in the previous config
//! generation. Listed by the tracking handler, the address keeps its count,
//! which falls to 0 as those requests finish: that is what a drain waits
//! for. The list stays: so a drain and an enable are one config change each
//! (every change makes Caddy reload, and a reload closes its idle client
//! connections), except the first drain of a host, which also adds it here.
//!
//! Every change carries `If-Match` with the ETag of what it was based on
//! (the handler, or the tracking server), so two drains running at once
//! never lose each other's edit: the second gets 412 and starts over from
//! a fresh read.

use serde_json::{Value, json};

use super::http::{Method, Request, Response};

/// The name of shipit's tracking server for `route_id`.
pub fn tracking_server(route_id: &str) -> String {
    format!("shipit_tracked_{route_id}")
}

fn tracking_path(route_id: &str) -> String {
    format!("/config/apps/http/servers/{}", tracking_server(route_id))
}

/// The characters a `route_id` may have: it goes into URL paths and a
/// server name as it is.
pub fn is_route_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~'))
        && id != "."
        && id != ".."
}

/// What to say when [`is_route_id`] fails.
pub const ROUTE_ID_RULE: &str =
    "use letters, digits, `-`, `_`, `.` and `~` (it goes into admin API paths as it is)";

/// The handler: `GET /id/<route_id>`.
pub fn read_handler(route_id: &str) -> Request {
    Request::get(format!("/id/{route_id}"))
}

/// The tracking server: `GET /config/apps/http/servers/shipit_tracked_<id>`
/// (`null` when there is none).
pub fn read_tracked(route_id: &str) -> Request {
    Request::get(tracking_path(route_id))
}

/// In-flight requests and failures per upstream address.
pub fn read_pool() -> Request {
    Request::get("/reverse_proxy/upstreams")
}

fn change(method: Method, path: String, etag: &str, body: Option<&Value>) -> Request {
    Request {
        method,
        path,
        if_match: Some(etag.to_string()),
        body: body.map(Value::to_string),
    }
}

/// Appends `upstream` to the handler's list.
pub fn add_upstream(route_id: &str, upstream: &Value, etag: &str) -> Request {
    change(
        Method::Post,
        format!("/id/{route_id}/upstreams"),
        etag,
        Some(upstream),
    )
}

/// Deletes entry `index` of the handler's list.
pub fn remove_upstream(route_id: &str, index: usize, etag: &str) -> Request {
    change(
        Method::Delete,
        format!("/id/{route_id}/upstreams/{index}"),
        etag,
        None,
    )
}

/// Creates the tracking server listing `upstream` (`etag`: of its `null`).
pub fn create_tracked(route_id: &str, upstream: &Value, etag: &str) -> Request {
    let server = json!({
        "automatic_https": {"disable": true},
        "routes": [{"handle": [{"handler": "reverse_proxy", "upstreams": [upstream]}]}],
    });
    change(Method::Post, tracking_path(route_id), etag, Some(&server))
}

/// Appends `upstream` to the tracking list.
pub fn track(route_id: &str, upstream: &Value, etag: &str) -> Request {
    change(
        Method::Post,
        format!("{}/routes/0/handle/0/upstreams", tracking_path(route_id)),
        etag,
        Some(upstream),
    )
}

/// Replaces entry `index` of the tracking list (the handler's copy of the
/// upstream changed since it was tracked).
pub fn retrack(route_id: &str, index: usize, upstream: &Value, etag: &str) -> Request {
    change(
        Method::Patch,
        format!(
            "{}/routes/0/handle/0/upstreams/{index}",
            tracking_path(route_id)
        ),
        etag,
        Some(upstream),
    )
}

/// The `dial` address of an upstream object.
pub fn dial(upstream: &Value) -> Option<&str> {
    upstream.get("dial").and_then(Value::as_str)
}

fn position(list: &[Value], address: &str) -> Option<usize> {
    list.iter().position(|u| dial(u) == Some(address))
}

fn dials(list: &[Value]) -> String {
    let all: Vec<&str> = list.iter().filter_map(dial).collect();
    if all.is_empty() {
        "none".into()
    } else {
        all.join(", ")
    }
}

/// The managed `reverse_proxy` handler as read, with the ETag to change it.
#[derive(Debug, Clone, PartialEq)]
pub struct Handler {
    pub upstreams: Vec<Value>,
    /// With passive health checks, an upstream with this many failures
    /// counted is not sent requests (Caddy's default is 1).
    pub max_fails: Option<u64>,
    pub etag: String,
}

impl Handler {
    /// Reads the answer to [`read_handler`].
    pub fn parse(route_id: &str, answer: &Response) -> Result<Handler, String> {
        if answer.status == 404 {
            return Err(format!(
                "no object with \"@id\": \"{route_id}\" in Caddy's running config ({}); add it to the reverse_proxy handler whose upstreams shipit manages",
                error_text(answer)
            ));
        }
        let value = json_ok(answer)?;
        let handler = value.get("handler").and_then(Value::as_str);
        if handler != Some("reverse_proxy") {
            return Err(format!(
                "@id {route_id} is {}, not a reverse_proxy handler; put the @id on the handler itself (\"handler\": \"reverse_proxy\")",
                match handler {
                    Some(h) => format!("a `{h}` handler"),
                    None => "not a handler".to_string(),
                }
            ));
        }
        let upstreams = match value.get("upstreams") {
            Some(Value::Array(list)) => list.clone(),
            None if value.get("dynamic_upstreams").is_some() => {
                return Err(format!(
                    "reverse_proxy @id {route_id} uses dynamic_upstreams; shipit manages a static `upstreams` list"
                ));
            }
            None => Vec::new(),
            Some(other) => {
                return Err(format!(
                    "`upstreams` of @id {route_id} is not a list: {other}"
                ));
            }
        };
        let passive = value.pointer("/health_checks/passive");
        let max_fails = passive.map(|p| {
            p.get("max_fails")
                .and_then(Value::as_u64)
                .filter(|n| *n > 0)
                .unwrap_or(1)
        });
        Ok(Handler {
            upstreams,
            max_fails,
            etag: etag(answer)?,
        })
    }

    pub fn position(&self, address: &str) -> Option<usize> {
        position(&self.upstreams, address)
    }

    /// `10.0.0.11:8080, 10.0.0.12:8080` or `none`.
    pub fn dials(&self) -> String {
        dials(&self.upstreams)
    }
}

/// shipit's tracking server as read: its upstreams (`None`: there is
/// none) and the ETag to change it.
#[derive(Debug, Clone, PartialEq)]
pub struct Tracked {
    pub upstreams: Option<Vec<Value>>,
    pub etag: String,
}

impl Tracked {
    /// Reads the answer to [`read_tracked`].
    pub fn parse(route_id: &str, answer: &Response) -> Result<Tracked, String> {
        let value = json_ok(answer)?;
        let etag = etag(answer)?;
        if value.is_null() {
            return Ok(Tracked {
                upstreams: None,
                etag,
            });
        }
        let name = tracking_server(route_id);
        let handler = value.pointer("/routes/0/handle/0");
        match handler.and_then(|h| h.get("upstreams")) {
            Some(Value::Array(list))
                if handler.and_then(|h| h.get("handler")) == Some(&json!("reverse_proxy")) =>
            {
                Ok(Tracked {
                    upstreams: Some(list.clone()),
                    etag,
                })
            }
            _ => Err(format!(
                "the server {name} (where shipit tracks the upstreams it takes out) is not as shipit made it; \
                 put every upstream it lists that should serve back into @id {route_id}, then delete it: DELETE /config/apps/http/servers/{name}"
            )),
        }
    }

    pub fn position(&self, address: &str) -> Option<usize> {
        self.upstreams
            .as_deref()
            .and_then(|list| position(list, address))
    }

    /// The tracked upstream object for `address`, fields and all.
    pub fn find(&self, address: &str) -> Option<&Value> {
        let list = self.upstreams.as_deref()?;
        position(list, address).map(|i| &list[i])
    }
}

/// One entry of `GET /reverse_proxy/upstreams`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolEntry {
    pub address: String,
    /// Requests in flight to it, in every config generation.
    pub num_requests: u64,
    /// Failures its passive health check remembers.
    pub fails: u64,
}

/// Reads the answer to [`read_pool`].
pub fn parse_pool(answer: &Response) -> Result<Vec<PoolEntry>, String> {
    let value = json_ok(answer)?;
    let Some(list) = value.as_array() else {
        return Err(format!("not a list: {}", shorten(&answer.text())));
    };
    Ok(list
        .iter()
        .filter_map(|e| {
            Some(PoolEntry {
                address: e.get("address")?.as_str()?.to_string(),
                num_requests: e.get("num_requests").and_then(Value::as_u64).unwrap_or(0),
                fails: e.get("fails").and_then(Value::as_u64).unwrap_or(0),
            })
        })
        .collect())
}

/// How Caddy answered a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changed {
    Done,
    /// 412: the config changed since it was read; read again.
    Conflict,
}

/// Reads the answer to a change: 200, 412, or Caddy's refusal.
pub fn changed(answer: &Response) -> Result<Changed, String> {
    match answer.status {
        200..=299 => Ok(Changed::Done),
        412 => Ok(Changed::Conflict),
        status => Err(format!("{status}: {}", error_text(answer))),
    }
}

/// A 200 answer's JSON, or the error as Caddy said it.
fn json_ok(answer: &Response) -> Result<Value, String> {
    if answer.status != 200 {
        return Err(format!("{}: {}", answer.status, error_text(answer)));
    }
    serde_json::from_slice(&answer.body)
        .map_err(|e| format!("not JSON ({e}): {}", shorten(&answer.text())))
}

fn etag(answer: &Response) -> Result<String, String> {
    answer.etag.clone().ok_or_else(|| {
        "Caddy sent no ETag (Caddy 2.6 or later sends one with every config read)".to_string()
    })
}

/// Caddy's `{"error": "..."}`, or the body as it is.
pub fn error_text(answer: &Response) -> String {
    serde_json::from_slice::<Value>(&answer.body)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| match answer.text().trim() {
            "" => "(no body)".to_string(),
            text => shorten(text),
        })
}

fn shorten(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str, etag: Option<&str>) -> Response {
        Response {
            status,
            body: body.as_bytes().to_vec(),
            etag: etag.map(str::to_string),
        }
    }

    const ETAG: &str = "\"/config/apps/http/servers/app/routes/0/handle/0 6e7dfc1f\"";

    #[test]
    fn requests_use_ids_and_paths_with_if_match() {
        assert_eq!(read_handler("shop").to_string(), "GET /id/shop");
        assert_eq!(
            read_tracked("shop").to_string(),
            "GET /config/apps/http/servers/shipit_tracked_shop"
        );
        assert_eq!(read_pool().to_string(), "GET /reverse_proxy/upstreams");
        let up = json!({"dial": "10.0.0.1:8080", "max_requests": 5});
        let r = add_upstream("shop", &up, ETAG);
        assert_eq!(r.to_string(), "POST /id/shop/upstreams");
        assert_eq!(r.if_match.as_deref(), Some(ETAG));
        assert_eq!(
            r.body.as_deref(),
            Some(r#"{"dial":"10.0.0.1:8080","max_requests":5}"#)
        );
        assert_eq!(
            remove_upstream("shop", 2, ETAG).to_string(),
            "DELETE /id/shop/upstreams/2"
        );
        let r = create_tracked(
            "shop",
            &up,
            "\"/config/apps/http/servers/shipit_tracked_shop 0e7c22ea\"",
        );
        assert_eq!(
            r.to_string(),
            "POST /config/apps/http/servers/shipit_tracked_shop"
        );
        assert_eq!(
            r.body.as_deref(),
            Some(
                r#"{"automatic_https":{"disable":true},"routes":[{"handle":[{"handler":"reverse_proxy","upstreams":[{"dial":"10.0.0.1:8080","max_requests":5}]}]}]}"#
            )
        );
        assert_eq!(
            track("shop", &up, ETAG).to_string(),
            "POST /config/apps/http/servers/shipit_tracked_shop/routes/0/handle/0/upstreams"
        );
        let r = retrack("shop", 1, &up, ETAG);
        assert_eq!(
            r.to_string(),
            "PATCH /config/apps/http/servers/shipit_tracked_shop/routes/0/handle/0/upstreams/1"
        );
        assert_eq!(r.if_match.as_deref(), Some(ETAG));
    }

    #[test]
    fn route_ids() {
        for ok in ["shop", "app-1", "a.b_c~d"] {
            assert!(is_route_id(ok), "{ok}");
        }
        for bad in ["", "a/b", "a b", "..", ".", "é", "a?b", "a%2F"] {
            assert!(!is_route_id(bad), "{bad}");
        }
    }

    /// Captured from Caddy 2.6.2 (fleet.sh's handler).
    const HANDLER: &str = r#"{"@id":"app","handler":"reverse_proxy","health_checks":{"active":{"interval":"500ms","timeout":"1s","uri":"/health"}},"load_balancing":{"selection_policy":{"policy":"round_robin"}},"upstreams":[{"dial":"10.201.3.11:8080"},{"dial":"10.201.3.12:8080","max_requests":10}]}"#;

    #[test]
    fn the_handler() {
        let h = Handler::parse("app", &answer(200, HANDLER, Some(ETAG))).unwrap();
        assert_eq!(h.dials(), "10.201.3.11:8080, 10.201.3.12:8080");
        assert_eq!(h.position("10.201.3.12:8080"), Some(1));
        assert_eq!(h.position("10.201.3.13:8080"), None);
        assert_eq!(h.max_fails, None);
        assert_eq!(h.etag, ETAG);

        let passive = r#"{"handler":"reverse_proxy","health_checks":{"passive":{"fail_duration":"10s"}},"upstreams":[]}"#;
        let h = Handler::parse("app", &answer(200, passive, Some(ETAG))).unwrap();
        assert_eq!((h.max_fails, h.dials()), (Some(1), "none".to_string()));
        let passive = r#"{"handler":"reverse_proxy","health_checks":{"passive":{"fail_duration":"10s","max_fails":3}}}"#;
        let h = Handler::parse("app", &answer(200, passive, Some(ETAG))).unwrap();
        assert_eq!((h.max_fails, h.upstreams.len()), (Some(3), 0));
    }

    #[test]
    fn what_is_not_a_managed_handler() {
        let err = |status, body: &str| {
            Handler::parse("shop", &answer(status, body, Some(ETAG))).unwrap_err()
        };
        assert_eq!(
            err(404, r#"{"error":"unknown object ID 'shop'"}"#),
            "no object with \"@id\": \"shop\" in Caddy's running config (unknown object ID 'shop'); add it to the reverse_proxy handler whose upstreams shipit manages"
        );
        assert_eq!(
            err(200, r#"{"handler":"subroute","routes":[]}"#),
            "@id shop is a `subroute` handler, not a reverse_proxy handler; put the @id on the handler itself (\"handler\": \"reverse_proxy\")"
        );
        assert_eq!(
            err(200, r#"{"match":[{"host":["a"]}],"handle":[]}"#),
            "@id shop is not a handler, not a reverse_proxy handler; put the @id on the handler itself (\"handler\": \"reverse_proxy\")"
        );
        assert_eq!(
            err(
                200,
                r#"{"handler":"reverse_proxy","dynamic_upstreams":{"source":"a"}}"#
            ),
            "reverse_proxy @id shop uses dynamic_upstreams; shipit manages a static `upstreams` list"
        );
        assert_eq!(
            err(403, r#"{"error":"host not allowed: example.com:2019"}"#),
            "403: host not allowed: example.com:2019"
        );
        assert_eq!(
            Handler::parse("shop", &answer(200, HANDLER, None)).unwrap_err(),
            "Caddy sent no ETag (Caddy 2.6 or later sends one with every config read)"
        );
    }

    #[test]
    fn the_tracking_server() {
        let none = Tracked::parse("app", &answer(200, "null\n", Some("\"/p 1\""))).unwrap();
        assert_eq!(none.upstreams, None);
        assert_eq!(none.position("a:1"), None);

        let body = r#"{"automatic_https":{"disable":true},"routes":[{"handle":[{"handler":"reverse_proxy","upstreams":[{"dial":"a:1"},{"dial":"b:2","max_requests":3}]}]}]}"#;
        let t = Tracked::parse("app", &answer(200, body, Some("\"/p 2\""))).unwrap();
        assert_eq!(t.position("b:2"), Some(1));
        assert_eq!(
            t.find("b:2"),
            Some(&json!({"dial": "b:2", "max_requests": 3}))
        );
        assert_eq!(t.etag, "\"/p 2\"");

        let odd = Tracked::parse("app", &answer(200, r#"{"routes":[]}"#, Some("\"/p 3\"")));
        assert!(
            odd.unwrap_err()
                .starts_with("the server shipit_tracked_app (where shipit tracks the upstreams it takes out) is not as shipit made it")
        );
    }

    #[test]
    fn the_pool() {
        let body = r#"[{"address":"10.201.3.11:8080","num_requests":2,"fails":0},{"address":"10.201.3.12:8080","num_requests":0,"fails":1}]"#;
        let pool = parse_pool(&answer(200, body, None)).unwrap();
        assert_eq!(
            pool[0],
            PoolEntry {
                address: "10.201.3.11:8080".into(),
                num_requests: 2,
                fails: 0
            }
        );
        assert_eq!(pool[1].fails, 1);
        assert!(
            parse_pool(&answer(200, "{}", None))
                .unwrap_err()
                .starts_with("not a list")
        );
    }

    #[test]
    fn answers_to_changes() {
        assert_eq!(changed(&answer(200, "", None)), Ok(Changed::Done));
        assert_eq!(
            changed(&answer(
                412,
                r#"{"error":"If-Match header did not match current config hash"}"#,
                None
            )),
            Ok(Changed::Conflict)
        );
        assert_eq!(
            changed(&answer(
                400,
                r#"{"error":"loading new config: http app module: start: listening on :80: bind: permission denied"}"#,
                None
            )),
            Err("400: loading new config: http app module: start: listening on :80: bind: permission denied".into())
        );
        assert_eq!(
            changed(&answer(500, "", None)),
            Err("500: (no body)".into())
        );
    }
}
