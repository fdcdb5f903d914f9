//! The `[lb]` keys of `driver = "haproxy"`: `socket` and `via` (one load
//! balancer per entry of whichever is a list), `backend`, `server` (a
//! template naming each host's server) and `enable_timeout`.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::Haproxy;
use super::api::{IDENT_RULE, is_ident};
use super::socket::{AdminSocket, Balancer};
use crate::config::{DEFAULT_ENABLE_TIMEOUT, LbSettings, split_host_port};
use crate::lb::{Driver, Shared, Via};

pub(super) fn parse(lb: &mut LbSettings<'_, '_>, shared: Shared) -> Option<Arc<dyn Driver>> {
    let backend = match lb.string("backend")? {
        None => lb.missing(
            "backend",
            ", e.g. backend = \"app\" (the HAProxy backend your hosts are servers of)",
        ),
        Some(at) if !is_ident(&at.value) => lb.fail(
            &at.key,
            format!(
                "{:?} is not an HAProxy backend name: {IDENT_RULE}",
                at.value
            ),
        ),
        Some(at) => Some(at.value),
    };
    let server = lb.member_name("server", "{name}", |name| {
        if is_ident(name) {
            Ok(())
        } else {
            Err(IDENT_RULE.to_string())
        }
    });
    let balancers = balancers(lb);
    let enable_timeout = lb.positive_duration("enable_timeout", DEFAULT_ENABLE_TIMEOUT);
    Some(Arc::new(Haproxy {
        balancers: balancers?,
        backend: backend?,
        server: server?,
        drain_timeout: shared.drain_timeout,
        drain_timeout_action: shared.drain_timeout_action,
        enable_timeout: enable_timeout?,
    }))
}

/// `lb.socket` × `lb.via`: one load balancer per list entry.
fn balancers(lb: &mut LbSettings<'_, '_>) -> Option<Vec<Balancer>> {
    let Some(socket_at) = lb.get("socket") else {
        return lb.missing(
            "socket",
            ", e.g. socket = \"/run/haproxy/admin.sock\" (a `stats socket ... level admin` of HAProxy) or \"10.0.0.5:9999\"",
        );
    };
    let socket_key = socket_at.key.clone();
    let via_at = lb.get("via");
    let via_key = via_at
        .as_ref()
        .map_or_else(|| "lb.via".to_string(), |a| a.key.clone());
    let sockets = lb.one_or_many(socket_at, "a socket path or host:port");
    let vias = match via_at {
        None => Some(vec!["local".to_string()]),
        Some(at) => lb.one_or_many(at, "\"local\", a host name or user@host[:port]"),
    };
    let (sockets, vias) = (sockets?, vias?);
    let sockets: Vec<AdminSocket> = sockets
        .iter()
        .map(|s| admin_socket(lb, &socket_key, s))
        .collect::<Option<_>>()?;
    let vias: Vec<Via> = vias
        .iter()
        .map(|v| lb.via(&via_key, v))
        .collect::<Option<_>>()?;
    let balancers: Vec<Balancer> = match (sockets.as_slice(), vias.as_slice()) {
        ([socket], vias) => vias
            .iter()
            .map(|via| Balancer {
                via: via.clone(),
                socket: socket.clone(),
            })
            .collect(),
        (sockets, [via]) => sockets
            .iter()
            .map(|socket| Balancer {
                via: via.clone(),
                socket: socket.clone(),
            })
            .collect(),
        _ => {
            return lb.fail(
                &via_key,
                format!(
                    "{socket_key} and {via_key} are both lists; list the load balancers in one of them and the other applies to each \
                     (e.g. via = [\"lb1\", \"lb2\"] with one socket path)"
                ),
            );
        }
    };
    let mut seen = BTreeSet::new();
    for b in &balancers {
        if !seen.insert(b) {
            let key = if vias.len() > 1 {
                &via_key
            } else {
                &socket_key
            };
            return lb.fail(key, format!("lists the load balancer {b} twice"));
        }
    }
    Some(balancers)
}

/// A UNIX socket path or `host:port`.
fn admin_socket(lb: &mut LbSettings<'_, '_>, key: &str, value: &str) -> Option<AdminSocket> {
    if value.starts_with('/') {
        let plain = value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '+' | '@' | '-'));
        if !plain {
            return lb.fail(
                key,
                format!(
                    "{value:?}: a socket path may contain only letters, digits and `._/+@-` (socat, which carries commands to sockets on other hosts, gives other characters a meaning)"
                ),
            );
        }
        if value.len() > 107 {
            return lb.fail(
                key,
                format!("{value:?} is longer than a UNIX socket path may be (107 bytes)"),
            );
        }
        return Some(AdminSocket::Unix {
            path: value.to_string(),
        });
    }
    if let Some((host, port)) = split_host_port(value) {
        let host_ok = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'));
        if let (true, Ok(port @ 1..)) = (host_ok, port.parse::<u16>()) {
            return Some(AdminSocket::Tcp {
                host: host.to_string(),
                port,
            });
        }
    }
    lb.fail(
        key,
        format!(
            "{value:?} is neither the absolute path of a UNIX socket (/run/haproxy/admin.sock) nor host:port of a TCP admin socket (10.0.0.5:9999)"
        ),
    )
}
