//! `[app]`: what is shipped, where it goes, and how it restarts.

use super::super::{App, Source};
use super::{At, StageCheck, is_name, pick};

pub const DEFAULT_KEEP_RELEASES: usize = 5;
/// Long enough for a slow stop-then-start; a restart that takes longer
/// is almost always a command that never returns.
pub const DEFAULT_RESTART_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5 * 60);

impl StageCheck<'_> {
    pub(super) fn app(&mut self) -> Option<App> {
        let name = match pick!(self, app, name) {
            Some(At { value, key }) if !is_name(&value) || value.starts_with(['.', '-']) => self
                .fail(
                    &key,
                    format!(
                        "{value:?}: use letters, digits, `.`, `-` and `_` (it names locks and logs)"
                    ),
                ),
            Some(at) => Some(at.value),
            None => self.missing("app", "name", ", e.g. name = \"shop\""),
        };
        let deploy_to = match pick!(self, app, deploy_to) {
            Some(at) => self.remote_dir(at),
            None => self.missing("app", "deploy_to", ", e.g. deploy_to = \"/srv/shop\""),
        };
        let source = match pick!(self, app, source) {
            Some(at) if at.value.trim().is_empty() => self.fail(&at.key, "must not be empty"),
            Some(at) => {
                let path = self.local_path(&at.value);
                let lower = at.value.to_ascii_lowercase();
                Some(if lower.ends_with(".tar.gz") || lower.ends_with(".tgz") {
                    Source::Archive(path)
                } else {
                    Source::Directory(path)
                })
            }
            None => self.missing(
                "app",
                "source",
                ": a directory to pack, or a .tar.gz/.tgz file",
            ),
        };
        let build = self.command_line(pick!(self, app, build));
        let revision = self.command_line(pick!(self, app, revision));
        let keep_releases = match pick!(self, app, keep_releases) {
            Some(At { value, key }) if value < 1 => self.fail(
                &key,
                format!("{value} is too small; keep at least 1 release (the current and the previous one are never deleted)"),
            ),
            Some(at) => Some(at.value as usize),
            None => Some(DEFAULT_KEEP_RELEASES),
        };
        let shared_dirs = self.relative_paths(pick!(self, app, shared_dirs));
        let shared_files = self.relative_paths(pick!(self, app, shared_files));
        if let (Some(dirs), Some(files)) = (&shared_dirs, &shared_files)
            && let Some(both) = dirs.iter().find(|d| files.contains(d))
        {
            let both = both.clone();
            self.fail::<()>(
                "app.shared_files",
                format!("{both:?} is also listed in app.shared_dirs; a shared path is either a directory or a file"),
            );
        }
        let restart = self.template(pick!(self, app, restart));
        let restart_timeout = self
            .positive_duration(pick!(self, app, restart_timeout))
            .map(|d| d.unwrap_or(DEFAULT_RESTART_TIMEOUT));
        Some(App {
            name: name?,
            deploy_to: deploy_to?,
            source: source?,
            build: build?,
            revision: revision?,
            keep_releases: keep_releases?,
            shared_dirs: shared_dirs?,
            shared_files: shared_files?,
            restart: restart?,
            restart_timeout: restart_timeout?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;

    #[test]
    fn bad_values_and_their_messages() {
        assert_messages(&[
            (
                "[stages.production.app]\ndeploy_to = \"srv/shop\"",
                "/p/deploy.toml: stages.production.app.deploy_to: \"srv/shop\" must be an absolute path on the hosts, such as /srv/shop",
            ),
            (
                "[stages.production.app]\nshared_dirs = [\"../etc\"]",
                "/p/deploy.toml: stages.production.app.shared_dirs: \"../etc\" must be a plain path relative to the release, such as \"log\" or \"config/.env\"",
            ),
            (
                "[stages.production.app]\nkeep_releases = 0",
                "/p/deploy.toml: stages.production.app.keep_releases: 0 is too small; keep at least 1 release (the current and the previous one are never deleted)",
            ),
        ]);
    }

    #[test]
    fn hostile_paths_are_accepted_verbatim() {
        let config =
            check("[stages.production.app]\ndeploy_to = \"/srv/my shop; $(rm -rf ~)/'x'\"")
                .unwrap();
        assert_eq!(
            config.stages["production"].app.deploy_to,
            "/srv/my shop; $(rm -rf ~)/'x'"
        );
    }
}
