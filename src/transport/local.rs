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
        // A timed-out or abandoned command must not outlive shipit.
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|e| TransportError::Local {
        detail: format!("cannot start sh: {e}"),
    })?;

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
