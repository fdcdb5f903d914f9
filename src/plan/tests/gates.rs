//! Gates: what each bake measures.

use super::*;

const GATED: &str = r#"
restart = "bin/restart"
[env]
TOKEN = { value = "s3cret", secret = true }
[health]
url = "http://{address}:8080/health"
[lb]
driver = "haproxy"
socket = "/run/haproxy/admin.sock"
backend = "app"
server = "srv-{name}"
[rollout]
rolling_batch_size = [1, 2, "50%"]
bake = ["5m", "30s", "0s"]
[[gates]]
type = "haproxy"
max_error_rate = "5%"
interval = "1s"
[[gates]]
type = "prometheus"
url = "http://127.0.0.1:9090"
query = 'sum(rate(haproxy_server_http_responses_total{code="5xx",server=~"{servers_regex}"}[30s])) / {release}'
max = 0.5
[[gates]]
type = "command"
run = "slo-ok {name} $TOKEN"
run_on = "hosts"
"#;

#[test]
fn gates_measure_every_host_switched_so_far_during_each_bake() {
    let stage = stage(8, GATED);
    let f = facts(&stage, Some(2), &[1, 2]);
    let env = [(
        "TOKEN".to_string(),
        crate::shell::Word::Secret("s3cret".into()),
    )];
    let plan = deploy(&DeployInput {
        env: &env,
        ..testing::deploy_input(&stage, &f)
    })
    .unwrap();
    let measured: Vec<Vec<&str>> = plan
        .batches
        .iter()
        .map(|b| {
            b.gates
                .first()
                .map(|g| g.hosts.iter().map(|m| m.host.as_str()).collect())
                .unwrap_or_default()
        })
        .collect();
    // Batch 3 bakes 0s (the last entry repeats): neither it nor batch 4 is gated.
    assert_eq!(
        measured,
        [
            vec!["web1"],
            vec!["web1", "web2", "web3"],
            Vec::new(),
            Vec::new()
        ]
    );
    let gates = &plan.batches[1].gates;
    assert_eq!(gates.len(), 3);
    assert_eq!(gates[0].hosts[1].server, "srv-web2");
    assert_eq!(gates[0].interval, Duration::from_secs(1));
    assert_eq!(gates[0].limit(), "5xx ≤ 5% of at least 50 answers");
    match &gates[1].measure {
        Measure::Prometheus { query, .. } => assert_eq!(
            query,
            r#"sum(rate(haproxy_server_http_responses_total{code="5xx",server=~"(?:srv-web1|srv-web2|srv-web3)"}[30s])) / 20261122100003"#
        ),
        other => panic!("{other:?}"),
    }
    match &gates[2].measure {
        Measure::Command { commands, .. } => {
            let on: Vec<Option<&str>> = commands.iter().map(|c| c.host.as_deref()).collect();
            assert_eq!(on, [Some("web1"), Some("web2"), Some("web3")]);
            let cmd = commands[1].cmd.render();
            assert!(cmd.contains("'slo-ok web2 $TOKEN'"), "{cmd}");
            assert!(cmd.contains("SHIPIT_GATE_HOSTS='web1 web2 web3'"), "{cmd}");
            assert!(cmd.contains("SHIPIT_BATCH_HOSTS='web2 web3'"), "{cmd}");
            assert!(
                cmd.contains("cd /srv/shop/releases/20261122100003"),
                "{cmd}"
            );
        }
        other => panic!("{other:?}"),
    }
    // The [env] secret its command gets is masked like any other.
    assert!(plan.secrets().contains(&"s3cret".to_string()));
    let text = render(&plan, false);
    assert!(
        text.contains(
            "  rollout   ramp 1, 2, 50% (the last repeats); bake 5m, 30s, then 0s; 2 of 4 batches gated by \
             gates[0] haproxy, gates[1] prometheus, gates[2] command during their bake\n"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "  batch     gate           gates[0] haproxy: share of 5xx in the answers of web1 web2 web3 \
             (5xx ≤ 5% of at least 50 answers); every 1s, inconclusive at the end = fail\n"
        ),
        "{text}"
    );
    let json = serde_json::to_value(&plan).unwrap();
    let gate = &json["batches"][0]["gates"][0];
    assert_eq!(gate["measure"]["type"], "haproxy");
    assert_eq!(gate["measure"]["max_error_rate"], 0.05);
    assert_eq!(gate["interval"], 1000);
    assert_eq!(gate["on_inconclusive"], "fail");
    assert_eq!(gate["hosts"][0]["server"], "srv-web1");
    assert_eq!(json["batches"][3]["gates"], serde_json::json!([]));
}

#[test]
fn hosts_kept_out_are_not_measured_and_rollbacks_are_not_gated() {
    use crate::lb::ServiceState;
    let service: Service = [("web1".to_string(), ServiceState::Maintenance)].into();
    let plan = deploy_with_service(3, GATED, &service).unwrap();
    // web1 (the canary) takes no traffic: the first bake has nothing to
    // measure, so only from the second batch on is anything gated.
    let measured: Vec<Vec<&str>> = plan
        .batches
        .iter()
        .map(|b| {
            b.gates
                .first()
                .map(|g| g.hosts.iter().map(|m| m.host.as_str()).collect())
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(measured, [Vec::<&str>::new(), vec!["web2"], vec![]]);

    let stage = stage(2, GATED);
    let f = facts(&stage, Some(3), &[1, 2, 3]);
    let plan = rollback(&testing::rollback_input(&stage, &f)).unwrap();
    assert!(!plan.batches.is_empty());
    assert!(plan.batches.iter().all(|b| b.gates.is_empty()));
}
