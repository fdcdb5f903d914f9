//! The starter deploy.toml that `shipit init` writes: short, commented, and
//! valid as written (a test loads it with the real loader). The full
//! reference stays deploy.toml.example; the starter points to it.

use std::path::Path;

/// What `init` could tell about the project from its directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guess {
    /// `app.name`: the directory's name, made valid.
    pub app: String,
    /// A build output directory that exists, relative to the project.
    pub source: Option<String>,
    /// A build command suggested by the project's files (written commented out).
    pub build: Option<&'static str>,
}

/// Build output directories looked for, in this order.
pub const SOURCE_DIRS: [&str; 4] = ["dist", "build", "public", "target/release"];

/// The source `init` writes when it finds none of `SOURCE_DIRS`.
pub const PLACEHOLDER_SOURCE: &str = "dist";

impl Guess {
    /// Looks at `dir` (the directory deploy.toml will be in).
    pub fn from_dir(dir: &Path) -> Guess {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let source = SOURCE_DIRS
            .iter()
            .find(|d| dir.join(d).is_dir())
            .map(|d| (*d).to_string());
        let build = [
            ("package.json", "npm ci && npm run build"),
            ("Cargo.toml", "cargo build --release"),
            ("Makefile", "make"),
        ]
        .into_iter()
        .find(|(file, _)| dir.join(file).is_file())
        .map(|(_, command)| command);
        Guess {
            app: app_name(&name),
            source,
            build,
        }
    }
}

/// `name` made into a valid `app.name`: letters, digits, `.`, `-`, `_`,
/// not starting with `.` or `-`; `app` if nothing is left.
pub fn app_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let cleaned = cleaned.trim_start_matches(['.', '-']).trim_end_matches('-');
    if cleaned.is_empty() {
        "app".to_string()
    } else {
        cleaned.to_string()
    }
}

/// A TOML string literal.
fn string(value: &str) -> String {
    toml::Value::String(value.to_string()).to_string()
}

/// The starter file for `guess`.
pub fn render(guess: &Guess) -> String {
    let app = &guess.app;
    let source = match &guess.source {
        Some(dir) => format!("source = {}   # found {dir}/ here", string(dir)),
        None => format!(
            "# TODO: no build output found (looked for {}/); point this at yours.\nsource = {}",
            SOURCE_DIRS.join("/, "),
            string(PLACEHOLDER_SOURCE)
        ),
    };
    let build = match guess.build {
        Some(command) => format!("# build = {}", string(command)),
        None => "# build = \"make dist\"".to_string(),
    };
    format!(
        r#"# deploy.toml for {app}, written by `shipit init`.
#
# A starter: fill in the TODOs, then try it without changing anything:
#   shipit production check             # can every host be deployed to?
#   shipit production deploy --dry-run  # the exact plan
# Every key, with its default, is in deploy.toml.example in shipit's
# repository; docs/configuration.md explains them.

[app]
name = {name}
# Absolute path on every host: releases/, current and shared/ live there.
deploy_to = {deploy_to}
# What to ship: a local directory (packed by shipit) or a .tar.gz/.tgz file.
# Relative paths are relative to this file.
{source}
# Local command run here before packing.
{build}
# Finished releases kept per host (current and previous are never deleted).
keep_releases = 5
# Run on each host after `current` is switched, in the new release's
# directory. Without it nothing is restarted.
# restart = "sudo systemctl restart {app}"
# Paths kept across releases in deploy_to/shared/ and linked into each one.
# Shared files must already exist on every host.
# shared_dirs = ["log"]
# shared_files = [".env"]

[ssh]
# Remote user. Default: ~/.ssh/config's User for the host, else yours.
# user = "deploy"

[rollout]
# Hosts changed at once: a number, or a share such as "25%".
rolling_batch_size = 1
# When a host fails: "rollback" (every switched host goes back), "pause", "continue".
on_failure = "rollback"

# Polled from this machine after each restart; a host is done once its new
# release answers. Strongly recommended.
# [health]
# url = "http://{{address}}:8080/health"
# expect_body = "{{release}}"

# Take each host out of the load balancer while it restarts. shipit speaks
# HAProxy's admin socket itself (docs/load-balancers.md); for anything else
# set driver = "command" with drain/enable commands (recipes/ has examples).
# [lb]
# driver = "haproxy"
# socket = "/run/haproxy/admin.sock"
# backend = "app"

[stages.production]
# TODO: your hosts. `name` is shown in output and used by --hosts; `address`
# is what you would type after `ssh` (defaults to the name); `roles` are
# what --roles selects by. Optional per host: port, user.
hosts = [
  {{ name = "web1", address = "web1.example.com", roles = ["web"] }},
]
"#,
        name = string(app),
        deploy_to = string(&format!("/srv/{app}")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_names_from_directories() {
        assert_eq!(app_name("shop"), "shop");
        assert_eq!(app_name("My Shop (v2)"), "My-Shop--v2");
        assert_eq!(app_name(".hidden"), "hidden");
        assert_eq!(app_name("ünï"), "n");
        assert_eq!(app_name("ü ï"), "app");
        assert_eq!(app_name(""), "app");
    }

    #[test]
    fn guesses_from_the_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("web shop");
        std::fs::create_dir_all(dir.join("public")).unwrap();
        std::fs::create_dir_all(dir.join("target/release")).unwrap();
        std::fs::write(dir.join("Cargo.toml"), "").unwrap();
        assert_eq!(
            Guess::from_dir(&dir),
            Guess {
                app: "web-shop".into(),
                source: Some("public".into()),
                build: Some("cargo build --release"),
            }
        );
        std::fs::create_dir(dir.join("dist")).unwrap();
        assert_eq!(Guess::from_dir(&dir).source.as_deref(), Some("dist"));
        let empty = tmp.path().join("x");
        std::fs::create_dir(&empty).unwrap();
        assert_eq!(
            Guess::from_dir(&empty),
            Guess {
                app: "x".into(),
                source: None,
                build: None
            }
        );
    }

    /// Whatever init guesses, the loader accepts what it writes.
    #[test]
    fn the_starter_loads_and_validates() {
        let guesses = [
            Guess {
                app: "shop".into(),
                source: Some("target/release".into()),
                build: Some("cargo build --release"),
            },
            Guess {
                app: "My-Shop--v2".into(),
                source: None,
                build: None,
            },
        ];
        for guess in guesses {
            let text = render(&guess);
            let config = crate::config::from_str(Path::new("/p/deploy.toml"), &text)
                .unwrap_or_else(|e| panic!("{e}\n{text}"));
            let stage = &config.stages["production"];
            assert_eq!(stage.app.name, guess.app);
            assert_eq!(stage.app.deploy_to, format!("/srv/{}", guess.app));
            let source = guess.source.as_deref().unwrap_or(PLACEHOLDER_SOURCE);
            assert_eq!(
                stage.app.source,
                crate::config::Source::Directory(Path::new("/p").join(source))
            );
            assert_eq!(stage.hosts[0].name, "web1");
            assert_eq!(stage.hosts[0].roles, ["web"]);
            assert!(text.contains("deploy.toml.example"));
        }
    }

    /// The commented-out sections are valid too, once uncommented.
    #[test]
    fn the_commented_keys_are_valid_when_uncommented() {
        let text = render(&Guess {
            app: "shop".into(),
            source: None,
            build: Some("make"),
        });
        let uncommented: String = text
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest)
                    if rest.starts_with('[')
                        || rest.split_once(" = ").is_some_and(|(k, _)| {
                            k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                        }) =>
                {
                    rest
                }
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let config = crate::config::from_str(Path::new("/p/deploy.toml"), &uncommented)
            .unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
        let stage = &config.stages["production"];
        assert!(stage.health.is_some() && stage.lb.as_ref().is_some_and(|d| d.name() == "haproxy"));
        assert_eq!(stage.app.build.as_deref(), Some("make"));
        assert_eq!(stage.app.shared_files, [".env"]);
        assert_eq!(stage.ssh.user.as_deref(), Some("deploy"));
    }
}
