//! Packing and uploading the release on a real fleet: special files in the
//! source, files larger than a piece of the upload, links, and a ready
//! `.tar.gz`. What each host unpacked is compared with the source.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::fleet::{Fleet, FleetOptions, Haproxy};
use crate::support::shipit::{DEPLOY_TO, Project, host_state, standard_config};

fn fleet(hosts: usize) -> Fleet {
    Fleet::start(FleetOptions {
        hosts,
        haproxy: Haproxy::None,
        bastion: false,
    })
}

/// Incompressible bytes, the same every run.
fn noise(len: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// The checksum of `path` on `host`, or what went wrong.
fn host_sha256(fleet: &Fleet, host: &str, path: &str) -> String {
    let out = fleet.exec_ok(host, &format!("sha256sum '{path}'"));
    out.split_whitespace().next().unwrap().to_string()
}

/// A Rails-like app with a live Puma socket in `tmp/sockets/` and a FIFO in
/// `tmp/`: the deploy leaves both out with one warning line and ships the
/// rest, links as links and a file of many upload pieces byte for byte. It
/// used to hang forever on the FIFO (and fail cryptically on the socket).
#[test]
fn deploys_a_source_with_a_socket_and_a_fifo() {
    let fleet = fleet(2);
    let project = Project::new(&standard_config(&fleet, ""));
    let dist = project.path().join("dist");
    std::fs::create_dir_all(dist.join("tmp/sockets")).unwrap();
    let _puma = std::os::unix::net::UnixListener::bind(dist.join("tmp/sockets/puma.sock")).unwrap();
    let made = Command::new("mkfifo")
        .arg(dist.join("tmp/pipe"))
        .status()
        .unwrap();
    assert!(made.success());
    std::fs::create_dir_all(dist.join("public/assets")).unwrap();
    std::fs::write(dist.join("public/assets/big.bin"), noise(5 << 20)).unwrap();
    std::os::unix::fs::symlink("public/assets/big.bin", dist.join("big-link")).unwrap();

    let mut run = project.spawn(&["test", "deploy"]);
    // Packing is local and quick; a FIFO used to block it forever.
    run.wait_for("packed ./dist", Duration::from_secs(120));
    let run = run.finish();
    run.success();
    let warnings: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("special file"))
        .collect();
    assert_eq!(warnings.len(), 1, "{run}");
    assert!(
        warnings[0].ends_with(
            " warning: app.source ./dist: left out 2 special files (sockets, FIFOs and devices \
             are not shipped): tmp/pipe (FIFO), tmp/sockets/puma.sock (socket)"
        ),
        "{run}"
    );

    let big = sha256(&dist.join("public/assets/big.bin"));
    for host in ["web1", "web2"] {
        let state = host_state(&fleet, host, DEPLOY_TO);
        let release = state.current.expect("a current release");
        let dir = format!("{DEPLOY_TO}/releases/{release}");
        assert_eq!(
            host_sha256(&fleet, host, &format!("{dir}/public/assets/big.bin")),
            big
        );
        assert_eq!(
            fleet.read_link(host, &format!("{dir}/big-link")).as_deref(),
            Some("public/assets/big.bin")
        );
        assert!(fleet.exists(host, &format!("{dir}/tmp/sockets")));
        assert!(!fleet.exists(host, &format!("{dir}/tmp/sockets/puma.sock")));
        assert!(!fleet.exists(host, &format!("{dir}/tmp/pipe")));
        let (status, body) = state.health.expect("health answers");
        assert_eq!(status, 200, "{body}");
    }
}

/// A ready `.tar.gz` is sent from its own file to every host, unchanged.
#[test]
fn deploys_a_ready_archive_as_it_is() {
    let fleet = fleet(2);
    let project = Project::new(
        &standard_config(&fleet, "").replace("source = \"dist\"", "source = \"release.tar.gz\""),
    );
    std::fs::write(project.path().join("dist/blob.bin"), noise(3 << 20)).unwrap();
    let packed = Command::new("tar")
        .args(["czf", "release.tar.gz", "-C", "dist", "."])
        .current_dir(project.path())
        .status()
        .unwrap();
    assert!(packed.success());
    let run = project.shipit(&["test", "deploy", "--json"]);
    run.success();
    let size = std::fs::metadata(project.path().join("release.tar.gz"))
        .unwrap()
        .len();
    let events = run.events();
    let packed = events
        .iter()
        .find(|e| e["event"] == "packed")
        .expect("a packed event");
    assert_eq!(packed["bytes"], size);
    for host in ["web1", "web2"] {
        let sent = events
            .iter()
            .rev()
            .find(|e| e["event"] == "upload-progress" && e["host"] == host)
            .unwrap_or_else(|| panic!("{host} uploaded nothing"));
        assert_eq!(sent["sent"], size, "{sent}");
        let release = host_state(&fleet, host, DEPLOY_TO)
            .current
            .expect("a current release");
        assert_eq!(
            host_sha256(
                &fleet,
                host,
                &format!("{DEPLOY_TO}/releases/{release}/blob.bin")
            ),
            sha256(&project.path().join("dist/blob.bin"))
        );
    }
}
