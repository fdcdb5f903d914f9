//! One file per command: each is a short script that wires the layers
//! together (config → plan → execute → report). Nothing here quotes
//! commands, retries, or draws output.

pub mod check;
pub mod cleanup;
pub mod completions;
pub mod deploy;
pub mod exec;
pub mod fleet;
pub mod init;
pub mod lock;
pub mod man;
pub mod releases;
pub mod rollback;
pub mod run;
pub mod status;
pub mod steer;

use std::path::PathBuf;
use std::sync::Arc;

use crate::cli::Global;
use crate::config::select::{self, Filter};
use crate::config::{self, Config, Host, Stage};
use crate::error::Error;
use crate::report::plain::Verbosity;
use crate::report::{Event, Reporter};

/// What every stage command starts from.
pub struct Context {
    pub config: Config,
    pub stage: Stage,
    /// The hosts this run works on: the stage's hosts, narrowed by
    /// `--hosts`/`--roles`, in deploy.toml order. Commands use these, never
    /// `stage.hosts`.
    pub hosts: Vec<Host>,
    /// `--hosts`/`--roles` as given (empty: every host).
    pub filter: Filter,
    pub global: Global,
    reporter: Arc<dyn Reporter>,
}

/// How long a deploy or rollback waits, before it exits, for commands it
/// gave up on to be stopped on their hosts (TERM to their process group).
pub const SETTLE: std::time::Duration = std::time::Duration::from_secs(3);

/// Ctrl-C / SIGTERM / SIGHUP, as seen by a run: the first signal cancels
/// (no new steps), the second hurries (running commands stopped, waits
/// cut, essentials only).
#[derive(Clone, Default)]
pub struct Signals {
    pub cancel: tokio_util::sync::CancellationToken,
    pub hurry: tokio_util::sync::CancellationToken,
}

/// `-q` / `-v` as a [`Verbosity`].
pub fn verbosity(global: &Global) -> Verbosity {
    if global.quiet {
        Verbosity::Quiet
    } else if global.verbose {
        Verbosity::Verbose
    } else {
        Verbosity::Normal
    }
}

impl Context {
    pub fn load(
        stage: &str,
        global: Global,
        filter: Filter,
        reporter: Arc<dyn Reporter>,
    ) -> Result<Context, Error> {
        let path = config_path(&global);
        let config = config::load(&path)?;
        let stage = config.stage(stage)?.clone();
        let hosts = select::select(&stage, &filter).map_err(Error::Usage)?;
        Ok(Context {
            config,
            stage,
            hosts,
            filter,
            global,
            reporter,
        })
    }

    /// With `--hosts`/`--roles`: which hosts were picked and which are left
    /// alone, in one line.
    pub fn selection(&self) -> Option<String> {
        if self.filter.is_empty() {
            return None;
        }
        let names = |hosts: &mut dyn Iterator<Item = &Host>| {
            hosts
                .map(|h| h.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let picked = names(&mut self.hosts.iter());
        let left = names(&mut self.stage.hosts.iter().filter(|h| !self.hosts.contains(h)));
        let mut line = format!(
            "{} selects {} of {} hosts of stage {}: {picked}",
            self.filter.describe(),
            self.hosts.len(),
            self.stage.hosts.len(),
            self.stage.name
        );
        if !left.is_empty() {
            line.push_str(&format!(" (left alone: {left})"));
        }
        Some(line)
    }

    /// The directory relative paths in deploy.toml are relative to; the
    /// build command runs there.
    pub fn base_dir(&self) -> PathBuf {
        match self.config.file.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    /// deploy.toml's directory as an absolute path, where local commands
    /// (LB commands, local hooks) run.
    pub fn local_dir(&self) -> Option<String> {
        std::path::absolute(self.base_dir())
            .ok()
            .map(|p| p.to_string_lossy().into_owned())
    }

    pub fn verbosity(&self) -> Verbosity {
        verbosity(&self.global)
    }

    /// `[env]`, resolved for a run. A dry run shows what it cannot read
    /// (a secret not set here, say) as a placeholder instead of failing.
    pub fn env(&self, dry_run: bool) -> Result<Vec<(String, crate::shell::Word)>, Error> {
        let mut vars = Vec::new();
        for var in &self.stage.env {
            match var.resolve() {
                Ok(word) => vars.push((var.name.clone(), word)),
                Err(_) if dry_run => {
                    let shown = match &var.value {
                        config::EnvValue::FromEnv(name) => format!("<from_env {name}>"),
                        config::EnvValue::FromFile(path) => {
                            format!("<from_file {}>", path.display())
                        }
                        config::EnvValue::Literal(_) => "<value>".to_string(),
                    };
                    vars.push((var.name.clone(), crate::shell::Word::Plain(shown)));
                }
                Err(problem) => {
                    return Err(Error::Usage(format!(
                        "{}: {problem}",
                        self.config.file.display()
                    )));
                }
            }
        }
        Ok(vars)
    }

    /// Where events go: progress bars or plain lines on stderr, and JSON
    /// lines on stdout with `--json`.
    pub fn reporter(&self) -> Arc<dyn Reporter> {
        self.reporter.clone()
    }

    pub fn event(&self, event: &Event) {
        self.reporter.event(event);
    }

    /// A message for the user, through the reporter so every output
    /// format carries it.
    pub fn note(&self, host: Option<&str>, message: &str) {
        self.reporter.event(&Event::Note {
            host: host.map(ToString::to_string),
            message: message.to_string(),
        });
    }

    /// Prints what a command produces for people (a plan, a table): on
    /// stdout, or with `--json` (where stdout carries only JSON) on stderr
    /// unless `-q`.
    pub fn print(&self, text: &str) {
        if !self.global.json {
            print!("{text}");
        } else if !self.global.quiet {
            eprint!("{text}");
        }
    }
}

/// The deploy file: `-c FILE`, `SHIPIT_CONFIG`, or `./deploy.toml`.
pub fn config_path(global: &Global) -> PathBuf {
    global
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from("deploy.toml"))
}

use crate::execute::RunReport;
use crate::exit::Exit;
use crate::plan::Plan;
use crate::report::HostResult;

/// Turns a finished run into the command's result. The report itself has
/// already been shown; this adds the one-line verdict and what to do.
pub fn run_result(plan: &Plan, report: &RunReport) -> Result<Exit, Error> {
    if report.ok {
        return Ok(Exit::Success);
    }
    if let (Some(steered), false) = (&report.steered, report.interrupted) {
        return Err(steer::stopped(plan, report, steered));
    }
    let operation = plan.operation.as_str();
    let changed = report.hosts.iter().any(|h| h.now != h.before || h.drained);
    let failed: Vec<String> = report
        .hosts
        .iter()
        .filter_map(|h| match &h.result {
            HostResult::Failed { step, .. } => Some(format!("{} ({})", h.host, step.as_str())),
            _ => None,
        })
        .collect();
    let on_new = report
        .hosts
        .iter()
        .filter(|h| h.now.as_ref() == Some(&plan.release))
        .count();
    let state = format!(
        "{on_new} of {} host{} now run{} {}",
        report.hosts.len(),
        if report.hosts.len() == 1 { "" } else { "s" },
        if on_new == 1 { "s" } else { "" },
        plan.release
    );
    let (exit, message) = if report.interrupted {
        let back = if report.undo_ran && report.undo_failed.is_empty() {
            "; switched hosts were returned to their previous release"
        } else {
            ""
        };
        (
            Exit::Interrupted,
            format!("{operation} interrupted{back}; {state}"),
        )
    } else if report.undo_ran && report.undo_failed.is_empty() && !changed {
        let what = if plan.undoing {
            format!(
                "the rollback of {} that run {} began is finished",
                plan.release,
                plan.journal_run()
            )
        } else {
            format!(
                "{operation} of {} failed on {} and was rolled back",
                plan.release,
                failed.join(", ")
            )
        };
        (
            Exit::RolledBack,
            format!(
                "{what}: every host runs the release it ran before, and {} is marked bad",
                plan.release
            ),
        )
    } else if report.undo_ran {
        (
            Exit::Partial,
            format!(
                "{operation} failed on {} and the rollback failed on {}; {state}. Look at those hosts, then run `shipit {} rollback`",
                failed.join(", "),
                report.undo_failed.join(", "),
                plan.stage
            ),
        )
    } else if !changed {
        let message = match (&report.stopped_by, failed.is_empty()) {
            (Some(why), true) => format!("{operation} stopped: {why}"),
            _ => format!(
                "{operation} failed on {}; no host was switched",
                failed.join(", ")
            ),
        };
        (Exit::FailedUnchanged, message)
    } else {
        let stage = &plan.stage;
        let next = match plan.operation {
            crate::plan::Operation::Rollback => {
                format!("Run `shipit {stage} rollback` again once the failing hosts are fixed")
            }
            crate::plan::Operation::Deploy => format!(
                "Continue with `shipit {stage} deploy --resume` once fixed, or roll back with `shipit {stage} rollback`"
            ),
        };
        (
            Exit::Partial,
            format!(
                "{operation} failed on {}; {state}. {next}",
                failed.join(", ")
            ),
        )
    };
    Err(Error::Run { exit, message })
}
