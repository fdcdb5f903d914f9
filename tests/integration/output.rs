//! What shipit prints, from real runs on a fleet: the plain lines a
//! non-terminal gets (as transcripts), GitHub Actions groups and
//! annotations, and the `--json` event stream with every line parsed.
//! (Progress bars need a terminal; they are tested in
//! src/report/progress/tests.rs against an in-memory one.)

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::support::fleet::{Fleet, FleetOptions, Haproxy};
use crate::support::shipit::{DEPLOY_TO, Project, Run, host_state, standard_config};

fn fleet(hosts: usize) -> Fleet {
    Fleet::start(FleetOptions {
        hosts,
        haproxy: Haproxy::None,
        bastion: false,
    })
}

fn current(fleet: &Fleet, host: &str) -> String {
    host_state(fleet, host, DEPLOY_TO)
        .current
        .unwrap_or_else(|| panic!("{host} has no current release"))
}

/// Replaces every match of `pattern` in `text` by `with`. In `pattern`,
/// `#` stands for one or more ASCII digits; everything else is literal.
fn replace_pattern(text: &str, pattern: &str, with: &str) -> String {
    fn match_len(text: &[u8], pattern: &[u8]) -> Option<usize> {
        let (mut t, mut p) = (0, 0);
        while p < pattern.len() {
            if pattern[p] == b'#' {
                let n = text[t..].iter().take_while(|c| c.is_ascii_digit()).count();
                if n == 0 {
                    return None;
                }
                t += n;
            } else if text.get(t) == Some(&pattern[p]) {
                t += 1;
            } else {
                return None;
            }
            p += 1;
        }
        Some(t)
    }
    let bytes = text.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < bytes.len() {
        match match_len(&bytes[i..], pattern.as_bytes()) {
            Some(n) => {
                out.push_str(with);
                i += n;
            }
            None => {
                let c = text[i..].chars().next().expect("in bounds");
                out.push(c);
                i += c.len_utf8();
            }
        }
    }
    out
}

/// A plain transcript with what differs between runs replaced: the
/// `HH:MM:SS ` of every timestamped line by `T `, durations by `<t>`,
/// health tries by `<n>`, the archive size, and the given releases by names.
/// Panics if a line that is not part of the table lacks its timestamp.
fn normalize(stderr: &str, releases: &[(&str, &str)]) -> String {
    let mut in_table = false;
    let mut lines = Vec::new();
    for line in stderr.lines() {
        let b = line.as_bytes();
        let timed = b.len() > 9
            && b[..8].iter().enumerate().all(|(i, c)| {
                if i == 2 || i == 5 {
                    *c == b':'
                } else {
                    c.is_ascii_digit()
                }
            })
            && b[8] == b' ';
        if line.starts_with("HOST ") {
            in_table = true;
        }
        if timed {
            lines.push(format!("T {}", &line[9..]));
        } else {
            assert!(
                in_table || line.is_empty() || line.starts_with("    "),
                "line without a timestamp: {line:?}\n{stderr}"
            );
            lines.push(line.to_string());
        }
    }
    let mut text = lines.join("\n");
    for (release, name) in releases {
        text = text.replace(release, name);
    }
    for (pattern, with) in [
        ("(#.#s)", "(<t>)"),
        (" #.#s", " <t>"),
        ("(# try)", "(<n> tries)"),
        ("(# tries)", "(<n> tries)"),
    ] {
        text = replace_pattern(&text, pattern, with);
    }
    if let Some(start) = text.find("packed ./dist: ")
        && let Some(len) = text[start..].find(" (")
    {
        text.replace_range(start + "packed ./dist: ".len()..start + len, "<size>");
    }
    text
}

#[test]
fn normalizing_keeps_the_shape() {
    assert_eq!(
        normalize(
            "10:15:02 web1     health       ok (3 tries)  (12.5s)\n\nHOST  TIME\nweb1  0.4s",
            &[]
        ),
        "T web1     health       ok (<n> tries)  (<t>)\n\nHOST  TIME\nweb1  <t>"
    );
}

#[test]
fn plain_transcript_of_a_deploy() {
    let fleet = fleet(1);
    let project = Project::new(&standard_config(&fleet, ""));
    let run = project.shipit(&["test", "deploy"]);
    run.success();
    assert_eq!(run.stdout, "", "human output goes to stderr");
    let r1 = current(&fleet, "web1");
    assert_eq!(
        normalize(&run.stderr, &[(&r1, "<r1>")]),
        "T packed ./dist: <size> (4 files)  (<t>)\n\
         T == connect: web1\n\
         T warning: no load balancer configured ([lb] driver = \"none\" or no [lb]): requests sent to a host while it restarts will fail\n\
         T deploy demo <r1> to test: 1 host, 1 batch\n\
         T == prepare: web1\n\
         T web1     upload       ok  (<t>)\n\
         T web1     link-shared  ok  (<t>)\n\
         T web1     finish       ok  (<t>)\n\
         T == batch 1/1: web1\n\
         T web1     switch       ok  (<t>)\n\
         T web1     restart      ok  (<t>)\n\
         T web1     health       ok (<n> tries)  (<t>)\n\
         T == finish: web1\n\
         T web1     cleanup      skipped  (<t>)\n\
         \n\
         HOST  RELEASE             RESULT  TIME\n\
         web1  - → <r1>  ok      <t>"
    );

    // -v: every command and what it printed; -q: only the table.
    project.set_version("v2");
    let run = project.shipit(&["test", "deploy", "-v"]);
    run.success();
    let r2 = current(&fleet, "web1");
    let text = normalize(&run.stderr, &[(&r1, "<r1>"), (&r2, "<r2>")]);
    assert!(
        text.contains("T web1     restart      $ cd /srv/demo/releases/<r2> && SHIPIT_"),
        "{text}"
    );
    assert!(
        text.contains("T web1     restart      | restart: app started, pid "),
        "{text}"
    );
    assert!(
        text.contains("T web1     health       $ GET http://"),
        "{text}"
    );

    project.set_version("v3");
    let run = project.shipit(&["test", "deploy", "-q"]);
    run.success();
    let r3 = current(&fleet, "web1");
    assert_eq!(
        normalize(&run.stderr, &[(&r2, "<r2>"), (&r3, "<r3>")]),
        "\n\
         HOST  RELEASE                          RESULT  TIME\n\
         web1  <r2> → <r3>  ok      <t>"
    );
}

#[test]
fn plain_transcript_of_a_failed_deploy() {
    let fleet = fleet(1);
    // on_failure = "pause": the failed host stays where it failed, so the
    // output shows the failure itself (failures.rs covers the rollback).
    let project = Project::new(&standard_config(
        &fleet,
        "[stages.test.health]\ntimeout = \"1s\"\n[stages.test.rollout]\non_failure = \"pause\"\n",
    ));
    project.shipit(&["test", "deploy", "-q"]).success();
    let r1 = current(&fleet, "web1");
    fleet.exec_ok("web1", &format!("touch {DEPLOY_TO}/shared/health-fail"));
    project.set_version("v2");
    let run = project.shipit(&["test", "deploy", "-q"]);
    run.code(5);
    let r2 = current(&fleet, "web1");
    let text = normalize(&run.stderr, &[(&r1, "<r1>"), (&r2, "<r2>")]);
    // -q still shows the failure, the table, what went wrong per host and
    // the verdict, in that order.
    let expected_start = "T web1     health       FAILED  (<t>)  not healthy after 1s";
    assert!(text.starts_with(expected_start), "{text}");
    let table = text.find("\nHOST  RELEASE").expect("a table");
    assert_eq!(
        &text[table..text[table..].find("\n\n").map_or(text.len(), |i| table + i)],
        "\nHOST  RELEASE                          RESULT            TIME\n\
         web1  <r1> → <r2>  FAILED at health  <t>"
    );
    assert!(
        text.contains("\n\nweb1: health failed:\n  not healthy after 1s"),
        "{text}"
    );
    assert!(
        text.ends_with(
            "error: deploy failed on web1 (health); 1 of 1 host now runs <r2>. Continue with `shipit test deploy --resume` once fixed, or roll back with `shipit test rollback`"
        ),
        "{text}"
    );
}

#[test]
fn github_actions_gets_a_group_per_phase_and_error_annotations() {
    let fleet = fleet(2);
    // on_failure = "pause": the failed host stays where it failed, so the
    // output shows the failure itself (failures.rs covers the rollback).
    let project = Project::new(&standard_config(
        &fleet,
        "[stages.test.health]\ntimeout = \"1s\"\n[stages.test.rollout]\non_failure = \"pause\"\n",
    ));
    project.shipit(&["test", "deploy", "-q"]).success();
    fleet.exec_ok("web2", &format!("touch {DEPLOY_TO}/shared/health-fail"));
    project.set_version("v2");
    let run = Run::from_command(
        project
            .command(&["test", "deploy"])
            .env("GITHUB_ACTIONS", "true")
            .env("CI", "true"),
    );
    run.code(5);
    let lines: Vec<&str> = run.stderr.lines().collect();
    // Groups never nest and are all closed; the table comes after the last.
    let mut open: Option<&str> = None;
    let mut titles = Vec::new();
    for line in &lines {
        if let Some(title) = line.strip_prefix("::group::") {
            assert!(open.is_none(), "group {title:?} inside {open:?}:\n{run}");
            open = Some(title);
            titles.push(title);
        } else if *line == "::endgroup::" {
            assert!(open.take().is_some(), "endgroup without a group:\n{run}");
        } else if line.starts_with("HOST ") {
            assert!(open.is_none(), "the table is inside a group:\n{run}");
        }
    }
    assert!(open.is_none(), "group {open:?} never closed:\n{run}");
    assert_eq!(
        titles,
        ["prepare: web1, web2", "batch 1/2: web1", "batch 2/2: web2"],
        "{run}"
    );
    assert!(
        lines.iter().any(|l| l.ends_with(" == connect: web1, web2")),
        "{run}"
    );
    assert!(
        !lines.iter().any(|l| l.ends_with(" == batch 1/2: web1")),
        "{run}"
    );
    assert!(
        lines.contains(&"::warning::no load balancer configured ([lb] driver = \"none\" or no [lb]): requests sent to a host while it restarts will fail"),
        "{run}"
    );
    let error = lines
        .iter()
        .find(|l| l.starts_with("::error title=web2 failed at health::"))
        .unwrap_or_else(|| panic!("no annotation for web2:\n{run}"));
    assert!(error.contains("not healthy after 1s"), "{error}");
    assert!(!error.contains('\n'));
    assert!(
        lines
            .last()
            .unwrap()
            .starts_with("::error title=shipit::deploy failed on web2 (health)"),
        "{run}"
    );
}

fn kind(e: &Value) -> &str {
    e["event"].as_str().expect("every event has a type")
}

/// Checks what holds for every JSON stream and returns it: each line an
/// object with `v` 1 and a timestamp; `result` last and only there; every
/// step started finishes, later, once; a host's phase ends after its steps.
#[track_caller]
fn check_stream(run: &Run) -> Vec<Value> {
    let events = run.events();
    assert!(!events.is_empty(), "no events:\n{run}");
    for e in &events {
        assert_eq!(e["v"], 1, "{e}");
        let ts = e["ts"].as_str().unwrap_or_else(|| panic!("no ts: {e}"));
        let b = ts.as_bytes();
        assert!(
            ts.len() == "2026-11-22T10:15:02.123Z".len()
                && b[4] == b'-'
                && b[10] == b'T'
                && b[19] == b'.'
                && ts.ends_with('Z'),
            "not RFC 3339 UTC with milliseconds: {ts}"
        );
    }
    let results: Vec<usize> = (0..events.len())
        .filter(|&i| kind(&events[i]) == "result")
        .collect();
    assert_eq!(
        results,
        [events.len() - 1],
        "result is the last line, once:\n{run}"
    );
    let result = &events[events.len() - 1];
    assert_eq!(result["exit_code"], run.code, "{result}");
    assert_eq!(result["ok"], run.code == 0, "{result}");

    let mut running: BTreeMap<String, String> = BTreeMap::new();
    for e in &events {
        let host = e["host"].as_str().unwrap_or_default().to_string();
        match kind(e) {
            "step-started" => {
                let step = e["step"].as_str().unwrap().to_string();
                assert!(
                    running.insert(host.clone(), step).is_none(),
                    "{host} started a step while another ran:\n{run}"
                );
            }
            "upload-progress" | "output" => {
                assert!(running.contains_key(&host), "{e} outside a step")
            }
            "step-finished" => {
                assert_eq!(
                    running.remove(&host).as_deref(),
                    e["step"].as_str(),
                    "{e} finishes a step that did not start"
                );
                assert!(e["duration"].is_u64(), "{e}");
                assert_eq!(e["error"].is_string(), e["ok"] == false, "{e}");
            }
            "host-finished" => {
                assert!(!running.contains_key(&host), "{e} while a step runs")
            }
            _ => {}
        }
    }
    assert!(running.is_empty(), "steps never finished: {running:?}");
    events
}

#[test]
fn json_stream_of_a_rolling_deploy() {
    let fleet = fleet(3);
    let project = Project::new(&standard_config(
        &fleet,
        "[stages.test.rollout]\nrolling_batch_size = 2\n[stages.test.app]\nbuild = \"echo building the app\"\n",
    ));
    let run = project.shipit(&["test", "deploy", "--json"]);
    run.success();
    let events = check_stream(&run);
    let release = current(&fleet, "web1");
    let kinds: Vec<&str> = events.iter().map(kind).collect();

    // Before the run: the build, the archive, connecting, the warning.
    let started = kinds.iter().position(|k| *k == "run-started").unwrap();
    assert_eq!(
        kinds[..started],
        [
            "build-started",
            "build-finished",
            "packed",
            "phase-started",
            "warning"
        ],
        "{run}"
    );
    assert_eq!(events[0]["command"], "echo building the app");
    assert_eq!(events[1]["ok"], true);
    assert!(events[2]["source"].as_str().unwrap().ends_with("dist"));
    assert_eq!(events[2]["files"], 4);
    assert_eq!(events[3]["phase"]["name"], "connect");
    // The build's own output is on stderr, not in the stream.
    assert!(run.stderr.contains("building the app"), "{run}");

    let run_started = &events[started];
    assert_eq!(run_started["operation"], "deploy");
    assert_eq!(run_started["release"], release.as_str());
    assert_eq!(
        run_started["batches"],
        serde_json::json!([["web1", "web2"], ["web3"]])
    );
    assert_eq!(
        run_started["before"],
        serde_json::json!({"web1": null, "web2": null, "web3": null})
    );

    let phases: Vec<&Value> = events
        .iter()
        .filter(|e| kind(e) == "phase-started")
        .map(|e| &e["phase"])
        .collect();
    assert_eq!(
        phases,
        [
            &serde_json::json!({"name": "connect"}),
            &serde_json::json!({"name": "prepare"}),
            &serde_json::json!({"name": "batch", "number": 1, "of": 2}),
            &serde_json::json!({"name": "batch", "number": 2, "of": 2}),
            &serde_json::json!({"name": "finish"}),
        ]
    );

    // Each host: finishes every phase once, uploads the whole archive,
    // and its restart printed a line.
    let archive = events[2]["bytes"].as_u64().unwrap();
    for host in ["web1", "web2", "web3"] {
        let of_host = |k: &str| -> Vec<&Value> {
            events
                .iter()
                .filter(|e| kind(e) == k && e["host"] == host)
                .collect()
        };
        let finished: Vec<String> = of_host("host-finished")
            .iter()
            .map(|e| {
                assert_eq!(e["ok"], true, "{e}");
                assert_eq!(e["drained"], false, "{e}");
                e["phase"]["name"].as_str().unwrap().to_string()
            })
            .collect();
        assert_eq!(finished, ["prepare", "batch", "finish"], "{host}");
        let last_upload = of_host("upload-progress").last().copied().cloned();
        let last_upload = last_upload.unwrap_or_else(|| panic!("{host} uploaded nothing"));
        assert_eq!(last_upload["sent"], archive);
        assert_eq!(last_upload["total"], archive);
        assert!(
            of_host("output").iter().any(|e| e["step"] == "restart"
                && e["stream"] == "stdout"
                && e["line"]
                    .as_str()
                    .unwrap()
                    .starts_with("restart: app started")),
            "{host}"
        );
        let steps: BTreeSet<&str> = of_host("step-finished")
            .iter()
            .map(|e| {
                assert_eq!(e["ok"], true, "{e}");
                e["step"].as_str().unwrap()
            })
            .collect();
        assert_eq!(
            steps,
            BTreeSet::from([
                "upload",
                "link-shared",
                "finish",
                "switch",
                "restart",
                "health",
                "cleanup"
            ])
        );
    }
    // Batch 2 starts after batch 1's hosts finished.
    let position = |pred: &dyn Fn(&Value) -> bool| events.iter().position(pred).unwrap();
    let batch2 = position(&|e| kind(e) == "phase-started" && e["phase"]["number"] == 2);
    for host in ["web1", "web2"] {
        let done = position(&|e| {
            kind(e) == "host-finished" && e["host"] == host && e["phase"]["name"] == "batch"
        });
        assert!(done < batch2, "{host}");
    }

    let finished = &events[events.len() - 2];
    assert_eq!(kind(finished), "run-finished");
    assert_eq!(finished["ok"], true);
    for h in finished["hosts"].as_array().unwrap() {
        assert_eq!(h["result"]["state"], "done", "{h}");
        assert_eq!(h["now"], release.as_str());
        assert_eq!(h["before"], Value::Null);
    }
    assert_eq!(events[events.len() - 1]["exit"], "success");
    assert!(events[events.len() - 1].get("message").is_none());

    // Human output is still there, on stderr.
    assert!(run.stderr.contains("== batch 2/2: web3"), "{run}");
    assert!(run.stderr.contains("HOST  RELEASE"), "{run}");
}

#[test]
fn json_stream_when_things_go_wrong() {
    let fleet = fleet(2);
    // on_failure = "pause": the failed host stays where it failed, so the
    // output shows the failure itself (failures.rs covers the rollback).
    let project = Project::new(&standard_config(
        &fleet,
        "[stages.test.health]\ntimeout = \"1s\"\n[stages.test.rollout]\non_failure = \"pause\"\n",
    ));
    project.shipit(&["test", "deploy", "-q"]).success();
    let r1 = current(&fleet, "web1");

    // A failed health check: the host's phase ends failed, the run says
    // where everyone stands, the result says what to do.
    fleet.exec_ok("web1", &format!("touch {DEPLOY_TO}/shared/health-fail"));
    project.set_version("v2");
    let run = project.shipit(&["test", "deploy", "--json"]);
    run.code(5);
    let events = check_stream(&run);
    let r2 = current(&fleet, "web1");
    let failed_step = events
        .iter()
        .find(|e| kind(e) == "step-finished" && e["ok"] == false)
        .unwrap();
    assert_eq!(failed_step["host"], "web1");
    assert_eq!(failed_step["step"], "health");
    assert_eq!(failed_step["result"], "unhealthy");
    assert!(
        failed_step["error"]
            .as_str()
            .unwrap()
            .contains("status 500")
    );
    let host_failed = events
        .iter()
        .find(|e| kind(e) == "host-finished" && e["ok"] == false)
        .unwrap();
    assert_eq!(
        (
            &host_failed["host"],
            &host_failed["step"],
            &host_failed["phase"]["number"]
        ),
        (
            &Value::from("web1"),
            &Value::from("health"),
            &Value::from(1)
        )
    );
    assert!(events.iter().any(|e| {
        kind(e) == "note"
            && e["message"]
                .as_str()
                .unwrap()
                .contains("batch 1 of 2: 1 of 1 host(s) failed; stopping here")
    }));
    let finished = events.iter().find(|e| kind(e) == "run-finished").unwrap();
    assert_eq!(finished["ok"], false);
    assert_eq!(
        finished["hosts"][0]["result"],
        serde_json::json!({"state": "failed", "step": "health", "error": host_failed["error"], "interrupted": false})
    );
    assert_eq!(finished["hosts"][0]["now"], r2.as_str());
    assert_eq!(finished["hosts"][1]["result"]["state"], "not-reached");
    assert_eq!(finished["hosts"][1]["now"], r1.as_str());
    let result = events.last().unwrap();
    assert_eq!(result["exit"], "partial");
    assert!(
        result["message"]
            .as_str()
            .unwrap()
            .starts_with("deploy failed on web1 (health)")
    );
    assert!(run.stderr.contains("error: deploy failed on web1 (health)"));

    // A config error: nothing but the result.
    project.write_config(&standard_config(
        &fleet,
        "[stages.test.health]\ntimout = \"1s\"\n",
    ));
    let run = project.shipit(&["test", "deploy", "--json"]);
    run.code(2);
    let events = check_stream(&run);
    assert_eq!(events.len(), 1, "{run}");
    assert_eq!(events[0]["exit"], "usage");
    assert!(
        events[0]["message"]
            .as_str()
            .unwrap()
            .contains("unknown key `timout`")
    );

    // No connection: connecting started, then the result.
    project.write_config(&standard_config(&fleet, ""));
    fleet.stop_sshd("web2");
    let run = project.shipit(&["test", "deploy", "--json"]);
    run.code(3);
    let kinds: Vec<String> = check_stream(&run)
        .iter()
        .map(|e| kind(e).to_string())
        .collect();
    assert_eq!(kinds, ["packed", "phase-started", "result"], "{run}");
}

#[test]
fn dry_run_json_is_the_plan() {
    let fleet = fleet(2);
    let project = Project::new(&standard_config(&fleet, ""));
    let run = project.shipit(&["test", "deploy", "--dry-run", "--json"]);
    run.success();
    let events = check_stream(&run);
    assert_eq!(events.len(), 2, "{run}");
    let plan = &events[0]["plan"];
    assert_eq!(kind(&events[0]), "plan");
    assert_eq!(plan["operation"], "deploy");
    assert_eq!(plan["hosts"][1]["name"], "web2");
    assert_eq!(plan["batches"].as_array().unwrap().len(), 2);
    assert_eq!(plan["prepare"][0]["steps"][0]["action"]["type"], "upload");
    assert_eq!(
        plan["batches"][0]["pipelines"][0]["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["kind"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["switch", "restart", "health"]
    );
    // People still get the text, on stderr.
    assert!(
        run.stderr.starts_with("Plan: deploy demo release "),
        "{run}"
    );
    // -q: only JSON.
    let run = project.shipit(&["test", "deploy", "--dry-run", "--json", "-q"]);
    run.success();
    assert_eq!(run.stderr, "");
    assert_eq!(check_stream(&run).len(), 2);
}
