//! Load balancer actions, performed through the stage's driver, and the
//! preflight that asks the driver about every host of the stage before a
//! plan is made (which hosts it knows, which are out of service).

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::config::{Host, Stage};
use crate::lb::{HostRef, LbCtx, Member, Preflight, Remote, Via};
use crate::transport::local::LocalTransport;
use crate::transport::{ExecObserver, ExecRequest, Output, Quiet, Transport, TransportError};

/// Runs a driver's commands over the run's transports: on this machine, or
/// on the host `via` names.
pub struct Reach<'a, T: Transport, L: Transport> {
    pub transport: &'a T,
    pub local: &'a L,
}

impl<T: Transport, L: Transport> Remote for Reach<'_, T, L> {
    fn exec<'a>(
        &'a self,
        via: &'a Via,
        request: ExecRequest,
        observer: &'a dyn ExecObserver,
    ) -> BoxFuture<'a, Result<Output, TransportError>> {
        Box::pin(async move {
            match via.connection() {
                None => self.local.exec("local", request, observer).await,
                Some(host) => self.transport.exec(host, request, observer).await,
            }
        })
    }
}

/// Every host of `hosts` as its load balancer knows it (its role's, if
/// its role has one of its own); hosts without a load balancer are left
/// out. The release is not part of a member, so no release is needed.
pub fn members(stage: &Stage, hosts: &[Host], local_dir: Option<&str>) -> Vec<Member> {
    hosts
        .iter()
        .filter_map(|h| {
            let settings = stage.for_host(h);
            let driver = settings.lb.as_ref()?;
            let vars = settings.vars(h, "");
            Some(driver.member(&HostRef {
                vars: &vars,
                env: &[],
                local_dir,
            }))
        })
        .collect()
}

/// Asks each load balancer of the stage (its own, and its roles') about
/// every host of the stage behind it: problems with the hosts of this run
/// (`hosts`: a server it does not know) refuse the run; the states say
/// which hosts of the stage are out of service already. Hosts of the stage
/// outside this run are asked only for their state; hosts whose settings
/// have no load balancer (a worker role with `driver = "none"`) are not
/// asked at all. Read-only.
pub async fn preflight<T: Transport>(
    stage: &Stage,
    hosts: &[Host],
    transport: &T,
    local_dir: Option<&str>,
) -> Preflight {
    let reach = Reach {
        transport,
        local: &LocalTransport,
    };
    let never = CancellationToken::new();
    let ctx = LbCtx {
        remote: &reach,
        observer: &Quiet,
        command_timeout: stage.ssh.command_timeout,
        cancel: &never,
    };
    let mut found = Preflight::default();
    // One set of settings at a time: the stage's own, then each role's.
    let groups = std::iter::once(None).chain(stage.roles.keys().map(|r| Some(r.as_str())));
    for group in groups {
        let Some(driver) = &stage.for_role(group).lb else {
            continue;
        };
        let mine = |h: &&Host| stage.role_of(h) == group;
        let run_hosts: Vec<Host> = hosts.iter().filter(mine).cloned().collect();
        let others: Vec<Host> = stage
            .hosts
            .iter()
            .filter(mine)
            .filter(|h| !hosts.contains(h))
            .cloned()
            .collect();
        let run = members(stage, &run_hosts, local_dir);
        let rest = members(stage, &others, local_dir);
        let (asked, elsewhere) = tokio::join!(
            async {
                if run.is_empty() {
                    Preflight::default()
                } else {
                    driver.preflight(&ctx, &run).await
                }
            },
            async {
                if rest.is_empty() {
                    Preflight::default()
                } else {
                    driver.preflight(&ctx, &rest).await
                }
            }
        );
        found.problems.extend(asked.problems);
        found.warnings.extend(asked.warnings);
        found.states.extend(asked.states);
        found.states.extend(elsewhere.states);
    }
    found
}
