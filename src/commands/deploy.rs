//! `shipit STAGE deploy`: build and pack once, connect to every host, take
//! the deploy lock, read what the hosts have, repair what an interrupted run
//! left behind, plan, then run the plan.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use super::lock::{self, LockOptions};
use super::run::{self, Locking};
use super::{Context, Signals, fleet};
use crate::artifact::{self, Artifact};
use crate::cli::DeployArgs;
use crate::error::Error;
use crate::exit::Exit;
use crate::host::lock::LockKind;
use crate::host::{HostFacts, ReleaseId};
use crate::plan::{self, DeployInput, Run};
use crate::report::{Event, Phase};
use crate::transport::ssh::SshTransport;
use crate::who::who;

pub async fn run(ctx: &Context, args: &DeployArgs, signals: &Signals) -> Result<Exit, Error> {
    let stage = &ctx.stage;
    let now = jiff::Timestamp::now();
    let revision = artifact::revision(stage.app.revision.as_deref(), &ctx.base_dir()).await?;
    let run = Run {
        id: lock::run_id(),
        by: who(),
        rollback_on_abort: args.rollback_on_abort,
        local_dir: ctx.local_dir(),
        resumes: None,
    };

    if args.dry_run {
        let env = ctx.env(true)?;
        let plan = plan::deploy(&DeployInput {
            stage,
            hosts: &ctx.hosts,
            release: ReleaseId::at(now),
            revision,
            facts: None,
            run,
            resume: false,
            digest: String::new(),
            env: &env,
            service: None,
        })?;
        if ctx.global.json {
            ctx.event(&Event::Plan {
                plan: Box::new(plan.clone()),
            });
        }
        ctx.print(&plan::render(&plan, args.full));
        return Ok(Exit::Success);
    }

    // Secrets are read before anything is built or contacted.
    let env = ctx.env(false)?;
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
    let digest = artifact.digest.clone();
    if let Some(warning) = artifact::skipped_warning(stage.app.source.path(), &artifact.skipped) {
        ctx.event(&Event::Warning { message: warning });
    }
    ctx.event(&Event::Packed {
        source: stage.app.source.path().display().to_string(),
        bytes: artifact.archive.len(),
        files: artifact.files,
        duration: artifact.packing,
    });

    ctx.event(&Event::PhaseStarted {
        phase: Phase::Connect,
        hosts: ctx.hosts.iter().map(|h| h.name.clone()).collect(),
    });
    let transport = fleet::connect_for_run(stage, &ctx.hosts).await?;
    // A run sends each host several commands in a row: start their login
    // shells while the lock, the probe and the upload run.
    transport.prestart_shells(crate::transport::ssh::WARM_SHELLS);
    tracing::debug!("connected to {} host(s)", ctx.hosts.len());
    let result = locked(
        ctx,
        args,
        &transport,
        Prepared {
            env,
            artifact,
            digest,
            revision,
            run,
            now,
        },
        signals,
    )
    .await;
    // Commands given up on (a timeout, a second signal) are being stopped
    // on their hosts: give that a moment before the connections close.
    transport.settle(super::SETTLE).await;
    transport.close().await;
    result
}

struct Prepared {
    env: Vec<(String, crate::shell::Word)>,
    artifact: Artifact,
    digest: String,
    revision: String,
    run: Run,
    now: jiff::Timestamp,
}

async fn locked(
    ctx: &Context,
    args: &DeployArgs,
    transport: &SshTransport,
    mut prepared: Prepared,
    signals: &Signals,
) -> Result<Exit, Error> {
    let stage = &ctx.stage;
    let hosts = &ctx.hosts;
    let mut resuming = None;
    let mut take_over = None;
    if args.resume {
        // Which run to continue, read before taking the lock: the resumed
        // run has its own id and takes over the dead run's lock, host by
        // host, only while that run still holds it (`lock::take_over`).
        let facts = fleet::probe(transport, stage, hosts).await?;
        let interrupted = interrupted_deploy(&facts)?;
        let mut dead = BTreeMap::new();
        for (host, f) in &facts {
            let Some(held) = &f.lock else { continue };
            let its_own = interrupted.locks.contains(&held.run);
            let stale = lock::is_stale(held);
            if its_own && !stale {
                return Err(Error::LockHeld {
                    stage: stage.name.clone(),
                    host: host.clone(),
                    holder: format!(
                        "{} (the run to resume, {}, is alive)",
                        held.describe(),
                        interrupted.run
                    ),
                    kind: held.info.as_ref().map(|i| i.kind),
                    age_secs: held.age_secs,
                    stale: false,
                });
            }
            if its_own || (stale && args.lock.break_stale_lock) {
                dead.insert(host.clone(), held.run.clone());
            }
        }
        prepared.run.resumes = Some(plan::Resumes {
            run: interrupted.run.clone(),
            undoing: interrupted.undoing,
        });
        take_over = Some(dead);
        resuming = Some(interrupted);
    }
    let locking = Locking {
        kind: LockKind::Deploy,
        run: &prepared.run.id.clone(),
        message: args.lock.message.clone(),
        options: LockOptions {
            wait: args.lock.lock_wait,
            break_stale: args.lock.break_stale_lock,
        },
        repair: resuming.is_none(),
        take_over,
    };
    let archive = crate::transport::Stdin::File(prepared.artifact.archive.clone());
    run::locked(ctx, transport, locking, signals, Some(archive), |found| {
        let facts = &found.facts;
        let release = match &resuming {
            Some(interrupted) if interrupted.undoing => {
                ctx.note(
                    None,
                    &format!(
                        "run {} died rolling back release {}: finishing that rollback (nothing is rolled out)",
                        interrupted.run, interrupted.release
                    ),
                );
                interrupted.release.clone()
            }
            Some(interrupted) => {
                let needs_upload = facts
                    .values()
                    .any(|f| !f.release(&interrupted.release).is_some_and(|r| r.finished));
                if needs_upload && interrupted.digest.as_deref() != Some(prepared.digest.as_str()) {
                    return Err(Error::Unchanged(format!(
                        "cannot resume: some hosts still need release {} uploaded, and {} no longer packs to what \
                         the interrupted run shipped; deploy afresh instead (without --resume)",
                        interrupted.release,
                        stage.app.source.path().display()
                    )));
                }
                ctx.note(
                    None,
                    &format!(
                        "resuming run {} of release {}",
                        interrupted.run, interrupted.release
                    ),
                );
                interrupted.release.clone()
            }
            None => {
                let existing = facts
                    .values()
                    .flat_map(|f| f.releases.iter().map(|r| r.id.clone()));
                ReleaseId::next(prepared.now, existing)
            }
        };
        Ok(plan::deploy(&DeployInput {
            stage,
            hosts,
            release,
            revision: prepared.revision.clone(),
            facts: Some(facts),
            run: prepared.run.clone(),
            resume: resuming.is_some(),
            digest: prepared.digest.clone(),
            env: &prepared.env,
            service: Some(&found.service),
        })?)
    })
    .await
}

struct Interrupted {
    run: String,
    release: ReleaseId,
    digest: Option<String>,
    /// Lock ids that belong to the run: its own, and those of the
    /// processes that resumed it and died too.
    locks: BTreeSet<String>,
    /// It died rolling back.
    undoing: bool,
}

/// The deploy whose machine died, as the hosts' journals tell it.
fn interrupted_deploy(facts: &BTreeMap<String, HostFacts>) -> Result<Interrupted, Error> {
    let traces: Vec<_> = facts
        .values()
        .filter_map(|f| f.last_run.as_ref())
        .filter(|t| t.interrupted() && t.op == "deploy")
        .collect();
    let Some(first) = traces.first() else {
        return Err(Error::Unchanged(
            "nothing to resume: no host has an interrupted deploy (`shipit STAGE status` shows the last run)".into(),
        ));
    };
    if let Some(other) = traces.iter().find(|t| t.run != first.run) {
        return Err(Error::Unchanged(format!(
            "cannot resume: hosts were left by two different runs ({} and {}); deploy afresh",
            first.run, other.run
        )));
    }
    let release = first
        .release
        .parse()
        .map_err(|e| Error::Unchanged(format!("cannot resume run {}: {e}", first.run)))?;
    let digest = traces.iter().find_map(|t| {
        let detail: serde_json::Value = serde_json::from_str(t.started_detail.as_deref()?).ok()?;
        detail["digest"].as_str().map(str::to_string)
    });
    let mut locks: BTreeSet<String> = traces.iter().flat_map(|t| t.locks.clone()).collect();
    locks.insert(first.run.clone());
    Ok(Interrupted {
        run: first.run.clone(),
        release,
        digest,
        locks,
        undoing: traces.iter().any(|t| t.undoing()),
    })
}
