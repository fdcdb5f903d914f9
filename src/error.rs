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
    #[error("{}", lock_message(stage, host, holder, *kind, *age_secs, *stale))]
    LockHeld {
        stage: String,
        host: String,
        holder: String,
        kind: Option<crate::host::lock::LockKind>,
        age_secs: u64,
        stale: bool,
    },
    /// A read-only step (probing hosts) failed; nothing was changed.
    #[error("{0}")]
    Unchanged(String),
    /// The run failed; the report was already shown.
    #[error("{message}")]
    Run { exit: Exit, message: String },
}

fn lock_message(
    stage: &str,
    host: &str,
    holder: &str,
    kind: Option<crate::host::lock::LockKind>,
    age_secs: u64,
    stale: bool,
) -> String {
    use crate::host::lock::LockKind;
    let mut message =
        format!("stage {stage} is locked (seen on {host}): {holder}; nothing was changed");
    if kind == Some(LockKind::Manual) {
        message.push_str(&format!(
            "\n  it is a manual lock: `shipit {stage} unlock` removes it when its reason is gone"
        ));
    } else if stale {
        message.push_str(&format!(
            "\n  its run stopped refreshing it {age_secs}s ago and is presumably dead: \
             take it over with --break-stale-lock (`shipit {stage} status` shows what that run did)"
        ));
    } else {
        message.push_str(&format!(
            "\n  that run is alive (heartbeat {age_secs}s ago): wait for it with --lock-wait 10m"
        ));
        if matches!(kind, Some(LockKind::Deploy | LockKind::Rollback)) {
            message.push_str(&format!(
                ", or steer it: `shipit {stage} pause`, `abort`, `rollback` (docs/run-control.md)"
            ));
        }
    }
    message
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
            Error::LockHeld { .. } => Exit::LockHeld,
            Error::Run { exit, .. } => *exit,
        }
    }
}
