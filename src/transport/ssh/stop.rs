//! Stopping a command shipit gave up on (a timeout, a cancelled caller).
//!
//! Every command is wrapped ([`tag_command`]) so that the login shell sshd
//! starts for it first prints its own pid on stdout, tagged with the
//! command's [`Token`]. sshd makes that shell a session leader, so its pid
//! is also the process group of everything the command starts (a process
//! that makes its own session or group with `setsid` is left alone). The
//! line is taken out of stdout as it arrives; to stop the command, one
//! `kill` of that group runs on a second channel ([`stop_script`]). Nothing
//! on the host is searched: an older version grepped `/proc/*/environ` of
//! every process, which took seconds on a loaded host, just when commands
//! were timing out.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::ChannelMsg;
use tokio::sync::OwnedSemaphorePermit;

use super::connect::Connection;

/// How long an abandoned command gets after TERM before KILL, and after
/// KILL before its channel is closed without it.
const GRACE: Duration = Duration::from_secs(5);

/// One command's tag, and what its stdout has told about it so far.
#[derive(Clone, Debug)]
pub(super) struct Token {
    /// `shipit-pid <unique> `: the start of the pid line.
    key: Arc<str>,
    seen: Arc<Mutex<Seen>>,
}

#[derive(Debug, Default)]
struct Seen {
    pid: Option<u32>,
    /// Stdout held back while it may be (part of) the pid line.
    pending: Vec<u8>,
}

/// The longest pid line after its key: digits and a newline.
const PID_DIGITS: usize = 12;

/// A new tag, unique among this machine's runs.
pub(super) fn exec_token() -> Token {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    Token {
        key: format!(
            "shipit-pid {:x}-{:x}-{:x} ",
            std::process::id(),
            nanos,
            COUNTER.fetch_add(1, Ordering::Relaxed)
        )
        .into(),
        seen: Arc::default(),
    }
}

/// The command line sent to sshd: print the tagged pid line, then run the
/// command in the same shell. Its exit status, stderr and (but for that one
/// line) stdout are the command's own.
pub(super) fn tag_command(token: &Token, command: &str) -> String {
    if command.trim().is_empty() {
        return command.to_string();
    }
    format!("printf '{}%s\\n' \"$$\"; {command}", token.key)
}

/// Sends `signal` to the process group `pid`; never fails.
pub(super) fn stop_script(pid: u32, signal: &str) -> String {
    format!("kill -s {signal} -- -{pid} 2>/dev/null; true")
}

impl Token {
    /// The process group of the command, once its pid line has arrived.
    pub fn pid(&self) -> Option<u32> {
        self.lock().pid
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stdout as it arrives, less the pid line: what belongs to the command
    /// (output a login shell printed before the line included).
    pub fn stdout<'a>(&self, data: &'a [u8]) -> Cow<'a, [u8]> {
        let mut seen = self.lock();
        if seen.pid.is_some() {
            return Cow::Borrowed(data);
        }
        seen.pending.extend_from_slice(data);
        let key = self.key.as_bytes();
        let pending = std::mem::take(&mut seen.pending);
        match find(&pending, key) {
            Some(at) => {
                let rest = &pending[at + key.len()..];
                match rest.iter().position(|&b| b == b'\n') {
                    Some(end) => {
                        let pid = std::str::from_utf8(&rest[..end])
                            .ok()
                            .and_then(|t| t.parse::<u32>().ok())
                            .filter(|&p| p > 1);
                        if let Some(pid) = pid {
                            seen.pid = Some(pid);
                            let mut out = pending[..at].to_vec();
                            out.extend_from_slice(&rest[end + 1..]);
                            return Cow::Owned(out);
                        }
                        // Not a pid line after all: it is output.
                        Cow::Owned(pending)
                    }
                    None if rest.len() <= PID_DIGITS => {
                        seen.pending = pending[at..].to_vec();
                        Cow::Owned(pending[..at].to_vec())
                    }
                    None => Cow::Owned(pending),
                }
            }
            None => {
                // Keep back what could be the start of the key.
                let keep = (key.len() - 1).min(pending.len());
                let split = pending.len() - keep;
                seen.pending = pending[split..].to_vec();
                Cow::Owned(pending[..split].to_vec())
            }
        }
    }

    /// What was held back, once the channel is gone: it was output.
    pub fn flush(&self) -> Vec<u8> {
        std::mem::take(&mut self.lock().pending)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A command whose channel may still be open. Dropped before the channel
/// ended (a timeout, or a caller that gave up), it stops the command in the
/// background and keeps its channel slot until sshd has let the session go.
///
/// Closing the channel alone is not enough: sshd keeps a session (one of
/// its `MaxSessions`) until the command exits, and OpenSSH refuses signal
/// requests for root logins ("session signalling requires privilege
/// separation"). So the command's process group is signalled on a second
/// channel ([`stop_script`]): TERM, then KILL 5 s later if the session is
/// still there.
pub(super) struct Running {
    pub connection: Arc<Connection>,
    pub token: Token,
    pub reader: Option<russh::ChannelReadHalf>,
    pub writer: Option<russh::ChannelWriteHalf<russh::client::Msg>>,
    pub permit: Option<OwnedSemaphorePermit>,
    pub ended: bool,
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let (Some(mut reader), Some(writer), Ok(runtime)) = (
            self.reader.take(),
            self.writer.take(),
            tokio::runtime::Handle::try_current(),
        ) else {
            return;
        };
        let connection = self.connection.clone();
        let token = self.token.clone();
        let permit = self.permit.take();
        runtime.spawn(async move {
            // Closing the channel first would be wrong twice over: sshd keeps
            // the session while the command runs, and russh never reports
            // the end of a channel it closed itself. So stop the command and
            // let sshd close the channel.
            let _ = writer.signal(russh::Sig::TERM).await;
            let _ = writer.eof().await;
            for signal in ["TERM", "KILL"] {
                if connection.handle.is_closed() {
                    break;
                }
                // A command given up on before its shell printed the pid
                // line (a slow `.bashrc`) is waited for.
                if read(&mut reader, &token, true).await == Read::Ended {
                    drop(permit);
                    return;
                }
                if let Some(pid) = token.pid() {
                    run_quietly(&connection, &stop_script(pid, signal)).await;
                }
                if read(&mut reader, &token, false).await == Read::Ended {
                    tracing::debug!("stopped command {} with {signal}", token.key);
                    drop(permit);
                    return;
                }
            }
            tracing::debug!("command {} did not stop; closing its channel", token.key);
            let _ = writer.close().await;
            drop(permit);
        });
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Read {
    Ended,
    Pid,
    TimedOut,
}

/// Reads an abandoned command's channel (its output goes nowhere) for at
/// most [`GRACE`]: until it ends or, with `until_pid`, until its pid is known.
async fn read(reader: &mut russh::ChannelReadHalf, token: &Token, until_pid: bool) -> Read {
    let reading = async {
        loop {
            if until_pid && token.pid().is_some() {
                return Read::Pid;
            }
            match reader.wait().await {
                None => return Read::Ended,
                Some(ChannelMsg::Data { data }) => {
                    token.stdout(&data);
                }
                Some(_) => {}
            }
        }
    };
    tokio::time::timeout(GRACE, reading)
        .await
        .unwrap_or(Read::TimedOut)
}

/// Runs a housekeeping command and waits (at most 10 s) for it to end.
async fn run_quietly(connection: &Connection, command: &str) {
    let Ok(mut channel) = connection.handle.channel_open_session().await else {
        return;
    };
    if channel.exec(false, command.as_bytes()).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while channel.wait().await.is_some() {}
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filtered(token: &Token, pieces: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for piece in pieces {
            out.extend_from_slice(&token.stdout(piece));
        }
        out.extend_from_slice(&token.flush());
        out
    }

    #[test]
    fn the_pid_line_is_taken_out_of_stdout_wherever_it_is_cut() {
        let token = exec_token();
        assert_ne!(token.key, exec_token().key);
        let line = format!("{}4242\n", token.key);
        let whole = format!("motd from .bashrc\n{line}hello\nworld\n");
        let bytes = whole.as_bytes();
        for cut in 0..bytes.len() {
            for second in cut..bytes.len() {
                let token = Token {
                    key: token.key.clone(),
                    seen: Arc::default(),
                };
                let out = filtered(
                    &token,
                    &[&bytes[..cut], &bytes[cut..second], &bytes[second..]],
                );
                assert_eq!(
                    out, b"motd from .bashrc\nhello\nworld\n",
                    "cut at {cut}, {second}"
                );
                assert_eq!(token.pid(), Some(4242));
            }
        }
        // Without the line (an empty command, a refused exec), all of
        // stdout is output and there is no pid.
        let token = exec_token();
        assert_eq!(
            filtered(&token, &[b"abc", b"shipit-pid", b" x"]),
            b"abcshipit-pid x"
        );
        assert_eq!(token.pid(), None);
        // Output that only looks like the line stays output.
        let token = exec_token();
        let fake = format!("{}notapid\nrest", token.key);
        assert_eq!(filtered(&token, &[fake.as_bytes()]), fake.as_bytes());
        assert_eq!(token.pid(), None);
    }

    /// The wrapper and the stop script for real, with `sh` as the login
    /// shell and its own process group, as sshd starts it: the pid line
    /// names the group, and one `kill` ends the whole tree.
    #[test]
    fn the_wrapper_prints_the_group_and_one_kill_ends_the_tree() {
        use std::io::Read as _;
        use std::os::unix::process::CommandExt as _;
        let token = exec_token();
        assert_eq!(tag_command(&token, "  "), "  ");
        let out = std::process::Command::new("sh")
            .args(["-c", &tag_command(&token, "echo hi; echo err >&2; exit 3")])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stderr, b"err\n");
        let mut stdout = token.stdout(&out.stdout).into_owned();
        stdout.extend(token.flush());
        assert_eq!(stdout, b"hi\n");
        assert!(token.pid().is_some());

        let token = exec_token();
        let mut child = std::process::Command::new("sh")
            .args([
                "-c",
                &tag_command(&token, "sleep 600 & (sleep 600; :) & echo started; wait"),
            ])
            .process_group(0)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut pipe = child.stdout.take().unwrap();
        let mut seen = Vec::new();
        let mut buffer = [0; 256];
        while !String::from_utf8_lossy(&seen).contains("started") {
            let n = pipe.read(&mut buffer).unwrap();
            assert!(n > 0, "the command ended early");
            seen.extend_from_slice(&token.stdout(&buffer[..n]));
        }
        assert_eq!(token.pid(), Some(child.id()));
        let group_alive = |pid: u32| {
            std::process::Command::new("sh")
                .args(["-c", &format!("kill -s 0 -- -{pid} 2>/dev/null")])
                .status()
                .unwrap()
                .success()
        };
        assert!(group_alive(child.id()));
        let stop = std::process::Command::new("sh")
            .args(["-c", &stop_script(child.id(), "TERM")])
            .status()
            .unwrap();
        assert!(stop.success());
        child.wait().unwrap();
        for _ in 0..200 {
            if !group_alive(child.id()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("processes of the stopped command's group are still running");
    }
}
