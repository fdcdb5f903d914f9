//! Commands that run on the machine running shipit: the `build` command and
//! load-balancer commands with `run_on = "local"`. Same contract as a remote
//! host, so the executor treats both alike.

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use super::{ExecObserver, ExecRequest, Exit, Output, Stream, Transport, TransportError};

/// The machine running shipit, as a [`Transport`] (the host name is ignored).
pub struct LocalTransport;

impl Transport for LocalTransport {
    async fn exec(
        &self,
        _host: &str,
        request: ExecRequest,
        observer: &dyn ExecObserver,
    ) -> Result<Output, TransportError> {
        run(request, &[], observer).await
    }
}

/// Runs `request.command` with `sh -c` in the current directory, with the
/// given extra environment.
pub async fn run(
    request: ExecRequest,
    env: &[(String, String)],
    observer: &dyn ExecObserver,
) -> Result<Output, TransportError> {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(&request.command)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(if request.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so that a timed-out or abandoned command
        // is stopped with everything it started, not only its `sh`; and a
        // terminal's Ctrl-C reaches shipit, which decides what stops.
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|e| TransportError::Local {
        detail: format!("cannot start sh: {e}"),
    })?;
    let group = Group::new(child.id());

    let stdin = child.stdin.take();
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let input = request.stdin.clone();

    let work = async {
        let feed = async {
            if let (Some(mut pipe), Some(data)) = (stdin, input) {
                let mut sent = 0u64;
                // An unreadable input ends it early, as does a command that
                // stops reading (its exit status will tell).
                while let Ok(chunk) = data.chunk(sent).await
                    && !chunk.is_empty()
                {
                    if pipe.write_all(&chunk).await.is_err() {
                        break;
                    }
                    sent += chunk.len() as u64;
                    observer.stdin_progress(sent);
                }
                drop(pipe);
            }
        };
        let read_out = read_all(&mut stdout, Stream::Stdout, observer);
        let read_err = read_all(&mut stderr, Stream::Stderr, observer);
        let ((), out, err) = tokio::join!(feed, read_out, read_err);
        let status = child.wait().await.map_err(|e| TransportError::Local {
            detail: format!("waiting for `{}`: {e}", request.command),
        })?;
        group.ended();
        let exit = match (status.code(), status.signal()) {
            (Some(code), _) => Exit::Code(code as u32),
            (None, Some(sig)) => Exit::Signal {
                name: signal_name(sig),
                core_dumped: status.core_dumped(),
            },
            (None, None) => Exit::Unknown,
        };
        Ok(Output {
            exit,
            stdout: out,
            stderr: err,
        })
    };

    match request.timeout {
        Some(limit) => match tokio::time::timeout(limit, work).await {
            Ok(result) => result,
            Err(_) => Err(TransportError::Timeout {
                host: "local".into(),
                what: format!("`{}`", request.command),
                after: limit,
            }),
        },
        None => work.await,
    }
}

/// A local command's process group, killed whole if the command is
/// abandoned (a timeout, a second signal) before its `sh` has ended. A
/// command that ended by itself keeps whatever it left running on purpose.
struct Group {
    id: Option<u32>,
    ended: std::sync::atomic::AtomicBool,
}

impl Group {
    fn new(id: Option<u32>) -> Self {
        Group {
            id,
            ended: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn ended(&self) {
        self.ended.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if self.ended.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        if let Some(id) = self.id.and_then(|id| i32::try_from(id).ok()) {
            // SAFETY: kill(2) with a negative pid signals that process group
            // only; it touches no memory of ours.
            unsafe {
                libc::kill(-id, libc::SIGKILL);
            }
        }
    }
}

async fn read_all(
    reader: &mut (impl AsyncReadExt + Unpin),
    stream: Stream,
    observer: &dyn ExecObserver,
) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return all,
            Ok(n) => {
                observer.output(stream, &buf[..n]);
                all.extend_from_slice(&buf[..n]);
            }
        }
    }
}

/// The conventional name of a signal number, as sshd reports it (`TERM`).
pub fn signal_name(sig: i32) -> String {
    let name = match sig {
        1 => "HUP",
        2 => "INT",
        3 => "QUIT",
        4 => "ILL",
        6 => "ABRT",
        8 => "FPE",
        9 => "KILL",
        11 => "SEGV",
        13 => "PIPE",
        14 => "ALRM",
        15 => "TERM",
        10 => "USR1",
        12 => "USR2",
        _ => return format!("{sig}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::Quiet;

    fn req(command: &str) -> ExecRequest {
        ExecRequest {
            command: command.into(),
            stdin: None,
            timeout: None,
        }
    }

    #[tokio::test]
    async fn reports_exit_codes_and_output() {
        let out = run(req("echo out; echo err >&2; exit 3"), &[], &Quiet)
            .await
            .unwrap();
        assert_eq!(out.exit, Exit::Code(3));
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr_tail(5), "err");
    }

    #[tokio::test]
    async fn a_timed_out_command_is_stopped_with_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("child.pid");
        let command = format!(
            "sleep 30 & echo $! > {}; wait",
            crate::shell::quote(pid_file.to_str().unwrap())
        );
        let result = run(
            ExecRequest {
                timeout: Some(std::time::Duration::from_millis(500)),
                ..req(&command)
            },
            &[],
            &Quiet,
        )
        .await;
        assert!(
            matches!(result, Err(TransportError::Timeout { .. })),
            "{result:?}"
        );
        let child = std::fs::read_to_string(&pid_file).unwrap();
        let proc = std::path::Path::new("/proc").join(child.trim());
        // A killed child is gone, or a zombie until its reaper gets to it.
        let gone = (0..50).any(|_| {
            let state = std::fs::read_to_string(proc.join("stat")).unwrap_or_default();
            if state.is_empty() || state.split(' ').nth(2) == Some("Z") {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
            false
        });
        assert!(gone, "the command's child {} outlived it", child.trim());
    }

    #[tokio::test]
    async fn reports_signals() {
        let out = run(req("kill -TERM $$"), &[], &Quiet).await.unwrap();
        assert_eq!(
            out.exit,
            Exit::Signal {
                name: "TERM".into(),
                core_dumped: false
            }
        );
    }

    #[tokio::test]
    async fn streams_stdin_and_passes_env() {
        let mut request = req("wc -c; printf %s \"$X\"");
        request.stdin = Some(bytes::Bytes::from(vec![b'a'; 600_000]).into());
        let out = run(request, &[("X".into(), "y z".into())], &Quiet)
            .await
            .unwrap();
        assert_eq!(
            out.stdout_text().split_whitespace().collect::<Vec<_>>(),
            ["600000", "y", "z"]
        );
    }

    #[tokio::test]
    async fn times_out() {
        let mut request = req("sleep 5");
        request.timeout = Some(std::time::Duration::from_millis(100));
        let err = run(request, &[], &Quiet).await.unwrap_err();
        assert!(matches!(err, TransportError::Timeout { .. }), "{err}");
    }
}
