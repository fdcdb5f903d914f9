//! The script runs for real against a temporary directory (with an awkward
//! name on purpose) and a stand-in for nginx: a bash "master" whose
//! children are titled like nginx's workers, that on SIGHUP starts new
//! ones and retitles the old ones "is shutting down" (same pid), which
//! then live on for `linger` seconds, as workers finishing their requests
//! would. `fake-nginx` plays the command line: `-T` tests the upstream file
//! (a `bogus` parameter fails) and names the files it read, `-s reload`
//! records the file and sends the master SIGHUP.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::*;

const FAKE_NGINX: &str = r#"#!/bin/bash
dir=$(dirname "$0")
case "$*" in
*-T*)
  if grep -q bogus "$dir/up stream.conf"; then
    echo "nginx: [emerg] invalid parameter \"bogus\" in $dir/up stream.conf:2" >&2
    echo "nginx: configuration file $dir/nginx.conf test failed" >&2
    exit 1
  fi
  printf '# configuration file %s:\npid "%s";\nhttp { upstream app { include x; } }\n\n' "$dir/nginx.conf" "$dir/nginx.pid"
  if [ -e "$dir/not-loaded" ]; then included="$dir/other.conf"; else included="$dir/up stream.conf"; fi
  printf '# configuration file %s:\n' "$included"
  cat "$dir/up stream.conf"
  echo "nginx: the configuration file $dir/nginx.conf syntax is ok" >&2
  ;;
*"-s reload"*)
  { echo ---; cat "$dir/up stream.conf"; } >>"$dir/reloads.log"
  kill -HUP "$(cat "$dir/nginx.pid")"
  ;;
*-V*) echo "nginx version: fake/0" >&2 ;;
esac
"#;

/// The master: `$1` is the directory. The title "is shutting down" is
/// built from pieces so that no worker's own command line contains it
/// before it is retitled.
const FAKE_MASTER: &str = r#"dir=$1
echo $$ >"$dir/nginx.pid"
workers=
spawn() {
  (exec -a "nginx: worker process" bash -c 'trap "t=shutting; exec -a \"nginx: worker process is \$t down\" sleep \$(cat \"\$0/linger\")" USR1; while :; do sleep 0.05; done' "$dir") &
  workers="$workers $!"
}
on_hup() {
  [ -e "$dir/ignore-hup" ] && return
  old=$workers
  workers=
  spawn
  spawn
  for p in $old; do kill -USR1 "$p"; done
}
trap on_hup HUP
trap 'kill $workers 2>/dev/null; exit 0' TERM
spawn
spawn
while :; do sleep 0.05; done
"#;

const FILE: &str = "# managed by shipit\n\
                    server 10.0.0.11:8080;\n\
                    \tserver 10.0.0.12:8080 weight=2;  # web2\n\
                    server 10.0.0.13:8080 down;\n\
                    keepalive 8;";

struct Nginx {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    master: Child,
}

impl Nginx {
    fn start(file: &str) -> Nginx {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("n g'x");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("up stream.conf"), file).unwrap();
        std::fs::write(dir.join("fake-nginx"), FAKE_NGINX).unwrap();
        std::fs::write(dir.join("linger"), "0").unwrap();
        let master = Command::new("bash")
            .arg("-c")
            .arg(FAKE_MASTER)
            .arg("fake-master")
            .arg(&dir)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let nginx = Nginx {
            _tmp: tmp,
            dir,
            master,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while nginx.workers().len() < 2 {
            assert!(Instant::now() < deadline, "the fake nginx did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        nginx
    }

    fn file(&self) -> String {
        self.path("up stream.conf")
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_string()
    }

    fn read(&self) -> String {
        std::fs::read_to_string(self.file()).unwrap()
    }

    fn words(&self) -> Vec<String> {
        vec!["bash".into(), self.path("fake-nginx")]
    }

    fn reloads(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("reloads.log"))
            .unwrap_or_default()
            .split("---\n")
            .skip(1)
            .map(str::to_string)
            .collect()
    }

    fn set(&self, knob: &str, value: &str) {
        std::fs::write(self.dir.join(knob), value).unwrap();
    }

    /// The master's children, as the script would find them.
    fn workers(&self) -> Vec<u32> {
        children(self.master.id())
    }

    fn cmd(
        &self,
        op: Op,
        server: &str,
        wait: Duration,
        reload: Duration,
        probe: Option<&Probe>,
    ) -> Cmd {
        let mut cmd = command(op, &self.file(), server, wait, probe, &self.words());
        // The reload wait is the fifth argument (after sh -c TEXT $0).
        cmd.argv[8] = reload.as_millis().to_string().into();
        cmd
    }

    fn run(&self, op: Op, server: &str, wait: Duration, probe: Option<&Probe>) -> Ran {
        run(&self.cmd(op, server, wait, RELOAD_WAIT, probe))
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.master.id().to_string())
            .status();
        let _ = self.master.wait();
    }
}

fn children(parent: u32) -> Vec<u32> {
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|pid: &u32| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|st| {
                    let rest = st.rsplit_once(") ")?.1;
                    let mut fields = rest.split_whitespace();
                    let state = fields.next()?;
                    (state != "Z").then(|| fields.next()?.parse::<u32>().ok())?
                })
                == Some(parent)
        })
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|title| title.starts_with(b"nginx: worker process"))
        })
        .collect();
    pids.sort_unstable();
    pids
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|st| Some(st.rsplit_once(") ")?.1.split_whitespace().next()? != "Z"))
        .unwrap_or(false)
}

#[derive(Debug)]
struct Ran {
    code: i32,
    answer: Answer,
    stderr: String,
}

fn run(cmd: &Cmd) -> Ran {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd.render())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    Ran {
        code: out.status.code().unwrap_or(-1),
        answer: Answer::parse(&String::from_utf8_lossy(&out.stdout)),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

const SECOND: Duration = Duration::from_secs(1);

/// A port something listens on, for the enable's connection test.
fn listening() -> (std::net::TcpListener, Probe) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    (
        listener,
        Probe::Tcp {
            host: "127.0.0.1".into(),
            port,
        },
    )
}

#[test]
fn a_drain_marks_one_line_down_and_an_enable_puts_it_back() {
    let nginx = Nginx::start(FILE);
    let before = nginx.workers();
    let ran = nginx.run(Op::Down, "10.0.0.12:8080", 10 * SECOND, None);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert_eq!(
        nginx.read(),
        "# managed by shipit\n\
         server 10.0.0.11:8080;\n\
         \tserver 10.0.0.12:8080 weight=2 down;  # web2\n\
         server 10.0.0.13:8080 down;\n\
         keepalive 8;\n"
    );
    // The workers of before the reload, and no other, were waited for.
    let waited: Vec<u32> = ran
        .answer
        .nth("reloaded", 1)
        .unwrap()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(waited, before);
    assert!(ran.answer.has("drained"), "{ran:?}");
    assert!(!before.iter().any(|p| alive(*p)), "old workers gone");
    assert_eq!(nginx.workers().len(), 2, "new workers run");
    assert_eq!(nginx.reloads().len(), 1);

    let (_listener, probe) = listening();
    for server in ["10.0.0.12:8080", "10.0.0.13:8080"] {
        let ran = nginx.run(Op::Up, server, 10 * SECOND, Some(&probe));
        assert_eq!(ran.code, 0, "{ran:?}");
        assert!(
            ran.answer.has("reloaded") && !ran.answer.has("probe"),
            "{ran:?}"
        );
    }
    assert_eq!(
        nginx.read(),
        "# managed by shipit\n\
         server 10.0.0.11:8080;\n\
         \tserver 10.0.0.12:8080 weight=2;  # web2\n\
         server 10.0.0.13:8080;\n\
         keepalive 8;\n"
    );
    // Once more: nothing to change, still tested and reloaded.
    let ran = nginx.run(Op::Up, "10.0.0.13:8080", SECOND, Some(&probe));
    assert_eq!(ran.code, 0, "{ran:?}");
    assert_eq!(nginx.reloads().len(), 4);
}

#[test]
fn a_drain_waits_for_the_old_workers_within_its_timeout() {
    let nginx = Nginx::start(FILE);
    nginx.set("linger", "1");
    let before = nginx.workers();
    let ran = nginx.run(Op::Down, "10.0.0.11:8080", 10 * SECOND, None);
    assert_eq!(ran.code, 0, "{ran:?}");
    // Measured by the script from its reload: the workers lived 1 s more.
    let drained = ran.answer.millis("drained").expect("drained");
    assert!(drained >= SECOND, "{ran:?}");
    assert!(!before.iter().any(|p| alive(*p)));

    // Workers that outlive the wait are named, and the edit stands.
    nginx.set("linger", "5");
    let before = nginx.workers();
    let ran = nginx.run(Op::Down, "10.0.0.12:8080", Duration::from_millis(300), None);
    assert_eq!(ran.code, 0, "{ran:?}");
    let left: Vec<u32> = ran
        .answer
        .nth("left", 1)
        .expect("left")
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(left, before);
    assert!(
        nginx
            .read()
            .contains("server 10.0.0.12:8080 weight=2 down;")
    );
}

#[test]
fn a_refused_test_restores_the_file_byte_for_byte() {
    let file = "server 10.0.0.11:8080;\nserver 10.0.0.12:8080 bogus;";
    let nginx = Nginx::start(file);
    let ran = nginx.run(Op::Down, "10.0.0.11:8080", SECOND, None);
    assert_eq!(ran.code, 4, "{ran:?}");
    assert!(
        ran.stderr
            .contains(" -T` (the configuration test) refused the change, so ")
            && ran
                .stderr
                .contains("is as it was: nginx: [emerg] invalid parameter \"bogus\""),
        "{}",
        ran.stderr
    );
    assert!(!ran.stderr.contains("test failed"), "{}", ran.stderr);
    assert_eq!(nginx.read(), file);
    assert!(nginx.reloads().is_empty());
}

#[test]
fn a_server_not_in_the_file_changes_nothing() {
    let nginx = Nginx::start(FILE);
    for (server, expected) in [
        (
            "10.0.0.99:8080",
            "has no line `server 10.0.0.99:8080 ...;`; nothing was changed",
        ),
        (
            "10.0.0.1",
            "has no line `server 10.0.0.1 ...;`; nothing was changed",
        ),
    ] {
        let ran = nginx.run(Op::Down, server, SECOND, None);
        assert_eq!(ran.code, 3, "{ran:?}");
        assert!(ran.stderr.contains(expected), "{}", ran.stderr);
    }
    std::fs::write(nginx.file(), "server a:1;\nserver a:1 down;\n").unwrap();
    let ran = nginx.run(Op::Down, "a:1", SECOND, None);
    assert_eq!(ran.code, 3, "{ran:?}");
    assert!(ran.stderr.contains("lists server a:1 more than once"));
    assert_eq!(nginx.read(), "server a:1;\nserver a:1 down;\n");
    assert!(nginx.reloads().is_empty());
}

#[test]
fn drains_at_once_keep_each_others_edits() {
    let servers: Vec<String> = (1..=6).map(|i| format!("10.0.0.{i}:8080")).collect();
    let file: String = servers.iter().map(|s| format!("server {s};\n")).collect();
    let nginx = Nginx::start(&file);
    let cmds: Vec<Cmd> = servers
        .iter()
        .map(|s| nginx.cmd(Op::Down, s, 10 * SECOND, RELOAD_WAIT, None))
        .collect();
    std::thread::scope(|scope| {
        let runs: Vec<_> = cmds.iter().map(|c| scope.spawn(move || run(c))).collect();
        for r in runs {
            let ran = r.join().unwrap();
            assert_eq!(ran.code, 0, "{ran:?}");
        }
    });
    let all_down: String = servers
        .iter()
        .map(|s| format!("server {s} down;\n"))
        .collect();
    assert_eq!(nginx.read(), all_down);
    // Each reload saw the one before it plus one more server down: no
    // edit was lost or seen half-written.
    let reloads = nginx.reloads();
    assert_eq!(reloads.len(), 6);
    for (i, seen) in reloads.iter().enumerate() {
        assert_eq!(seen.matches(" down;").count(), i + 1, "reload {i}: {seen}");
        assert_eq!(seen.lines().count(), 6, "reload {i}: {seen}");
    }
}

#[test]
fn a_reload_nginx_does_not_apply_is_undone() {
    let nginx = Nginx::start(FILE);
    nginx.set("ignore-hup", "");
    let before = nginx.workers();
    let cmd = nginx.cmd(
        Op::Down,
        "10.0.0.11:8080",
        SECOND,
        Duration::from_millis(500),
        None,
    );
    let ran = run(&cmd);
    assert_eq!(ran.code, 6, "{ran:?}");
    assert!(
        ran.stderr.contains(&format!(
            "nginx did not apply the change within 0s: workers {} from before the reload still take requests",
            before.iter().map(u32::to_string).collect::<Vec<_>>().join(" ")
        )),
        "{}",
        ran.stderr
    );
    assert_eq!(nginx.read(), FILE);
    // Reloaded once for the change and once more after restoring the file.
    assert_eq!(nginx.reloads().len(), 2);
}

#[test]
fn an_enable_waits_for_the_server_to_accept_connections() {
    let nginx = Nginx::start(FILE);
    let (listener, probe) = listening();
    drop(listener);
    let ran = nginx.run(
        Op::Up,
        "10.0.0.13:8080",
        Duration::from_millis(500),
        Some(&probe),
    );
    assert_eq!(ran.code, 7, "{ran:?}");
    assert!(
        ran.stderr
            .contains("10.0.0.13:8080 does not accept connections from"),
        "{}",
        ran.stderr
    );
    assert_eq!(nginx.read(), FILE, "not put back");
    assert!(nginx.reloads().is_empty());

    let socket = nginx.dir.join("app.sock");
    let unix = Probe::Unix {
        path: socket.to_str().unwrap().to_string(),
    };
    let _listening = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let ran = nginx.run(Op::Up, "10.0.0.13:8080", SECOND, Some(&unix));
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(nginx.read().contains("server 10.0.0.13:8080;\n"));
}

#[test]
fn a_check_says_what_the_preflight_needs() {
    let nginx = Nginx::start(FILE);
    let ran = nginx.run(Op::Check, "", Duration::ZERO, None);
    assert_eq!(ran.code, 0, "{ran:?}");
    let a = &ran.answer;
    assert_eq!(a.get("loaded"), Some("yes"));
    assert_eq!(a.get("writable"), Some("yes"));
    assert_eq!(
        a.get("master"),
        Some(nginx.master.id().to_string().as_str())
    );
    let workers: Vec<String> = nginx.workers().iter().map(u32::to_string).collect();
    assert_eq!(a.get("workers"), Some(workers.join(" ").as_str()));
    assert_eq!(a.confs, [nginx.path("nginx.conf"), nginx.file()]);
    assert_eq!(a.file.as_deref(), Some(FILE));

    nginx.set("not-loaded", "");
    let ran = nginx.run(Op::Check, "", Duration::ZERO, None);
    assert_eq!(ran.answer.get("loaded"), Some("no"));
    assert_eq!(ran.answer.confs[1], nginx.path("other.conf"));

    // Read only: the file, nothing else.
    let ran = nginx.run(Op::Read, "", Duration::ZERO, None);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(ran.answer.fields.is_empty());
    assert_eq!(ran.answer.file.as_deref(), Some(FILE));
}

#[test]
fn a_missing_file_or_nginx_is_named() {
    let nginx = Nginx::start(FILE);
    std::fs::remove_file(nginx.path("nginx.pid")).unwrap();
    let ran = nginx.run(Op::Down, "10.0.0.11:8080", SECOND, None);
    assert_eq!(ran.code, 9, "{ran:?}");
    assert!(
        ran.stderr.contains(&format!(
            "cannot watch nginx's workers: no pid in {} (is nginx running?)",
            nginx.path("nginx.pid")
        )),
        "{}",
        ran.stderr
    );
    assert_eq!(nginx.read(), FILE);

    let gone = Path::new(&nginx.file()).with_file_name("gone.conf");
    let cmd = command(
        Op::Check,
        gone.to_str().unwrap(),
        "",
        Duration::ZERO,
        None,
        &nginx.words(),
    );
    let ran = run(&cmd);
    assert_eq!(ran.code, 3, "{ran:?}");
    assert!(
        ran.stderr.contains("gone.conf does not exist on "),
        "{}",
        ran.stderr
    );
}
