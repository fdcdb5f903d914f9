//! Reaching a stage's hosts: one SSH connection each for the whole run,
//! then a read-only probe of what each host has.

use std::collections::BTreeMap;

use futures::future::join_all;

use crate::config::{self, Host, Stage};
use crate::error::Error;
use crate::host::{HostFacts, Layout};
use crate::lb::Via;
use crate::transport::ssh::{
    ConnectOptions, HostKeyChecking, SshConfigSource, SshOverrides, SshTarget, SshTransport,
};
use crate::transport::{ExecRequest, Quiet, Transport, TransportError};

/// Connects to every host; any failure is an error before anything changed.
pub async fn connect(stage: &Stage, hosts: &[Host]) -> Result<SshTransport, Error> {
    all_or_nothing(connect_targets(stage, hosts, &[]).await).await
}

/// Connects to every host and to the machines outside the inventory that
/// the stage's load balancer is reached through (`lb.via` or `lb.run_on`
/// set to `user@host[:port]`); those connections are named as written.
pub async fn connect_for_run(stage: &Stage, hosts: &[Host]) -> Result<SshTransport, Error> {
    all_or_nothing(connect_targets(stage, hosts, &lb_targets(stage, hosts)).await).await
}

/// Connects to every host that answers; the errors say why the others did
/// not. For commands that need only some hosts (steering a run needs one
/// that holds its lock); none answering is an error.
pub async fn connect_some(
    stage: &Stage,
    hosts: &[Host],
) -> Result<(SshTransport, Vec<TransportError>), Error> {
    let (transport, errors) = connect_targets(stage, hosts, &[]).await;
    if errors.len() < hosts.len() {
        Ok((transport, errors))
    } else {
        transport.close().await;
        Err(Error::Connect(errors))
    }
}

/// The machines LB commands go through that are not among `hosts`: other
/// machines (`user@host`), and inventory hosts left out by `--hosts`.
fn lb_targets(stage: &Stage, hosts: &[Host]) -> Vec<SshTarget> {
    let mut vias: Vec<&Via> = stage
        .drivers()
        .into_iter()
        .flat_map(|d| d.ssh_hosts())
        .collect();
    vias.sort();
    vias.dedup();
    vias.into_iter()
        .filter_map(|via| match via {
            Via::Ssh {
                spec,
                user,
                address,
                port,
            } => Some(SshTarget {
                name: spec.clone(),
                address: address.clone(),
                port: *port,
                user: Some(user.clone()),
            }),
            Via::Host { name } if !hosts.iter().any(|h| &h.name == name) => stage
                .hosts
                .iter()
                .find(|h| &h.name == name)
                .map(|h| SshTarget {
                    name: h.name.clone(),
                    address: h.address.clone(),
                    port: h.port,
                    user: h.user.clone(),
                }),
            _ => None,
        })
        .collect()
}

async fn all_or_nothing(
    (transport, errors): (SshTransport, Vec<TransportError>),
) -> Result<SshTransport, Error> {
    if errors.is_empty() {
        Ok(transport)
    } else {
        transport.close().await;
        Err(Error::Connect(errors))
    }
}

/// Connects to every host it can, and to the load balancer machines; the
/// transport holds those that answered, the errors say why the others did
/// not.
pub async fn connect_each(stage: &Stage, hosts: &[Host]) -> (SshTransport, Vec<TransportError>) {
    connect_targets(stage, hosts, &lb_targets(stage, hosts)).await
}

async fn connect_targets(
    stage: &Stage,
    hosts: &[Host],
    extra: &[SshTarget],
) -> (SshTransport, Vec<TransportError>) {
    let ssh = &stage.ssh;
    let overrides = SshOverrides {
        user: ssh.user.clone(),
        port: ssh.port,
        identity_file: ssh.identity_file.clone(),
        known_hosts: ssh.known_hosts.clone(),
        host_key_checking: ssh.host_key_checking.map(|c| match c {
            config::HostKeyChecking::Strict => HostKeyChecking::Strict,
            config::HostKeyChecking::AcceptNew => HostKeyChecking::AcceptNew,
        }),
        proxy_jump: ssh.proxy_jump.clone(),
        config: match &ssh.config {
            config::SshConfigFile::Default => SshConfigSource::Default,
            config::SshConfigFile::Path(p) => SshConfigSource::File(p.clone()),
            config::SshConfigFile::Disabled => SshConfigSource::Disabled,
        },
    };
    let options = ConnectOptions {
        connect_timeout: ssh.connect_timeout,
        keepalive_interval: ssh.keepalive_interval,
        max_concurrent_connects: ssh.max_concurrent_connects,
        ..ConnectOptions::default()
    };
    let targets: Vec<SshTarget> = hosts
        .iter()
        .map(|h| SshTarget {
            name: h.name.clone(),
            address: h.address.clone(),
            port: h.port,
            user: h.user.clone(),
        })
        .chain(extra.iter().cloned())
        .collect();
    SshTransport::connect(&targets, &overrides, &options).await
}

/// Reads what every host has under `deploy_to`. Changes nothing.
pub async fn probe(
    transport: &SshTransport,
    stage: &Stage,
    hosts: &[Host],
) -> Result<BTreeMap<String, HostFacts>, Error> {
    let results = join_all(
        hosts
            .iter()
            .map(|h| async move { (h.name.clone(), probe_host(transport, stage, &h.name).await) }),
    )
    .await;
    let mut facts = BTreeMap::new();
    let mut problems = Vec::new();
    for (host, result) in results {
        match result {
            Ok(f) => {
                facts.insert(host, f);
            }
            Err(e) => problems.push(e),
        }
    }
    if problems.is_empty() {
        Ok(facts)
    } else {
        Err(Error::Unchanged(format!(
            "cannot read the hosts' state; nothing was changed:\n  {}",
            problems.join("\n  ")
        )))
    }
}

/// Reads what one host has under `deploy_to`. The error names the host.
pub async fn probe_host<T: Transport>(
    transport: &T,
    stage: &Stage,
    host: &str,
) -> Result<HostFacts, String> {
    let layout = Layout::new(&stage.app.deploy_to);
    let request = ExecRequest {
        command: layout.probe(&stage.app.shared_files).render(),
        stdin: None,
        timeout: Some(stage.ssh.connect_timeout * 3),
    };
    match transport.exec(host, request, &Quiet).await {
        Ok(out) if out.exit.success() => HostFacts::parse(layout.deploy_to(), &out.stdout_text())
            .map_err(|e| format!("{host}: {e}")),
        Ok(out) => Err(format!(
            "{host}: reading {} failed ({}): {}",
            layout.deploy_to(),
            out.exit,
            out.stderr_tail(3)
        )),
        Err(e) => Err(e.to_string()),
    }
}
