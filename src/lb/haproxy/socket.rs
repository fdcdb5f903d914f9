//! Carrying one runtime API request to an HAProxy admin socket and its
//! answer back:
//!
//! - reached from the machine running shipit (`via = "local"`), shipit
//!   connects to the UNIX or TCP socket itself;
//! - reached through a host (`via = "lb1"` or `"user@lb1"`), the request is
//!   piped into `socat` (or `nc`) on that host over its SSH connection
//!   ([`super::api::relay`]).

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::api::Request;
use crate::lb::{Remote, Via};
use crate::shell::Cmd;
use crate::transport::{ExecRequest, Quiet};

/// Longest one runtime API request may take, connection included.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// An HAProxy admin socket (`stats socket ... level admin`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum AdminSocket {
    /// A UNIX socket path on the machine it is reached from.
    Unix { path: String },
    /// A TCP admin socket (`stats socket ipv4@10.0.0.5:9999 level admin`).
    Tcp { host: String, port: u16 },
}

impl fmt::Display for AdminSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdminSocket::Unix { path } => f.write_str(path),
            AdminSocket::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            AdminSocket::Tcp { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// One HAProxy instance: its admin socket and where it is reached from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Balancer {
    pub via: Via,
    pub socket: AdminSocket,
}

impl fmt::Display for Balancer {
    /// `local:/run/haproxy/admin.sock`, `lb1:/run/haproxy/admin.sock`,
    /// `local:10.0.0.5:9999`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.via, self.socket)
    }
}

/// Carries one request from stdin to an admin socket on another host and
/// its answer back to stdout: `socat`, or `nc` where socat is missing.
const RELAY: &str = r#"if command -v socat >/dev/null 2>&1; then
  case $1 in
    unix) exec socat -t 10 - "UNIX-CONNECT:$2" ;;
    tcp) case $2 in
      *:*) exec socat -t 10 - "TCP:[$2]:$3" ;;
      *) exec socat -t 10 - "TCP:$2:$3" ;;
    esac ;;
  esac
elif command -v nc >/dev/null 2>&1; then
  case $1 in
    unix) exec nc -U "$2" ;;
    tcp) exec nc "$2" "$3" ;;
  esac
fi
echo "neither socat nor nc is installed on $(uname -n 2>/dev/null); one of them is needed there to reach HAProxy's admin socket (apt-get install socat)" >&2
exit 127"#;

/// The command that relays a request (on its stdin) to `socket` on the
/// host it runs on.
pub fn relay(socket: &AdminSocket) -> Cmd {
    match socket {
        AdminSocket::Unix { path } => Cmd::script("haproxy-relay", RELAY, ["unix", path.as_str()]),
        AdminSocket::Tcp { host, port } => Cmd::script(
            "haproxy-relay",
            RELAY,
            ["tcp".to_string(), host.clone(), port.to_string()],
        ),
    }
}

/// Sends one request to a load balancer and returns its answer. Errors
/// name the balancer and the request.
pub async fn ask(
    remote: &dyn Remote,
    balancer: &Balancer,
    request: &Request,
) -> Result<String, String> {
    let line = request.line();
    // HAProxy answers every request, with at least an empty line: nothing
    // at all means the connection was dropped before the request was
    // carried out (an HAProxy reloading, say), so it is worth another try.
    let answered = |answer: String| {
        if answer.is_empty() {
            Err(format!(
                "haproxy {balancer}: `{request}`: the connection closed without an answer"
            ))
        } else {
            Ok(answer)
        }
    };
    if balancer.via == Via::Local {
        return local_socket(&balancer.socket, &line)
            .await
            .map_err(|e| format!("haproxy {balancer}: `{request}`: {e}"))
            .and_then(answered);
    }
    let relay = relay(&balancer.socket);
    let exec = ExecRequest {
        command: relay.render(),
        stdin: Some(Bytes::from(line).into()),
        timeout: Some(ANSWER_TIMEOUT),
    };
    match remote.exec(&balancer.via, exec, &Quiet).await {
        Ok(out) if out.exit.success() => answered(out.stdout_text()),
        Ok(out) => Err(format!(
            "haproxy {balancer}: `{request}`: `{}` on {} ended with {}: {}",
            relay.display(),
            balancer.via,
            out.exit,
            match out.stderr_tail(3) {
                tail if tail.is_empty() => "(no output)".to_string(),
                tail => tail,
            }
        )),
        Err(e) => Err(format!("haproxy {balancer}: `{request}`: {e}")),
    }
}

/// One exchange with a socket on this machine: the request, then the
/// answer until HAProxy closes the connection.
async fn local_socket(socket: &AdminSocket, line: &str) -> Result<String, String> {
    let exchange = async {
        match socket {
            AdminSocket::Unix { path } => {
                let mut stream = tokio::net::UnixStream::connect(path).await?;
                talk(&mut stream, line).await
            }
            AdminSocket::Tcp { host, port } => {
                let mut stream = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                talk(&mut stream, line).await
            }
        }
    };
    match tokio::time::timeout(ANSWER_TIMEOUT, exchange).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(e)) => Err(format!("cannot talk to the admin socket: {e}")),
        Err(_) => Err(format!(
            "no answer within {}",
            humantime::format_duration(ANSWER_TIMEOUT)
        )),
    }
}

async fn talk<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    line: &str,
) -> std::io::Result<String> {
    stream.write_all(line.as_bytes()).await?;
    // Like socat at the end of its input: HAProxy answers, then closes.
    stream.shutdown().await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_relay_passes_the_socket_as_arguments() {
        let cmd = relay(&AdminSocket::Unix {
            path: "/run/haproxy/admin.sock".into(),
        });
        assert_eq!(
            cmd.display(),
            "shipit:haproxy-relay unix /run/haproxy/admin.sock"
        );
        let cmd = relay(&AdminSocket::Tcp {
            host: "10.0.0.5".into(),
            port: 9999,
        });
        assert_eq!(cmd.display(), "shipit:haproxy-relay tcp 10.0.0.5 9999");
    }

    #[tokio::test]
    async fn a_connection_dropped_without_an_answer_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let answers = tokio::spawn(async move {
            for answer in [&b""[..], b"\n"] {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut request = Vec::new();
                stream.read_to_end(&mut request).await.unwrap();
                stream.write_all(answer).await.unwrap();
            }
        });
        let balancer = Balancer {
            via: Via::Local,
            socket: AdminSocket::Unix {
                path: path.display().to_string(),
            },
        };
        let request = Request::set_state("app", "web1", super::super::api::State::Ready).unwrap();
        struct Nowhere;
        impl Remote for Nowhere {
            fn exec<'a>(
                &'a self,
                _via: &'a Via,
                _request: ExecRequest,
                _observer: &'a dyn crate::transport::ExecObserver,
            ) -> futures::future::BoxFuture<
                'a,
                Result<crate::transport::Output, crate::transport::TransportError>,
            > {
                unreachable!("a local socket is reached directly")
            }
        }
        let dropped = ask(&Nowhere, &balancer, &request).await.unwrap_err();
        assert!(
            dropped.ends_with("the connection closed without an answer"),
            "{dropped}"
        );
        assert_eq!(ask(&Nowhere, &balancer, &request).await.unwrap(), "\n");
        answers.await.unwrap();
    }

    #[test]
    fn the_relay_says_what_is_missing() {
        // A PATH with nothing but sh: the script explains itself.
        let bin = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/bin/sh", bin.path().join("sh")).unwrap();
        let cmd = relay(&AdminSocket::Unix { path: "/x".into() });
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(cmd.render())
            .env("PATH", bin.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(127));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("neither socat nor nc is installed on"),
            "{stderr}"
        );
    }
}
