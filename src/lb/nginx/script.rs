//! The host-side script that reads and edits the upstream file where
//! nginx runs, and what it answers. One constant text with positional
//! arguments (values are never pasted into it), run with `sh -c` on the
//! nginx host, over SSH or locally: one round trip per drain or enable.
//!
//! `shipit:nginx-upstream OP FILE SERVER WAIT_MS RELOAD_MS LOCK_S PROBE AT PORT NGINX...`
//!
//! - `read`: the file (under a shared lock).
//! - `check`: also whether nginx loads the file (`nginx -T` names every
//!   file it read; compared by inode), whether this user may write it,
//!   and nginx's master process (needed to watch its workers).
//! - `down` / `up`: under an exclusive `flock` on the file itself, add or
//!   remove `down` on SERVER's line (in place, so owner, mode and inode
//!   stay), `nginx -T` (a test that also yields the `pid` directive), note
//!   the master's workers, `nginx -s reload`, then wait (≤ RELOAD_MS) until
//!   every one of those workers is shutting down or gone: from then on no
//!   worker with the old list takes a new request. A refused test, a failed
//!   reload or a reload nginx did not apply restores the file as it was.
//!   Then the lock is released and `reloaded` printed.
//!   - `down` then waits (≤ WAIT_MS) until those workers have exited: they
//!     hold every request that was in flight through nginx, to SERVER too.
//!   - `up` first waits (≤ WAIT_MS) until SERVER accepts a connection from
//!     the nginx host (PROBE `tcp` AT PORT, or `unix` AT), before changing
//!     anything.
//!
//! NGINX is how to invoke nginx there, word by word (`sudo -n nginx -c
//! /etc/nginx/nginx.conf`); `-T`, `-V` or `-s reload` is appended.
//!
//! Output: `key<TAB>value…` lines, then for `read`/`check` the line
//! `--- upstream file` and the file as it is. Failures exit non-zero with
//! one message on stderr (see [`Failure`]).

use std::collections::BTreeMap;
use std::time::Duration;

use super::upstream::Probe;
use crate::shell::Cmd;

/// How long an edit waits for another one's lock on the same file.
pub const LOCK_WAIT: Duration = Duration::from_secs(60);

/// How long nginx may take to apply a reload (start new workers, tell the
/// old ones to stop taking requests) before shipit calls it failed.
pub const RELOAD_WAIT: Duration = Duration::from_secs(30);

pub const SCRIPT: &str = r#"set -u
trap '' HUP PIPE
op=$1 file=$2 server=$3 wait_ms=$4 reload_ms=$5 lock_s=$6 probe=$7 probe_at=$8 probe_port=$9
shift 9
fail() { code=$1; shift; printf '%s\n' "$*" >&2; exit "$code"; }
here() { uname -n 2>/dev/null || echo "the nginx host"; }
now_ms() { read -r up _ </proc/uptime; s=${up%.*} c=${up#*.}; echo $((s * 1000 + ${c#0} * 10)); }
case $op in read|check|down|up) ;; *) fail 2 "unknown operation: $op" ;; esac
[ -e "$file" ] || fail 3 "$file does not exist on $(here)"
[ -f "$file" ] || fail 3 "$file on $(here) is not a regular file"
[ -r "$file" ] || fail 3 "$file on $(here) is not readable by $(id -un)"
command -v flock >/dev/null 2>&1 || fail 3 "flock is not installed on $(here); shipit needs it to change $file one edit at a time (apt-get install util-linux)"

# nginx's master, found as `nginx -s reload` finds it: the pid file named by
# the `pid` directive, else the compiled-in --pid-path; a relative one is
# under -p PREFIX, else the compiled-in --prefix. Needs $dump (`nginx -T`).
find_master() {
  pidfile=$(printf '%s\n' "$dump" | awk '$1 == "pid" {
    v = $0; sub(/^[ \t]*pid[ \t]+/, "", v); sub(/[ \t]*;[^;]*$/, "", v)
    if (v ~ /^".*"$/ || v ~ /^\047.*\047$/) v = substr(v, 2, length(v) - 2)
    print v; exit }')
  if [ -z "$pidfile" ]; then
    pidfile=$("$@" -V 2>&1 9<&- | tr ' ' '\n' | sed -n 's/^--pid-path=//p' | head -n 1)
    [ -n "$pidfile" ] || pidfile=logs/nginx.pid
  fi
  case $pidfile in
  /*) ;;
  *)
    prefix= take=
    for w in "$@"; do
      if [ -n "$take" ]; then prefix=$w take=; fi
      case $w in -p) take=1 ;; -p?*) prefix=${w#-p} ;; esac
    done
    [ -n "$prefix" ] || prefix=$("$@" -V 2>&1 9<&- | tr ' ' '\n' | sed -n 's/^--prefix=//p' | head -n 1)
    pidfile=${prefix:-/usr/local/nginx}/$pidfile
    ;;
  esac
  master=
  { read -r master <"$pidfile"; } 2>/dev/null
  case $master in '' | *[!0-9]*) master_why="no pid in $pidfile (is nginx running?)"; return 1 ;; esac
  if [ ! -d "/proc/$master" ]; then
    master_why="nginx's master (pid $master, from $pidfile) is not running, or its processes are hidden from $(id -un)"
    return 1
  fi
}

# The master's worker processes now, those shutting down after an earlier
# reload included (they still hold requests): its children as the kernel
# lists them, else every process whose parent it is.
list_workers() {
  found= kids=
  if [ -r "/proc/$master/task/$master/children" ]; then
    { read -r kids || :; } <"/proc/$master/task/$master/children"
  else
    for d in /proc/[0-9]*; do
      { read -r st <"$d/stat"; } 2>/dev/null || continue
      r=${st##*\) } && r=${r#* }
      [ "${r%% *}" = "$master" ] && kids="$kids ${d#/proc/}"
    done
  fi
  for p in $kids; do
    grep -qa '^nginx: worker process' "/proc/$p/cmdline" 2>/dev/null && found="$found $p"
  done
  echo "${found# }"
}

# 0: PID is a worker of $master taking requests; 1: it is shutting down;
# 2: it is gone.
worker_state() {
  { read -r st <"/proc/$1/stat"; } 2>/dev/null || return 2
  r=${st##*\) }
  case $r in Z* | X*) return 2 ;; esac
  r=${r#* }
  [ "${r%% *}" = "$master" ] || return 2
  grep -qa 'shutting down' "/proc/$1/cmdline" 2>/dev/null && return 1
  return 0
}

# Waits until every PID is shutting down or gone (taken) or gone (gone),
# until DEADLINE (ms of uptime); leaves the others in $left.
wait_workers() {
  mode=$1 deadline=$2
  shift 2
  while :; do
    left=
    for p in "$@"; do
      worker_state "$p"
      s=$?
      if [ "$s" -eq 0 ] || { [ "$s" -eq 1 ] && [ "$mode" = gone ]; }; then left="$left $p"; fi
    done
    left=${left# }
    [ -z "$left" ] && return 0
    [ "$(now_ms)" -lt "$deadline" ] || return 1
    sleep 0.05
  done
}

probe_once() {
  case $probe in
  unix) [ -S "$probe_at" ] ;;
  tcp)
    if command -v bash >/dev/null 2>&1 && command -v timeout >/dev/null 2>&1; then
      timeout 2 bash -c ': <>"/dev/tcp/$0/$1"' "$probe_at" "$probe_port" 2>/dev/null
    elif command -v nc >/dev/null 2>&1; then
      nc -z -w 2 "$probe_at" "$probe_port" 2>/dev/null
    else
      return 9
    fi
    ;;
  *) return 9 ;;
  esac
}

if [ "$op" = read ] || [ "$op" = check ]; then
  if [ "$op" = check ]; then
    err=$(mktemp) || fail 2 "cannot create a temporary file on $(here)"
    if ! dump=$("$@" -T 2>"$err" 9<&-); then
      msg=$(grep -v 'test failed' "$err" | tail -n 5)
      rm -f "$err"
      fail 4 "\`$* -T\` failed on $(here): $msg"
    fi
    rm -f "$err"
    loaded=no
    set -f
    old_ifs=$IFS
    IFS='
'
    for f in $(printf '%s\n' "$dump" | sed -n 's/^# configuration file \(.*\):$/\1/p'); do
      if [ "$f" -ef "$file" ]; then loaded=yes; fi
      printf 'conf\t%s\n' "$f"
    done
    IFS=$old_ifs
    set +f
    printf 'loaded\t%s\n' "$loaded"
    if [ -w "$file" ]; then printf 'writable\tyes\n'; else printf 'writable\tno\t%s\n' "$(id -un)"; fi
    if find_master "$@"; then
      printf 'master\t%s\n' "$master"
      printf 'workers\t%s\n' "$(list_workers)"
    else
      printf 'master\t\t%s\n' "$master_why"
    fi
  fi
  exec 9<"$file"
  flock -s -w "$lock_s" 9 || fail 8 "another change to $file on $(here) held its lock for ${lock_s}s"
  printf -- '--- upstream file\n'
  cat "$file"
  exit 0
fi

[ -w "$file" ] || fail 3 "$file on $(here) is not writable by $(id -un); shipit edits it (give that user write access to the file)"
start=$(now_ms)
if [ "$op" = up ] && [ "$probe" != none ]; then
  deadline=$((start + wait_ms))
  until probe_once; do
    if [ $? -eq 9 ]; then printf 'probe\tskipped\tneither bash nor nc is installed on %s\n' "$(here)"; break; fi
    [ "$(now_ms)" -lt "$deadline" ] || fail 7 "$server does not accept connections from $(here) after $((wait_ms / 1000))s; it was not put back"
    sleep 0.2
  done
fi

tmp=$(mktemp) && bak=$(mktemp) && err=$(mktemp) || fail 2 "cannot create temporary files on $(here)"
trap 'rm -f "$tmp" "$bak" "$err"' EXIT
exec 9<"$file"
flock -w "$lock_s" 9 || fail 8 "another change to $file on $(here) held its lock for ${lock_s}s"
cat "$file" >"$bak" || fail 3 "cannot read $file on $(here)"
want=$op server=$server awk '
  BEGIN { want = ENVIRON["want"]; server = ENVIRON["server"]; n = 0 }
  {
    semi = index($0, ";")
    head = semi ? substr($0, 1, semi - 1) : $0
    k = split(head, w, " ")
    if (semi && k >= 2 && w[1] == "server" && w[2] == server) {
      n++
      match(head, /^[ \t]*/)
      out = substr(head, 1, RLENGTH) "server " server
      for (i = 3; i <= k; i++) if (w[i] != "down") out = out " " w[i]
      if (want == "down") out = out " down"
      print out substr($0, semi)
      next
    }
    print
  }
  END { exit n == 1 ? 0 : (n == 0 ? 3 : 4) }
' "$bak" >"$tmp"
case $? in
0) ;;
3) fail 3 "$file on $(here) has no line \`server $server ...;\`; nothing was changed" ;;
4) fail 3 "$file on $(here) lists server $server more than once; nothing was changed" ;;
*) fail 2 "awk failed on $(here); nothing was changed" ;;
esac
restore() { cat "$bak" >"$file"; }
cat "$tmp" >"$file" || { restore; fail 3 "cannot write $file on $(here); it is as it was"; }
if ! dump=$("$@" -T 2>"$err" 9<&-); then
  restore
  fail 4 "\`$* -T\` (the configuration test) refused the change, so $file is as it was: $(grep -v 'test failed' "$err" | tail -n 5)"
fi
if ! find_master "$@"; then
  restore
  fail 9 "cannot watch nginx's workers: $master_why; $file is as it was"
fi
before=$(list_workers)
if [ -z "$before" ]; then
  restore
  fail 9 "nginx's master (pid $master) has no process titled \`nginx: worker process\`; shipit watches them to know when requests are done; $file is as it was"
fi
reload_at=$(now_ms)
if ! "$@" -s reload 2>"$err" 9<&-; then
  restore
  fail 5 "\`$* -s reload\` failed, so $file is as it was: $(tail -n 5 "$err")"
fi
# shellcheck disable=SC2086
if ! wait_workers taken $((reload_at + reload_ms)) $before; then
  restore
  "$@" -s reload >/dev/null 2>&1 9<&-
  fail 6 "nginx did not apply the change within $((reload_ms / 1000))s: workers $left from before the reload still take requests (see nginx's error log); $file is as it was"
fi
exec 9<&-
printf 'reloaded\t%s\t%s\n' "$(($(now_ms) - reload_at))" "$before"
[ "$op" = up ] && exit 0
# shellcheck disable=SC2086
if wait_workers gone $((reload_at + wait_ms)) $before; then
  printf 'drained\t%s\n' "$(($(now_ms) - reload_at))"
else
  printf 'left\t%s\t%s\n' "$(($(now_ms) - reload_at))" "$left"
fi
"#;

/// What the script is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Check,
    Down,
    Up,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Check => "check",
            Op::Down => "down",
            Op::Up => "up",
        }
    }
}

/// The script for `op` on `server` (an address; empty for read/check).
/// `wait`: the drain's wait for old workers, or the enable's wait for the
/// server to accept connections.
pub fn command(
    op: Op,
    file: &str,
    server: &str,
    wait: Duration,
    probe: Option<&Probe>,
    nginx: &[String],
) -> Cmd {
    let [kind, at, port] = probe.map_or_else(
        || ["none".into(), String::new(), String::new()],
        Probe::args,
    );
    let mut args = vec![
        op.as_str().to_string(),
        file.to_string(),
        server.to_string(),
        wait.as_millis().to_string(),
        RELOAD_WAIT.as_millis().to_string(),
        LOCK_WAIT.as_secs().to_string(),
        kind,
        at,
        port,
    ];
    args.extend(nginx.iter().cloned());
    Cmd::script("nginx-upstream", SCRIPT, args)
}

/// How long the script may run before shipit gives up on it.
pub fn time_limit(wait: Duration) -> Duration {
    wait + LOCK_WAIT + RELOAD_WAIT + Duration::from_secs(30)
}

/// The line between the answer's fields and the file.
const FILE_MARK: &str = "--- upstream file";

/// What the script printed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answer {
    /// `key → values` of the tagged lines (`conf` may repeat: every value
    /// is kept, in order, under `conf`).
    pub fields: BTreeMap<String, Vec<String>>,
    pub confs: Vec<String>,
    /// The upstream file, for read and check.
    pub file: Option<String>,
}

impl Answer {
    pub fn parse(stdout: &str) -> Answer {
        let mut answer = Answer::default();
        let (head, file) = match stdout.split_once(&format!("{FILE_MARK}\n")) {
            Some((head, file)) => (head, Some(file.to_string())),
            None => (stdout, None),
        };
        answer.file = file;
        for line in head.lines() {
            let mut parts = line.split('\t');
            let key = parts.next().unwrap_or_default().to_string();
            let values: Vec<String> = parts.map(str::to_string).collect();
            if key == "conf" {
                answer.confs.extend(values);
            } else if !key.is_empty() {
                answer.fields.insert(key, values);
            }
        }
        answer
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .get(key)
            .and_then(|v| v.first())
            .map(String::as_str)
    }

    /// The `n`th value of `key`.
    pub fn nth(&self, key: &str, n: usize) -> Option<&str> {
        self.fields
            .get(key)
            .and_then(|v| v.get(n))
            .map(String::as_str)
    }

    pub fn has(&self, key: &str) -> bool {
        self.fields.contains_key(key)
    }

    /// A millisecond count of `key` as a duration.
    pub fn millis(&self, key: &str) -> Option<Duration> {
        self.get(key)?.parse().ok().map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests;
