//! `shipit init`: writes a commented starter deploy.toml for the project in
//! this directory (or at `-c FILE`), guessing what it can. Never
//! overwrites a file.

use std::io::Write as _;

use crate::cli::Global;
use crate::config::starter::{self, Guess};
use crate::error::Error;
use crate::exit::Exit;

pub fn run(global: &Global) -> Result<Exit, Error> {
    let path = super::config_path(global);
    let refuse = || {
        Error::Unchanged(format!(
            "{} already exists; `shipit init` never overwrites a file. Edit it (deploy.toml.example \
             lists every key), or move it away and run init again",
            path.display()
        ))
    };
    if path.exists() || path.is_symlink() {
        return Err(refuse());
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    // The directory's real name, also for `.` and `..`.
    let project = std::fs::canonicalize(&dir).map_err(|e| {
        Error::Unchanged(format!(
            "cannot write {}: directory {}: {e}",
            path.display(),
            dir.display()
        ))
    })?;
    let guess = Guess::from_dir(&project);
    let text = starter::render(&guess);
    let cannot = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            refuse()
        } else {
            Error::Unchanged(format!("cannot write {}: {e}", path.display()))
        }
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(cannot)?;
    file.write_all(text.as_bytes()).map_err(cannot)?;

    let source = match &guess.source {
        Some(dir) => format!(" (source {dir}/)"),
        None => format!(
            "; no build output found, so source is {}/ (a TODO)",
            starter::PLACEHOLDER_SOURCE
        ),
    };
    eprintln!(
        "wrote {} for app {}{source}.\nNext: put your hosts in [stages.production], then run \
         `shipit production check` and `shipit production deploy --dry-run`.",
        path.display(),
        guess.app
    );
    Ok(Exit::Success)
}
