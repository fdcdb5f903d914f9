//! What a deploy and a rollback share, once the hosts are connected: take
//! the deploy lock, read every host, put back hosts an interrupted run left
//! drained, ask the load balancer about every host of the stage (which it
//! knows, which are out of service), plan, run the plan while taking
//! requests to steer it (`execute::control`), give the lock back. The
//! command decides only what differs: how its plan is made.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::lock::{self, LockOptions};
use super::{Context, Signals, fleet, run_result};
use crate::error::Error;
use crate::execute::control::remote::Steering;
use crate::execute::{self, Control, Executor};
use crate::exit::Exit;
use crate::host::HostFacts;
use crate::host::Layout;
use crate::host::lock::LockKind;
use crate::plan::{self, Plan, Service};
use crate::report::{Event, Phase};
use crate::transport::ssh::SshTransport;

/// What the hosts and the load balancer said, for the planner.
pub struct Found {
    pub facts: BTreeMap<String, HostFacts>,
    pub service: Service,
}

/// How the run takes the lock and what it does first.
pub struct Locking<'a> {
    pub kind: LockKind,
    pub run: &'a str,
    pub message: Option<String>,
    pub options: LockOptions,
    /// Put back hosts an interrupted run left drained, before planning.
    pub repair: bool,
    /// Continuing a dead run: per host, the run whose lock is taken over
    /// there (`lock::take_over`) instead of taking the lock afresh.
    pub take_over: Option<BTreeMap<String, String>>,
}

/// Takes the lock, reads the hosts and the load balancer, plans with
/// `plan`, runs the plan (with `archive` for uploads) and gives the lock
/// back.
pub async fn locked<F>(
    ctx: &Context,
    transport: &SshTransport,
    locking: Locking<'_>,
    signals: &Signals,
    archive: Option<crate::transport::Stdin>,
    plan: F,
) -> Result<Exit, Error>
where
    F: FnOnce(&Found) -> Result<Plan, Error>,
{
    let stage = &ctx.stage;
    let info = lock::lock_info(
        stage,
        locking.run,
        locking.kind,
        locking.message,
        stage.rollout.lock_lease,
    );
    let held = match &locking.take_over {
        Some(dead) => lock::take_over(transport, stage, &ctx.hosts, &info, dead).await?,
        None => {
            lock::acquire(transport, stage, &ctx.hosts, &info, &locking.options, |m| {
                ctx.note(None, m)
            })
            .await?
        }
    };
    tracing::debug!("deploy lock taken");
    let verb = match locking.kind {
        LockKind::Rollback => "rolling back",
        _ => "deploying",
    };
    let work = async {
        let found = read(ctx, transport, locking.repair, verb).await?;
        let plan = plan(&found)?;
        for warning in &plan.warnings {
            ctx.event(&Event::Warning {
                message: warning.clone(),
            });
        }
        tracing::debug!("planned");
        let reporter = ctx.reporter();
        // Requests from `shipit STAGE pause` and the like, from anywhere.
        let control = Arc::new(Control::new(
            &plan,
            &info.by,
            &info.machine,
            info.pid,
            reporter.clone(),
        ));
        let mut executor = Executor::new(transport, reporter.as_ref())
            .command_timeout(stage.ssh.command_timeout)
            .cancel_on(signals.cancel.clone(), signals.hurry.clone())
            .control(control.clone());
        if let Some(archive) = archive {
            executor = executor.archive(archive);
        }
        let layout = Layout::new(&stage.app.deploy_to);
        let steering = Steering::new(transport, layout, held.hosts().to_vec(), control);
        let report = steering.alongside(executor.run(&plan)).await;
        let result = run_result(&plan, &report);
        let (code, message) = match &result {
            Ok(exit) => (exit.code(), None),
            Err(e) => (e.exit().code(), Some(e.to_string())),
        };
        Ok((result, steering.ended(code, message)))
    };
    let ran = held
        .keep_while(&signals.cancel, work, |why| {
            ctx.note(None, &format!("lost the deploy lock ({why}); stopping"))
        })
        .await;
    let (result, ended) = match ran {
        Ok((result, ended)) => (result, Some(ended)),
        Err(e) => (Err(e), None),
    };
    let last_words = ended.map(|ending| move |host: &str| ending.on(host).clone());
    lock::release(
        ctx,
        held,
        last_words.as_ref().map(|f| f as &dyn Fn(&str) -> _),
    )
    .await;
    result
}

/// Reads every host and asks the load balancer about every host of the
/// stage. Read-only, except that with `repair` hosts an interrupted run
/// left drained are put back first (when their release is healthy).
/// `verb` ("deploying") words the refusal.
pub async fn read(
    ctx: &Context,
    transport: &SshTransport,
    repair_first: bool,
    verb: &str,
) -> Result<Found, Error> {
    let stage = &ctx.stage;
    let facts = fleet::probe(transport, stage, &ctx.hosts).await?;
    tracing::debug!("hosts probed");
    if repair_first {
        repair(ctx, transport, &facts).await;
    }
    let service = service(ctx, transport, verb).await?;
    Ok(Found { facts, service })
}

/// The load balancer's view of every host of the stage. A host of this run
/// it does not know refuses the run, with nothing changed; warnings (hosts
/// already taken out) are shown.
pub async fn service(
    ctx: &Context,
    transport: &SshTransport,
    verb: &str,
) -> Result<Service, Error> {
    let found = execute::lb::preflight(
        &ctx.stage,
        &ctx.hosts,
        transport,
        ctx.local_dir().as_deref(),
    )
    .await;
    for warning in &found.warnings {
        ctx.event(&Event::Warning {
            message: warning.clone(),
        });
    }
    if !found.problems.is_empty() {
        return Err(Error::Unchanged(format!(
            "not {verb}; nothing was changed on any host:\n  {}",
            found.problems.join("\n  ")
        )));
    }
    Ok(found.states)
}

/// Puts back into the load balancer the hosts an interrupted run left
/// drained, when their release answers its health check; reports the rest.
pub async fn repair(ctx: &Context, transport: &SshTransport, facts: &BTreeMap<String, HostFacts>) {
    let stage = &ctx.stage;
    let pipelines = plan::repair(stage, &ctx.hosts, facts, ctx.local_dir().as_deref());
    if pipelines.is_empty() {
        return;
    }
    for p in &pipelines {
        let trace = facts[&p.host]
            .last_run
            .as_ref()
            .expect("repair plans only interrupted runs");
        ctx.note(
            Some(&p.host),
            &format!(
                "left drained by the interrupted {} of {} (run {}); checking it",
                trace.op, trace.release, trace.run
            ),
        );
    }
    let reporter = ctx.reporter();
    let fixed = Executor::new(transport, reporter.as_ref())
        .run_pipelines(Phase::Repair, &pipelines)
        .await;
    for p in &pipelines {
        if fixed.contains(&p.host) {
            ctx.note(Some(&p.host), "put back into the load balancer");
        } else {
            ctx.note(
                Some(&p.host),
                "stays out of the load balancer: its release does not answer its health check",
            );
        }
    }
}
