//! Login shells started ahead of need: the start-up of the user's shell
//! (sshd runs it for every command, and an rbenv/pyenv/nvm line in
//! `.bashrc` makes that 50–300 ms) is paid on a spare channel while other
//! work runs, so the next command costs one round trip.
//!
//! A warm shell is an ordinary exec channel whose command is
//! [`WARM_COMMAND`] (tagged like every command, see `tag_command`): the
//! login shell starts, reads `.bashrc`, then waits in `cat` for its script
//! on stdin. A command without stdin of its own is handed to one as its
//! script, followed by EOF; the login shell then `eval`s it, so it runs in
//! the same shell, with the same environment, and ends the channel with
//! its exit status or signal, its stdout and stderr as an exec of the same
//! command would. Commands with stdin (uploads, secrets) never use one.
//!
//! Up to [`WARM_SHELLS`] wait per host, outside the channel permits, but
//! never so many that they and the commands running on the host would pass
//! sshd's default `MaxSessions` ([`SESSIONS`]). A warm shell that cannot be
//! opened (sshd refused the session) is simply not there; a command then
//! opens its own channel as before.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use russh::ChannelMsg;

use super::connect::Connection;
use super::{Token, exec_token, tag_command};

/// Warm shells kept per host (see the module documentation): a batch sends
/// a host up to four commands back to back (the journal entry before the
/// drain, the published run state, the switch, the restart).
pub const WARM_SHELLS: usize = 4;

/// Sessions sshd allows on one connection by default (`MaxSessions`).
const SESSIONS: usize = 10;

/// What a warm shell runs: read the whole script, then run it here.
pub const WARM_COMMAND: &str = "eval \"$(cat)\"";

/// One started login shell waiting for its script.
pub(super) struct Warm {
    pub token: Token,
    pub reader: russh::ChannelReadHalf,
    pub writer: russh::ChannelWriteHalf<russh::client::Msg>,
}

/// What a warm shell's channel said before it was used.
pub(super) enum Early {
    /// Still waiting: these messages (the shell's own start-up output,
    /// sshd's reply to the exec request) belong to the command's output.
    Waiting(Vec<ChannelMsg>),
    /// Refused, ended or gone before the script was sent: not usable.
    Gone,
}

impl Warm {
    /// Reads what already arrived on the channel, without waiting.
    pub fn early(&mut self) -> Early {
        use futures::FutureExt;
        let mut seen = Vec::new();
        loop {
            match self.reader.wait().now_or_never() {
                None => return Early::Waiting(seen),
                Some(None) => return Early::Gone,
                Some(Some(
                    ChannelMsg::Failure
                    | ChannelMsg::Eof
                    | ChannelMsg::Close
                    | ChannelMsg::ExitStatus { .. }
                    | ChannelMsg::ExitSignal { .. },
                )) => return Early::Gone,
                Some(Some(message)) => seen.push(message),
            }
        }
    }
}

/// The warm shells of one host.
#[derive(Default)]
pub(super) struct Pool {
    ready: Mutex<Vec<Warm>>,
    /// Being opened right now.
    starting: AtomicUsize,
    /// How many to keep; 0 until [`super::SshTransport::prestart_shells`].
    want: AtomicUsize,
}

impl Pool {
    pub fn set_want(&self, n: usize) {
        self.want.store(n, Ordering::SeqCst);
    }

    /// The oldest waiting shell, if any.
    pub fn take(&self) -> Option<Warm> {
        let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
        if ready.is_empty() {
            None
        } else {
            Some(ready.remove(0))
        }
    }

    /// Starts shells in the background until `want` wait or are starting,
    /// as long as they and the `busy` channels of running commands stay
    /// within [`SESSIONS`].
    pub fn refill(self: &Arc<Self>, connection: &Arc<Connection>, busy: usize) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        loop {
            let waiting = self.ready.lock().unwrap_or_else(|e| e.into_inner()).len();
            let starting = self.starting.load(Ordering::SeqCst);
            if waiting + starting >= self.want.load(Ordering::SeqCst)
                || waiting + starting + busy >= SESSIONS
                || connection.handle.is_closed()
            {
                return;
            }
            self.starting.fetch_add(1, Ordering::SeqCst);
            let pool = self.clone();
            let connection = connection.clone();
            runtime.spawn(async move {
                let warm = start(&connection).await;
                if let Some(warm) = warm {
                    pool.ready
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(warm);
                }
                pool.starting.fetch_sub(1, Ordering::SeqCst);
            });
        }
    }
}

/// Opens a channel and starts a waiting login shell on it; `None` if sshd
/// would not open the channel (one try: a warm shell is never worth
/// waiting for).
async fn start(connection: &Connection) -> Option<Warm> {
    let channel = connection.handle.channel_open_session().await.ok()?;
    let (reader, writer) = channel.split();
    let token = exec_token();
    writer
        .exec(true, tag_command(&token, WARM_COMMAND).as_bytes())
        .await
        .ok()?;
    Some(Warm {
        token,
        reader,
        writer,
    })
}
