//! The test fleet itself works: isolated hosts, real sshd with strict host keys, the
//! demo app behind HAProxy, bastion isolation, and the fault-injection knobs. If one
//! of these fails, every shipit integration test built on the fleet is suspect.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::fleet::{
    Fleet, FleetOptions, FleetSpec, Haproxy, demo_app_dir, http_get, wait_for,
};

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
    fleet.exec_ok(host, "/srv/app/current/bin/restart");
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
