//! How commands reach a host. The executor only ever sees [`Transport`]; the
//! SSH implementation lives in [`ssh`], and commands that run on the machine
//! running shipit go through [`local`].
//!
//! A transport knows nothing about releases, steps or plans: it runs one
//! rendered POSIX `sh` command line on one named host and reports exactly how
//! it ended.

#[cfg(test)]
pub mod fake;
pub mod local;
pub mod ssh;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

/// Size of the pieces stdin is streamed in. 8 KiB writes (russh's default
/// copy) are 1.7x slower than 256 KiB ones against OpenSSH.
pub const STDIN_CHUNK: usize = 256 * 1024;

/// One command for one host.
#[derive(Debug, Clone)]
pub struct ExecRequest {
    /// A complete POSIX `sh` command line, already quoted (see `crate::shell`).
    pub command: String,
    /// Streamed to the command's stdin, followed by EOF.
    pub stdin: Option<Stdin>,
    /// The command fails with [`TransportError::Timeout`] if it runs longer.
    pub timeout: Option<Duration>,
}

/// What a command reads on stdin.
#[derive(Debug, Clone)]
pub enum Stdin {
    /// A short input held in memory (a script, an admin request).
    Bytes(Bytes),
    /// A file on the machine running shipit (the release archive), read
    /// piece by piece as it is sent. Every host's upload shares the one open
    /// file and reads at its own offset, so memory holds a piece per host,
    /// never the file.
    File(SharedFile),
}

impl From<Bytes> for Stdin {
    fn from(bytes: Bytes) -> Self {
        Stdin::Bytes(bytes)
    }
}

impl Stdin {
    pub fn len(&self) -> u64 {
        match self {
            Stdin::Bytes(bytes) => bytes.len() as u64,
            Stdin::File(file) => file.len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The input if it is held in memory.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Stdin::Bytes(bytes) => Some(bytes),
            Stdin::File(_) => None,
        }
    }

    /// The next piece of at most [`STDIN_CHUNK`] bytes from `offset`; empty
    /// at the end.
    pub async fn chunk(&self, offset: u64) -> std::io::Result<Bytes> {
        match self {
            Stdin::Bytes(bytes) => {
                let start = (offset as usize).min(bytes.len());
                let end = (start + STDIN_CHUNK).min(bytes.len());
                Ok(bytes.slice(start..end))
            }
            Stdin::File(file) => file.chunk(offset).await,
        }
    }
}

/// An open file and its length, shared by every command that sends it.
#[derive(Debug, Clone)]
pub struct SharedFile {
    file: Arc<std::fs::File>,
    len: u64,
}

impl SharedFile {
    /// `file` must not change while it is shared: its length is read once.
    pub fn new(file: std::fs::File) -> std::io::Result<Self> {
        let len = file.metadata()?.len();
        Ok(SharedFile {
            file: Arc::new(file),
            len,
        })
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Reads at `offset` without moving a shared cursor (`pread`), off the
    /// async threads.
    async fn chunk(&self, offset: u64) -> std::io::Result<Bytes> {
        let want = self.len.saturating_sub(offset).min(STDIN_CHUNK as u64) as usize;
        if want == 0 {
            return Ok(Bytes::new());
        }
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || {
            let mut buffer = vec![0; want];
            std::os::unix::fs::FileExt::read_exact_at(&*file, &mut buffer, offset).map_err(
                |e| match e.kind() {
                    std::io::ErrorKind::UnexpectedEof => {
                        std::io::Error::other("the file became shorter while it was being sent")
                    }
                    _ => e,
                },
            )?;
            Ok(Bytes::from(buffer))
        })
        .await
        .map_err(std::io::Error::other)?
    }
}

/// How a remote command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    Code(u32),
    Signal {
        name: String,
        core_dumped: bool,
    },
    /// The channel closed without an exit status or signal (sshd killed, say).
    Unknown,
}

impl Exit {
    pub fn success(&self) -> bool {
        matches!(self, Exit::Code(0))
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exit::Code(code) => write!(f, "exit status {code}"),
            Exit::Signal { name, core_dumped } => {
                write!(f, "killed by signal {name}")?;
                if *core_dumped {
                    write!(f, " (core dumped)")?;
                }
                Ok(())
            }
            Exit::Unknown => write!(f, "ended without an exit status"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Output {
    pub exit: Exit,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    /// The last `lines` lines of stderr, for error messages.
    pub fn stderr_tail(&self, lines: usize) -> String {
        tail(&self.stderr, lines)
    }

    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// The last `lines` non-empty lines of `bytes`, lossily decoded.
pub fn tail(bytes: &[u8], lines: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Watches a command while it runs: upload progress and live output (for
/// progress bars and `-v`). Every method has a no-op default.
pub trait ExecObserver: Send + Sync {
    /// `sent` bytes of stdin have been handed to the connection so far.
    fn stdin_progress(&self, _sent: u64) {}
    /// A chunk of output arrived.
    fn output(&self, _stream: Stream, _data: &[u8]) {}
}

/// An observer that ignores everything.
pub struct Quiet;
impl ExecObserver for Quiet {}

/// Why a command could not be run or finished. A command that ran and
/// exited non-zero is *not* an error here: that is an [`Output`].
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("{host}: cannot connect to {address}: {detail}")]
    Connect {
        host: String,
        address: String,
        detail: String,
    },
    #[error(
        "{host}: host key for {address} is not in {known_hosts} ({fingerprint}).\n  \
         Check the fingerprint, then add it with: {keyscan}\n  \
         or set ssh.host_key_checking = \"accept-new\" to record unknown keys on first use"
    )]
    HostKeyUnknown {
        host: String,
        address: String,
        /// The name or address dialled (what known_hosts is searched for).
        ip: String,
        port: u16,
        fingerprint: String,
        known_hosts: String,
        /// The complete command that records the key (`ssh-keyscan ... >> FILE`,
        /// run through the jump hosts when there are any).
        keyscan: String,
    },
    #[error(
        "{host}: host key for {address} is a {key_type} key ({fingerprint}), but {known_hosts} \
         records only {known_types} for it (line {line}).\n  \
         shipit does not accept a new key type for a known host, even with accept-new: \
         verify the key out of band, then add it with: {keyscan}"
    )]
    HostKeyOtherType {
        host: String,
        address: String,
        key_type: String,
        fingerprint: String,
        known_types: String,
        known_hosts: String,
        line: usize,
        keyscan: String,
    },
    #[error(
        "{host}: host key for {address} ({fingerprint}) is marked @revoked in {known_hosts} line {line}.\n  \
         shipit refuses revoked keys: the host must get a new key, then record that one"
    )]
    HostKeyRevoked {
        host: String,
        address: String,
        fingerprint: String,
        known_hosts: String,
        line: usize,
    },
    #[error(
        "{host}: HOST KEY FOR {address} HAS CHANGED ({fingerprint}; {known_hosts} line {line} says otherwise).\n  \
         Someone may be intercepting the connection, or the host was reinstalled.\n  \
         shipit never accepts a changed key: verify it out of band, then remove the old line \
         with: ssh-keygen -R {known_hosts_key} -f {known_hosts}"
    )]
    HostKeyChanged {
        host: String,
        address: String,
        fingerprint: String,
        known_hosts: String,
        known_hosts_key: String,
        line: usize,
    },
    #[error("{host}: authentication as {user} failed: {detail}")]
    Auth {
        host: String,
        user: String,
        detail: String,
    },
    #[error("{host}: {what} timed out after {}", humantime::format_duration(*.after))]
    Timeout {
        host: String,
        what: String,
        after: Duration,
    },
    #[error("{host}: connection lost: {detail}")]
    Disconnected { host: String, detail: String },
    #[error("{host}: cannot reach it through jump host {jump}: {detail}")]
    Jump {
        host: String,
        jump: String,
        detail: String,
    },
    #[error("{host}: ssh settings: {detail}")]
    Config { host: String, detail: String },
    #[error("{host}: no connection (it failed earlier or was never opened)")]
    NotConnected { host: String },
    #[error("{host}: ssh: {detail}")]
    Ssh { host: String, detail: String },
    #[error("cannot run local command: {detail}")]
    Local { detail: String },
}

impl TransportError {
    /// True when the failure happened before any command ran, so nothing on
    /// the host can have changed because of it.
    pub fn before_any_command(&self) -> bool {
        matches!(
            self,
            TransportError::Connect { .. }
                | TransportError::HostKeyUnknown { .. }
                | TransportError::HostKeyChanged { .. }
                | TransportError::HostKeyOtherType { .. }
                | TransportError::HostKeyRevoked { .. }
                | TransportError::Auth { .. }
                | TransportError::Jump { .. }
                | TransportError::Config { .. }
                | TransportError::NotConnected { .. }
        )
    }
}

/// Runs commands on named hosts. Implementations keep one connection per
/// host for the whole run and may run several commands on it at once.
pub trait Transport: Send + Sync + 'static {
    fn exec(
        &self,
        host: &str,
        request: ExecRequest,
        observer: &dyn ExecObserver,
    ) -> impl Future<Output = Result<Output, TransportError>> + Send;

    /// Commands with bulk stdin (the release) worth running at once: what
    /// keeps the hosts busy without growing the controller's memory with
    /// the fleet.
    fn bulk_at_once(&self) -> usize {
        8
    }
}
