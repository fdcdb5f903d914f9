//! Reading deploy.toml: syntax and shape errors (bad TOML, unknown keys,
//! wrong types) come back with the line number and the dotted key path.

use std::path::Path;

use super::raw::RawFile;
use super::{Config, ConfigError, ConfigErrors, validate};

/// Reads, parses and validates `path`.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors::one(ConfigError {
            file: path.to_path_buf(),
            line: None,
            key: String::new(),
            message: match e.kind() {
                std::io::ErrorKind::NotFound => {
                    "file not found; pass -c FILE, or run `shipit init` to write one".to_string()
                }
                _ => format!("cannot read: {e}"),
            },
        })
    })?;
    from_str(path, &text)
}

/// Parses and validates `text` as if read from `path` (which only names
/// the file in messages and anchors relative paths).
pub fn from_str(path: &Path, text: &str) -> Result<Config, ConfigErrors> {
    let raw = parse(path, text)?;
    validate::validate(path, raw)
}

pub(super) fn parse(path: &Path, text: &str) -> Result<RawFile, ConfigErrors> {
    let error = |line: Option<usize>, key: String, message: String| {
        ConfigErrors::one(ConfigError {
            file: path.to_path_buf(),
            line,
            key,
            message,
        })
    };
    let deserializer = toml::Deserializer::parse(text).map_err(|e| {
        error(
            line_of(text, e.span()),
            String::new(),
            format!("not valid TOML: {}", e.message().trim()),
        )
    })?;
    let raw = serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        let key = if key == "." { String::new() } else { key };
        error(line_of(text, inner.span()), key, explain(inner.message()))
    })?;
    refuse_nul_bytes(path, text)?;
    Ok(raw)
}

/// TOML can spell a NUL byte (`\u0000`); no command line, path or
/// environment variable can carry one, so it is refused here, in every
/// value and key, rather than by each rule downstream.
fn refuse_nul_bytes(path: &Path, text: &str) -> Result<(), ConfigErrors> {
    fn walk(value: &toml::Value, key: String, found: &mut Vec<String>) {
        match value {
            toml::Value::String(s) if s.contains('\0') => found.push(key),
            toml::Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk(item, format!("{key}[{i}]"), found);
                }
            }
            toml::Value::Table(table) => {
                for (name, item) in table {
                    let nul = name.contains('\0');
                    let bare = !name.is_empty()
                        && name
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                    let name = if bare {
                        name.clone()
                    } else {
                        format!("{name:?}")
                    };
                    let key = if key.is_empty() {
                        name
                    } else {
                        format!("{key}.{name}")
                    };
                    if nul {
                        found.push(key);
                    } else {
                        walk(item, key, found);
                    }
                }
            }
            _ => {}
        }
    }
    let Ok(table) = text.parse::<toml::Table>() else {
        return Ok(());
    };
    let mut found = Vec::new();
    walk(&toml::Value::Table(table), String::new(), &mut found);
    if found.is_empty() {
        return Ok(());
    }
    Err(ConfigErrors(
        found
            .into_iter()
            .map(|key| ConfigError {
                file: path.to_path_buf(),
                line: None,
                key,
                message: "contains a NUL byte (\\u0000), which no command, path or variable can carry; remove it"
                    .to_string(),
            })
            .collect(),
    ))
}

/// serde's wording, made to say what to do.
fn explain(message: &str) -> String {
    let message = message.trim();
    if let Some(rest) = message.strip_prefix("unknown field ") {
        // "unknown field `urll`, expected one of `url`, `expect_status`"
        let (field, allowed) = rest.split_once(", expected").unwrap_or((rest, ""));
        let allowed = allowed
            .trim_start_matches(" one of")
            .trim_start_matches(" ")
            .trim();
        return format!("unknown key {field}; allowed here: {allowed}");
    }
    if let Some(rest) = message.strip_prefix("invalid type: ") {
        return format!("wrong type: {rest}");
    }
    message.to_string()
}

fn line_of(text: &str, span: Option<std::ops::Range<usize>>) -> Option<usize> {
    let start = span?.start.min(text.len());
    Some(text[..start].matches('\n').count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        parse(Path::new("deploy.toml"), text)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn syntax_errors_have_a_line() {
        let e = err("[app]\nname = \"x\"\nkeep_releases = = 3\n");
        assert!(e.starts_with("deploy.toml:3: not valid TOML"), "{e}");
    }

    #[test]
    fn unknown_keys_name_the_path_and_the_allowed_keys() {
        let e = err("[health]\nurl = \"http://x\"\nurll = \"y\"\n");
        assert!(
            e.starts_with("deploy.toml:3: health.urll: unknown key `urll`"),
            "{e}"
        );
        assert!(e.contains("allowed here: `url`, `expect_status`"), "{e}");

        let e = err("[stages.production]\nhost = []\n");
        assert!(
            e.contains("stages.production.host: unknown key `host`"),
            "{e}"
        );
        assert!(e.contains("`hosts`"), "{e}");
    }

    /// A NUL byte (`\u0000` in TOML) can reach no command line, file name
    /// or log: refused wherever it is, key names included, before any check
    /// that might let it through (a host's address, say).
    #[test]
    fn nul_bytes_are_refused_anywhere() {
        let e = err(
            "[stages.p]\nhosts = [ { name = \"a\", address = \"10.0.0.1\\u0000\" } ]\n[env]\n\"K\\u0000\" = \"v\"\n",
        );
        assert_eq!(
            e,
            "deploy.toml: env.\"K\\0\": contains a NUL byte (\\u0000), which no command, path or variable can carry; remove it\n\
             deploy.toml: stages.p.hosts[0].address: contains a NUL byte (\\u0000), which no command, path or variable can carry; remove it"
        );
        // TOML 1.1 spells it \x00 too.
        assert!(err("[app]\nname = \"\\x00\"\n").contains("app.name: contains a NUL byte"));
        // The escape written out as text is no NUL.
        assert!(parse(Path::new("deploy.toml"), "[app]\nname = '\\u0000'\n").is_ok());
    }

    #[test]
    fn wrong_types_name_the_path() {
        let e = err("[app]\nkeep_releases = \"five\"\n");
        assert_eq!(
            e,
            "deploy.toml:2: app.keep_releases: wrong type: string \"five\", expected i64"
        );
        let e = err("[stages.p]\nhosts = [ { name = \"a\", port = \"22\" } ]\n");
        assert!(
            e.contains("stages.p.hosts[0].port: wrong type: string \"22\""),
            "{e}"
        );
    }
}
