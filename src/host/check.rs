//! What `shipit STAGE check` asks a host beyond the probe: can `deploy_to`
//! be written (or created), and is the program `app.restart` starts there.
//! Pure: the script is `Layout::check`; this picks its input and parses its
//! output.

use super::lock::HeldLock;
use super::{Current, HostFacts, Layout};
use crate::shell::valid_env_name;

/// The program a command line starts, as far as its first word tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Program {
    /// An absolute path.
    File(String),
    /// A path inside the release (relative, or under `deploy_to/current/`):
    /// checked in the release `current` points to.
    InRelease(String),
    /// A bare name, looked up on the PATH of the shell that will run it.
    Command(String),
    /// Shell syntax, a variable, unbalanced quotes…: not checked.
    Unclear,
}

impl Program {
    /// Classifies the first word of `line` (after `NAME=value` assignments).
    /// `deploy_to` turns `/srv/app/current/bin/x` into a path in the release.
    pub fn of(line: &str, deploy_to: &str) -> Program {
        let Some(words) = shlex::split(line) else {
            return Program::Unclear;
        };
        let Some(word) = words.into_iter().find(|w| !is_assignment(w)) else {
            return Program::Unclear;
        };
        if word.is_empty()
            || word.contains([
                '$', '`', ';', '|', '&', '<', '>', '(', ')', '{', '}', '*', '?', '[', ']', '~',
                '\\', '\n',
            ])
        {
            return Program::Unclear;
        }
        let current = format!("{deploy_to}/current/");
        if let Some(rest) = word.strip_prefix(&current) {
            return Program::InRelease(rest.to_string());
        }
        if word.starts_with('/') {
            Program::File(word)
        } else if word.contains('/') {
            Program::InRelease(word.trim_start_matches("./").to_string())
        } else {
            Program::Command(word)
        }
    }

    /// The script's two arguments: kind and path.
    pub fn args(&self) -> [String; 2] {
        let (kind, path) = match self {
            Program::File(p) => ("file", p.as_str()),
            Program::InRelease(p) => ("release", p.as_str()),
            Program::Command(p) => ("command", p.as_str()),
            Program::Unclear => ("none", ""),
        };
        [kind.to_string(), path.to_string()]
    }
}

fn is_assignment(word: &str) -> bool {
    word.split_once('=')
        .is_some_and(|(name, _)| valid_env_name(name))
}

/// What the check script found on one host.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Readiness {
    pub deploy_to: DeployTo,
    pub restart: Found,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DeployTo {
    #[default]
    Writable,
    ReadOnly,
    NotADirectory,
    /// Missing; its nearest existing ancestor (named) is a writable directory.
    Creatable(String),
    /// Missing, and the nearest existing ancestor (named) cannot take it.
    NotCreatable(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Found {
    /// Nothing to look for.
    #[default]
    NotChecked,
    /// There (for a command: where the shell finds it).
    Yes(String),
    Missing,
    NotExecutable,
    /// A path in the release, on a host without a current release.
    NoCurrent,
}

impl Readiness {
    pub fn parse(output: &str) -> Result<Readiness, String> {
        let mut out = Readiness::default();
        let mut saw_deploy_to = false;
        for line in output.lines() {
            let fields: Vec<&str> = line.split('\t').collect();
            match fields.as_slice() {
                ["deploy_to", state, rest @ ..] => {
                    saw_deploy_to = true;
                    let at = rest.join("\t");
                    out.deploy_to = match *state {
                        "writable" => DeployTo::Writable,
                        "read-only" => DeployTo::ReadOnly,
                        "not-a-directory" => DeployTo::NotADirectory,
                        "creatable" => DeployTo::Creatable(at),
                        "not-creatable" => DeployTo::NotCreatable(at),
                        _ => return Err(format!("unexpected check output line: {line:?}")),
                    };
                }
                ["restart", state, rest @ ..] => {
                    out.restart = match *state {
                        "found" => Found::Yes(rest.join("\t")),
                        "missing" => Found::Missing,
                        "not-executable" => Found::NotExecutable,
                        "no-current" => Found::NoCurrent,
                        _ => return Err(format!("unexpected check output line: {line:?}")),
                    };
                }
                _ => return Err(format!("unexpected check output line: {line:?}")),
            }
        }
        if saw_deploy_to {
            Ok(out)
        } else {
            Err("the check script reported nothing".into())
        }
    }
}

/// One cell of the check table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// Ok as far as it could be judged; the reason says what was not, so
    /// it is shown like a problem, yet never fails the check.
    OkNoted,
    Fail,
    /// Not applicable or not checkable; never fails the check.
    Skip,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok | Status::OkNoted => "ok",
            Status::Fail => "FAIL",
            Status::Skip => "skip",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub status: Status,
    pub reason: String,
}

impl Verdict {
    pub fn ok(reason: impl Into<String>) -> Verdict {
        Verdict {
            status: Status::Ok,
            reason: reason.into(),
        }
    }
    pub fn ok_noted(reason: impl Into<String>) -> Verdict {
        Verdict {
            status: Status::OkNoted,
            reason: reason.into(),
        }
    }
    pub fn fail(reason: impl Into<String>) -> Verdict {
        Verdict {
            status: Status::Fail,
            reason: reason.into(),
        }
    }
    pub fn skip(reason: impl Into<String>) -> Verdict {
        Verdict {
            status: Status::Skip,
            reason: reason.into(),
        }
    }
}

/// Can a deploy write its releases, and switch `current`?
pub fn deploy_to(layout: &Layout, found: &DeployTo, facts: &HostFacts) -> Verdict {
    let d = layout.deploy_to();
    if facts.current == Current::NotALink {
        return Verdict::fail(format!(
            "{} is a real directory, not a symlink; move it away (shipit will not delete it)",
            layout.current()
        ));
    }
    match found {
        DeployTo::Writable if matches!(facts.current, Current::Elsewhere { .. }) => {
            Verdict::ok_noted(format!(
                "{d} is writable; {}: until a deploy switches it, cleanup leaves this host alone \
                 and rollback needs --to",
                facts.current.describe()
            ))
        }
        DeployTo::Writable => Verdict::ok(format!("{d} is writable")),
        DeployTo::ReadOnly => Verdict::fail(format!(
            "{d} is not writable by the SSH user; fix its owner or permissions"
        )),
        DeployTo::NotADirectory => Verdict::fail(format!("{d} exists but is not a directory")),
        DeployTo::Creatable(at) => Verdict::ok(format!(
            "{d} does not exist yet; the first deploy creates it ({at} is writable)"
        )),
        DeployTo::NotCreatable(at) => Verdict::fail(format!(
            "{d} does not exist and cannot be created: {at} is not a writable directory"
        )),
    }
}

/// Are the shared files a deploy links in already there?
pub fn shared_files(layout: &Layout, shared_files: &[String], facts: &HostFacts) -> Verdict {
    if shared_files.is_empty() {
        return Verdict::skip("no app.shared_files");
    }
    if facts.missing_shared.is_empty() {
        return Verdict::ok(format!("all {} present", shared_files.len()));
    }
    Verdict::fail(format!(
        "missing in {}: {}; create them on the host (shipit never creates shared files)",
        layout.shared(),
        facts.missing_shared.join(", ")
    ))
}

/// Is the program `app.restart` starts there? Best effort: its first word.
/// `found` is what the host has; for a program inside the release, `next`
/// is what the local `app.source` directory (which the next release is made
/// from) has, when that can be known: the deploy runs the next release's
/// copy, so the live release's copy alone must not fail the check.
pub fn restart(
    layout: &Layout,
    program: Option<&Program>,
    found: &Found,
    next: Option<&Found>,
) -> Verdict {
    let Some(program) = program else {
        return Verdict::skip("no app.restart");
    };
    let name = match program {
        Program::Unclear => {
            return Verdict::skip("app.restart does not start with a plain command; not checked");
        }
        Program::File(p) => p.clone(),
        Program::InRelease(p) => format!("{}/{p}", layout.current()),
        Program::Command(p) => format!("`{p}`"),
    };
    let live = match found {
        Found::Yes(path) => return Verdict::ok(format!("{path} found")),
        Found::Missing => match program {
            Program::Command(_) => {
                return Verdict::fail(format!("{name} is not on the PATH of the SSH user's shell"));
            }
            _ => "does not exist",
        },
        Found::NotExecutable => "is not an executable file",
        Found::NoCurrent => "",
        Found::NotChecked => return Verdict::skip("not checked"),
    };
    match (found, next) {
        (Found::NoCurrent, None) => Verdict::skip(format!(
            "{name} is in the release, and no release is current yet"
        )),
        (Found::NoCurrent, Some(Found::Yes(source))) => Verdict::ok(format!(
            "{source} found in app.source, from which the first release is made"
        )),
        (_, Some(Found::Yes(source))) => Verdict::ok_noted(format!(
            "{name} {live} in the live release, but {source} in app.source, from which the next release \
             is made, is fine"
        )),
        (_, Some(Found::Missing)) if *found == Found::NoCurrent => Verdict::fail(format!(
            "{name} would not exist: it is not in app.source, from which the first release is made"
        )),
        (_, Some(Found::NotExecutable)) if *found == Found::NoCurrent => Verdict::fail(format!(
            "{name} would not be executable: it is not executable in app.source, from which the first \
             release is made"
        )),
        (_, Some(_)) => Verdict::fail(format!(
            "{name} {live}, and app.source, from which the next release is made, has no executable copy either"
        )),
        (_, None) => Verdict::fail(format!("{name} {live}")),
    }
}

/// Would a deploy get the lock now?
pub fn lock(stage: &str, facts: &HostFacts, stale: impl Fn(&HeldLock) -> bool) -> Verdict {
    use super::lock::LockKind;
    let Some(held) = &facts.lock else {
        return Verdict::ok("free");
    };
    let what = held.describe();
    if held
        .info
        .as_ref()
        .is_some_and(|i| i.kind == LockKind::Manual)
    {
        Verdict::fail(format!(
            "{what}; deploys are held until `shipit {stage} unlock`"
        ))
    } else if stale(held) {
        Verdict::fail(format!(
            "stale: {what}; a deploy with --break-stale-lock takes it over"
        ))
    } else {
        Verdict::fail(format!("held: {what}; a deploy now would wait or exit 6"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_by_their_first_word() {
        let d = "/srv/shop";
        assert_eq!(
            Program::of("/srv/shop/current/bin/restart --hard", d),
            Program::InRelease("bin/restart".into())
        );
        assert_eq!(
            Program::of("'/usr/local/bin/my tool' x", d),
            Program::File("/usr/local/bin/my tool".into())
        );
        assert_eq!(
            Program::of("RAILS_ENV=production ./bin/puma-restart", d),
            Program::InRelease("bin/puma-restart".into())
        );
        assert_eq!(
            Program::of("sudo systemctl restart shop", d),
            Program::Command("sudo".into())
        );
        for unclear in [
            "$HOME/bin/restart",
            "(cd x && y)",
            "a;b",
            "'unbalanced",
            "",
            "X=1",
            "~/bin/x",
        ] {
            assert_eq!(Program::of(unclear, d), Program::Unclear, "{unclear}");
        }
    }

    #[test]
    fn parses_the_check_script() {
        let r = Readiness::parse("deploy_to\tcreatable\t/srv\nrestart\tfound\t/usr/bin/sudo\n")
            .unwrap();
        assert_eq!(r.deploy_to, DeployTo::Creatable("/srv".into()));
        assert_eq!(r.restart, Found::Yes("/usr/bin/sudo".into()));
        let r = Readiness::parse("deploy_to\tread-only\n").unwrap();
        assert_eq!(
            (r.deploy_to, r.restart),
            (DeployTo::ReadOnly, Found::NotChecked)
        );
        assert!(Readiness::parse("").is_err());
        assert!(Readiness::parse("deploy_to\tmaybe\n").is_err());
    }

    #[test]
    fn verdicts() {
        let layout = Layout::new("/srv/shop");
        let fresh = HostFacts::default();
        assert_eq!(
            deploy_to(&layout, &DeployTo::Creatable("/srv".into()), &fresh).status,
            Status::Ok
        );
        assert_eq!(
            deploy_to(&layout, &DeployTo::ReadOnly, &fresh),
            Verdict::fail(
                "/srv/shop is not writable by the SSH user; fix its owner or permissions"
            )
        );
        let odd = HostFacts {
            current: Current::NotALink,
            ..HostFacts::default()
        };
        assert!(
            deploy_to(&layout, &DeployTo::Writable, &odd)
                .reason
                .contains("/srv/shop/current is a real directory")
        );

        let by_hand = HostFacts {
            current: Current::Elsewhere {
                link: "/opt/hotfix".into(),
                leads_to: Some("/opt/hotfix".into()),
            },
            ..HostFacts::default()
        };
        assert_eq!(
            deploy_to(&layout, &DeployTo::Writable, &by_hand),
            Verdict::ok_noted(
                "/srv/shop is writable; current -> /opt/hotfix, which is not a release in releases/: \
                 until a deploy switches it, cleanup leaves this host alone and rollback needs --to"
            )
        );

        let missing = HostFacts {
            missing_shared: vec![".env".into()],
            ..HostFacts::default()
        };
        assert_eq!(shared_files(&layout, &[], &missing).status, Status::Skip);
        assert_eq!(
            shared_files(&layout, &[".env".into(), "k".into()], &missing),
            Verdict::fail(
                "missing in /srv/shop/shared: .env; create them on the host (shipit never creates shared files)"
            )
        );
        assert_eq!(
            shared_files(&layout, &["k".into()], &fresh),
            Verdict::ok("all 1 present")
        );

        let bin = Program::InRelease("bin/restart".into());
        assert_eq!(
            restart(&layout, Some(&bin), &Found::Missing, None),
            Verdict::fail("/srv/shop/current/bin/restart does not exist")
        );
        assert_eq!(
            restart(&layout, Some(&bin), &Found::NoCurrent, None).status,
            Status::Skip
        );
        assert_eq!(
            restart(
                &layout,
                Some(&Program::Command("pm2".into())),
                &Found::Missing,
                None
            ),
            Verdict::fail("`pm2` is not on the PATH of the SSH user's shell")
        );
        assert_eq!(
            restart(&layout, None, &Found::NotChecked, None).status,
            Status::Skip
        );
        assert_eq!(
            restart(&layout, Some(&Program::Unclear), &Found::NotChecked, None).status,
            Status::Skip
        );

        assert_eq!(lock("production", &fresh, |_| false), Verdict::ok("free"));
        let locked = HostFacts::parse(
            "/srv/shop",
            "deploy_to writable\nlock-run\tr1\nlock-age\t3\nlock-info\t\n",
        )
        .unwrap();
        assert!(
            lock("production", &locked, |_| false)
                .reason
                .starts_with("held: run r1")
        );
        assert!(
            lock("production", &locked, |_| true)
                .reason
                .starts_with("stale: run r1")
        );
    }

    #[test]
    fn restart_inside_the_release_is_judged_on_the_release_to_come() {
        let layout = Layout::new("/srv/shop");
        let bin = Program::InRelease("bin/restart".into());
        let next = |f: Found| Some(f);
        let src = || Found::Yes("/p/dist/bin/restart".into());
        // The live release lacks it (an older layout), the next has it.
        assert_eq!(
            restart(&layout, Some(&bin), &Found::Missing, next(src()).as_ref()),
            Verdict::ok_noted(
                "/srv/shop/current/bin/restart does not exist in the live release, but /p/dist/bin/restart \
                 in app.source, from which the next release is made, is fine"
            )
        );
        assert_eq!(
            restart(
                &layout,
                Some(&bin),
                &Found::NotExecutable,
                next(Found::NotExecutable).as_ref()
            ),
            Verdict::fail(
                "/srv/shop/current/bin/restart is not an executable file, and app.source, from which the next \
                 release is made, has no executable copy either"
            )
        );
        // First deploy: judged on the source alone.
        assert_eq!(
            restart(&layout, Some(&bin), &Found::NoCurrent, next(src()).as_ref()),
            Verdict::ok(
                "/p/dist/bin/restart found in app.source, from which the first release is made"
            )
        );
        assert_eq!(
            restart(
                &layout,
                Some(&bin),
                &Found::NoCurrent,
                next(Found::Missing).as_ref()
            )
            .status,
            Status::Fail
        );
        // Found on the host: ok, whatever the source says.
        assert_eq!(
            restart(
                &layout,
                Some(&bin),
                &Found::Yes("/srv/shop/current/bin/restart".into()),
                next(Found::Missing).as_ref()
            ),
            Verdict::ok("/srv/shop/current/bin/restart found")
        );
    }
}
