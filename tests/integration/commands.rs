//! The everyday commands on a real fleet, transcript style: `init`, `check`,
//! `exec`, `cleanup`, `--hosts`/`--roles` on stage commands, completions and
//! the man page. After each run, the hosts themselves are inspected.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::fleet::{Fleet, FleetOptions, Haproxy};
use crate::support::shipit::{DEPLOY_TO, Project, Run, binary, host_state, standard_config};

fn fleet(hosts: usize) -> Fleet {
    Fleet::start(FleetOptions {
        hosts,
        haproxy: Haproxy::None,
        bastion: false,
    })
}

/// `shipit ARGS` in `dir`, which need not hold a deploy.toml.
fn shipit_in(dir: &std::path::Path, args: &[&str]) -> Run {
    let out = Command::new(binary())
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .env_remove("SHIPIT_CONFIG")
        .env("NO_COLOR", "1")
        .output()
        .expect("run shipit");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn current(fleet: &Fleet, host: &str) -> Option<String> {
    host_state(fleet, host, DEPLOY_TO).current
}

/// A second stage, `tagged`, over the same fleet, whose hosts have roles:
/// web1 [web], web2 [web, db], web3 [worker].
fn tagged_config(fleet: &Fleet) -> String {
    let roles = [
        ("web1", "\"web\""),
        ("web2", "\"web\", \"db\""),
        ("web3", "\"worker\""),
    ];
    let hosts: Vec<String> = roles
        .iter()
        .map(|(name, roles)| {
            format!(
                "{{ name = \"{name}\", address = \"{}\", roles = [{roles}] }}",
                fleet.address(name)
            )
        })
        .collect();
    standard_config(
        fleet,
        &format!("[stages.tagged]\nhosts = [{}]\n", hosts.join(", ")),
    )
}

#[test]
fn init_writes_a_starter_that_loads_and_never_overwrites() {
    let tmp = tempfile::tempdir().unwrap();
    let project = tmp.path().join("my shop");
    std::fs::create_dir_all(project.join("dist")).unwrap();
    std::fs::write(project.join("dist/index.html"), "hi").unwrap();
    std::fs::write(project.join("package.json"), "{}").unwrap();

    shipit_in(&project, &["init"])
        .success()
        .stderr_has("wrote deploy.toml for app my-shop (source dist/)");
    let written = std::fs::read_to_string(project.join("deploy.toml")).unwrap();
    assert!(written.contains("name = \"my-shop\""), "{written}");
    assert!(
        written.contains("deploy_to = \"/srv/my-shop\""),
        "{written}"
    );
    assert!(written.contains("source = \"dist\""), "{written}");
    assert!(
        written.contains("# build = \"npm ci && npm run build\""),
        "{written}"
    );
    assert!(written.contains("deploy.toml.example"), "{written}");

    // The real loader accepts it: a dry run plans from it.
    shipit_in(&project, &["production", "deploy", "--dry-run"])
        .success()
        .stdout_has("Plan: deploy my-shop release")
        .stdout_has("web1.example.com");

    // A second init refuses, names the file and leaves it alone.
    std::fs::write(project.join("deploy.toml"), "# mine\n").unwrap();
    shipit_in(&project, &["init"])
        .code(1)
        .stderr_has("deploy.toml already exists; `shipit init` never overwrites a file");
    assert_eq!(
        std::fs::read_to_string(project.join("deploy.toml")).unwrap(),
        "# mine\n"
    );

    // -c FILE elsewhere; no build output there: a placeholder and a TODO.
    let other = tmp.path().join("empty");
    std::fs::create_dir(&other).unwrap();
    shipit_in(&project, &["init", "-c", "../empty/ship.toml"])
        .success()
        .stderr_has("app empty; no build output found, so source is dist/ (a TODO)");
    let written = std::fs::read_to_string(other.join("ship.toml")).unwrap();
    assert!(
        written.contains("# TODO: no build output found"),
        "{written}"
    );
    shipit_in(&other, &["-c", "ship.toml", "production", "deploy", "-n"]).success();
}

#[test]
fn completions_and_the_man_page_come_from_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let run = shipit_in(tmp.path(), &["completions", shell]);
        run.success().stdout_has("deploy").stdout_has("cleanup");
        assert!(run.stdout.contains("hosts"), "{shell}: {run}");
    }
    shipit_in(tmp.path(), &["completions", "tcsh"])
        .code(2)
        .stderr_has("invalid value 'tcsh'");
    shipit_in(tmp.path(), &["man"])
        .success()
        .stdout_has(".TH shipit 1")
        .stdout_has("shipit STAGE exec")
        .stdout_has("\\-\\-roles");
}

#[test]
fn check_passes_on_a_ready_fleet_and_names_each_failing_check() {
    let fleet = fleet(2);
    let lb = "[lb]\ndrain = \"echo drain {name}\"\nenable = \"echo enable {name}\"\n";
    let project = Project::new(&standard_config(&fleet, lb));

    // Never deployed: deploy_to can be created, restart is judged in
    // app.source (the first release is made from it), health waits for a
    // release. Nothing fails.
    let source_restart = project.path().join("dist/bin/restart");
    let run = project.shipit(&["test", "check", "-v"]);
    run.success()
        .stdout_has("HOST  CONNECT  DEPLOY_TO  SHARED_FILES  RESTART  HEALTH  LB    LOCK\n")
        .stdout_has("web1  ok       ok         skip          ok       skip    ok    ok\n")
        .stdout_has(
            "(all)  restart       ok    ./dist/bin/restart found in app.source, from which the first release is made",
        );
    assert!(!fleet.exists("web1", DEPLOY_TO), "check changed nothing");

    project.shipit(&["test", "deploy"]).success();
    project
        .shipit(&["test", "check", "-v"])
        .success()
        .stdout_has("web2  ok       ok         skip          ok       ok      ok    ok\n")
        .stdout_has("/srv/demo/current/bin/restart found")
        .stdout_has("(all)  lb            ok    drain and enable parse; `echo` found (not run)");

    // An expect_body that only the next release will answer: before the
    // deploy, the status is judged and the body is said not to be.
    let literal = format!("{lb}[stages.test.health]\nexpect_body = \"version=v2\"\n");
    project.write_config(&standard_config(&fleet, &literal));
    project
        .shipit(&["test", "check"])
        .success()
        .stdout_has("web1  ok       ok         skip          ok       ok      ok    ok\n")
        .stdout_has("body not judged: expect_body \"version=v2\" is a literal");
    // The status still counts.
    fleet.exec_ok("web1", &format!("touch {DEPLOY_TO}/shared/health-fail"));
    project
        .shipit(&["test", "check"])
        .code(1)
        .stdout_has("status 500 (want 200)")
        .stderr_has("check failed: web1 health");
    fleet.exec_ok("web1", &format!("rm {DEPLOY_TO}/shared/health-fail"));

    // Break three things on purpose.
    fleet.write_file("web1", &format!("{DEPLOY_TO}/shared/.env"), "K=V\n");
    fleet.exec_ok(
        "web1",
        &format!("mount --bind {DEPLOY_TO} {DEPLOY_TO} && mount -o remount,bind,ro {DEPLOY_TO}"),
    );
    fleet.exec_ok("web2", &format!("chmod -x {DEPLOY_TO}/current/bin/restart"));
    let chmod = |mode: u32| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&source_restart, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    chmod(0o644);
    project.write_config(&standard_config(
        &fleet,
        &format!("{lb}[stages.test.app]\nshared_files = [\".env\"]\n"),
    ));
    let before = host_state(&fleet, "web2", DEPLOY_TO);
    project
        .shipit(&["test", "check"])
        .code(1)
        .stdout_has("web1  deploy_to     FAIL  /srv/demo is not writable by the SSH user")
        .stdout_has("web2  shared_files  FAIL  missing in /srv/demo/shared: .env")
        .stdout_has(
            "web2  restart       FAIL  /srv/demo/current/bin/restart is not an executable file, \
             and app.source, from which the next release is made, has no executable copy either",
        )
        .stderr_has("check failed: web1 deploy_to, web2 shared_files, web2 restart");
    // Only the live copy is broken: the next release brings a good one.
    chmod(0o755);
    project
        .shipit(&["test", "check"])
        .code(1)
        .stdout_has(
            "web2  restart       ok    /srv/demo/current/bin/restart is not an executable file in the live \
             release, but",
        )
        .stderr_has("check failed: web1 deploy_to, web2 shared_files\n");
    let after = host_state(&fleet, "web2", DEPLOY_TO);
    assert_eq!(
        (before.current, before.releases),
        (after.current, after.releases)
    );

    // A host that cannot be reached: exit 3, its other checks skipped.
    fleet.stop_sshd("web2");
    project
        .shipit(&["test", "check"])
        .code(3)
        .stdout_has("web2  FAIL     skip")
        .stdout_has("web2  connect       FAIL  cannot connect to")
        .stderr_has(
            "check: cannot reach web2 (its other checks were skipped); failed: web1 deploy_to",
        );
}

#[test]
fn exec_runs_everywhere_or_batch_by_batch_and_says_where_it_failed() {
    let fleet = fleet(3);
    let project = Project::new(&standard_config(&fleet, ""));

    // Never deployed: runs in the login directory.
    let run = project.shipit(&["test", "exec", "--", "echo", "on $(hostname) in $PWD"]);
    run.success().stderr_has("exec: ok on 3 hosts");
    for host in ["web1", "web2", "web3"] {
        assert!(
            run.stdout
                .contains(&format!("{host} | on {host} in /root\n")),
            "{run}"
        );
    }

    project.shipit(&["test", "deploy"]).success();
    // In current, output and errors per host, prefixed; exit 1 names the host.
    let run = project.shipit(&[
        "test",
        "exec",
        "--",
        "cat VERSION; echo err >&2; test $(hostname) != web2",
    ]);
    run.code(1)
        .stdout_has("web1 | v1\n")
        .stdout_has("web3 | v1\n")
        .stderr_has("web2 | err\n")
        .stderr_has("exec failed on web2 (exit status 1); ok on 2");

    // --rolling: one host per batch; stops after web2's batch.
    let run = project.shipit(&[
        "test",
        "exec",
        "--rolling",
        "--",
        "echo ran; test $(hostname) != web2",
    ]);
    run.code(1)
        .stdout_has("web1 | ran\n")
        .stdout_has("web2 | ran\n")
        .stderr_has("not run on web3 (--rolling stops after a batch with a failure)");
    assert!(!run.stdout.contains("web3 |"), "{run}");

    // Filters and the dry run.
    let run = project.shipit(&["test", "exec", "--hosts", "web3,web1", "--", "hostname"]);
    run.success()
        .stdout_has("web1 | web1\n")
        .stdout_has("web3 | web3\n");
    assert!(!run.stdout.contains("web2"), "{run}");
    project
        .shipit(&[
            "test",
            "exec",
            "-n",
            "--rolling",
            "--",
            "systemctl",
            "restart",
            "x",
        ])
        .success()
        .stdout_has("Plan: exec on 3 hosts of stage test: sh -c 'systemctl restart x'")
        .stdout_has("batch 2 of 3: web2");

    // exec takes no lock by default, so it works while one is held; --lock does not.
    project
        .shipit(&["test", "lock", "-m", "maintenance"])
        .success();
    project.shipit(&["test", "exec", "--", "true"]).success();
    project
        .shipit(&["test", "exec", "--lock", "--", "touch /tmp/exec-ran"])
        .code(6)
        .stderr_has("manual lock");
    assert!(!fleet.exists("web1", "/tmp/exec-ran"));
    project.shipit(&["test", "unlock"]).success();
    project
        .shipit(&[
            "test",
            "exec",
            "--lock",
            "--",
            "test -d /srv/demo/.shipit/lock",
        ])
        .success();
    assert!(
        !fleet.exists("web1", "/srv/demo/.shipit/lock"),
        "lock given back"
    );

    // Ctrl-C stops the command on the hosts before shipit exits.
    let mut running = project.spawn(&["test", "exec", "--", "echo started >&2; sleep 3517"]);
    for _ in 0..3 {
        running.wait_for(" | started", Duration::from_secs(20));
    }
    running.signal("INT");
    running
        .finish()
        .code(130)
        .stderr_has("stopping the command on every host")
        .stderr_has("exec interrupted; the command was stopped where it still ran");
    let left = fleet.exec("web1", "pgrep -af 'sleep [3]517'");
    assert!(
        !left.status.success(),
        "still running: {}",
        String::from_utf8_lossy(&left.stdout)
    );
}

#[test]
fn cleanup_applies_keep_releases_now_under_the_lock() {
    let fleet = fleet(2);
    let project = Project::new(&standard_config(&fleet, ""));
    project.shipit(&["test", "deploy"]).success();
    let live = current(&fleet, "web1").unwrap();
    // Older finished releases, and a leftover of a crashed upload.
    for host in ["web1", "web2"] {
        fleet.exec_ok(
            host,
            &format!(
                "cd {DEPLOY_TO} && for r in 20200101000001 20200101000002 20200101000003 20200101000009; do \
                   mkdir releases/$r && echo old > releases/$r/REVISION; done && \
                 touch .shipit/unfinished/20200101000009"
            ),
        );
    }

    // keep_releases = 3: the newest three finished ones stay.
    project
        .shipit(&["test", "cleanup", "--dry-run"])
        .success()
        .stdout_has(&format!(
            "web1  would remove 20200101000001 20200101000009; kept 20200101000002 20200101000003 {live}\n"
        ));
    assert_eq!(host_state(&fleet, "web1", DEPLOY_TO).releases.len(), 5);

    project
        .shipit(&["test", "cleanup", "--hosts", "web1"])
        .success()
        .stdout_has("web1  removed 20200101000001 20200101000009; kept")
        .stderr_has("--hosts web1 selects 1 of 2 hosts of stage test: web1 (left alone: web2)");
    let web1 = host_state(&fleet, "web1", DEPLOY_TO);
    assert_eq!(
        web1.releases,
        ["20200101000002", "20200101000003", live.as_str()]
    );
    assert!(web1.unfinished.is_empty());
    assert_eq!(host_state(&fleet, "web2", DEPLOY_TO).releases.len(), 5);
    assert!(!fleet.exists("web1", &format!("{DEPLOY_TO}/.shipit/lock")));

    project
        .shipit(&["test", "cleanup"])
        .success()
        .stdout_has("web1  nothing to remove;")
        .stdout_has("web2  removed 20200101000001 20200101000009;");

    // Under the deploy lock: a held lock stops it before anything goes.
    project.write_config(&standard_config(
        &fleet,
        "[stages.test.app]\nkeep_releases = 1\n",
    ));
    project.shipit(&["test", "lock"]).success();
    project.shipit(&["test", "cleanup"]).code(6);
    assert_eq!(host_state(&fleet, "web2", DEPLOY_TO).releases.len(), 3);
    project.shipit(&["test", "unlock"]).success();
    // keep 1 still keeps the release a rollback would go to.
    project
        .shipit(&["test", "cleanup"])
        .success()
        .stdout_has(&format!(
            "web2  removed 20200101000002; kept 20200101000003 {live}\n"
        ));
}

#[test]
fn hosts_and_roles_select_what_every_command_touches() {
    let fleet = fleet(3);
    let project = Project::new(&tagged_config(&fleet));

    // Unknown names and empty selections are usage errors; nothing contacted.
    project
        .shipit(&["tagged", "deploy", "--hosts", "web9,web1"])
        .code(2)
        .stderr_has("--hosts: stage tagged has no host web9; its hosts are: web1, web2, web3");
    project
        .shipit(&["tagged", "status", "--roles", "cache"])
        .code(2)
        .stderr_has("--roles: stage tagged has no role cache; its roles are: db, web, worker");
    project
        .shipit(&["tagged", "--hosts", "web3", "releases", "--roles", "web"])
        .code(2)
        .stderr_has("no host of stage tagged matches --hosts web3 --roles web");
    project
        .shipit(&["test", "status", "--roles", "web"])
        .code(2)
        .stderr_has("no host of stage test has roles");

    // The dry run shows the effect: --roles web and --hosts web2,web3 is web2.
    let run = project.shipit(&[
        "tagged",
        "deploy",
        "-n",
        "--roles",
        "web",
        "--hosts",
        "web2,web3",
    ]);
    run.success()
        .stdout_has("hosts     1 in 1 batch: web2\n")
        .stderr_has("--hosts web2,web3 --roles web selects 1 of 3 hosts of stage tagged: web2 (left alone: web1, web3)");
    assert!(
        !run.stdout.contains("web1") && !run.stdout.contains("web3"),
        "{run}"
    );

    project
        .shipit(&["tagged", "deploy", "--hosts", "web2"])
        .success();
    let r1 = current(&fleet, "web2").expect("web2 deployed");
    assert_eq!(current(&fleet, "web1"), None);
    assert_eq!(current(&fleet, "web3"), None);
    assert!(!fleet.exists("web1", DEPLOY_TO), "web1 untouched");

    project.set_version("v2");
    project
        .shipit(&["tagged", "deploy", "--roles", "web"])
        .success();
    let r2 = current(&fleet, "web1").expect("web1 deployed");
    assert_eq!(current(&fleet, "web2").as_ref(), Some(&r2));
    assert_eq!(current(&fleet, "web3"), None);

    // Rollback considers only the selected hosts: web1 has nothing older,
    // though web2 has r1.
    project
        .shipit(&["tagged", "rollback", "--hosts", "web1"])
        .code(1)
        .stderr_has("nothing to roll back to");
    project
        .shipit(&["tagged", "rollback", "--hosts", "web2"])
        .success();
    assert_eq!(current(&fleet, "web2").as_ref(), Some(&r1));
    assert_eq!(current(&fleet, "web1").as_ref(), Some(&r2));

    // Read-only commands show only the selection.
    let run = project.shipit(&["tagged", "releases", "--roles", "db"]);
    run.success()
        .stdout_has("web2:\n")
        .stdout_has(&format!("  * {r1}"));
    assert!(!run.stdout.contains("web1"), "{run}");
    let run = project.shipit(&["tagged", "status", "--roles", "worker"]);
    run.success().stdout_has("web3  -");
    assert!(!run.stdout.contains("web1"), "{run}");

    // The lock is taken on the selected hosts only.
    project
        .shipit(&["tagged", "lock", "--hosts", "web1"])
        .success();
    assert!(fleet.exists("web1", &format!("{DEPLOY_TO}/.shipit/lock")));
    assert!(!fleet.exists("web2", &format!("{DEPLOY_TO}/.shipit/lock")));
    project
        .shipit(&["tagged", "deploy", "--roles", "web"])
        .code(6)
        .stderr_has("seen on web1");
    project
        .shipit(&["tagged", "unlock", "--hosts", "web1"])
        .success()
        .stderr_has("unlocked stage tagged on web1");
}
