//! `[hooks]`: commands run at fixed points of a deploy or rollback. A
//! stage's list replaces the shared list of the same name.

use super::super::{Hook, Hooks, RunOn};
use super::{At, StageCheck, pick};

impl StageCheck<'_> {
    pub(super) fn hooks(&mut self) -> Option<Hooks> {
        let mut ok = true;
        let hooks = Hooks {
            before_deploy: self.hook_list(pick!(self, hooks, before_deploy), RunOn::Local, &mut ok),
            after_upload: self.hook_list(pick!(self, hooks, after_upload), RunOn::Hosts, &mut ok),
            before_switch: self.hook_list(pick!(self, hooks, before_switch), RunOn::Hosts, &mut ok),
            after_switch: self.hook_list(pick!(self, hooks, after_switch), RunOn::Hosts, &mut ok),
            after_deploy: self.hook_list(pick!(self, hooks, after_deploy), RunOn::Local, &mut ok),
            after_rollback: self.hook_list(
                pick!(self, hooks, after_rollback),
                RunOn::Local,
                &mut ok,
            ),
            on_failure: self.hook_list(pick!(self, hooks, on_failure), RunOn::Local, &mut ok),
        };
        ok.then_some(hooks)
    }

    /// One list: each entry a command string or `{ run, run_on }`; `default`
    /// is where a hook of this list runs unless it says otherwise.
    fn hook_list(
        &mut self,
        list: Option<At<Vec<toml::Value>>>,
        default: RunOn,
        ok: &mut bool,
    ) -> Vec<Hook> {
        let Some(At {
            value: entries,
            key: prefix,
        }) = list
        else {
            return Vec::new();
        };
        let mut hooks = Vec::new();
        for (i, entry) in entries.into_iter().enumerate() {
            let key = format!("{prefix}[{i}]");
            let (run, run_on) = match entry {
                toml::Value::String(run) => (run, default),
                toml::Value::Table(mut table) => {
                    let run_on = match table.remove("run_on") {
                        None => Some(default),
                        Some(toml::Value::String(s)) => match s.as_str() {
                            "local" => Some(RunOn::Local),
                            "hosts" => Some(RunOn::Hosts),
                            "once" => Some(RunOn::Once),
                            _ => self.fail(&key, format!("run_on = {s:?} is not allowed; use \"local\", \"hosts\" or \"once\"")),
                        },
                        Some(other) => self.fail(&key, format!("run_on = {other} is not a string")),
                    };
                    let run = match table.remove("run") {
                        Some(toml::Value::String(run)) => Some(run),
                        _ => self.fail(&key, "needs run = \"command\""),
                    };
                    if let Some(extra) = table.keys().next() {
                        self.fail::<()>(
                            &key,
                            format!("unknown key `{extra}`; a hook has `run` and `run_on`"),
                        );
                        *ok = false;
                        continue;
                    }
                    match (run, run_on) {
                        (Some(run), Some(run_on)) => (run, run_on),
                        _ => {
                            *ok = false;
                            continue;
                        }
                    }
                }
                other => {
                    self.fail::<()>(&key, format!("{other} is not allowed; use a command string or {{ run = \"...\", run_on = \"hosts\" }}"));
                    *ok = false;
                    continue;
                }
            };
            match self.template(Some(At { value: run, key })) {
                Some(Some(run)) => hooks.push(Hook { run, run_on }),
                _ => *ok = false,
            }
        }
        hooks
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::RunOn;
    use super::super::testing::*;

    #[test]
    fn bad_values_and_their_messages() {
        assert_messages(&[
            (
                "[hooks]\nafter_upload = [{ run = \"x\", run_on = \"all\" }]",
                "/p/deploy.toml: hooks.after_upload[0]: run_on = \"all\" is not allowed; use \"local\", \"hosts\" or \"once\"",
            ),
            (
                "[hooks]\nbefore_deploy = [{ run = \"x\", when = \"always\" }]",
                "/p/deploy.toml: hooks.before_deploy[0]: unknown key `when`; a hook has `run` and `run_on`",
            ),
            (
                "[hooks]\nbefore_switch = [\"notify {hots}\"]",
                "/p/deploy.toml: hooks.before_switch[0]: unknown placeholder {hots}; allowed: {app}, {name}, {address}, {port}, {user}, {stage}, {deploy_to}, {release}, {revision} (write {{ and }} for literal braces)",
            ),
        ]);
    }

    #[test]
    fn hooks_take_strings_or_tables_and_stages_replace_lists() {
        let config = check(
            "[hooks]\nbefore_deploy = [\"make check\"]\nafter_upload = [{ run = \"bin/migrate\", run_on = \"once\" }]\n\
             [stages.production.hooks]\nbefore_deploy = [\"echo prod\", \"echo two\"]\n",
        )
        .unwrap();
        let hooks = &config.stages["production"].hooks;
        assert_eq!(hooks.before_deploy.len(), 2);
        assert_eq!(hooks.before_deploy[0].run_on, RunOn::Local);
        assert_eq!(hooks.after_upload[0].run_on, RunOn::Once);
        assert!(hooks.after_switch.is_empty());
    }
}
