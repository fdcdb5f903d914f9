//! `shipit STAGE deploy`: build and pack once, connect to every host, read
//! what they have, plan, then run the plan.

use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::{Context, fleet, run_result};
use crate::artifact;
use crate::cli::DeployArgs;
use crate::error::Error;
use crate::execute::Executor;
use crate::exit::Exit;
use crate::host::ReleaseId;
use crate::plan::{self, DeployInput};
use crate::report::{Event, Phase};
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
        if ctx.global.json {
            ctx.event(&Event::Plan {
                plan: Box::new(plan.clone()),
            });
        }
        ctx.print(&plan::render(&plan, args.full));
        return Ok(Exit::Success);
    }

    if let Some(build) = &stage.app.build {
        ctx.event(&Event::BuildStarted {
            command: build.clone(),
        });
        let started = Instant::now();
        let built = artifact::build(build, &ctx.base_dir()).await;
        ctx.event(&Event::BuildFinished {
            ok: built.is_ok(),
            duration: started.elapsed(),
        });
        built?;
    }
    let artifact = artifact::prepare(&stage.app.source).await?;
    ctx.event(&Event::Packed {
        source: stage.app.source.path().display().to_string(),
        bytes: artifact.bytes.len() as u64,
        files: artifact.files,
        duration: artifact.packing,
    });

    ctx.event(&Event::PhaseStarted {
        phase: Phase::Connect,
        hosts: hosts.iter().map(|h| h.name.clone()).collect(),
    });
    let transport = fleet::connect(stage, hosts).await?;
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
            ctx.event(&Event::Warning {
                message: warning.clone(),
            });
        }
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
