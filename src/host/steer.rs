//! Steering a running rollout from another machine goes through the
//! hosts, the one place both machines reach:
//!
//! ```text
//! deploy_to/.shipit/steer/
//!   state         one JSON line: what the run holding the lock is doing,
//!                 published by that run (batch, bake, pause, answers)
//!   requests/     present while that run takes requests
//!     <id>        one request (`shipit STAGE pause`, …): one JSON line
//! ```
//!
//! A request names the run it is for (the id in the deploy lock) and is
//! written only while that run holds the lock, into a temporary name then
//! renamed: the run reads whole requests or none, a retry with the same id
//! changes nothing, and a later run never takes it for its own. The run
//! answers through `state`, which outlives it: whoever asked learns what
//! became of the request even once the run is over. A run empties
//! `requests/` when it starts and removes it when it ends.

use serde::{Deserialize, Serialize};

use super::Layout;
use super::lock::{self, HeldLock};
use crate::shell::Cmd;

/// Exit status of [`Layout::steer_request`] when the lock is not (or no
/// longer) held by the run the request is for.
pub const NOT_HELD: u32 = 4;
/// Exit status of [`Layout::steer_request`] when the run takes no
/// requests (it has not opened them yet, or it is over).
pub const CLOSED: u32 = 5;

/// Longest `-m` text a request carries; more is cut when shown.
pub const MAX_MESSAGE: usize = 300;

/// What is asked of the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Ask {
    /// Start no new batch once the one in flight is done, until `resume`.
    Pause {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    Resume,
    /// End the bake now; with `all`, skip every bake still to come too.
    Promote {
        #[serde(default)]
        all: bool,
    },
    /// Stop after the batch in flight; `rollout.on_failure` applies.
    Abort {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    /// Stop after the batch in flight and roll back every switched host.
    Rollback {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    /// Cut the batches not started yet anew.
    Tune {
        /// As in `rolling_batch_size`: `3` or `25%`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        batch_size: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bake_ms: Option<u64>,
    },
}

impl Ask {
    /// What is asked, as a verb: "asks to roll back".
    pub fn verb(&self) -> &'static str {
        match self {
            Ask::Pause { .. } => "pause",
            Ask::Resume => "resume",
            Ask::Promote { all: false } => "end its bake",
            Ask::Promote { all: true } => "skip every bake",
            Ask::Abort { .. } => "abort",
            Ask::Rollback { .. } => "roll back",
            Ask::Tune { .. } => "retune its batches",
        }
    }

    /// The command's name: `pause`, `promote --all`, …
    pub fn name(&self) -> &'static str {
        match self {
            Ask::Pause { .. } => "pause",
            Ask::Resume => "resume",
            Ask::Promote { all: false } => "promote",
            Ask::Promote { all: true } => "promote --all",
            Ask::Abort { .. } => "abort",
            Ask::Rollback { .. } => "rollback",
            Ask::Tune { .. } => "tune",
        }
    }
}

/// One request, as written on the hosts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Unique per request; also its file name.
    pub id: String,
    /// The run it is for: the id in the deploy lock.
    pub run: String,
    /// `user@machine` or the CI actor.
    pub by: String,
    pub machine: String,
    /// UTC, RFC 3339 with milliseconds, by the requester's clock.
    pub time: String,
    #[serde(flatten)]
    pub ask: Ask,
}

impl Request {
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("requests serialize")
    }

    /// The message shown with the request, if any.
    pub fn message(&self) -> Option<&str> {
        match &self.ask {
            Ask::Pause { message } | Ask::Abort { message } | Ask::Rollback { message } => {
                message.as_deref()
            }
            _ => None,
        }
    }

    /// An abort or a rollback: the run stops on it.
    pub fn stops(&self) -> bool {
        matches!(self.ask, Ask::Abort { .. } | Ask::Rollback { .. })
    }

    pub fn is_rollback(&self) -> bool {
        matches!(self.ask, Ask::Rollback { .. })
    }

    /// A request read back from a host, file `name` holding `line`. Anyone
    /// who can log in as the deploy user can write one, so what is shown
    /// of it is made plain; the error keeps the id to answer it with.
    pub fn parse(name: &str, line: &str) -> Result<Request, (String, String)> {
        let name = plain(name, 64);
        let mut request: Request = serde_json::from_str(line).map_err(|e| {
            (
                name.clone(),
                format!(
                    "not a request this shipit understands ({e}); a newer shipit may have sent it"
                ),
            )
        })?;
        if request.id != name {
            return Err((name, "its id is not its file name".into()));
        }
        lock::check_run_id(&request.run).map_err(|e| (name.clone(), e))?;
        request.by = plain(&request.by, 100);
        request.machine = plain(&request.machine, 100);
        request.time = plain(&request.time, 40);
        if let Ask::Pause {
            message: Some(message),
        }
        | Ask::Abort {
            message: Some(message),
        }
        | Ask::Rollback {
            message: Some(message),
        } = &mut request.ask
        {
            *message = plain(message, MAX_MESSAGE);
        }
        Ok(request)
    }
}

/// A request id: the requester's time, pid and clock bits, which no two
/// requests share, in characters that make a plain file name.
pub fn request_id(now: jiff::Timestamp, pid: u32) -> String {
    format!(
        "{}-{pid}-{:08x}",
        now.strftime("%Y%m%dT%H%M%S"),
        now.subsec_nanosecond() as u32
    )
}

/// Whether `id` is a name [`request_id`] can make: a plain file name.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Text from a host, made fit to print: control characters become `?`
/// and it is cut at `max` characters.
pub fn plain(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .take(max)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if text.chars().count() > max {
        out.push('…');
    }
    out
}

/// What became of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Taken; it acts at the next safe point.
    Accepted,
    /// It took effect.
    Done,
    /// Not possible, and why (`detail`).
    Refused,
    /// Too late or nothing to do, and why.
    Ignored,
}

impl Outcome {
    /// The request will not do anything (more).
    pub fn is_final(self) -> bool {
        !matches!(self, Outcome::Accepted)
    }
}

/// The run's answer to one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    pub id: String,
    pub action: String,
    pub by: String,
    pub outcome: Outcome,
    /// For people: "pausing once batch 2/4 is back in service".
    pub detail: String,
}

/// Where the run is, as published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// Uploading and unpacking on every host.
    Prepare,
    /// A batch is being rolled out.
    Batch,
    /// A batch is back in service and watched.
    Bake,
    /// Between batches, paused.
    Paused,
    /// Returning switched hosts to their previous release.
    Undo,
    /// Cleanup, hooks, bookkeeping.
    Finish,
    Ended,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Paused {
    pub by: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// How long it had been paused when the state was published.
    pub for_ms: u64,
}

/// How the run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ended {
    pub exit_code: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// What a running rollout publishes about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub run: String,
    /// `deploy` or `rollback`.
    pub op: String,
    pub release: String,
    pub by: String,
    pub machine: String,
    pub pid: u32,
    /// When the run started (UTC).
    pub since: String,
    pub stage: Stage,
    /// The batch in flight or last done (1-based; 0 before the first).
    pub batch: usize,
    pub of: usize,
    /// Left of the bake when the state was published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bake_left_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<Paused>,
    /// Requests taken that act at the next safe point, for people.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<String>,
    /// `promote --all` by this requester: no further bake.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_bakes: Option<String>,
    /// Answers to every request seen, oldest first.
    #[serde(default)]
    pub answers: Vec<Answer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<Ended>,
}

impl State {
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("states serialize")
    }

    pub fn answer(&self, id: &str) -> Option<&Answer> {
        self.answers.iter().rev().find(|a| a.id == id)
    }
}

/// What [`Layout::steer_read`] found on one host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    pub lock: Option<HeldLock>,
    pub state: Option<State>,
    /// Seconds since the state was published, by the host's clock.
    pub state_age_secs: u64,
    /// The requests directory exists: the run publishing `state` takes
    /// requests.
    pub open: bool,
}

impl Seen {
    pub fn parse(stdout: &str) -> Result<Seen, String> {
        let mut seen = Seen::default();
        let mut lock_lines = Vec::new();
        for line in stdout.lines() {
            match line.split_once('\t') {
                Some(("lock-run" | "lock-age" | "lock-info", _)) => lock_lines.push(line),
                // A state this shipit cannot read is no state it can use.
                Some(("steer-state", state)) => seen.state = serde_json::from_str(state).ok(),
                Some(("steer-age", age)) => {
                    seen.state_age_secs = age.trim().parse::<i64>().unwrap_or(0).max(0) as u64;
                }
                None if line == "steer-open" => seen.open = true,
                _ => return Err(format!("unexpected line: {line:?}")),
            }
        }
        if !lock_lines.is_empty() {
            seen.lock = Some(lock::parse_held(lock_lines.into_iter())?);
        }
        Ok(seen)
    }
}

/// The requests a poll found: those it could read, and those it could not
/// (id, why).
#[derive(Debug, Default)]
pub struct Polled {
    pub requests: Vec<Request>,
    pub unreadable: Vec<(String, String)>,
}

impl Polled {
    pub fn parse(stdout: &str) -> Polled {
        let mut polled = Polled::default();
        for line in stdout.lines() {
            let Some((name, text)) = line.split_once('\t') else {
                continue;
            };
            match Request::parse(name, text) {
                Ok(request) => polled.requests.push(request),
                Err(unreadable) => polled.unreadable.push(unreadable),
            }
        }
        polled
    }
}

/// How [`Layout::steer_publish`] treats the requests directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requests {
    /// Empty it: a run starting takes requests from now on.
    Open,
    Keep,
    /// Remove it: the run is over and takes no more.
    Close,
}

impl Layout {
    /// Writes the run's `state` (atomically) and appends `log` lines to
    /// revisions.log.
    pub fn steer_publish(&self, requests: Requests, state: &State, log: &[String]) -> Cmd {
        let mode = match requests {
            Requests::Open => "open",
            Requests::Keep => "keep",
            Requests::Close => "close",
        };
        let mut args = vec![
            self.deploy_to().to_string(),
            mode.to_string(),
            state.to_line(),
        ];
        args.extend(log.iter().cloned());
        Cmd::script("steer-publish", PUBLISH, args)
    }

    /// Lists the requests for the run holding the lock: one `id<TAB>line`
    /// per request.
    pub fn steer_poll(&self) -> Cmd {
        Cmd::script("steer-poll", POLL, [self.deploy_to().to_string()])
    }

    /// Writes `request` for its run: exits [`NOT_HELD`] if that run does
    /// not hold the lock here, [`CLOSED`] if it takes no requests.
    pub fn steer_request(&self, request: &Request) -> Cmd {
        // The id names a file on the host: it never holds a `/` or a
        // leading dot (`request_id` makes it so).
        debug_assert!(valid_id(&request.id), "{:?}", request.id);
        Cmd::script(
            "steer-request",
            REQUEST,
            [
                self.deploy_to().to_string(),
                request.run.clone(),
                request.id.clone(),
                request.to_line(),
            ],
        )
    }

    /// Read-only: the lock, the published state and whether requests are
    /// taken. Parsed by [`Seen::parse`].
    pub fn steer_read(&self) -> Cmd {
        Cmd::script("steer-read", READ, [self.deploy_to().to_string()])
    }
}

const PUBLISH: &str = r#"d=$1 mode=$2 state=$3; shift 3
s="$d/.shipit/steer"
mkdir -p "$s" || exit
case $mode in
  open) rm -rf "$s/requests" && mkdir "$s/requests" || exit ;;
  close) rm -rf "$s/requests" ;;
esac
printf '%s\n' "$state" > "$s/state.tmp" && mv -f "$s/state.tmp" "$s/state" || exit
for line in "$@"; do printf '%s\n' "$line" >> "$d/revisions.log" || exit; done"#;

const POLL: &str = r#"for f in "$1/.shipit/steer/requests"/*; do
  [ -f "$f" ] || continue
  line=; { IFS= read -r line <"$f"; } 2>/dev/null
  printf '%s\t%s\n' "${f##*/}" "$line"
done
exit 0"#;

const REQUEST: &str = r#"d=$1 run=$2 id=$3 line=$4 r="$1/.shipit/steer/requests"
held=; { IFS= read -r held <"$d/.shipit/lock/run"; } 2>/dev/null
[ "$held" = "$run" ] || { echo "run $run does not hold the deploy lock here" >&2; exit 4; }
[ -d "$r" ] || { echo "run $run takes no requests" >&2; exit 5; }
if printf '%s\n' "$line" > "$r/.$id.tmp" 2>/dev/null && mv -f "$r/.$id.tmp" "$r/$id" 2>/dev/null; then exit 0; fi
rm -f "$r/.$id.tmp" 2>/dev/null
echo "run $run stopped taking requests" >&2; exit 5"#;

const READ: &str = r#"l="$1/.shipit/lock" s="$1/.shipit/steer"
if [ -d "$l" ]; then
  run= hb= info=
  { IFS= read -r run <"$l/run"; } 2>/dev/null
  { IFS= read -r hb <"$l/heartbeat"; } 2>/dev/null
  { IFS= read -r info <"$l/info"; } 2>/dev/null
  printf 'lock-run\t%s\nlock-age\t%s\nlock-info\t%s\n' "$run" "$(( $(date +%s) - ${hb:-0} ))" "$info"
fi
state=; { IFS= read -r state <"$s/state"; } 2>/dev/null
if [ -n "$state" ]; then
  at=$(date -r "$s/state" +%s 2>/dev/null) || at=$(date +%s)
  printf 'steer-state\t%s\nsteer-age\t%s\n' "$state" "$(( $(date +%s) - at ))"
fi
[ -d "$s/requests" ] && echo steer-open
exit 0"#;

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;
    use crate::host::lock::{LockInfo, LockKind};

    fn run(cmd: &Cmd) -> (i32, String, String) {
        let out = Command::new("sh")
            .arg("-c")
            .arg(cmd.render())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into(),
            String::from_utf8_lossy(&out.stderr).into(),
        )
    }

    fn request(id: &str, run: &str, ask: Ask) -> Request {
        Request {
            id: id.into(),
            run: run.into(),
            by: "alice@laptop".into(),
            machine: "laptop".into(),
            time: "2026-11-22T10:15:00.123Z".into(),
            ask,
        }
    }

    pub(crate) fn state(run: &str) -> State {
        State {
            run: run.into(),
            op: "deploy".into(),
            release: "20261122101500".into(),
            by: "bob@ci".into(),
            machine: "ci".into(),
            pid: 42,
            since: "2026-11-22T10:15:00Z".into(),
            stage: Stage::Batch,
            batch: 1,
            of: 4,
            bake_left_ms: None,
            paused: None,
            pending: Vec::new(),
            skip_bakes: None,
            answers: Vec::new(),
            ended: None,
        }
    }

    #[test]
    fn requests_round_trip_as_one_line() {
        for ask in [
            Ask::Pause {
                message: Some("checking\ndashboards".into()),
            },
            Ask::Pause { message: None },
            Ask::Resume,
            Ask::Promote { all: true },
            Ask::Abort { message: None },
            Ask::Rollback {
                message: Some("bad release".into()),
            },
            Ask::Tune {
                batch_size: Some("25%".into()),
                bake_ms: Some(10_000),
            },
        ] {
            let r = request("r1", "run-a", ask);
            let line = r.to_line();
            assert!(!line.contains('\n'), "{line}");
            let back = Request::parse("r1", &line).unwrap();
            assert_eq!(back.ask.name(), r.ask.name());
            assert_eq!(back.run, "run-a");
        }
        let line = r#"{"id":"r2","run":"a","by":"x","machine":"m","time":"t","action":"tune","batch_size":"3"}"#;
        assert_eq!(
            Request::parse("r2", line).unwrap().ask,
            Ask::Tune {
                batch_size: Some("3".into()),
                bake_ms: None
            }
        );
    }

    #[test]
    fn what_a_host_holds_is_checked_and_made_plain() {
        // Unknown actions (a newer shipit) and garbage keep their id, so
        // they can be answered.
        let line = r#"{"id":"r1","run":"a","by":"x","machine":"m","time":"t","action":"scale"}"#;
        let (id, why) = Request::parse("r1", line).unwrap_err();
        assert_eq!(id, "r1");
        assert!(why.contains("newer shipit"), "{why}");
        assert_eq!(Request::parse("r\u{1b}2", "junk").unwrap_err().0, "r?2");
        // The id must be the file name: no request answers for another.
        let line = request("r1", "a", Ask::Abort { message: None }).to_line();
        assert!(Request::parse("r9", &line).is_err());
        // A run id shipit cannot have written.
        let line = request("r1", "a\u{7}b", Ask::Abort { message: None }).to_line();
        assert!(Request::parse("r1", &line).is_err());
        // Control characters and long messages are made fit to print.
        let mut r = request(
            "r1",
            "a",
            Ask::Pause {
                message: Some(format!("\u{1b}[2J{}", "x".repeat(400))),
            },
        );
        r.by = "eve\r@host".into();
        let back = Request::parse("r1", &r.to_line()).unwrap();
        assert_eq!(back.by, "eve?@host");
        let message = back.message().unwrap();
        assert!(message.starts_with("?[2Jxxx") && message.ends_with('…'));
        assert_eq!(message.chars().count(), MAX_MESSAGE + 1);
    }

    #[test]
    fn request_ids_make_plain_file_names() {
        let now: jiff::Timestamp = "2026-11-22T10:15:00.5Z".parse().unwrap();
        let id = request_id(now, 4242);
        assert_eq!(id, "20261122T101500-4242-1dcd6500");
        assert!(valid_id(&id));
        for bad in ["", ".hidden", "a/b", "a b", &"x".repeat(65)] {
            assert!(!valid_id(bad), "{bad:?}");
        }
    }

    fn lock(dir: &std::path::Path, run: &str) {
        let l = dir.join(".shipit/lock");
        std::fs::create_dir_all(&l).unwrap();
        std::fs::write(l.join("run"), format!("{run}\n")).unwrap();
        std::fs::write(l.join("heartbeat"), "0\n").unwrap();
        let info = LockInfo {
            run: run.into(),
            kind: LockKind::Deploy,
            stage: "production".into(),
            by: "bob@ci".into(),
            machine: "ci".into(),
            pid: 42,
            since: "2026-11-22T10:15:00Z".into(),
            release: None,
            message: None,
            lease_secs: 60,
        };
        std::fs::write(l.join("info"), info.to_line() + "\n").unwrap();
    }

    #[test]
    fn a_request_reaches_only_the_run_it_names_while_it_takes_requests() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = Layout::new(tmp.path().join("app dir").to_str().unwrap());
        let d = tmp.path().join("app dir");
        std::fs::create_dir_all(&d).unwrap();
        let pause = request("r1", "run-a", Ask::Pause { message: None });

        // No lock at all: not held.
        assert_eq!(run(&layout.steer_request(&pause)).0, NOT_HELD as i32);
        // Held by run-a, which has not opened requests yet: closed.
        lock(&d, "run-a");
        assert_eq!(run(&layout.steer_request(&pause)).0, CLOSED as i32);
        let (code, out, _) = run(&layout.steer_read());
        assert_eq!(code, 0);
        let seen = Seen::parse(&out).unwrap();
        assert_eq!(seen.lock.as_ref().unwrap().run, "run-a");
        assert!(seen.state.is_none() && !seen.open);

        // run-a opens, publishing its state and a revisions.log line.
        let (code, _, err) = run(&layout.steer_publish(
            Requests::Open,
            &state("run-a"),
            &["{\"action\":\"pause\"}".to_string()],
        ));
        assert_eq!(code, 0, "{err}");
        assert_eq!(
            std::fs::read_to_string(d.join("revisions.log")).unwrap(),
            "{\"action\":\"pause\"}\n"
        );
        let (code, _, err) = run(&layout.steer_request(&pause));
        assert_eq!(code, 0, "{err}");
        // Written again (a retry): still one request.
        assert_eq!(run(&layout.steer_request(&pause)).0, 0);
        // For another run: refused, nothing written.
        let other = request("r2", "run-b", Ask::Abort { message: None });
        assert_eq!(run(&layout.steer_request(&other)).0, NOT_HELD as i32);
        let (_, out, _) = run(&layout.steer_poll());
        let polled = Polled::parse(&out);
        assert_eq!(polled.requests, vec![pause.clone()]);
        assert!(polled.unreadable.is_empty());
        // A half-written request (a temporary name) is not listed; a file
        // written by hand that is no request is, as unreadable.
        std::fs::write(d.join(".shipit/steer/requests/.r3.tmp"), "{").unwrap();
        std::fs::write(d.join(".shipit/steer/requests/r4"), "hello\n").unwrap();
        let polled = Polled::parse(&run(&layout.steer_poll()).1);
        assert_eq!(polled.requests.len(), 1);
        assert_eq!(polled.unreadable.len(), 1);
        assert_eq!(polled.unreadable[0].0, "r4");

        let seen = Seen::parse(&run(&layout.steer_read()).1).unwrap();
        assert!(seen.open);
        assert_eq!(seen.state.as_ref().unwrap().run, "run-a");
        assert!(seen.state_age_secs <= 1);

        // The run ends: its state stays (with the answers), requests go.
        let mut ended = state("run-a");
        ended.stage = Stage::Ended;
        ended.ended = Some(Ended {
            exit_code: 4,
            message: None,
        });
        assert_eq!(
            run(&layout.steer_publish(Requests::Close, &ended, &[])).0,
            0
        );
        assert_eq!(run(&layout.steer_request(&pause)).0, CLOSED as i32);
        let seen = Seen::parse(&run(&layout.steer_read()).1).unwrap();
        assert!(!seen.open);
        assert_eq!(seen.state.unwrap().ended.unwrap().exit_code, 4);
        // A new run opening starts with no requests.
        assert_eq!(
            run(&layout.steer_publish(Requests::Open, &state("run-a"), &[])).0,
            0
        );
        assert!(
            Polled::parse(&run(&layout.steer_poll()).1)
                .requests
                .is_empty()
        );
    }

    #[test]
    fn states_round_trip_and_name_their_answers() {
        let mut s = state("r");
        s.answers.push(Answer {
            id: "q1".into(),
            action: "pause".into(),
            by: "alice@laptop".into(),
            outcome: Outcome::Accepted,
            detail: "pausing once batch 1/4 is done".into(),
        });
        s.answers.push(Answer {
            outcome: Outcome::Done,
            detail: "paused".into(),
            ..s.answers[0].clone()
        });
        let back: State = serde_json::from_str(&s.to_line()).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.answer("q1").unwrap().outcome, Outcome::Done);
        assert!(Outcome::Done.is_final() && !Outcome::Accepted.is_final());
        assert!(Seen::parse("bogus line").is_err());
    }
}
