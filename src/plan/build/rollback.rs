//! The rollback planner: back to the previous good release (or `--to`),
//! through the same batches and capacity rules as a deploy.

use super::*;

/// Plans a rollback of the stage's selected hosts.
pub fn rollback(input: &RollbackInput<'_>) -> Result<Plan, PlanError> {
    let stage = input.stage;
    let layout = Layout::new(&stage.app.deploy_to);
    let fleet: Vec<(&str, &HostFacts)> = input
        .hosts
        .iter()
        .filter_map(|h| input.facts.get(&h.name).map(|f| (h.name.as_str(), f)))
        .collect();
    let RollbackChoice { target, abandoned } =
        releases::rollback_target(&fleet, input.to.as_ref()).map_err(PlanError::Rollback)?;
    let not_a_link: Vec<String> = fleet
        .iter()
        .filter(|(_, f)| f.current == Current::NotALink)
        .map(|(h, _)| {
            format!(
                "{h}: {} is not a symlink; move it away first",
                layout.current()
            )
        })
        .collect();
    if !not_a_link.is_empty() {
        return Err(PlanError::Hosts(not_a_link));
    }
    let revision = fleet
        .iter()
        .find_map(|(_, f)| f.release(&target).map(|r| r.revision.clone()))
        .unwrap_or_default();

    let before = |host: &Host| {
        input
            .facts
            .get(&host.name)
            .and_then(|f| f.current.release().cloned())
    };
    let names: Vec<String> = input.hosts.iter().map(|h| h.name.clone()).collect();
    let run = RunEnv {
        env: input.env,
        hosts: &names,
        revision: &revision,
        local_dir: input.run.local_dir.as_deref(),
    };
    let changing: Vec<&Host> = input
        .hosts
        .iter()
        .filter(|h| before(h).as_ref() != Some(&target))
        .collect();
    // Each host's own REVISION of the target: what `{revision}` waits for.
    let revision_of = |host: &Host| {
        input
            .facts
            .get(&host.name)
            .and_then(|f| f.release(&target))
            .map(|r| r.revision.clone())
            .unwrap_or_default()
    };
    revision_needed(
        stage,
        &changing,
        &revision_of,
        &format!("release {target} has no revision in its REVISION file there"),
    )?;
    let shape = rollout_shape(stage, changing.len())?;
    let (parts, pools) = roles::parts(stage, &changing)?;
    let ours = |host: &Host| left_by_shipit(Some(input.facts), host);
    let out = out_at_start(stage, input.service, &ours);
    let shaped = roles::cut(&parts, &pools, &out, &stage.hosts)?;
    let batch_of = batch_members(&shaped);
    let once = once_points(stage, input.hosts);

    let mut rolling = BTreeMap::new();
    let mut finish = Vec::new();
    let mut planned = Vec::new();
    let mut on_failure_hosts = Vec::new();
    let note = format!("rolled back from by {}", input.run.by);
    for host in input.hosts {
        let settings = stage.for_host(host);
        let hooks = &settings.hooks;
        let previous = before(host);
        let unchanged = previous.as_ref() == Some(&target);
        let revision = revision_of(host);
        let points = once.get(&host.name).cloned().unwrap_or_default();
        let steps = HostSteps::new(
            settings,
            Some(host),
            &target,
            previous.as_ref(),
            Operation::Rollback,
            run,
        )
        .revision(&revision)
        .once(points);
        let kept_out = left_out(&out, host);
        if !unchanged {
            let batch = batch_of.get(&host.name).cloned().unwrap_or_default();
            rolling.insert(
                host.name.clone(),
                Pipeline {
                    host: host.name.clone(),
                    steps: steps.clone().in_batch(&batch).rollout(kept_out.is_some()),
                },
            );
        }
        let host_facts = input.facts.get(&host.name);
        let mut after: Vec<Step> = abandoned
            .iter()
            .filter(|id| host_facts.is_some_and(|f| f.release(id).is_some()))
            .map(|id| Step {
                kind: StepKind::MarkBad,
                action: Action::Remote {
                    cmd: layout.mark_bad(id, &note),
                },
                timeout: None,
            })
            .collect();
        after.extend(steps.host_hooks(
            StepKind::AfterRollback,
            &hooks.after_rollback,
            Some(layout.current()),
        ));
        if !after.is_empty() {
            finish.push(Pipeline {
                host: host.name.clone(),
                steps: after,
            });
        }
        let failure_hooks = steps.host_hooks(StepKind::OnFailure, &hooks.on_failure, None);
        if !failure_hooks.is_empty() {
            on_failure_hosts.push(Pipeline {
                host: host.name.clone(),
                steps: failure_hooks,
            });
        }
        planned.push(PlannedHost {
            name: host.name.clone(),
            address: host.address.clone(),
            current: previous.clone(),
            before: previous,
            unchanged,
            zone: host.zone.clone(),
            left_out: kept_out,
            role: stage.role_of(host).map(str::to_string),
        });
    }

    let hooks = &stage.hooks;
    let whole = HostSteps::new(stage, None, &target, None, Operation::Rollback, run);
    let warnings = warnings(stage, &changing, &out);
    Ok(Plan {
        run: input.run.id.clone(),
        operation: Operation::Rollback,
        app: stage.app.name.clone(),
        stage: stage.name.clone(),
        release: target.clone(),
        revision: revision.clone(),
        hosts: planned,
        prepare: Vec::new(),
        batches: assemble(shaped, rolling),
        shape,
        undo_parts: parts.clone(),
        parts,
        pools,
        out_at_start: out,
        finish,
        // A failing rollback stops where it is: undoing it would return
        // hosts to the release being escaped.
        on_failure: FailurePolicy {
            action: OnFailure::Pause,
            ..policy(stage, &input.run)
        },
        undo: Vec::new(),
        undo_finish: Vec::new(),
        hooks: RunHooks {
            before: Vec::new(),
            after_upload: Vec::new(),
            after: whole.local_hooks(StepKind::AfterRollback, &hooks.after_rollback),
            on_failure: whole.local_hooks(StepKind::OnFailure, &hooks.on_failure),
        },
        on_failure_hosts,
        resume: false,
        resumes: None,
        undoing: false,
        bookkeeping: Bookkeeping {
            layout,
            by: input.run.by.clone(),
            digest: String::new(),
        },
        warnings,
    })
}
