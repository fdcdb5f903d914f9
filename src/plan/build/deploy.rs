//! The deploy planner: every host's pipeline to the new release, shaped
//! into batches, with what comes after (finish, cleanup) and how a failure
//! is undone.

use super::*;

/// Plans a deploy of `input.release` to the stage's selected hosts.
pub fn deploy(input: &DeployInput<'_>) -> Result<Plan, PlanError> {
    let stage = input.stage;
    let app = &stage.app;
    let hooks = &stage.hooks;
    let layout = Layout::new(&app.deploy_to);
    if let Some(facts) = input.facts {
        preflight(stage, input.hosts, facts)?;
    }
    let facts_of = |host: &Host| input.facts.and_then(|f| f.get(&host.name));
    let current = |host: &Host| facts_of(host).and_then(|f| f.current.release().cloned());
    let resumes = input.run.resumes.as_ref().filter(|_| input.resume);
    let undoing = resumes.is_some_and(|r| r.undoing);
    // What the host ran before the whole run: resuming, what the dead
    // run's journal recorded (hosts it switched run the new release now,
    // and an undo must take them back too); otherwise `current`.
    let trace_of = |host: &Host| {
        facts_of(host)
            .and_then(|f| f.last_run.as_ref())
            .filter(|t| resumes.is_some_and(|r| r.run == t.run))
    };
    let before = |host: &Host| -> Option<ReleaseId> {
        match trace_of(host).and_then(|t| t.before.clone()) {
            Some(recorded) => recorded.and_then(|r| r.parse().ok()),
            None => current(host),
        }
    };
    // Resuming: hosts the interrupted run finished stay as they are; one
    // that was rolling back rolls nothing out.
    let done = |host: &Host| -> bool {
        undoing
            || (input.resume
                && facts_of(host).is_some_and(|f| {
                    f.current.release() == Some(&input.release)
                        && f.last_run
                            .as_ref()
                            .is_some_and(|r| r.release == input.release.as_str() && r.host_done())
                }))
    };
    let has_release = |host: &Host| {
        facts_of(host)
            .and_then(|f| f.release(&input.release))
            .is_some_and(|r| r.finished)
    };
    let names: Vec<String> = input.hosts.iter().map(|h| h.name.clone()).collect();
    let run = RunEnv {
        env: input.env,
        hosts: &names,
        revision: &input.revision,
        local_dir: input.run.local_dir.as_deref(),
    };
    let rolling_hosts: Vec<&Host> = input.hosts.iter().filter(|h| !done(h)).collect();
    revision_needed(
        stage,
        &rolling_hosts,
        &|_| input.revision.clone(),
        "this deploy ships no revision: app.revision printed nothing, or deploy.toml's directory is not a \
         git checkout; set app.revision",
    )?;
    let shape = rollout_shape(stage, rolling_hosts.len())?;
    let (parts, pools) = roles::parts(stage, &rolling_hosts)?;
    let undo_parts = if rolling_hosts.len() == input.hosts.len() {
        parts.clone()
    } else {
        roles::parts(stage, &input.hosts.iter().collect::<Vec<_>>())?.0
    };
    let ours = |host: &Host| left_by_shipit(input.facts, host);
    let out = out_at_start(stage, input.service, &ours);
    let kept_out = |host: &Host| left_out(&out, host);
    let shaped = roles::cut(&parts, &pools, &out, &stage.hosts)?;
    let batch_of = batch_members(&shaped);
    let once = once_points(stage, input.hosts);
    // What a host goes back to on an undo has its own revision.
    let revision_of = |host: &Host, release: &ReleaseId| {
        facts_of(host)
            .and_then(|f| f.release(release))
            .map(|r| r.revision.clone())
            .unwrap_or_default()
    };
    let mut warnings = Vec::new();

    let mut prepare = Vec::new();
    let mut rolling = BTreeMap::new();
    let mut finish = Vec::new();
    let mut undo = Vec::new();
    let mut undo_finish = Vec::new();
    let mut on_failure_hosts = Vec::new();
    for host in input.hosts {
        let settings = stage.for_host(host);
        let previous = before(host);
        let steps = HostSteps::new(
            settings,
            Some(host),
            &input.release,
            previous.as_ref(),
            Operation::Deploy,
            run,
        )
        .once(once.get(&host.name).cloned().unwrap_or_default());
        if let Some(previous) = previous.as_ref().filter(|p| **p != input.release) {
            let revision = revision_of(host, previous);
            let back = HostSteps::new(
                settings,
                Some(host),
                previous,
                Some(&input.release),
                Operation::Rollback,
                run,
            )
            .revision(&revision);
            let back_steps = back.rollout(kept_out(host).is_some());
            if revision.is_empty() && uses_revision(settings) {
                warnings.push(format!(
                    "{}: release {previous} has no revision in its REVISION file, so if this deploy is rolled back, \
                     its health check cannot wait for {{revision}} there (it expects an empty text)",
                    host.name
                ));
            }
            undo.push(Pipeline {
                host: host.name.clone(),
                steps: back_steps,
            });
        }
        undo_finish.push(Pipeline {
            host: host.name.clone(),
            steps: vec![Step {
                kind: StepKind::MarkBad,
                action: Action::Remote {
                    cmd: layout.mark_bad(
                        &input.release,
                        &format!("failed deploy rolled back by {}", input.run.by),
                    ),
                },
                timeout: None,
            }],
        });
        let host_hooks = &settings.hooks;
        let failure_hooks = steps.host_hooks(StepKind::OnFailure, &host_hooks.on_failure, None);
        if !failure_hooks.is_empty() {
            on_failure_hosts.push(Pipeline {
                host: host.name.clone(),
                steps: failure_hooks,
            });
        }
        let mut after = steps.host_hooks(
            StepKind::AfterDeploy,
            &host_hooks.after_deploy,
            Some(layout.current()),
        );
        after.insert(
            0,
            Step {
                kind: StepKind::Cleanup,
                action: cleanup(stage, input, facts_of(host), previous.as_ref()),
                timeout: None,
            },
        );
        finish.push(Pipeline {
            host: host.name.clone(),
            steps: after,
        });
        if done(host) {
            continue;
        }
        let batch = batch_of.get(&host.name).cloned().unwrap_or_default();
        let steps = steps.in_batch(&batch);
        rolling.insert(
            host.name.clone(),
            Pipeline {
                host: host.name.clone(),
                steps: steps.rollout(kept_out(host).is_some()),
            },
        );
        if input.resume && has_release(host) {
            continue;
        }
        let mut prep = steps.host_hooks(StepKind::BeforeDeploy, &host_hooks.before_deploy, None);
        prep.push(Step {
            kind: StepKind::Upload,
            action: Action::Upload {
                cmd: layout.unpack(&input.release),
            },
            timeout: None,
        });
        if !app.shared_dirs.is_empty() || !app.shared_files.is_empty() {
            prep.push(Step {
                kind: StepKind::LinkShared,
                action: Action::Remote {
                    cmd: layout.link_shared(&input.release, &app.shared_dirs, &app.shared_files),
                },
                timeout: None,
            });
        }
        prep.push(Step {
            kind: StepKind::Finish,
            action: Action::Remote {
                cmd: layout.finish(&input.release, &input.revision),
            },
            timeout: None,
        });
        prep.extend(steps.host_hooks(
            StepKind::AfterUpload,
            &host_hooks.after_upload,
            Some(steps.release_dir()),
        ));
        prepare.push(Pipeline {
            host: host.name.clone(),
            steps: prep,
        });
    }

    let whole = HostSteps::new(stage, None, &input.release, None, Operation::Deploy, run);
    warnings.splice(0..0, self::warnings(stage, &rolling_hosts, &out));
    let planned: Vec<PlannedHost> = input
        .hosts
        .iter()
        .map(|h| PlannedHost {
            name: h.name.clone(),
            address: h.address.clone(),
            before: before(h),
            // A host whose rollback began and did not finish may still run
            // the release being rolled back, whatever `current` says: the
            // undo takes it through every step again.
            current: if undoing && trace_of(h).is_some_and(|t| t.undo_unsettled()) {
                Some(input.release.clone())
            } else {
                current(h)
            },
            unchanged: done(h),
            zone: h.zone.clone(),
            left_out: kept_out(h),
            role: stage.role_of(h).map(str::to_string),
        })
        .collect();
    let mut batches = assemble(shaped, rolling);
    gates::attach(
        &gates::GateInput {
            stage,
            release: &input.release,
            run,
            hosts: &planned,
        },
        &mut batches,
    );
    Ok(Plan {
        run: input.run.id.clone(),
        operation: Operation::Deploy,
        app: app.name.clone(),
        stage: stage.name.clone(),
        release: input.release.clone(),
        revision: input.revision.clone(),
        hosts: planned,
        prepare,
        batches,
        shape,
        parts,
        undo_parts,
        pools,
        out_at_start: out,
        finish,
        on_failure: policy(stage, &input.run),
        undo,
        undo_finish,
        hooks: RunHooks {
            before: whole.local_hooks(StepKind::BeforeDeploy, &hooks.before_deploy),
            after_upload: whole.local_hooks(StepKind::AfterUpload, &hooks.after_upload),
            after: whole.local_hooks(StepKind::AfterDeploy, &hooks.after_deploy),
            on_failure: whole.local_hooks(StepKind::OnFailure, &hooks.on_failure),
        },
        on_failure_hosts,
        resume: input.resume,
        resumes: resumes.map(|r| r.run.clone()),
        undoing,
        bookkeeping: Bookkeeping {
            layout,
            by: input.run.by.clone(),
            digest: input.digest.clone(),
        },
        warnings,
    })
}

/// This host's cleanup after the deploy, from what it had before.
fn cleanup(
    stage: &Stage,
    input: &DeployInput<'_>,
    facts: Option<&HostFacts>,
    previous: Option<&ReleaseId>,
) -> Action {
    let app = &stage.app;
    let layout = Layout::new(&app.deploy_to);
    let Some(facts) = facts else {
        return Action::Nothing {
            reason: format!(
                "keep the newest {} finished releases; which ones go is decided from what the host has",
                app.keep_releases
            ),
        };
    };
    if let Some(why) = releases::cleanup_refused(&facts.current) {
        return Action::Nothing { reason: why };
    }
    let mut protect = vec![&input.release];
    protect.extend(previous);
    let mut after = facts.releases.clone();
    if facts.release(&input.release).is_none() {
        after.push(crate::host::ReleaseInfo {
            id: input.release.clone(),
            finished: true,
            bad: false,
            revision: input.revision.clone(),
        });
    }
    let remove = releases::cleanup(&after, Some(&input.release), app.keep_releases, &protect);
    if remove.is_empty() {
        Action::Nothing {
            reason: format!("nothing to remove (keep_releases = {})", app.keep_releases),
        }
    } else {
        Action::Remote {
            cmd: layout.remove_releases(&remove),
        }
    }
}
