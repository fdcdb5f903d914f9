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
use super::check::Program;

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
    /// archive streamed on stdin into it, with tar's default protections,
    /// which shipit never turns off: leading `/` and `../` are stripped, and
    /// links to absolute or `..` targets are made last, so nothing is
    /// written through them.
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

impl Layout {
    /// Read-only, for `shipit STAGE check`: whether `deploy_to` is writable
    /// (or, when missing, can be created) and whether `program` is there.
    /// Parsed by `check::Readiness::parse`.
    pub fn check(&self, program: &Program) -> Cmd {
        let [kind, path] = program.args();
        Cmd::script("check", CHECK, [self.deploy_to.clone(), kind, path])
    }

    /// A user's command line (`shipit STAGE exec`), run by `sh -c` in
    /// `current` when it exists, else in the login directory.
    pub fn exec(&self, line: &str) -> Cmd {
        Cmd::script("exec", EXEC, [self.deploy_to.clone(), line.to_string()])
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
c="$d/current" live=
if [ ! -L "$c" ] && [ -e "$c" ]; then echo 'current not-a-link'; fi
for r in "$d"/releases/*; do
  [ -d "$r" ] || continue
  id=${r##*/}
  # Same inode, not same text: relative links, links to links, `..` and a
  # symlinked deploy_to all lead to the release they lead to.
  [ -z "$live" ] && [ -L "$c" ] && [ "$c" -ef "$r" ] && live=$id
  state=finished; [ -e "$d/.shipit/unfinished/$id" ] && state=unfinished
  bad=good; [ -e "$d/.shipit/bad/$id" ] && bad=bad
  rev=; [ -f "$r/REVISION" ] && [ ! -L "$r/REVISION" ] && { IFS= read -r rev <"$r/REVISION" || :; }
  printf 'release\t%s\t%s\t%s\t%.200s\n' "$id" "$state" "$bad" "$rev"
done
if [ -n "$live" ]; then printf 'current\trelease\t%s\n' "$live"
elif [ -L "$c" ]; then
  # Shown to people only; tabs and line breaks would break the format.
  link=$(printf '%s' "$(readlink "$c")" | tr '\t\n' '  ')
  if [ -e "$c" ]; then
    real=$(cd -P "$c" 2>/dev/null && pwd -P) || real=$(readlink -f "$c" 2>/dev/null) || real=
    printf 'current\telsewhere\t%s\t%s\n' "$link" "$(printf '%s' "$real" | tr '\t\n' '  ')"
  else printf 'current\tdangling\t%s\n' "$link"; fi
fi
for f in "$@"; do [ -e "$d/shared/$f" ] || printf 'missing-shared\t%s\n' "$f"; done
l="$d/.shipit/lock"
if [ -d "$l" ]; then
  run= hb= info=
  { IFS= read -r run <"$l/run"; } 2>/dev/null
  { IFS= read -r hb <"$l/heartbeat"; } 2>/dev/null
  { IFS= read -r info <"$l/info"; } 2>/dev/null
  printf 'lock-run\t%s\nlock-age\t%s\nlock-info\t%s\n' "$run" "$(( $(date +%s) - ${hb:-0} ))" "$info"
fi
# Last, as everything after this line is the journal.
if [ -f "$d/.shipit/journal" ]; then echo 'journal follows'; tail -n 500 "$d/.shipit/journal"; fi
exit 0"#;

const CHECK: &str = r#"d=$1 kind=$2 p=$3
if [ -d "$d" ]; then
  if [ -w "$d" ]; then printf 'deploy_to\twritable\n'; else printf 'deploy_to\tread-only\n'; fi
elif [ -e "$d" ] || [ -L "$d" ]; then
  printf 'deploy_to\tnot-a-directory\n'
else
  a=$(dirname "$d")
  while [ ! -e "$a" ]; do a=$(dirname "$a"); done
  if [ -d "$a" ] && [ -w "$a" ]; then printf 'deploy_to\tcreatable\t%s\n' "$a"
  else printf 'deploy_to\tnot-creatable\t%s\n' "$a"; fi
fi
case $kind in
  file) f=$p ;;
  release)
    if [ ! -d "$d/current" ]; then printf 'restart\tno-current\n'; exit 0; fi
    f="$d/current/$p" ;;
  command)
    if w=$(command -v "$p" 2>/dev/null); then printf 'restart\tfound\t%s\n' "$w"
    else printf 'restart\tmissing\n'; fi
    exit 0 ;;
  *) exit 0 ;;
esac
if [ -f "$f" ] && [ -x "$f" ]; then printf 'restart\tfound\t%s\n' "$f"
elif [ -e "$f" ]; then printf 'restart\tnot-executable\n'
else printf 'restart\tmissing\n'; fi"#;

const EXEC: &str = r#"if [ -d "$1/current" ]; then cd "$1/current" || exit; fi
exec sh -c "$2""#;

const UNPACK: &str = r#"d=$1 id=$2 r="$1/releases/$2"
mkdir -p "$d/releases" "$d/shared" "$d/.shipit/unfinished" "$d/.shipit/bad" || exit
if [ -e "$r" ] && [ ! -e "$d/.shipit/unfinished/$id" ]; then
  echo "release $id already exists here and is finished; refusing to overwrite it" >&2; exit 3
fi
: > "$d/.shipit/unfinished/$id" || exit
rm -rf "$r" && mkdir "$r" || exit
tar -xzf - -C "$r" --no-same-owner"#;

const LINK_SHARED: &str = r#"d=$1 id=$2 r="$1/releases/$2"; shift 2
refuse() { printf 'release %s: refusing to link shared path %s: %s\n' "$id" "$p" "$1" >&2; exit 3; }
# First look, change nothing: a release must not be able to make the
# rm -rf and mkdir below follow a link it ships out of releases/<id>.
for a; do
  p=${a#?}
  case /$p/ in */../*|*/./*|//*) refuse 'it must be a plain path relative to the release' ;; esac
  for b; do
    case $p in "${b#?}"/*) refuse "it lies inside shared path ${b#?}, which becomes a link into shared/; list only one of them" ;; esac
  done
  rest=$p at=$r
  while case $rest in */*) true ;; *) false ;; esac; do
    at="$at/${rest%%/*}" rest=${rest#*/}
    if [ -L "$at" ]; then
      refuse "${at#"$r/"} in the release is a symlink (to $(readlink "$at")); shipit never writes through links a release ships. Make it a directory in the release, or drop the path from shared_dirs/shared_files"
    elif [ -e "$at" ] && [ ! -d "$at" ]; then
      refuse "${at#"$r/"} in the release is not a directory"
    fi
  done
  case $a in
    f*) if [ ! -e "$d/shared/$p" ]; then
          echo "shared file $d/shared/$p is missing on this host; create it there (shipit never creates or overwrites shared files)" >&2; exit 3
        fi ;;
  esac
done
for a; do
  p=${a#?}
  case $a in d*) mkdir -p "$d/shared/$p" || exit ;; esac
  rm -rf "$r/$p" && mkdir -p "$(dirname "$r/$p")" && ln -s "$d/shared/$p" "$r/$p" || exit
done"#;

const FINISH: &str = r#"d=$1 id=$2 r="$1/releases/$2" t="$1/releases/$2/.REVISION.shipit"
# Never write through a REVISION (or temporary file) the release ships as
# a link: remove the name, create the file exclusively, rename it over.
if [ -d "$r/REVISION" ] && [ ! -L "$r/REVISION" ]; then
  echo "release $id ships a directory named REVISION, where shipit records the revision; rename it" >&2; exit 3
fi
rm -f "$t" && (set -C && printf '%s\n' "$3" > "$t") && mv -fT "$t" "$r/REVISION" || exit
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
c="$d/current" live=
# Where current really leads, as a physical path; judged here, at delete
# time, whatever the probe saw.
if [ -e "$c" ]; then
  live=$(cd -P "$c" 2>/dev/null && pwd -P) || live=$(readlink -f "$c" 2>/dev/null) || live=
  if [ -z "$live" ]; then echo "cannot tell where $c leads; removing nothing" >&2; exit 3; fi
fi
for id; do
  r="$d/releases/$id"
  if [ -n "$live" ] && { [ -e "$r" ] || [ -L "$r" ]; }; then
    if [ "$c" -ef "$r" ]; then echo "not removing $id: current points to it" >&2; continue; fi
    rp=$(cd -P "$r" 2>/dev/null && pwd -P) || rp=
    if [ -z "$rp" ]; then echo "not removing $id: cannot resolve $r" >&2; continue; fi
    case $live/ in "$rp"/*) echo "not removing $id: current leads into it ($live)" >&2; continue ;; esac
  fi
  rm -rf "$r" && rm -f "$d/.shipit/bad/$id" "$d/.shipit/unfinished/$id" || exit
done"#;

#[cfg(test)]
mod tests {
    //! The scripts run for real against a temporary directory standing in
    //! for `deploy_to`, with an awkward name on purpose.
    use super::*;
    use crate::host::Current;
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
    fn probe_reads_revisions_the_lock_and_the_journal() {
        let tmp = tempfile::tempdir().unwrap();
        let deploy_to = tmp.path().join("a b");
        let d = deploy_to.to_str().unwrap();
        let release = format!("{d}/releases/20261122101500");
        std::fs::create_dir_all(&release).unwrap();
        // First line only, at most 200 bytes, even without a final newline.
        let long = "x".repeat(300);
        std::fs::write(format!("{release}/REVISION"), format!("{long}\nsecond")).unwrap();
        std::fs::create_dir_all(format!("{d}/releases/20261122101600")).unwrap();
        std::fs::write(format!("{d}/releases/20261122101600/REVISION"), "abc").unwrap();
        std::fs::create_dir_all(format!("{d}/.shipit/lock")).unwrap();
        std::fs::write(format!("{d}/.shipit/lock/run"), "r9\n").unwrap();
        std::fs::write(format!("{d}/.shipit/lock/info"), "{\"kind\":\"deploy\"}\n").unwrap();
        std::fs::write(
            format!("{d}/.shipit/journal"),
            "{\"run\":\"r9\",\"time\":\"t\",\"op\":\"deploy\",\"release\":\"20261122101600\",\"event\":\"started\"}\n",
        )
        .unwrap();

        let (code, out, err) = run(&Layout::new(d).probe(&[]), None);
        assert_eq!(code, 0, "{err}");
        let x200 = "x".repeat(200);
        assert!(
            out.contains(&format!(
                "release\t20261122101500\tfinished\tgood\t{x200}\n"
            )),
            "{out}"
        );
        assert!(
            out.contains("release\t20261122101600\tfinished\tgood\tabc\n"),
            "{out}"
        );
        assert!(out.contains("lock-run\tr9\nlock-age\t"), "{out}");
        assert!(out.contains("lock-info\t{\"kind\":\"deploy\"}\n"), "{out}");
        assert!(out.ends_with("journal follows\n{\"run\":\"r9\",\"time\":\"t\",\"op\":\"deploy\",\"release\":\"20261122101600\",\"event\":\"started\"}\n"), "{out}");
        let facts = crate::host::HostFacts::parse(d, &out).unwrap();
        assert_eq!(facts.releases[1].revision, "abc");
        assert_eq!(facts.lock.unwrap().run, "r9");
        assert_eq!(facts.last_run.unwrap().run, "r9");
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
            "deploy_to writable\nrelease\t20261122101500\tfinished\tgood\tabc123 main\n\
             current\trelease\t20261122101500\nmissing-shared\tnope\n"
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
    fn check_reports_deploy_to_and_the_restart_program() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_str().unwrap();
        let deploy_to = format!("{root}/my app; $(touch pwned)");
        let layout = Layout::new(&deploy_to);
        let check = |program: &Program| {
            let (code, out, err) = run(&layout.check(program), None);
            assert_eq!(code, 0, "{err}");
            out
        };
        // Missing, under a writable directory; nothing to look for.
        assert_eq!(
            check(&Program::Unclear),
            format!("deploy_to\tcreatable\t{root}\n")
        );
        // A path in the release, before any release exists.
        assert_eq!(
            check(&Program::InRelease("bin/restart".into())),
            format!("deploy_to\tcreatable\t{root}\nrestart\tno-current\n")
        );
        let r1 = id("20261122101500");
        let tgz = archive(&[("bin/restart", "#!/bin/sh\n"), ("README", "x")]);
        assert_eq!(run(&layout.unpack(&r1), Some(&tgz)).0, 0);
        assert_eq!(run(&layout.finish(&r1, "x"), None).0, 0);
        assert_eq!(run(&layout.switch(&r1), None).0, 0);
        let release = layout.release(&r1);
        // The archive has no modes beyond 0644: not executable yet.
        assert_eq!(
            check(&Program::InRelease("bin/restart".into())),
            "deploy_to\twritable\nrestart\tnot-executable\n"
        );
        let exe = format!("{release}/bin/restart");
        std::fs::set_permissions(&exe, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        assert_eq!(
            check(&Program::InRelease("bin/restart".into())),
            format!("deploy_to\twritable\nrestart\tfound\t{deploy_to}/current/bin/restart\n")
        );
        assert_eq!(
            check(&Program::File(format!("{root}/nope"))),
            "deploy_to\twritable\nrestart\tmissing\n"
        );
        assert!(check(&Program::Command("sh".into())).contains("restart\tfound\t/"));
        assert!(
            check(&Program::Command("no-such-program-here".into())).ends_with("restart\tmissing\n")
        );

        // A file where a directory should be, and under it.
        let file = format!("{root}/plain-file");
        std::fs::write(&file, "x").unwrap();
        let out = run(&Layout::new(&file).check(&Program::Unclear), None).1;
        assert_eq!(out, "deploy_to\tnot-a-directory\n");
        let out = run(
            &Layout::new(format!("{file}/app")).check(&Program::Unclear),
            None,
        )
        .1;
        assert_eq!(out, format!("deploy_to\tnot-creatable\t{file}\n"));
        assert!(!tmp.path().join("pwned").exists());
    }

    #[test]
    fn exec_runs_the_line_in_current_when_there_is_one() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = Layout::new(tmp.path().join("app 'x'").to_str().unwrap());
        let line = "printf '%s|' \"$(basename \"$PWD\")\" \"$1\"; exit 3";
        let (code, out, _) = run(&layout.exec(line), None);
        // No current: the command still runs, where the shell started.
        assert_eq!(code, 3);
        assert!(out.ends_with("||") && !out.contains("current"), "{out}");

        let r1 = id("20261122101500");
        assert_eq!(run(&layout.unpack(&r1), Some(&archive(&[("a", "1")]))).0, 0);
        assert_eq!(run(&layout.finish(&r1, "x"), None).0, 0);
        assert_eq!(run(&layout.switch(&r1), None).0, 0);
        let (code, out, _) = run(&layout.exec(line), None);
        assert_eq!((code, out.as_str()), (3, "current||"));
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

    /// A `deploy_to` reached through a symlink (`link app -> real app`),
    /// with three finished releases.
    fn three_releases(root: &std::path::Path) -> (Layout, [ReleaseId; 3]) {
        let real = root.join("real app");
        std::fs::create_dir_all(&real).unwrap();
        let link = root.join("link app");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let layout = Layout::new(link.to_str().unwrap());
        let ids = [
            id("20200101000001"),
            id("20200101000002"),
            id("20200101000003"),
        ];
        for r in &ids {
            let tgz = archive(&[("public/index.html", "hi")]);
            assert_eq!(run(&layout.unpack(r), Some(&tgz)).0, 0);
            assert_eq!(run(&layout.finish(r, "x"), None).0, 0);
        }
        (layout, ids)
    }

    fn point_current(layout: &Layout, target: &str) {
        let _ = std::fs::remove_file(layout.current());
        std::os::unix::fs::symlink(target, layout.current()).unwrap();
    }

    #[test]
    fn current_is_resolved_by_where_it_leads_not_by_its_text() {
        let tmp = tempfile::tempdir().unwrap();
        let (layout, [r1, r2, r3]) = three_releases(tmp.path());
        let real = tmp.path().join("real app");
        let real = real.to_str().unwrap();
        let probe = |layout: &Layout| {
            let (code, out, err) = run(&layout.probe(&[]), None);
            assert_eq!(code, 0, "{err}");
            crate::host::HostFacts::parse(layout.deploy_to(), &out)
                .unwrap()
                .current
        };
        let leads_to_r1 = [
            // What an operator types in deploy_to during an incident.
            format!("releases/{r1}"),
            // Absolute, through the real path of a symlinked deploy_to.
            format!("{real}/releases/{r1}"),
            format!("./releases/../releases/{r1}/"),
            // A link to a link.
            "current-by-hand".to_string(),
        ];
        std::os::unix::fs::symlink(
            format!("releases/{r1}"),
            format!("{}/current-by-hand", layout.deploy_to()),
        )
        .unwrap();
        for target in &leads_to_r1 {
            point_current(&layout, target);
            assert_eq!(probe(&layout), Current::Release(r1.clone()), "{target}");
        }

        // Into a release, outside releases/, nowhere: not a release.
        point_current(&layout, &format!("releases/{r2}/public"));
        assert_eq!(
            probe(&layout),
            Current::Elsewhere {
                link: format!("releases/{r2}/public"),
                leads_to: Some(format!("{real}/releases/{r2}/public")),
            }
        );
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        point_current(&layout, outside.to_str().unwrap());
        assert!(
            matches!(probe(&layout), Current::Elsewhere { leads_to: Some(p), .. } if p == outside.to_str().unwrap())
        );
        point_current(&layout, "releases/20190101000000");
        assert_eq!(
            probe(&layout),
            Current::Elsewhere {
                link: "releases/20190101000000".into(),
                leads_to: None
            }
        );
        let _ = r3;
    }

    #[test]
    fn remove_never_deletes_what_current_leads_to_or_into() {
        let tmp = tempfile::tempdir().unwrap();
        let (layout, ids) = three_releases(tmp.path());
        let real = tmp.path().join("real app");
        let all = |layout: &Layout| layout.remove_releases(&ids);
        let exists = |r: &ReleaseId| std::path::Path::new(&layout.release(r)).is_dir();
        let restore = |layout: &Layout| {
            for r in &ids {
                if !exists(r) {
                    assert_eq!(
                        run(&layout.unpack(r), Some(&archive(&[("public/x", "")]))).0,
                        0
                    );
                    assert_eq!(run(&layout.finish(r, "x"), None).0, 0);
                }
            }
        };
        let cases = [
            (format!("releases/{}", ids[0]), "current points to it"),
            (
                format!("{}/releases/{}", real.display(), ids[0]),
                "current points to it",
            ),
            (
                format!("releases/../releases/{}", ids[0]),
                "current points to it",
            ),
            (
                format!("releases/{}/public", ids[0]),
                "current leads into it",
            ),
        ];
        for (target, why) in cases {
            restore(&layout);
            point_current(&layout, &target);
            let (code, _, err) = run(&all(&layout), None);
            assert_eq!(code, 0, "{target}: {err}");
            assert!(
                err.contains(&format!("not removing {}: {why}", ids[0])),
                "{target}: {err}"
            );
            assert!(exists(&ids[0]), "{target}: the live release survives");
            assert!(
                !exists(&ids[1]) && !exists(&ids[2]),
                "{target}: the others go"
            );
        }
        // current leads elsewhere or nowhere: every release may go.
        restore(&layout);
        point_current(&layout, "/");
        assert_eq!(run(&all(&layout), None).0, 0);
        assert!(ids.iter().all(|r| !exists(r)));
        restore(&layout);
        point_current(&layout, "releases/19990101000000");
        assert_eq!(run(&all(&layout), None).0, 0);
        assert!(ids.iter().all(|r| !exists(r)));
    }

    /// Archive members as a hostile archive may hold them: names and link
    /// targets are written raw, `/` and `..` included.
    enum Member<'a> {
        File(&'a str, &'a str),
        Dir(&'a str),
        Symlink(&'a str, &'a str),
        Hardlink(&'a str, &'a str),
    }

    fn raw_archive(members: &[Member<'_>]) -> Vec<u8> {
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        for member in members {
            let mut header = tar::Header::new_ustar();
            let (name, kind, link, body) = match member {
                Member::File(n, b) => (*n, tar::EntryType::Regular, "", *b),
                Member::Dir(n) => (*n, tar::EntryType::Directory, "", ""),
                Member::Symlink(n, t) => (*n, tar::EntryType::Symlink, *t, ""),
                Member::Hardlink(n, t) => (*n, tar::EntryType::Link, *t, ""),
            };
            let old = header.as_old_mut();
            old.name[..name.len()].copy_from_slice(name.as_bytes());
            old.linkname[..link.len()].copy_from_slice(link.as_bytes());
            header.set_entry_type(kind);
            header.set_size(body.len() as u64);
            header.set_mode(if kind == tar::EntryType::Directory {
                0o755
            } else {
                0o644
            });
            header.set_cksum();
            builder.append(&header, body.as_bytes()).unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap()
    }

    /// A directory outside `deploy_to` that no release may touch.
    fn victim(root: &std::path::Path) -> std::path::PathBuf {
        let v = root.join("victim");
        std::fs::create_dir_all(v.join("pids")).unwrap();
        std::fs::write(v.join("pids/keep"), "precious").unwrap();
        std::fs::write(v.join("target"), "orig").unwrap();
        v
    }

    #[track_caller]
    fn untouched(victim: &std::path::Path) {
        let mut names: Vec<String> = std::fs::read_dir(victim)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["pids", "target"], "{}", victim.display());
        assert_eq!(
            std::fs::read_to_string(victim.join("target")).unwrap(),
            "orig"
        );
        assert_eq!(
            std::fs::read_to_string(victim.join("pids/keep")).unwrap(),
            "precious"
        );
        assert_eq!(std::fs::read_dir(victim.join("pids")).unwrap().count(), 1);
    }

    #[test]
    fn shared_paths_never_follow_links_the_release_ships() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = victim(tmp.path());
        let v = victim.to_str().unwrap();
        let layout = Layout::new(tmp.path().join("app").to_str().unwrap());
        let r1 = id("20261122101500");
        let dirs = |list: &[&str]| list.iter().map(|d| d.to_string()).collect::<Vec<_>>();
        let link = |members: &[Member<'_>], shared_dirs: &[&str], shared_files: &[&str]| {
            let _ = std::fs::remove_dir_all(layout.release(&r1));
            let _ = std::fs::remove_file(format!("{}/.shipit/unfinished/{r1}", layout.deploy_to()));
            let (code, _, err) = run(&layout.unpack(&r1), Some(&raw_archive(members)));
            assert_eq!(code, 0, "{err}");
            run(
                &layout.link_shared(&r1, &dirs(shared_dirs), &dirs(shared_files)),
                None,
            )
        };
        let refused = |result: (i32, String, String), why: &str| {
            let (code, _, err) = result;
            assert_eq!(code, 3, "{err}");
            assert!(err.contains(why), "{err}");
            untouched(&victim);
        };

        // The scenario: tmp -> victim, shared_dirs = ["tmp/pids"].
        refused(
            link(&[Member::Symlink("tmp", v)], &["tmp/pids"], &[]),
            &format!(
                "release {r1}: refusing to link shared path tmp/pids: tmp in the release is a symlink (to {v})"
            ),
        );
        // Nothing was linked or created in shared/ either.
        assert!(!tmp.path().join("app/shared/tmp").exists());
        // Relative, deeper, through a file, for a shared file.
        refused(
            link(
                &[Member::Symlink("tmp", "../../../victim")],
                &["tmp/pids"],
                &[],
            ),
            "tmp in the release is a symlink (to ../../../victim)",
        );
        refused(
            link(
                &[Member::Dir("var"), Member::Symlink("var/run", v)],
                &["var/run/app/pids"],
                &[],
            ),
            "shared path var/run/app/pids: var/run in the release is a symlink",
        );
        refused(
            link(&[Member::File("tmp", "x")], &["tmp/pids"], &[]),
            "tmp in the release is not a directory",
        );
        std::fs::create_dir_all(tmp.path().join("app/shared/config")).unwrap();
        std::fs::write(tmp.path().join("app/shared/config/.env"), "K=V").unwrap();
        refused(
            link(&[Member::Symlink("config", v)], &[], &["config/.env"]),
            "config in the release is a symlink",
        );
        // A shared path inside another: the inner one would be written
        // through the outer one's new link, into shared/.
        refused(
            link(&[], &["tmp", "tmp/pids"], &[]),
            "shared path tmp/pids: it lies inside shared path tmp",
        );

        // The shared path itself shipped as a link: the link is replaced,
        // what it points to is left alone.
        let (code, _, err) = link(
            &[
                Member::Symlink("tmp", v),
                Member::Dir("log"),
                Member::Symlink("log/pids", v),
            ],
            &["tmp", "log/pids"],
            &[],
        );
        assert_eq!(code, 0, "{err}");
        untouched(&victim);
        let release = layout.release(&r1);
        assert_eq!(
            std::fs::read_link(format!("{release}/tmp")).unwrap(),
            tmp.path().join("app/shared/tmp")
        );
        assert_eq!(
            std::fs::read_link(format!("{release}/log/pids")).unwrap(),
            tmp.path().join("app/shared/log/pids")
        );
    }

    #[test]
    fn revision_is_never_written_through_a_link_the_release_ships() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = victim(tmp.path());
        let target = victim.join("target");
        let target = target.to_str().unwrap();
        let layout = Layout::new(tmp.path().join("app").to_str().unwrap());
        let cases: [&[Member<'_>]; 3] = [
            &[Member::Symlink("REVISION", target)],
            &[Member::Symlink("REVISION", victim.to_str().unwrap())],
            &[
                Member::Symlink(".REVISION.shipit", target),
                Member::Symlink("REVISION.tmp", target),
            ],
        ];
        for (n, members) in cases.iter().enumerate() {
            let r = id(&format!("2026112210150{n}"));
            assert_eq!(run(&layout.unpack(&r), Some(&raw_archive(members))).0, 0);
            let (code, _, err) = run(&layout.finish(&r, "abc123"), None);
            assert_eq!(code, 0, "case {n}: {err}");
            untouched(&victim);
            let revision = format!("{}/REVISION", layout.release(&r));
            assert!(!std::fs::symlink_metadata(&revision).unwrap().is_symlink());
            assert_eq!(std::fs::read_to_string(&revision).unwrap(), "abc123\n");
        }
        let r = id("20261122101509");
        let tgz = raw_archive(&[Member::Dir("REVISION"), Member::File("REVISION/x", "")]);
        assert_eq!(run(&layout.unpack(&r), Some(&tgz)).0, 0);
        let (code, _, err) = run(&layout.finish(&r, "abc123"), None);
        assert_eq!(code, 3);
        assert!(err.contains("ships a directory named REVISION"), "{err}");
        // Still unfinished: never switched to, never counted.
        assert!(
            std::path::Path::new(&format!("{}/.shipit/unfinished/{r}", layout.deploy_to()))
                .exists()
        );
    }

    /// Pins the tar defaults the unpack step relies on (the machine's tar:
    /// GNU tar on every supported CI and host image).
    #[test]
    fn unpack_keeps_hostile_archives_inside_the_release() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = victim(tmp.path());
        let v = victim.to_str().unwrap();
        let abs = format!("{v}/abs");
        let through = format!("{v}/pids/through");
        let target = format!("{v}/target");
        let layout = Layout::new(tmp.path().join("app").to_str().unwrap());
        let cases: Vec<(&str, Vec<Member<'_>>, bool)> = vec![
            // Leading / is stripped: extracted inside, harmlessly.
            ("absolute name", vec![Member::File(&abs, "pwn")], true),
            (
                "absolute hard link",
                vec![Member::Hardlink("h", &through)],
                false,
            ),
            (
                "../ name",
                vec![Member::File("../../victim/dd", "pwn")],
                false,
            ),
            (
                "a/../../ name",
                vec![Member::File("a/../../../victim/dd", "pwn")],
                false,
            ),
            (
                "file through an absolute link",
                vec![Member::Symlink("l", v), Member::File("l/pids/x", "pwn")],
                false,
            ),
            (
                "file through a ../ link",
                vec![
                    Member::Symlink("l", "../../../victim"),
                    Member::File("l/x", "pwn"),
                ],
                false,
            ),
            (
                "file through a chain of links",
                vec![
                    Member::Symlink("x", "y"),
                    Member::Symlink("y", v),
                    Member::File("x/x", "pwn"),
                ],
                false,
            ),
            (
                "link replaced by a file of the same name",
                vec![Member::Symlink("t", &target), Member::File("t", "pwn")],
                true,
            ),
        ];
        for (n, (what, members, extracts)) in cases.iter().enumerate() {
            let r = id(&format!("202611221015{n:02}"));
            let (code, _, err) = run(&layout.unpack(&r), Some(&raw_archive(members)));
            assert_eq!(code == 0, *extracts, "{what}: exit {code}: {err}");
            untouched(&victim);
        }
    }
}
