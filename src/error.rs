//! The errors a command can end with, each mapped to an exit code. The
//! message is printed once, by `lib::run`.

use crate::artifact::ArtifactError;
use crate::config::ConfigErrors;
use crate::exit::Exit;
use crate::plan::PlanError;
use crate::transport::TransportError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Artifact(#[from] ArtifactError),
    #[error("{0}")]
    Plan(#[from] PlanError),
    #[error("{}", connect_message(.0))]
    Connect(Vec<TransportError>),
    /// A read-only step (probing hosts) failed; nothing was changed.
    #[error("{0}")]
    Unchanged(String),
    /// The run failed; the report was already shown.
    #[error("{message}")]
    Run { exit: Exit, message: String },
}

fn connect_message(errors: &[TransportError]) -> String {
    let mut message = format!(
        "cannot connect to {} host{}; nothing was changed on any host:",
        errors.len(),
        if errors.len() == 1 { "" } else { "s" }
    );
    for e in errors {
        message.push_str("\n  ");
        message.push_str(&e.to_string().replace('\n', "\n  "));
    }
    message
}

impl Error {
    pub fn exit(&self) -> Exit {
        match self {
            Error::Config(_) | Error::Usage(_) => Exit::Usage,
            Error::Artifact(_) | Error::Plan(_) | Error::Unchanged(_) => Exit::FailedUnchanged,
            Error::Connect(_) => Exit::Connection,
            Error::Run { exit, .. } => *exit,
        }
    }
}
