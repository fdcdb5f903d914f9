//! `shipit STAGE deploy`: build and pack once, connect to every host, read
//! what they have, plan, then run the plan.

use tokio_util::sync::CancellationToken;

use super::{Context, check_load_balancers, fleet, run_result};
use crate::artifact;
use crate::cli::DeployArgs;
use crate::error::Error;
use crate::execute::Executor;
use crate::exit::Exit;
use crate::host::ReleaseId;
use crate::plan::{self, DeployInput};
use crate::who::who;

pub async fn run(
    ctx: &Context,
    args: &DeployArgs,
    cancel: CancellationToken,
) -> Result<Exit, Error> {
    let stage = &ctx.stage;
    let hosts = &stage.hosts;
    let now = jiff::Timestamp::now();
    let revision = artifact::revision(stage.app.revision.as_deref(), &ctx.base_dir()).await?;

    if args.dry_run {
        let plan = plan::deploy(&DeployInput {
            stage,
            hosts,
            release: ReleaseId::at(now),
            revision,
            facts: None,
            by: who(),
        })?;
        print!("{}", plan::render(&plan, args.full));
        return Ok(Exit::Success);
    }

    if let Some(build) = &stage.app.build {
        eprintln!("building: {build}");
        artifact::build(build, &ctx.base_dir()).await?;
    }
    let artifact = artifact::prepare(&stage.app.source).await?;
    if !ctx.global.quiet {
        eprintln!(
            "packed {}: {} ({} files) in {:.1}s",
            stage.app.source.path().display(),
            human_bytes(artifact.bytes.len() as u64),
            artifact.files,
            artifact.packing.as_secs_f64()
        );
    }

    let transport = fleet::connect_for_run(stage, hosts).await?;
    let result = async {
        let facts = fleet::probe(&transport, stage, hosts).await?;
        let existing = facts
            .values()
            .flat_map(|f| f.releases.iter().map(|r| r.id.clone()));
        let plan = plan::deploy(&DeployInput {
            stage,
            hosts,
            release: ReleaseId::next(now, existing),
            revision,
            facts: Some(&facts),
            by: who(),
        })?;
        for warning in &plan.warnings {
            eprintln!("warning: {warning}");
        }
        check_load_balancers(&plan, &transport).await?;
        let reporter = ctx.reporter();
        let report = Executor::new(&transport, reporter.as_ref())
            .archive(artifact.bytes.clone())
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

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
