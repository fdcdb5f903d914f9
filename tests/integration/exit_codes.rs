//! Exit codes (docs/exit-codes.md) from real runs on a fleet, each also
//! checked against the `result` event that ends the `--json` stream.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use serde_json::Value;

use crate::support::fleet::{Fleet, FleetOptions, Haproxy};
use crate::support::shipit::{DEPLOY_TO, Project, host_state, standard_config};

fn fleet(hosts: usize) -> Fleet {
    Fleet::start(FleetOptions {
        hosts,
        haproxy: Haproxy::None,
        bastion: false,
    })
}

fn current(fleet: &Fleet, host: &str) -> Option<String> {
    host_state(fleet, host, DEPLOY_TO).current
}

/// Runs `shipit ARGS --json`, checks the exit code and that the last
/// stdout line is the `result` event saying the same; returns the events.
#[track_caller]
fn exits(project: &Project, args: &[&str], code: i32, name: &str) -> Vec<Value> {
    let mut args = args.to_vec();
    args.push("--json");
    let run = project.shipit(&args);
    run.code(code);
    let events = run.events();
    let result = events.last().unwrap_or_else(|| panic!("no events:\n{run}"));
    assert_eq!(result["event"], "result", "{run}");
    assert_eq!(result["exit_code"], code, "{run}");
    assert_eq!(result["exit"], name, "{run}");
    assert_eq!(result["ok"], code == 0, "{run}");
    if code != 0 {
        let message = result["message"].as_str().expect("a failure has a message");
        assert!(
            run.stderr.contains(&format!("error: {message}")),
            "stderr lacks the message:\n{run}"
        );
    }
    events
}

#[test]
fn exit_0_success() {
    let fleet = fleet(2);
    let project = Project::new(&standard_config(&fleet, ""));
    exits(&project, &["test", "deploy"], 0, "success");
    exits(&project, &["test", "releases"], 0, "success");
    exits(&project, &["test", "deploy", "--dry-run"], 0, "success");
}

#[test]
fn exit_1_failed_and_nothing_changed() {
    let fleet = fleet(2);
    let project = Project::new(&standard_config(&fleet, ""));
    // web2's disk is too small for the release (but has room for the lock
    // and journal): its upload fails, so no host is switched, web1 included.
    let blob: Vec<u8> = (0..2 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    std::fs::write(project.path().join("dist/blob.bin"), blob).unwrap();
    fleet.fill("web2", "/srv", "512k");
    let events = exits(&project, &["test", "deploy"], 1, "failed-unchanged");
    let failed = events
        .iter()
        .find(|e| e["event"] == "step-finished" && e["ok"] == false)
        .expect("a failed step");
    assert_eq!(
        (&failed["host"], &failed["step"]),
        (&"web2".into(), &"upload".into())
    );
    assert!(events.iter().any(|e| {
        e["event"] == "note"
            && e["message"]
                .as_str()
                .unwrap()
                .starts_with("prepare failed: no host was switched")
    }));
    assert!(
        events.last().unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("no host was switched")
    );
    assert_eq!(current(&fleet, "web1"), None);
    fleet.unfill("web2", "/srv");

    // Refused up front: nothing to roll back to.
    exits(&project, &["test", "rollback"], 1, "failed-unchanged");
}

/// A revision command whose output holds a NUL byte: refused before any
/// host is contacted (it used to panic after the upload and leave the lock).
#[test]
fn exit_1_revision_output_with_a_nul_byte_changes_nothing() {
    let fleet = fleet(1);
    let project = Project::new(&standard_config(
        &fleet,
        "[stages.test.app]\nrevision = \"printf 'abc\\\\000def\\\\n'\"\n",
    ));
    for args in [&["test", "deploy"][..], &["test", "deploy", "--dry-run"]] {
        let events = exits(&project, args, 1, "failed-unchanged");
        assert_eq!(
            events.last().unwrap()["message"],
            "app.revision: the output of `printf 'abc\\000def\\n'` contains a NUL byte; make it print \
             the revision as plain text on its first line; nothing was changed on any host"
        );
        assert!(!events.iter().any(|e| e["event"] == "run-started"));
    }
    assert!(!fleet.exists("web1", &format!("{DEPLOY_TO}/.shipit/lock")));
    let state = host_state(&fleet, "web1", DEPLOY_TO);
    assert_eq!((state.current, state.releases.len()), (None, 0));
}

#[test]
fn exit_2_usage_and_config_errors() {
    let fleet = fleet(1);
    let project = Project::new(&standard_config(&fleet, ""));
    // clap's own errors come before --json is known: exit 2, no JSON.
    let run = project.shipit(&["test", "deploy", "--json", "--bogus"]);
    run.code(2).stderr_has("--bogus");
    assert_eq!(run.stdout, "");
    exits(&project, &["nostage", "deploy"], 2, "usage");
    exits(
        &project,
        &["test", "rollback", "--to", "yesterday"],
        2,
        "usage",
    );
    project.write_config("[app\n");
    exits(&project, &["test", "deploy"], 2, "usage");
    assert_eq!(current(&fleet, "web1"), None);
}

#[test]
fn exit_3_cannot_connect() {
    let fleet = fleet(2);
    let project = Project::new(&standard_config(&fleet, ""));
    fleet.stop_sshd("web1");
    let events = exits(&project, &["test", "deploy"], 3, "connection");
    assert!(
        events.last().unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("web1: cannot connect to")
    );
    assert!(!events.iter().any(|e| e["event"] == "run-started"));
    assert_eq!(current(&fleet, "web2"), None);
}

#[test]
fn exit_4_failed_and_rolled_back() {
    let fleet = fleet(2);
    let project = Project::new(&standard_config(
        &fleet,
        "[stages.test.health]\ntimeout = \"1s\"\n",
    ));
    exits(&project, &["test", "deploy", "-q"], 0, "success");
    let r1 = current(&fleet, "web1").unwrap();
    // Only v2 fails its health check on web2.
    fleet.exec_ok("web2", &format!("echo v2 > {DEPLOY_TO}/shared/health-fail"));
    project.set_version("v2");
    exits(&project, &["test", "deploy", "-q"], 4, "rolled-back");
    for host in ["web1", "web2"] {
        assert_eq!(
            current(&fleet, host).as_deref(),
            Some(r1.as_str()),
            "{host}"
        );
    }
}

#[test]
fn exit_6_lock_held() {
    let fleet = fleet(1);
    let project = Project::new(&standard_config(&fleet, ""));
    exits(
        &project,
        &["test", "lock", "-m", "maintenance"],
        0,
        "success",
    );
    let events = exits(&project, &["test", "deploy"], 6, "lock-held");
    assert!(
        events.last().unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("maintenance")
    );
    exits(&project, &["test", "unlock"], 0, "success");
}

#[test]
fn exit_5_failed_with_hosts_left_changed() {
    let fleet = fleet(2);
    let project = Project::new(&standard_config(
        &fleet,
        "[stages.test.health]\ntimeout = \"1s\"\n[stages.test.rollout]\non_failure = \"pause\"\n",
    ));
    exits(&project, &["test", "deploy", "-q"], 0, "success");
    let r1 = current(&fleet, "web1").unwrap();
    fleet.exec_ok("web1", &format!("touch {DEPLOY_TO}/shared/health-fail"));
    project.set_version("v2");
    let events = exits(&project, &["test", "deploy", "-q"], 5, "partial");
    let r2 = current(&fleet, "web1").unwrap();
    assert_ne!(r1, r2, "web1 was switched");
    assert_eq!(current(&fleet, "web2").unwrap(), r1, "web2 was not reached");
    let finished = &events[events.len() - 2];
    assert_eq!(finished["hosts"][0]["result"]["state"], "failed");
    assert_eq!(finished["hosts"][1]["result"]["state"], "not-reached");
}

/// Stdout lines of a running shipit, parsed, as they come.
fn json_lines(child: &mut Child) -> Receiver<Value> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (send, receive) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("stdout is text");
            let value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            if send.send(value).is_err() {
                return;
            }
        }
    });
    receive
}

/// Waits for the first event `want` accepts; every event seen goes to `seen`.
/// The limit only keeps a broken run from hanging the test suite.
#[track_caller]
fn wait_event(
    events: &Receiver<Value>,
    seen: &mut Vec<Value>,
    what: &str,
    want: impl Fn(&Value) -> bool,
) {
    loop {
        match events.recv_timeout(Duration::from_secs(60)) {
            Ok(event) => {
                let found = want(&event);
                seen.push(event);
                if found {
                    return;
                }
            }
            Err(e) => panic!("no {what} event ({e}); saw:\n{seen:#?}"),
        }
    }
}

/// Ctrl-C while a host is being drained: the drain finishes, nothing new
/// starts, the host is put back into the load balancer, exit 130. The
/// drain command waits for a file the test creates only after shipit said
/// it is stopping, so the order of events is fixed, not a race.
#[test]
fn exit_130_interrupted_puts_the_drained_host_back() {
    let fleet = fleet(2);
    let project = Project::new(&standard_config(&fleet, ""));
    project.shipit(&["test", "deploy", "-q"]).success();
    let r1 = current(&fleet, "web1").unwrap();

    let dir = project.path().display().to_string();
    project.write_config(&standard_config(
        &fleet,
        &format!(
            "[stages.test.lb]\n\
             drain = \"touch {dir}/drained-{{name}}; while [ ! -e {dir}/go ]; do sleep 0.05; done\"\n\
             enable = \"rm -f {dir}/drained-{{name}}; touch {dir}/enabled-{{name}}\"\n"
        ),
    ));
    project.set_version("v2");
    let mut child = project
        .command(&["test", "deploy", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start shipit");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let events = json_lines(&mut child);
    let mut seen = Vec::new();
    wait_event(&events, &mut seen, "drain of web1", |e| {
        e["event"] == "step-started" && e["host"] == "web1" && e["step"] == "drain"
    });
    let pid = child.id().to_string();
    let kill = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("run kill");
    assert!(kill.success());
    wait_event(&events, &mut seen, "stopping note", |e| {
        e["event"] == "note" && e["message"].as_str().unwrap().starts_with("stopping")
    });
    std::fs::write(project.path().join("go"), "").unwrap();
    let status = child.wait().expect("shipit ends");
    seen.extend(events.iter());
    let stderr = stderr.join().unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");

    let result = seen.last().unwrap();
    assert_eq!(result["event"], "result", "{seen:#?}");
    assert_eq!(result["exit_code"], 130);
    assert_eq!(result["exit"], "interrupted");
    // web1 was drained, not switched, and put back; web2's turn never came.
    assert!(
        !seen
            .iter()
            .any(|e| e["event"] == "step-started" && e["step"] == "switch")
    );
    assert!(seen.iter().any(|e| {
        e["event"] == "note"
            && e["host"] == "web1"
            && e["message"]
                .as_str()
                .unwrap()
                .starts_with("putting the host back")
    }));
    let enabled = seen
        .iter()
        .find(|e| e["event"] == "step-finished" && e["host"] == "web1" && e["step"] == "enable");
    assert_eq!(
        enabled.map(|e| &e["ok"]),
        Some(&Value::Bool(true)),
        "{seen:#?}"
    );
    let finished = seen.iter().find(|e| e["event"] == "run-finished").unwrap();
    let web1 = &finished["hosts"][0];
    assert_eq!(web1["drained"], false);
    assert_eq!(web1["now"], r1.as_str());
    assert_eq!(web1["result"]["step"], "switch");
    assert_eq!(finished["hosts"][1]["result"]["state"], "not-reached");
    assert!(!project.path().join("drained-web1").exists());
    assert!(project.path().join("enabled-web1").exists());
    assert!(!project.path().join("drained-web2").exists());
    for host in ["web1", "web2"] {
        assert_eq!(
            current(&fleet, host).as_deref(),
            Some(r1.as_str()),
            "{host}"
        );
    }
    assert!(
        stderr.contains("shipit   stopping: no new step starts"),
        "{stderr}"
    );
    assert!(stderr.contains("error: deploy interrupted"), "{stderr}");
}
