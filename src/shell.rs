//! Commands as data. Every command shipit runs, locally or on a host, is a
//! [`Cmd`] value: a program with arguments, extra environment and a working
//! directory. It becomes a shell line only in [`Cmd::render`], and every value
//! is quoted by [`quote`], the one quoting function in the code base.
//!
//! Secrets are ordinary [`Word`]s marked secret: they reach the host verbatim
//! but [`Cmd::display`] (logs, `--dry-run`, JSON events) shows `[REDACTED]`.

use std::borrow::Cow;
use std::fmt;

/// Quotes `value` for a POSIX shell so it is passed as exactly one word.
///
/// Values that need no quoting are returned as they are, so plans stay
/// readable. A NUL byte cannot be passed through any shell; configuration
/// validation rejects it before a command is ever built.
pub fn quote(value: &str) -> Cow<'_, str> {
    if value.is_empty() {
        return Cow::Borrowed("''");
    }
    match shlex::try_quote(value) {
        Ok(quoted) => quoted,
        // Only NUL bytes fail; refuse them loudly rather than corrupt a command.
        Err(_) => panic!("value with a NUL byte reached the shell layer: {value:?}"),
    }
}

/// One argument or environment value. `Debug` redacts secrets too, so
/// they cannot leak through a `{:?}` in a log or a panic message.
#[derive(Clone, PartialEq, Eq, serde::Serialize)]
#[serde(untagged)]
pub enum Word {
    Plain(String),
    #[serde(serialize_with = "redacted")]
    Secret(String),
}

fn redacted<S: serde::Serializer>(_: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(REDACTED)
}

/// What a secret looks like in anything a person or a log can read.
pub const REDACTED: &str = "[REDACTED]";

impl fmt::Debug for Word {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Word::Plain(v) => f.debug_tuple("Plain").field(v).finish(),
            Word::Secret(_) => f.debug_tuple("Secret").field(&REDACTED).finish(),
        }
    }
}

impl Word {
    pub fn value(&self) -> &str {
        match self {
            Word::Plain(v) | Word::Secret(v) => v,
        }
    }

    fn shown(&self) -> Cow<'_, str> {
        match self {
            Word::Plain(v) => quote(v),
            Word::Secret(_) => Cow::Borrowed(REDACTED),
        }
    }
}

impl From<&str> for Word {
    fn from(value: &str) -> Self {
        Word::Plain(value.to_string())
    }
}

impl From<String> for Word {
    fn from(value: String) -> Self {
        Word::Plain(value)
    }
}

impl From<&String> for Word {
    fn from(value: &String) -> Self {
        Word::Plain(value.clone())
    }
}

/// Every command in turn, each whether or not the ones before succeeded,
/// in one line (one round trip): fails if any failed. For bookkeeping that
/// belongs to one moment but not to one outcome.
pub fn each(cmds: &[Cmd]) -> String {
    let mut line = String::from("rc=0;");
    for cmd in cmds {
        line.push_str(&format!(" ( {} ) || rc=$?;", cmd.render()));
    }
    line.push_str(" [ \"$rc\" = 0 ]");
    line
}

/// `first`, then `cmd` whatever became of `first`, in one line: the
/// status is `cmd`'s. For bookkeeping that must not hold back what follows.
pub fn after(first: &Cmd, cmd: &Cmd) -> String {
    format!("( {} ); {}", first.render(), cmd.render())
}

/// A command: `cd CWD && NAME=VALUE... PROGRAM ARGS...`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Cmd {
    /// Shown instead of the script text for shipit's own scripts, which
    /// are long and always the same (`--dry-run -v` shows them whole).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<&'static str>,
    pub argv: Vec<Word>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<(String, Word)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Run after this one if it succeeds (`A && B`), in the same shell: one
    /// round trip for what belongs together, such as a step and its journal
    /// entry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub then: Option<Box<Cmd>>,
}

impl Cmd {
    pub fn new<I, W>(argv: I) -> Self
    where
        I: IntoIterator<Item = W>,
        W: Into<Word>,
    {
        Cmd {
            label: None,
            argv: argv.into_iter().map(Into::into).collect(),
            env: Vec::new(),
            cwd: None,
            then: None,
        }
    }

    /// A command line written by the user (restart, build, hooks). It runs as
    /// one `sh -c` word, so `;`, `&&` and redirections in it behave as the
    /// user wrote them, and shipit's own prefixes apply to all of it.
    pub fn shell(line: impl Into<String>) -> Self {
        Cmd::new(["sh".to_string(), "-c".to_string(), line.into()])
    }

    /// One of shipit's own scripts (a constant text) with positional
    /// arguments `$1`, `$2`…: values never get pasted into script text.
    /// `label` names it in logs: `shipit:switch '/srv/shop' 2026…`.
    pub fn script<I, W>(label: &'static str, text: &str, args: I) -> Self
    where
        I: IntoIterator<Item = W>,
        W: Into<Word>,
    {
        // `$0` carries the label, so `ps` on a host shows which step runs.
        let mut argv: Vec<Word> = vec![
            "sh".into(),
            "-c".into(),
            text.into(),
            format!("shipit:{label}").into(),
        ];
        argv.extend(args.into_iter().map(Into::into));
        Cmd {
            label: Some(label),
            argv,
            env: Vec::new(),
            cwd: None,
            then: None,
        }
    }

    pub fn env(mut self, name: impl Into<String>, value: impl Into<Word>) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    pub fn envs(mut self, vars: impl IntoIterator<Item = (String, Word)>) -> Self {
        self.env.extend(vars);
        self
    }

    /// `self && next`; chains append at the end.
    pub fn then(mut self, next: Cmd) -> Self {
        self.then = Some(Box::new(match self.then.take() {
            Some(rest) => rest.then(next),
            None => next,
        }));
        self
    }

    pub fn cwd(mut self, dir: impl Into<String>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// The exact line handed to the shell. A chained command runs in a
    /// subshell so that this one's `cd` and environment stay its own.
    pub fn render(&self) -> String {
        let line = self.join(|w| quote(w.value()));
        match &self.then {
            Some(next) => format!("( {line} ) && {}", next.render()),
            None => line,
        }
    }

    /// The line as shown to people: secrets redacted, shipit's own scripts
    /// shown by label so logs stay one line per command.
    pub fn display(&self) -> String {
        match self.label {
            Some(label) => {
                let args: Vec<Cow<'_, str>> = self.argv.iter().skip(4).map(Word::shown).collect();
                format!("shipit:{label} {}", args.join(" "))
                    .trim_end()
                    .to_string()
            }
            None => self.join(Word::shown),
        }
    }

    /// Like [`Cmd::display`] but with script texts in full.
    pub fn display_full(&self) -> String {
        self.join(Word::shown)
    }

    /// True if any word is a secret; such commands should travel over stdin
    /// rather than the command line, where `ps` on the host would show them.
    pub fn has_secrets(&self) -> bool {
        !self.secrets().is_empty()
    }

    /// The values of the secret words, chained commands included, for
    /// masking them in output.
    pub fn secrets(&self) -> Vec<&str> {
        let mut found: Vec<&str> = self
            .argv
            .iter()
            .chain(self.env.iter().map(|(_, v)| v))
            .filter_map(|w| match w {
                Word::Secret(v) => Some(v.as_str()),
                Word::Plain(_) => None,
            })
            .collect();
        if let Some(next) = &self.then {
            found.extend(next.secrets());
        }
        found
    }

    fn join<'a>(&'a self, word: impl Fn(&'a Word) -> Cow<'a, str>) -> String {
        let mut parts: Vec<Cow<'a, str>> = Vec::new();
        if let Some(dir) = &self.cwd {
            parts.push(Cow::Borrowed("cd"));
            parts.push(quote(dir));
            parts.push(Cow::Borrowed("&&"));
        }
        for (name, value) in &self.env {
            parts.push(Cow::Owned(format!("{name}={}", word(value))));
        }
        parts.extend(self.argv.iter().map(word));
        parts.join(" ")
    }
}

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display())
    }
}

/// True if `name` may be used as an environment variable name.
pub fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Runs `line` in a real `sh` and returns what `printf '%s\n' "$@"`-style
    /// programs received, proving the quoting round-trips.
    fn sh(line: &str) -> String {
        let out = Command::new("sh").arg("-c").arg(line).output().unwrap();
        assert!(out.status.success(), "{line}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn quoting_round_trips_hostile_values() {
        let values = [
            "plain",
            "with space",
            "it's",
            "\"double\"",
            "$(touch /tmp/shipit-pwned)",
            "`id`",
            "a;b&&c|d",
            "line\nbreak",
            "tab\there",
            "ünïcødé ✓",
            "*?[glob]",
            "~user",
            "-n",
            "",
            "back\\slash",
            "$HOME ${PATH}",
        ];
        for value in values {
            let cmd = Cmd::new(["printf", "%s|", value]);
            assert_eq!(sh(&cmd.render()), format!("{value}|"), "{value:?}");
        }
        assert!(!std::path::Path::new("/tmp/shipit-pwned").exists());
    }

    #[test]
    fn env_cwd_and_scripts_are_quoted_too() {
        let dir = tempfile::tempdir().unwrap();
        let odd = dir.path().join("a dir; with $(stuff)");
        std::fs::create_dir(&odd).unwrap();
        let cmd = Cmd::script(
            "t",
            r#"printf '%s|%s|%s' "$1" "$X" "$(basename "$PWD")""#,
            ["$1 'x'"],
        )
        .env("X", "v a l")
        .cwd(odd.to_str().unwrap());
        assert_eq!(sh(&cmd.render()), "$1 'x'|v a l|a dir; with $(stuff)");
    }

    #[test]
    fn scripts_display_by_label() {
        let cmd = Cmd::script("switch", "long\nscript", ["/srv/my app", "1"]);
        assert_eq!(cmd.display(), "shipit:switch '/srv/my app' 1");
        assert!(cmd.display_full().contains("long"));
    }

    #[test]
    fn chained_commands_keep_their_own_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_str().unwrap();
        let cmd = Cmd::shell("pwd")
            .cwd(dir)
            .then(Cmd::new(["printf", "%s|", "after"]));
        assert_eq!(sh(&cmd.render()), format!("{dir}\nafter|"));
        let failing = Cmd::shell("exit 3").then(Cmd::new(["echo", "never"]));
        let out = Command::new("sh")
            .arg("-c")
            .arg(failing.render())
            .output()
            .unwrap();
        assert_eq!((out.status.code(), out.stdout.is_empty()), (Some(3), true));
    }

    #[test]
    fn user_lines_run_as_written() {
        let cmd = Cmd::shell("echo one; echo two | tr a-z A-Z").env("Y", "1");
        assert_eq!(sh(&cmd.render()), "one\nTWO\n");
    }

    #[test]
    fn secrets_are_redacted_in_display_only() {
        let cmd = Cmd::shell("echo \"$TOKEN\"").env("TOKEN", Word::Secret("s3cr3t v".into()));
        assert_eq!(sh(&cmd.render()), "s3cr3t v\n");
        assert!(!cmd.display().contains("s3cr3t"));
        assert!(cmd.display().contains("TOKEN=[REDACTED]"));
        assert!(cmd.has_secrets());
        let json = serde_json::to_string(&cmd).unwrap();
        assert!(!json.contains("s3cr3t"), "{json}");
        assert!(!format!("{cmd:?}").contains("s3cr3t"));
        assert_eq!(cmd.secrets(), ["s3cr3t v"]);
    }

    #[test]
    fn env_names() {
        assert!(valid_env_name("RAILS_ENV"));
        assert!(valid_env_name("_x1"));
        assert!(!valid_env_name("1X"));
        assert!(!valid_env_name("A-B"));
        assert!(!valid_env_name(""));
    }

    /// Runs `line` in a real `sh`: its stdout and whether it succeeded.
    fn status(line: &str) -> (String, bool) {
        let out = Command::new("sh").arg("-c").arg(line).output().unwrap();
        (String::from_utf8(out.stdout).unwrap(), out.status.success())
    }

    #[test]
    fn each_runs_every_command_and_fails_if_any_failed() {
        let say = |w: &str| Cmd::new(["echo", w]);
        let fail = Cmd::shell("echo no; exit 3");
        assert_eq!(
            status(&each(&[say("a"), say("b")])),
            ("a\nb\n".into(), true)
        );
        assert_eq!(
            status(&each(&[fail.clone(), say("b")])),
            ("no\nb\n".into(), false)
        );
        assert_eq!(status(&each(&[say("a"), fail])), ("a\nno\n".into(), false));
    }

    #[test]
    fn after_runs_the_command_whatever_became_of_the_first() {
        let fail = Cmd::shell("echo no; exit 3");
        let then = Cmd::new(["echo", "it's on"]).cwd("/");
        assert_eq!(status(&after(&fail, &then)), ("no\nit's on\n".into(), true));
        assert_eq!(
            status(&after(&Cmd::new(["true"]), &Cmd::shell("exit 4"))),
            (String::new(), false)
        );
    }
}
