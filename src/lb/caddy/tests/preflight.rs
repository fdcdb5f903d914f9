//! The preflight and the enable: what is missing is named; passive failures are waited out.

use super::*;

#[tokio::test]
async fn preflight_problems_name_what_is_missing() {
    let never = CancellationToken::new();
    let stage = stage(3, &via(""));
    let driver = stage.lb.clone().unwrap();
    let members = crate::execute::lb::members(&stage, &stage.hosts, None);

    let caddy = FakeCaddy::new(json!([{"dial": "10.0.0.11:8080"}, {"dial": "10.0.0.12:8080"}]));
    let found = driver.preflight(&ctx(&caddy, &never), &members).await;
    assert_eq!(
        found.problems,
        [
            "caddy web3:localhost:2019: @id shop has no upstream 10.0.0.13:8080 (it has 10.0.0.11:8080, 10.0.0.12:8080); check lb.server and the handler's upstreams"
        ]
    );
    assert_eq!(found.states["web3"], ServiceState::Maintenance);
    assert!(
        caddy.log().iter().all(|l| l.starts_with("GET")),
        "read-only: {:#?}",
        caddy.log()
    );

    let other = stage_with_route("nope");
    let found = other
        .lb
        .clone()
        .unwrap()
        .preflight(&ctx(&caddy, &never), &members)
        .await;
    assert_eq!(
        found.problems,
        [
            "caddy web3:localhost:2019: no object with \"@id\": \"nope\" in Caddy's running config (unknown object ID 'nope'); add it to the reverse_proxy handler whose upstreams shipit manages"
        ]
    );

    // `check` for one host says it.
    use crate::host::check::{Status, Verdict};
    assert_eq!(
        driver.check(&ctx(&caddy, &never), &members[0]).await,
        Verdict::ok("caddy web3:localhost:2019: @id shop lists 10.0.0.11:8080")
    );
    assert_eq!(
        driver.check(&ctx(&caddy, &never), &members[2]).await.status,
        Status::Fail
    );
    let drain = action(&via(""), LbOp::Drain, 1);
    drain
        .driver
        .drain(&ctx(&caddy, &never), &drain.member)
        .await
        .unwrap();
    assert_eq!(
        driver.check(&ctx(&caddy, &never), &members[1]).await,
        Verdict::ok_noted(
            "caddy web3:localhost:2019: 10.0.0.12:8080 is out of @id shop (tracked in server shipit_tracked_shop: taken out, not put back)"
        )
    );
}

fn stage_with_route(id: &str) -> crate::config::Stage {
    stage(
        3,
        &format!(
            "[lb]\ndriver = \"caddy\"\nroute_id = \"{id}\"\nserver = \"{{address}}:8080\"\nvia = \"web3\"\n"
        ),
    )
}

#[tokio::test]
async fn an_enable_waits_out_passive_failures() {
    let caddy = FakeCaddy::new(json!([{"dial": "10.0.0.12:8080"}]));
    {
        let mut state = caddy.state.lock().unwrap();
        state.config["apps"]["http"]["servers"]["www"]["routes"][0]["handle"][0]["health_checks"] =
            json!({"passive": {"fail_duration": "30s", "max_fails": 2}});
        state.fails.insert("10.0.0.11:8080".into(), 2);
    }
    let never = CancellationToken::new();
    let enable = action(&via("enable_timeout = \"500ms\""), LbOp::Enable, 0);
    let err = enable
        .driver
        .enable(
            &ctx(&caddy, &never),
            &enable.member,
            crate::lb::Proof::Checked,
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.error,
        "caddy web3:localhost:2019: after 500ms (lb.enable_timeout), 10.0.0.11:8080 has 2 failed request(s) counted by the passive health check (max_fails 2): Caddy sends it nothing until they expire"
    );
    assert_eq!(
        caddy.route(),
        ["10.0.0.12:8080", "10.0.0.11:8080"],
        "it was put back all the same"
    );
    caddy
        .state
        .lock()
        .unwrap()
        .fails
        .insert("10.0.0.11:8080".into(), 1);
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
}
