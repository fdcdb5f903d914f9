//! `[env]`: variables set for `restart` and for hooks run on the hosts.
//! A stage's variables are added to, and replace, the shared ones.

use super::super::{EnvValue, EnvVar};
use super::StageCheck;
use crate::shell;

impl StageCheck<'_> {
    pub(super) fn env(&mut self) -> Option<Vec<EnvVar>> {
        let merged = self.merged.env.clone().unwrap_or_default();
        let mut vars = Vec::new();
        let mut ok = true;
        for (name, value) in merged {
            // Named after the most specific table that sets it.
            let prefix = self
                .layers
                .iter()
                .find(|layer| {
                    layer
                        .settings
                        .env
                        .as_ref()
                        .is_some_and(|e| e.contains_key(&name))
                })
                .map(|layer| layer.prefix.clone())
                .unwrap_or_default();
            let key = format!("{prefix}env.{name}");
            if !shell::valid_env_name(&name) || name.starts_with("SHIPIT_") {
                self.errors.add(
                    &key,
                    "not a usable variable name: letters, digits and `_`, not starting with a digit or SHIPIT_",
                );
                ok = false;
                continue;
            }
            match self.env_value(&key, value) {
                Some((value, secret)) => vars.push(EnvVar {
                    name,
                    value,
                    secret,
                }),
                None => ok = false,
            }
        }
        ok.then_some(vars)
    }

    fn env_value(&mut self, key: &str, value: toml::Value) -> Option<(EnvValue, bool)> {
        const ALLOWED: &str = "use a string, or a table with one of value / from_env / from_file and an optional secret = true";
        match value {
            toml::Value::String(s) if s.contains('\0') => {
                self.fail(key, "must not contain NUL bytes")
            }
            toml::Value::String(s) => Some((EnvValue::Literal(s), false)),
            toml::Value::Table(mut table) => {
                let secret = match table.remove("secret") {
                    None => None,
                    Some(toml::Value::Boolean(b)) => Some(b),
                    Some(other) => {
                        return self.fail(
                            key,
                            format!("secret = {other} is not allowed; use true or false"),
                        );
                    }
                };
                let mut sources: Vec<(String, toml::Value)> = table.into_iter().collect();
                if sources.len() != 1 {
                    return self.fail(key, format!("{} sources given; {ALLOWED}", sources.len()));
                }
                let (kind, source) = sources.remove(0);
                let Some(text) = source.as_str().map(str::to_string) else {
                    return self.fail(key, format!("{kind} = {source} is not a string"));
                };
                match kind.as_str() {
                    "value" => Some((EnvValue::Literal(text), secret.unwrap_or(false))),
                    // Values from outside the file are secrets unless said otherwise.
                    "from_env" if shell::valid_env_name(&text) => {
                        Some((EnvValue::FromEnv(text), secret.unwrap_or(true)))
                    }
                    "from_env" => {
                        self.fail(key, format!("from_env = {text:?} is not a variable name"))
                    }
                    "from_file" => Some((
                        EnvValue::FromFile(self.local_path(&text)),
                        secret.unwrap_or(true),
                    )),
                    other => self.fail(key, format!("unknown key `{other}`; {ALLOWED}")),
                }
            }
            other => self.fail(key, format!("{other} is not allowed; {ALLOWED}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::{EnvValue, EnvVar};
    use super::super::testing::*;

    #[test]
    fn bad_values_and_their_messages() {
        assert_messages(&[
            (
                "[env]\n\"1BAD\" = \"x\"",
                "/p/deploy.toml: env.1BAD: not a usable variable name: letters, digits and `_`, not starting with a digit or SHIPIT_",
            ),
            (
                "[env]\nTOKEN = { value = \"a\", from_env = \"B\" }",
                "/p/deploy.toml: env.TOKEN: 2 sources given; use a string, or a table with one of value / from_env / from_file and an optional secret = true",
            ),
            (
                "[stages.production.env]\nKEY = 3",
                "/p/deploy.toml: stages.production.env.KEY: 3 is not allowed; use a string, or a table with one of value / from_env / from_file and an optional secret = true",
            ),
        ]);
    }

    #[test]
    fn env_values_and_their_secrecy() {
        let config = check(
            "[env]\nA = \"plain\"\nB = { value = \"v\", secret = true }\nC = { from_env = \"HOME\" }\n\
             D = { from_file = \"key.txt\", secret = false }\n[stages.production.env]\nA = \"override\"\n",
        )
        .unwrap();
        let env = &config.stages["production"].env;
        let get = |n: &str| env.iter().find(|v| v.name == n).unwrap().clone();
        assert_eq!(
            (get("A").value, get("A").secret),
            (EnvValue::Literal("override".into()), false)
        );
        assert!(get("B").secret);
        assert_eq!(
            (get("C").value, get("C").secret),
            (EnvValue::FromEnv("HOME".into()), true)
        );
        assert_eq!(get("D").value, EnvValue::FromFile("/p/key.txt".into()));
        assert!(!get("D").secret);
        let missing = EnvVar {
            name: "X".into(),
            value: EnvValue::FromEnv("SHIPIT_TEST_SURELY_UNSET".into()),
            secret: true,
        };
        assert_eq!(
            missing.resolve().unwrap_err(),
            "env.X: from_env = \"SHIPIT_TEST_SURELY_UNSET\" is not set in shipit's environment; export it (in CI, from the job's secrets)"
        );
    }

    /// A secret read from a file is checked as it is read, before anything
    /// is built or contacted.
    #[test]
    fn a_secret_file_with_a_nul_byte_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("key.bin");
        std::fs::write(&path, b"abc\0def\n").unwrap();
        let var = EnvVar {
            name: "KEY".into(),
            value: EnvValue::FromFile(path.clone()),
            secret: true,
        };
        assert_eq!(
            var.resolve().unwrap_err(),
            format!(
                "env.KEY: from_file {} contains a NUL byte, which no environment variable can carry",
                path.display()
            )
        );
    }
}
