//! Carrying one admin API request to a Caddy and its answer back:
//!
//! - reached from the machine running shipit (`via = "local"`), shipit
//!   opens the TCP connection itself;
//! - reached through a host (`via = "lb1"` or `"user@lb1"`), the request's
//!   bytes are piped over that host's SSH connection into bash, whose
//!   `/dev/tcp` carries them to the admin address and the answer back.
//!   bash is part of every Debian and Ubuntu install; curl is not needed.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::http::{Request, Response, parse_response};
use crate::lb::{Remote, Via};
use crate::shell::Cmd;
use crate::transport::{ExecRequest, Quiet};

/// Longest one admin API request may take, connection included.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers larger than this are refused (shipit reads one handler, not the
/// whole config).
const MAX_ANSWER: u64 = 8 << 20;

/// Caddy's admin endpoint: `host:port`, as seen from `via`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Admin {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for Admin {
    /// `localhost:2019`, `[::1]:2019`: also the Host header Caddy checks.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// One Caddy instance: its admin endpoint and where it is reached from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Balancer {
    pub via: Via,
    pub admin: Admin,
}

impl fmt::Display for Balancer {
    /// `local:localhost:2019`, `lb1:localhost:2019`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.via, self.admin)
    }
}

/// Connects to `$1` port `$2` with bash's `/dev/tcp`, writes stdin to it
/// and copies the answer to stdout. The connection stays open both ways
/// until Caddy closes it (a half-close would end the request early).
const RELAY: &str = r#"if ! command -v bash >/dev/null 2>&1; then
  echo "bash is not installed on $(uname -n 2>/dev/null); shipit needs it there to reach Caddy's admin API" >&2
  exit 127
fi
exec bash -c 'exec 3<>"/dev/tcp/$1/$2" || exit 111; cat >&3 && exec cat <&3' caddy-relay "$1" "$2""#;

/// The command that relays a request (on its stdin) to `admin` from the
/// host it runs on.
pub fn relay(admin: &Admin) -> Cmd {
    Cmd::script(
        "caddy-relay",
        RELAY,
        [admin.host.clone(), admin.port.to_string()],
    )
}

/// Sends one request to a Caddy and returns its answer, whatever the
/// status. Errors (the request could not be carried, the answer is not
/// HTTP) name the balancer and the request.
pub async fn ask(
    remote: &dyn Remote,
    balancer: &Balancer,
    request: &Request,
) -> Result<Response, String> {
    let bytes = request.to_bytes(&balancer.admin.to_string());
    let raw = if balancer.via == Via::Local {
        local(&balancer.admin, &bytes).await
    } else {
        relayed(remote, balancer, bytes).await
    };
    raw.and_then(|raw| parse_response(&raw))
        .map_err(|e| format!("caddy {balancer}: `{request}`: {e}"))
}

/// One exchange over a TCP connection of our own.
async fn local(admin: &Admin, request: &[u8]) -> Result<Vec<u8>, String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect((admin.host.as_str(), admin.port)).await?;
        stream.write_all(request).await?;
        // No half-close: Caddy would take it for a client that went away.
        let mut answer = Vec::new();
        (&mut stream)
            .take(MAX_ANSWER)
            .read_to_end(&mut answer)
            .await?;
        Ok::<_, std::io::Error>(answer)
    };
    match tokio::time::timeout(ANSWER_TIMEOUT, exchange).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(e)) => Err(format!("cannot talk to the admin API: {e}")),
        Err(_) => Err(format!(
            "no answer within {}",
            humantime::format_duration(ANSWER_TIMEOUT)
        )),
    }
}

/// One exchange through the relay on the `via` host.
async fn relayed(
    remote: &dyn Remote,
    balancer: &Balancer,
    request: Vec<u8>,
) -> Result<Vec<u8>, String> {
    let relay = relay(&balancer.admin);
    let exec = ExecRequest {
        command: relay.render(),
        stdin: Some(Bytes::from(request).into()),
        timeout: Some(ANSWER_TIMEOUT),
    };
    match remote.exec(&balancer.via, exec, &Quiet).await {
        Ok(out) if out.exit.success() => Ok(out.stdout),
        Ok(out) => Err(format!(
            "`{}` on {} ended with {}: {}",
            relay.display(),
            balancer.via,
            out.exit,
            match out.stderr_tail(3) {
                tail if tail.is_empty() => "(no output)".to_string(),
                tail => tail,
            }
        )),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_addresses_as_caddy_checks_them() {
        let admin = Admin {
            host: "localhost".into(),
            port: 2019,
        };
        assert_eq!(admin.to_string(), "localhost:2019");
        let v6 = Admin {
            host: "::1".into(),
            port: 2019,
        };
        assert_eq!(v6.to_string(), "[::1]:2019");
        let b = Balancer {
            via: Via::Host { name: "lb1".into() },
            admin,
        };
        assert_eq!(b.to_string(), "lb1:localhost:2019");
    }

    #[test]
    fn the_relay_passes_the_address_as_arguments() {
        let cmd = relay(&Admin {
            host: "localhost".into(),
            port: 2019,
        });
        assert_eq!(cmd.display(), "shipit:caddy-relay localhost 2019");
    }

    /// The relay carries a request to a real listener and the answer back.
    #[tokio::test]
    async fn the_relay_carries_bytes_both_ways() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 1024];
            let n = conn.read(&mut buf).await.unwrap();
            let got = String::from_utf8_lossy(&buf[..n]).into_owned();
            conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await
                .unwrap();
            got
        });
        let cmd = relay(&Admin {
            host: "127.0.0.1".into(),
            port,
        });
        let request = Request::get("/id/shop").to_bytes("localhost:2019");
        let out = crate::transport::local::run(
            ExecRequest {
                command: cmd.render(),
                stdin: Some(Bytes::from(request).into()),
                timeout: Some(Duration::from_secs(10)),
            },
            &[],
            &Quiet,
        )
        .await
        .unwrap();
        assert!(out.exit.success(), "{}", out.stderr_tail(5));
        let answer = parse_response(&out.stdout).unwrap();
        assert_eq!((answer.status, answer.text()), (200, "ok".to_string()));
        assert!(
            server
                .await
                .unwrap()
                .starts_with("GET /id/shop HTTP/1.1\r\n")
        );
    }

    #[test]
    fn the_relay_says_what_is_missing() {
        // A PATH with nothing but sh: the script explains itself.
        let bin = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/bin/sh", bin.path().join("sh")).unwrap();
        let cmd = relay(&Admin {
            host: "localhost".into(),
            port: 2019,
        });
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(cmd.render())
            .env("PATH", bin.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(127));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("bash is not installed on"), "{stderr}");
    }
}
