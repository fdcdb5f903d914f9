//! The directory layout shipit keeps under `deploy_to` on every host, and
//! the commands that read and change it. Everything here builds [`Cmd`]
//! values from constant scripts plus positional arguments; nothing runs.
//!
//! ```text
//! deploy_to/
//!   current -> deploy_to/releases/<id>   switched by rename, never edited in place
//!   releases/<id>/                       one per deploy; REVISION inside
//!   shared/                              shared_dirs and shared_files live here
//!   revisions.log                        one JSON line per deploy and rollback, append-only
//!   .shipit/unfinished/<id>              present while <id> is being written
//!   .shipit/bad/<id>                     <id> was rolled back from; rollback skips it
//! ```
//!
//! The unfinished marker is created *before* the release directory, so a
//! crash at any point leaves either nothing or a release marked unfinished.

use crate::shell::Cmd;

use super::ReleaseId;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    deploy_to: String,
}

impl Layout {
    pub fn new(deploy_to: impl Into<String>) -> Self {
        Layout {
            deploy_to: deploy_to.into(),
        }
    }

    pub fn deploy_to(&self) -> &str {
        &self.deploy_to
    }

    pub fn current(&self) -> String {
        format!("{}/current", self.deploy_to)
    }

    pub fn release(&self, id: &ReleaseId) -> String {
        format!("{}/releases/{id}", self.deploy_to)
    }

    pub fn shared(&self) -> String {
        format!("{}/shared", self.deploy_to)
    }

    pub fn revisions_log(&self) -> String {
        format!("{}/revisions.log", self.deploy_to)
    }

    /// Read-only: what is on the host. Parsed by `facts::parse`.
    pub fn probe(&self, shared_files: &[String]) -> Cmd {
        let mut args = vec![self.deploy_to.clone()];
        args.extend(shared_files.iter().cloned());
        Cmd::script("probe", PROBE, args)
    }

    /// Creates the release directory (marked unfinished) and unpacks the
    /// archive streamed on stdin into it.
    pub fn unpack(&self, id: &ReleaseId) -> Cmd {
        Cmd::script("unpack", UNPACK, [self.deploy_to.clone(), id.to_string()])
    }

    /// Replaces `shared_dirs` and `shared_files` in the release with links
    /// into `shared/`. Shared files must already exist.
    pub fn link_shared(&self, id: &ReleaseId, dirs: &[String], files: &[String]) -> Cmd {
        let mut args = vec![self.deploy_to.clone(), id.to_string()];
        args.extend(dirs.iter().map(|d| format!("d{d}")));
        args.extend(files.iter().map(|f| format!("f{f}")));
        Cmd::script("link-shared", LINK_SHARED, args)
    }

    /// Writes REVISION and clears the unfinished mark: from here on the
    /// release counts for cleanup and rollback.
    pub fn finish(&self, id: &ReleaseId, revision: &str) -> Cmd {
        Cmd::script(
            "finish",
            FINISH,
            [self.deploy_to.clone(), id.to_string(), revision.to_string()],
        )
    }

    /// Points `current` at the release in one rename.
    pub fn switch(&self, id: &ReleaseId) -> Cmd {
        Cmd::script("switch", SWITCH, [self.deploy_to.clone(), id.to_string()])
    }

    /// Marks a release bad so rollback never picks it again. `note` says who
    /// and when.
    pub fn mark_bad(&self, id: &ReleaseId, note: &str) -> Cmd {
        Cmd::script(
            "mark-bad",
            MARK_BAD,
            [self.deploy_to.clone(), id.to_string(), note.to_string()],
        )
    }

    /// Appends one line to revisions.log.
    pub fn record(&self, line: &str) -> Cmd {
        Cmd::script("record", RECORD, [self.deploy_to.clone(), line.to_string()])
    }

    /// Deletes releases; refuses, at run time too, to delete the one
    /// `current` points to.
    pub fn remove_releases(&self, ids: &[ReleaseId]) -> Cmd {
        let mut args = vec![self.deploy_to.clone()];
        args.extend(ids.iter().map(ToString::to_string));
        Cmd::script("remove-releases", REMOVE, args)
    }
}

// The scripts below take every value as a positional argument; they are
// never formatted. Exit status 3 means "refused, with a message on stderr".

const PROBE: &str = r#"d=$1; shift
if [ ! -d "$d" ]; then
  echo 'deploy_to missing'
  for f in "$@"; do printf 'missing-shared\t%s\n' "$f"; done
  exit 0
fi
if [ -w "$d" ]; then echo 'deploy_to writable'; else echo 'deploy_to read-only'; fi
if [ -L "$d/current" ]; then printf 'current\t%s\n' "$(readlink "$d/current")"
elif [ -e "$d/current" ]; then echo 'current not-a-link'; fi
for r in "$d"/releases/*; do
  [ -d "$r" ] || continue
  id=${r##*/}
  state=finished; [ -e "$d/.shipit/unfinished/$id" ] && state=unfinished
  bad=good; [ -e "$d/.shipit/bad/$id" ] && bad=bad
  rev=$(head -n 1 "$r/REVISION" 2>/dev/null | cut -c1-200)
  printf 'release\t%s\t%s\t%s\t%s\n' "$id" "$state" "$bad" "$rev"
done
for f in "$@"; do [ -e "$d/shared/$f" ] || printf 'missing-shared\t%s\n' "$f"; done
l="$d/.shipit/lock"
if [ -d "$l" ]; then
  printf 'lock-run\t%s\n' "$(cat "$l/run" 2>/dev/null)"
  hb=$(cat "$l/heartbeat" 2>/dev/null)
  printf 'lock-age\t%s\n' "$(( $(date +%s) - ${hb:-0} ))"
  printf 'lock-info\t%s\n' "$(head -n 1 "$l/info" 2>/dev/null)"
fi
[ -f "$d/.shipit/journal" ] && tail -n 500 "$d/.shipit/journal" | sed 's/^/journal\t/'
exit 0"#;

const UNPACK: &str = r#"d=$1 id=$2 r="$1/releases/$2"
mkdir -p "$d/releases" "$d/shared" "$d/.shipit/unfinished" "$d/.shipit/bad" || exit
if [ -e "$r" ] && [ ! -e "$d/.shipit/unfinished/$id" ]; then
  echo "release $id already exists here and is finished; refusing to overwrite it" >&2; exit 3
fi
: > "$d/.shipit/unfinished/$id" || exit
rm -rf "$r" && mkdir "$r" || exit
tar -xzf - -C "$r" --no-same-owner"#;

const LINK_SHARED: &str = r#"d=$1 r="$1/releases/$2"; shift 2
for a; do
  p=${a#?}
  case $a in
    d*) mkdir -p "$d/shared/$p" || exit ;;
    f*) if [ ! -e "$d/shared/$p" ]; then
          echo "shared file $d/shared/$p is missing on this host; create it there (shipit never creates or overwrites shared files)" >&2; exit 3
        fi ;;
  esac
  rm -rf "$r/$p" && mkdir -p "$(dirname "$r/$p")" && ln -s "$d/shared/$p" "$r/$p" || exit
done"#;

const FINISH: &str = r#"d=$1 id=$2
printf '%s\n' "$3" > "$d/releases/$id/REVISION.tmp" && mv -f "$d/releases/$id/REVISION.tmp" "$d/releases/$id/REVISION" || exit
rm -f "$d/.shipit/unfinished/$id""#;

const SWITCH: &str = r#"d=$1 id=$2 r="$1/releases/$2"
if [ ! -d "$r" ]; then echo "release $id is not on this host" >&2; exit 3; fi
if [ -e "$d/.shipit/unfinished/$id" ]; then echo "release $id is unfinished; refusing to switch to it" >&2; exit 3; fi
if [ -e "$d/current" ] && [ ! -L "$d/current" ]; then
  echo "$d/current is a real directory, not a symlink; move it away (shipit will not delete it)" >&2; exit 3
fi
ln -sfn "$r" "$d/.current.$id.tmp" && mv -fT "$d/.current.$id.tmp" "$d/current""#;

const MARK_BAD: &str = r#"d=$1 id=$2
[ -d "$d/releases/$id" ] || exit 0
mkdir -p "$d/.shipit/bad" && printf '%s\n' "$3" > "$d/.shipit/bad/$id""#;

const RECORD: &str = r#"mkdir -p "$1" && printf '%s\n' "$2" >> "$1/revisions.log""#;

const REMOVE: &str = r#"d=$1; shift
live=$(readlink "$d/current" 2>/dev/null)
for id; do
  if [ "$live" = "$d/releases/$id" ]; then echo "not removing $id: current points to it" >&2; continue; fi
  rm -rf "$d/releases/$id" && rm -f "$d/.shipit/bad/$id" "$d/.shipit/unfinished/$id" || exit
done"#;

#[cfg(test)]
mod tests {
    //! The scripts run for real against a temporary directory standing in
    //! for `deploy_to`, with an awkward name on purpose.
    use super::*;
    use std::process::{Command, Stdio};

    fn run(cmd: &Cmd, stdin: Option<&[u8]>) -> (i32, String, String) {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(cmd.render())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write;
            let mut pipe = child.stdin.take().unwrap();
            if let Some(data) = stdin {
                pipe.write_all(data).unwrap();
            }
        }
        let out = child.wait_with_output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into(),
            String::from_utf8_lossy(&out.stderr).into(),
        )
    }

    fn archive(files: &[(&str, &str)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        for (name, body) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(body.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder
                .append_data(&mut header, name, body.as_bytes())
                .unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap()
    }

    fn id(s: &str) -> ReleaseId {
        s.parse().unwrap()
    }

    #[test]
    fn full_release_cycle_on_a_hostile_path() {
        let tmp = tempfile::tempdir().unwrap();
        let deploy_to = tmp.path().join("my app; $(touch pwned) 'q'");
        let deploy_to = deploy_to.to_str().unwrap();
        let layout = Layout::new(deploy_to);
        let r1 = id("20261122101500");

        let (code, out, _) = run(&layout.probe(&[".env".into()]), None);
        assert_eq!(
            (code, out.as_str()),
            (0, "deploy_to missing\nmissing-shared\t.env\n")
        );

        let tgz = archive(&[("app.py", "print(1)"), ("log/old.txt", "x")]);
        let (code, _, err) = run(&layout.unpack(&r1), Some(&tgz));
        assert_eq!(code, 0, "{err}");
        let (_, out, _) = run(&layout.probe(&[]), None);
        assert!(
            out.contains("release\t20261122101500\tunfinished\tgood\t\n"),
            "{out}"
        );

        // A missing shared file is refused with a message naming it.
        let (code, _, err) = run(
            &layout.link_shared(&r1, &["log".into()], &["config/.env".into()]),
            None,
        );
        assert_eq!(code, 3);
        assert!(err.contains("shared/config/.env is missing"), "{err}");

        std::fs::create_dir_all(format!("{deploy_to}/shared/config")).unwrap();
        std::fs::write(format!("{deploy_to}/shared/config/.env"), "K=V").unwrap();
        let (code, _, err) = run(
            &layout.link_shared(&r1, &["log".into()], &["config/.env".into()]),
            None,
        );
        assert_eq!(code, 0, "{err}");
        let release = layout.release(&r1);
        assert_eq!(
            std::fs::read_link(format!("{release}/log"))
                .unwrap()
                .to_str()
                .unwrap(),
            format!("{deploy_to}/shared/log")
        );
        assert_eq!(
            std::fs::read_to_string(format!("{release}/config/.env")).unwrap(),
            "K=V"
        );

        // Switching to an unfinished release is refused.
        let (code, _, err) = run(&layout.switch(&r1), None);
        assert_eq!(code, 3, "{err}");

        let (code, _, err) = run(&layout.finish(&r1, "abc123 main"), None);
        assert_eq!(code, 0, "{err}");
        let (code, _, err) = run(&layout.switch(&r1), None);
        assert_eq!(code, 0, "{err}");
        assert_eq!(
            std::fs::read_link(layout.current())
                .unwrap()
                .to_str()
                .unwrap(),
            release
        );

        let (_, out, _) = run(&layout.probe(&["config/.env".into(), "nope".into()]), None);
        assert_eq!(
            out,
            format!(
                "deploy_to writable\ncurrent\t{release}\nrelease\t20261122101500\tfinished\tgood\tabc123 main\nmissing-shared\tnope\n"
            )
        );

        let (code, _, _) = run(&layout.mark_bad(&r1, "by me"), None);
        assert_eq!(code, 0);
        let (code, _, _) = run(&layout.record("{\"x\":1}"), None);
        assert_eq!(code, 0);
        assert_eq!(
            std::fs::read_to_string(layout.revisions_log()).unwrap(),
            "{\"x\":1}\n"
        );

        // The live release survives a removal request.
        let (code, _, err) = run(&layout.remove_releases(std::slice::from_ref(&r1)), None);
        assert_eq!(code, 0);
        assert!(err.contains("current points to it"));
        assert!(std::path::Path::new(&release).is_dir());
        assert!(!tmp.path().join("pwned").exists());
        assert!(!std::path::Path::new("pwned").exists());
    }

    #[test]
    fn a_finished_release_is_never_overwritten() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = Layout::new(tmp.path().to_str().unwrap());
        let r1 = id("20261122101500");
        let tgz = archive(&[("a", "1")]);
        assert_eq!(run(&layout.unpack(&r1), Some(&tgz)).0, 0);
        assert_eq!(run(&layout.finish(&r1, "x"), None).0, 0);
        let (code, _, err) = run(&layout.unpack(&r1), Some(&tgz));
        assert_eq!(code, 3);
        assert!(err.contains("already exists"), "{err}");
    }

    #[test]
    fn switching_refuses_a_real_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = Layout::new(tmp.path().to_str().unwrap());
        let r1 = id("20261122101500");
        assert_eq!(run(&layout.unpack(&r1), Some(&archive(&[("a", "1")]))).0, 0);
        assert_eq!(run(&layout.finish(&r1, "x"), None).0, 0);
        std::fs::create_dir(layout.current()).unwrap();
        let (code, _, err) = run(&layout.switch(&r1), None);
        assert_eq!(code, 3);
        assert!(err.contains("is a real directory"), "{err}");
    }
}
