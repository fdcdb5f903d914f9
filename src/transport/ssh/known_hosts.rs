//! Decides whether a server's host key is the one we expect, reading
//! known_hosts files exactly as OpenSSH does, and records keys of new hosts
//! for `accept-new`.
//!
//! russh's own check misses too much for a deploy tool (no wildcards, no
//! `!negation`, no tab separators, ignores `@revoked`, reports a host known
//! under another key type as unknown, and one bad key anywhere aborts the
//! check), so this module parses each line itself and uses ssh-key only to
//! decode the key. The verdict says *why* a key is not accepted, so the
//! error can name the file, the line and the fix.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use hmac::{Hmac, KeyInit, Mac};
use russh::keys::ssh_key::known_hosts::{HostPatterns, Marker};
use russh::keys::ssh_key::{Algorithm, HashAlg, PublicKey};
use sha1::Sha1;

/// The name a host's keys are filed under: `host` for port 22,
/// `[host]:port` otherwise (lower-cased, as OpenSSH writes it).
pub(crate) fn host_key_name(host: &str, port: u16) -> String {
    let host = host.to_ascii_lowercase();
    if port == 22 {
        host
    } else {
        format!("[{host}]:{port}")
    }
}

/// One usable line of a known_hosts file.
#[derive(Debug, Clone)]
pub(crate) struct Line {
    pub file: PathBuf,
    /// 1-based, as `ssh-keygen -R` and OpenSSH's messages count.
    pub line: usize,
    marker: Option<Marker>,
    patterns: HostPatterns,
    pub key: PublicKey,
}

/// What known_hosts says about the key a server offered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The key is recorded for this host.
    Known,
    /// Nothing is recorded for this host.
    Unknown,
    /// Keys of other types are recorded for this host, not this one.
    OtherType {
        known: Vec<(Algorithm, PathBuf, usize)>,
    },
    /// A different key of the same type is recorded: refuse.
    Changed { file: PathBuf, line: usize },
    /// The key is listed as `@revoked`: refuse.
    Revoked { file: PathBuf, line: usize },
}

/// The lines of one or more known_hosts files.
#[derive(Debug, Clone, Default)]
pub(crate) struct KnownHosts {
    lines: Vec<Line>,
}

impl KnownHosts {
    /// Reads the files; missing ones are empty. Lines that do not parse are
    /// skipped (as OpenSSH does) and logged.
    pub fn load(files: &[PathBuf]) -> KnownHosts {
        let mut all = KnownHosts::default();
        for file in files {
            match std::fs::read_to_string(file) {
                Ok(text) => all.lines.extend(parse(file, &text)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::debug!("cannot read {}: {e}", file.display()),
            }
        }
        all
    }

    /// Checks `key`, offered by `host` on `port`.
    pub fn check(&self, host: &str, port: u16, key: &PublicKey) -> Verdict {
        let name = host_key_name(host, port);
        let mut changed = None;
        let mut other = Vec::new();
        // `@revoked` wins over everything; `@cert-authority` lines never
        // apply, since host certificates are not requested.
        if let Some(line) = self.lines.iter().find(|l| {
            l.marker == Some(Marker::Revoked)
                && l.key.key_data() == key.key_data()
                && patterns_match(&l.patterns, &name)
        }) {
            return Verdict::Revoked {
                file: line.file.clone(),
                line: line.line,
            };
        }
        for line in self.lines.iter().filter(|l| l.marker.is_none()) {
            if !patterns_match(&line.patterns, &name) {
                continue;
            }
            if line.key.key_data() == key.key_data() {
                return Verdict::Known;
            }
            if same_type(&line.key.algorithm(), &key.algorithm()) {
                changed.get_or_insert((line.file.clone(), line.line));
            } else {
                other.push((line.key.algorithm(), line.file.clone(), line.line));
            }
        }
        match (changed, other.is_empty()) {
            (Some((file, line)), _) => Verdict::Changed { file, line },
            (None, false) => Verdict::OtherType { known: other },
            (None, true) => Verdict::Unknown,
        }
    }

    /// Key types recorded for the host, in file order, without repeats. The
    /// host key algorithms offered to the server put these first, so a host
    /// with several keys proves itself with one we can check (OpenSSH does
    /// the same).
    pub fn known_algorithms(&self, host: &str, port: u16) -> Vec<Algorithm> {
        let name = host_key_name(host, port);
        let mut algorithms: Vec<Algorithm> = Vec::new();
        for line in self.lines.iter().filter(|l| l.marker.is_none()) {
            if patterns_match(&line.patterns, &name) {
                let alg = line.key.algorithm();
                if !algorithms.iter().any(|a| same_type(a, &alg)) {
                    algorithms.push(alg);
                }
            }
        }
        algorithms
    }
}

/// Parses known_hosts text. Fields may be separated by spaces or tabs.
pub(crate) fn parse(file: &Path, text: &str) -> Vec<Line> {
    let mut lines = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        match parse_line(trimmed) {
            Some((marker, patterns, key)) => lines.push(Line {
                file: file.to_path_buf(),
                line: index + 1,
                marker,
                patterns,
                key,
            }),
            None => tracing::debug!(
                "{}:{}: skipping a line that is not a known_hosts entry",
                file.display(),
                index + 1
            ),
        }
    }
    lines
}

fn parse_line(line: &str) -> Option<(Option<Marker>, HostPatterns, PublicKey)> {
    let mut fields = line.split_whitespace();
    let mut first = fields.next()?;
    let marker = if first.starts_with('@') {
        let marker = first.parse::<Marker>().ok()?;
        first = fields.next()?;
        Some(marker)
    } else {
        None
    };
    let patterns = first.parse::<HostPatterns>().ok()?;
    let algorithm = fields.next()?;
    let data = fields.next()?;
    let key = PublicKey::from_openssh(&format!("{algorithm} {data}")).ok()?;
    Some((marker, patterns, key))
}

/// RSA keys are one type whatever signature hash the server uses.
fn same_type(a: &Algorithm, b: &Algorithm) -> bool {
    matches!((a, b), (Algorithm::Rsa { .. }, Algorithm::Rsa { .. })) || a == b
}

fn patterns_match(patterns: &HostPatterns, name: &str) -> bool {
    match patterns {
        HostPatterns::HashedName { salt, hash } => {
            let Ok(mac) = <Hmac<Sha1> as KeyInit>::new_from_slice(salt) else {
                return false;
            };
            mac.chain_update(name.as_bytes()).verify_slice(hash).is_ok()
        }
        HostPatterns::Patterns(list) => match_pattern_list(name, list),
    }
}

/// OpenSSH's `match_hostname`: a negated pattern that matches rules the
/// line out; otherwise any positive match counts. Case-insensitive.
pub(crate) fn match_pattern_list(name: &str, patterns: &[String]) -> bool {
    let name = name.to_ascii_lowercase();
    let mut matched = false;
    for pattern in patterns {
        let pattern = pattern.to_ascii_lowercase();
        if let Some(negated) = pattern.strip_prefix('!') {
            if wildcard_match(name.as_bytes(), negated.as_bytes()) {
                return false;
            }
        } else if wildcard_match(name.as_bytes(), pattern.as_bytes()) {
            matched = true;
        }
    }
    matched
}

/// `*` matches any run of characters, `?` exactly one.
fn wildcard_match(text: &[u8], pattern: &[u8]) -> bool {
    let (mut t, mut p) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == text[t]) {
            t += 1;
            p += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// `SHA256:...` as OpenSSH prints it.
pub(crate) fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// The `-t` value of ssh-keyscan for a key type.
pub(crate) fn keyscan_type(algorithm: &Algorithm) -> &'static str {
    match algorithm {
        Algorithm::Ed25519 => "ed25519",
        Algorithm::Ecdsa { .. } => "ecdsa",
        Algorithm::Rsa { .. } => "rsa",
        _ => "ed25519,ecdsa,rsa",
    }
}

/// The known_hosts line recording `key` for `host`:`port`.
pub(crate) fn entry_line(host: &str, port: u16, key: &PublicKey) -> String {
    let mut key = key.clone();
    key.set_comment("");
    let encoded = key
        .to_openssh()
        .unwrap_or_else(|_| format!("{} <unencodable key>", key.algorithm().as_str()));
    format!("{} {}", host_key_name(host, port), encoded.trim_end())
}

/// Serialises appends from every connection in this process, so two hosts
/// accepted at once cannot interleave their lines.
static APPEND: Mutex<()> = Mutex::new(());

/// Appends `key` for `host`:`port` to `file` (creating it and its directory
/// if needed) unless an identical entry appeared meanwhile. One `write` per
/// line on an `O_APPEND` file, so other processes appending to the same file
/// do not tear it either.
pub(crate) fn append(file: &Path, host: &str, port: u16, key: &PublicKey) -> std::io::Result<()> {
    let _guard = APPEND
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let existing = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let parsed = KnownHosts {
        lines: parse(file, &existing),
    };
    if parsed.check(host, port, key) == Verdict::Known {
        return Ok(());
    }
    if let Some(dir) = file.parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let mut text = String::new();
    if !existing.is_empty() && !existing.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&entry_line(host, port, key));
    text.push('\n');
    let mut out = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(file)?;
    out.write_all(text.as_bytes())
}

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};

#[cfg(test)]
mod tests {
    use super::*;

    const ED: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGsK1Ph7FndZih/BMkwCtZvXAhJCU7siwIMjg/d2Q/Sb";
    const ED2: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAipTWX19xvOLKyQf6dnW6shVJP+OYQ8ZA02NcqHOVs1";
    const ECDSA: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBNOkrzomy+HYrD6qYitRgcvdSufHJCBt6zMKskeEt0RWaIiFpQuejUFInVBHTG/6PmHBJ2OcktlFwYTqOmb4wko=";

    fn key(s: &str) -> PublicKey {
        PublicKey::from_openssh(s).unwrap()
    }

    fn db(text: &str) -> KnownHosts {
        KnownHosts {
            lines: parse(Path::new("kh"), text),
        }
    }

    fn hashed(name: &str, salt: &[u8]) -> String {
        use russh::keys::ssh_encoding::base64::{Base64, Encoding};
        let mac = <Hmac<Sha1> as KeyInit>::new_from_slice(salt)
            .unwrap()
            .chain_update(name.as_bytes())
            .finalize()
            .into_bytes();
        format!(
            "|1|{}|{}",
            Base64::encode_string(salt),
            Base64::encode_string(&mac)
        )
    }

    #[test]
    fn matching_table() {
        let ed = key(ED);
        let cases: Vec<(String, &str, u16, Verdict)> = vec![
            (format!("web1 {ED}"), "web1", 22, Verdict::Known),
            (format!("WEB1 {ED}"), "web1", 22, Verdict::Known),
            (
                format!("web1,10.0.0.1 {ED}"),
                "10.0.0.1",
                22,
                Verdict::Known,
            ),
            (format!("web1 {ED}"), "web2", 22, Verdict::Unknown),
            // Non-22 ports need the bracketed form, exactly like OpenSSH.
            (format!("web1 {ED}"), "web1", 2222, Verdict::Unknown),
            (format!("[web1]:2222 {ED}"), "web1", 2222, Verdict::Known),
            (format!("[web1]:2222 {ED}"), "web1", 22, Verdict::Unknown),
            // Wildcards.
            (
                format!("*.example.com {ED}"),
                "a.example.com",
                22,
                Verdict::Known,
            ),
            (format!("10.0.0.? {ED}"), "10.0.0.7", 22, Verdict::Known),
            (format!("10.0.0.? {ED}"), "10.0.0.17", 22, Verdict::Unknown),
            (
                format!("[10.0.0.*]:2222 {ED}"),
                "10.0.0.9",
                2222,
                Verdict::Known,
            ),
            // Negation rules the whole line out.
            (
                format!("*.example.com,!db.example.com {ED}"),
                "db.example.com",
                22,
                Verdict::Unknown,
            ),
            (
                format!("*.example.com,!db.example.com {ED}"),
                "web.example.com",
                22,
                Verdict::Known,
            ),
            // Tabs as separators, comments and trailing comment fields.
            (
                format!("web1\t{}", ED.replace(' ', "\t")),
                "web1",
                22,
                Verdict::Known,
            ),
            (
                format!("# web1 {ED}\n  web1 {ED} root@somewhere"),
                "web1",
                22,
                Verdict::Known,
            ),
            // Hashed entries.
            (
                format!("{} {ED}", hashed("web1", b"0123456789abcdefghij")),
                "web1",
                22,
                Verdict::Known,
            ),
            (
                format!("{} {ED}", hashed("[web1]:2222", b"saltsaltsaltsaltsalt")),
                "web1",
                2222,
                Verdict::Known,
            ),
            (
                format!("{} {ED}", hashed("web1", b"0123456789abcdefghij")),
                "web2",
                22,
                Verdict::Unknown,
            ),
            // Same type, other key: changed.
            (
                format!("web1 {ED2}"),
                "web1",
                22,
                Verdict::Changed {
                    file: "kh".into(),
                    line: 1,
                },
            ),
            // The right key anywhere wins over a stale one elsewhere.
            (format!("web1 {ED2}\nweb1 {ED}"), "web1", 22, Verdict::Known),
            // Only another type known.
            (
                format!("web1 {ECDSA}"),
                "web1",
                22,
                Verdict::OtherType {
                    known: vec![(key(ECDSA).algorithm(), "kh".into(), 1)],
                },
            ),
            // Revoked, even when also listed as good.
            (
                format!("web1 {ED}\n@revoked * {ED}"),
                "web1",
                22,
                Verdict::Revoked {
                    file: "kh".into(),
                    line: 2,
                },
            ),
            (
                format!("@revoked other {ED}\nweb1 {ED}"),
                "web1",
                22,
                Verdict::Known,
            ),
            // CA lines are not host keys.
            (
                format!("@cert-authority web1 {ED}"),
                "web1",
                22,
                Verdict::Unknown,
            ),
            // A malformed line elsewhere does not break the good ones.
            (
                format!("web1 ssh-ed25519 AAAA!!notbase64\ngarbage\n@bogus x {ED}\n\nweb1 {ED}"),
                "web1",
                22,
                Verdict::Known,
            ),
        ];
        for (text, host, port, expected) in cases {
            assert_eq!(
                db(&text).check(host, port, &ed),
                expected,
                "{text:?} vs {host}:{port}"
            );
        }
    }

    #[test]
    fn line_numbers_count_every_line() {
        let text = format!("# comment\n\nbroken line\nweb1 {ED2}\n");
        assert_eq!(
            db(&text).check("web1", 22, &key(ED)),
            Verdict::Changed {
                file: "kh".into(),
                line: 4
            }
        );
    }

    #[test]
    fn known_algorithms_in_file_order() {
        let text = format!("web1 {ECDSA}\nother {ED}\n*eb1 {ED}\nweb1 {ED2}\n");
        assert_eq!(
            db(&text).known_algorithms("web1", 22),
            [key(ECDSA).algorithm(), Algorithm::Ed25519]
        );
        assert!(db(&text).known_algorithms("nope", 22).is_empty());
    }

    #[test]
    fn wildcards() {
        assert!(wildcard_match(b"abc", b"a*"));
        assert!(wildcard_match(b"abc", b"*c"));
        assert!(wildcard_match(b"abc", b"a?c"));
        assert!(wildcard_match(b"abc", b"*"));
        assert!(wildcard_match(b"", b"*"));
        assert!(!wildcard_match(b"abc", b"a?"));
        assert!(wildcard_match(b"aXbYbc", b"a*b*c"));
        assert!(!wildcard_match(b"abd", b"a*c"));
    }

    #[test]
    fn append_records_once_and_keeps_lines_whole() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sub/known_hosts");
        append(&file, "10.0.0.1", 2222, &key(ED)).unwrap();
        append(&file, "10.0.0.1", 2222, &key(ED)).unwrap();
        append(&file, "web", 22, &key(ED)).unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        let ed = ED.to_string();
        assert_eq!(text, format!("[10.0.0.1]:2222 {ed}\nweb {ed}\n"));

        // A file without a final newline gets one before the new line.
        let other = dir.path().join("kh2");
        std::fs::write(&other, format!("old {ED2}")).unwrap();
        append(&other, "web", 22, &key(ED)).unwrap();
        let text = std::fs::read_to_string(&other).unwrap();
        assert_eq!(text, format!("old {ED2}\nweb {ED}\n"));
    }

    #[test]
    fn concurrent_appends_do_not_interleave() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("known_hosts");
        std::thread::scope(|s| {
            for i in 0..16 {
                let file = &file;
                s.spawn(move || append(file, &format!("host{i}"), 22, &key(ED)).unwrap());
            }
        });
        let parsed = KnownHosts::load(std::slice::from_ref(&file));
        for i in 0..16 {
            assert_eq!(
                parsed.check(&format!("host{i}"), 22, &key(ED)),
                Verdict::Known
            );
        }
        assert_eq!(std::fs::read_to_string(&file).unwrap().lines().count(), 16);
    }
}
