//! Running the real `shipit` binary against a fleet: a project directory
//! (deploy.toml + the demo app as `dist/`) and a runner that captures what
//! the user would see.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use tempfile::TempDir;

use super::fleet::{Fleet, demo_app_dir};

pub const DEPLOY_TO: &str = "/srv/demo";

/// A project to deploy: `deploy.toml` and `dist/` in a temporary directory.
pub struct Project {
    dir: TempDir,
}

/// What one shipit run printed and how it exited.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs `command` to the end.
    pub fn from_command(command: &mut Command) -> Run {
        Run::from(command.output().expect("run shipit"))
    }

    #[track_caller]
    pub fn success(&self) -> &Run {
        assert_eq!(self.code, 0, "shipit failed:\n{self}");
        self
    }

    #[track_caller]
    pub fn code(&self, code: i32) -> &Run {
        assert_eq!(self.code, code, "unexpected exit code:\n{self}");
        self
    }

    #[track_caller]
    pub fn stderr_has(&self, text: &str) -> &Run {
        assert!(self.stderr.contains(text), "stderr lacks {text:?}:\n{self}");
        self
    }

    #[track_caller]
    pub fn stdout_has(&self, text: &str) -> &Run {
        assert!(self.stdout.contains(text), "stdout lacks {text:?}:\n{self}");
        self
    }

    /// Every stdout line parsed as JSON (`--json`); panics naming the first
    /// line that is not a JSON object.
    #[track_caller]
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .map(
                |line| match serde_json::from_str::<serde_json::Value>(line) {
                    Ok(value) if value.is_object() => value,
                    _ => panic!("stdout line is not a JSON object: {line:?}\n{self}"),
                },
            )
            .collect()
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// The deploy.toml most tests use: the demo app on every fleet host, one
/// host per batch, health checked by release. `extra` is appended (stage
/// override tables such as `[stages.test.health]` change single keys).
pub fn standard_config(fleet: &Fleet, extra: &str) -> String {
    format!(
        r#"[app]
name = "demo"
deploy_to = "{DEPLOY_TO}"
source = "dist"
keep_releases = 3
shared_dirs = ["log"]
restart = "bin/restart"

[ssh]
user = "root"
identity_file = "{identity}"
known_hosts = "{known_hosts}"
config = false

[health]
url = "http://{{address}}:8080/health"
expect_body = "release={{release}}"
timeout = "10s"
interval = "200ms"

[rollout]
rolling_batch_size = 1

[stages.test]
{hosts}

{extra}
"#,
        identity = fleet.identity().display(),
        known_hosts = fleet.known_hosts().display(),
        hosts = fleet
            .hosts_toml()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

impl Project {
    /// A project with `config` as deploy.toml and the demo app (VERSION v1).
    pub fn new(config: &str) -> Project {
        let dir = tempfile::Builder::new()
            .prefix("shipit-project")
            .tempdir()
            .expect("tempdir");
        let dist = dir.path().join("dist");
        copy_dir(&demo_app_dir(), &dist);
        std::fs::write(dir.path().join("deploy.toml"), config).expect("write deploy.toml");
        Project { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Sets the demo app's VERSION for the next deploy.
    pub fn set_version(&self, version: &str) {
        std::fs::write(self.dir.path().join("dist/VERSION"), version).expect("write VERSION");
    }

    pub fn write_config(&self, config: &str) {
        std::fs::write(self.dir.path().join("deploy.toml"), config).expect("write deploy.toml");
    }

    /// Runs `shipit ARGS` in the project directory.
    pub fn shipit(&self, args: &[&str]) -> Run {
        Run::from(self.command(args).output().expect("run shipit"))
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(binary());
        cmd.args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .env_remove("SSH_AUTH_SOCK")
            .env_remove("SHIPIT_CONFIG")
            // The same output wherever the tests run (GitHub Actions included).
            .env_remove("GITHUB_ACTIONS")
            .env_remove("CI")
            .env("NO_COLOR", "1");
        cmd
    }
}

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_shipit"))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        let name = entry.file_name();
        if name == "__pycache__" {
            continue;
        }
        let kind = entry.file_type().expect("file type");
        if kind.is_dir() {
            copy_dir(&entry.path(), &to.join(&name));
        } else {
            std::fs::copy(entry.path(), to.join(&name)).expect("copy");
        }
    }
}

/// What a host has under deploy_to, read directly on the host.
pub struct HostState {
    pub current: Option<String>,
    pub releases: Vec<String>,
    pub bad: Vec<String>,
    pub unfinished: Vec<String>,
    pub log: Vec<serde_json::Value>,
    pub health: Option<(u16, String)>,
}

pub fn host_state(fleet: &Fleet, host: &str, deploy_to: &str) -> HostState {
    let list = |dir: &str| -> Vec<String> {
        let out = fleet.exec_args(
            host,
            &["sh", "-c", "ls -1 \"$1\" 2>/dev/null | sort", "sh", dir],
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    };
    let current = fleet
        .read_link(host, &format!("{deploy_to}/current"))
        .map(|target| target.rsplit('/').next().unwrap_or_default().to_string());
    let log = fleet
        .read_file(host, &format!("{deploy_to}/revisions.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("revisions.log line {l:?}: {e}"))
        })
        .collect();
    HostState {
        current,
        releases: list(&format!("{deploy_to}/releases")),
        bad: list(&format!("{deploy_to}/.shipit/bad")),
        unfinished: list(&format!("{deploy_to}/.shipit/unfinished")),
        log,
        health: super::fleet::http_get(&format!("http://{}:8080/health", fleet.address(host))),
    }
}

/// A shipit run in the background whose stderr is watched line by line.
pub struct Running {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
    stdout: std::thread::JoinHandle<String>,
}

impl Project {
    /// Starts `shipit ARGS` without waiting for it.
    pub fn spawn(&self, args: &[&str]) -> Running {
        use std::io::{BufRead, Read};
        let mut child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start shipit");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut out = child.stdout.take().expect("piped stdout");
        let stdout = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = out.read_to_string(&mut text);
            text
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
            stdout,
        }
    }
}

impl Running {
    /// Waits until stderr shows a line containing `text`; panics with what
    /// was seen after `timeout`.
    #[track_caller]
    pub fn wait_for(&mut self, text: &str, timeout: std::time::Duration) {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(text);
                    self.seen.push(line);
                    if found {
                        return;
                    }
                }
                Err(_) => panic!(
                    "no line with {text:?} within {timeout:?}; stderr so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Sends a signal (`INT`, `TERM`, `KILL`) to shipit.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits up to `timeout` for shipit to exit; true if it did.
    pub fn wait_exit(&mut self, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if self.child.try_wait().expect("wait for shipit").is_some() {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Waits for the run to end and returns all it printed.
    pub fn finish(mut self) -> Run {
        let status = self.child.wait().expect("wait for shipit");
        while let Ok(line) = self.lines.recv_timeout(std::time::Duration::from_secs(2)) {
            self.seen.push(line);
        }
        Run {
            code: status.code().unwrap_or(-1),
            stdout: self.stdout.join().unwrap_or_default(),
            stderr: self.seen.join("\n") + "\n",
        }
    }
}
