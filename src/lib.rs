//! shipit: agentless SSH deploys.
//!
//! The flow, one module per stage of it: `cli` (what was asked) → `config`
//! (deploy.toml, validated) → `plan` (what will happen, as data) →
//! `execute` (doing it over a `transport`, reporting `report::Event`s) →
//! `host` (the layout and rules on the hosts themselves). `lb` describes
//! load balancers and their drain / enable actions as data. `commands`
//! wires these together, one file per command.

pub mod artifact;
pub mod cli;
pub mod commands;
pub mod config;
pub mod error;
pub mod execute;
pub mod exit;
pub mod host;
pub mod lb;
pub mod plan;
pub mod report;
pub mod shell;
pub mod transport;
pub mod who;

#[cfg(test)]
mod testing;

use std::ffi::OsString;
use std::sync::Arc;

use cli::{Invocation, StageCommand};
use exit::Exit;
use host::steer::Ask;
use report::{Event, Reporter};

/// Runs shipit with `args` (without the program name) and returns the
/// process exit code. Errors are reported here, once, as the final
/// `result` event (`error: …` on stderr, and a JSON line with `--json`).
pub fn run(args: Vec<OsString>) -> u8 {
    init_debug_log();
    let invocation = match cli::parse(args) {
        Ok(invocation) => invocation,
        Err(e) => {
            let _ = e.print();
            return e.exit_code() as u8;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            return Exit::FailedUnchanged.code();
        }
    };
    let global = match &invocation {
        Invocation::Stage { global, .. } | Invocation::Init { global } => global.clone(),
        Invocation::Completions { .. } | Invocation::Man => cli::Global::default(),
    };
    let reporter = report::choose::build(report::choose::detect(
        global.json,
        commands::verbosity(&global),
    ));
    let result = runtime.block_on(dispatch(invocation, reporter.clone()));
    let (exit, message) = match result {
        Ok(exit) => (exit, None),
        Err(e) => (e.exit(), Some(e.to_string())),
    };
    reporter.event(&Event::Result {
        ok: exit == Exit::Success,
        exit_code: exit.code(),
        exit,
        message,
    });
    exit.code()
}

async fn dispatch(
    invocation: Invocation,
    reporter: Arc<dyn Reporter>,
) -> Result<Exit, error::Error> {
    match invocation {
        Invocation::Init { global } => commands::init::run(&global),
        Invocation::Completions { shell } => commands::completions::run(shell),
        Invocation::Man => commands::man::run(),
        Invocation::Stage {
            stage,
            global,
            select,
            command,
        } => {
            let ctx = commands::Context::load(&stage, global, select.filter(), reporter.clone())?;
            // Ready by the time a health check needs it.
            execute::health::prepare_client();
            if let Some(selection) = ctx.selection() {
                ctx.note(None, &selection);
            }
            let stopping = match &command {
                StageCommand::Exec(_) => {
                    "stopping the command on every host and waiting for it to end (signal again to stop waiting)"
                }
                StageCommand::Pause(_)
                | StageCommand::Resume
                | StageCommand::Promote(_)
                | StageCommand::Abort(_)
                | StageCommand::Tune(_) => {
                    "stopping: no longer waiting for the run's answer; a request handed over stays with the run"
                }
                _ => {
                    "stopping: no new step starts; running steps finish, drained hosts go back into the \
                     load balancer and the lock is released (signal again to stop running commands and hurry)"
                }
            };
            let signals = watch_signals(reporter, stopping);
            match command {
                StageCommand::Deploy(args) => commands::deploy::run(&ctx, &args, &signals).await,
                StageCommand::Rollback(args) => {
                    commands::rollback::run(&ctx, &args, &signals).await
                }
                StageCommand::Releases => commands::releases::run(&ctx).await,
                StageCommand::Status => commands::status::run(&ctx).await,
                StageCommand::Lock(args) => commands::lock::lock_command(&ctx, args.message).await,
                StageCommand::Unlock(args) => {
                    commands::lock::unlock_command(&ctx, args.force).await
                }
                StageCommand::Check => commands::check::run(&ctx).await,
                StageCommand::Exec(args) => commands::exec::run(&ctx, &args, &signals).await,
                StageCommand::Cleanup(args) => commands::cleanup::run(&ctx, &args, &signals).await,
                StageCommand::Pause(args) => {
                    let ask = Ask::Pause {
                        message: args.message,
                    };
                    commands::steer::run(&ctx, ask, &signals).await
                }
                StageCommand::Resume => commands::steer::run(&ctx, Ask::Resume, &signals).await,
                StageCommand::Promote(args) => {
                    let ask = Ask::Promote { all: args.all };
                    commands::steer::run(&ctx, ask, &signals).await
                }
                StageCommand::Abort(args) => {
                    let ask = Ask::Abort {
                        message: args.message,
                    };
                    commands::steer::run(&ctx, ask, &signals).await
                }
                StageCommand::Tune(args) => {
                    let ask = Ask::Tune {
                        batch_size: args.batch_size,
                        bake_ms: args.bake.map(|d| d.as_millis() as u64),
                    };
                    commands::steer::run(&ctx, ask, &signals).await
                }
            }
        }
    }
}

/// Ctrl-C, SIGTERM and SIGHUP (a closed terminal, a dropped SSH session,
/// some CI runners' cancel): the first stops the run at the next step
/// (running steps finish, drained hosts go back, the lock is released;
/// `exec` stops its command on the hosts), saying so with `stopping`; the
/// second stops running commands, cuts waits short and keeps only those
/// essentials, in a few seconds (GitHub Actions sends SIGINT, then SIGTERM
/// 7.5 s later, then SIGKILL 2.5 s after that); the third quits.
fn watch_signals(reporter: Arc<dyn Reporter>, stopping: &'static str) -> commands::Signals {
    let signals = commands::Signals::default();
    let (cancel, hurry) = (signals.cancel.clone(), signals.hurry.clone());
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) else {
            return;
        };
        let note = |message: &str| {
            reporter.event(&Event::Note {
                host: None,
                message: message.to_string(),
            });
        };
        for count in 0.. {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
                _ = hup.recv() => {}
            }
            match count {
                0 => {
                    note(stopping);
                    cancel.cancel();
                }
                1 => {
                    note(
                        "hurrying: running commands are stopped and waits cut short; only putting hosts back and releasing the lock (signal again to quit at once)",
                    );
                    hurry.cancel();
                }
                _ => {
                    note(
                        "quitting at once; hosts may be left drained and the lock held until its lease runs out",
                    );
                    reporter.event(&Event::Result {
                        ok: false,
                        exit_code: Exit::Interrupted.code(),
                        exit: Exit::Interrupted,
                        message: Some(
                            "quit at once on a third signal; hosts may be left drained".into(),
                        ),
                    });
                    std::process::exit(i32::from(Exit::Interrupted.code()));
                }
            }
        }
    });
    signals
}

/// `SHIPIT_LOG=debug` (or any tracing filter, e.g. `shipit=debug,russh=info`)
/// writes shipit's internal debug log to stderr: for bug reports, not for
/// everyday output.
fn init_debug_log() {
    let Ok(filter) = std::env::var("SHIPIT_LOG") else {
        return;
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .try_init();
}
