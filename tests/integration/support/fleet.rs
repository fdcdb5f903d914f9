//! STAND-IN until the real `tests/integration/support/fleet.rs` lands on
#![allow(dead_code)]
//! main: the same API, driving `tests/fleet/fleet.sh`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Haproxy {
    #[default]
    None,
    Local,
    Host,
}

#[derive(Debug, Clone, Default)]
pub struct FleetOptions {
    pub hosts: usize,
    pub haproxy: Haproxy,
    pub bastion: bool,
}

pub struct Fleet {
    dir: tempfile::TempDir,
    env: HashMap<String, String>,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fleet/fleet.sh")
}

impl Fleet {
    pub fn start(options: FleetOptions) -> Fleet {
        let dir = tempfile::Builder::new()
            .prefix("shipit-fleet-")
            .tempdir()
            .expect("tempdir");
        let mut cmd = Command::new("bash");
        cmd.arg(script())
            .arg("up")
            .arg(dir.path())
            .arg("--hosts")
            .arg(options.hosts.to_string())
            .arg("--haproxy")
            .arg(match options.haproxy {
                Haproxy::None => "none",
                Haproxy::Local => "local",
                Haproxy::Host => "host",
            });
        if options.bastion {
            cmd.arg("--bastion");
        }
        let out = cmd.output().expect("run fleet.sh");
        assert!(
            out.status.success(),
            "fleet.sh up failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(dir.path().join("fleet.env")).expect("fleet.env");
        let env = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
            .collect();
        Fleet { dir, env }
    }

    fn var(&self, name: &str) -> String {
        self.env.get(name).cloned().unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    pub fn identity(&self) -> PathBuf {
        PathBuf::from(self.var("FLEET_IDENTITY"))
    }
    pub fn known_hosts(&self) -> PathBuf {
        PathBuf::from(self.var("FLEET_KNOWN_HOSTS"))
    }
    pub fn known_hosts_hashed(&self) -> PathBuf {
        PathBuf::from(self.var("FLEET_KNOWN_HOSTS_HASHED"))
    }
    pub fn ssh_config(&self) -> PathBuf {
        PathBuf::from(self.var("FLEET_SSH_CONFIG"))
    }
    pub fn hosts(&self) -> Vec<String> {
        self.var("FLEET_HOSTS")
            .split_whitespace()
            .map(String::from)
            .collect()
    }
    pub fn address(&self, name: &str) -> String {
        self.var(&format!("FLEET_ADDR_{name}"))
    }
    pub fn bastion_address(&self) -> Option<String> {
        Some(self.var("FLEET_BASTION_ADDR")).filter(|s| !s.is_empty())
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        let out = Command::new("bash")
            .arg(script())
            .args(args)
            .output()
            .expect("run fleet.sh");
        assert!(
            out.status.success(),
            "fleet.sh {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    pub fn exec(&self, host: &str, cmd: &str) -> String {
        let dir = self.dir.path().to_string_lossy().into_owned();
        let out = self.run(&["exec", &dir, host, "--", "sh", "-c", cmd]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
    pub fn stop_sshd(&self, host: &str) {
        let dir = self.dir.path().to_string_lossy().into_owned();
        self.run(&["sshd", &dir, host, "stop"]);
    }
    pub fn start_sshd(&self, host: &str) {
        let dir = self.dir.path().to_string_lossy().into_owned();
        self.run(&["sshd", &dir, host, "start"]);
    }
    pub fn link_down(&self, host: &str) {
        let dir = self.dir.path().to_string_lossy().into_owned();
        self.run(&["link", &dir, host, "down"]);
    }
    pub fn link_up(&self, host: &str) {
        let dir = self.dir.path().to_string_lossy().into_owned();
        self.run(&["link", &dir, host, "up"]);
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let dir = self.dir.path().to_string_lossy().into_owned();
        let _ = Command::new("bash")
            .arg(script())
            .args(["down", &dir])
            .output();
    }
}
