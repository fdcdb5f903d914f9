//! `shipit STAGE rollback`: back to the release before the current one (or
//! `--to ID`), through the same rolling pipeline as a deploy, under the
//! deploy lock.

use super::deploy::{release, repair};
use super::lock::{self, LockOptions};
use super::{Context, Signals, fleet, run_result};
use crate::cli::RollbackArgs;
use crate::error::Error;
use crate::execute::Executor;
use crate::exit::Exit;
use crate::host::ReleaseId;
use crate::host::lock::LockKind;
use crate::plan::{self, RollbackInput, Run};
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
    };
    let transport = fleet::connect(stage, hosts).await?;
    let result = async {
        if args.dry_run {
            let facts = fleet::probe(&transport, stage, hosts).await?;
            let plan = plan::rollback(&RollbackInput {
                stage,
                hosts,
                to,
                facts: &facts,
                run,
            })?;
            print!("{}", plan::render(&plan, args.full));
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
            })?;
            for warning in &plan.warnings {
                ctx.note(None, &format!("warning: {warning}"));
            }
            let report = Executor::new(&transport, ctx.reporter())
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
