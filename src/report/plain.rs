//! Plain, greppable lines: one per host step, then a per-host summary.
//! Used when stderr is not a terminal, in CI, and whenever bars are off.
//!
//! ```text
//! 10:15:02 web1     upload       ok  (0.4s)
//! 10:15:09 web2     health       FAILED  (30.0s)  status 503, body "starting" (60 tries)
//! ```

use std::io::Write;
use std::sync::Mutex;

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
    out: Mutex<W>,
    verbosity: Verbosity,
}

impl<W: Write + Send> Plain<W> {
    pub fn new(out: W, verbosity: Verbosity) -> Self {
        Plain {
            out: Mutex::new(out),
            verbosity,
        }
    }

    pub fn into_inner(self) -> W {
        self.out.into_inner().expect("plain reporter lock")
    }

    fn line(&self, text: &str) {
        let mut out = self.out.lock().expect("plain reporter lock");
        let now = jiff::Zoned::now();
        // A reporter that cannot write has nowhere to say so.
        let _ = writeln!(out, "{} {text}", now.strftime("%H:%M:%S"));
    }

    fn raw(&self, text: &str) {
        let mut out = self.out.lock().expect("plain reporter lock");
        let _ = writeln!(out, "{text}");
    }
}

pub fn seconds(d: std::time::Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

impl<W: Write + Send> Reporter for Plain<W> {
    fn event(&self, event: &Event) {
        let normal = self.verbosity >= Verbosity::Normal;
        let verbose = self.verbosity >= Verbosity::Verbose;
        match event {
            Event::RunStarted {
                operation,
                app,
                stage,
                release,
                hosts,
                batches,
                ..
            } if normal => self.line(&format!(
                "{}: {} host{}, {} batch{}",
                match operation {
                    crate::plan::Operation::Deploy => format!("deploy {app} {release} to {stage}"),
                    crate::plan::Operation::Rollback =>
                        format!("roll {app} on {stage} back to {release}"),
                },
                hosts.len(),
                if hosts.len() == 1 { "" } else { "s" },
                batches.len(),
                if batches.len() == 1 { "" } else { "es" },
            )),
            Event::PhaseStarted { phase, hosts } if normal => {
                let what = match phase {
                    Phase::Connect => "connect".to_string(),
                    Phase::Repair => "repair".to_string(),
                    Phase::Prepare => "prepare".to_string(),
                    Phase::Batch { number, of } => format!("batch {number}/{of}"),
                    Phase::Undo { number, of } => format!("rollback {number}/{of}"),
                    Phase::Finish => "finish".to_string(),
                };
                self.line(&format!("== {what}: {}", hosts.join(", ")));
            }
            Event::StepStarted { host, step, action } if verbose => {
                self.line(&format!("{host:<8} {:<12} $ {action}", step.as_str()));
            }
            Event::Output {
                host, step, line, ..
            } if verbose => {
                self.line(&format!("{host:<8} {:<12} | {line}", step.as_str()));
            }
            Event::StepFinished {
                host,
                step,
                ok,
                duration,
                result,
                error,
            } if normal || !ok => {
                let mut text = format!(
                    "{host:<8} {:<12} {}  ({})",
                    step.as_str(),
                    if *ok { result.as_str() } else { "FAILED" },
                    seconds(*duration)
                );
                if let Some(error) = error {
                    text.push_str("  ");
                    text.push_str(&error.replace('\n', "\n    "));
                }
                self.line(&text);
            }
            Event::Note { host, message } => {
                let host = host.as_deref().unwrap_or("shipit");
                self.line(&format!("{host:<8} {message}"));
            }
            Event::RunFinished { hosts, .. } => {
                let mut table = vec![[
                    "HOST".to_string(),
                    "BEFORE".into(),
                    "NOW".into(),
                    "RESULT".into(),
                    "TIME".into(),
                ]];
                for h in hosts {
                    let release = |r: &Option<crate::host::ReleaseId>| {
                        r.as_ref().map_or("-".to_string(), ToString::to_string)
                    };
                    let mut result = h.result.label();
                    if h.drained {
                        result.push_str(", left drained");
                    }
                    table.push([
                        h.host.clone(),
                        release(&h.before),
                        release(&h.now),
                        result,
                        seconds(h.duration),
                    ]);
                }
                let widths: Vec<usize> = (0..5)
                    .map(|i| {
                        table
                            .iter()
                            .map(|r| r[i].chars().count())
                            .max()
                            .unwrap_or(0)
                    })
                    .collect();
                self.raw("");
                for row in &table {
                    let cells: Vec<String> = row
                        .iter()
                        .zip(&widths)
                        .map(|(c, w)| format!("{c:<w$}"))
                        .collect();
                    self.raw(cells.join("  ").trim_end());
                }
                for h in hosts {
                    if let HostResult::Failed { step, error, .. } = &h.result {
                        self.raw(&format!(
                            "\n{}: {} failed:\n  {}",
                            h.host,
                            step.as_str(),
                            error.replace('\n', "\n  ")
                        ));
                    }
                }
            }
            _ => {}
        }
    }
}
