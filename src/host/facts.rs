//! What the read-only probe (`Layout::probe`) found on one host. Plans are
//! built from these facts, never from guesses, and a dry run (which does not
//! connect) simply has none.

use super::ReleaseId;
use super::journal::{self, RunTrace};
use super::lock::{self, HeldLock};

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostFacts {
    /// `deploy_to` exists on the host.
    pub deploy_to_exists: bool,
    pub deploy_to_writable: bool,
    pub current: Current,
    /// Every release directory with a valid name, oldest first.
    pub releases: Vec<ReleaseInfo>,
    /// Names in `releases/` that are not shipit release ids; left alone.
    pub foreign: Vec<String>,
    /// `shared_files` that do not exist in `shared/`.
    pub missing_shared: Vec<String>,
    /// The deploy lock, if someone holds it.
    pub lock: Option<HeldLock>,
    /// The last run recorded in the host's journal.
    pub last_run: Option<RunTrace>,
}

/// Where `current` leads, as the host resolved it: by inode, not by the
/// link's text, so `releases/<id>` (relative), links to links, `..` and a
/// symlinked `deploy_to` all count as the release they lead to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Current {
    /// No `current` yet: a host that was never deployed to.
    #[default]
    Missing,
    /// `current` leads to `releases/<id>`.
    Release(ReleaseId),
    /// A symlink that does not lead to a release directory: somewhere
    /// outside `releases/`, into a release's subdirectory, or nowhere.
    /// Nothing can be known about what such a host runs, so cleanup leaves
    /// it alone and rollback needs `--to`.
    Elsewhere {
        /// The link's text.
        link: String,
        /// The physical path it leads to; `None` when it dangles.
        leads_to: Option<String>,
    },
    /// `current` exists but is not a symlink; shipit refuses to touch it.
    NotALink,
}

impl Current {
    pub fn release(&self) -> Option<&ReleaseId> {
        match self {
            Current::Release(id) => Some(id),
            _ => None,
        }
    }

    /// For messages about a `current` that is not a release: `current ->
    /// /opt/app, which is not a release in releases/`.
    pub fn describe(&self) -> String {
        match self {
            Current::Missing => "there is no current".into(),
            Current::Release(id) => format!("current is release {id}"),
            Current::Elsewhere {
                link,
                leads_to: Some(path),
            } if path == link => format!("current -> {link}, which is not a release in releases/"),
            Current::Elsewhere {
                link,
                leads_to: Some(path),
            } => format!("current -> {link}, which leads to {path}, not to a release in releases/"),
            Current::Elsewhere {
                link,
                leads_to: None,
            } => format!("current -> {link}, which leads nowhere"),
            Current::NotALink => "current is a real directory, not a symlink".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseInfo {
    pub id: ReleaseId,
    pub finished: bool,
    pub bad: bool,
    pub revision: String,
}

impl HostFacts {
    pub fn release(&self, id: &ReleaseId) -> Option<&ReleaseInfo> {
        self.releases.iter().find(|r| &r.id == id)
    }

    /// Parses the probe's output for a host whose `deploy_to` is `deploy_to`.
    pub fn parse(deploy_to: &str, output: &str) -> Result<HostFacts, String> {
        let mut facts = HostFacts::default();
        let releases_dir = format!("{deploy_to}/releases/");
        let mut lock_lines = Vec::new();
        let mut journal = Vec::new();
        let mut lines = output.lines();
        for line in lines.by_ref() {
            if line == "journal follows" {
                break;
            }
            if line.contains('\0') {
                return Err(format!(
                    "unexpected NUL byte in the probe's output: {line:?}"
                ));
            }
            let fields: Vec<&str> = line.split('\t').collect();
            match fields.as_slice() {
                ["deploy_to missing"] => {}
                ["deploy_to writable"] => {
                    facts.deploy_to_exists = true;
                    facts.deploy_to_writable = true;
                }
                ["deploy_to read-only"] => facts.deploy_to_exists = true,
                ["current not-a-link"] => facts.current = Current::NotALink,
                ["current", "release", name] => {
                    facts.current = match name.parse::<ReleaseId>() {
                        Ok(id) => Current::Release(id),
                        // A directory in releases/ that shipit did not make.
                        Err(_) => Current::Elsewhere {
                            link: format!("{releases_dir}{name}"),
                            leads_to: Some(format!("{releases_dir}{name}")),
                        },
                    };
                }
                ["current", "elsewhere", link, path] => {
                    facts.current = Current::Elsewhere {
                        link: link.to_string(),
                        // It exists; the host may just lack a way to resolve it.
                        leads_to: Some(if path.is_empty() { link } else { path }.to_string()),
                    };
                }
                ["current", "dangling", link] => {
                    facts.current = Current::Elsewhere {
                        link: link.to_string(),
                        leads_to: None,
                    };
                }
                ["release", name, state, bad, revision @ ..] => match name.parse::<ReleaseId>() {
                    Ok(id) => facts.releases.push(ReleaseInfo {
                        id,
                        finished: *state == "finished",
                        bad: *bad == "bad",
                        revision: revision.join("\t"),
                    }),
                    Err(_) => facts.foreign.push(name.to_string()),
                },
                ["missing-shared", path] => facts.missing_shared.push(path.to_string()),
                ["lock-run" | "lock-age" | "lock-info", ..] => lock_lines.push(line),
                _ => return Err(format!("unexpected probe output line: {line:?}")),
            }
        }
        for line in lines {
            // A torn last line (host died mid-write) is skipped.
            if let Some(entry) = journal::Entry::parse(line)? {
                journal.push(entry);
            }
        }
        if !lock_lines.is_empty() {
            facts.lock = Some(lock::parse_held(lock_lines.into_iter())?);
        }
        facts.last_run = journal::last_run(&journal);
        facts.releases.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(facts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_probe() {
        let out = "deploy_to writable\ncurrent\trelease\t20261122101500\n\
                   release\t20261122101500\tfinished\tgood\tabc\n\
                   release\t20261121000000\tfinished\tbad\t\n\
                   release\told-stuff\tfinished\tgood\t\n\
                   release\t20261123000000\tunfinished\tgood\t\n\
                   missing-shared\t.env\n";
        let facts = HostFacts::parse("/srv/a b", out).unwrap();
        assert!(facts.deploy_to_exists && facts.deploy_to_writable);
        assert_eq!(
            facts.current,
            Current::Release("20261122101500".parse().unwrap())
        );
        let ids: Vec<&str> = facts.releases.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["20261121000000", "20261122101500", "20261123000000"]);
        assert!(facts.releases[0].bad);
        assert!(!facts.releases[2].finished);
        assert_eq!(facts.releases[1].revision, "abc");
        assert_eq!(facts.foreign, ["old-stuff"]);
        assert_eq!(facts.missing_shared, [".env"]);
        assert!(facts.lock.is_none() && facts.last_run.is_none());
    }

    #[test]
    fn lock_and_journal() {
        let out = "deploy_to writable\nlock-run\tr9\nlock-age\t12\nlock-info\t\n\
                   journal follows\n\
                   {\"run\":\"r9\",\"time\":\"t\",\"op\":\"deploy\",\"release\":\"20261122101500\",\"event\":\"started\"}\n\
                   {\"run\":\"r9\",\"ti\n";
        let facts = HostFacts::parse("/srv/a", out).unwrap();
        let lock = facts.lock.unwrap();
        assert_eq!(
            (lock.run.as_str(), lock.age_secs, lock.info),
            ("r9", 12, None)
        );
        let run = facts.last_run.unwrap();
        assert_eq!((run.run.as_str(), run.events.len()), ("r9", 1));
    }

    /// What the probe reads from files on the host reaches later commands
    /// (a rollback's SHIPIT_REVISION, the lock's run id): a NUL byte in it,
    /// or a journal entry no shipit wrote, fails the probe of that host.
    #[test]
    fn values_no_command_could_carry_fail_the_probe() {
        let err = HostFacts::parse(
            "/srv/a",
            "deploy_to writable\nrelease\t20261122101500\tfinished\tgood\tab\0c\n",
        )
        .unwrap_err();
        assert_eq!(
            err,
            "unexpected NUL byte in the probe's output: \"release\\t20261122101500\\tfinished\\tgood\\tab\\0c\""
        );
        let err = HostFacts::parse(
            "/srv/a",
            "deploy_to writable\njournal follows\n\
             {\"run\":\"r\\u0000\",\"time\":\"t\",\"op\":\"deploy\",\"release\":\"20261122101500\",\"event\":\"started\"}\n",
        )
        .unwrap_err();
        assert!(
            err.starts_with("deploy_to/.shipit/journal: the run id"),
            "{err}"
        );
    }

    #[test]
    fn current_pointing_elsewhere() {
        let parse = |line: &str| {
            HostFacts::parse("/srv/a", &format!("deploy_to writable\n{line}\n"))
                .unwrap()
                .current
        };
        let outside = parse("current\telsewhere\t../manual\t/opt/manual");
        assert_eq!(
            outside,
            Current::Elsewhere {
                link: "../manual".into(),
                leads_to: Some("/opt/manual".into())
            }
        );
        assert_eq!(
            outside.describe(),
            "current -> ../manual, which leads to /opt/manual, not to a release in releases/"
        );
        assert_eq!(outside.release(), None);
        let dangling = parse("current\tdangling\treleases/20200101000000");
        assert_eq!(
            dangling.describe(),
            "current -> releases/20200101000000, which leads nowhere"
        );
        // A directory in releases/ that is not a shipit release.
        assert_eq!(
            parse("current\trelease\told-stuff").describe(),
            "current -> /srv/a/releases/old-stuff, which is not a release in releases/"
        );
        let facts =
            HostFacts::parse("/srv/a", "deploy_to missing\nmissing-shared\t.env\n").unwrap();
        assert!(!facts.deploy_to_exists);
        assert_eq!(facts.missing_shared, [".env"]);
        assert!(HostFacts::parse("/srv/a", "garbage\n").is_err());
        assert!(HostFacts::parse("/srv/a", "current\t/srv/a/releases/x\n").is_err());
    }
}
