//! Logs in with public keys the way OpenSSH does, and says exactly what was
//! tried when it fails.
//!
//! Order: each configured identity file (signed by ssh-agent when the agent
//! holds that key, so no passphrase is needed), then the agent's other keys
//! unless `IdentitiesOnly` is set. At most [`MAX_ATTEMPTS`] keys are offered
//! per connection, below sshd's `MaxAuthTries 6`, past which sshd hangs up
//! and russh can only say "could not reach the event loop". RSA is always
//! signed with SHA-2: without a hash russh signs `ssh-rsa` (SHA-1), which
//! OpenSSH 8.8+ rejects.
//!
//! Encrypted key files are decrypted once per process (bcrypt-pbkdf costs
//! about 140 ms) and shared by every connection; the passphrase comes from
//! `SHIPIT_SSH_PASSPHRASE`, else from a prompt on the terminal.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use russh::client::{AuthResult, Handle, Handler};
use russh::keys::agent::AgentIdentity;
use russh::keys::agent::client::AgentClient;
use russh::keys::ssh_key::{Algorithm, HashAlg, PrivateKey, PublicKey};
use russh::keys::{PrivateKeyWithHashAlg, load_public_key, load_secret_key};
use tokio::net::UnixStream;
use tokio::sync::OnceCell;

use super::known_hosts::fingerprint;
use super::settings::{HostSettings, SshEnv, display_path};

/// Keys offered per connection at most (sshd's default `MaxAuthTries` is 6).
pub const MAX_ATTEMPTS: usize = 5;

/// The environment variable holding the passphrase for encrypted keys.
pub const PASSPHRASE_VAR: &str = "SHIPIT_SSH_PASSPHRASE";

type Loaded = Result<Arc<PrivateKey>, String>;

/// Private keys loaded from files, each decrypted at most once.
pub(crate) struct KeyStore {
    home: PathBuf,
    passphrase: Option<String>,
    allow_prompt: bool,
    cells: std::sync::Mutex<HashMap<PathBuf, Arc<OnceCell<Loaded>>>>,
    /// One passphrase prompt on the terminal at a time.
    prompt: tokio::sync::Mutex<()>,
}

impl KeyStore {
    pub fn new(env: &SshEnv) -> KeyStore {
        KeyStore {
            home: env.home.clone(),
            passphrase: env.passphrase.clone(),
            allow_prompt: env.allow_prompt,
            cells: std::sync::Mutex::new(HashMap::new()),
            prompt: tokio::sync::Mutex::new(()),
        }
    }

    /// The decrypted key in `path`. Every caller for the same file shares
    /// one load (and one prompt); its error is remembered too.
    pub async fn private_key(&self, path: &Path) -> Loaded {
        let cell = {
            let mut cells = self.cells.lock().unwrap_or_else(|p| p.into_inner());
            cells.entry(path.to_path_buf()).or_default().clone()
        };
        cell.get_or_init(|| self.load(path)).await.clone()
    }

    async fn load(&self, path: &Path) -> Loaded {
        let shown = display_path(path, &self.home);
        match load_blocking(path, None).await {
            Ok(key) => return Ok(key),
            Err(russh::keys::Error::KeyIsEncrypted) => {}
            Err(e) => return Err(format!("cannot read {shown}: {e}")),
        }
        if let Some(passphrase) = &self.passphrase {
            return load_blocking(path, Some(passphrase.clone()))
                .await
                .map_err(|_| {
                    format!(
                        "{shown} is passphrase-protected and {PASSPHRASE_VAR} does not decrypt it"
                    )
                });
        }
        let remedy = format!("set {PASSPHRASE_VAR}, or add the key to ssh-agent (ssh-add {shown})");
        if !self.allow_prompt {
            return Err(format!("{shown} is passphrase-protected; {remedy}"));
        }
        let _one_prompt_at_a_time = self.prompt.lock().await;
        for _ in 0..3 {
            let question = format!("Enter passphrase for {shown}: ");
            let answer = tokio::task::spawn_blocking(move || rpassword::prompt_password(question))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()));
            let passphrase = match answer {
                Ok(p) => p,
                Err(e) => {
                    return Err(format!(
                        "{shown} is passphrase-protected and there is no terminal to ask on ({e}); {remedy}"
                    ));
                }
            };
            if let Ok(key) = load_blocking(path, Some(passphrase)).await {
                return Ok(key);
            }
            tracing::debug!("wrong passphrase for {shown}");
        }
        Err(format!("wrong passphrase for {shown} (3 tries); {remedy}"))
    }
}

async fn load_blocking(
    path: &Path,
    passphrase: Option<String>,
) -> Result<Arc<PrivateKey>, russh::keys::Error> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || load_secret_key(&path, passphrase.as_deref()))
        .await
        .map_err(|e| russh::keys::Error::IO(std::io::Error::other(e)))?
        .map(Arc::new)
}

/// The public half of an identity file without decrypting it: `FILE.pub`,
/// else the unencrypted header of an OpenSSH-format key.
pub(crate) fn public_key_of(path: &Path) -> Option<PublicKey> {
    let mut pub_path = path.as_os_str().to_owned();
    pub_path.push(".pub");
    if let Ok(key) = load_public_key(PathBuf::from(pub_path)) {
        return Some(key);
    }
    let text = std::fs::read_to_string(path).ok()?;
    PrivateKey::from_openssh(text.trim())
        .ok()
        .map(|k| k.public_key().clone())
}

/// The ssh-agent at `SSH_AUTH_SOCK`. Its key list is asked for once.
pub(crate) struct Agent {
    sock: PathBuf,
    keys: OnceCell<Result<Vec<PublicKey>, String>>,
}

impl Agent {
    pub fn new(sock: PathBuf) -> Agent {
        Agent {
            sock,
            keys: OnceCell::new(),
        }
    }

    async fn client(&self) -> Result<AgentClient<UnixStream>, String> {
        AgentClient::connect_uds(&self.sock).await.map_err(|e| {
            format!(
                "ssh-agent at {} (SSH_AUTH_SOCK) is unreachable: {e}",
                self.sock.display()
            )
        })
    }

    async fn keys(&self) -> &Result<Vec<PublicKey>, String> {
        self.keys
            .get_or_init(|| async {
                let mut client = self.client().await?;
                let identities = client
                    .request_identities()
                    .await
                    .map_err(|e| format!("ssh-agent did not list its keys: {e}"))?;
                Ok(identities
                    .into_iter()
                    .filter_map(|id| match id {
                        AgentIdentity::PublicKey { key, comment } => {
                            let mut key = key;
                            if key.comment().is_empty() && !comment.is_empty() {
                                key.set_comment(comment);
                            }
                            Some(key)
                        }
                        AgentIdentity::Certificate { .. } => None,
                    })
                    .collect())
            })
            .await
    }
}

/// One key to offer.
enum Candidate {
    File { path: PathBuf },
    Agent { key: PublicKey, label: String },
}

/// Why authentication did not succeed.
#[derive(Debug)]
pub(crate) enum AuthFailure {
    /// Every key was tried (or none was available). The text lists them.
    Rejected(String),
    /// The connection broke while logging in.
    Closed(String),
}

/// Logs `settings.user` in on `handle`.
pub(crate) async fn authenticate<H: Handler>(
    handle: &mut Handle<H>,
    settings: &HostSettings,
    keys: &KeyStore,
    agent: Option<&Agent>,
    env: &SshEnv,
    step_timeout: std::time::Duration,
) -> Result<(), AuthFailure> {
    let shown = |p: &Path| display_path(p, &env.home);
    let mut tried: Vec<String> = Vec::new();
    let mut notes: Vec<String> = Vec::new();

    let agent_keys: &[PublicKey] = match agent {
        Some(agent) => match agent.keys().await {
            Ok(keys) => keys,
            Err(e) => {
                notes.push(e.clone());
                &[]
            }
        },
        None => &[],
    };

    // Build the plan: identity files first, then the rest of the agent.
    let mut plan: Vec<Candidate> = Vec::new();
    let mut planned: Vec<PublicKey> = Vec::new();
    for path in &settings.identity_files {
        if !path.exists() {
            tried.push(format!("{} (no such file)", shown(path)));
            continue;
        }
        let public = public_key_of(path);
        if let Some(public) = &public {
            if planned.iter().any(|k| k.key_data() == public.key_data()) {
                continue;
            }
            planned.push(public.clone());
            if agent_keys.iter().any(|k| k.key_data() == public.key_data()) {
                plan.push(Candidate::Agent {
                    key: public.clone(),
                    label: format!("{} (via ssh-agent)", shown(path)),
                });
                continue;
            }
        }
        plan.push(Candidate::File { path: path.clone() });
    }
    if !settings.identities_only {
        for key in agent_keys {
            if planned.iter().any(|k| k.key_data() == key.key_data()) {
                continue;
            }
            planned.push(key.clone());
            let comment = key.comment();
            let label = if comment.is_empty() {
                format!("agent key {}", fingerprint(key))
            } else {
                format!("agent key {} ({comment})", fingerprint(key))
            };
            plan.push(Candidate::Agent {
                key: key.clone(),
                label,
            });
        }
    }

    let mut attempts = 0;
    let mut rsa_hash: Option<Option<HashAlg>> = None;
    let mut agent_client: Option<AgentClient<UnixStream>> = None;
    for candidate in plan {
        let label = match &candidate {
            Candidate::File { path } => shown(path),
            Candidate::Agent { label, .. } => label.clone(),
        };
        if attempts >= MAX_ATTEMPTS {
            tried.push(format!(
                "{label} (not offered: at most {MAX_ATTEMPTS} keys per connection)"
            ));
            continue;
        }
        let result = match candidate {
            Candidate::File { path } => {
                let key = match keys.private_key(&path).await {
                    Ok(key) => key,
                    Err(e) => {
                        tried.push(format!("{label} (not usable: {e})"));
                        continue;
                    }
                };
                attempts += 1;
                let hash = hash_for(handle, &key.algorithm(), &mut rsa_hash).await;
                let attempt = handle.authenticate_publickey(
                    settings.user.clone(),
                    PrivateKeyWithHashAlg::new(key, hash),
                );
                match tokio::time::timeout(step_timeout, attempt).await {
                    Ok(r) => r.map_err(|e| e.to_string()),
                    Err(_) => {
                        tried.push(format!("{label} (no answer)"));
                        return Err(no_answer(step_timeout, &tried));
                    }
                }
            }
            Candidate::Agent { key, .. } => {
                let client = match &mut agent_client {
                    Some(c) => c,
                    None => match agent {
                        Some(agent) => match agent.client().await {
                            Ok(c) => agent_client.insert(c),
                            Err(e) => {
                                tried.push(format!("{label} (not usable: {e})"));
                                continue;
                            }
                        },
                        None => continue,
                    },
                };
                attempts += 1;
                let hash = hash_for(handle, &key.algorithm(), &mut rsa_hash).await;
                let attempt =
                    handle.authenticate_publickey_with(settings.user.clone(), key, hash, client);
                match tokio::time::timeout(step_timeout, attempt).await {
                    Ok(r) => r.map_err(|e| e.to_string()),
                    Err(_) => {
                        tried.push(format!("{label} (no answer)"));
                        return Err(no_answer(step_timeout, &tried));
                    }
                }
            }
        };
        match result {
            Ok(AuthResult::Success) => return Ok(()),
            Ok(AuthResult::Failure {
                partial_success, ..
            }) => {
                if handle.is_closed() {
                    tried.push(format!("{label} (connection closed)"));
                    return Err(AuthFailure::Closed(tried_text(&tried)));
                }
                tried.push(if partial_success {
                    format!("{label} (accepted, but the server wants a second factor)")
                } else {
                    format!("{label} (rejected)")
                });
            }
            Err(e) => {
                tried.push(format!("{label} (error: {e})"));
                if handle.is_closed() {
                    return Err(AuthFailure::Closed(tried_text(&tried)));
                }
            }
        }
    }

    let mut text = if tried.is_empty() {
        let looked = if settings.identity_files.is_empty() {
            "no identity file (looked for ~/.ssh/id_ed25519, id_ecdsa, id_rsa)".to_string()
        } else {
            "no usable identity file".to_string()
        };
        let agent = if agent.is_none() {
            "no ssh-agent (SSH_AUTH_SOCK is not set)"
        } else if settings.identities_only {
            "IdentitiesOnly is set, so other ssh-agent keys were not offered"
        } else {
            "ssh-agent holds no key"
        };
        format!(
            "no key to offer: {looked} and {agent}. Set ssh.identity_file in deploy.toml, or load the key with ssh-add"
        )
    } else {
        format!(
            "{}. Check that one of these public keys is in ~{}/.ssh/authorized_keys on the host, \
             or point ssh.identity_file (or IdentityFile in ssh config) at the right key",
            tried_text(&tried),
            settings.user
        )
    };
    for note in notes {
        text.push_str("; ");
        text.push_str(&note);
    }
    Err(AuthFailure::Rejected(text))
}

fn no_answer(after: std::time::Duration, tried: &[String]) -> AuthFailure {
    AuthFailure::Closed(format!(
        "no answer from the server within {}; {}",
        humantime::format_duration(after),
        tried_text(tried)
    ))
}

fn tried_text(tried: &[String]) -> String {
    format!("tried: {}", tried.join(", "))
}

/// The signature hash for a key: SHA-2 for RSA (what the server prefers,
/// else SHA-256), none for other key types.
async fn hash_for<H: Handler>(
    handle: &Handle<H>,
    algorithm: &Algorithm,
    cached: &mut Option<Option<HashAlg>>,
) -> Option<HashAlg> {
    if !matches!(algorithm, Algorithm::Rsa { .. }) {
        return None;
    }
    if let Some(hash) = cached {
        return *hash;
    }
    let hash = match handle.best_supported_rsa_hash().await {
        Ok(Some(Some(hash))) => Some(hash),
        // No or only SHA-1 `server-sig-algs`: SHA-1 is never offered.
        _ => Some(HashAlg::Sha256),
    };
    *cached = Some(hash);
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(passphrase: Option<&str>) -> SshEnv {
        SshEnv {
            home: "/nonexistent".into(),
            local_user: "u".into(),
            auth_sock: None,
            passphrase: passphrase.map(String::from),
            allow_prompt: false,
        }
    }

    #[tokio::test]
    async fn encrypted_keys_are_decrypted_once_and_shared() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let status = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "pass phrase", "-f"])
            .arg(&path)
            .status()
            .unwrap();
        assert!(status.success());
        // The public half is known without the passphrase.
        std::fs::remove_file(dir.path().join("k.pub")).unwrap();
        assert!(public_key_of(&path).is_some());

        let keys = KeyStore::new(&env(Some("pass phrase")));
        let (a, b) = tokio::join!(keys.private_key(&path), keys.private_key(&path));
        let (a, b) = (a.unwrap(), b.unwrap());
        assert!(Arc::ptr_eq(&a, &b));
        assert!(Arc::ptr_eq(&a, &keys.private_key(&path).await.unwrap()));

        let err = KeyStore::new(&env(None))
            .private_key(&path)
            .await
            .unwrap_err();
        assert!(err.contains("passphrase-protected"), "{err}");
        assert!(
            err.contains(PASSPHRASE_VAR) && err.contains("ssh-add"),
            "{err}"
        );
        let err = KeyStore::new(&env(Some("wrong")))
            .private_key(&path)
            .await
            .unwrap_err();
        assert!(err.contains("does not decrypt"), "{err}");
    }
}
