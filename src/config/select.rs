//! `--hosts` and `--roles`: which of a stage's hosts a command works on.
//!
//! The rules, as in Capistrano: a comma inside one flag is a union
//! (`--hosts web1,web2` is web1 or web2; the flag may also be repeated);
//! giving both flags is an intersection (`--hosts web1,web2 --roles db` is
//! those of web1 and web2 that have the role `db`). A name that the stage
//! does not define is a usage error listing the names it does define, and a
//! filter that leaves no host is an error too: a command never silently
//! does nothing. Hosts keep their deploy.toml order.

use std::collections::BTreeSet;

use super::{Host, Stage};

/// What `--hosts` and `--roles` asked for. Empty lists mean "no filter".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub hosts: Vec<String>,
    pub roles: Vec<String>,
}

impl Filter {
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty() && self.roles.is_empty()
    }

    /// The flags as typed, normalised: `--hosts web1,web2 --roles db`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.hosts.is_empty() {
            parts.push(format!("--hosts {}", self.hosts.join(",")));
        }
        if !self.roles.is_empty() {
            parts.push(format!("--roles {}", self.roles.join(",")));
        }
        parts.join(" ")
    }
}

/// The hosts of `stage` that `filter` selects, in deploy.toml order. The
/// error is a complete message for the user.
pub fn select(stage: &Stage, filter: &Filter) -> Result<Vec<Host>, String> {
    let hosts = clean("--hosts", &filter.hosts)?;
    let roles = clean("--roles", &filter.roles)?;

    let known_hosts: Vec<&str> = stage.hosts.iter().map(|h| h.name.as_str()).collect();
    let unknown: Vec<&str> = hosts
        .iter()
        .copied()
        .filter(|h| !known_hosts.contains(h))
        .collect();
    if !unknown.is_empty() {
        return Err(format!(
            "--hosts: stage {} has no host {}; its hosts are: {}",
            stage.name,
            unknown.join(", "),
            known_hosts.join(", ")
        ));
    }

    let known_roles: BTreeSet<&str> = stage
        .hosts
        .iter()
        .flat_map(|h| h.roles.iter().map(String::as_str))
        .collect();
    let unknown: Vec<&str> = roles
        .iter()
        .copied()
        .filter(|r| !known_roles.contains(r))
        .collect();
    if !unknown.is_empty() {
        let defined = if known_roles.is_empty() {
            format!(
                "no host of stage {} has roles; give hosts roles = [\"web\"] in deploy.toml",
                stage.name
            )
        } else {
            format!(
                "its roles are: {}",
                known_roles.into_iter().collect::<Vec<_>>().join(", ")
            )
        };
        return Err(format!(
            "--roles: stage {} has no role {}; {defined}",
            stage.name,
            unknown.join(", ")
        ));
    }

    let selected: Vec<Host> = stage
        .hosts
        .iter()
        .filter(|h| hosts.is_empty() || hosts.contains(&h.name.as_str()))
        .filter(|h| roles.is_empty() || h.roles.iter().any(|r| roles.contains(&r.as_str())))
        .cloned()
        .collect();
    if selected.is_empty() {
        // Only both flags together can get here: each alone names hosts
        // or roles that exist.
        let theirs: Vec<String> = stage
            .hosts
            .iter()
            .filter(|h| hosts.contains(&h.name.as_str()))
            .map(|h| {
                if h.roles.is_empty() {
                    format!("{} has no roles", h.name)
                } else {
                    format!("{} has {}", h.name, h.roles.join(", "))
                }
            })
            .collect();
        return Err(format!(
            "no host of stage {} matches {} (both flags must match: {})",
            stage.name,
            filter.describe(),
            theirs.join("; ")
        ));
    }
    Ok(selected)
}

/// Splits nothing (clap already split at commas) but trims, refuses empty
/// names and drops repeats.
fn clean<'a>(flag: &str, values: &'a [String]) -> Result<Vec<&'a str>, String> {
    let mut out: Vec<&str> = Vec::new();
    for value in values {
        let value = value.trim();
        if value.is_empty() {
            return Err(format!(
                "{flag}: empty name; write names separated by commas, such as {flag} web1,web2"
            ));
        }
        if !out.contains(&value) {
            out.push(value);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage() -> Stage {
        let text = r#"
[app]
name = "shop"
deploy_to = "/srv/shop"
source = "dist"
[stages.production]
hosts = [
  { name = "web1", roles = ["web"] },
  { name = "web2", roles = ["web", "db"] },
  { name = "worker1", roles = ["worker"] },
  { name = "misc" },
]
"#;
        let config = crate::config::from_str(std::path::Path::new("deploy.toml"), text)
            .unwrap_or_else(|e| panic!("{e}"));
        config.stages["production"].clone()
    }

    fn names(hosts: &str, roles: &str) -> Result<Vec<String>, String> {
        let split = |s: &str| -> Vec<String> {
            if s.is_empty() {
                Vec::new()
            } else {
                s.split(',').map(str::to_string).collect()
            }
        };
        let filter = Filter {
            hosts: split(hosts),
            roles: split(roles),
        };
        select(&stage(), &filter).map(|hs| hs.into_iter().map(|h| h.name).collect())
    }

    #[test]
    fn no_filter_is_every_host_in_order() {
        assert_eq!(names("", "").unwrap(), ["web1", "web2", "worker1", "misc"]);
    }

    #[test]
    fn commas_are_a_union_and_order_is_the_files() {
        assert_eq!(names("misc,web1", "").unwrap(), ["web1", "misc"]);
        assert_eq!(names("web1, web1", "").unwrap(), ["web1"]);
        assert_eq!(names("", "worker,db").unwrap(), ["web2", "worker1"]);
        assert_eq!(names("", "web").unwrap(), ["web1", "web2"]);
    }

    #[test]
    fn both_flags_are_an_intersection() {
        assert_eq!(names("web1,web2,worker1", "web").unwrap(), ["web1", "web2"]);
        assert_eq!(names("web1,web2", "db").unwrap(), ["web2"]);
    }

    #[test]
    fn unknown_names_are_errors_listing_the_known_ones() {
        assert_eq!(
            names("web9,web1,db1", "").unwrap_err(),
            "--hosts: stage production has no host web9, db1; its hosts are: web1, web2, worker1, misc"
        );
        assert_eq!(
            names("", "web,cache").unwrap_err(),
            "--roles: stage production has no role cache; its roles are: db, web, worker"
        );
    }

    #[test]
    fn a_filter_matching_nothing_is_an_error() {
        assert_eq!(
            names("web1,misc", "db").unwrap_err(),
            "no host of stage production matches --hosts web1,misc --roles db \
             (both flags must match: web1 has web; misc has no roles)"
        );
    }

    #[test]
    fn empty_names_are_refused() {
        assert!(
            names("web1,", "")
                .unwrap_err()
                .contains("--hosts: empty name")
        );
        assert!(names("", " ").unwrap_err().contains("--roles: empty name"));
    }

    #[test]
    fn roles_on_a_stage_without_any() {
        let stage = crate::testing::stage(2, "");
        let err = select(
            &stage,
            &Filter {
                hosts: vec![],
                roles: vec!["web".into()],
            },
        )
        .unwrap_err();
        assert_eq!(
            err,
            "--roles: stage production has no role web; no host of stage production has roles; \
             give hosts roles = [\"web\"] in deploy.toml"
        );
    }
}
