//! Rollout shapes and the capacity floor: ramps, bakes, hosts found out of service, zones.

use super::*;

const DRAINING: &str = "[lb]\ndrain = \"lbctl drain {name}\"\nenable = \"lbctl enable {name}\"\n";

#[test]
fn a_ramp_sizes_batches_and_bakes_follow_them() {
    let plan = deploy_plan(
        8,
        "[rollout]\nrolling_batch_size = [1, 2, \"50%\"]\nbake = [\"5m\", \"30s\"]",
        false,
    );
    let sizes: Vec<usize> = plan.batches.iter().map(|b| b.pipelines.len()).collect();
    assert_eq!(sizes, [1, 2, 4, 1]);
    let bakes: Vec<u64> = plan.batches.iter().map(|b| b.bake.as_secs()).collect();
    assert_eq!(bakes, [300, 30, 30, 30]);
    // The room defaults to the largest batch.
    assert_eq!(plan.shape.max_unavailable, 4);
    let text = render(&plan, false);
    assert!(
        text.contains("Batch 1 of 4: web1 (hosts of a batch in parallel; then watched for 5m"),
        "{text}"
    );
    assert!(
        text.contains("capacity  at most 4 hosts out of service at once\n"),
        "{text}"
    );
}

#[test]
fn hosts_found_out_stay_out_and_fill_room() {
    use crate::lb::ServiceState;
    let service: Service = [
        ("web2".to_string(), ServiceState::Maintenance),
        ("web1".to_string(), ServiceState::InService),
    ]
    .into();
    let plan = deploy_with_service(
        4,
        &format!("{DRAINING}[rollout]\nrolling_batch_size = 2"),
        &service,
    )
    .unwrap();
    // web2 gets the release but is neither drained nor enabled.
    let web2 = plan.batches[0]
        .pipelines
        .iter()
        .find(|p| p.host == "web2")
        .unwrap();
    assert_eq!(kinds(web2), ["switch"]);
    assert_eq!(
        plan.host("web2").unwrap().left_out,
        Some(ServiceState::Maintenance)
    );
    // It fills one of the two places: the rest go one by one.
    let batches: Vec<Vec<&str>> = plan.batches.iter().map(|b| hosts(&b.pipelines)).collect();
    assert_eq!(batches, [vec!["web1", "web2"], vec!["web3"], vec!["web4"]]);
    assert_eq!(plan.out_at_start.len(), 1);
    let text = render(&plan, false);
    assert!(text.contains("already out: web2 (maint)"), "{text}");
    assert!(
        text.contains("(in maint on the load balancer: gets the release, stays out)"),
        "{text}"
    );
}

#[test]
fn a_floor_that_can_never_be_kept_is_refused_before_anything_changes() {
    use crate::lb::ServiceState;
    let service: Service = [("web3".to_string(), ServiceState::Down)].into();
    let err = deploy_with_service(
        3,
        &format!("{DRAINING}[rollout]\nmax_unavailable = 1"),
        &service,
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "not starting; nothing was changed on any host: rollout.max_unavailable = 1 and 1 host is already out \
         of service (web3), so web1, web2 can never be taken out; bring a host back into service first, or raise \
         rollout.max_unavailable"
    );
    // A share that rounds down to no host at all.
    let err = deploy_with_service(
        3,
        &format!("{DRAINING}[rollout]\nmax_unavailable = \"25%\""),
        &Service::new(),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "not starting; nothing was changed on any host: rollout.max_unavailable = 25% of the 3 hosts of stage \
         production is 0 hosts, so no host could ever be taken out of service; raise it"
    );
}

#[test]
fn zones_go_one_after_another() {
    let stage_text =
        |by_zone: bool| format!("[rollout]\nrolling_batch_size = 2\nby_zone = {by_zone}\n");
    let zoned = |extra: &str| {
        let text = format!(
            "[app]\nname = \"shop\"\ndeploy_to = \"/srv/shop\"\nsource = \"dist\"\n{extra}\n\
             [stages.production]\nhosts = [{{ name = \"a1\", zone = \"a\" }}, {{ name = \"b1\", zone = \"b\" }}, \
             {{ name = \"a2\", zone = \"a\" }}, {{ name = \"b2\", zone = \"b\" }}, {{ name = \"a3\", zone = \"a\" }}]\n"
        );
        crate::config::from_str(std::path::Path::new("/p/deploy.toml"), &text)
            .unwrap()
            .stages["production"]
            .clone()
    };
    let plan = testing::deploy_plan(&zoned(&stage_text(true)), true, None).unwrap();
    let batches: Vec<Vec<&str>> = plan.batches.iter().map(|b| hosts(&b.pipelines)).collect();
    assert_eq!(batches, [vec!["a1", "a2"], vec!["a3"], vec!["b1", "b2"]]);
    let zones: Vec<&str> = plan
        .batches
        .iter()
        .map(|b| b.zone.as_deref().unwrap())
        .collect();
    assert_eq!(zones, ["a", "a", "b"]);
    assert!(render(&plan, false).contains("Batch 3 of 3: b1, b2, zone b"));
}
