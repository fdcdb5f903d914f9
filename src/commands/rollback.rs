//! `shipit STAGE rollback`: back to the release before the current one (or
//! `--to ID`), through the same rolling pipeline, capacity rules and
//! coordinator (`run`) as a deploy, under the deploy lock. While a deploy
//! holds the lock, it asks that deploy to stop and roll back (`steer`)
//! and ends as that rollback does.

use super::lock::{self, LockOptions};
use super::run::{self, Found, Locking};
use super::{Context, Signals, fleet, steer};
use crate::cli::RollbackArgs;
use crate::error::Error;
use crate::exit::Exit;
use crate::host::ReleaseId;
use crate::host::lock::LockKind;
use crate::plan::{self, Plan, RollbackInput, Run};
use crate::report::{Event, Phase};
use crate::who::who;

pub async fn run(ctx: &Context, args: &RollbackArgs, signals: &Signals) -> Result<Exit, Error> {
    let stage = &ctx.stage;
    let hosts = &ctx.hosts;
    let to = match &args.to {
        Some(id) => Some(
            id.parse::<ReleaseId>()
                .map_err(|e| Error::Usage(format!("--to: {e}")))?,
        ),
        None => None,
    };
    let run = Run {
        id: lock::run_id(),
        by: who(),
        rollback_on_abort: false,
        local_dir: ctx.local_dir(),
        resumes: None,
    };
    let env = ctx.env(args.dry_run)?;
    ctx.event(&Event::PhaseStarted {
        phase: Phase::Connect,
        hosts: hosts.iter().map(|h| h.name.clone()).collect(),
    });
    let transport = fleet::connect_for_run(stage, hosts).await?;
    // A run sends each host several commands in a row: start their login
    // shells while the lock, the probe and the upload run.
    transport.prestart_shells(crate::transport::ssh::WARM_SHELLS);
    let plan_from = |found: &Found| -> Result<Plan, Error> {
        Ok(plan::rollback(&RollbackInput {
            stage,
            hosts,
            to: to.clone(),
            facts: &found.facts,
            run: run.clone(),
            env: &env,
            service: Some(&found.service),
        })?)
    };
    let result = if args.dry_run {
        // Read-only, so a dry run reads the hosts and the load balancer.
        async {
            let found = run::read(ctx, &transport, false, "rolling back").await?;
            let plan = plan_from(&found)?;
            if ctx.global.json {
                ctx.event(&Event::Plan {
                    plan: Box::new(plan.clone()),
                });
            }
            ctx.print(&plan::render(&plan, args.full));
            Ok(Exit::Success)
        }
        .await
    } else {
        let locking = Locking {
            kind: LockKind::Rollback,
            run: &run.id,
            message: args.lock.message.clone(),
            options: LockOptions {
                wait: args.lock.lock_wait,
                break_stale: args.lock.break_stale_lock,
            },
            repair: true,
            take_over: None,
        };
        let options = locking.options.clone();
        match run::locked(ctx, &transport, locking, signals, None, &plan_from).await {
            // A deploy is running: ask it to stop and roll back, and end as
            // that rollback does. With --to or --lock-wait the user asked
            // for a rollback of their own after it.
            Err(Error::LockHeld {
                kind: Some(LockKind::Deploy),
                stale: false,
                ..
            }) if args.to.is_none() && options.wait.is_none() => {
                let message = args.lock.message.clone();
                match steer::rollback_running(ctx, &transport, message, signals).await {
                    Ok(Some(exit)) => Ok(exit),
                    // It ended meanwhile, having deployed: roll back as
                    // usual, once it has given the lock back.
                    Ok(None) => {
                        let locking = Locking {
                            kind: LockKind::Rollback,
                            run: &run.id,
                            message: args.lock.message.clone(),
                            options: LockOptions {
                                wait: Some(std::time::Duration::from_secs(60)),
                                ..options
                            },
                            repair: true,
                            take_over: None,
                        };
                        run::locked(ctx, &transport, locking, signals, None, &plan_from).await
                    }
                    Err(e) => Err(e),
                }
            }
            other => other,
        }
    };
    // Commands given up on (a timeout, a second signal) are being stopped
    // on their hosts: give that a moment before the connections close.
    transport.settle(super::SETTLE).await;
    transport.close().await;
    result
}
