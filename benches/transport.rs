//! The SSH transport against OpenSSH, on the same test fleet, in the same
//! run: connecting to 10 hosts, commands on an open connection, and a bulk
//! transfer. Prints medians and ratios (shipit / OpenSSH; below 1 is
//! faster). Run as root: `cargo bench --bench transport`.

#[path = "../tests/integration/support/fleet.rs"]
mod fleet;

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use bytes::Bytes;
use shipit::transport::ssh::{
    ConnectOptions, SshConfigSource, SshEnv, SshOverrides, SshTarget, SshTransport,
};
use shipit::transport::{ExecRequest, Quiet, Transport, TransportError};

use fleet::{Fleet, FleetOptions, Haproxy};

fn env(home: &Path) -> SshEnv {
    SshEnv {
        home: home.to_path_buf(),
        local_user: "root".into(),
        auth_sock: None,
        passphrase: None,
        allow_prompt: false,
    }
}

fn overrides(fleet: &Fleet) -> SshOverrides {
    SshOverrides {
        user: Some("root".into()),
        identity_file: Some(fleet.identity()),
        known_hosts: Some(fleet.known_hosts()),
        config: SshConfigSource::Disabled,
        ..SshOverrides::default()
    }
}

fn targets(fleet: &Fleet) -> Vec<SshTarget> {
    fleet
        .hosts()
        .into_iter()
        .map(|h| SshTarget {
            name: h.name,
            address: h.address,
            port: None,
            user: None,
        })
        .collect()
}

async fn connect(targets: &[SshTarget], fleet: &Fleet, home: &Path) -> SshTransport {
    let (ssh, errors): (SshTransport, Vec<TransportError>) = SshTransport::connect_with_env(
        targets,
        &overrides(fleet),
        &ConnectOptions::default(),
        env(home),
    )
    .await;
    assert!(errors.is_empty(), "connect errors: {errors:?}");
    ssh
}

fn req(command: &str) -> ExecRequest {
    ExecRequest {
        command: command.into(),
        stdin: None,
        timeout: None,
    }
}

fn sh(cmd: &str) {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn report(what: &str, ours: Vec<Duration>, theirs: Vec<Duration>, baseline: &str) {
    let (a, b) = (median(ours), median(theirs));
    println!(
        "{what:<44} shipit {:>8.1} ms   {baseline:<34} {:>8.1} ms   ratio {:.2}",
        a.as_secs_f64() * 1e3,
        b.as_secs_f64() * 1e3,
        a.as_secs_f64() / b.as_secs_f64()
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let fleet = Fleet::start(FleetOptions {
        hosts: 10,
        haproxy: Haproxy::None,
        bastion: false,
    });
    let home = tempfile::tempdir().unwrap();
    let all = targets(&fleet);
    let config = fleet.ssh_config();
    let rounds = 7;

    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let start = Instant::now();
        let ssh = connect(&all, &fleet, home.path()).await;
        let runs = all.iter().map(|t| ssh.exec(&t.name, req("true"), &Quiet));
        futures::future::join_all(runs).await;
        ours.push(start.elapsed());
        ssh.close().await;

        let start = Instant::now();
        let children: Vec<Child> = all
            .iter()
            .map(|t| {
                Command::new("ssh")
                    .arg("-F")
                    .arg(&config)
                    .arg(&t.name)
                    .arg("true")
                    .spawn()
                    .unwrap()
            })
            .collect();
        for mut c in children {
            assert!(c.wait().unwrap().success());
        }
        theirs.push(start.elapsed());
    }
    report(
        "connect + auth + `true` on 10 hosts",
        ours,
        theirs,
        "10 parallel `ssh host true`",
    );

    // A command that prints before it exits is the common case (every step
    // of a deploy does): it is where delayed acknowledgements would show.
    let ssh = connect(&all[..1], &fleet, home.path()).await;
    let sock = home.path().join("cm.sock");
    sh(&format!(
        "ssh -F {} -M -S {} -o ControlPersist=60 -fN web1",
        config.display(),
        sock.display()
    ));
    for command in ["true", "echo ok"] {
        let mut ours = Vec::new();
        for _ in 0..50 {
            let start = Instant::now();
            ssh.exec("web1", req(command), &Quiet).await.unwrap();
            ours.push(start.elapsed());
        }
        let mut theirs = Vec::new();
        for _ in 0..50 {
            let start = Instant::now();
            sh(&format!(
                "ssh -F {} -S {} web1 {command} >/dev/null",
                config.display(),
                sock.display()
            ));
            theirs.push(start.elapsed());
        }
        report(
            &format!("`{command}` on an open connection"),
            ours,
            theirs,
            "ssh through a ControlMaster",
        );
    }
    let _ = Command::new("ssh")
        .arg("-F")
        .arg(&config)
        .arg("-S")
        .arg(&sock)
        .args(["-O", "exit", "web1"])
        .output();

    let data = Bytes::from(vec![7u8; 64 << 20]);
    let mut ours = Vec::new();
    for _ in 0..5 {
        let mut request = req("cat >/dev/null");
        request.stdin = Some(data.clone().into());
        let start = Instant::now();
        ssh.exec("web1", request, &Quiet).await.unwrap();
        ours.push(start.elapsed());
    }
    let file = home.path().join("bulk");
    std::fs::write(&file, &data).unwrap();
    let mut theirs = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        sh(&format!(
            "ssh -F {} web1 'cat >/dev/null' < {}",
            config.display(),
            file.display()
        ));
        theirs.push(start.elapsed());
    }
    report(
        "64 MiB into `cat >/dev/null`",
        ours,
        theirs,
        "fresh `ssh host cat` < file",
    );
    ssh.close().await;
}
