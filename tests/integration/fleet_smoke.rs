//! The test fleet itself works: isolated hosts with private homes and a shell
//! start-up delay, real sshd with strict host keys, the demo app behind HAProxy,
//! nginx or Caddy, Prometheus scraping HAProxy, bastion isolation, the
//! fault-injection knobs, the demo app's misbehaviour knobs and the load
//! generator's counts. If one of these fails, every shipit integration test built
//! on the fleet is suspect.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use crate::support::fleet::{
    At, Fleet, FleetOptions, FleetSpec, Haproxy, Lb, demo_app_dir, http_get, wait_for,
};
use crate::support::load;

/// OpenSSH with nothing but the fleet's key and the given known_hosts file.
fn strict_ssh(fleet: &Fleet, known_hosts: &Path, address: &str, remote_cmd: &str) -> Output {
    let mut cmd = Command::new("ssh");
    cmd.args(["-F", "/dev/null"]);
    for opt in [
        "BatchMode=yes",
        "StrictHostKeyChecking=yes",
        "IdentitiesOnly=yes",
        "GlobalKnownHostsFile=/dev/null",
        "ConnectTimeout=5",
    ] {
        cmd.args(["-o", opt]);
    }
    cmd.arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .arg("-i")
        .arg(fleet.identity())
        .arg(format!("root@{address}"))
        .arg(remote_cmd)
        .stdin(Stdio::null())
        .output()
        .expect("run ssh")
}

fn stdout_line(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim_end().to_string()
}

/// Installs the demo app on `host` as release `release` and starts it.
fn install_demo_app(fleet: &Fleet, host: &str, release: &str) {
    install_release(fleet, host, release, &[], "bin/restart");
}

/// Installs the demo app on `host` as release `release` with `files` (knobs such
/// as `("ERROR_RATE", "0.25")`) in the release, switches to it and runs `restart`
/// there (e.g. `APP_MODE=worker bin/restart`).
fn install_release(
    fleet: &Fleet,
    host: &str,
    release: &str,
    files: &[(&str, &str)],
    restart: &str,
) {
    let tar = Command::new("tar")
        .arg("-C")
        .arg(demo_app_dir())
        .args(["--exclude=__pycache__", "-cf", "-", "."])
        .output()
        .expect("run tar");
    assert!(
        tar.status.success(),
        "tar of demo/app failed: {}",
        String::from_utf8_lossy(&tar.stderr)
    );
    let dir = format!("/srv/app/releases/{release}");
    let out = fleet.exec_with_stdin(
        host,
        &format!(
            "mkdir -p {dir} /srv/app/shared/log && tar -xf - -C {dir} && ln -sfn {dir} /srv/app/current"
        ),
        &tar.stdout,
    );
    assert!(
        out.status.success(),
        "unpacking on {host}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (name, contents) in files {
        fleet.write_file(host, &format!("{dir}/{name}"), contents);
    }
    fleet.exec_ok(
        host,
        &format!("ln -sfn {dir} /srv/app/current && cd /srv/app/current && {restart}"),
    );
}

#[test]
fn fleet_hosts_are_isolated_and_serve_the_demo_app() {
    let fleet = Fleet::start(FleetOptions {
        hosts: 3,
        haproxy: Haproxy::Local,
        bastion: false,
    });
    let hosts = fleet.hosts();
    assert_eq!(
        hosts.iter().map(|h| h.name.as_str()).collect::<Vec<_>>(),
        ["web1", "web2", "web3"]
    );
    assert!(fleet.hosts_toml().contains(&format!(
        r#"{{ name = "web2", address = "{}" }}"#,
        hosts[1].address
    )));

    // Each host has its own /srv, and the machine's real /srv is untouched.
    let marker = format!("/srv/fleet-smoke-{}", std::process::id());
    fleet.write_file("web1", &marker, "web1\n");
    assert_eq!(fleet.read_file("web1", &marker).as_deref(), Some("web1\n"));
    assert!(fleet.exists("web1", &marker));
    assert!(!fleet.exists("web2", &marker), "web2 sees web1's /srv");
    assert!(
        !Path::new(&marker).exists(),
        "the marker leaked into the real /srv"
    );
    assert!(
        fleet
            .srv_dir("web1")
            .join(marker.trim_start_matches("/srv/"))
            .exists()
    );

    // Every sshd accepts the fleet key, with strict checking against known_hosts
    // (plain and hashed), and really is that host.
    for host in &hosts {
        let out = strict_ssh(&fleet, &fleet.known_hosts(), &host.address, "hostname");
        assert!(
            out.status.success(),
            "ssh to {}: {}",
            host.name,
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(stdout_line(&out), host.name);
    }
    let out = strict_ssh(
        &fleet,
        &fleet.known_hosts_hashed(),
        &hosts[2].address,
        "cat /srv/fleet-smoke-* 2>/dev/null; echo end",
    );
    assert!(
        out.status.success(),
        "ssh with hashed known_hosts: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout_line(&out), "end", "web3 sees web1's marker");

    // HAProxy: every server DOWN until an app runs.
    for host in &hosts {
        assert_eq!(
            fleet.haproxy_server_status(&host.name).as_deref(),
            Some("DOWN"),
            "{}",
            host.name
        );
    }

    // The demo app, installed by hand, serves its release on :8080 ...
    install_demo_app(&fleet, "web1", "r1");
    assert_eq!(
        fleet.read_link("web1", "/srv/app/current").as_deref(),
        Some("/srv/app/releases/r1")
    );
    let health = format!("http://{}:8080/health", hosts[0].address);
    wait_for(
        Duration::from_secs(10),
        "web1 /health to serve release r1",
        || matches!(http_get(&health), Some((200, body)) if body == "ok release=r1 version=v1\n"),
    );
    // ... HAProxy sees it UP within a couple of check intervals (rise 2 x 500 ms) ...
    let t = Instant::now();
    wait_for(Duration::from_secs(5), "HAProxy to report web1 UP", || {
        fleet.haproxy_server_status("web1").as_deref() == Some("UP")
    });
    eprintln!(
        "web1 UP in HAProxy {:?} after /health answered",
        t.elapsed()
    );
    assert_eq!(fleet.haproxy_server_status("web2").as_deref(), Some("DOWN"));
    assert!(
        fleet
            .haproxy_cmd("show servers state app")
            .contains(" web1 ")
    );
    // ... and the load balancer routes to it.
    let (status, body) = http_get(&format!("{}/", fleet.lb_url())).expect("GET through HAProxy");
    assert_eq!((status, body.as_str()), (200, "v1 r1 web1\n"));

    // The health-fail switch works per host.
    fleet.write_file("web1", "/srv/app/shared/health-fail", "");
    assert_eq!(http_get(&health), Some((500, "failing\n".to_string())));
    assert!(
        fleet
            .read_file("web1", "/srv/app/shared/app.pid")
            .is_some_and(|p| !p.trim().is_empty())
    );
}

#[test]
fn fleet_bastion_hides_web_hosts() {
    let fleet = Fleet::start(FleetOptions {
        hosts: 2,
        haproxy: Haproxy::Host,
        bastion: true,
    });
    let web1 = fleet.address("web1");

    // No direct path from here: refused at once by routing, not a hang.
    let addr: SocketAddr = format!("{web1}:22").parse().unwrap();
    let t = Instant::now();
    let err = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .expect_err("web1 must not be reachable directly when hidden behind the bastion");
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "direct connect failed only after {:?}: {err}",
        t.elapsed()
    );

    // The bastion itself is reachable; web hosts are reachable through it.
    let out = strict_ssh(
        &fleet,
        &fleet.known_hosts(),
        &fleet.bastion_address(),
        "hostname",
    );
    assert!(
        out.status.success(),
        "ssh to bastion: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout_line(&out), "bastion");
    let out = Command::new("ssh")
        .arg("-F")
        .arg(fleet.ssh_config())
        .arg("-J")
        .arg(format!("root@{}", fleet.bastion_address()))
        .arg(format!("root@{web1}"))
        .arg("hostname")
        .stdin(Stdio::null())
        .output()
        .expect("run ssh -J");
    assert!(
        out.status.success(),
        "ssh -J via bastion: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout_line(&out), "web1");
    let out = fleet
        .ssh("web2")
        .arg("hostname")
        .output()
        .expect("ssh web2");
    assert_eq!(
        stdout_line(&out),
        "web2",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // HAProxy on the lb host reaches the hidden web hosts (checks run, servers DOWN
    // until an app runs) and answers on its admin socket, also over SSH on the lb.
    assert_eq!(fleet.haproxy_server_status("web1").as_deref(), Some("DOWN"));
    let out = fleet
        .ssh("lb")
        .arg("echo 'show servers state app' | socat stdio UNIX-CONNECT:/srv/haproxy/admin.sock")
        .output()
        .expect("ssh lb");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!(" web2 {} ", fleet.address("web2")))
    );
}

#[test]
fn fleet_fault_injection() {
    let fleet = Fleet::start(FleetOptions {
        hosts: 1,
        ..Default::default()
    });
    let addr = fleet.address("web1");
    let ssh_ok = || {
        strict_ssh(&fleet, &fleet.known_hosts(), &addr, "true")
            .status
            .success()
    };
    assert!(ssh_ok());

    // sshd down: logins fail, but the host itself (exec) is still there.
    fleet.stop_sshd("web1");
    assert!(!ssh_ok(), "login worked with sshd stopped");
    assert_eq!(fleet.exec_ok("web1", "hostname").trim(), "web1");
    fleet.start_sshd("web1");
    assert!(ssh_ok(), "login fails after sshd restart");

    // Link down: connections fail (timeout or no route); back up: they work again.
    fleet.link_down("web1");
    let sock: SocketAddr = format!("{addr}:22").parse().unwrap();
    assert!(TcpStream::connect_timeout(&sock, Duration::from_millis(500)).is_err());
    fleet.link_up("web1");
    wait_for(
        Duration::from_secs(5),
        "web1 reachable after link up",
        || TcpStream::connect_timeout(&sock, Duration::from_millis(500)).is_ok(),
    );

    // Disk full: a 1 MiB tmpfs over /srv/app keeps its contents but takes no more.
    fleet.write_file("web1", "/srv/app/keep", "kept\n");
    fleet.fill("web1", "/srv/app", "1m");
    assert_eq!(
        fleet.read_file("web1", "/srv/app/keep").as_deref(),
        Some("kept\n")
    );
    let out = fleet.exec("web1", "head -c 2000000 /dev/zero > /srv/app/big");
    assert!(
        !out.status.success(),
        "writing 2 MB into a 1 MiB filesystem succeeded"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("No space left on device"));
    fleet.unfill("web1", "/srv/app");
    assert!(!fleet.exists("web1", "/srv/app/big"));
}

/// On the host, in one SSH command: seconds from the start of sshd's shell (the
/// process that read ~/.bashrc) to the moment the command itself runs. Measured
/// with the host's own clock, so a slow SSH handshake does not count.
fn shell_startup(fleet: &Fleet, host: &str) -> Duration {
    let out = fleet
        .ssh(host)
        .arg(r#"echo "$(cut -d' ' -f22 /proc/$$/stat) $(getconf CLK_TCK) $(cut -d' ' -f1 /proc/uptime)""#)
        .output()
        .expect("run ssh");
    assert!(
        out.status.success(),
        "ssh {host}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout_line(&out);
    let f: Vec<f64> = line
        .split_whitespace()
        .map(|v| v.parse().unwrap_or_else(|_| panic!("bad output {line:?}")))
        .collect();
    let started = f[0] / f[1];
    Duration::from_secs_f64((f[2] - started).max(0.0))
}

#[test]
fn fleet_hosts_have_private_homes_and_a_shell_delay() {
    let delay = Duration::from_secs(1);
    let fleet = Fleet::start(FleetSpec {
        hosts: 2,
        shell_delay: delay,
        ..Default::default()
    });
    assert_eq!(fleet.env("FLEET_SHELL_DELAY"), Some("1"));

    // Every SSH command pays the delay: over the wire and as seen on the host.
    let t = Instant::now();
    let out = fleet.ssh("web1").arg("true").output().expect("ssh web1");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        t.elapsed() >= delay,
        "ssh web1 true took {:?}, less than the shell delay",
        t.elapsed()
    );
    let slow = shell_startup(&fleet, "web2");
    assert!(
        slow >= delay,
        "the shell started its command after {slow:?}"
    );

    // Without it (changed at run time, web2 only), the shell runs the command at
    // once; web1 keeps paying.
    fleet.set_shell_delay("web2", Duration::ZERO);
    let fast = shell_startup(&fleet, "web2");
    assert!(
        fast < delay / 2,
        "without a shell delay the shell still took {fast:?} (with: {slow:?})"
    );
    assert!(shell_startup(&fleet, "web1") >= delay);

    // ~ is private per host (and not the machine's own /root).
    let marker = format!("fleet-home-{}", std::process::id());
    let out = fleet
        .ssh("web1")
        .arg(format!(
            "cd && test \"$HOME\" = /root && echo web1 >{marker} && cat ~/{marker}"
        ))
        .output()
        .expect("ssh web1");
    assert_eq!(
        stdout_line(&out),
        "web1",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(fleet.home_dir("web1").join(&marker).exists());
    let out = fleet
        .ssh("web2")
        .arg(format!("test ! -e ~/{marker} && ls -A ~"))
        .output()
        .expect("ssh web2");
    assert!(
        out.status.success(),
        "web2 sees web1's ~/{marker}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout_line(&out), ".bashrc\n.profile", "web2's home");
    assert!(
        !Path::new("/root").join(&marker).exists(),
        "the marker leaked into the machine's /root"
    );
    assert_eq!(
        fleet
            .exec_ok("web1", "cat ~/.bashrc | grep -c '^sleep 1$'")
            .trim(),
        "1"
    );
}

/// Release r1 of the demo app on every web host, each answering /health.
fn serve_demo_app(fleet: &Fleet) {
    for host in fleet.hosts() {
        install_demo_app(fleet, &host.name, "r1");
    }
    for host in fleet.hosts() {
        let health = format!("http://{}:8080/health", host.address);
        wait_for(
            Duration::from_secs(10),
            &format!("{} /health", host.name),
            || matches!(http_get(&health), Some((200, _))),
        );
    }
}

/// `n` requests through the load balancer: answers per host (the third word of
/// the demo app's `v1 r1 web2`), failures under "failed".
fn answers(fleet: &Fleet, n: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let key = match http_get(&format!("{}/", fleet.lb_url())) {
            Some((200, body)) => body.split_whitespace().nth(2).unwrap_or("?").to_string(),
            _ => "failed".to_string(),
        };
        *seen.entry(key).or_insert(0) += 1;
    }
    seen
}

fn web_names(fleet: &Fleet) -> Vec<String> {
    fleet.hosts().into_iter().map(|h| h.name).collect()
}

/// A `GET /slow?seconds=N` through the load balancer, in the background.
fn slow_request(
    fleet: &Fleet,
    seconds: u32,
) -> std::thread::JoinHandle<Result<(u16, String), String>> {
    let url = format!("{}/slow?seconds={seconds}", fleet.lb_url());
    std::thread::spawn(move || load::get(&url, Duration::from_secs(30)))
}

/// Whether some web host's app logged that a slow request is in flight there.
fn slow_request_started(fleet: &Fleet) -> bool {
    fleet.hosts().iter().any(|h| {
        std::fs::read_to_string(fleet.srv_dir(&h.name).join("app/shared/log/app.log"))
            .is_ok_and(|log| log.contains("slow request started"))
    })
}

#[test]
fn fleet_nginx_serves_reloads_gracefully_and_shows_old_workers() {
    for at in [At::Local, At::Host] {
        let fleet = Fleet::start(FleetSpec {
            hosts: 3,
            lb: Lb::Nginx(at),
            ..Default::default()
        });
        assert_eq!(fleet.lb_kind(), "nginx");
        let hosts = fleet.hosts();
        let lines: Vec<String> = hosts
            .iter()
            .map(|h| format!("server {}:8080;", h.address))
            .collect();
        let upstreams = fleet.nginx_upstream_path();
        assert_eq!(
            std::fs::read_to_string(&upstreams).unwrap(),
            lines.join("\n") + "\n"
        );
        assert!(fleet.nginx("-t").contains("test is successful"));
        if at == At::Host {
            assert_eq!(fleet.nginx_upstream_file(), "/srv/nginx/upstreams/app.conf");
            assert!(
                fleet
                    .nginx_cmd()
                    .starts_with("nginx -c /srv/nginx/nginx.conf")
            );
        }

        // (No request before the apps run: each failed one would take its server
        // out for nginx's default fail_timeout, 10 s.)
        serve_demo_app(&fleet);
        let seen = answers(&fleet, 9);
        assert_eq!(
            seen.keys().cloned().collect::<Vec<_>>(),
            web_names(&fleet),
            "{at:?}: {seen:?}"
        );

        // A request in flight across a reload: its worker is of the old generation
        // ("is shutting down") until the request is done, then exits.
        let before = fleet.nginx_workers();
        assert!(
            !before.is_empty() && before.iter().all(|w| !w.shutting_down),
            "{before:?}"
        );
        let slow = slow_request(&fleet, 4);
        wait_for(
            Duration::from_secs(10),
            "nginx to hold the slow request",
            || slow_request_started(&fleet),
        );
        // web3 leaves the upstream file; a reload makes that take effect.
        std::fs::write(&upstreams, lines[..2].join("\n") + "\n").unwrap();
        fleet.nginx_reload();
        wait_for(
            Duration::from_secs(10),
            "an nginx worker shutting down",
            || fleet.nginx_workers().iter().any(|w| w.shutting_down),
        );
        let old: Vec<u32> = fleet
            .nginx_workers()
            .iter()
            .filter(|w| w.shutting_down)
            .map(|w| w.pid)
            .collect();
        assert!(
            old.iter().all(|p| before.iter().any(|w| w.pid == *p)),
            "{old:?} {before:?}"
        );
        let seen = answers(&fleet, 8);
        assert_eq!(
            seen.keys().cloned().collect::<Vec<_>>(),
            ["web1", "web2"],
            "{at:?}: web3 still served after the reload: {seen:?}"
        );
        let (status, body) = slow.join().unwrap().expect("the slow request");
        assert_eq!(status, 200, "{body}");
        wait_for(
            Duration::from_secs(10),
            "the old nginx worker to exit",
            || fleet.nginx_workers().iter().all(|w| !w.shutting_down),
        );
        let access = std::fs::read_to_string(fleet.nginx_dir().join("access.log")).unwrap();
        assert!(
            access.contains(&format!("upstream={}:8080", hosts[0].address)),
            "{access}"
        );
    }
}

#[test]
fn fleet_caddy_serves_and_its_upstreams_are_edited_through_the_admin_api() {
    for at in [At::Local, At::Host] {
        let fleet = Fleet::start(FleetSpec {
            hosts: 3,
            lb: Lb::Caddy(at),
            ..Default::default()
        });
        assert_eq!(fleet.lb_kind(), "caddy");
        let dials: Vec<String> = fleet
            .hosts()
            .iter()
            .map(|h| format!("{}:8080", h.address))
            .collect();
        assert_eq!(fleet.caddy_upstreams(), dials);
        serve_demo_app(&fleet);
        // Active health checks bring every upstream in within a check or two.
        wait_for(
            Duration::from_secs(10),
            "Caddy to route to every host",
            || answers(&fleet, 6).len() == 3 && !answers(&fleet, 6).contains_key("failed"),
        );

        // Remove web3 (index 2) and add it back, by the handler's @id.
        let path = format!("/id/{}/upstreams", fleet.caddy_route_id());
        let (status, body) = fleet.caddy_api("DELETE", &format!("{path}/2"), None);
        assert_eq!(status, 200, "{body}");
        assert_eq!(fleet.caddy_upstreams(), dials[..2]);
        let seen = answers(&fleet, 8);
        assert_eq!(
            seen.keys().cloned().collect::<Vec<_>>(),
            ["web1", "web2"],
            "{seen:?}"
        );
        let (status, body) = fleet.caddy_api(
            "POST",
            &path,
            Some(&format!(r#"{{"dial": "{}"}}"#, dials[2])),
        );
        assert_eq!(status, 200, "{body}");
        assert_eq!(fleet.caddy_upstreams(), dials);
        wait_for(
            Duration::from_secs(10),
            "web3 back in Caddy's rotation",
            || answers(&fleet, 3).contains_key("web3"),
        );

        // In-flight requests per upstream.
        assert!(
            fleet
                .caddy_upstream_stats()
                .iter()
                .all(|u| u.num_requests == 0)
        );
        let slow = slow_request(&fleet, 3);
        wait_for(
            Duration::from_secs(10),
            "Caddy to count the slow request",
            || {
                fleet
                    .caddy_upstream_stats()
                    .iter()
                    .map(|u| u.num_requests)
                    .sum::<u64>()
                    == 1
            },
        );
        let stats = fleet.caddy_upstream_stats();
        assert_eq!(
            stats.iter().map(|u| u.address.clone()).collect::<Vec<_>>(),
            dials,
            "{stats:?}"
        );
        assert_eq!(slow.join().unwrap().expect("the slow request").0, 200);

        if at == At::Host {
            // On the lb, the admin API is where Caddy users expect it.
            let out = fleet
                .ssh("lb")
                .arg(format!("curl -sf localhost:2019{path}"))
                .output()
                .expect("ssh lb");
            assert!(
                String::from_utf8_lossy(&out.stdout).contains(&dials[0]),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

#[test]
fn fleet_prometheus_scrapes_haproxy() {
    let fleet = Fleet::start(FleetSpec {
        hosts: 2,
        lb: Lb::Haproxy(At::Local),
        prometheus: true,
        ..Default::default()
    });
    serve_demo_app(&fleet);
    wait_for(
        Duration::from_secs(10),
        "both servers UP in HAProxy",
        || {
            web_names(&fleet)
                .iter()
                .all(|h| fleet.haproxy_server_status(h).as_deref() == Some("UP"))
        },
    );
    assert_eq!(answers(&fleet, 10).get("failed"), None);
    let query = r#"haproxy_server_http_responses_total{proxy="app",code="2xx"}"#;
    let mut series = Vec::new();
    wait_for(
        Duration::from_secs(20),
        "Prometheus to have scraped answers of both servers",
        || {
            series = fleet.prometheus_query(query);
            let servers: Vec<&str> = series
                .iter()
                .filter(|s| s["value"][1].as_str().and_then(|v| v.parse::<f64>().ok()) > Some(0.0))
                .filter_map(|s| s["metric"]["server"].as_str())
                .collect();
            servers.contains(&"web1") && servers.contains(&"web2")
        },
    );
    eprintln!("{query}: {series:?}");
}

/// Every knob of the demo app (demo/app/app.py), one release each, on one host.
#[test]
fn demo_app_knobs_misbehave_per_release() {
    let fleet = Fleet::start(FleetSpec {
        hosts: 1,
        ..Default::default()
    });
    let addr = fleet.address("web1");
    let health = format!("http://{addr}:8080/health");
    let root = format!("http://{addr}:8080/");
    let wait_serving = |release: &str| {
        wait_for(
            Duration::from_secs(10),
            &format!("{release} to serve"),
            || matches!(http_get(&root), Some((_, body)) if body.contains(release)),
        )
    };

    // REVISION: reported by /health and GET /.
    install_release(
        &fleet,
        "web1",
        "r1",
        &[("REVISION", "3f2a9c1\n")],
        "bin/restart",
    );
    wait_for(Duration::from_secs(10), "r1 /health", || {
        http_get(&health) == Some((200, "ok release=r1 revision=3f2a9c1 version=v1\n".into()))
    });
    assert_eq!(http_get(&root), Some((200, "v1 r1 web1 3f2a9c1\n".into())));

    // ERROR_RATE: exactly every 4th GET / fails, /health never.
    install_release(
        &fleet,
        "web1",
        "r2",
        &[("ERROR_RATE", "25%")],
        "bin/restart",
    );
    wait_for(
        Duration::from_secs(10),
        "r2 /health",
        || matches!(http_get(&health), Some((200, body)) if body.contains("release=r2")),
    );
    let statuses: Vec<u16> = (0..20).map(|_| http_get(&root).expect("GET /").0).collect();
    let expected: Vec<u16> = (1..=20)
        .map(|n| if n % 4 == 0 { 500 } else { 200 })
        .collect();
    assert_eq!(statuses, expected);
    assert!((0..5).all(|_| matches!(http_get(&health), Some((200, _)))));

    // HEALTHY_FOR: passes, then 503 for good.
    install_release(&fleet, "web1", "r3", &[("HEALTHY_FOR", "2")], "bin/restart");
    let mut seen = Vec::new();
    wait_for(Duration::from_secs(15), "r3 /health to turn 503", || {
        match http_get(&health) {
            Some((200, body)) if body.contains("release=r3") => seen.push(200),
            Some((503, body)) => {
                assert!(body.contains("healthy for 2 s"), "{body}");
                seen.push(503)
            }
            _ => {}
        }
        seen.last() == Some(&503)
    });
    assert_eq!(seen.first(), Some(&200), "r3 never passed: {seen:?}");
    assert!((0..3).all(|_| http_get(&health).map(|a| a.0) == Some(503)));
    assert_eq!(
        http_get(&root).map(|a| a.0),
        Some(200),
        "GET / still serves"
    );

    // HEALTH_FLAP each: every other /health answer fails.
    install_release(
        &fleet,
        "web1",
        "r4",
        &[("HEALTH_FLAP", "each")],
        "bin/restart",
    );
    wait_serving("r4");
    let flaps: Vec<u16> = (0..6)
        .map(|_| http_get(&health).expect("/health").0)
        .collect();
    assert_eq!(flaps, [200, 503, 200, 503, 200, 503]);

    // HEALTH_FLAP seconds: up and down by the clock (env overrides the file).
    install_release(
        &fleet,
        "web1",
        "r5",
        &[("HEALTH_FLAP", "60")],
        "APP_HEALTH_FLAP=0.3 bin/restart",
    );
    wait_serving("r5");
    let (mut up, mut down) = (0, 0);
    wait_for(Duration::from_secs(10), "r5 /health to flap", || {
        match http_get(&health).map(|a| a.0) {
            Some(200) => up += 1,
            Some(503) => down += 1,
            _ => {}
        }
        up > 1 && down > 1
    });

    // BIND 127.0.0.1: not reachable from here, fine on the host itself.
    install_release(
        &fleet,
        "web1",
        "r6",
        &[("BIND", "127.0.0.1")],
        "bin/restart",
    );
    let on_host = "python3 -c 'import urllib.request as u; print(u.urlopen(\"http://127.0.0.1:8080/health\").read().decode(), end=\"\")'";
    wait_for(Duration::from_secs(10), "r6 on 127.0.0.1", || {
        fleet
            .exec("web1", on_host)
            .stdout
            .starts_with(b"ok release=r6")
    });
    assert_eq!(
        http_get(&health),
        None,
        "r6 reachable from outside its host"
    );
    fleet.exec_ok("web1", "kill $(cat /srv/app/shared/app.pid)");

    // Worker mode: no port, a heartbeat, its own restart and health check.
    install_release(
        &fleet,
        "web1",
        "w1",
        &[("REVISION", "aa11")],
        "APP_MODE=worker bin/restart",
    );
    let check = "/srv/app/current/app.py worker-health";
    wait_for(
        Duration::from_secs(10),
        "the worker's first heartbeat",
        || {
            fleet
                .exec("web1", &format!("{check} 3 revision=aa11"))
                .status
                .success()
        },
    );
    assert!(fleet.exists("web1", "/srv/app/shared/worker.pid"));
    assert_eq!(http_get(&health), None, "a worker listens on no port");
    let beat = fleet
        .read_file("web1", "/srv/app/shared/worker.heartbeat")
        .unwrap();
    assert!(
        beat.starts_with("release=w1 version=v1 revision=aa11 time="),
        "{beat}"
    );
    assert!(
        !fleet
            .exec("web1", &format!("{check} 3 revision=bb22"))
            .status
            .success()
    );
    // A worker release that crashes after 1 s fails the check; restart replaces it.
    install_release(
        &fleet,
        "web1",
        "w2",
        &[("HEALTHY_FOR", "1")],
        "APP_MODE=worker bin/restart",
    );
    wait_for(Duration::from_secs(10), "w2 to crash", || {
        let out = fleet.exec("web1", check);
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not running")
    });
    install_release(&fleet, "web1", "w3", &[], "APP_MODE=worker bin/restart");
    wait_for(Duration::from_secs(10), "w3 to beat", || {
        fleet
            .exec("web1", &format!("{check} 3 release=w3"))
            .status
            .success()
    });
    // health-fail stalls the heartbeat: the check fails once it is 2 s old.
    fleet.write_file("web1", "/srv/app/shared/health-fail", "");
    wait_for(
        Duration::from_secs(10),
        "w3's heartbeat to go stale",
        || !fleet.exec("web1", &format!("{check} 1")).status.success(),
    );
}

/// The load generator through each of the fleet's balancers: per-status, per-host
/// and per-window counts, with one host answering 500 for every other request.
#[test]
fn fleet_load_counts_statuses_hosts_and_windows_through_every_balancer() {
    use crate::support::load::{Load, LoadOptions};
    for lb in [
        Lb::Haproxy(At::Local),
        Lb::Nginx(At::Local),
        Lb::Caddy(At::Local),
    ] {
        let fleet = Fleet::start(FleetSpec {
            hosts: 2,
            lb,
            ..Default::default()
        });
        install_release(&fleet, "web1", "r1", &[], "bin/restart");
        install_release(
            &fleet,
            "web2",
            "r2",
            &[("ERROR_RATE", "50%")],
            "bin/restart",
        );
        wait_for(
            Duration::from_secs(15),
            "both hosts behind the balancer",
            || {
                let seen = answers(&fleet, 4);
                seen.contains_key("web1") && seen.contains_key("web2")
            },
        );

        let load = Load::start_with(
            &fleet.lb_url(),
            LoadOptions {
                connections: 4,
                rate: 100,
                keep_alive: lb == Lb::Haproxy(At::Local),
                ..Default::default()
            },
        );
        wait_for(Duration::from_secs(20), "100 requests sent", || {
            load.sent() >= 100
        });
        let report = load.stop();
        let all = Duration::ZERO..Duration::MAX;
        let context = format!(
            "{lb:?}: {}\n{}",
            report.summary(),
            report.status_table(Duration::from_millis(500))
        );

        let statuses = report.statuses(all.clone());
        assert_eq!(
            statuses.keys().collect::<Vec<_>>(),
            [&Some(200), &Some(500)],
            "{context}"
        );
        let hosts = report.hosts(all.clone());
        assert_eq!(
            hosts.keys().collect::<Vec<_>>(),
            ["web1", "web2"],
            "{context}"
        );
        let by_host_status = report.count_by(all.clone(), |s| {
            Some(format!("{}:{}", s.answer.as_ref()?.host, s.status?))
        });
        let web2_ok = by_host_status.get("web2:200").copied().unwrap_or(0);
        let web2_err = by_host_status.get("web2:500").copied().unwrap_or(0);
        assert_eq!(
            by_host_status.get("web1:500"),
            None,
            "{by_host_status:?}\n{context}"
        );
        assert!(
            web2_ok.abs_diff(web2_err) <= 1,
            "web2 fails every other request: {by_host_status:?}"
        );
        let failed = report.failures();
        assert_eq!(report.failed_of(all.clone()), (web2_err, report.total()));
        assert!(failed.iter().all(|s| {
            s.answer
                .as_ref()
                .is_some_and(|a| a.host == "web2" && a.release == "r2")
        }));
        let windows = report.failures_per_window(Duration::from_millis(500));
        assert_eq!(
            windows.iter().map(|w| w.1).sum::<usize>(),
            failed.len(),
            "{context}"
        );
        assert_eq!(
            windows.iter().map(|w| w.2).sum::<usize>(),
            report.total(),
            "{context}"
        );
        assert_eq!(
            report.versions_by_host(all).into_keys().collect::<Vec<_>>(),
            ["v1@web1", "v1@web2"]
        );
        eprintln!("{context}");
    }
}
