//! The release archive: built once on the machine running shipit, then
//! streamed to every host. A directory is packed into a gzipped tar in
//! memory; a ready `.tar.gz` is shipped as it is.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use sha2::Digest as _;

use crate::config::Source;

#[derive(Debug, Clone)]
pub struct Artifact {
    pub bytes: Bytes,
    /// Files packed (0 for a ready archive).
    pub files: usize,
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
            let bytes =
                std::fs::read(path).map_err(|e| problem(path, format!("cannot read: {e}")))?;
            if bytes.len() < 2 || bytes[..2] != [0x1f, 0x8b] {
                return Err(problem(
                    path,
                    "is not a gzip file; ship a .tar.gz, or point source at a directory".into(),
                ));
            }
            let digest = hex(&sha2::Sha256::digest(&bytes));
            Ok(Artifact {
                bytes: Bytes::from(bytes),
                files: 0,
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
            let (bytes, files, digest) =
                pack(path).map_err(|e| problem(path, format!("cannot pack: {e}")))?;
            if files == 0 {
                return Err(problem(path, "is empty; there is nothing to deploy".into()));
            }
            Ok(Artifact {
                bytes: Bytes::from(bytes),
                files,
                packing: started.elapsed(),
                digest,
            })
        }
    }
}

/// Tars `dir`'s contents (not the directory itself), keeping symlinks as
/// links, and gzips the result; also returns the content digest. Level 1
/// compression: packing is on the critical path of every deploy and most
/// bytes are code and assets that compress well at any level.
fn pack(dir: &Path) -> std::io::Result<(Vec<u8>, usize, String)> {
    let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut builder = tar::Builder::new(encoder);
    let mut digest = sha2::Sha256::new();
    let mut files = 0;
    let mut stack = vec![PathBuf::new()];
    while let Some(relative) = stack.pop() {
        let mut entries: Vec<_> =
            std::fs::read_dir(dir.join(&relative))?.collect::<Result<_, _>>()?;
        // Sorted, so the same tree always packs the same way.
        entries.sort_by_key(std::fs::DirEntry::file_name);
        for entry in entries {
            let name = relative.join(entry.file_name());
            let meta = std::fs::symlink_metadata(entry.path())?;
            let mut header = tar::Header::new_gnu();
            header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
            let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777;
            digest.update(name.as_os_str().as_encoded_bytes());
            digest.update([0]);
            if meta.is_dir() {
                digest.update(format!("d{mode:o}\0"));
                builder.append_data(&mut header, &name, std::io::empty())?;
                stack.push(name);
            } else if meta.file_type().is_symlink() {
                let target = std::fs::read_link(entry.path())?;
                digest.update(format!("l{mode:o}\0"));
                digest.update(target.as_os_str().as_encoded_bytes());
                digest.update([0]);
                builder.append_link(&mut header, &name, &target)?;
                files += 1;
            } else {
                let content = std::fs::read(entry.path())?;
                digest.update(format!("f{mode:o} {}\0", content.len()));
                digest.update(&content);
                builder.append_data(&mut header, &name, &content[..])?;
                files += 1;
            }
        }
    }
    let bytes = builder.into_inner()?.finish()?;
    Ok((bytes, files, hex(&digest.finalize())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
        std::fs::create_dir(&out).unwrap();
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&artifact.bytes[..]));
        archive.unpack(&out).unwrap();
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
