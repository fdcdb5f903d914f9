//! Which reporters a command gets, from the flags and the environment:
//!
//! - stderr is a terminal, `TERM` is set and not `dumb`, `CI` is not set:
//!   progress bars ([`super::progress`]); colours unless `NO_COLOR` is set;
//! - otherwise plain timestamped lines ([`super::plain`]), with GitHub
//!   Actions groups and annotations when `GITHUB_ACTIONS=true`;
//! - `--json` adds JSON lines on stdout; the human output above stays on
//!   stderr.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::sync::Arc;

use super::json::Json;
use super::plain::{Plain, Verbosity};
use super::progress::Progress;
use super::{Reporter, Tee};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Human {
    Progress { colors: bool },
    Plain { github: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    pub human: Human,
    pub json: bool,
    pub verbosity: Verbosity,
}

/// The choice for this process: its stderr and its environment.
pub fn detect(json: bool, verbosity: Verbosity) -> Choice {
    decide(json, verbosity, std::io::stderr().is_terminal(), &|name| {
        std::env::var_os(name)
    })
}

/// The choice for a stderr that is (or is not) a terminal and the
/// environment variables `env` returns.
pub fn decide(
    json: bool,
    verbosity: Verbosity,
    stderr_is_terminal: bool,
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Choice {
    let set = |name: &str| env(name).is_some_and(|v| !v.is_empty());
    // `CI=false` and `CI=0` are how people switch CI mode off locally.
    let ci = env("CI").is_some_and(|v| {
        let v = v.to_string_lossy().to_ascii_lowercase();
        !v.is_empty() && v != "0" && v != "false"
    });
    let dumb = env("TERM").is_none_or(|t| t.is_empty() || t == "dumb");
    let human = if stderr_is_terminal && !ci && !dumb {
        Human::Progress {
            colors: !set("NO_COLOR"),
        }
    } else {
        Human::Plain {
            github: env("GITHUB_ACTIONS").is_some_and(|v| v == "true"),
        }
    };
    Choice {
        human,
        json,
        verbosity,
    }
}

/// Builds the reporters: the human one on stderr, then JSON on stdout.
pub fn build(choice: Choice) -> Arc<dyn Reporter> {
    let human: Box<dyn Reporter> = match choice.human {
        Human::Progress { colors } => Box::new(Progress::stderr(choice.verbosity, colors)),
        Human::Plain { github } => {
            Box::new(Plain::new(std::io::stderr(), choice.verbosity).github(github))
        }
    };
    if choice.json {
        Arc::new(Tee(vec![Box::new(Json::new(std::io::stdout())), human]))
    } else {
        Arc::from(human)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn choose(tty: bool, vars: &[(&str, &str)]) -> Human {
        let env = |name: &str| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| OsString::from(v))
        };
        decide(false, Verbosity::Normal, tty, &env).human
    }

    #[test]
    fn bars_only_on_an_attended_terminal() {
        let term = ("TERM", "xterm-256color");
        assert_eq!(choose(true, &[term]), Human::Progress { colors: true });
        assert_eq!(
            choose(true, &[term, ("NO_COLOR", "1")]),
            Human::Progress { colors: false }
        );
        // An empty NO_COLOR does not count (no-color.org).
        assert_eq!(
            choose(true, &[term, ("NO_COLOR", "")]),
            Human::Progress { colors: true }
        );
        assert_eq!(
            choose(true, &[term, ("CI", "false")]),
            Human::Progress { colors: true }
        );
        for vars in [
            &[term, ("CI", "true")][..],
            &[term, ("CI", "1")][..],
            &[("TERM", "dumb")][..],
            &[][..],
        ] {
            assert_eq!(
                choose(true, vars),
                Human::Plain { github: false },
                "{vars:?}"
            );
        }
        assert_eq!(choose(false, &[term]), Human::Plain { github: false });
    }

    #[test]
    fn github_actions_gets_groups() {
        assert_eq!(
            choose(false, &[("CI", "true"), ("GITHUB_ACTIONS", "true")]),
            Human::Plain { github: true }
        );
        // A terminal in a GitHub runner (tmate, say) gets bars all the same
        // when CI is switched off.
        assert_eq!(
            choose(true, &[("TERM", "xterm"), ("GITHUB_ACTIONS", "true")]),
            Human::Progress { colors: true }
        );
    }
}
