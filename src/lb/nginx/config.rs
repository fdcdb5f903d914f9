//! The `[lb]` keys of `driver = "nginx"`: `upstream_file` (required),
//! `server` (required: a template giving each host's address in the
//! upstream), `nginx` (how to invoke it, default `nginx`), `via` (one nginx
//! per entry) and `enable_timeout`.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::Nginx;
use super::upstream::check_address;
use crate::config::{DEFAULT_ENABLE_TIMEOUT, LbSettings};
use crate::lb::{Driver, Shared, Via};

pub(super) fn parse(lb: &mut LbSettings<'_, '_>, shared: Shared) -> Option<Arc<dyn Driver>> {
    let upstream_file = match lb.string("upstream_file")? {
        None => lb.missing(
            "upstream_file",
            ", e.g. upstream_file = \"/etc/nginx/upstreams/shop.conf\" (a file of its own, with one `server ADDRESS;` line per host, that your nginx configuration includes inside the upstream block)",
        ),
        Some(at) if !at.value.starts_with('/') => lb.fail(
            &at.key,
            format!(
                "{:?} is not an absolute path; give the file's path as the nginx host sees it",
                at.value
            ),
        ),
        Some(at) if at.value.contains(['\n', '\0']) => {
            lb.fail(&at.key, "a path cannot contain a newline")
        }
        Some(at) => Some(at.value),
    };
    let server = match lb.get("server") {
        None => lb.missing(
            "server",
            ", e.g. server = \"{address}:8080\" (each host's address as its `server` line in the upstream names it)",
        ),
        Some(_) => lb.member_name("server", "", check_address),
    };
    let nginx = nginx_command(lb);
    let balancers = balancers(lb);
    let enable_timeout = lb.positive_duration("enable_timeout", DEFAULT_ENABLE_TIMEOUT);
    let (nginx, nginx_words) = nginx?;
    Some(Arc::new(Nginx {
        balancers: balancers?,
        upstream_file: upstream_file?,
        server: server?,
        nginx,
        nginx_words,
        drain_timeout: shared.drain_timeout,
        drain_timeout_action: shared.drain_timeout_action,
        enable_timeout: enable_timeout?,
    }))
}

/// `lb.nginx`, as written and split into words like a shell would.
fn nginx_command(lb: &mut LbSettings<'_, '_>) -> Option<(String, Vec<String>)> {
    let Some(at) = lb.string("nginx")? else {
        return Some(("nginx".into(), vec!["nginx".into()]));
    };
    match shlex::split(&at.value) {
        Some(words) if !words.is_empty() && words.iter().all(|w| !w.contains('\0')) => {
            Some((at.value, words))
        }
        _ => lb.fail(
            &at.key,
            format!(
                "{:?} is not a command; give how nginx is invoked on the nginx host, e.g. \"nginx\", \"sudo -n nginx\" or \"nginx -c /etc/nginx/custom.conf\" (shipit appends -T or -s reload)",
                at.value
            ),
        ),
    }
}

/// `lb.via`: one nginx per entry, default `local`.
fn balancers(lb: &mut LbSettings<'_, '_>) -> Option<Vec<Via>> {
    let Some(at) = lb.get("via") else {
        return Some(vec![Via::Local]);
    };
    let key = at.key.clone();
    let names = lb.one_or_many(at, "\"local\", a host name or user@host[:port]")?;
    let vias: Vec<Via> = names
        .iter()
        .map(|v| lb.via(&key, v))
        .collect::<Option<_>>()?;
    let mut seen = BTreeSet::new();
    for via in &vias {
        if !seen.insert(via) {
            return lb.fail(&key, format!("lists the nginx host {via} twice"));
        }
    }
    Some(vias)
}
