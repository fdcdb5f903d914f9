//! Who is deploying, for locks and logs: the CI actor when running in CI,
//! else `user@machine`.

/// CI variables that name the person behind a job, most specific first.
const CI_ACTORS: &[(&str, &str)] = &[
    ("GITHUB_ACTOR", "github"),
    ("GITLAB_USER_LOGIN", "gitlab"),
    ("BUILDKITE_BUILD_CREATOR", "buildkite"),
    ("CIRCLE_USERNAME", "circleci"),
    ("BITBUCKET_STEP_TRIGGERER_UUID", "bitbucket"),
];

pub fn who() -> String {
    describe(
        |name| std::env::var(name).ok().filter(|v| !v.is_empty()),
        &machine(),
    )
}

pub fn machine() -> String {
    plain(gethostname::gethostname().to_string_lossy().into_owned())
}

fn describe(var: impl Fn(&str) -> Option<String>, machine: &str) -> String {
    for (name, ci) in CI_ACTORS {
        if let Some(actor) = var(name) {
            return plain(format!("{actor} via {ci}"));
        }
    }
    let user = var("USER")
        .or_else(|| var("LOGNAME"))
        .or_else(|| passwd_entry().map(|(name, _)| name))
        .unwrap_or_else(|| "unknown".into());
    plain(format!("{user}@{machine}"))
}

/// These values come from outside (environment, /etc/passwd, the host
/// name) and end up in commands and logs: control characters become `?`.
fn plain(text: String) -> String {
    if text.contains(char::is_control) {
        text.chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect()
    } else {
        text
    }
}

/// (name, home) of the user running this process, from /etc/passwd: for
/// when USER and HOME are not set (cron, some CI runners, containers).
pub fn passwd_entry() -> Option<(String, std::path::PathBuf)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .to_string();
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() >= 6 && fields[2] == uid)
            .then(|| (fields[0].to_string(), std::path::PathBuf::from(fields[5])))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ci_actor_first() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(describe(env(&[("USER", "ana")]), "laptop"), "ana@laptop");
        assert_eq!(
            describe(env(&[("USER", "runner"), ("GITHUB_ACTOR", "ana")]), "ci-1"),
            "ana via github"
        );
        let me = passwd_entry().map_or("unknown".to_string(), |(name, _)| name);
        assert_eq!(describe(env(&[]), "m"), format!("{me}@m"));
    }

    /// Who is deploying goes into locks, logs and the note a rollback
    /// leaves on a bad release (a command argument): control characters
    /// from the environment, /etc/passwd or the host name never get there.
    #[test]
    fn control_characters_are_replaced() {
        assert_eq!(
            describe(
                |n: &str| (n == "USER").then(|| "an\u{0}a".to_string()),
                "lap\u{1b}top"
            ),
            "an?a@lap?top"
        );
        assert_eq!(plain("ok\tnot\nok".into()), "ok?not?ok");
    }
}
