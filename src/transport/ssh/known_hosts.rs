//! Decides whether a server's host key is the one we expect, reading what
//! OpenSSH reads (user and global known_hosts files, `RevokedHostKeys`,
//! under the `HostKeyAlias` name if one is set), and records keys of new
//! hosts for `accept-new`. A file that exists but cannot be read is an
//! error, never an empty file: an unreadable file could hold the line that
//! says a key changed.
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

/// Everything OpenSSH consults about one hop's host key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostKeyDb {
    /// The name keys are filed under: `HostKeyAlias`, else `host`, or
    /// `[host]:port` off port 22.
    pub name: String,
    /// `UserKnownHostsFile`: read; `accept-new` records into the first.
    pub user_files: Vec<PathBuf>,
    /// `GlobalKnownHostsFile`: read, never written.
    pub global_files: Vec<PathBuf>,
    /// `RevokedHostKeys`: public keys refused for every host.
    pub revoked: Option<PathBuf>,
}

impl HostKeyDb {
    /// Reads every file. Missing known_hosts files are empty, as in
    /// OpenSSH; a missing `RevokedHostKeys` file is an error, as in OpenSSH.
    pub fn load(&self) -> Result<KnownHosts, ReadError> {
        let mut files = self.user_files.clone();
        files.extend(self.global_files.iter().cloned());
        let mut all = KnownHosts::load(&files)?;
        if let Some(file) = &self.revoked {
            all.lines.extend(load_revoked(file)?);
        }
        Ok(all)
    }

    /// Where `accept-new` records a new key.
    pub fn record_to(&self) -> Option<&Path> {
        self.user_files.first().map(PathBuf::as_path)
    }
}

/// A known_hosts (or revoked keys) file that exists but cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReadError {
    pub file: PathBuf,
    pub detail: String,
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cannot read {}: {}; host keys cannot be checked without it (fix it, or point ssh.known_hosts / \
             UserKnownHostsFile / GlobalKnownHostsFile elsewhere)",
            self.file.display(),
            self.detail
        )
    }
}

/// `RevokedHostKeys` in its text form: one public key per line.
fn load_revoked(file: &Path) -> Result<Vec<Line>, ReadError> {
    let error = |detail: String| ReadError {
        file: file.to_path_buf(),
        detail,
    };
    let bytes = std::fs::read(file).map_err(|e| error(e.to_string()))?;
    if bytes.starts_with(b"SSHKRL") {
        return Err(error(
            "it is a binary key revocation list (KRL), which shipit cannot read; \
             list the revoked keys one per line, or as @revoked lines in known_hosts"
                .into(),
        ));
    }
    let text = String::from_utf8(bytes).map_err(|_| error("it is not text".into()))?;
    let mut lines = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let key = PublicKey::from_openssh(trimmed)
            .map_err(|_| error(format!("line {} is not a public key", index + 1)))?;
        lines.push(Line {
            file: file.to_path_buf(),
            line: index + 1,
            marker: Some(Marker::Revoked),
            patterns: HostPatterns::Patterns(vec!["*".into()]),
            key,
        });
    }
    Ok(lines)
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
    /// No key is recorded for this host, but a `@cert-authority` line
    /// covers it: OpenSSH would check a host certificate against that CA.
    /// shipit does not check certificates, so it refuses rather than take
    /// the plain key as new.
    CertAuthority { file: PathBuf, line: usize },
}

/// The lines of one or more known_hosts files.
#[derive(Debug, Clone, Default)]
pub(crate) struct KnownHosts {
    lines: Vec<Line>,
}

impl KnownHosts {
    /// Reads the files; missing ones are empty, and one that exists but
    /// cannot be read is an error. Lines that do not parse are skipped (as
    /// OpenSSH does) and logged.
    pub fn load(files: &[PathBuf]) -> Result<KnownHosts, ReadError> {
        let mut all = KnownHosts::default();
        for file in files {
            match std::fs::read(file) {
                Ok(bytes) => all
                    .lines
                    .extend(parse(file, &String::from_utf8_lossy(&bytes))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(ReadError {
                        file: file.clone(),
                        detail: e.to_string(),
                    });
                }
            }
        }
        Ok(all)
    }

    /// Checks `key`, offered by the host whose keys are filed under `name`
    /// (see [`HostKeyDb::name`]).
    pub fn check(&self, name: &str, key: &PublicKey) -> Verdict {
        let mut changed = None;
        let mut other = Vec::new();
        // `@revoked` wins over everything.
        if let Some(line) = self.lines.iter().find(|l| {
            l.marker == Some(Marker::Revoked)
                && l.key.key_data() == key.key_data()
                && patterns_match(&l.patterns, name)
        }) {
            return Verdict::Revoked {
                file: line.file.clone(),
                line: line.line,
            };
        }
        for line in self.lines.iter().filter(|l| l.marker.is_none()) {
            if !patterns_match(&line.patterns, name) {
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
            (None, true) => match self.lines.iter().find(|l| {
                l.marker == Some(Marker::CertAuthority) && patterns_match(&l.patterns, name)
            }) {
                Some(ca) => Verdict::CertAuthority {
                    file: ca.file.clone(),
                    line: ca.line,
                },
                None => Verdict::Unknown,
            },
        }
    }

    /// Key types recorded for the host, in file order, without repeats. The
    /// host key algorithms offered to the server put these first, so a host
    /// with several keys proves itself with one we can check (OpenSSH does
    /// the same).
    pub fn known_algorithms(&self, name: &str) -> Vec<Algorithm> {
        let mut algorithms: Vec<Algorithm> = Vec::new();
        for line in self.lines.iter().filter(|l| l.marker.is_none()) {
            if patterns_match(&line.patterns, name) {
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

/// The known_hosts line recording `key` under `name`.
pub(crate) fn entry_line(name: &str, key: &PublicKey) -> String {
    let mut key = key.clone();
    key.set_comment("");
    let encoded = key
        .to_openssh()
        .unwrap_or_else(|_| format!("{} <unencodable key>", key.algorithm().as_str()));
    format!("{name} {}", encoded.trim_end())
}

/// Serialises appends from every connection in this process, so two hosts
/// accepted at once cannot interleave their lines.
static APPEND: Mutex<()> = Mutex::new(());

/// Appends `key` under `name` to `file` (creating it and its directory if
/// needed) unless an identical entry appeared meanwhile. One `write` per
/// line on an `O_APPEND` file, so other processes appending to the same file
/// do not tear it either.
pub(crate) fn append(file: &Path, name: &str, key: &PublicKey) -> std::io::Result<()> {
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
    if parsed.check(name, key) == Verdict::Known {
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
    text.push_str(&entry_line(name, key));
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
            // CA lines are not host keys, and a host covered by one only
            // is not "unknown".
            (
                format!("@cert-authority web1 {ED}"),
                "web1",
                22,
                Verdict::CertAuthority {
                    file: "kh".into(),
                    line: 1,
                },
            ),
            (
                format!("@cert-authority *.example.com {ED}"),
                "web1",
                22,
                Verdict::Unknown,
            ),
            (
                format!("@cert-authority web1 {ED2}\nweb1 {ED}"),
                "web1",
                22,
                Verdict::Known,
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
                db(&text).check(&host_key_name(host, port), &ed),
                expected,
                "{text:?} vs {host}:{port}"
            );
        }
    }

    #[test]
    fn line_numbers_count_every_line() {
        let text = format!("# comment\n\nbroken line\nweb1 {ED2}\n");
        assert_eq!(
            db(&text).check("web1", &key(ED)),
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
            db(&text).known_algorithms("web1"),
            [key(ECDSA).algorithm(), Algorithm::Ed25519]
        );
        assert!(db(&text).known_algorithms("nope").is_empty());
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
        append(&file, "[10.0.0.1]:2222", &key(ED)).unwrap();
        append(&file, "[10.0.0.1]:2222", &key(ED)).unwrap();
        append(&file, "web", &key(ED)).unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        let ed = ED.to_string();
        assert_eq!(text, format!("[10.0.0.1]:2222 {ed}\nweb {ed}\n"));

        // A file without a final newline gets one before the new line.
        let other = dir.path().join("kh2");
        std::fs::write(&other, format!("old {ED2}")).unwrap();
        append(&other, "web", &key(ED)).unwrap();
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
                s.spawn(move || append(file, &format!("host{i}"), &key(ED)).unwrap());
            }
        });
        let parsed = KnownHosts::load(std::slice::from_ref(&file)).unwrap();
        for i in 0..16 {
            assert_eq!(parsed.check(&format!("host{i}"), &key(ED)), Verdict::Known);
        }
        assert_eq!(std::fs::read_to_string(&file).unwrap().lines().count(), 16);
    }

    #[test]
    fn the_db_reads_user_and_global_files_and_revoked_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        let user = path("known_hosts");
        let global = path("ssh_known_hosts");
        std::fs::write(&user, "").unwrap();
        std::fs::write(&global, format!("# system-wide\nweb1,web1-key {ED2}\n")).unwrap();
        let db = |name: &str| HostKeyDb {
            name: name.into(),
            user_files: vec![user.clone(), path("known_hosts2")],
            global_files: vec![global.clone(), path("ssh_known_hosts2")],
            revoked: None,
        };
        // A key the global file records differently has changed: it is not
        // new, whatever the (empty) user file says.
        assert_eq!(
            db("web1").load().unwrap().check("web1", &key(ED)),
            Verdict::Changed {
                file: global.clone(),
                line: 2
            }
        );
        assert_eq!(
            db("web1").load().unwrap().check("web1", &key(ED2)),
            Verdict::Known
        );
        // Looked up under the alias, when there is one.
        assert_eq!(
            db("web1-key").load().unwrap().check("web1-key", &key(ED2)),
            Verdict::Known
        );
        assert_eq!(
            db("web2").load().unwrap().check("web2", &key(ED)),
            Verdict::Unknown
        );
        assert_eq!(db("web2").record_to(), Some(user.as_path()));

        // A file that exists but cannot be read is an error naming it.
        std::fs::create_dir(path("known_hosts2")).unwrap();
        let err = db("web2").load().unwrap_err();
        assert_eq!(err.file, path("known_hosts2"));
        assert!(
            err.to_string()
                .starts_with(&format!("cannot read {}: ", path("known_hosts2").display())),
            "{err}"
        );
        std::fs::remove_dir(path("known_hosts2")).unwrap();

        // RevokedHostKeys, one public key a line, applies to every host.
        let revoked = path("revoked");
        std::fs::write(&revoked, format!("# gone\n{ED} old web key\n")).unwrap();
        let with_revoked = HostKeyDb {
            revoked: Some(revoked.clone()),
            ..db("web2")
        };
        std::fs::write(&user, format!("web2 {ED}\n")).unwrap();
        assert_eq!(
            with_revoked.load().unwrap().check("web2", &key(ED)),
            Verdict::Revoked {
                file: revoked.clone(),
                line: 2
            }
        );
        // It must exist and be readable, as in OpenSSH; a binary KRL is
        // refused rather than misread.
        std::fs::write(&revoked, b"SSHKRL\n\0\x01").unwrap();
        assert!(with_revoked.load().unwrap_err().detail.contains("KRL"));
        std::fs::remove_file(&revoked).unwrap();
        assert_eq!(with_revoked.load().unwrap_err().file, revoked);
    }

    #[test]
    fn a_file_with_a_stray_byte_still_counts() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("known_hosts");
        let mut text = b"# caf\xe9 (latin-1)\n".to_vec();
        text.extend(format!("web1 {ED2}\n").as_bytes());
        std::fs::write(&file, text).unwrap();
        let known = KnownHosts::load(std::slice::from_ref(&file)).unwrap();
        assert_eq!(
            known.check("web1", &key(ED)),
            Verdict::Changed { file, line: 2 }
        );
    }
}
