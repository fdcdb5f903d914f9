//! The upstream file shipit owns, as data: which servers it lists and
//! whether each is marked `down`, and what a `server` address means for a
//! connection test. No I/O here.
//!
//! The file holds one `server ADDRESS [PARAMETERS];` directive per line,
//! as nginx takes it inside an `upstream` block. shipit edits a server's
//! line only by adding or removing the `down` parameter (the host-side
//! script in `script` does it; this reads the same lines the same way), so
//! whatever else the line says (`weight=2`, `max_fails=3`, a comment) stays.

use std::fmt;

/// One `server` line of the upstream file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// 1-based line number in the file.
    pub line: usize,
    /// The address as written: `10.0.0.11:8080`, `[fd00::11]:8080`,
    /// `app1.internal`, `unix:/run/app.sock`.
    pub address: String,
    /// Marked `down`: nginx sends it no request.
    pub down: bool,
}

/// Reads the `server` lines of an upstream file. Other directives
/// (`keepalive 32;`, `zone ...;`) and comments are allowed and skipped. A
/// `server` directive split over lines, several directives on one line
/// with a `server` among them, or a server listed twice is refused: the
/// host-side edit would not find it, or would not know which to change.
pub fn parse(text: &str) -> Result<Vec<Listed>, String> {
    let mut servers: Vec<Listed> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let code = raw.split('#').next().unwrap_or_default();
        let directives: Vec<&str> = code.split(';').collect();
        let first: Vec<&str> = directives[0].split_whitespace().collect();
        let mentions_server = directives
            .iter()
            .any(|d| d.split_whitespace().next() == Some("server"));
        if !mentions_server {
            continue;
        }
        if first.first() != Some(&"server") || directives.len() != 2 {
            return Err(format!(
                "line {line} ({:?}): write each `server` directive on a line of its own, ending in `;`",
                raw.trim()
            ));
        }
        if !directives[1].trim().is_empty() {
            return Err(format!(
                "line {line} ({:?}): write each `server` directive on a line of its own",
                raw.trim()
            ));
        }
        let Some(address) = first.get(1) else {
            return Err(format!("line {line}: `server` without an address"));
        };
        if let Some(before) = servers.iter().find(|s| s.address == *address) {
            return Err(format!(
                "lists server {address} twice (lines {} and {line}); shipit would not know which line to change",
                before.line
            ));
        }
        servers.push(Listed {
            line,
            address: (*address).to_string(),
            down: first[2..].contains(&"down"),
        });
    }
    Ok(servers)
}

/// Characters a server address may have: nginx reads the file as
/// configuration, so no blanks, `;`, `#`, quotes, braces or `$`.
pub fn check_address(address: &str) -> Result<(), String> {
    let plain = !address.is_empty()
        && address.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '[' | ']' | '/')
        });
    if !plain {
        return Err(ADDRESS_RULE.to_string());
    }
    Probe::of(address).map(|_| ())
}

/// What to say when [`check_address`] fails on the characters.
pub const ADDRESS_RULE: &str = "give the address as nginx's `server` directive takes it: host:port, [v6]:port or unix:/path \
     (letters, digits and `.-_:[]/`); parameters such as weight=2 belong in the upstream file, where shipit keeps them";

/// How the nginx host checks that a server accepts connections before
/// shipit puts it back: what nginx will connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Tcp { host: String, port: u16 },
    Unix { path: String },
}

impl Probe {
    /// The address of a `server` line as nginx reads it: `unix:PATH`,
    /// `[v6]:port`, `[v6]`, `host:port` or `host` (port 80).
    pub fn of(address: &str) -> Result<Probe, String> {
        if let Some(path) = address.strip_prefix("unix:") {
            return if path.starts_with('/') {
                Ok(Probe::Unix {
                    path: path.to_string(),
                })
            } else {
                Err(format!(
                    "{address:?}: a UNIX socket needs an absolute path (unix:/run/app.sock)"
                ))
            };
        }
        let (host, port) = if let Some(rest) = address.strip_prefix('[') {
            match rest.split_once(']') {
                Some((host, "")) => (host, None),
                Some((host, after)) => match after.strip_prefix(':') {
                    Some(port) => (host, Some(port)),
                    None => return Err(format!("{address:?} is not [v6]:port")),
                },
                None => return Err(format!("{address:?} is not [v6]:port")),
            }
        } else {
            match address.rsplit_once(':') {
                Some((host, _)) if host.contains(':') => {
                    return Err(format!(
                        "{address:?}: write an IPv6 address in brackets, [v6]:port"
                    ));
                }
                Some((host, port)) => (host, Some(port)),
                None => (address, None),
            }
        };
        if host.is_empty() || host.contains(['[', ']', '/']) {
            return Err(format!("{address:?} is not host:port"));
        }
        let port = match port {
            None => 80,
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => return Err(format!("{address:?}: {p:?} is not a port (1-65535)")),
            },
        };
        Ok(Probe::Tcp {
            host: host.to_string(),
            port,
        })
    }

    /// The script's three probe arguments: kind, host or path, port.
    pub fn args(&self) -> [String; 3] {
        match self {
            Probe::Tcp { host, port } => ["tcp".into(), host.clone(), port.to_string()],
            Probe::Unix { path } => ["unix".into(), path.clone(), String::new()],
        }
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Probe::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Probe::Tcp { host, port } => write!(f, "{host}:{port}"),
            Probe::Unix { path } => write!(f, "unix:{path}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_server_lines_and_their_down_flag() {
        let text = "# shop's servers, edited by shipit\n\
                    server 10.0.0.11:8080;\n\
                    \tserver 10.0.0.12:8080 weight=2 down;  # web2\n\
                    keepalive 32;\n\
                    server [fd00::13]:8080 max_fails=3;\n\
                    # server 10.0.0.99:8080;\n";
        assert_eq!(
            parse(text).unwrap(),
            [
                Listed {
                    line: 2,
                    address: "10.0.0.11:8080".into(),
                    down: false
                },
                Listed {
                    line: 3,
                    address: "10.0.0.12:8080".into(),
                    down: true
                },
                Listed {
                    line: 5,
                    address: "[fd00::13]:8080".into(),
                    down: false
                },
            ]
        );
        assert_eq!(parse("").unwrap(), []);
    }

    #[test]
    fn refuses_lines_the_edit_could_not_change() {
        for (text, expected) in [
            (
                "server a:1; server b:1;\n",
                "line 1 (\"server a:1; server b:1;\"): write each `server` directive on a line of its own, ending in `;`",
            ),
            (
                "server a:1\n  weight=2;\n",
                "line 1 (\"server a:1\"): write each `server` directive on a line of its own, ending in `;`",
            ),
            (
                "keepalive 2; server a:1;\n",
                "line 1 (\"keepalive 2; server a:1;\"): write each `server` directive on a line of its own, ending in `;`",
            ),
            (
                "server a:1;\nserver a:1 down;\n",
                "lists server a:1 twice (lines 1 and 2); shipit would not know which line to change",
            ),
        ] {
            assert_eq!(parse(text).unwrap_err(), expected, "for {text:?}");
        }
    }

    #[test]
    fn addresses_as_nginx_reads_them() {
        let tcp = |host: &str, port| Probe::Tcp {
            host: host.into(),
            port,
        };
        assert_eq!(Probe::of("10.0.0.11:8080"), Ok(tcp("10.0.0.11", 8080)));
        assert_eq!(Probe::of("app1.internal"), Ok(tcp("app1.internal", 80)));
        assert_eq!(Probe::of("[fd00::11]:8080"), Ok(tcp("fd00::11", 8080)));
        assert_eq!(Probe::of("[fd00::11]"), Ok(tcp("fd00::11", 80)));
        assert_eq!(
            Probe::of("unix:/run/app.sock"),
            Ok(Probe::Unix {
                path: "/run/app.sock".into()
            })
        );
        assert_eq!(tcp("fd00::11", 8080).to_string(), "[fd00::11]:8080");
        for bad in [
            "fd00::11",
            "a:0",
            "a:x",
            "unix:run.sock",
            ":80",
            "[fd00::1]x",
        ] {
            assert!(Probe::of(bad).is_err(), "{bad}");
        }
        assert!(check_address("10.0.0.1:80 weight=2").is_err());
        assert!(check_address("a;b").is_err());
        assert!(check_address("10.0.0.1:80").is_ok());
    }
}
