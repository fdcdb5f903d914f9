//! One file per command: each is a short script that wires the layers
//! together (config → plan → execute → report). Nothing here quotes
//! commands, retries, or draws output.

pub mod deploy;
pub mod fleet;
pub mod releases;
pub mod rollback;

use std::path::PathBuf;

use crate::cli::Global;
use crate::config::{self, Config, Stage};
use crate::error::Error;
use crate::report::Reporter;
use crate::report::plain::{Plain, Verbosity};

/// What every stage command starts from.
pub struct Context {
    pub config: Config,
    pub stage: Stage,
    pub global: Global,
}

impl Context {
    pub fn load(stage: &str, global: Global) -> Result<Context, Error> {
        let path = global
            .config
            .clone()
            .unwrap_or_else(|| PathBuf::from("deploy.toml"));
        let config = config::load(&path)?;
        let stage = config.stage(stage)?.clone();
        Ok(Context {
            config,
            stage,
            global,
        })
    }

    /// The directory relative paths in deploy.toml are relative to; the
    /// build command runs there.
    pub fn base_dir(&self) -> PathBuf {
        match self.config.file.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    pub fn verbosity(&self) -> Verbosity {
        if self.global.quiet {
            Verbosity::Quiet
        } else if self.global.verbose {
            Verbosity::Verbose
        } else {
            Verbosity::Normal
        }
    }

    /// Where run events go: plain lines on stderr.
    pub fn reporter(&self) -> Box<dyn Reporter> {
        Box::new(Plain::new(std::io::stderr(), self.verbosity()))
    }
}

use crate::execute::RunReport;
use crate::execute::lb::preflight;
use crate::exit::Exit;
use crate::plan::{Operation, Plan};
use crate::report::HostResult;
use crate::transport::Transport;

/// Turns a finished run into the command's result. The report itself has
/// already been shown; this adds the one-line verdict and what to do.
pub fn run_result(plan: &Plan, report: &RunReport) -> Result<Exit, Error> {
    if report.ok {
        return Ok(Exit::Success);
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
        (
            Exit::Interrupted,
            format!("{operation} interrupted; {state}"),
        )
    } else if !changed {
        (
            Exit::FailedUnchanged,
            format!(
                "{operation} failed on {}; no host was switched",
                failed.join(", ")
            ),
        )
    } else {
        (
            Exit::Partial,
            format!(
                "{operation} failed on {}; {state}. Roll back with `shipit {} rollback`, or fix and deploy again",
                failed.join(", "),
                plan.stage
            ),
        )
    };
    Err(Error::Run { exit, message })
}

/// The load balancer check of a plan, before it runs: warnings are
/// printed, problems refuse the run with nothing changed.
pub async fn check_load_balancers<T: Transport>(plan: &Plan, transport: &T) -> Result<(), Error> {
    let found = preflight(plan, transport).await;
    for warning in &found.warnings {
        eprintln!("warning: {warning}");
    }
    if found.problems.is_empty() {
        return Ok(());
    }
    let verb = match plan.operation {
        Operation::Deploy => "deploying",
        Operation::Rollback => "rolling back",
    };
    Err(Error::Unchanged(format!(
        "not {verb}; nothing was changed on any host:\n  {}",
        found.problems.join("\n  ")
    )))
}
