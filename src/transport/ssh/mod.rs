//! The SSH transport: one russh connection per host, opened up front for
//! the whole fleet, and commands run on it as exec channels.
//!
//! This file owns [`SshTransport`] and running a command: channel limits
//! per connection (sshd's `MaxSessions 10` refuses more, and a refusal is
//! treated as backpressure), stdin streamed in [`super::STDIN_CHUNK`] pieces,
//! exit statuses and signals, timeouts and lost connections. How hosts are
//! reached and logged in to lives in `connect`, `auth`, `known_hosts` and
//! `settings`; how a command given up on is stopped, in `stop`;
//! `docs/ssh.md` explains the behaviour to operators.

mod auth;
mod connect;
mod known_hosts;
mod quick_ack;
mod settings;
mod stop;
mod warm;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use russh::ChannelMsg;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use auth::{MAX_ATTEMPTS, PASSPHRASE_VAR};
pub use connect::HANDSHAKES_PER_SSHD;
pub use settings::{HostKeyChecking, SshConfigSource, SshEnv, SshOverrides, SshTarget};
pub use warm::WARM_SHELLS;

use connect::{Connection, Shared, describe};
use stop::{Running, Token, exec_token, tag_command};

use super::{ExecObserver, ExecRequest, Exit, Output, Stdin, Stream, Transport, TransportError};

/// Limits and timeouts for connecting and running commands.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// TCP connect, SSH handshake, and each login step. Default 10 s.
    pub connect_timeout: Duration,
    /// A keepalive is sent after this long without traffic. Default 15 s.
    pub keepalive_interval: Duration,
    /// The connection is dropped after this many unanswered keepalives,
    /// so a host that vanishes fails after about interval x max. Default 3.
    pub keepalive_max: usize,
    /// Targets being connected at once. Default 32.
    pub max_concurrent_connects: usize,
    /// Commands running at once on one host (sshd allows 10 sessions per
    /// connection by default). Default 8.
    pub channels_per_host: usize,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            connect_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(15),
            keepalive_max: 3,
            max_concurrent_connects: 32,
            channels_per_host: 8,
        }
    }
}

impl HostEntry {
    /// Channels of commands running now (or being stopped).
    fn busy(&self) -> usize {
        self.capacity as usize - self.channels.available_permits()
    }
}

struct HostEntry {
    connection: Arc<Connection>,
    /// How it was reached, for a connection of its own (`BULK_INPUT`).
    settings: Arc<settings::HostSettings>,
    channels: Arc<Semaphore>,
    /// The size of `channels`: all of it free means no command is running.
    capacity: u32,
    /// Login shells started ahead of need (`warm`).
    warm: Arc<warm::Pool>,
}

/// Connections to a set of hosts, opened by [`SshTransport::connect`].
pub struct SshTransport {
    hosts: HashMap<String, HostEntry>,
    shared: Arc<Shared>,
}

impl SshTransport {
    /// Opens one connection per target (bounded concurrency), all at once.
    /// Returns the transport holding every connection that worked and, per
    /// target that failed, its error. Jump hosts shared by several targets
    /// are connected once and multiplexed.
    pub async fn connect(
        targets: &[SshTarget],
        overrides: &SshOverrides,
        options: &ConnectOptions,
    ) -> (SshTransport, Vec<TransportError>) {
        Self::connect_with_env(targets, overrides, options, SshEnv::from_process()).await
    }

    /// [`SshTransport::connect`] with an explicit environment (home
    /// directory, local user, agent socket, passphrase) instead of the
    /// process's.
    pub async fn connect_with_env(
        targets: &[SshTarget],
        overrides: &SshOverrides,
        options: &ConnectOptions,
        env: SshEnv,
    ) -> (SshTransport, Vec<TransportError>) {
        let mut resolved = settings::resolve_all(targets, overrides, &env);
        let shared = Arc::new(Shared::new(env, options.clone()));
        let mut errors = Vec::new();
        let mut tasks = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for target in targets {
            if !seen.insert(target.name.clone()) {
                errors.push(TransportError::Config {
                    host: target.name.clone(),
                    detail: "listed twice among the hosts to connect".into(),
                });
                continue;
            }
            match resolved.remove(&target.name) {
                Some(Ok(settings)) => {
                    let shared = shared.clone();
                    let name = target.name.clone();
                    let settings = Arc::new(settings);
                    let kept = settings.clone();
                    tasks.push((
                        name,
                        kept,
                        tokio::spawn(async move { shared.connect_target(&settings).await }),
                    ));
                }
                Some(Err(detail)) => errors.push(TransportError::Config {
                    host: target.name.clone(),
                    detail,
                }),
                None => {}
            }
        }
        let mut hosts = HashMap::new();
        for (name, settings, task) in tasks {
            match task.await {
                Ok(Ok(connection)) => {
                    hosts.insert(
                        name,
                        HostEntry {
                            connection: Arc::new(connection),
                            settings,
                            channels: Arc::new(Semaphore::new(options.channels_per_host.max(1))),
                            capacity: options.channels_per_host.max(1) as u32,
                            warm: Arc::default(),
                        },
                    );
                }
                Ok(Err(e)) => errors.push(e),
                Err(e) => errors.push(TransportError::Ssh {
                    host: name,
                    detail: format!("connecting failed unexpectedly: {e}"),
                }),
            }
        }
        (SshTransport { hosts, shared }, errors)
    }

    /// Names of the hosts with a connection.
    pub fn connected(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.hosts.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Whether `host` has a live connection.
    pub fn is_connected(&self, host: &str) -> bool {
        self.hosts
            .get(host)
            .is_some_and(|h| !h.connection.handle.is_closed())
    }

    /// Jump host connections opened (each shared by all targets behind it).
    pub fn jump_connections(&self) -> usize {
        self.shared.jump_connections().len()
    }

    /// From now on, keeps `n` login shells started and waiting on every
    /// host (see `warm`), so that each command of a run pays a round trip,
    /// not a shell start-up. For runs of many commands per host.
    pub fn prestart_shells(&self, n: usize) {
        for entry in self.hosts.values() {
            entry.warm.set_want(n);
            entry.warm.refill(&entry.connection, entry.busy());
        }
    }

    /// Waits, at most `limit`, until no command holds a channel on any host.
    /// Commands a caller gave up on are stopped in the background (see
    /// `Running`); a caller about to close the transport and exit (after
    /// Ctrl-C, say) waits here first, or they would keep running.
    pub async fn settle(&self, limit: Duration) {
        let all = self
            .hosts
            .values()
            .map(|h| h.channels.acquire_many(h.capacity));
        let _ = tokio::time::timeout(limit, futures::future::join_all(all)).await;
    }

    /// Politely disconnects every host, then the jump hosts.
    pub async fn close(&self) {
        let hosts = self.hosts.values().map(|h| h.connection.disconnect());
        futures::future::join_all(hosts).await;
        for jump in self.shared.jump_connections() {
            jump.disconnect().await;
        }
    }

    async fn run(
        &self,
        host: &str,
        request: ExecRequest,
        observer: &dyn ExecObserver,
    ) -> Result<Output, TransportError> {
        let entry = self
            .hosts
            .get(host)
            .ok_or_else(|| TransportError::NotConnected {
                host: host.to_string(),
            })?;
        let mut permit = entry.channels.clone().acquire_owned().await.map_err(|_| {
            TransportError::NotConnected {
                host: host.to_string(),
            }
        })?;
        if request.stdin.as_ref().is_some_and(|d| d.len() > BULK_INPUT) && self.bulk_apart() {
            return self.run_bulk(host, entry, permit, request, observer).await;
        }
        let connection = &entry.connection;
        // A command without stdin of its own goes to a warm shell when one
        // waits; if sshd turns out to have refused that shell, the command
        // never ran and is sent the usual way.
        if request.stdin.is_none() && !request.command.trim().is_empty() {
            while let Some(mut shell) = entry.warm.take() {
                // This command's permit counts as busy.
                entry.warm.refill(connection, entry.busy());
                let warm::Early::Waiting(early) = shell.early() else {
                    tracing::debug!("{host}: a warm shell had ended; trying the next");
                    continue;
                };
                tracing::debug!("{host}: on a warm shell: {}", request.command);
                let running = Running {
                    connection: connection.clone(),
                    token: shell.token,
                    reader: Some(shell.reader),
                    writer: Some(shell.writer),
                    permit: Some(permit),
                    ended: false,
                };
                match self
                    .finish(
                        host,
                        connection,
                        running,
                        Start::Script(early),
                        &request,
                        observer,
                    )
                    .await
                {
                    Ran::Done(result) => return result,
                    Ran::Refused(back) => permit = back,
                }
            }
        }
        self.exec_fresh(host, connection, permit, &request, observer)
            .await
    }

    /// Runs the request on a new channel of `connection`. Until the channel
    /// is known to be closed, dropping the `Running` inside stops the remote
    /// command and closes the channel.
    async fn exec_fresh(
        &self,
        host: &str,
        connection: &Arc<Connection>,
        permit: OwnedSemaphorePermit,
        request: &ExecRequest,
        observer: &dyn ExecObserver,
    ) -> Result<Output, TransportError> {
        let channel = open_session(host, connection).await?;
        let (reader, writer) = channel.split();
        let token = exec_token();
        let running = Running {
            connection: connection.clone(),
            token: token.clone(),
            reader: Some(reader),
            writer: Some(writer),
            permit: Some(permit),
            ended: false,
        };
        let command = tag_command(&token, &request.command);
        match self
            .finish(
                host,
                connection,
                running,
                Start::Exec(command),
                request,
                observer,
            )
            .await
        {
            Ran::Done(result) => result,
            Ran::Refused(_) => unreachable!("only a warm shell's refusal is handed back"),
        }
    }

    /// Whether bulk input goes over a connection of its own (past
    /// [`BULK_SHARED_UP_TO`] hosts) rather than the run's.
    fn bulk_apart(&self) -> bool {
        self.hosts.len() > BULK_SHARED_UP_TO
    }

    /// Runs a command with bulk input (the release) on a connection of its
    /// own, closed afterwards (past [`BULK_SHARED_UP_TO`] hosts). russh
    /// keeps the buffers it grew to send a burst of data (about 1 MB
    /// measured) for as long as the connection lives: on the run's one
    /// connection per host that is 1 MB per host for the whole run; this
    /// way it is per upload in flight, and freed when it ends.
    async fn run_bulk(
        &self,
        host: &str,
        entry: &HostEntry,
        permit: OwnedSemaphorePermit,
        request: ExecRequest,
        observer: &dyn ExecObserver,
    ) -> Result<Output, TransportError> {
        let connection = Arc::new(self.shared.connect_target(&entry.settings).await?);
        let result = self
            .exec_fresh(host, &connection, permit, &request, observer)
            .await;
        // A command still being stopped (a timeout) keeps its own handle on
        // the connection until it is; otherwise it ends here.
        if !matches!(result, Err(TransportError::Timeout { .. })) {
            connection.disconnect().await;
        }
        result
    }

    /// Starts the command on `running`'s channel, within the request's
    /// timeout, and reads it to the end.
    async fn finish(
        &self,
        host: &str,
        connection: &Arc<Connection>,
        mut running: Running,
        start: Start,
        request: &ExecRequest,
        observer: &dyn ExecObserver,
    ) -> Ran {
        let warm = matches!(start, Start::Script(_));
        let outcome = {
            let (Some(reader), Some(writer)) = (running.reader.as_mut(), running.writer.as_ref())
            else {
                unreachable!("set by the caller")
            };
            let token = running.token.clone();
            let work = exec_on_channel(
                host,
                start,
                &token,
                request,
                observer,
                (reader, writer),
                connection,
            );
            match request.timeout {
                None => Ok(work.await),
                Some(limit) => tokio::time::timeout(limit, work).await.map_err(|_| limit),
            }
        };
        match outcome {
            Ok((Err(_), false, true)) if warm => {
                // sshd refused the warm shell: nothing ran on it.
                running.ended = true;
                Ran::Refused(running.permit.take().expect("set by the caller"))
            }
            Ok((result, channel_gone, _)) => {
                running.ended = channel_gone;
                Ran::Done(result)
            }
            // `running` is dropped on return: that stops the command.
            Err(limit) => Ran::Done(Err(TransportError::Timeout {
                host: host.to_string(),
                what: format!("`{}`", request.command),
                after: limit,
            })),
        }
    }
}

/// Input larger than this is bulk: the release.
const BULK_INPUT: u64 = 256 * 1024;

/// Up to this many hosts, bulk input goes over the run's one connection
/// to the host, as through an OpenSSH ControlMaster, to every host at once:
/// a second connection costs the host a second sshd login, which on the
/// test fleet cost as much time as sending a 10 MB release, and streams
/// held back leave the hosts' unpacking idle (64 hosts: 6.4 s at once
/// against 10.6 s 8 at a time). Past it, over a short-lived connection of
/// its own ([`SshTransport::run_bulk`]), [`BULK_APART_AT_ONCE`] at a time,
/// so that the buffers russh keeps per connection that sent bulk (about
/// 1 MB) do not grow the controller's memory with the fleet: up to here
/// they hold at most 64 MB; at 200 hosts they would hold 200.
const BULK_SHARED_UP_TO: usize = 64;

/// Uploads at once past [`BULK_SHARED_UP_TO`] hosts: each in flight holds
/// about an SSH window (sshd's is 2 MiB) in russh's buffers, 3 MB
/// measured, until its connection closes.
const BULK_APART_AT_ONCE: usize = 8;

/// How a command is started on its channel.
enum Start {
    /// An exec request with this (tagged) command line.
    Exec(String),
    /// The request's command as the script of a warm shell, which already
    /// sent these messages.
    Script(Vec<ChannelMsg>),
}

/// How [`SshTransport::finish`] ended.
enum Ran {
    Done(Result<Output, TransportError>),
    /// A warm shell sshd had refused: the permit, for another try.
    Refused(OwnedSemaphorePermit),
}

/// Runs `command` on an open channel and reads it to the end. The flag
/// says whether the channel is gone (read until `None`).
async fn exec_on_channel(
    host: &str,
    start: Start,
    token: &Token,
    request: &ExecRequest,
    observer: &dyn ExecObserver,
    (reader, writer): (
        &mut russh::ChannelReadHalf,
        &russh::ChannelWriteHalf<russh::client::Msg>,
    ),
    connection: &Connection,
) -> (Result<Output, TransportError>, bool, bool) {
    let (early, script) = match start {
        Start::Exec(command) => {
            if let Err(e) = writer.exec(true, command.as_bytes()).await {
                return (Err(lost_or(host, connection, e)), false, false);
            }
            (Vec::new(), None)
        }
        Start::Script(early) => (early, Some(Bytes::from(format!("{}\n", request.command)))),
    };
    let feed = async {
        if let Some(script) = &script {
            let _ = writer.data_bytes(script.clone()).await;
        } else if let Some(data) = &request.stdin
            && let Err(e) = feed_stdin(writer, data, observer).await
        {
            // No EOF: the command must not take a cut-short input for all
            // of it. It is stopped instead (see `Running`).
            return Some(e);
        }
        let _ = writer.eof().await;
        None
    };
    let collect = collect_output(early, reader, token, observer);
    // Feed and read at once. Once the channel is gone, stop feeding: a
    // command that exits without reading all its input leaves the feeder
    // waiting for window space that will never come.
    let (stdout, stderr, exit, refused) = {
        let mut feed = std::pin::pin!(feed);
        let mut collect = std::pin::pin!(collect);
        let mut fed = false;
        loop {
            tokio::select! {
                unreadable = &mut feed, if !fed => match unreadable {
                    None => fed = true,
                    Some(e) => {
                        let error = TransportError::Local {
                            detail: format!(
                                "cannot read what `{}` reads on stdin: {e}",
                                request.command
                            ),
                        };
                        return (Err(error), false, false);
                    }
                },
                collected = &mut collect => break collected,
            }
        }
    };
    if refused {
        let error = TransportError::Ssh {
            host: host.to_string(),
            detail: format!("sshd refused to run `{}`", request.command),
        };
        return (Err(error), false, true);
    }
    let exit = match exit {
        Some(exit) => exit,
        None if connection.handle.is_closed() => {
            let error = TransportError::Disconnected {
                host: host.to_string(),
                detail: format!(
                    "{} while `{}` was running; its outcome is unknown",
                    connection.lost_reason(),
                    request.command
                ),
            };
            return (Err(error), true, false);
        }
        None => Exit::Unknown,
    };
    let output = Output {
        exit,
        stdout,
        stderr,
    };
    (Ok(output), true, false)
}

impl Transport for SshTransport {
    fn exec(
        &self,
        host: &str,
        request: ExecRequest,
        observer: &dyn ExecObserver,
    ) -> impl Future<Output = Result<Output, TransportError>> + Send {
        self.run(host, request, observer)
    }

    fn bulk_at_once(&self) -> usize {
        if self.bulk_apart() {
            BULK_APART_AT_ONCE
        } else {
            self.hosts.len()
        }
    }
}

/// The error for a failed channel operation: the connection's fate if it
/// is gone, else the error itself.
fn lost_or(host: &str, connection: &Connection, e: russh::Error) -> TransportError {
    if connection.handle.is_closed() {
        TransportError::Disconnected {
            host: host.to_string(),
            detail: connection.lost_reason(),
        }
    } else {
        TransportError::Ssh {
            host: host.to_string(),
            detail: describe(&e),
        }
    }
}

/// Opens a session channel. sshd refusing one (past `MaxSessions`, often
/// because another client shares the limit) means "not now": wait and retry.
async fn open_session(
    host: &str,
    connection: &Connection,
) -> Result<russh::Channel<russh::client::Msg>, TransportError> {
    const ATTEMPTS: u32 = 40;
    let mut pause = Duration::from_millis(50);
    let mut attempt = 1;
    loop {
        match connection.handle.channel_open_session().await {
            Ok(channel) => return Ok(channel),
            Err(russh::Error::ChannelOpenFailure(why)) if attempt < ATTEMPTS => {
                tracing::debug!("{host}: session channel refused ({why:?}), retrying in {pause:?}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
                attempt += 1;
            }
            Err(russh::Error::ChannelOpenFailure(why)) => {
                return Err(TransportError::Ssh {
                    host: host.to_string(),
                    detail: format!(
                        "sshd refused a session channel {ATTEMPTS} times ({why:?}); lower \
                         channels_per_host, or raise MaxSessions in the host's sshd_config"
                    ),
                });
            }
            Err(e) => return Err(lost_or(host, connection, e)),
        }
    }
}

/// Streams `data` in [`super::STDIN_CHUNK`] pieces, each sent once the channel's
/// window has room, so a host holds at most a piece plus its window in
/// memory. A file that cannot be read is an error; a command that stops
/// reading early is its own business (its exit status will tell).
async fn feed_stdin(
    writer: &russh::ChannelWriteHalf<russh::client::Msg>,
    data: &Stdin,
    observer: &dyn ExecObserver,
) -> Result<(), std::io::Error> {
    let mut sent = 0u64;
    while sent < data.len() {
        let chunk = data.chunk(sent).await?;
        if chunk.is_empty() {
            break;
        }
        let len = chunk.len() as u64;
        if writer.data_bytes(chunk).await.is_err() {
            return Ok(());
        }
        sent += len;
        observer.stdin_progress(sent);
    }
    Ok(())
}

/// Reads the channel until it is gone: stdout, stderr, how it ended, and
/// whether sshd refused the exec request.
async fn collect_output(
    early: Vec<ChannelMsg>,
    reader: &mut russh::ChannelReadHalf,
    token: &Token,
    observer: &dyn ExecObserver,
) -> (Vec<u8>, Vec<u8>, Option<Exit>, bool) {
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let mut exit = None;
    let mut refused = false;
    let mut early = early.into_iter();
    // Exit status may come after EOF, and data after the exit status: read
    // until the channel is gone.
    loop {
        let message = match early.next() {
            Some(message) => message,
            None => match reader.wait().await {
                Some(message) => message,
                None => break,
            },
        };
        match message {
            ChannelMsg::Data { data } => {
                let data = token.stdout(&data);
                if !data.is_empty() {
                    observer.output(Stream::Stdout, &data);
                    stdout.extend_from_slice(&data);
                }
            }
            ChannelMsg::ExtendedData { data, ext: 1 } => {
                observer.output(Stream::Stderr, &data);
                stderr.extend_from_slice(&data);
            }
            ChannelMsg::ExitStatus { exit_status } => exit = Some(Exit::Code(exit_status)),
            ChannelMsg::ExitSignal {
                signal_name,
                core_dumped,
                ..
            } => {
                exit = Some(Exit::Signal {
                    name: signal_text(&signal_name),
                    core_dumped,
                })
            }
            ChannelMsg::Failure if exit.is_none() => refused = true,
            _ => {}
        }
        if refused {
            break;
        }
    }
    let held = token.flush();
    if !held.is_empty() {
        observer.output(Stream::Stdout, &held);
        stdout.extend_from_slice(&held);
    }
    (stdout, stderr, exit, refused)
}

fn signal_text(sig: &russh::Sig) -> String {
    use russh::Sig;
    match sig {
        Sig::ABRT => "ABRT",
        Sig::ALRM => "ALRM",
        Sig::FPE => "FPE",
        Sig::HUP => "HUP",
        Sig::ILL => "ILL",
        Sig::INT => "INT",
        Sig::KILL => "KILL",
        Sig::PIPE => "PIPE",
        Sig::QUIT => "QUIT",
        Sig::SEGV => "SEGV",
        Sig::TERM => "TERM",
        Sig::USR1 => "USR1",
        Sig::Custom(name) => name.as_str(),
    }
    .to_string()
}
