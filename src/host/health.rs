//! Health checks run on the host itself (`health.from = "host"`, and
//! `type = "command"`): the commands for one try, and how their output is
//! read back. The polling (interval, threshold, timeout) stays with the
//! machine running shipit, so a check from the host behaves and reports
//! exactly like one from the controller; each try is one command over the
//! connection shipit already holds.
//!
//! What it relies on, on the host:
//! - `http://`: `perl` with `IO::Socket::IP` and `IO::Select`, which Debian
//!   and Ubuntu always have (the essential package `perl-base`), so a
//!   minimal host without curl works; IPv4 and IPv6 addresses and names.
//! - `https://`: `curl` (perl-base has no TLS).
//! - a command check's time limit: `timeout` from coreutils (also essential).

use std::time::Duration;

use crate::shell::{Cmd, Word};

/// One `GET url` on the host, the raw response on stdout (status line,
/// headers, blank line, body), or an error on stderr with a non-zero exit:
/// 3 (cannot run here), 7 (cannot connect), 28 (no answer in time).
const HTTP_GET: &str = r#"url=$1 t=$2
case $url in
  [Hh][Tt][Tt][Pp][Ss]://*)
    if command -v curl >/dev/null 2>&1; then
      exec curl -sS -i --max-time "$t" -A shipit-health -- "$url"
    fi
    echo "checking an https:// URL from the host needs curl there (perl-base has no TLS); install curl, or check an http:// URL" >&2
    exit 3 ;;
esac
if ! command -v perl >/dev/null 2>&1; then
  echo "checking from the host needs perl there (Debian's essential perl-base), or curl" >&2
  exit 3
fi
exec perl - "$url" "$t" <<'SHIPIT_PERL'
use strict;
use warnings;
use IO::Socket::IP;
use IO::Select;
my ($url, $t) = @ARGV;
my ($host, $port, $path) = $url =~ m{^http://(\[[^\]]*\]|[^/:?#]*)(?::(\d*))?([^#]*)}i
  or do { print STDERR "not an http:// URL: $url\n"; exit 3 };
my $authority = $host;
$authority .= ":$port" if defined $port && length $port;
$host =~ s/^\[(.*)\]$/$1/;
$port = 80 unless defined $port && length $port;
$path = "/$path" unless $path =~ m{^/};
my $s = IO::Socket::IP->new(PeerHost => $host, PeerPort => $port, Timeout => $t)
  or do { print STDERR "cannot connect to $authority: " . ($@ || $!) . "\n"; exit 7 };
$s->autoflush(1);
binmode $s;
binmode STDOUT;
print $s "GET $path HTTP/1.0\r\nHost: $authority\r\nUser-Agent: shipit-health\r\nAccept: */*\r\nConnection: close\r\n\r\n";
my $sel = IO::Select->new($s);
my $total = 0;
while (1) {
  $sel->can_read($t) or do { print STDERR "no answer from $authority within ${t}s\n"; exit 28 };
  my $n = sysread($s, my $buf, 65536);
  defined $n or do { print STDERR "reading from $authority: $!\n"; exit 56 };
  last if $n == 0;
  print $buf;
  $total += $n;
  last if $total > 1048576;
}
SHIPIT_PERL"#;

/// `GET url` from the host, within `timeout` per connect and per read.
pub fn http_get(url: &str, timeout: Duration) -> Cmd {
    Cmd::script("health-get", HTTP_GET, [url.to_string(), seconds(timeout)])
}

/// A command check's try, stopped after `limit` (`timeout` sends TERM,
/// then KILL a second later; it exits 124 when the limit hit).
pub fn limited(mut cmd: Cmd, limit: Duration) -> Cmd {
    let prefix: Vec<Word> = ["timeout", "-k", "1", &seconds(limit)]
        .into_iter()
        .map(Into::into)
        .collect();
    cmd.argv.splice(0..0, prefix);
    cmd
}

/// The exit status `timeout` reports when the limit hit.
pub const TIMED_OUT: u32 = 124;

/// Seconds as `timeout`, curl and perl take them: `5`, `0.5`.
fn seconds(d: Duration) -> String {
    let ms = d.as_millis().max(1);
    if ms.is_multiple_of(1000) {
        format!("{}", ms / 1000)
    } else {
        format!("{}.{:03}", ms / 1000, ms % 1000)
    }
}

/// The status and body of a raw HTTP response as [`http_get`] prints it.
pub fn parse_response(raw: &[u8]) -> Result<(u16, String), String> {
    let text = String::from_utf8_lossy(raw);
    let first = text.lines().next().unwrap_or_default();
    let status = first
        .strip_prefix("HTTP/")
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| {
            if text.trim().is_empty() {
                "the connection closed without an answer".to_string()
            } else {
                format!(
                    "not an HTTP answer: {:?}",
                    first.chars().take(80).collect::<String>()
                )
            }
        })?;
    let body = match text.find("\r\n\r\n") {
        Some(i) => &text[i + 4..],
        None => text.find("\n\n").map_or("", |i| &text[i + 2..]),
    };
    Ok((status, body.to_string()))
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::process::Command;

    use super::*;

    #[test]
    fn responses_are_read_back() {
        assert_eq!(
            parse_response(b"HTTP/1.0 503 Service Unavailable\r\nX: y\r\n\r\nunhealthy: bad\n"),
            Ok((503, "unhealthy: bad\n".to_string()))
        );
        assert_eq!(
            parse_response(b"HTTP/2 200 \r\ncontent-type: text/plain\r\n\r\nok"),
            Ok((200, "ok".to_string()))
        );
        assert_eq!(
            parse_response(b""),
            Err("the connection closed without an answer".to_string())
        );
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n").is_err());
    }

    #[test]
    fn seconds_as_tools_take_them() {
        assert_eq!(seconds(Duration::from_secs(5)), "5");
        assert_eq!(seconds(Duration::from_millis(500)), "0.500");
        assert_eq!(seconds(Duration::from_millis(1250)), "1.250");
        let cmd = limited(Cmd::shell("true"), Duration::from_millis(1500));
        assert_eq!(cmd.render(), "timeout -k 1 1.500 sh -c true");
    }

    /// Runs the script as the host would: `sh -c`, here, with perl and
    /// without curl in reach (http:// never needs it).
    fn get(url: &str) -> std::process::Output {
        let cmd = http_get(url, Duration::from_secs(2));
        Command::new("sh")
            .arg("-c")
            .arg(cmd.render())
            .env("PATH", "/usr/bin:/bin")
            .output()
            .expect("run sh")
    }

    #[test]
    fn the_host_script_gets_a_page_with_perl() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut request = [0u8; 1024];
            let n = conn.read(&mut request).unwrap();
            let request = String::from_utf8_lossy(&request[..n]).into_owned();
            conn.write_all(
                b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nok revision=3f2a9c1\n",
            )
            .unwrap();
            request
        });
        let out = get(&format!("http://127.0.0.1:{port}/health?x=1"));
        assert!(out.status.success(), "{out:?}");
        let request = server.join().unwrap();
        assert!(
            request.starts_with("GET /health?x=1 HTTP/1.0\r\n"),
            "{request}"
        );
        assert!(
            request.contains(&format!("Host: 127.0.0.1:{port}\r\n")),
            "{request}"
        );
        assert_eq!(
            parse_response(&out.stdout),
            Ok((200, "ok revision=3f2a9c1\n".to_string()))
        );
    }

    #[test]
    fn the_host_script_says_why_it_got_nothing() {
        // A port nothing listens on.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let out = get(&format!("http://127.0.0.1:{port}/health"));
        assert_eq!(out.status.code(), Some(7));
        assert_eq!(
            String::from_utf8_lossy(&out.stderr).trim(),
            format!("cannot connect to 127.0.0.1:{port}: Connection refused")
        );
    }
}
