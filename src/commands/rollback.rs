//! `shipit STAGE rollback`: back to the release before the current one (or
//! `--to ID`), through the same rolling pipeline as a deploy, under the
//! deploy lock.

use super::deploy::{release, repair};
use super::lock::{self, LockOptions};
use super::{Context, Signals, check_load_balancers, fleet, run_result};
use crate::cli::RollbackArgs;
use crate::error::Error;
use crate::execute::Executor;
use crate::exit::Exit;
use crate::host::ReleaseId;
use crate::host::lock::LockKind;
use crate::plan::{self, RollbackInput, Run};
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
    };
    let env = ctx.env(args.dry_run)?;
    ctx.event(&Event::PhaseStarted {
        phase: Phase::Connect,
        hosts: hosts.iter().map(|h| h.name.clone()).collect(),
    });
    let transport = fleet::connect_for_run(stage, hosts).await?;
    let result = async {
        if args.dry_run {
            let facts = fleet::probe(&transport, stage, hosts).await?;
            let plan = plan::rollback(&RollbackInput {
                stage,
                hosts,
                to,
                facts: &facts,
                run,
                env: &env,
            })?;
            // Read-only, so a dry run checks too.
            check_load_balancers(ctx, &plan, &transport).await?;
            if ctx.global.json {
                ctx.event(&Event::Plan {
                    plan: Box::new(plan.clone()),
                });
            }
            ctx.print(&plan::render(&plan, args.full));
            return Ok(Exit::Success);
        }
        let info = lock::lock_info(
            stage,
            &run.id,
            LockKind::Rollback,
            args.lock.message.clone(),
            stage.rollout.lock_lease,
        );
        let options = LockOptions {
            wait: args.lock.lock_wait,
            break_stale: args.lock.break_stale_lock,
        };
        let held = lock::acquire(&transport, stage, hosts, &info, &options, |m| {
            ctx.note(None, m)
        })
        .await?;
        let work = async {
            let facts = fleet::probe(&transport, stage, hosts).await?;
            repair(ctx, &transport, &facts).await;
            let plan = plan::rollback(&RollbackInput {
                stage,
                hosts,
                to,
                facts: &facts,
                run,
                env: &env,
            })?;
            for warning in &plan.warnings {
                ctx.event(&Event::Warning {
                    message: warning.clone(),
                });
            }
            check_load_balancers(ctx, &plan, &transport).await?;
            let reporter = ctx.reporter();
            let report = Executor::new(&transport, reporter.as_ref())
                .command_timeout(stage.ssh.command_timeout)
                .cancel_on(signals.cancel.clone(), signals.hurry.clone())
                .run(&plan)
                .await;
            run_result(&plan, &report)
        };
        let result = held
            .keep_while(&signals.cancel, work, |why| {
                ctx.note(None, &format!("lost the deploy lock ({why}); stopping"))
            })
            .await;
        release(ctx, held).await;
        result
    }
    .await;
    transport.close().await;
    result
}
