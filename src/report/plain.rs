//! Plain, greppable lines: one per host step, then a per-host summary.
//! Used when stderr is not a terminal, in CI, and with `TERM=dumb`.
//!
//! ```text
//! 10:15:02 web1     upload       ok  (0.4s)
//! 10:15:09 web2     health       FAILED  (30.0s)  status 503, body "starting" (60 tries)
//! ```
//!
//! In GitHub Actions ([`Plain::github`]) every phase but connecting is a
//! collapsible `::group::` (titled `batch 2/3: web3, web4`), the build's
//! output is folded into a group too, warnings and failed hosts become
//! `::warning::` / `::error::` annotations, and the summary table and the
//! error stay outside the groups.

use std::io::Write;
use std::sync::Mutex;

use super::table::{self, seconds};
use super::{Event, HostResult, Phase, Reporter};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    /// Errors and the final summary only.
    Quiet,
    Normal,
    /// Also each command and its output.
    Verbose,
}

pub struct Plain<W: Write + Send> {
    out: Mutex<State<W>>,
    verbosity: Verbosity,
    github: bool,
}

struct State<W> {
    out: W,
    /// Width of the host column: the longest host name of the run.
    host_width: usize,
    /// A `::group::` is open (GitHub Actions).
    group_open: bool,
    /// Each gate's last verdict in the current bake: a gate's line is
    /// shown when its verdict changes (every evaluation with `-v`).
    gate_verdicts: std::collections::BTreeMap<(usize, usize), super::Verdict>,
}

/// Hosts names shorter than this still get this much room, so short
/// fleets line up the same way in every log.
const MIN_HOST_WIDTH: usize = 8;

impl<W: Write + Send> Plain<W> {
    pub fn new(out: W, verbosity: Verbosity) -> Self {
        Plain {
            out: Mutex::new(State {
                out,
                host_width: MIN_HOST_WIDTH,
                group_open: false,
                gate_verdicts: Default::default(),
            }),
            verbosity,
            github: false,
        }
    }

    /// Adds GitHub Actions workflow commands: groups and annotations.
    pub fn github(mut self, on: bool) -> Self {
        self.github = on;
        self
    }

    pub fn into_inner(self) -> W {
        self.out.into_inner().expect("plain reporter lock").out
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State<W>> {
        self.out.lock().expect("plain reporter lock")
    }
}

impl<W: Write> State<W> {
    /// A timestamped line; continuation lines are indented.
    fn line(&mut self, text: &str) {
        let now = jiff::Zoned::now();
        // A reporter that cannot write has nowhere to say so.
        let _ = writeln!(
            self.out,
            "{} {}",
            now.strftime("%H:%M:%S"),
            text.replace('\n', "\n    ")
        );
        let _ = self.out.flush();
    }

    fn raw(&mut self, text: &str) {
        let _ = writeln!(self.out, "{text}");
        let _ = self.out.flush();
    }

    fn host(&self, host: &str) -> String {
        format!("{host:<w$}", w = self.host_width)
    }

    fn open_group(&mut self, github: bool, title: &str) {
        if github {
            self.close_group();
            self.raw(&format!("::group::{}", escape_data(title)));
            self.group_open = true;
        }
    }

    fn close_group(&mut self) {
        if self.group_open {
            self.raw("::endgroup::");
            self.group_open = false;
        }
    }
}

impl<W: Write + Send> Reporter for Plain<W> {
    fn event(&self, event: &Event) {
        let normal = self.verbosity >= Verbosity::Normal;
        let verbose = self.verbosity >= Verbosity::Verbose;
        let github = self.github;
        let mut s = self.state();
        match event {
            Event::BuildStarted { command } => {
                s.open_group(github, &format!("build: {command}"));
                if normal {
                    s.line(&format!("building: {command}"));
                }
            }
            Event::BuildFinished { ok, duration } => {
                if normal && *ok {
                    s.line(&format!("built  ({})", seconds(*duration)));
                }
                s.close_group();
            }
            Event::Packed {
                source,
                bytes,
                files,
                duration,
            } if normal => {
                let files = if *files == 0 {
                    String::new()
                } else {
                    format!(" ({files} files)")
                };
                s.line(&format!(
                    "packed {source}: {}{files}  ({})",
                    human_bytes(*bytes),
                    seconds(*duration)
                ));
            }
            Event::Warning { message } if normal => {
                if github {
                    s.raw(&format!("::warning::{}", escape_data(message)));
                } else {
                    s.line(&format!("warning: {message}"));
                }
            }
            Event::RunStarted {
                operation,
                app,
                stage,
                release,
                hosts,
                batches,
                before,
                ..
            } => {
                s.host_width = before
                    .keys()
                    .map(|h| h.chars().count())
                    .max()
                    .unwrap_or(0)
                    .max(MIN_HOST_WIDTH);
                if normal {
                    s.close_group();
                    s.line(&format!(
                        "{}: {} host{}, {} batch{}",
                        match operation {
                            crate::plan::Operation::Deploy =>
                                format!("deploy {app} {release} to {stage}"),
                            crate::plan::Operation::Rollback =>
                                format!("roll {app} on {stage} back to {release}"),
                        },
                        hosts.len(),
                        if hosts.len() == 1 { "" } else { "s" },
                        batches.len(),
                        if batches.len() == 1 { "" } else { "es" },
                    ));
                }
            }
            Event::PhaseStarted { phase, hosts } if normal => {
                let title = format!("{}: {}", phase.label(), hosts.join(", "));
                // In GitHub Actions the group's title is the phase's line;
                // connecting has no lines of its own to fold away.
                if github && *phase != Phase::Connect {
                    s.open_group(github, &title);
                } else {
                    s.close_group();
                    s.line(&format!("== {title}"));
                }
            }
            Event::StepStarted { host, step, action } if verbose => {
                let host = s.host(host);
                s.line(&format!("{host} {:<12} $ {action}", step.as_str()));
            }
            Event::Output {
                host, step, line, ..
            } if verbose => {
                let host = s.host(host);
                s.line(&format!("{host} {:<12} | {line}", step.as_str()));
            }
            Event::StepFinished {
                host,
                step,
                ok,
                duration,
                result,
                error,
                ..
            } if normal || !ok => {
                let host = s.host(host);
                let mut text = format!(
                    "{host} {:<12} {}  ({})",
                    step.as_str(),
                    if *ok { result.as_str() } else { "FAILED" },
                    seconds(*duration)
                );
                if let Some(error) = error {
                    text.push_str("  ");
                    text.push_str(error);
                }
                s.line(&text);
            }
            Event::BakeStarted {
                batch,
                of,
                hosts,
                duration,
            } if normal => {
                s.gate_verdicts.clear();
                s.line(&format!(
                    "== bake {batch}/{of}: watching {} for {}",
                    hosts.join(", "),
                    humantime::format_duration(*duration)
                ));
            }
            Event::BakeFinished {
                batch,
                of,
                ok,
                duration,
                interrupted,
                ended_by,
            } if normal || !ok => {
                let verdict = match (ok, interrupted, ended_by) {
                    (true, false, None) => "passed".to_string(),
                    (true, false, Some(by)) => format!("ended early ({by})"),
                    (true, true, _) => "ended early (interrupted)".to_string(),
                    (false, _, _) => "FAILED".to_string(),
                };
                s.line(&format!(
                    "== bake {batch}/{of}: {verdict}  ({})",
                    seconds(*duration)
                ));
            }
            Event::GateEvaluated {
                batch,
                of,
                gate,
                kind,
                verdict,
                outcome,
                message,
                elapsed,
                ..
            } => {
                let changed = s.gate_verdicts.insert((*batch, *gate), *verdict) != Some(*verdict);
                let shown = match outcome {
                    Some(super::Verdict::Fail) => true,
                    Some(_) => normal,
                    None => verbose || (normal && changed),
                };
                if shown {
                    let said = match outcome {
                        Some(super::Verdict::Pass) => "passed",
                        Some(_) => "FAILED",
                        None => verdict.as_str(),
                    };
                    s.line(&format!(
                        "== gate {batch}/{of} gates[{gate}] {kind}: {said} ({}): {message}",
                        seconds(*elapsed)
                    ));
                }
            }
            Event::Steer { detail, .. } => {
                let host = s.host("shipit");
                s.line(&format!("{host} {detail}"));
            }
            Event::Retuned { from, batches } if normal => {
                let rest: Vec<String> = batches
                    .iter()
                    .skip(from - 1)
                    .map(|b| b.join(", "))
                    .collect();
                s.line(&format!(
                    "== batches from {from} on, now {} in all: {}",
                    batches.len(),
                    rest.join(" | ")
                ));
            }
            Event::Note { host, message } => {
                let host = s.host(host.as_deref().unwrap_or("shipit"));
                s.line(&format!("{host} {message}"));
            }
            Event::RunFinished { hosts, gates, .. } => {
                s.close_group();
                s.raw("");
                for line in table::render(hosts, &|_, cell| cell.to_string()) {
                    s.raw(&line);
                }
                let gate_lines = table::gates(gates);
                if !gate_lines.is_empty() {
                    s.raw("");
                    for line in gate_lines {
                        s.raw(&line);
                    }
                }
                for failure in table::failures(hosts) {
                    s.raw(&format!("\n{failure}"));
                }
                if github {
                    for h in hosts {
                        if let HostResult::Failed { step, error, .. } = &h.result {
                            s.raw(&format!(
                                "::error title={}::{}",
                                escape_property(&format!("{} failed at {}", h.host, step.as_str())),
                                escape_data(error)
                            ));
                        }
                    }
                }
            }
            Event::Result {
                ok: false,
                message: Some(message),
                ..
            } => {
                s.close_group();
                s.raw(&format!("error: {message}"));
                if github {
                    s.raw(&format!("::error title=shipit::{}", escape_data(message)));
                }
            }
            Event::Result { .. } => s.close_group(),
            _ => {}
        }
    }
}

/// Sizes as people read them: `512 B`, `1.5 KiB`, `3.2 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Escapes the message of a GitHub workflow command.
fn escape_data(text: &str) -> String {
    text.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// Escapes a property (`title=`) of a GitHub workflow command.
fn escape_property(text: &str) -> String {
    escape_data(text).replace(':', "%3A").replace(',', "%2C")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::exit::Exit;
    use crate::plan::StepKind;
    use crate::report::{HostSummary, Measured, Verdict};

    fn render(verbosity: Verbosity, github: bool, events: &[Event]) -> String {
        let plain = Plain::new(Vec::new(), verbosity).github(github);
        for e in events {
            plain.event(e);
        }
        String::from_utf8(plain.into_inner()).unwrap()
    }

    fn failed_run() -> Vec<Event> {
        vec![
            Event::Warning {
                message: "no load balancer".into(),
            },
            Event::PhaseStarted {
                phase: Phase::Batch { number: 1, of: 1 },
                hosts: vec!["web1".into()],
            },
            Event::StepStarted {
                host: "web1".into(),
                step: StepKind::Restart,
                action: "sh -c bin/restart".into(),
            },
            Event::Output {
                host: "web1".into(),
                step: StepKind::Restart,
                stream: "stderr",
                line: "boom".into(),
            },
            Event::StepFinished {
                host: "web1".into(),
                step: StepKind::Restart,
                ok: false,
                duration: Duration::from_millis(1200),
                result: "exit status 1".into(),
                exit_code: Some(1),
                stderr_tail: Some("boom".into()),
                error: Some("`sh -c bin/restart` ended with exit status 1; stderr:\nboom".into()),
            },
            Event::RunFinished {
                ok: false,
                hosts: vec![HostSummary {
                    host: "web1".into(),
                    before: None,
                    now: None,
                    result: HostResult::Failed {
                        step: StepKind::Restart,
                        error: "boom, 100%".into(),
                        interrupted: false,
                    },
                    drained: false,
                    duration: Duration::from_millis(1300),
                    left_out: None,
                }],
                gates: Vec::new(),
            },
            Event::Result {
                ok: false,
                exit_code: 5,
                exit: Exit::Partial,
                message: Some("deploy failed on web1 (restart)".into()),
            },
        ]
    }

    /// Drops the `HH:MM:SS ` prefix of timestamped lines.
    fn untimed(text: &str) -> String {
        text.lines()
            .map(|l| {
                let b = l.as_bytes();
                if b.len() > 9 && b[2] == b':' && b[5] == b':' && b[8] == b' ' {
                    &l[9..]
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn normal_lines_and_summary() {
        let out = untimed(&render(Verbosity::Normal, false, &failed_run()));
        assert_eq!(
            out,
            "warning: no load balancer\n\
             == batch 1/1: web1\n\
             web1     restart      FAILED  (1.2s)  `sh -c bin/restart` ended with exit status 1; stderr:\n    boom\n\
             \n\
             HOST  RELEASE  RESULT             TIME\n\
             web1  -        FAILED at restart  1.3s\n\
             \n\
             web1: restart failed:\n  boom, 100%\n\
             error: deploy failed on web1 (restart)"
        );
    }

    #[test]
    fn quiet_keeps_errors_and_the_summary_verbose_adds_commands() {
        let quiet = untimed(&render(Verbosity::Quiet, false, &failed_run()));
        assert!(!quiet.contains("warning"), "{quiet}");
        assert!(!quiet.contains("== batch"), "{quiet}");
        assert!(quiet.contains("web1     restart      FAILED"), "{quiet}");
        assert!(quiet.contains("HOST  RELEASE"), "{quiet}");
        assert!(quiet.contains("error: deploy failed"), "{quiet}");
        let verbose = untimed(&render(Verbosity::Verbose, false, &failed_run()));
        assert!(verbose.contains("web1     restart      $ sh -c bin/restart\n"));
        assert!(verbose.contains("web1     restart      | boom\n"));
    }

    fn gate(batch: usize, verdict: Verdict, outcome: Option<Verdict>, message: &str) -> Event {
        Event::GateEvaluated {
            batch,
            of: 2,
            gate: 0,
            kind: "haproxy".into(),
            hosts: vec!["web1".into()],
            verdict,
            outcome,
            measured: Measured::Haproxy {
                answers: 60,
                errors: 0,
                error_rate: Some(0.0),
                window: Duration::from_secs(3),
                missing: Vec::new(),
                resets: Vec::new(),
            },
            limit: "5xx ≤ 5% of at least 50 answers".into(),
            message: message.into(),
            elapsed: Duration::from_secs(3),
        }
    }

    #[test]
    fn gate_lines_when_a_verdict_changes_and_a_table_at_the_end() {
        use Verdict::{Fail, Inconclusive, Pass};
        let events = vec![
            Event::BakeStarted {
                batch: 1,
                of: 2,
                hosts: vec!["web1".into()],
                duration: Duration::from_secs(30),
            },
            gate(1, Inconclusive, None, "only 12 answers"),
            gate(1, Inconclusive, None, "only 30 answers"),
            gate(1, Pass, None, "5xx 0%"),
            gate(1, Pass, None, "5xx 0%"),
            gate(1, Pass, Some(Pass), "5xx 0% (0 of 800 answers)"),
            gate(
                2,
                Fail,
                Some(Fail),
                "5xx 50% (40 of 80 answers) > max_error_rate 5%",
            ),
            Event::RunFinished {
                ok: false,
                hosts: Vec::new(),
                gates: vec![crate::report::GateSummary {
                    batch: 2,
                    of: 2,
                    gate: 0,
                    kind: "haproxy".into(),
                    outcome: Fail,
                    measured: Measured::Error {
                        error: String::new(),
                    },
                    limit: String::new(),
                    message: "5xx 50% (40 of 80 answers) > max_error_rate 5%".into(),
                }],
            },
        ];
        let out = untimed(&render(Verbosity::Normal, false, &events));
        assert_eq!(
            out,
            "== bake 1/2: watching web1 for 30s\n\
             == gate 1/2 gates[0] haproxy: inconclusive (3.0s): only 12 answers\n\
             == gate 1/2 gates[0] haproxy: pass (3.0s): 5xx 0%\n\
             == gate 1/2 gates[0] haproxy: passed (3.0s): 5xx 0% (0 of 800 answers)\n\
             == gate 2/2 gates[0] haproxy: FAILED (3.0s): 5xx 50% (40 of 80 answers) > max_error_rate 5%\n\
             \n\
             HOST  RELEASE  RESULT  TIME\n\
             \n\
             BATCH  GATE              RESULT  MEASURED\n\
             2/2    gates[0] haproxy  FAILED  5xx 50% (40 of 80 answers) > max_error_rate 5%"
        );
        // -v shows every evaluation; -q only the failure.
        let verbose = render(Verbosity::Verbose, false, &events);
        assert_eq!(verbose.matches("== gate").count(), 6);
        let quiet = untimed(&render(Verbosity::Quiet, false, &events));
        assert_eq!(quiet.matches("== gate").count(), 1, "{quiet}");
    }

    #[test]
    fn github_groups_and_annotations() {
        let out = untimed(&render(Verbosity::Normal, true, &failed_run()));
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "::warning::no load balancer");
        assert_eq!(lines[1], "::group::batch 1/1: web1");
        let end = lines.iter().position(|l| *l == "::endgroup::").unwrap();
        let table = lines.iter().position(|l| l.starts_with("HOST")).unwrap();
        assert!(end < table, "{out}");
        assert!(
            out.contains("::error title=web1 failed at restart::boom%2C 100%25")
                || out.contains("::error title=web1 failed at restart::boom, 100%25"),
            "{out}"
        );
        assert!(out.ends_with(
            "error: deploy failed on web1 (restart)\n::error title=shipit::deploy failed on web1 (restart)"
        ));
        assert_eq!(out.matches("::group::").count(), 1);
        assert_eq!(out.matches("::endgroup::").count(), 1);
    }
}
