//! Each host's journal of the current run: one JSON line per transition
//! (started, uploaded, drained, switched, restarted, healthy, enabled,
//! finished) in `deploy_to/.shipit/journal`. If the machine running shipit
//! dies, the next run reads it to show what happened (`status`), put back
//! hosts left drained (repair) and continue (`deploy --resume`).
//!
//! The journal holds one run: a new run starts it afresh, a resumed run
//! appends to it, so it never grows without bound.

use serde::{Deserialize, Serialize};

use super::Layout;
use crate::shell::Cmd;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub run: String,
    /// UTC, RFC 3339, by the clock of the machine running shipit.
    pub time: String,
    /// `deploy` or `rollback`.
    pub op: String,
    pub release: String,
    pub event: String,
    /// For `started`: who and the archive digest; for `finished`: the result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Entry {
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("journal entries serialize")
    }

    /// One journal line: `Ok(None)` for a line that is no entry (a torn
    /// last line), which is skipped; an error for an entry whose run id
    /// shipit cannot have written, since `--resume` would take it as its own.
    pub fn parse(line: &str) -> Result<Option<Entry>, String> {
        let Ok(entry) = serde_json::from_str::<Entry>(line) else {
            return Ok(None);
        };
        super::lock::check_run_id(&entry.run).map_err(|e| {
            format!(
                "deploy_to/.shipit/journal: {e}; move the file away (it serves only `status` and \
                 `deploy --resume`)"
            )
        })?;
        Ok(Some(entry))
    }
}

/// What a host's journal says about the last run.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RunTrace {
    pub run: String,
    pub op: String,
    pub release: String,
    pub started: String,
    /// `detail` of the `started` entry.
    pub started_detail: Option<String>,
    /// Events in order, `started` first.
    pub events: Vec<String>,
    /// The `finished` entry's detail, if the run got that far.
    pub finished: Option<String>,
    /// What the host ran before the run began, as its first `started`
    /// entry recorded it: `Some(None)` for nothing, `None` if not recorded
    /// (a journal of an older shipit).
    pub before: Option<Option<String>>,
    /// The lock ids of the processes that carried the run after its first
    /// one died (`deploy --resume`), from their `started` entries.
    pub locks: Vec<String>,
}

impl RunTrace {
    /// The run stopped without finishing: its machine died or lost the host.
    pub fn interrupted(&self) -> bool {
        self.finished.is_none()
    }

    /// Drained and not enabled since: possibly out of the load balancer.
    pub fn left_drained(&self) -> bool {
        let drained = self.events.iter().rposition(|e| e == "drained");
        let enabled = self.events.iter().rposition(|e| e == "enabled");
        match (drained, enabled) {
            (Some(d), Some(e)) => d > e,
            (Some(_), None) => true,
            _ => false,
        }
    }

    /// This host went all the way: switched, healthy and enabled (or no
    /// load balancer step after healthy).
    pub fn host_done(&self) -> bool {
        let last_switch = self.events.iter().rposition(|e| e == "switched");
        let done = self.events.iter().rposition(|e| e == "rolled-out");
        matches!((last_switch, done), (Some(s), Some(d)) if d > s)
    }

    pub fn uploaded(&self) -> bool {
        self.events.iter().any(|e| e == "uploaded")
    }

    /// The run was rolling back when it stopped: a resume finishes the
    /// rollback rather than rolling the release out again.
    pub fn undoing(&self) -> bool {
        self.events.iter().any(|e| e == UNDOING)
    }

    /// The rollback had begun on this host and did not finish: it may be
    /// out, switched back but not restarted, or not yet healthy.
    pub fn undo_unsettled(&self) -> bool {
        let Some(u) = self.events.iter().rposition(|e| e == UNDOING) else {
            return false;
        };
        let after = &self.events[u + 1..];
        !after.iter().any(|e| e == "rolled-back")
            && after
                .iter()
                .any(|e| matches!(e.as_str(), "drained" | "switched" | "restarted" | "healthy"))
    }

    /// The last thing that happened, for status lines.
    pub fn last_event(&self) -> &str {
        self.events.last().map_or("started", String::as_str)
    }
}

/// The entry written on every host when a failed deploy starts rolling
/// back, before any host is touched for it.
pub const UNDOING: &str = "undoing";

/// The trace of the last run in `entries` (journal lines, oldest first).
pub fn last_run(entries: &[Entry]) -> Option<RunTrace> {
    let run = entries.last()?.run.clone();
    let mut trace = RunTrace {
        run: run.clone(),
        ..RunTrace::default()
    };
    for entry in entries.iter().filter(|e| e.run == run) {
        if trace.events.is_empty() {
            trace.op = entry.op.clone();
            trace.release = entry.release.clone();
            trace.started = entry.time.clone();
        }
        if entry.event == "started" {
            let detail: Option<serde_json::Value> = entry
                .detail
                .as_deref()
                .and_then(|d| serde_json::from_str(d).ok());
            if let Some(detail) = &detail {
                if trace.before.is_none() {
                    trace.before = detail.get("before").map(|b| b.as_str().map(str::to_string));
                }
                if let Some(lock) = detail["lock"].as_str() {
                    trace.locks.push(lock.to_string());
                }
            }
            trace.started_detail = entry.detail.clone();
        }
        if entry.event == "finished" {
            trace.finished = Some(entry.detail.clone().unwrap_or_default());
        }
        trace.events.push(entry.event.clone());
    }
    Some(trace)
}

impl Layout {
    /// Starts the journal afresh with `entry` (or appends, when resuming).
    pub fn journal_start(&self, entry: &Entry, append: bool) -> Cmd {
        let mode = if append { "append" } else { "start" };
        Cmd::script(
            "journal",
            JOURNAL,
            [
                self.deploy_to().to_string(),
                mode.to_string(),
                entry.to_line(),
            ],
        )
    }

    /// Appends entries, in order, in one command.
    pub fn journal(&self, entries: &[Entry]) -> Cmd {
        let mut args = vec![self.deploy_to().to_string(), "append".to_string()];
        args.extend(entries.iter().map(Entry::to_line));
        Cmd::script("journal", JOURNAL, args)
    }

    /// Appends entries ahead of a step, in the step's own command
    /// (`( journal ) && step`): the step runs only once they are written.
    /// If they cannot be, the command exits [`UNWRITTEN`] and says so
    /// last on stderr ([`unwritten`]): the step was not started.
    pub fn journal_first(&self, entries: &[Entry]) -> Cmd {
        let mut args = vec![self.deploy_to().to_string(), "first".to_string()];
        args.extend(entries.iter().map(Entry::to_line));
        Cmd::script("journal", JOURNAL, args)
    }
}

/// Exit status of a step whose journal entries, written first, could not
/// be written: the step itself never ran.
pub const UNWRITTEN: u32 = 97;

/// How the journal script's refusal begins on stderr.
const UNWRITTEN_SAYS: &str = "shipit: could not write the journal";

/// Whether a step's command ended because the journal entries ahead of it
/// could not be written (full disk, read-only file), so that the step was
/// never started. Both the status and the last stderr line must say so: a
/// user's command may exit 97 on its own.
pub fn unwritten(exit_code: Option<u32>, stderr_tail: Option<&str>) -> bool {
    exit_code == Some(UNWRITTEN)
        && stderr_tail
            .and_then(|t| t.lines().last())
            .is_some_and(|l| l.starts_with(UNWRITTEN_SAYS))
}

const JOURNAL: &str = r#"d=$1 mode=$2; shift 2
if [ "$mode" = first ]; then
  { mkdir -p "$d/.shipit" && printf '%s\n' "$@" >> "$d/.shipit/journal"; } 2>/dev/null && exit 0
  echo "shipit: could not write the journal ($d/.shipit/journal: disk full or read-only?), so this step was not started" >&2
  exit 97
fi
mkdir -p "$d/.shipit" || exit
if [ "$mode" = start ]; then printf '%s\n' "$@" > "$d/.shipit/journal"; else printf '%s\n' "$@" >> "$d/.shipit/journal"; fi"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(run: &str, event: &str) -> Entry {
        Entry {
            run: run.into(),
            time: "t".into(),
            op: "deploy".into(),
            release: "20261122101500".into(),
            event: event.into(),
            detail: None,
        }
    }

    fn trace(events: &[&str]) -> RunTrace {
        let entries: Vec<Entry> = events.iter().map(|e| entry("r2", e)).collect();
        last_run(&entries).unwrap()
    }

    #[test]
    fn reads_the_last_run() {
        let mut entries = vec![entry("r1", "started"), entry("r1", "finished")];
        entries.extend(["started", "uploaded", "drained", "switched"].map(|e| entry("r2", e)));
        let t = last_run(&entries).unwrap();
        assert_eq!(t.run, "r2");
        assert!(t.interrupted() && t.uploaded() && t.left_drained() && !t.host_done());
        assert_eq!(t.last_event(), "switched");
    }

    /// A journal line is JSON, which can spell any character: a run id
    /// with a NUL byte or a line break would name this run's lock on
    /// `--resume`, so such an entry is an error as it is read. Lines that are
    /// not entries at all (a torn last line) are skipped as before.
    #[test]
    fn entries_shipit_cannot_have_written_are_errors() {
        let line = entry("r1", "started").to_line();
        assert_eq!(Entry::parse(&line), Ok(Some(entry("r1", "started"))));
        assert_eq!(Entry::parse("{\"run\":\"r9\",\"ti"), Ok(None));
        let bad = line.replace("\"r1\"", "\"r\\u0000x\"");
        assert_eq!(
            Entry::parse(&bad),
            Err(
                "deploy_to/.shipit/journal: the run id \"r\\0x\" contains a control character (\\u{0}), which \
                 shipit never writes; move the file away (it serves only `status` and `deploy --resume`)"
                    .to_string()
            )
        );
        let bad = line.replace("\"r1\"", "\"r\\nx\"");
        assert!(Entry::parse(&bad).is_err());
    }

    /// The release a host ran before the run is the first `started`
    /// entry's, whatever resumed runs appended; their lock ids are kept.
    #[test]
    fn the_release_before_the_whole_run_and_its_locks() {
        let started = |detail: &str| Entry {
            detail: Some(detail.into()),
            ..entry("r2", "started")
        };
        let entries = vec![
            started(r#"{"by":"ana","digest":"d","before":"20261122101500"}"#),
            entry("r2", "switched"),
            started(r#"{"by":"ana","digest":"d","before":"20261122101500","lock":"r2-b"}"#),
        ];
        let t = last_run(&entries).unwrap();
        assert_eq!(t.before, Some(Some("20261122101500".into())));
        assert_eq!(t.locks, ["r2-b"]);
        let t = last_run(&[started(r#"{"by":"ana","before":null}"#)]).unwrap();
        assert_eq!(t.before, Some(None), "nothing before");
        let t = last_run(&[started(r#"{"by":"ana"}"#)]).unwrap();
        assert_eq!(t.before, None, "not recorded");
    }

    #[test]
    fn an_undo_in_progress() {
        let t = trace(&["started", "drained", "switched", "rolled-out", "undoing"]);
        assert!(
            t.undoing() && !t.undo_unsettled(),
            "not touched by the undo yet"
        );
        let t = trace(&["started", "switched", "undoing", "drained", "switched"]);
        assert!(t.undoing() && t.undo_unsettled());
        let t = trace(&[
            "started",
            "switched",
            "undoing",
            "drained",
            "switched",
            "rolled-back",
        ]);
        assert!(!t.undo_unsettled());
        assert!(!trace(&["started", "drained", "switched"]).undoing());
    }

    #[test]
    fn drained_and_done() {
        assert!(
            !trace(&["started", "drained", "switched", "enabled", "rolled-out"]).left_drained()
        );
        assert!(trace(&["started", "drained", "switched", "enabled", "rolled-out"]).host_done());
        assert!(!trace(&["started", "uploaded"]).left_drained());
        let t = trace(&[
            "started",
            "drained",
            "switched",
            "enabled",
            "rolled-out",
            "drained",
        ]);
        assert!(t.left_drained());
        assert!(!trace(&["started", "finished"]).interrupted());
    }

    /// Entries written ahead of a step: the step runs only if they were
    /// written, and a failed write is told apart from the step's own
    /// failure.
    #[test]
    fn entries_ahead_of_a_step_gate_it() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = Layout::new(tmp.path().to_str().unwrap());
        let run = |cmd: Cmd| {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(cmd.render())
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr).to_string();
            (out.status.code().map(|c| c as u32), err)
        };
        let step = Cmd::shell("touch stepped").cwd(tmp.path().to_str().unwrap());
        let (code, err) = run(layout
            .journal_first(&[entry("r1", "switched")])
            .then(step.clone()));
        assert_eq!(code, Some(0), "{err}");
        assert!(tmp.path().join("stepped").exists());
        std::fs::remove_file(tmp.path().join("stepped")).unwrap();
        // A journal that cannot be written (here: a directory in its place).
        std::fs::remove_file(tmp.path().join(".shipit/journal")).unwrap();
        std::fs::create_dir(tmp.path().join(".shipit/journal")).unwrap();
        let (code, err) = run(layout.journal_first(&[entry("r1", "switched")]).then(step));
        assert_eq!(code, Some(UNWRITTEN));
        assert!(unwritten(code, Some(&err)), "{err}");
        assert!(!tmp.path().join("stepped").exists(), "the step never ran");
        // The step's own exit 97 is the step's failure.
        assert!(!unwritten(Some(97), Some("boom")));
        assert!(!unwritten(Some(1), Some(&err)));
        assert!(!unwritten(Some(97), None));
    }

    #[test]
    fn the_script_starts_afresh_or_appends() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = Layout::new(tmp.path().to_str().unwrap());
        let sh = |cmd: Cmd| {
            assert!(
                std::process::Command::new("sh")
                    .arg("-c")
                    .arg(cmd.render())
                    .status()
                    .unwrap()
                    .success()
            )
        };
        sh(layout.journal_start(&entry("r1", "started"), false));
        sh(layout.journal(&[entry("r1", "uploaded"), entry("r1", "drained")]));
        let text = std::fs::read_to_string(tmp.path().join(".shipit/journal")).unwrap();
        assert_eq!(text.lines().count(), 3, "entries are appended in order");
        sh(layout.journal_start(&entry("r2", "started"), false));
        let text = std::fs::read_to_string(tmp.path().join(".shipit/journal")).unwrap();
        assert_eq!(
            text.lines().count(),
            1,
            "a new run starts the journal afresh"
        );
        sh(layout.journal_start(&entry("r2", "started"), true));
        let text = std::fs::read_to_string(tmp.path().join(".shipit/journal")).unwrap();
        assert_eq!(text.lines().count(), 2, "a resumed run appends");
    }
}
