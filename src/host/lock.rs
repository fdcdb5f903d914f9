//! The deploy lock, kept on the hosts themselves so every laptop and CI
//! runner sees it.
//!
//! ```text
//! deploy_to/.shipit/lock/        created with mkdir: exactly one run wins
//!   run                          the holder's run id
//!   info                         one JSON line: who, where, pid, since, what
//!   heartbeat                    the host's clock (epoch seconds) at the last refresh
//! ```
//!
//! A run takes the lock on every host it touches, all or nothing: at once
//! first, then, if a host refused, one host after another in name order
//! (`commands::lock::acquire`): two runs can never each hold half a fleet. The holder refreshes the heartbeat while it
//! runs; a lock whose heartbeat is older than its lease, by the *host's*
//! clock, belongs to a run that died and may be broken with
//! `--break-stale-lock`. Manual locks (`shipit STAGE lock`) have no lease.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Layout;
use crate::shell::Cmd;

/// Exit status of the lock scripts when another run holds the lock.
pub const HELD: u32 = 4;

/// How long one lock command (take, refresh, break, give back) may take on
/// one host. A refresh that takes longer counts as not done there: that
/// host keeps its previous heartbeat until the next round.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// How often the holder refreshes the heartbeat: every quarter of the lease.
pub fn refresh_period(lease: Duration) -> Duration {
    (lease / 4).max(Duration::from_millis(500))
}

/// What a lease must leave beyond one period and one round of refreshes:
/// the host clock counts whole seconds, and the round trips themselves.
const LEASE_MARGIN: Duration = Duration::from_secs(6);

/// The shortest lease with which a live run's lock never looks stale.
/// Between two heartbeats on one host pass at most one period and one round
/// of refreshes, and a round lasts as long as its slowest host (up to
/// [`COMMAND_TIMEOUT`]): `lease - lease/4 >= COMMAND_TIMEOUT + LEASE_MARGIN`.
pub const MIN_LEASE: Duration =
    Duration::from_secs((COMMAND_TIMEOUT.as_secs() + LEASE_MARGIN.as_secs()) * 4 / 3);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockKind {
    Deploy,
    Rollback,
    Manual,
    /// `shipit STAGE cleanup`.
    Cleanup,
    /// `shipit STAGE exec --lock`.
    Exec,
}

/// What a lock says about its holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    pub run: String,
    pub kind: LockKind,
    pub stage: String,
    /// `user@machine` or the CI actor.
    pub by: String,
    pub machine: String,
    pub pid: u32,
    /// UTC, RFC 3339, by the clock of the machine that took it.
    pub since: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Seconds without a heartbeat after which the lock is stale; 0 for
    /// manual locks, which never go stale.
    pub lease_secs: u64,
}

impl LockInfo {
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("LockInfo serializes")
    }

    /// One line for messages: "deploy of 2026… by ana@laptop (pid 4242 on laptop) since …: message".
    pub fn describe(&self) -> String {
        let what = match (self.kind, &self.release) {
            (LockKind::Manual, _) => "manual lock".to_string(),
            (kind, Some(release)) => format!("{} of {release}", kind_name(kind)),
            (kind, None) => kind_name(kind).to_string(),
        };
        let mut text = format!(
            "{what} by {} (pid {} on {}) since {}",
            self.by, self.pid, self.machine, self.since
        );
        if let Some(message) = &self.message {
            text.push_str(&format!(": {message:?}"));
        }
        text
    }
}

fn kind_name(kind: LockKind) -> &'static str {
    match kind {
        LockKind::Deploy => "deploy",
        LockKind::Rollback => "rollback",
        LockKind::Manual => "manual lock",
        LockKind::Cleanup => "cleanup",
        LockKind::Exec => "exec",
    }
}

/// A lock found on a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldLock {
    pub run: String,
    /// `None` if the info file is missing or unreadable (a holder killed
    /// between mkdir and writing it).
    pub info: Option<LockInfo>,
    /// Seconds since the last heartbeat, by the host's clock.
    pub age_secs: u64,
}

impl HeldLock {
    /// Stale: its run stopped refreshing it. `local_machine` and
    /// `pid_alive` let a run on the same machine recognise a dead holder
    /// at once instead of waiting for the lease.
    pub fn is_stale(&self, local_machine: &str, pid_alive: impl Fn(u32) -> bool) -> bool {
        match &self.info {
            None => self.age_secs > 60,
            Some(info) if info.kind == LockKind::Manual => false,
            Some(info) => {
                self.age_secs > info.lease_secs
                    || (info.machine == local_machine && !pid_alive(info.pid))
            }
        }
    }

    pub fn describe(&self) -> String {
        match &self.info {
            Some(info) => info.describe(),
            None => format!("run {} (no details recorded)", self.run),
        }
    }
}

/// What the acquire script said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    Acquired,
    Held(Box<HeldLock>),
    /// Another run is taking this host's lock over at this very moment;
    /// asking again shortly shows who got it.
    Busy,
}

impl Attempt {
    /// Parses the acquire or break script's stdout.
    pub fn parse(stdout: &str) -> Result<Attempt, String> {
        let mut lines = stdout.lines();
        match lines.next() {
            Some("acquired") => Ok(Attempt::Acquired),
            Some("held") => parse_held(lines).map(|h| Attempt::Held(Box::new(h))),
            Some("busy") => Ok(Attempt::Busy),
            other => Err(format!("unexpected lock script output: {other:?}")),
        }
    }
}

/// Parses `lock-run`, `lock-age` and `lock-info` lines (also found in the
/// probe's output).
pub fn parse_held<'a>(lines: impl Iterator<Item = &'a str>) -> Result<HeldLock, String> {
    let mut held = HeldLock {
        run: String::new(),
        info: None,
        age_secs: 0,
    };
    for line in lines {
        match line.split_once('\t') {
            Some(("lock-run", run)) => {
                check_run_id(run).map_err(|e| {
                    format!(
                        "deploy_to/.shipit/lock/run: {e}; if no run holds this lock, remove \
                         deploy_to/.shipit/lock on the host"
                    )
                })?;
                held.run = run.to_string();
            }
            Some(("lock-age", age)) => held.age_secs = parse_age(age),
            Some(("lock-info", info)) => held.info = serde_json::from_str(info).ok(),
            _ => return Err(format!("unexpected lock line: {line:?}")),
        }
    }
    Ok(held)
}

/// A run id read back from a host (the lock, the journal) names a run in
/// later commands; shipit writes them as one line of plain text, so any
/// other is refused as it is read.
pub fn check_run_id(run: &str) -> Result<(), String> {
    match run.chars().find(|c| c.is_control()) {
        Some(c) => Err(format!(
            "the run id {run:?} contains a control character ({}), which shipit never writes",
            c.escape_unicode()
        )),
        None => Ok(()),
    }
}

/// Seconds since the heartbeat, by the host's clock. A negative age means
/// that clock stepped back since the last refresh: the heartbeat is recent,
/// so 0. An age that cannot be read counts as stale (forever).
fn parse_age(text: &str) -> u64 {
    match text.trim().parse::<i64>() {
        Ok(age) => age.max(0).unsigned_abs(),
        Err(_) => u64::MAX,
    }
}

impl Layout {
    /// Takes the lock if free (or already ours). Prints `acquired`, or
    /// `held` plus the holder's details and exits [`HELD`].
    pub fn lock_acquire(&self, info: &LockInfo) -> Cmd {
        Cmd::script(
            "lock",
            ACQUIRE,
            [
                self.deploy_to().to_string(),
                info.run.clone(),
                info.to_line(),
            ],
        )
    }

    /// Takes over the lock of run `stale_run` (which the caller found
    /// stale, or whose run `deploy --resume` continues): only while that
    /// run still holds it, so of two runs taking it over at once exactly
    /// one gets it. Prints like [`Layout::lock_acquire`], or `busy` (exit
    /// [`HELD`]) while another run is taking it over.
    pub fn lock_break(&self, stale_run: &str, info: &LockInfo) -> Cmd {
        Cmd::script(
            "lock-break",
            BREAK,
            [
                self.deploy_to().to_string(),
                stale_run.to_string(),
                info.run.clone(),
                info.to_line(),
            ],
        )
    }

    /// Refreshes the heartbeat of our lock; exits [`HELD`] if it is no
    /// longer ours.
    pub fn lock_refresh(&self, run: &str) -> Cmd {
        Cmd::script(
            "lock-refresh",
            REFRESH,
            [self.deploy_to().to_string(), run.to_string()],
        )
    }

    /// Removes the lock if `run` holds it (`run` = `*` removes any lock).
    pub fn lock_release(&self, run: &str) -> Cmd {
        Cmd::script(
            "unlock",
            RELEASE,
            [self.deploy_to().to_string(), run.to_string()],
        )
    }
}

const ACQUIRE: &str = r#"d=$1 run=$2 info=$3 l="$1/.shipit/lock"
mkdir -p "$d/.shipit" || exit
if mkdir "$l" 2>/dev/null; then
  if printf '%s\n' "$run" > "$l/run" && printf '%s\n' "$info" > "$l/info" && date +%s > "$l/heartbeat"; then
    echo acquired; exit 0
  fi
  rm -rf "$l"; exit 1
fi
if [ "$(cat "$l/run" 2>/dev/null)" = "$run" ]; then date +%s > "$l/heartbeat"; echo acquired; exit 0; fi
echo held
printf 'lock-run\t%s\n' "$(cat "$l/run" 2>/dev/null)"
hb=$(cat "$l/heartbeat" 2>/dev/null)
printf 'lock-age\t%s\n' "$(( $(date +%s) - ${hb:-0} ))"
printf 'lock-info\t%s\n' "$(head -n 1 "$l/info" 2>/dev/null)"
exit 4"#;

const BREAK: &str = r#"d=$1 stale=$2 run=$3 info=$4 l="$1/.shipit/lock" b="$1/.shipit/lock.break"
# One take-over at a time; a breaker killed midway leaves lock.break
# behind, which is void after a minute.
find "$d/.shipit" -maxdepth 1 -name lock.break -mmin +1 -exec rm -rf {} + 2>/dev/null
mkdir "$b" 2>/dev/null || { echo busy; echo "another run is taking over this lock right now" >&2; exit 4; }
trap 'rmdir "$b"' EXIT
if mkdir "$l" 2>/dev/null; then :; else
  held=$(cat "$l/run" 2>/dev/null)
  if [ "$held" != "$stale" ] && [ "$held" != "$run" ]; then
    echo held
    printf 'lock-run\t%s\n' "$held"
    hb=$(cat "$l/heartbeat" 2>/dev/null)
    printf 'lock-age\t%s\n' "$(( $(date +%s) - ${hb:-0} ))"
    printf 'lock-info\t%s\n' "$(head -n 1 "$l/info" 2>/dev/null)"
    echo "the lock changed hands while it was being taken over" >&2; exit 4
  fi
fi
# The rename of run is the take-over: readers see the old holder or us.
date +%s > "$l/heartbeat.new" && printf '%s\n' "$info" > "$l/info.new" && printf '%s\n' "$run" > "$l/run.new" || exit
mv -f "$l/heartbeat.new" "$l/heartbeat" && mv -f "$l/run.new" "$l/run" && mv -f "$l/info.new" "$l/info" && echo acquired"#;

const REFRESH: &str = r#"l="$1/.shipit/lock"
[ "$(cat "$l/run" 2>/dev/null)" = "$2" ] || { echo "the deploy lock is no longer held by this run" >&2; exit 4; }
date +%s > "$l/heartbeat.tmp" && mv -f "$l/heartbeat.tmp" "$l/heartbeat""#;

const RELEASE: &str = r#"l="$1/.shipit/lock"
[ -d "$l" ] || exit 0
if [ "$2" != '*' ] && [ "$(cat "$l/run" 2>/dev/null)" != "$2" ]; then
  echo "the lock belongs to another run; left alone" >&2; exit 4
fi
rm -rf "$l""#;

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn info(run: &str, kind: LockKind) -> LockInfo {
        LockInfo {
            run: run.into(),
            kind,
            stage: "production".into(),
            by: "ana@laptop".into(),
            machine: "laptop".into(),
            pid: 4242,
            since: "2026-11-22T10:15:00Z".into(),
            release: Some("20261122101500".into()),
            message: None,
            lease_secs: 60,
        }
    }

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

    #[test]
    fn one_run_wins_and_the_other_learns_who_holds_it() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = Layout::new(tmp.path().join("app dir").to_str().unwrap());
        let a = info("run-a", LockKind::Deploy);
        let b = info("run-b", LockKind::Deploy);
        let (code, out, _) = run(&layout.lock_acquire(&a));
        assert_eq!(
            (code, Attempt::parse(&out).unwrap()),
            (0, Attempt::Acquired)
        );
        // Taking it again is fine for the same run.
        assert_eq!(run(&layout.lock_acquire(&a)).0, 0);

        let (code, out, _) = run(&layout.lock_acquire(&b));
        assert_eq!(code, HELD as i32);
        let Attempt::Held(held) = Attempt::parse(&out).unwrap() else {
            panic!("{out}")
        };
        assert_eq!(held.run, "run-a");
        assert_eq!(held.info.as_ref(), Some(&a));
        assert!(held.age_secs <= 1);
        assert!(!held.is_stale("other", |_| true));

        // b may not release or refresh a's lock.
        assert_eq!(run(&layout.lock_release("run-b")).0, HELD as i32);
        assert_eq!(run(&layout.lock_refresh("run-b")).0, HELD as i32);
        assert_eq!(run(&layout.lock_refresh("run-a")).0, 0);

        // Breaking requires naming the run found stale.
        assert_eq!(run(&layout.lock_break("run-x", &b)).0, HELD as i32);
        let (code, out, err) = run(&layout.lock_break("run-a", &b));
        assert_eq!((code, out.trim()), (0, "acquired"), "{err}");
        assert_eq!(
            run(&layout.lock_refresh("run-a")).0,
            HELD as i32,
            "a lost it"
        );
        assert_eq!(run(&layout.lock_release("run-b")).0, 0);
        assert_eq!(run(&layout.lock_acquire(&a)).0, 0, "free again");
        assert_eq!(run(&layout.lock_release("*")).0, 0);
    }

    /// Two runs taking over the same dead run's lock (two `deploy
    /// --resume`): the first gets it, with its own details; the second is
    /// told who holds it now. The dead run's refresh fails from then on.
    #[test]
    fn of_two_take_overs_of_a_dead_run_one_wins() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = Layout::new(tmp.path().to_str().unwrap());
        let dead = info("dead", LockKind::Deploy);
        assert_eq!(run(&layout.lock_acquire(&dead)).0, 0);
        let a = LockInfo {
            pid: 1,
            ..info("resume-a", LockKind::Deploy)
        };
        let b = LockInfo {
            pid: 2,
            ..info("resume-b", LockKind::Deploy)
        };
        let (code, out, err) = run(&layout.lock_break("dead", &a));
        assert_eq!(
            (code, Attempt::parse(&out)),
            (0, Ok(Attempt::Acquired)),
            "{err}"
        );
        let (code, out, _) = run(&layout.lock_break("dead", &b));
        assert_eq!(code, HELD as i32);
        let Ok(Attempt::Held(held)) = Attempt::parse(&out) else {
            panic!("{out}")
        };
        assert_eq!(held.run, "resume-a");
        assert_eq!(held.info.map(|i| i.pid), Some(1), "the winner's details");
        assert_eq!(run(&layout.lock_refresh("dead")).0, HELD as i32);
        assert_eq!(run(&layout.lock_refresh("resume-a")).0, 0);
        // Taking over again is fine for the winner itself.
        assert_eq!(run(&layout.lock_break("dead", &a)).0, 0);
        // A take-over in progress elsewhere: busy, nothing changed.
        std::fs::create_dir(tmp.path().join(".shipit/lock.break")).unwrap();
        let (code, out, _) = run(&layout.lock_break("resume-a", &b));
        assert_eq!(
            (code, Attempt::parse(&out)),
            (HELD as i32, Ok(Attempt::Busy))
        );
        assert_eq!(run(&layout.lock_refresh("resume-a")).0, 0);
    }

    #[test]
    fn staleness() {
        let held = |age, kind, machine: &str, pid| HeldLock {
            run: "r".into(),
            info: Some(LockInfo {
                machine: machine.into(),
                pid,
                ..info("r", kind)
            }),
            age_secs: age,
        };
        assert!(!held(30, LockKind::Deploy, "m", 1).is_stale("other", |_| true));
        assert!(held(61, LockKind::Deploy, "m", 1).is_stale("other", |_| true));
        // Same machine, holder process gone: stale at once.
        assert!(held(1, LockKind::Deploy, "here", 99).is_stale("here", |_| false));
        assert!(!held(1, LockKind::Deploy, "here", 99).is_stale("here", |_| true));
        // Manual locks never go stale.
        assert!(!held(999_999, LockKind::Manual, "here", 99).is_stale("here", |_| false));
    }

    /// Between two heartbeats on one host pass at most one period and one
    /// round of refreshes, which lasts as long as its slowest host.
    #[test]
    fn the_shortest_lease_outlasts_a_period_and_a_slow_round() {
        for lease in [MIN_LEASE, Duration::from_secs(60), Duration::from_secs(600)] {
            let gap = refresh_period(lease) + COMMAND_TIMEOUT;
            assert!(
                lease >= gap + Duration::from_secs(5),
                "{lease:?} leaves too little margin over {gap:?}"
            );
        }
        // And it is the shortest such lease.
        assert_eq!(
            MIN_LEASE - refresh_period(MIN_LEASE),
            COMMAND_TIMEOUT + LEASE_MARGIN
        );
    }

    /// The host's clock stepped back after the last heartbeat: the
    /// heartbeat lies in its future, and the lock is as fresh as can be.
    #[test]
    fn a_heartbeat_from_the_future_is_fresh() {
        let held = parse_held(
            [
                "lock-run\tr",
                "lock-age\t-3600",
                &format!("lock-info\t{}", info("r", LockKind::Deploy).to_line()),
            ]
            .into_iter(),
        )
        .unwrap();
        assert_eq!(held.age_secs, 0);
        assert!(!held.is_stale("other", |_| true));
        // Without a heartbeat file the script counts from 1970: stale.
        let held =
            parse_held(["lock-run\tr", "lock-age\t1780000000", "lock-info\t"].into_iter()).unwrap();
        assert!(held.is_stale("other", |_| true));
    }

    /// The run id read back from a host names the lock in the next
    /// commands (break, release); one that shipit cannot have written is an
    /// error at once.
    #[test]
    fn a_run_id_with_a_control_character_is_refused_as_read() {
        let err = parse_held(["lock-run\tr\u{1b}[2Jx", "lock-age\t1", "lock-info\t"].into_iter())
            .unwrap_err();
        assert_eq!(
            err,
            "deploy_to/.shipit/lock/run: the run id \"r\\u{1b}[2Jx\" contains a control character (\\u{1b}), \
             which shipit never writes; if no run holds this lock, remove deploy_to/.shipit/lock on the host"
        );
        assert!(Attempt::parse("held\nlock-run\ta\u{0}b\n").is_err());
        // No run file (a holder killed while taking the lock): empty, fine.
        assert_eq!(parse_held(["lock-run\t"].into_iter()).unwrap().run, "");
    }

    #[test]
    fn describes_the_holder() {
        let mut i = info("r", LockKind::Deploy);
        i.message = Some("hotfix".into());
        assert_eq!(
            i.describe(),
            "deploy of 20261122101500 by ana@laptop (pid 4242 on laptop) since 2026-11-22T10:15:00Z: \"hotfix\""
        );
    }
}
