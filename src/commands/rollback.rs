//! `shipit STAGE rollback`: back to the release before the current one (or
//! `--to ID`), through the same rolling pipeline as a deploy.

use tokio_util::sync::CancellationToken;

use super::{Context, check_load_balancers, fleet, run_result};
use crate::cli::RollbackArgs;
use crate::error::Error;
use crate::execute::Executor;
use crate::exit::Exit;
use crate::host::ReleaseId;
use crate::plan::{self, RollbackInput};
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
    let transport = fleet::connect_for_run(stage, hosts).await?;
    let result = async {
        let facts = fleet::probe(&transport, stage, hosts).await?;
        let plan = plan::rollback(&RollbackInput {
            stage,
            hosts,
            to,
            facts: &facts,
            by: who(),
        })?;
        // Read-only, so a dry run checks too.
        check_load_balancers(&plan, &transport).await?;
        if args.dry_run {
            print!("{}", plan::render(&plan, args.full));
            return Ok(Exit::Success);
        }
        for warning in &plan.warnings {
            eprintln!("warning: {warning}");
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
