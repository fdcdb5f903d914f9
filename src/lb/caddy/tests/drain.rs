//! Drains against an emulated Caddy admin API: waiting for requests, duplicated and changed upstreams, concurrent edits, lost answers, timeouts.

use super::*;

#[tokio::test]
async fn a_drain_removes_the_upstream_and_waits_for_its_requests() {
    let caddy = FakeCaddy::three();
    caddy
        .state
        .lock()
        .unwrap()
        .in_flight
        .insert("10.0.0.12:8080".into(), VecDeque::from([3, 1, 0, 0]));
    let never = CancellationToken::new();
    let drain = action(&via(""), LbOp::Drain, 1);
    let done = drain
        .driver
        .drain(&ctx(&caddy, &never), &drain.member)
        .await;
    assert_eq!(done, Ok(Done::ok()));
    assert_eq!(caddy.route(), ["10.0.0.11:8080", "10.0.0.13:8080"]);
    assert_eq!(caddy.tracked(), Some(vec!["10.0.0.12:8080".to_string()]));
    assert_eq!(
        caddy.count("GET /reverse_proxy/upstreams"),
        4,
        "{:#?}",
        caddy.log()
    );
    assert_eq!(
        caddy.log()[..4],
        [
            "GET /id/shop 200",
            "GET /config/apps/http/servers/shipit_tracked_shop 200",
            "POST /config/apps/http/servers/shipit_tracked_shop 200",
            "DELETE /id/shop/upstreams/1 200",
        ]
    );

    // Preflight now: out of the handler, tracked = out of service.
    let stage = stage(3, &via(""));
    let members = crate::execute::lb::members(&stage, &stage.hosts, None);
    let found = drain.driver.preflight(&ctx(&caddy, &never), &members).await;
    assert!(found.problems.is_empty(), "{:?}", found.problems);
    assert_eq!(found.states["web1"], ServiceState::InService);
    assert_eq!(found.states["web2"], ServiceState::Maintenance);

    // The enable puts it back as it was (max_requests kept): one change.
    let enable = action(&via(""), LbOp::Enable, 1);
    let done = enable
        .driver
        .enable(
            &ctx(&caddy, &never),
            &enable.member,
            crate::lb::Proof::Checked,
        )
        .await;
    assert_eq!(done, Ok(Done::ok()));
    assert_eq!(
        caddy.route(),
        ["10.0.0.11:8080", "10.0.0.13:8080", "10.0.0.12:8080"]
    );
    assert_eq!(
        caddy.at("/apps/http/servers/www/routes/0/handle/0/upstreams/2"),
        json!({"dial": "10.0.0.12:8080", "max_requests": 100})
    );
    assert_eq!(caddy.tracked(), Some(vec!["10.0.0.12:8080".to_string()]));
    assert_eq!(caddy.changes(), 3);
    // Again: nothing to do but check.
    assert_eq!(
        enable
            .driver
            .enable(
                &ctx(&caddy, &never),
                &enable.member,
                crate::lb::Proof::Checked
            )
            .await,
        Ok(Done::ok())
    );
    assert_eq!(caddy.changes(), 3);
    // The next drain of the same host is one change: it is tracked.
    caddy
        .state
        .lock()
        .unwrap()
        .in_flight
        .insert("10.0.0.12:8080".into(), VecDeque::from([0]));
    let done = drain
        .driver
        .drain(&ctx(&caddy, &never), &drain.member)
        .await;
    assert_eq!(done, Ok(Done::ok()));
    assert_eq!(caddy.changes(), 4);
    assert_eq!(caddy.route(), ["10.0.0.11:8080", "10.0.0.13:8080"]);
}

#[tokio::test]
async fn every_copy_of_a_listed_twice_upstream_is_taken_out() {
    let caddy = FakeCaddy::new(json!([
        {"dial": "10.0.0.11:8080"},
        {"dial": "10.0.0.12:8080"},
        {"dial": "10.0.0.11:8080"},
    ]));
    let never = CancellationToken::new();
    let drain = action(&via(""), LbOp::Drain, 0);
    let done = drain
        .driver
        .drain(&ctx(&caddy, &never), &drain.member)
        .await;
    assert_eq!(done, Ok(Done::ok()));
    assert_eq!(caddy.route(), ["10.0.0.12:8080"]);
}

#[tokio::test]
async fn a_changed_upstream_is_tracked_as_it_is_now() {
    let caddy = FakeCaddy::three();
    let never = CancellationToken::new();
    let (drain, enable) = (
        action(&via(""), LbOp::Drain, 1),
        action(&via(""), LbOp::Enable, 1),
    );
    let ctx = ctx(&caddy, &never);
    drain.driver.drain(&ctx, &drain.member).await.unwrap();
    enable
        .driver
        .enable(&ctx, &enable.member, crate::lb::Proof::Checked)
        .await
        .unwrap();
    // Someone raises max_requests in the handler; the next drain keeps it.
    caddy.state.lock().unwrap().config["apps"]["http"]["servers"]["www"]["routes"][0]["handle"]
        [0]["upstreams"][2] = json!({"dial": "10.0.0.12:8080", "max_requests": 500});
    drain.driver.drain(&ctx, &drain.member).await.unwrap();
    assert!(
        caddy.log().contains(
            &"PATCH /config/apps/http/servers/shipit_tracked_shop/routes/0/handle/0/upstreams/0 200"
                .to_string()
        ),
        "{:#?}",
        caddy.log()
    );
    enable
        .driver
        .enable(&ctx, &enable.member, crate::lb::Proof::Checked)
        .await
        .unwrap();
    assert_eq!(
        caddy.at("/apps/http/servers/www/routes/0/handle/0/upstreams/2"),
        json!({"dial": "10.0.0.12:8080", "max_requests": 500})
    );
}

#[tokio::test]
async fn two_drains_at_once_keep_both_edits() {
    let caddy = FakeCaddy::three();
    let never = CancellationToken::new();
    let (a, b) = (
        action(&via(""), LbOp::Drain, 0),
        action(&via(""), LbOp::Drain, 2),
    );
    let ctx = ctx(&caddy, &never);
    let (ra, rb) = tokio::join!(
        a.driver.drain(&ctx, &a.member),
        b.driver.drain(&ctx, &b.member)
    );
    assert_eq!((ra, rb), (Ok(Done::ok()), Ok(Done::ok())));
    assert_eq!(caddy.route(), ["10.0.0.12:8080"]);
    let mut tracked = caddy.tracked().unwrap();
    tracked.sort();
    assert_eq!(tracked, ["10.0.0.11:8080", "10.0.0.13:8080"]);
    assert!(
        caddy.count(" 412") > 0,
        "the drains should have met: {:#?}",
        caddy.log()
    );

    let (a, b) = (
        action(&via(""), LbOp::Enable, 0),
        action(&via(""), LbOp::Enable, 2),
    );
    let (ra, rb) = tokio::join!(
        a.driver.enable(&ctx, &a.member, crate::lb::Proof::Checked),
        b.driver.enable(&ctx, &b.member, crate::lb::Proof::Checked)
    );
    assert_eq!((ra, rb), (Ok(Done::ok()), Ok(Done::ok())));
    let mut route = caddy.route();
    route.sort();
    assert_eq!(
        route,
        ["10.0.0.11:8080", "10.0.0.12:8080", "10.0.0.13:8080"]
    );
}

#[tokio::test]
async fn another_writer_between_read_and_delete_moves_the_right_upstream() {
    let caddy = FakeCaddy::three();
    // An operator adds an upstream in front: index 1 is no longer web2.
    caddy.state.lock().unwrap().interloper = Some(Box::new(|config: &mut Value| {
        config["apps"]["http"]["servers"]["www"]["routes"][0]["handle"][0]["upstreams"]
            .as_array_mut()
            .unwrap()
            .insert(0, json!({"dial": "10.0.0.99:8080"}));
    }));
    let never = CancellationToken::new();
    let drain = action(&via(""), LbOp::Drain, 1);
    assert_eq!(
        drain
            .driver
            .drain(&ctx(&caddy, &never), &drain.member)
            .await,
        Ok(Done::ok())
    );
    assert_eq!(
        caddy.route(),
        ["10.0.0.99:8080", "10.0.0.11:8080", "10.0.0.13:8080"]
    );
    assert_eq!(caddy.tracked(), Some(vec!["10.0.0.12:8080".to_string()]));
    assert!(
        caddy
            .log()
            .contains(&"DELETE /id/shop/upstreams/2 200".to_string()),
        "{:#?}",
        caddy.log()
    );
}

#[tokio::test]
async fn a_change_whose_answer_was_lost_is_not_made_twice() {
    let caddy = FakeCaddy::three();
    let never = CancellationToken::new();
    let drain = action(&via(""), LbOp::Drain, 0);
    caddy.state.lock().unwrap().lose_next_answer = true;
    assert_eq!(
        drain
            .driver
            .drain(&ctx(&caddy, &never), &drain.member)
            .await,
        Ok(Done::ok())
    );
    assert_eq!(caddy.tracked(), Some(vec!["10.0.0.11:8080".to_string()]));
    assert_eq!(caddy.route(), ["10.0.0.12:8080", "10.0.0.13:8080"]);
    // Tracking was set up, its answer lost, sent again: 412, then re-read.
    assert!(
        caddy
            .log()
            .contains(&"POST /config/apps/http/servers/shipit_tracked_shop 412".to_string()),
        "{:#?}",
        caddy.log()
    );
}

#[tokio::test]
async fn a_drain_that_does_not_finish_warns_or_fails() {
    let stuck = || {
        let caddy = FakeCaddy::three();
        caddy
            .state
            .lock()
            .unwrap()
            .in_flight
            .insert("10.0.0.11:8080".into(), VecDeque::from([1]));
        caddy
    };
    let never = CancellationToken::new();
    let caddy = stuck();
    let drain = action(&via("drain_timeout = \"500ms\""), LbOp::Drain, 0);
    let done = drain
        .driver
        .drain(&ctx(&caddy, &never), &drain.member)
        .await
        .unwrap();
    assert_eq!(done.result, "ok, requests left");
    assert_eq!(
        done.warnings,
        [
            "caddy web3:localhost:2019: 10.0.0.11:8080 still has 1 request(s) in flight after 500ms; restarting anyway (lb.drain_timeout_action = \"warn\")"
        ]
    );

    let caddy = stuck();
    let drain = action(
        &via("drain_timeout = \"500ms\"\ndrain_timeout_action = \"fail\""),
        LbOp::Drain,
        0,
    );
    let err = drain
        .driver
        .drain(&ctx(&caddy, &never), &drain.member)
        .await
        .unwrap_err();
    assert_eq!(
        err.error,
        "caddy web3:localhost:2019: 10.0.0.11:8080 still has 1 request(s) in flight after 500ms (lb.drain_timeout_action = \"fail\")"
    );
    assert!(!err.interrupted);

    let caddy = stuck();
    let cancel = CancellationToken::new();
    cancel.cancel();
    let drain = action(&via(""), LbOp::Drain, 0);
    let err = drain
        .driver
        .drain(&ctx(&caddy, &cancel), &drain.member)
        .await
        .unwrap_err();
    assert!(err.interrupted);
    assert_eq!(
        err.error,
        "caddy web3:localhost:2019: interrupted while 10.0.0.11:8080 still had 1 request(s) in flight"
    );
}
