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

use tokio_util::sync::CancellationToken;

use cli::{Invocation, StageCommand};
use exit::Exit;

/// Runs shipit with `args` (without the program name) and returns the
/// process exit code. Errors are printed here, once.
pub fn run(args: Vec<OsString>) -> u8 {
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
    let result = runtime.block_on(dispatch(invocation));
    match result {
        Ok(exit) => exit.code(),
        Err(e) => {
            eprintln!("error: {e}");
            e.exit().code()
        }
    }
}

async fn dispatch(invocation: Invocation) -> Result<Exit, error::Error> {
    match invocation {
        Invocation::Stage {
            stage,
            global,
            command,
        } => {
            let ctx = commands::Context::load(&stage, global)?;
            let cancel = interrupt_token();
            match command {
                StageCommand::Deploy(args) => commands::deploy::run(&ctx, &args, cancel).await,
                StageCommand::Rollback(args) => commands::rollback::run(&ctx, &args, cancel).await,
                StageCommand::Releases => commands::releases::run(&ctx).await,
            }
        }
    }
}

/// Cancelled on the first Ctrl-C or SIGTERM: the run stops starting steps,
/// lets running ones finish and puts drained hosts back. A second signal
/// exits at once.
fn interrupt_token() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        for count in 0.. {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            if count == 0 {
                eprintln!(
                    "\nshipit: stopping: no new steps start; running steps finish and drained hosts go back into the load balancer (signal again to quit at once)"
                );
                cancel.cancel();
            } else {
                eprintln!("shipit: quitting at once; hosts may be left drained");
                std::process::exit(i32::from(Exit::Interrupted.code()));
            }
        }
    });
    token
}
