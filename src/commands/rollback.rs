//! `shipit STAGE rollback`: back to the release before the current one (or
//! `--to ID`), through the same rolling pipeline as a deploy.

use tokio_util::sync::CancellationToken;

use super::{Context, fleet, run_result};
use crate::cli::RollbackArgs;
use crate::error::Error;
use crate::execute::Executor;
use crate::exit::Exit;
use crate::host::ReleaseId;
use crate::plan::{self, RollbackInput};
use crate::report::{Event, Phase};
use crate::who::who;

pub async fn run(
    ctx: &Context,
    args: &RollbackArgs,
    cancel: CancellationToken,
) -> Result<Exit, Error> {
    let stage = &ctx.stage;
    let hosts = &stage.hosts;
    let to = match &args.to {
        Some(id) => Some(
            id.parse::<ReleaseId>()
                .map_err(|e| Error::Usage(format!("--to: {e}")))?,
        ),
        None => None,
    };
    ctx.event(&Event::PhaseStarted {
        phase: Phase::Connect,
        hosts: hosts.iter().map(|h| h.name.clone()).collect(),
    });
    let transport = fleet::connect(stage, hosts).await?;
    let result = async {
        let facts = fleet::probe(&transport, stage, hosts).await?;
        let plan = plan::rollback(&RollbackInput {
            stage,
            hosts,
            to,
            facts: &facts,
            by: who(),
        })?;
        if args.dry_run {
            if ctx.global.json {
                ctx.event(&Event::Plan {
                    plan: Box::new(plan.clone()),
                });
            }
            ctx.print(&plan::render(&plan, args.full));
            return Ok(Exit::Success);
        }
        for warning in &plan.warnings {
            ctx.event(&Event::Warning {
                message: warning.clone(),
            });
        }
        let reporter = ctx.reporter();
        let report = Executor::new(&transport, reporter.as_ref())
            .command_timeout(stage.ssh.command_timeout)
            .cancel_on(cancel)
            .run(&plan)
            .await;
        run_result(&plan, &report)
    }
    .await;
    transport.close().await;
    result
}
