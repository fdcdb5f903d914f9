//! Exit codes: what a CI job can branch on. Documented in docs/exit-codes.md;
//! changing a number is a breaking change.

/// How a shipit command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Exit {
    /// Everything asked for was done.
    Success,
    /// Failed, and no host was changed (refused up front, nothing to roll
    /// back to, upload failed before any switch…).
    FailedUnchanged,
    /// Bad command line or deploy.toml.
    Usage,
    /// A host could not be reached or authenticated, before any change.
    Connection,
    /// Failed after switching hosts; every switched host was returned to
    /// its previous release.
    RolledBack,
    /// Failed and hosts were left changed: on different releases, or on a
    /// release that did not become healthy. Needs a look.
    Partial,
    /// Another run holds the deploy lock.
    LockHeld,
    /// Stopped by Ctrl-C or SIGTERM.
    Interrupted,
}

impl Exit {
    pub fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::FailedUnchanged => 1,
            Exit::Usage => 2,
            Exit::Connection => 3,
            Exit::RolledBack => 4,
            Exit::Partial => 5,
            Exit::LockHeld => 6,
            Exit::Interrupted => 130,
        }
    }
}
