//! The `[lb]` keys of `driver = "caddy"`: `admin` and `via` (one Caddy
//! per entry of whichever is a list), `route_id`, `server` (a template for
//! each host's `dial` address) and `enable_timeout`.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::Caddy;
use super::admin::{Admin, Balancer};
use super::api::{ROUTE_ID_RULE, is_route_id};
use crate::config::{DEFAULT_ENABLE_TIMEOUT, LbSettings, split_host_port};
use crate::lb::{Driver, Shared, Via};

/// Caddy's own default admin address.
pub const DEFAULT_ADMIN: &str = "localhost:2019";

pub(super) fn parse(lb: &mut LbSettings<'_, '_>, shared: Shared) -> Option<Arc<dyn Driver>> {
    let route_id = match lb.string("route_id")? {
        None => lb.missing(
            "route_id",
            ", e.g. route_id = \"shop\" (the \"@id\" of the reverse_proxy handler whose upstreams shipit manages)",
        ),
        Some(at) if !is_route_id(&at.value) => lb.fail(
            &at.key,
            format!("{:?} is not an @id shipit can use: {ROUTE_ID_RULE}", at.value),
        ),
        Some(at) => Some(at.value),
    };
    let server = match lb.get("server") {
        None => lb.missing(
            "server",
            ", e.g. server = \"{address}:8080\" (each host's `dial` address, as the handler's upstreams list it)",
        ),
        Some(_) => lb.member_name("server", "", check_dial),
    };
    let balancers = balancers(lb);
    let enable_timeout = lb.positive_duration("enable_timeout", DEFAULT_ENABLE_TIMEOUT);
    Some(Arc::new(Caddy {
        balancers: balancers?,
        route_id: route_id?,
        server: server?,
        drain_timeout: shared.drain_timeout,
        drain_timeout_action: shared.drain_timeout_action,
        enable_timeout: enable_timeout?,
    }))
}

/// A `dial` address as Caddy's upstreams hold it: `host:port`, or a
/// `unix/PATH` socket; nothing that needs quoting in JSON.
fn check_dial(dial: &str) -> Result<(), String> {
    let plain = !dial.is_empty()
        && dial
            .chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '"' | '\\' | '{' | '}'));
    if !plain {
        return Err("a dial address has no spaces, quotes, backslashes or braces".into());
    }
    if dial.starts_with("unix/") {
        return Ok(());
    }
    match split_host_port(dial) {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
            Ok(())
        }
        _ => Err(
            "give host:port, as the upstream's `dial` in Caddy's config (e.g. \"{address}:8080\")"
                .into(),
        ),
    }
}

/// `lb.admin` × `lb.via`: one Caddy per list entry.
fn balancers(lb: &mut LbSettings<'_, '_>) -> Option<Vec<Balancer>> {
    let admin_at = lb.get("admin");
    let admin_key = admin_at
        .as_ref()
        .map_or_else(|| "lb.admin".to_string(), |a| a.key.clone());
    let via_at = lb.get("via");
    let via_key = via_at
        .as_ref()
        .map_or_else(|| "lb.via".to_string(), |a| a.key.clone());
    let admins = match admin_at {
        None => Some(vec![DEFAULT_ADMIN.to_string()]),
        Some(at) => lb.one_or_many(at, "host:port of Caddy's admin API"),
    };
    let vias = match via_at {
        None => Some(vec!["local".to_string()]),
        Some(at) => lb.one_or_many(at, "\"local\", a host name or user@host[:port]"),
    };
    let (admins, vias) = (admins?, vias?);
    let admins: Vec<Admin> = admins
        .iter()
        .map(|a| admin(lb, &admin_key, a))
        .collect::<Option<_>>()?;
    let vias: Vec<Via> = vias
        .iter()
        .map(|v| lb.via(&via_key, v))
        .collect::<Option<_>>()?;
    let balancers: Vec<Balancer> = match (admins.as_slice(), vias.as_slice()) {
        ([admin], vias) => vias
            .iter()
            .map(|via| Balancer {
                via: via.clone(),
                admin: admin.clone(),
            })
            .collect(),
        (admins, [via]) => admins
            .iter()
            .map(|admin| Balancer {
                via: via.clone(),
                admin: admin.clone(),
            })
            .collect(),
        _ => {
            return lb.fail(
                &via_key,
                format!(
                    "{admin_key} and {via_key} are both lists; list the Caddy instances in one of them and the other applies to each \
                     (e.g. via = [\"lb1\", \"lb2\"] with one admin address)"
                ),
            );
        }
    };
    let mut seen = BTreeSet::new();
    for b in &balancers {
        if !seen.insert(b) {
            let key = if vias.len() > 1 { &via_key } else { &admin_key };
            return lb.fail(key, format!("lists the Caddy {b} twice"));
        }
    }
    Some(balancers)
}

/// `host:port` (`[v6]:port`) of Caddy's admin endpoint.
fn admin(lb: &mut LbSettings<'_, '_>, key: &str, value: &str) -> Option<Admin> {
    if value.starts_with("unix/") || value.starts_with('/') {
        return lb.fail(
            key,
            format!(
                "{value:?}: shipit reaches Caddy's admin API over TCP only; give host:port (Caddy's default is \"{DEFAULT_ADMIN}\")"
            ),
        );
    }
    if let Some((host, port)) = split_host_port(value) {
        let host_ok = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'));
        if let (true, Ok(port @ 1..)) = (host_ok, port.parse::<u16>()) {
            return Some(Admin {
                host: host.to_string(),
                port,
            });
        }
    }
    let hint = if value.contains("://") {
        " without a scheme"
    } else {
        ""
    };
    lb.fail(
        key,
        format!(
            "{value:?} is not host:port of Caddy's admin API; give it{hint} as Caddy's `admin.listen` has it, e.g. \"{DEFAULT_ADMIN}\""
        ),
    )
}
