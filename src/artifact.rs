//! The release archive: built once on the machine running shipit, then
//! streamed to every host. A directory is packed into a gzipped tar in an
//! unnamed temporary file, reading each file in pieces; a ready `.tar.gz`
//! is shipped as it is. Either way the archive is sent from disk, so memory
//! does not grow with the release.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use sha2::Digest as _;

use crate::config::Source;
use crate::transport::SharedFile;

#[derive(Debug, Clone)]
pub struct Artifact {
    /// The archive, read from disk as each host's upload sends it.
    pub archive: SharedFile,
    /// Files packed (0 for a ready archive).
    pub files: usize,
    /// Special files in the source that were left out.
    pub skipped: Vec<Skipped>,
    pub packing: Duration,
    /// SHA-256 of what is shipped: of the packed tree's paths, modes, link
    /// targets and contents (not its times, so a fresh checkout of the same
    /// commit has the same digest), or of a ready archive's bytes.
    pub digest: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("app.build `{command}` failed ({status}); nothing was changed on any host")]
    Build { command: String, status: String },
    #[error("app.revision `{command}` failed: {problem}")]
    Revision { command: String, problem: String },
    #[error(
        "app.revision: the output of `{command}` {problem}; make it print the revision as plain text \
         on its first line; nothing was changed on any host"
    )]
    RevisionOutput { command: String, problem: String },
    #[error("app.source {}: {problem}", path.display())]
    Source { path: PathBuf, problem: String },
}

/// Runs `app.build` in `dir` (deploy.toml's directory). Its output goes to
/// our stderr as it comes, so a long build shows progress.
pub async fn build(command: &str, dir: &Path) -> Result<(), ArtifactError> {
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .current_dir(dir)
        .stdin(Stdio::null())
        // Build output must not mix into --json on stdout.
        .stdout(std::io::stderr())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .status()
        .await
        .map_err(|e| ArtifactError::Build {
            command: command.to_string(),
            status: format!("cannot start sh: {e}"),
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(ArtifactError::Build {
            command: command.to_string(),
            status: status.to_string(),
        })
    }
}

/// The revision being shipped, written to REVISION and revisions.log:
/// `app.revision`'s output if set, else the git commit of deploy.toml's
/// directory (with `-dirty` for uncommitted changes), else empty.
pub async fn revision(command: Option<&str>, dir: &Path) -> Result<String, ArtifactError> {
    let run = |line: String| async move {
        tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&line)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .await
    };
    match command {
        Some(command) => {
            let out = run(command.to_string())
                .await
                .map_err(|e| ArtifactError::Revision {
                    command: command.to_string(),
                    problem: e.to_string(),
                })?;
            if !out.status.success() {
                return Err(ArtifactError::Revision {
                    command: command.to_string(),
                    problem: format!(
                        "{}: {}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    ),
                });
            }
            plain(command, first_line(&out.stdout))
        }
        None => {
            let git = "git rev-parse --verify -q HEAD 2>/dev/null && { git diff --quiet HEAD 2>/dev/null || echo dirty; }";
            match run(git.to_string()).await {
                Ok(out) if out.status.success() => {
                    let text = String::from_utf8_lossy(&out.stdout);
                    let mut lines = text.lines();
                    let sha = lines.next().unwrap_or_default().trim();
                    let short: String = sha.chars().take(12).collect();
                    let revision = if lines.next() == Some("dirty") {
                        format!("{short}-dirty")
                    } else {
                        short
                    };
                    plain("git rev-parse HEAD", revision)
                }
                _ => Ok(String::new()),
            }
        }
    }
}

/// The revision is written on every host and handed to hooks: it must be
/// text a command line can carry, so it is checked here, as it enters.
fn plain(command: &str, revision: String) -> Result<String, ArtifactError> {
    let problem = if revision.contains('\0') {
        "contains a NUL byte".to_string()
    } else if let Some(c) = revision.chars().find(|c| c.is_control()) {
        format!("contains a control character ({})", c.escape_unicode())
    } else {
        return Ok(revision);
    };
    Err(ArtifactError::RevisionOutput {
        command: command.to_string(),
        problem,
    })
}

fn first_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .chars()
        .take(200)
        .collect()
}

/// Packs or reads the release. Blocking work runs off the async threads.
pub async fn prepare(source: &Source) -> Result<Artifact, ArtifactError> {
    let source = source.clone();
    tokio::task::spawn_blocking(move || prepare_blocking(&source))
        .await
        .expect("packing does not panic")
}

fn prepare_blocking(source: &Source) -> Result<Artifact, ArtifactError> {
    let started = std::time::Instant::now();
    let problem = |path: &Path, problem: String| ArtifactError::Source {
        path: path.to_path_buf(),
        problem,
    };
    match source {
        Source::Archive(path) => {
            let (archive, digest) = read_archive(path).map_err(|e| problem(path, e))?;
            Ok(Artifact {
                archive,
                files: 0,
                skipped: Vec::new(),
                packing: started.elapsed(),
                digest,
            })
        }
        Source::Directory(path) => {
            let meta = std::fs::metadata(path).map_err(|e| {
                problem(
                    path,
                    match e.kind() {
                        std::io::ErrorKind::NotFound => {
                            "does not exist; build it first (app.build runs before packing)".into()
                        }
                        _ => format!("cannot read: {e}"),
                    },
                )
            })?;
            if !meta.is_dir() {
                return Err(problem(
                    path,
                    "is neither a directory nor a .tar.gz/.tgz file".into(),
                ));
            }
            let packed = pack(path).map_err(|e| problem(path, e.to_string()))?;
            if packed.files == 0 {
                return Err(problem(path, "is empty; there is nothing to deploy".into()));
            }
            let archive = SharedFile::new(packed.file)
                .map_err(|e| problem(path, PackError::Spool(e).to_string()))?;
            Ok(Artifact {
                archive,
                files: packed.files,
                skipped: packed.skipped,
                packing: started.elapsed(),
                digest: packed.digest,
            })
        }
    }
}

/// A ready archive is sent from the file itself, kept open: replacing it
/// (a new build renames over it) does not change what this run sends.
fn read_archive(path: &Path) -> Result<(SharedFile, String), String> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let mut digest = sha2::Sha256::new();
    let mut buffer = vec![0; 1 << 20];
    let mut head = Vec::new();
    loop {
        let n = file
            .read(&mut buffer)
            .map_err(|e| format!("cannot read: {e}"))?;
        if n == 0 {
            break;
        }
        if head.len() < 2 {
            head.extend_from_slice(&buffer[..n.min(2)]);
        }
        digest.update(&buffer[..n]);
    }
    if head.len() < 2 || head[..2] != [0x1f, 0x8b] {
        return Err("is not a gzip file; ship a .tar.gz, or point source at a directory".into());
    }
    let archive = SharedFile::new(file).map_err(|e| format!("cannot read: {e}"))?;
    Ok((archive, hex(&digest.finalize())))
}

/// A packed directory: the archive in an unnamed temporary file.
struct Packed {
    file: std::fs::File,
    files: usize,
    skipped: Vec<Skipped>,
    digest: String,
}

/// A special file left out of the release: a socket, FIFO or device
/// cannot be shipped (a FIFO would block packing forever).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// Relative to the source directory.
    pub path: PathBuf,
    pub kind: &'static str,
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.path.display(), self.kind)
    }
}

/// The one warning line for the special files packing left out.
pub fn skipped_warning(source: &Path, skipped: &[Skipped]) -> Option<String> {
    const SHOWN: usize = 5;
    if skipped.is_empty() {
        return None;
    }
    let mut list: Vec<String> = skipped
        .iter()
        .take(SHOWN)
        .map(ToString::to_string)
        .collect();
    if skipped.len() > SHOWN {
        list.push(format!("and {} more", skipped.len() - SHOWN));
    }
    Some(format!(
        "app.source {}: left out {} special file{} (sockets, FIFOs and devices are not shipped): {}",
        source.display(),
        skipped.len(),
        if skipped.len() == 1 { "" } else { "s" },
        list.join(", ")
    ))
}

#[derive(Debug, thiserror::Error)]
enum PackError {
    #[error("cannot read {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "cannot write the archive to {dir} ({0}); set TMPDIR to a directory with room for it",
        dir = std::env::temp_dir().display()
    )]
    Spool(std::io::Error),
}

/// Tars `dir`'s contents (not the directory itself), keeping symlinks as
/// links and leaving out special files, and gzips the result into an
/// unnamed temporary file (in `TMPDIR`, gone with the process); also returns
/// the content digest. Files are read in pieces as they are archived, so
/// memory does not grow with the release. Level 1 compression: packing is
/// on the critical path of every deploy and most bytes are code and assets
/// that compress well at any level.
fn pack(dir: &Path) -> Result<Packed, PackError> {
    use std::os::unix::fs::FileTypeExt as _;
    let read = |path: &Path, error| PackError::Read {
        path: path.to_path_buf(),
        error,
    };
    let file = tempfile::tempfile().map_err(PackError::Spool)?;
    let spool = std::io::BufWriter::with_capacity(256 * 1024, file);
    let encoder = flate2::write::GzEncoder::new(spool, flate2::Compression::fast());
    let mut builder = tar::Builder::new(encoder);
    let mut digest = sha2::Sha256::new();
    let mut files = 0;
    let mut skipped = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(relative) = stack.pop() {
        let here = dir.join(&relative);
        let mut entries: Vec<_> = std::fs::read_dir(&here)
            .and_then(|entries| entries.collect::<Result<_, _>>())
            .map_err(|e| read(&here, e))?;
        // Sorted, so the same tree always packs the same way.
        entries.sort_by_key(std::fs::DirEntry::file_name);
        for entry in entries {
            let name = relative.join(entry.file_name());
            let path = entry.path();
            // Never followed and never opened before its type is known: a
            // FIFO would block the open forever.
            let meta = std::fs::symlink_metadata(&path).map_err(|e| read(&path, e))?;
            let kind = meta.file_type();
            let special = if kind.is_socket() {
                Some("socket")
            } else if kind.is_fifo() {
                Some("FIFO")
            } else if kind.is_char_device() {
                Some("character device")
            } else if kind.is_block_device() {
                Some("block device")
            } else {
                None
            };
            if let Some(kind) = special {
                skipped.push(Skipped { path: name, kind });
                continue;
            }
            let mut header = tar::Header::new_gnu();
            header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
            let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777;
            digest.update(name.as_os_str().as_encoded_bytes());
            digest.update([0]);
            if kind.is_dir() {
                digest.update(format!("d{mode:o}\0"));
                builder
                    .append_data(&mut header, &name, std::io::empty())
                    .map_err(PackError::Spool)?;
                stack.push(name);
            } else if kind.is_symlink() {
                let target = std::fs::read_link(&path).map_err(|e| read(&path, e))?;
                digest.update(format!("l{mode:o}\0"));
                digest.update(target.as_os_str().as_encoded_bytes());
                digest.update([0]);
                builder
                    .append_link(&mut header, &name, &target)
                    .map_err(PackError::Spool)?;
                files += 1;
            } else {
                let mut content = Content::open(&path, &meta).map_err(|e| read(&path, e))?;
                digest.update(format!("f{mode:o} {}\0", meta.len()));
                content.digest = Some(digest);
                let appended = builder.append_data(&mut header, &name, &mut content);
                if let Some(error) = content.failed.take() {
                    return Err(read(&path, error));
                }
                appended.map_err(PackError::Spool)?;
                digest = content.digest.take().expect("given back");
                files += 1;
            }
        }
    }
    let spool = builder
        .into_inner()
        .and_then(flate2::write::GzEncoder::finish)
        .map_err(PackError::Spool)?;
    let mut file = spool
        .into_inner()
        .map_err(|e| PackError::Spool(e.into_error()))?;
    std::io::Seek::rewind(&mut file).map_err(PackError::Spool)?;
    Ok(Packed {
        file,
        files,
        skipped,
        digest: hex(&digest.finalize()),
    })
}

/// A regular file's contents as tar reads them: exactly the size its header
/// says, hashed on the way, with a read error kept apart from a write error.
struct Content {
    file: std::fs::File,
    left: u64,
    digest: Option<sha2::Sha256>,
    failed: Option<std::io::Error>,
}

impl Content {
    /// Opens `path`, which `meta` (from `lstat`) says is a regular file, and
    /// checks that what was opened is that file.
    fn open(path: &Path, meta: &std::fs::Metadata) -> std::io::Result<Content> {
        use std::os::unix::fs::MetadataExt as _;
        let file = std::fs::File::open(path)?;
        let opened = file.metadata()?;
        if !opened.is_file() || opened.ino() != meta.ino() || opened.dev() != meta.dev() {
            return Err(std::io::Error::other(
                "it was replaced while being packed; is a build still writing to the source?",
            ));
        }
        Ok(Content {
            file,
            left: meta.len(),
            digest: None,
            failed: None,
        })
    }
}

impl std::io::Read for Content {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let read = match self.file.read(&mut buf[..want]) {
            Ok(0) => Err(std::io::Error::other(
                "it became shorter while being packed; is a build still writing to the source?",
            )),
            read => read,
        };
        match read {
            Ok(n) => {
                self.left -= n as u64;
                if let Some(digest) = &mut self.digest {
                    digest.update(&buf[..n]);
                }
                Ok(n)
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                let shown = std::io::Error::new(e.kind(), e.to_string());
                self.failed = Some(e);
                Err(shown)
            }
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The archive as the hosts receive it, piece by piece.
    async fn sent(artifact: &Artifact) -> Vec<u8> {
        let stdin = crate::transport::Stdin::File(artifact.archive.clone());
        let mut all = Vec::new();
        loop {
            let chunk = stdin.chunk(all.len() as u64).await.unwrap();
            if chunk.is_empty() {
                return all;
            }
            assert!(chunk.len() <= crate::transport::STDIN_CHUNK);
            all.extend_from_slice(&chunk);
        }
    }

    fn unpack(archive: &[u8], out: &Path) {
        std::fs::create_dir_all(out).unwrap();
        tar::Archive::new(flate2::read::GzDecoder::new(archive))
            .unpack(out)
            .unwrap();
    }

    #[tokio::test]
    async fn packs_a_tree_with_links_and_odd_names() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("dist");
        std::fs::create_dir_all(dir.join("sub dir/deeper")).unwrap();
        std::fs::write(dir.join("app.py"), "print(1)").unwrap();
        std::fs::write(dir.join("sub dir/deeper/it's $(x).txt"), "x").unwrap();
        std::os::unix::fs::symlink("app.py", dir.join("link")).unwrap();
        let artifact = prepare(&Source::Directory(dir)).await.unwrap();
        assert_eq!(artifact.files, 3);

        let out = tmp.path().join("out");
        unpack(&sent(&artifact).await, &out);
        assert_eq!(
            std::fs::read_to_string(out.join("app.py")).unwrap(),
            "print(1)"
        );
        assert_eq!(
            std::fs::read_to_string(out.join("sub dir/deeper/it's $(x).txt")).unwrap(),
            "x"
        );
        assert_eq!(
            std::fs::read_link(out.join("link")).unwrap(),
            Path::new("app.py")
        );

        // New times, same content: same digest. New content: new digest.
        let dist = tmp.path().join("dist");
        let app = std::fs::File::options()
            .write(true)
            .open(dist.join("app.py"))
            .unwrap();
        app.set_modified(std::time::SystemTime::UNIX_EPOCH).unwrap();
        let again = prepare(&Source::Directory(dist.clone())).await.unwrap();
        assert_eq!(again.digest, artifact.digest);
        std::fs::write(dist.join("app.py"), "print(2)").unwrap();
        let changed = prepare(&Source::Directory(dist)).await.unwrap();
        assert_ne!(changed.digest, artifact.digest);
    }

    /// Larger than a piece, several pieces per file, incompressible: what
    /// is sent unpacks to the same bytes, and the archive on disk is what
    /// is sent.
    #[tokio::test]
    async fn streams_large_files_through_the_archive_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("dist");
        std::fs::create_dir_all(dir.join("assets")).unwrap();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut noise = |len: usize| -> Vec<u8> {
            (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect()
        };
        let big = noise(3 * crate::transport::STDIN_CHUNK + 12345);
        std::fs::write(dir.join("assets/big.bin"), &big).unwrap();
        for i in 0..50 {
            std::fs::write(dir.join(format!("f{i}.txt")), noise(i * 100)).unwrap();
        }
        let artifact = prepare(&Source::Directory(dir.clone())).await.unwrap();
        assert_eq!(artifact.files, 51);
        let archive = sent(&artifact).await;
        assert_eq!(archive.len() as u64, artifact.archive.len());
        assert!(
            archive.len() > big.len(),
            "incompressible data stays as big"
        );
        let out = tmp.path().join("out");
        unpack(&archive, &out);
        assert_eq!(std::fs::read(out.join("assets/big.bin")).unwrap(), big);
        for i in 0..50 {
            let name = format!("f{i}.txt");
            assert_eq!(
                std::fs::read(out.join(&name)).unwrap(),
                std::fs::read(dir.join(&name)).unwrap()
            );
        }
        // Packed twice, the same digest.
        let again = prepare(&Source::Directory(dir)).await.unwrap();
        assert_eq!(again.digest, artifact.digest);

        // A ready archive is sent from the file itself; its digest is of
        // its bytes.
        let ready = tmp.path().join("ready.tar.gz");
        std::fs::write(&ready, &archive).unwrap();
        let shipped = prepare(&Source::Archive(ready)).await.unwrap();
        assert_eq!(sent(&shipped).await, archive);
        assert_eq!(shipped.digest, hex(&sha2::Sha256::digest(&archive)));
    }

    /// Sockets (a Rails `tmp/sockets/puma.sock`), FIFOs and devices are left
    /// out with one warning line, never opened: a FIFO used to block packing
    /// forever, a socket to fail with "No such device or address".
    #[tokio::test]
    async fn leaves_out_sockets_fifos_and_devices() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("app");
        std::fs::create_dir_all(dir.join("tmp/sockets")).unwrap();
        std::fs::write(dir.join("config.ru"), "run App").unwrap();
        let _socket =
            std::os::unix::net::UnixListener::bind(dir.join("tmp/sockets/puma.sock")).unwrap();
        let made = std::process::Command::new("mkfifo")
            .arg(dir.join("tmp/pipe"))
            .status()
            .unwrap();
        assert!(made.success(), "mkfifo failed");
        // /dev/null's numbers; making a device needs root, as the fleet does.
        let made = std::process::Command::new("mknod")
            .arg(dir.join("null"))
            .args(["c", "1", "3"])
            .status()
            .unwrap();
        assert!(made.success(), "mknod failed (the tests run as root)");
        // A link to the FIFO is a link like any other.
        std::os::unix::fs::symlink("tmp/pipe", dir.join("pipe-link")).unwrap();

        let artifact = tokio::time::timeout(
            Duration::from_secs(60),
            prepare(&Source::Directory(dir.clone())),
        )
        .await
        .expect("packing blocked")
        .unwrap();
        assert_eq!(artifact.files, 2);
        let skipped: Vec<String> = artifact.skipped.iter().map(ToString::to_string).collect();
        assert_eq!(
            skipped,
            [
                "null (character device)",
                "tmp/pipe (FIFO)",
                "tmp/sockets/puma.sock (socket)"
            ]
        );
        assert_eq!(
            skipped_warning(&dir, &artifact.skipped).unwrap(),
            format!(
                "app.source {}: left out 3 special files (sockets, FIFOs and devices are not \
                 shipped): null (character device), tmp/pipe (FIFO), tmp/sockets/puma.sock (socket)",
                dir.display()
            )
        );
        let out = tmp.path().join("out");
        unpack(&sent(&artifact).await, &out);
        assert_eq!(
            std::fs::read_to_string(out.join("config.ru")).unwrap(),
            "run App"
        );
        assert!(out.join("tmp/sockets").is_dir());
        assert!(!out.join("tmp/pipe").exists());
        assert!(!out.join("null").exists());
        assert!(!out.join("tmp/sockets/puma.sock").exists());
        assert_eq!(
            std::fs::read_link(out.join("pipe-link")).unwrap(),
            Path::new("tmp/pipe")
        );

        // Only special files: nothing to deploy.
        let only = tmp.path().join("only");
        std::fs::create_dir(&only).unwrap();
        let _other = std::os::unix::net::UnixListener::bind(only.join("s.sock")).unwrap();
        let err = prepare(&Source::Directory(only)).await.unwrap_err();
        assert!(err.to_string().contains("is empty"), "{err}");

        // Many: the line stays one line.
        let many: Vec<Skipped> = (0..8)
            .map(|i| Skipped {
                path: PathBuf::from(format!("s{i}.sock")),
                kind: "socket",
            })
            .collect();
        let line = skipped_warning(Path::new("dist"), &many).unwrap();
        assert!(
            line.ends_with("s3.sock (socket), s4.sock (socket), and 3 more"),
            "{line}"
        );
        assert!(skipped_warning(Path::new("dist"), &[]).is_none());
    }

    #[tokio::test]
    async fn explains_bad_sources() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = prepare(&Source::Directory(tmp.path().join("nope")))
            .await
            .unwrap_err();
        assert!(
            missing
                .to_string()
                .ends_with("does not exist; build it first (app.build runs before packing)")
        );
        std::fs::write(tmp.path().join("x.tar.gz"), "plain text").unwrap();
        let not_gzip = prepare(&Source::Archive(tmp.path().join("x.tar.gz")))
            .await
            .unwrap_err();
        assert!(not_gzip.to_string().contains("is not a gzip file"));
        std::fs::create_dir(tmp.path().join("empty")).unwrap();
        let empty = prepare(&Source::Directory(tmp.path().join("empty")))
            .await
            .unwrap_err();
        assert!(empty.to_string().contains("is empty"));
    }

    /// The revision reaches the hosts (REVISION, revisions.log, hooks'
    /// SHIPIT_REVISION): a NUL byte in it used to panic mid-run, after the
    /// upload. It is refused when the command's output is read.
    #[tokio::test]
    async fn a_revision_is_one_line_of_plain_text() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let err = revision(Some("printf 'abc\\000def\\n'"), dir)
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "app.revision: the output of `printf 'abc\\000def\\n'` contains a NUL byte; \
             make it print the revision as plain text on its first line; nothing was changed on any host"
        );
        let err = revision(Some("printf '\\033[1mv2\\n'"), dir)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "app.revision: the output of `printf '\\033[1mv2\\n'` contains a control character (\\u{1b});"
            ),
            "{err}"
        );
        // Only the first line counts, trimmed.
        assert_eq!(
            revision(Some("printf ' v1.2 (abc) \\r\\nmore\\000\\n'"), dir)
                .await
                .unwrap(),
            "v1.2 (abc)"
        );
    }

    #[tokio::test]
    async fn build_failures_say_nothing_changed() {
        let tmp = tempfile::tempdir().unwrap();
        build("true", tmp.path()).await.unwrap();
        let err = build("exit 4", tmp.path()).await.unwrap_err().to_string();
        assert!(
            err.starts_with(
                "app.build `exit 4` failed (exit status: 4); nothing was changed on any host"
            ),
            "{err}"
        );
    }
}
