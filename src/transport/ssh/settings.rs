//! Works out the effective SSH settings for one host: who to log in as,
//! where to dial, which keys to offer, which known_hosts files to trust and
//! which jump hosts to go through.
//!
//! It owns the precedence rule, in one place so it can be tested without a
//! network: per-host deploy.toml value > `[ssh]` deploy.toml value >
//! ssh_config (`Host` blocks matched against the address) > OpenSSH's
//! defaults. ssh_config is parsed with ssh2-config; what that crate does not
//! model (`IdentitiesOnly`, `UserKnownHostsFile`, `GlobalKnownHostsFile`,
//! `HostKeyAlias`, `RevokedHostKeys`, `StrictHostKeyChecking`, `%` tokens)
//! is interpreted here. `Match` blocks are refused because ssh2-config would
//! silently fold their lines into the preceding `Host`, and
//! `KnownHostsCommand` because ignoring it would hide keys OpenSSH checks.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use ssh2_config::{HostParams, ParseRule, SshConfig};

use super::known_hosts::{HostKeyDb, host_key_name};

/// `GlobalKnownHostsFile` when ssh_config does not set it (OpenSSH's default).
pub(crate) const GLOBAL_KNOWN_HOSTS: [&str; 2] =
    ["/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2"];

/// `ssh.host_key_checking` in deploy.toml (and `StrictHostKeyChecking`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HostKeyChecking {
    /// Only keys already in known_hosts are accepted (the default).
    #[default]
    Strict,
    /// Unknown hosts are recorded on first use; changed keys are still refused.
    AcceptNew,
}

/// Which ssh_config file to read (`ssh.config` in deploy.toml).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SshConfigSource {
    /// `~/.ssh/config` if it exists.
    #[default]
    Default,
    /// This file, which must exist.
    File(PathBuf),
    /// No ssh_config at all (`ssh.config = false`).
    Disabled,
}

/// Values from deploy.toml's `[ssh]` table (already validated, paths
/// absolute, `~` expanded). `None` means not set there.
#[derive(Debug, Clone, Default)]
pub struct SshOverrides {
    pub user: Option<String>,
    pub port: Option<u16>,
    pub identity_file: Option<PathBuf>,
    pub known_hosts: Option<PathBuf>,
    pub host_key_checking: Option<HostKeyChecking>,
    /// `["user@bastion:22", "hop2"]`; `["none"]` means connect directly.
    pub proxy_jump: Option<Vec<String>>,
    pub config: SshConfigSource,
}

/// One host to connect to, with its per-host values from deploy.toml.
#[derive(Debug, Clone)]
pub struct SshTarget {
    /// Inventory name, used in every message.
    pub name: String,
    /// What you would type after `ssh`: a name, an address or an ssh_config
    /// alias, optionally `user@` in front.
    pub address: String,
    pub port: Option<u16>,
    pub user: Option<String>,
}

/// What shipit takes from the machine it runs on. [`SshEnv::from_process`]
/// reads the real environment; tests build their own.
#[derive(Debug, Clone)]
pub struct SshEnv {
    /// Home directory: `~` in paths, `~/.ssh/config`, default keys.
    pub home: PathBuf,
    /// Local user name: the default remote user and `%u`.
    pub local_user: String,
    /// ssh-agent socket (`SSH_AUTH_SOCK`), if any.
    pub auth_sock: Option<PathBuf>,
    /// Passphrase for encrypted keys (`SHIPIT_SSH_PASSPHRASE`), if any.
    pub passphrase: Option<String>,
    /// Whether a passphrase may be asked for on the terminal.
    pub allow_prompt: bool,
}

impl SshEnv {
    pub fn from_process() -> SshEnv {
        let passwd = crate::who::passwd_entry();
        let local_user = non_empty_env("USER")
            .or_else(|| non_empty_env("LOGNAME"))
            .or_else(|| passwd.as_ref().map(|p| p.0.clone()))
            .unwrap_or_else(|| "root".to_string());
        let home = non_empty_env("HOME")
            .map(PathBuf::from)
            .or_else(|| passwd.map(|p| p.1))
            .unwrap_or_else(|| PathBuf::from("/"));
        SshEnv {
            home,
            local_user,
            auth_sock: non_empty_env("SSH_AUTH_SOCK").map(PathBuf::from),
            passphrase: std::env::var("SHIPIT_SSH_PASSPHRASE").ok(),
            allow_prompt: true,
        }
    }
}

fn non_empty_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Everything needed to reach and log in to one hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostSettings {
    /// How messages name this hop: the inventory name for targets, the spec
    /// as written for jump hosts.
    pub label: String,
    /// Where to dial, and the name its key is looked up under in known_hosts.
    pub host_name: String,
    pub port: u16,
    pub user: String,
    /// Key files to offer, in order (explicit ones, or the usual defaults
    /// that exist).
    pub identity_files: Vec<PathBuf>,
    pub identities_only: bool,
    /// What the host key is checked against, and under which name.
    pub host_keys: HostKeyDb,
    pub host_key_checking: HostKeyChecking,
    /// Hops to go through first, outermost first. Always empty for hops.
    pub jumps: Vec<HostSettings>,
}

impl HostSettings {
    /// `user@host:port`, unique per hop, used to share jump connections.
    pub fn endpoint(&self) -> String {
        if self.host_name.contains(':') {
            format!("{}@[{}]:{}", self.user, self.host_name, self.port)
        } else {
            format!("{}@{}:{}", self.user, self.host_name, self.port)
        }
    }
}

/// A parsed ssh_config file, or none.
#[derive(Debug, Clone, Default)]
pub(crate) struct LoadedConfig {
    config: Option<SshConfig>,
}

impl LoadedConfig {
    /// Reads the configured ssh_config. `Err` carries a message saying
    /// which file is wrong and what to do.
    pub fn load(source: &SshConfigSource, env: &SshEnv) -> Result<LoadedConfig, String> {
        let path = match source {
            SshConfigSource::Disabled => return Ok(LoadedConfig::default()),
            SshConfigSource::Default => {
                let path = env.home.join(".ssh").join("config");
                if !path.exists() {
                    return Ok(LoadedConfig::default());
                }
                path
            }
            SshConfigSource::File(path) => path.clone(),
        };
        let file = File::open(&path).map_err(|e| {
            format!(
                "cannot read ssh config {}: {e} (fix ssh.config in deploy.toml, or set ssh.config = false)",
                path.display()
            )
        })?;
        Self::parse(&mut BufReader::new(file), &path, &env.home)
    }

    /// Parses ssh_config text; `path` is only used in messages.
    pub fn parse(
        reader: &mut impl std::io::BufRead,
        path: &Path,
        home: &Path,
    ) -> Result<LoadedConfig, String> {
        let config = SshConfig::default()
            .home_dir(home)
            .parse(
                reader,
                ParseRule::ALLOW_UNKNOWN_FIELDS | ParseRule::ALLOW_UNSUPPORTED_FIELDS,
            )
            .map_err(|e| format!("cannot parse ssh config {}: {e}", path.display()))?;
        // ssh2-config does not know `Match`: it keeps the keyword as an
        // unknown field and merges the block's lines into the `Host` block
        // before it, which would apply them to the wrong hosts.
        for host in config.get_hosts() {
            if host
                .params
                .ignored_fields
                .keys()
                .any(|k| k.eq_ignore_ascii_case("match"))
            {
                let block = host
                    .pattern
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(" ");
                return Err(format!(
                    "ssh config {} uses `Match` (after `Host {block}`), which shipit cannot evaluate; \
                     move those settings into `Host` blocks, point ssh.config at a file without `Match`, \
                     or set ssh.config = false and configure the hosts in deploy.toml",
                    path.display()
                ));
            }
        }
        Ok(LoadedConfig {
            config: Some(config),
        })
    }

    fn query(&self, host: &str) -> Option<HostParams> {
        self.config.as_ref().map(|c| c.query(host))
    }
}

/// Splits `[user@]host` (also `ssh://[user@]host[:port]` and
/// `[user@]host[:port]` jump specs) into its parts. IPv6 addresses with a
/// port must be bracketed.
pub(crate) fn split_destination(
    spec: &str,
    allow_port: bool,
) -> Result<(Option<String>, String, Option<u16>), String> {
    let (rest, allow_port) = match spec.strip_prefix("ssh://") {
        Some(rest) => (rest.trim_end_matches('/'), true),
        None => (spec, allow_port),
    };
    let (user, hostport) = match rest.rsplit_once('@') {
        Some((u, h)) if !u.is_empty() => (Some(u.to_string()), h),
        Some(_) => return Err(format!("`{spec}`: empty user name before `@`")),
        None => (None, rest),
    };
    let (host, port) = if let Some(inner) = hostport.strip_prefix('[') {
        let (host, after) = inner
            .split_once(']')
            .ok_or_else(|| format!("`{spec}`: missing `]`"))?;
        match after.strip_prefix(':') {
            Some(p) if allow_port => (host.to_string(), Some(parse_port(spec, p)?)),
            None if after.is_empty() => (host.to_string(), None),
            _ => return Err(format!("`{spec}`: unexpected `{after}` after `]`")),
        }
    } else if allow_port && hostport.matches(':').count() == 1 {
        let (h, p) = hostport.split_once(':').unwrap_or((hostport, ""));
        (h.to_string(), Some(parse_port(spec, p)?))
    } else {
        (hostport.to_string(), None)
    };
    if host.is_empty() || host.chars().any(char::is_whitespace) {
        return Err(format!("`{spec}` is not a host name"));
    }
    Ok((user, host, port))
}

fn parse_port(spec: &str, port: &str) -> Result<u16, String> {
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(format!("`{spec}`: `{port}` is not a port number")),
    }
}

/// Resolves a target's settings. `Err` is a message for the operator.
pub(crate) fn resolve_target(
    target: &SshTarget,
    overrides: &SshOverrides,
    config: &LoadedConfig,
    env: &SshEnv,
) -> Result<HostSettings, String> {
    let (address_user, alias, _) = split_destination(&target.address, false)?;
    let params = config.query(&alias);
    let per_host = Layer {
        user: target.user.clone().or(address_user),
        port: target.port,
    };
    let mut settings = resolve(
        &target.name,
        &alias,
        &per_host,
        Some(overrides),
        overrides,
        params.as_ref(),
        env,
    )?;

    let jump_specs = match &overrides.proxy_jump {
        Some(list) => Some(list.clone()),
        None => params.as_ref().and_then(|p| p.proxy_jump.clone()),
    };
    let jump_specs: Vec<String> = jump_specs
        .unwrap_or_default()
        .iter()
        .flat_map(|s| s.split(','))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if !(jump_specs.len() == 1 && jump_specs[0].eq_ignore_ascii_case("none")) {
        for spec in &jump_specs {
            if spec.eq_ignore_ascii_case("none") {
                return Err("ProxyJump `none` cannot be part of a list of jump hosts".into());
            }
            settings
                .jumps
                .push(resolve_jump(spec, overrides, config, env)?);
        }
    }
    Ok(settings)
}

/// Resolves one jump host spec (`[user@]host[:port]` or an ssh_config
/// alias) through ssh_config, like `ssh -J` does. deploy.toml's `[ssh]`
/// user and port are for the targets and do not apply to jump hosts; its
/// identity file, known_hosts and host key policy do.
pub(crate) fn resolve_jump(
    spec: &str,
    overrides: &SshOverrides,
    config: &LoadedConfig,
    env: &SshEnv,
) -> Result<HostSettings, String> {
    let (user, alias, port) =
        split_destination(spec, true).map_err(|e| format!("jump host {e}"))?;
    let params = config.query(&alias);
    resolve(
        spec,
        &alias,
        &Layer { user, port },
        None,
        overrides,
        params.as_ref(),
        env,
    )
}

/// The most specific values (per-host, or from a jump spec).
struct Layer {
    user: Option<String>,
    port: Option<u16>,
}

fn resolve(
    label: &str,
    alias: &str,
    first: &Layer,
    // `[ssh]` user/port apply to targets only.
    section: Option<&SshOverrides>,
    overrides: &SshOverrides,
    params: Option<&HostParams>,
    env: &SshEnv,
) -> Result<HostSettings, String> {
    let unsupported =
        |key: &str| -> Option<&Vec<String>> { params.and_then(|p| p.unsupported_fields.get(key)) };
    let user = first
        .user
        .clone()
        .or_else(|| section.and_then(|s| s.user.clone()))
        .or_else(|| params.and_then(|p| p.user.clone()))
        .unwrap_or_else(|| env.local_user.clone());
    let port = first
        .port
        .or_else(|| section.and_then(|s| s.port))
        .or_else(|| params.and_then(|p| p.port))
        .unwrap_or(22);

    let mut tokens = Tokens {
        alias,
        host: alias,
        port,
        remote_user: &user,
        local_user: &env.local_user,
        home: &env.home,
    };
    let host_name = match params.and_then(|p| p.host_name.as_deref()) {
        Some(h) => expand_tokens(h, &tokens)?,
        None => alias.to_string(),
    };
    tokens.host = &host_name;

    // deploy.toml's proxy_jump replaces whatever ssh_config says.
    let jump_set_in_deploy_toml = section.is_some_and(|s| s.proxy_jump.is_some());
    if let Some(command) = unsupported("proxycommand")
        && !command.iter().any(|c| c.eq_ignore_ascii_case("none"))
        && !jump_set_in_deploy_toml
    {
        return Err(format!(
            "{label}: ProxyCommand in ssh config is not supported by shipit; \
             use ProxyJump (or ssh.proxy_jump in deploy.toml) instead"
        ));
    }
    let identities_only = match unsupported("identitiesonly").and_then(|v| v.first()) {
        Some(v) => parse_yes_no(v).ok_or_else(|| {
            format!("{label}: IdentitiesOnly `{v}` in ssh config is not yes or no")
        })?,
        None => false,
    };
    let identity_files = match &overrides.identity_file {
        Some(path) => vec![path.clone()],
        None => match params.and_then(|p| p.identity_file.as_ref()) {
            Some(files) => {
                let mut out = Vec::new();
                for f in files {
                    let expanded = expand_path(&f.to_string_lossy(), &tokens)?;
                    if !out.contains(&expanded) {
                        out.push(expanded);
                    }
                }
                out
            }
            None => default_identities(&env.home),
        },
    };

    if let Some(command) = unsupported("knownhostscommand")
        && !command.iter().any(|c| c.eq_ignore_ascii_case("none"))
    {
        return Err(format!(
            "{label}: KnownHostsCommand in ssh config is not supported by shipit, which would not see the \
             keys it supplies; record them in a known_hosts file instead"
        ));
    }
    let user_files = match &overrides.known_hosts {
        Some(path) => vec![path.clone()],
        None => match unsupported("userknownhostsfile") {
            Some(files) if !files.is_empty() => {
                if files.iter().any(|f| f.eq_ignore_ascii_case("none")) {
                    return Err(format!(
                        "{label}: UserKnownHostsFile none in ssh config: shipit needs a known_hosts file \
                         to check host keys against; remove it or set ssh.known_hosts in deploy.toml"
                    ));
                }
                files
                    .iter()
                    .map(|f| expand_path(f, &tokens))
                    .collect::<Result<_, _>>()?
            }
            _ => vec![
                env.home.join(".ssh").join("known_hosts"),
                env.home.join(".ssh").join("known_hosts2"),
            ],
        },
    };
    // Not replaced by ssh.known_hosts, as UserKnownHostsFile does not
    // replace it in OpenSSH: keys recorded system-wide count everywhere.
    let global_files = match unsupported("globalknownhostsfile") {
        Some(files) if files.iter().any(|f| f.eq_ignore_ascii_case("none")) => Vec::new(),
        Some(files) if !files.is_empty() => {
            files.iter().map(|f| expand_tilde(f, &env.home)).collect()
        }
        _ => GLOBAL_KNOWN_HOSTS.iter().map(PathBuf::from).collect(),
    };
    let revoked = match unsupported("revokedhostkeys").and_then(|v| v.first()) {
        Some(file) if !file.eq_ignore_ascii_case("none") => Some(expand_path(file, &tokens)?),
        _ => None,
    };
    // OpenSSH looks keys up, and records them, under the alias as written,
    // without the port.
    let name = match unsupported("hostkeyalias").and_then(|v| v.first()) {
        Some(alias) => alias.to_ascii_lowercase(),
        None => host_key_name(&host_name, port),
    };

    let host_key_checking = match overrides.host_key_checking {
        Some(mode) => mode,
        None => match unsupported("stricthostkeychecking").and_then(|v| v.first()) {
            Some(v) => parse_strict(v).map_err(|e| format!("{label}: {e}"))?,
            None => HostKeyChecking::Strict,
        },
    };

    Ok(HostSettings {
        label: label.to_string(),
        host_name,
        port,
        user,
        identity_files,
        identities_only,
        host_keys: HostKeyDb {
            name,
            user_files,
            global_files,
            revoked,
        },
        host_key_checking,
        jumps: Vec::new(),
    })
}

/// `~/.ssh/id_ed25519`, `id_ecdsa`, `id_rsa`: those that exist.
pub(crate) fn default_identities(home: &Path) -> Vec<PathBuf> {
    ["id_ed25519", "id_ecdsa", "id_rsa"]
        .iter()
        .map(|n| home.join(".ssh").join(n))
        .filter(|p| p.exists())
        .collect()
}

fn parse_yes_no(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "yes" | "true" => Some(true),
        "no" | "false" => Some(false),
        _ => None,
    }
}

fn parse_strict(v: &str) -> Result<HostKeyChecking, String> {
    match v.to_ascii_lowercase().as_str() {
        "yes" | "true" | "ask" => Ok(HostKeyChecking::Strict),
        "accept-new" => Ok(HostKeyChecking::AcceptNew),
        "no" | "off" | "false" => Err(format!(
            "StrictHostKeyChecking {v} in ssh config: shipit does not turn host key checking off; \
             use `accept-new` (or ssh.host_key_checking = \"accept-new\" in deploy.toml) to record \
             keys of new hosts, or add them with ssh-keyscan"
        )),
        _ => Err(format!(
            "StrictHostKeyChecking `{v}` in ssh config is not one of yes, accept-new"
        )),
    }
}

/// Values for ssh_config's `%` tokens.
pub(crate) struct Tokens<'a> {
    /// `%n`: the name as given.
    pub alias: &'a str,
    /// `%h`: the host name after `HostName`.
    pub host: &'a str,
    pub port: u16,
    pub remote_user: &'a str,
    pub local_user: &'a str,
    pub home: &'a Path,
}

/// Expands `%h %p %r %u %n %d %%` as OpenSSH does. Unknown tokens are an
/// error rather than a silently wrong path.
pub(crate) fn expand_tokens(s: &str, t: &Tokens<'_>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => out.push('%'),
            Some('h') => out.push_str(t.host),
            Some('p') => out.push_str(&t.port.to_string()),
            Some('r') => out.push_str(t.remote_user),
            Some('u') => out.push_str(t.local_user),
            Some('n') => out.push_str(t.alias),
            Some('d') => out.push_str(&t.home.to_string_lossy()),
            Some(other) => {
                return Err(format!(
                    "`{s}` in ssh config uses %{other}, which shipit does not expand (it knows %h %p %r %u %n %d %%)"
                ));
            }
            None => return Err(format!("`{s}` in ssh config ends with a lone %")),
        }
    }
    Ok(out)
}

/// `~` and `%` expansion for a path from ssh_config.
pub(crate) fn expand_path(s: &str, t: &Tokens<'_>) -> Result<PathBuf, String> {
    let expanded = expand_tokens(s, t)?;
    Ok(expand_tilde(&expanded, t.home))
}

pub(crate) fn expand_tilde(s: &str, home: &Path) -> PathBuf {
    if s == "~" {
        home.to_path_buf()
    } else if let Some(rest) = s.strip_prefix("~/") {
        home.join(rest)
    } else {
        PathBuf::from(s)
    }
}

/// Shows `path` with the home directory as `~`, as operators write it.
pub(crate) fn display_path(path: &Path, home: &Path) -> String {
    match path.strip_prefix(home) {
        Ok(rest) if home != Path::new("/") && !home.as_os_str().is_empty() => {
            format!("~/{}", rest.display())
        }
        _ => path.display().to_string(),
    }
}

/// Resolves every target, loading ssh_config once. Returns, per target
/// name, its settings or a message.
pub(crate) fn resolve_all(
    targets: &[SshTarget],
    overrides: &SshOverrides,
    env: &SshEnv,
) -> HashMap<String, Result<HostSettings, String>> {
    let config = LoadedConfig::load(&overrides.config, env);
    targets
        .iter()
        .map(|t| {
            let result = match &config {
                Ok(config) => resolve_target(t, overrides, config, env),
                Err(e) => Err(e.clone()),
            };
            (t.name.clone(), result)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(home: &Path) -> SshEnv {
        SshEnv {
            home: home.to_path_buf(),
            local_user: "alice".into(),
            auth_sock: None,
            passphrase: None,
            allow_prompt: false,
        }
    }

    fn config(text: &str, home: &Path) -> LoadedConfig {
        LoadedConfig::parse(&mut text.as_bytes(), Path::new("test_config"), home).unwrap()
    }

    fn target(address: &str) -> SshTarget {
        SshTarget {
            name: address.into(),
            address: address.into(),
            port: None,
            user: None,
        }
    }

    fn resolve_with(text: &str, address: &str) -> HostSettings {
        let home = Path::new("/home/alice");
        resolve_target(
            &target(address),
            &SshOverrides::default(),
            &config(text, home),
            &env(home),
        )
        .unwrap()
    }

    #[test]
    fn defaults_without_config() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(".ssh")).unwrap();
        std::fs::write(dir.path().join(".ssh/id_rsa"), "x").unwrap();
        std::fs::write(dir.path().join(".ssh/id_ed25519"), "x").unwrap();
        let s = resolve_target(
            &target("web1.example.com"),
            &SshOverrides::default(),
            &LoadedConfig::default(),
            &env(dir.path()),
        )
        .unwrap();
        assert_eq!(s.host_name, "web1.example.com");
        assert_eq!(s.port, 22);
        assert_eq!(s.user, "alice");
        assert_eq!(
            s.identity_files,
            [
                dir.path().join(".ssh/id_ed25519"),
                dir.path().join(".ssh/id_rsa")
            ]
        );
        assert!(!s.identities_only);
        assert_eq!(
            s.host_keys,
            HostKeyDb {
                name: "web1.example.com".into(),
                user_files: vec![
                    dir.path().join(".ssh/known_hosts"),
                    dir.path().join(".ssh/known_hosts2")
                ],
                global_files: vec![
                    "/etc/ssh/ssh_known_hosts".into(),
                    "/etc/ssh/ssh_known_hosts2".into()
                ],
                revoked: None,
            }
        );
        assert_eq!(s.host_key_checking, HostKeyChecking::Strict);
        assert!(s.jumps.is_empty());
    }

    #[test]
    fn host_patterns_and_first_value_wins() {
        let text = "\
User globaluser
Host web-*
    Port=2200
    User webuser
    HostName %h.internal
Host web-1
\tUser ignored
    Port 2201
    IdentityFile ~/.ssh/web1_key
Host !web-2 *
    IdentityFile ~/.ssh/id_%h_%r_%p
Host *
    User last
";
        let s = resolve_with(text, "web-1");
        // A global option before any Host wins over everything after it.
        assert_eq!(s.user, "globaluser");
        assert_eq!(s.port, 2200);
        assert_eq!(s.host_name, "web-1.internal");
        // IdentityFile accumulates, in order, with tokens after HostName.
        assert_eq!(
            s.identity_files,
            [
                PathBuf::from("/home/alice/.ssh/web1_key"),
                PathBuf::from("/home/alice/.ssh/id_web-1.internal_globaluser_2200"),
            ]
        );
        let s = resolve_with(text, "web-2");
        assert_eq!(s.port, 2200);
        // Negated pattern: the `!web-2 *` block does not apply.
        assert!(s.identity_files.is_empty());
        let s = resolve_with(text, "db");
        assert_eq!(s.port, 22);
        assert_eq!(s.host_name, "db");
    }

    #[test]
    fn tokens_and_tilde() {
        let home = Path::new("/h");
        let t = Tokens {
            alias: "a",
            host: "h.example",
            port: 2222,
            remote_user: "r",
            local_user: "l",
            home,
        };
        assert_eq!(
            expand_tokens("%h-%p-%r-%u-%n-%d-%%", &t).unwrap(),
            "h.example-2222-r-l-a-/h-%"
        );
        assert!(expand_tokens("%C", &t).is_err());
        assert!(expand_tokens("x%", &t).is_err());
        assert_eq!(expand_path("~/k_%r", &t).unwrap(), PathBuf::from("/h/k_r"));
        assert_eq!(expand_path("~", &t).unwrap(), PathBuf::from("/h"));
        assert_eq!(expand_path("/abs", &t).unwrap(), PathBuf::from("/abs"));
    }

    #[test]
    fn identities_only_known_hosts_and_strictness() {
        let text = "\
Host a
    IdentitiesOnly yes
    UserKnownHostsFile ~/kh1 /etc/kh_%h
    StrictHostKeyChecking accept-new
Host b
    StrictHostKeyChecking no
Host c
    UserKnownHostsFile none
Host d
    ProxyCommand ssh -W %h:%p bastion
";
        let s = resolve_with(text, "a");
        assert!(s.identities_only);
        assert_eq!(
            s.host_keys.user_files,
            [PathBuf::from("/home/alice/kh1"), PathBuf::from("/etc/kh_a")]
        );
        assert_eq!(s.host_key_checking, HostKeyChecking::AcceptNew);

        let home = Path::new("/home/alice");
        let err = resolve_target(
            &target("b"),
            &SshOverrides::default(),
            &config(text, home),
            &env(home),
        )
        .unwrap_err();
        assert!(err.contains("does not turn host key checking off"), "{err}");
        let err = resolve_target(
            &target("c"),
            &SshOverrides::default(),
            &config(text, home),
            &env(home),
        )
        .unwrap_err();
        assert!(err.contains("UserKnownHostsFile none"), "{err}");
        let err = resolve_target(
            &target("d"),
            &SshOverrides::default(),
            &config(text, home),
            &env(home),
        )
        .unwrap_err();
        assert!(err.contains("use ProxyJump"), "{err}");
        // deploy.toml's policy wins over ssh_config's refused value.
        let overrides = SshOverrides {
            host_key_checking: Some(HostKeyChecking::Strict),
            ..SshOverrides::default()
        };
        let s = resolve_target(&target("b"), &overrides, &config(text, home), &env(home)).unwrap();
        assert_eq!(s.host_key_checking, HostKeyChecking::Strict);
    }

    #[test]
    fn proxy_jump_chains_resolve_each_hop() {
        let text = "\
Host bastion
    HostName 10.0.0.1
    User jumper
    Port 2022
    IdentityFile ~/.ssh/bastion_key
Host web*
    ProxyJump bastion,ops@hop2:2200
Host direct
    ProxyJump none
";
        let s = resolve_with(text, "web1");
        assert_eq!(s.jumps.len(), 2);
        let b = &s.jumps[0];
        assert_eq!(
            (
                b.label.as_str(),
                b.host_name.as_str(),
                b.user.as_str(),
                b.port
            ),
            ("bastion", "10.0.0.1", "jumper", 2022)
        );
        assert_eq!(
            b.identity_files,
            [PathBuf::from("/home/alice/.ssh/bastion_key")]
        );
        assert_eq!(b.endpoint(), "jumper@10.0.0.1:2022");
        let h = &s.jumps[1];
        assert_eq!(
            (h.host_name.as_str(), h.user.as_str(), h.port),
            ("hop2", "ops", 2200)
        );
        assert!(resolve_with(text, "direct").jumps.is_empty());
    }

    #[test]
    fn global_files_alias_and_revoked_keys_come_from_ssh_config() {
        let text = "\
Host web1
    HostName 10.0.0.5
    Port 2222
    HostKeyAlias Web1-Key
    GlobalKnownHostsFile ~/global1 /etc/global2
    RevokedHostKeys ~/revoked_%h
Host web2
    GlobalKnownHostsFile none
Host web3
    KnownHostsCommand /usr/bin/fetch-keys %H
";
        let s = resolve_with(text, "web1");
        assert_eq!(
            s.host_keys,
            HostKeyDb {
                // As OpenSSH: the alias, without the port, is the name.
                name: "web1-key".into(),
                user_files: vec![
                    PathBuf::from("/home/alice/.ssh/known_hosts"),
                    PathBuf::from("/home/alice/.ssh/known_hosts2")
                ],
                global_files: vec![
                    PathBuf::from("/home/alice/global1"),
                    PathBuf::from("/etc/global2")
                ],
                revoked: Some(PathBuf::from("/home/alice/revoked_10.0.0.5")),
            }
        );
        let s = resolve_with(text, "web2");
        assert!(s.host_keys.global_files.is_empty());
        assert_eq!(s.host_keys.name, "web2");
        // ssh.known_hosts replaces the user files only.
        let home = Path::new("/home/alice");
        let overrides = SshOverrides {
            known_hosts: Some("/kh".into()),
            ..SshOverrides::default()
        };
        let s =
            resolve_target(&target("web1"), &overrides, &config(text, home), &env(home)).unwrap();
        assert_eq!(s.host_keys.user_files, [PathBuf::from("/kh")]);
        assert_eq!(s.host_keys.global_files.len(), 2);
        let err = resolve_target(
            &target("web3"),
            &SshOverrides::default(),
            &config(text, home),
            &env(home),
        )
        .unwrap_err();
        assert!(err.contains("KnownHostsCommand"), "{err}");
    }

    #[test]
    fn include_is_followed() {
        let dir = tempfile::tempdir().unwrap();
        let ssh = dir.path().join(".ssh");
        std::fs::create_dir_all(ssh.join("conf.d")).unwrap();
        std::fs::write(
            ssh.join("conf.d/web"),
            "Host web1\n    HostName 10.1.1.1\n    User included\n",
        )
        .unwrap();
        let text = "Include conf.d/*\nHost *\n    User fallback\n";
        let cfg = config(text, dir.path());
        let s = resolve_target(
            &target("web1"),
            &SshOverrides::default(),
            &cfg,
            &env(dir.path()),
        )
        .unwrap();
        assert_eq!(s.host_name, "10.1.1.1");
        assert_eq!(s.user, "included");
    }

    #[test]
    fn match_is_refused() {
        let text = "Host bastion\n    Port 22\nMatch host db-* user root\n    Port 5522\n";
        let err = LoadedConfig::parse(&mut text.as_bytes(), Path::new("cfg"), Path::new("/h"))
            .unwrap_err();
        assert!(err.contains("uses `Match`"), "{err}");
        assert!(err.contains("Host bastion"), "{err}");
    }

    #[test]
    fn deploy_toml_wins_over_ssh_config() {
        let text = "\
Host web1
    User cfguser
    Port 2200
    IdentityFile ~/.ssh/cfgkey
    UserKnownHostsFile ~/cfg_known_hosts
    ProxyJump cfgbastion
";
        let home = Path::new("/home/alice");
        let cfg = config(text, home);
        let overrides = SshOverrides {
            user: Some("deploy".into()),
            port: Some(2022),
            identity_file: Some("/keys/deploy".into()),
            known_hosts: Some("/kh".into()),
            host_key_checking: Some(HostKeyChecking::AcceptNew),
            proxy_jump: Some(vec!["jump@b1:23".into()]),
            config: SshConfigSource::Default,
        };
        let s = resolve_target(&target("web1"), &overrides, &cfg, &env(home)).unwrap();
        assert_eq!((s.user.as_str(), s.port), ("deploy", 2022));
        assert_eq!(s.identity_files, [PathBuf::from("/keys/deploy")]);
        assert_eq!(s.host_keys.user_files, [PathBuf::from("/kh")]);
        assert_eq!(s.host_key_checking, HostKeyChecking::AcceptNew);
        assert_eq!(s.jumps.len(), 1);
        // `[ssh]` user/port are for targets, not for the jump host.
        assert_eq!((s.jumps[0].user.as_str(), s.jumps[0].port), ("jump", 23));

        // Per-host values win over `[ssh]`.
        let mut t = target("web1");
        t.user = Some("hostuser".into());
        t.port = Some(2999);
        let s = resolve_target(&t, &overrides, &cfg, &env(home)).unwrap();
        assert_eq!((s.user.as_str(), s.port), ("hostuser", 2999));

        // `ssh.proxy_jump = ["none"]` overrides ssh_config's ProxyJump.
        let direct = SshOverrides {
            proxy_jump: Some(vec!["none".into()]),
            ..SshOverrides::default()
        };
        let s = resolve_target(&target("web1"), &direct, &cfg, &env(home)).unwrap();
        assert!(s.jumps.is_empty());
        assert_eq!(s.user, "cfguser");
    }

    #[test]
    fn destinations() {
        assert_eq!(
            split_destination("root@10.0.0.1", false).unwrap(),
            (Some("root".into()), "10.0.0.1".into(), None)
        );
        assert_eq!(
            split_destination("u@h:2222", true).unwrap(),
            (Some("u".into()), "h".into(), Some(2222))
        );
        assert_eq!(
            split_destination("[::1]:22", true).unwrap(),
            (None, "::1".into(), Some(22))
        );
        assert_eq!(
            split_destination("fe80::1", true).unwrap(),
            (None, "fe80::1".into(), None)
        );
        assert_eq!(
            split_destination("ssh://a@b:2", false).unwrap(),
            (Some("a".into()), "b".into(), Some(2))
        );
        assert!(split_destination("h:x", true).is_err());
        assert!(split_destination("@h", true).is_err());
    }

    #[test]
    fn display_paths_with_tilde() {
        assert_eq!(
            display_path(Path::new("/home/a/.ssh/id"), Path::new("/home/a")),
            "~/.ssh/id"
        );
        assert_eq!(
            display_path(Path::new("/etc/k"), Path::new("/home/a")),
            "/etc/k"
        );
    }
}
